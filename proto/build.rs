//! Compiles `csi.proto` and `etcd.proto` with protox (pure Rust, no
//! `protoc`), writes CSI's FileDescriptorSet to `OUT_DIR/csi_descriptor.bin`
//! for gRPC reflection, and generates prost messages plus tonic clients and
//! servers from them (etcd: clients only).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let csi = manifest_dir.join("csi.proto");
    let etcd = manifest_dir.join("etcd.proto");
    println!("cargo:rerun-if-changed={}", csi.display());
    println!("cargo:rerun-if-changed={}", etcd.display());

    // protox bundles the google/protobuf well-known files, so the imports of
    // descriptor.proto, timestamp.proto and wrappers.proto resolve without any
    // include path of ours.
    let fds = protox::compile([&csi], [&manifest_dir])?;
    std::fs::write(out_dir.join("csi_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([&etcd], [&manifest_dir])?)?;
    Ok(())
}
