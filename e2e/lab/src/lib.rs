//! The lab: a KubeVirt infra cluster and its guest clusters, without a real
//! cluster. [`Lab::start`] runs two Kubernetes-compatible API servers in
//! process (infra and guest), the infra simulators of `lab-sim` (KubeVirt with
//! its hotplug API, CDI, snapshots, load balancers, EndpointSlices), worker
//! VMs with their guest Nodes, and writes kubeconfigs and a `lab.env` for the
//! daemons under test; [`daemon`] starts those daemons as child processes;
//! [`suite`] runs our daemons and the guest stand-ins on a lab; [`hcp`]
//! runs the hosted-control-plane manager and [`pod`] the containers of the
//! Deployments it writes; [`demo`] is the narrated walk-through behind
//! `lab demo`; [`bench`] the scenarios of the `bench` binary.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod guest;
pub mod hcp;
pub mod lab;
pub mod mounts;
pub mod pod;
pub mod suite;
pub mod wait;

pub use error::LabError;
pub use lab::{GuestCluster, Lab, LabConfig};
