//! The manager's API, group `hcp.kubevirt-rs.io`, version `v1alpha1`:
//! [`HostedCluster`] and [`NodePool`], with the schema validation the CRDs
//! carry, plus the shared pieces (Secret references, release, conditions).
//!
//! Field names follow HyperShift's `hypershift.openshift.io/v1beta1` where
//! the concept is the same, so that a HyperShift user recognises them.

pub mod conditions;
pub mod controlplane;
pub mod hostedcluster;
pub mod nodepool;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use hostedcluster::{
    CloudProviderOptions, HostedCluster, HostedClusterPlatform, HostedClusterSpec,
    HostedClusterStatus, KubevirtCredentials, KubevirtPlatformSpec, ManualStorageDriverConfig,
    StorageClassMapping, StorageDriverSpec, StorageDriverType, VolumeSnapshotClassMapping,
};
pub use nodepool::{
    AccessMode, BootImage, CacheStrategy, Compute, HostDevice, InPlaceUpgrade, KubevirtNetwork,
    KubevirtNodePoolPlatform, NodePool, NodePoolManagement, NodePoolPlatform, NodePoolSpec,
    NodePoolStatus, ReplaceStrategy, ReplaceUpgrade, RollingUpdate, RootVolume, UpgradeType,
    VolumeMode,
};

/// API group of the manager's resources.
pub const GROUP: &str = "hcp.kubevirt-rs.io";
/// Finalizer both controllers put on their objects.
pub const FINALIZER: &str = "hcp.kubevirt-rs.io/finalizer";

/// A key of a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

/// The suite release a hosted cluster or node pool runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Release {
    /// Suite version (semantic version, e.g. `0.1.0`); must be one the manager
    /// publishes in its `supported-versions` ConfigMap.
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// Kubernetes version of a hosted control plane (e.g. `1.32.13`): its
    /// images are `registry.k8s.io/kube-apiserver:v<version>` and so on.
    #[serde(
        default,
        rename = "kubernetesVersion",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+$"))]
    pub kubernetes_version: Option<String>,
}
