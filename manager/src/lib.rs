//! kubevirt-hcp-manager: the hosted-control-plane coordinator for the
//! KubeVirt platform. `HostedCluster` and `NodePool` resources on the
//! management cluster become the CSI controller and cloud controller manager
//! of each guest cluster (with their infra and guest objects) and KubeVirt
//! VirtualMachines for the guest's nodes.

pub mod api;
pub mod apply;
pub mod backoff;
pub mod cli;
pub mod clients;
pub mod context;
pub mod crds;
pub mod desired;
pub mod error;
pub mod finalizers;
pub mod hash;
pub mod hostedcluster;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod nodepool;
pub mod pki;
pub mod reconcile;
pub mod rollout;
pub mod run;
pub mod shared_etcd;
pub mod skew;
pub mod version;
pub mod watches;
