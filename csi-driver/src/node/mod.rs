//! The CSI Node service of the KubeVirt CSI driver, run inside each tenant
//! (guest) node: it finds the disk KubeVirt hotplugged into the VM, formats
//! it when blank, stages, publishes, grows and reports on it.
//!
//! - [`NodeService`] / [`NodeConfig`]: the gRPC service and its settings.
//! - [`resolve_node_id`]: this node's CSI node id from its Node object.
//! - [`NodeError`]: every failure, mapped once to the CSI status code.
//!
//! The other modules are the service's tools: `device` (disk lookup and
//! inotify wait), `mount`/`mountinfo`, `format`, `resize`, `stats`,
//! `blockdev`, `request` (validation) and `command` (running mkfs & co).

pub mod blockdev;
mod command;
pub mod device;
pub mod error;
pub mod format;
pub mod mount;
pub mod mountinfo;
pub mod nodeid;
pub mod request;
pub mod resize;
pub mod service;
pub mod stats;

pub use error::NodeError;
pub use nodeid::{NodeIdError, node_id_from_node, resolve_node_id};
pub use service::{DEFAULT_DEVICE_WAIT, DEFAULT_MAX_VOLUMES_PER_NODE, NodeConfig, NodeService};
