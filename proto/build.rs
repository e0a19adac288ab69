//! Compiles `csi.proto` with protox (pure Rust, no `protoc`) into a
//! FileDescriptorSet, writes that set to `OUT_DIR/csi_descriptor.bin` for gRPC
//! reflection, and generates prost messages plus tonic clients and servers
//! from it.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = manifest_dir.join("csi.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    // protox bundles the google/protobuf well-known files, so the imports of
    // descriptor.proto, timestamp.proto and wrappers.proto resolve without any
    // include path of ours.
    let fds = protox::compile([&proto], [&manifest_dir])?;
    std::fs::write(out_dir.join("csi_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
