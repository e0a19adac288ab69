//! Real Kubernetes control planes for the lab: the lab's clusters are
//! kube-apiserver and kube-controller-manager processes (Kubernetes
//! v1.32, [`binaries`]) on one etcd ([`etcd`]), each with its own PKI
//! ([`pki`]), an audit log the request counters are read from ([`audit`])
//! and a front proxy that injects faults between clients and the server
//! ([`proxy`]). [`Cluster`] is one such cluster.

pub mod audit;
pub mod binaries;
pub mod cluster;
pub mod crds;
mod error;
pub mod etcd;
pub mod kubeconfig;
pub mod pki;
mod ports;
pub mod process;
pub mod proxy;

pub use audit::RequestCounters;
pub use binaries::{Binaries, KUBERNETES_VERSION};
pub use cluster::{ADMIN, Cluster, ClusterConfig, ensure_namespace, request_token};
pub use error::Error;
pub use etcd::Etcd;
pub use proxy::Faults;
