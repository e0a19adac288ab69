//! Infra-cluster simulators for the lab: the parts of KubeVirt, CDI, the CSI
//! snapshot controller and a load-balancer allocator that the suite's daemons
//! talk to, written as ordinary controllers over the Kubernetes API, run
//! against the lab's real kube-apiserver (kube-controller-manager plays the
//! rest of the cluster, EndpointSlices included).
//!
//! Each simulator module exposes `run(client, config)`, which reconciles until
//! its future is dropped, and keeps its "object in, desired object out" logic
//! in pure functions next to it. [`crds`] holds the custom resource
//! definitions they serve (KubeVirt's and CDI's with their projects' schemas
//! for the fields this project writes, so kube-apiserver prunes what theirs
//! would); [`virt_api`] is the HTTP side of KubeVirt's hotplug
//! subresources; [`devices`] turns attached volumes into loop devices.

pub mod cdi;
pub mod crds;
pub mod devices;
pub mod error;
pub mod files;
pub mod hotplug;
pub mod kubevirt;
pub mod lb;
pub mod pool;
pub mod quantity;
pub mod snapshot;
pub mod virt_api;

mod meta;
mod runner;

pub use error::Error;
