//! The lab: a KubeVirt infra cluster and its guest clusters on one machine.
//! [`Lab::start`] runs two real Kubernetes control planes (kube-apiserver and
//! kube-controller-manager on one etcd, `lab-cluster`), the infra simulators
//! of `lab-sim` (KubeVirt with its hotplug API, CDI, snapshots, load
//! balancers), worker VMs with their guest Nodes, and writes kubeconfigs and
//! a `lab.env` for the daemons under test; [`identity`] gives each daemon
//! its ServiceAccount and the RBAC of its manifests; [`daemon`] starts those
//! daemons as child processes;
//! [`suite`] runs our daemons and the guest stand-ins on a lab; [`hcp`]
//! runs the hosted-control-plane manager and [`pod`] the containers of the
//! Deployments it writes; [`demo`] is the narrated walk-through behind
//! `lab demo`; [`bench`] the scenarios of the `bench` binary.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod guest;
pub mod guest_agent;
pub mod hcp;
pub mod hosted_data_plane;
pub mod identity;
pub mod kubelet;
pub mod lab;
pub mod mounts;
pub mod pod;
pub mod rbac;
pub mod shared_etcd;
pub mod sidecar;
pub mod suite;
pub mod wait;

pub use error::LabError;
pub use lab::{GuestCluster, Lab, LabConfig};
