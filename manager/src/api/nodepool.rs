//! `NodePool`: a set of guest worker nodes of one HostedCluster, each a
//! KubeVirt VirtualMachine on the infra cluster, with the upgrade strategy
//! that moves them between versions.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Release;

/// `NodePool.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hcp.kubevirt-rs.io",
    version = "v1alpha1",
    kind = "NodePool",
    plural = "nodepools",
    shortname = "np",
    namespaced,
    status = "NodePoolStatus",
    doc = "A set of guest worker nodes, each a KubeVirt VirtualMachine",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// Name of the HostedCluster (same namespace) the nodes join.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_name: String,
    /// Number of nodes.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The suite release the nodes run; not newer than the HostedCluster's.
    pub release: Release,
    /// Platform settings of the VMs.
    pub platform: NodePoolPlatform,
    /// How nodes are updated.
    #[serde(default)]
    pub management: NodePoolManagement,
    /// How long to wait for a node's pods to be evicted before its VM is
    /// deleted anyway. Absent: wait as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub node_drain_timeout_seconds: Option<u32>,
}

/// `spec.platform`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolPlatform {
    /// KubeVirt platform settings.
    pub kubevirt: KubevirtNodePoolPlatform,
}

/// `spec.platform.kubevirt`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.attachDefaultNetwork || (has(self.additionalNetworks) && size(self.additionalNetworks) > 0)").message("the default network can only be detached when additional networks are given"))]
pub struct KubevirtNodePoolPlatform {
    /// CPU and memory of each VM.
    #[serde(default)]
    pub compute: Compute,
    /// The root disk of each VM.
    #[serde(default)]
    pub root_volume: RootVolume,
    /// What the root disk is made from.
    pub boot_image: BootImage,
    /// Multus networks (`<namespace>/<network-attachment-definition>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_networks: Vec<KubevirtNetwork>,
    /// Attach the pod network as interface `default`.
    #[serde(default = "default_true")]
    pub attach_default_network: bool,
    /// Host devices (e.g. GPUs) passed through to each VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<HostDevice>,
    /// Infra nodes the VMs may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

/// `spec.platform.kubevirt.compute`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compute {
    /// Virtual CPU cores.
    #[serde(default = "default_cores")]
    #[schemars(range(min = 1))]
    pub cores: u32,
    /// Guest memory.
    #[serde(default = "default_memory")]
    pub memory: Quantity,
}

fn default_cores() -> u32 {
    2
}

fn default_memory() -> Quantity {
    Quantity("8Gi".to_string())
}

impl Default for Compute {
    fn default() -> Self {
        Self {
            cores: default_cores(),
            memory: default_memory(),
        }
    }
}

/// `spec.platform.kubevirt.rootVolume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    /// Size of the root disk.
    #[serde(default = "default_root_size")]
    pub size: Quantity,
    /// Infra StorageClass of the root disk; the infra default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Access modes of the root disk; CDI picks when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<AccessMode>,
    /// Volume mode of the root disk; CDI picks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_volume_mode")]
    pub volume_mode: Option<VolumeMode>,
    /// `PVC`: import the boot image once per pool and clone every root disk
    /// from it. `None`: import it for every VM.
    #[serde(default)]
    pub cache_strategy: CacheStrategy,
}

fn default_root_size() -> Quantity {
    Quantity("32Gi".to_string())
}

impl Default for RootVolume {
    fn default() -> Self {
        Self {
            size: default_root_size(),
            storage_class: None,
            access_modes: Vec::new(),
            volume_mode: None,
            cache_strategy: CacheStrategy::None,
        }
    }
}

/// PVC access modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteMany,
    ReadOnlyMany,
    ReadWriteOncePod,
}

/// PVC volume modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

/// The schema of an optional [`VolumeMode`]: a nullable string enum (the
/// derived one lists `null` among the values, which is not structural).
fn optional_volume_mode(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Filesystem", "Block"],
        "nullable": true,
    })
}

/// Boot image caching.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CacheStrategy {
    #[default]
    None,
    #[serde(rename = "PVC")]
    Pvc,
}

/// `spec.platform.kubevirt.bootImage`: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.containerDiskImage) != has(self.url)").message("exactly one of containerDiskImage and url must be set"))]
pub struct BootImage {
    /// A container disk image (`quay.io/containerdisks/fedora:41`), imported
    /// by CDI's registry source with the node pull method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk_image: Option<String>,
    /// An HTTP(S) URL of a disk image, imported by CDI's http source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// An entry of `additionalNetworks`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct KubevirtNetwork {
    /// `<namespace>/<network-attachment-definition>`.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    ))]
    pub name: String,
}

/// An entry of `hostDevices`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDevice {
    /// KubeVirt permitted host device name (`nvidia.com/GA102GL_A10`).
    #[schemars(length(min = 1))]
    pub device_name: String,
    /// How many of this device each VM gets.
    #[serde(default = "default_count")]
    #[schemars(range(min = 1))]
    pub count: u32,
}

fn default_count() -> u32 {
    1
}

/// `spec.management`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolManagement {
    /// `Replace`: new VMs replace old ones. `InPlace`: nodes are updated where
    /// they run (see the manager's in-place protocol).
    #[serde(default)]
    pub upgrade_type: UpgradeType,
    /// Settings of `Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<ReplaceUpgrade>,
    /// Settings of `InPlace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceUpgrade>,
    /// Replace VMs whose node never joined (within the manager's
    /// `--node-join-timeout-seconds`) or has not been Ready for
    /// `--node-unhealthy-timeout-seconds`, as HyperShift's machine health
    /// check does; never more than two at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_repair: bool,
}

/// Upgrade types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpgradeType {
    #[default]
    Replace,
    InPlace,
}

/// `spec.management.replace`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplaceUpgrade {
    /// `RollingUpdate`: the manager replaces outdated VMs. `OnDelete`: only VMs
    /// deleted by someone else come back with the new template.
    #[serde(default)]
    pub strategy: ReplaceStrategy,
    /// Bounds of a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Replace strategies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReplaceStrategy {
    #[default]
    RollingUpdate,
    OnDelete,
}

/// `spec.management.replace.rollingUpdate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// VMs above `replicas` during a rollout: a count or a percentage (rounded up).
    #[serde(default = "default_max_surge")]
    pub max_surge: IntOrString,
    /// Ready VMs below `replicas` tolerated during a rollout: a count or a
    /// percentage (rounded down).
    #[serde(default)]
    pub max_unavailable: IntOrString,
}

fn default_max_surge() -> IntOrString {
    IntOrString::Int(1)
}

impl Default for RollingUpdate {
    fn default() -> Self {
        Self {
            max_surge: default_max_surge(),
            max_unavailable: IntOrString::Int(0),
        }
    }
}

/// `spec.management.inPlace`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpgrade {
    /// Nodes updated at once: a count or a percentage (rounded down, at least 1).
    #[serde(default = "default_in_place_max_unavailable")]
    pub max_unavailable: IntOrString,
}

fn default_in_place_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

impl Default for InPlaceUpgrade {
    fn default() -> Self {
        Self {
            max_unavailable: default_in_place_max_unavailable(),
        }
    }
}

/// `NodePool.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// VMs that exist and are not being removed.
    #[serde(default)]
    pub replicas: i32,
    /// VMs whose guest Node is Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// VMs on the desired template and version.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The version every node runs, once they all do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `Ready`, `ValidVersion`, `ValidPlatformConfig`, `ValidHostedCluster`,
    /// `UpdatingVersion`, `UpdatingConfig`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
