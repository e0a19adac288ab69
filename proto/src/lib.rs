//! The Container Storage Interface (CSI v1.12.0) as Rust types: prost messages
//! and tonic clients/servers generated at build time from our own
//! wire-compatible transcription of the spec's `csi.proto`; and, in
//! [`etcd`], the few calls of etcd's v3 API that administer a shared etcd.
//!
//! Everything lives in [`v1`], mirroring the protobuf package `csi.v1`, e.g.
//! `v1::node_server::{Node, NodeServer}`, `v1::identity_client::IdentityClient`
//! or `v1::NodeStageVolumeRequest`. [`FILE_DESCRIPTOR_SET`] holds the encoded
//! descriptors (with their google/protobuf imports) for gRPC reflection.

/// Protobuf package `csi.v1`: messages, enums, and the `*_client` /
/// `*_server` modules of the Identity, Controller, Node, GroupController and
/// SnapshotMetadata services.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// Protobuf package `etcdserverpb`: the part of etcd's v3 API that
/// administers a shared etcd (`auth_client::AuthClient` for users, roles and
/// permissions; `kv_client::KvClient` to delete a cluster's keys).
pub mod etcd {
    #[allow(clippy::all, missing_docs)]
    mod generated {
        tonic::include_proto!("etcdserverpb");
    }
    pub use generated::*;

    /// The end of the range of every key starting with `prefix` (what
    /// `etcdctl --prefix` sends as `range_end`): the prefix with its last
    /// byte below 0xff incremented, or `\0` (every key) when there is none.
    pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of `csi.proto` and its
/// imports, for a gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));

#[cfg(test)]
mod tests;
