//! `HostedCluster`: one guest cluster whose KubeVirt integration the manager
//! runs. The guest's API server is reached through the kubeconfig Secret the
//! spec names; the infra side is this (management) cluster, or an external
//! infra cluster reached through `platform.kubevirt.credentials`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::controlplane::{
    ApiEndpoint, AvailabilityPolicy, ClusterNetworking, EtcdSpec, LocalObjectReference,
    ServicePublishingStrategyMapping,
};
use super::{Release, SecretKeyRef};

/// `HostedCluster.spec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hcp.kubevirt-rs.io",
    version = "v1alpha1",
    kind = "HostedCluster",
    plural = "hostedclusters",
    shortname = "hc",
    namespaced,
    status = "HostedClusterStatus",
    doc = "A guest cluster whose KubeVirt storage, load balancing and nodes the manager runs",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.release.version"}"#,
    printcolumn = r#"{"name":"InfraID","type":"string","jsonPath":".spec.infraID"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kubeconfig) || has(self.release.kubernetesVersion)").message("release.kubernetesVersion is required when the manager hosts the control plane (no kubeconfig)"))]
#[x_kube(validation = Rule::new("!has(self.etcd) || !has(self.etcd.managementType) || self.etcd.managementType != 'Shared' || has(self.etcd.shared)").message("etcd.shared is required when etcd.managementType is Shared"))]
#[x_kube(validation = Rule::new("(has(self.etcd) && has(self.etcd.managementType) && self.etcd.managementType == 'Shared') == (has(oldSelf.etcd) && has(oldSelf.etcd.managementType) && oldSelf.etcd.managementType == 'Shared')").message("etcd.managementType cannot change: the cluster's data stays in the etcd it was made in"))]
#[x_kube(validation = Rule::new("has(self.kubeconfig) == has(oldSelf.kubeconfig)").message("kubeconfig cannot be added or removed: a cluster is hosted, or external, for its whole life"))]
pub struct HostedClusterSpec {
    /// The suite release the cluster's components run.
    pub release: Release,
    /// Unique id of the cluster's infrastructure: the value of the
    /// `hypershift.openshift.io/infra-id` label on its infra objects and the
    /// `cluster.x-k8s.io/cluster-name` of its VMs. Immutable.
    #[serde(rename = "infraID")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("infraID is immutable"))]
    pub infra_id: String,
    /// Base DNS domain of the cluster (informational; kept for HyperShift parity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_domain: Option<String>,
    /// Kubeconfig (admin) of an existing guest cluster, in this namespace.
    /// Absent: the manager hosts the cluster's control plane (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler) in the
    /// control-plane namespace and reports its kubeconfig in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<SecretKeyRef>,
    /// Replicas of the hosted control plane's components.
    #[serde(default)]
    pub controller_availability_policy: AvailabilityPolicy,
    /// The hosted control plane's etcd.
    #[serde(default)]
    pub etcd: EtcdSpec,
    /// How the hosted API server is published (default: `LoadBalancer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub services: Vec<ServicePublishingStrategyMapping>,
    /// The hosted cluster's Service and pod networks.
    #[serde(default)]
    pub networking: ClusterNetworking,
    /// Labels of the management nodes the pods of the control-plane
    /// namespace must run on (HyperShift's `nodeSelector`). Whatever it
    /// says, they tolerate the NoSchedule taints of nodes dedicated to
    /// control planes (`hypershift.openshift.io/control-plane=true`) or to
    /// this cluster (`hypershift.openshift.io/cluster=<control-plane
    /// namespace>`) and prefer nodes labelled so, as HyperShift's do.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Platform settings.
    #[serde(default)]
    pub platform: HostedClusterPlatform,
}

/// `spec.platform`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostedClusterPlatform {
    /// KubeVirt platform settings.
    #[serde(default)]
    pub kubevirt: KubevirtPlatformSpec,
}

/// `spec.platform.kubevirt`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubevirtPlatformSpec {
    /// External infrastructure: where the VMs and volumes live when that is not
    /// this cluster. Absent: this cluster, in the control-plane namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<KubevirtCredentials>,
    /// How guest storage maps to infra storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<StorageDriverSpec>,
    /// Options of the cloud controller manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<CloudProviderOptions>,
}

/// `spec.platform.kubevirt.credentials`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubevirtCredentials {
    /// Kubeconfig of the infra cluster, in this namespace. The manager uses it
    /// to create the daemons' accounts there; the daemons get their own tokens.
    pub infra_kube_config_secret: SecretKeyRef,
    /// Namespace on the infra cluster that holds the cluster's VMs and volumes.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub infra_namespace: String,
}

/// `spec.platform.kubevirt.storageDriver`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageDriverSpec {
    /// `None`: no CSI driver. `Default`: one guest StorageClass on the infra
    /// default class. `Manual`: the mappings below.
    #[serde(default, rename = "type")]
    pub type_: StorageDriverType,
    /// Mappings for type `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualStorageDriverConfig>,
}

/// Storage driver types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StorageDriverType {
    None,
    #[default]
    Default,
    Manual,
}

/// `spec.platform.kubevirt.storageDriver.manual`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualStorageDriverConfig {
    /// Guest StorageClass -> infra StorageClass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_class_mapping: Vec<StorageClassMapping>,
    /// Guest VolumeSnapshotClass -> infra VolumeSnapshotClass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_snapshot_class_mapping: Vec<VolumeSnapshotClassMapping>,
}

/// One guest StorageClass backed by one infra StorageClass.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassMapping {
    /// Group of storage and snapshot classes that can snapshot one another.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[schemars(length(min = 1, max = 253))]
    pub infra_storage_class_name: String,
    #[schemars(length(min = 1, max = 253))]
    pub guest_storage_class_name: String,
}

/// One guest VolumeSnapshotClass backed by one infra VolumeSnapshotClass.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClassMapping {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[schemars(length(min = 1, max = 253))]
    pub infra_volume_snapshot_class_name: String,
    #[schemars(length(min = 1, max = 253))]
    pub guest_volume_snapshot_class_name: String,
}

/// `spec.platform.kubevirt.cloudProvider`: cloud-config options of the CCM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudProviderOptions {
    /// Infra load-balancer Services get no selector; the CCM mirrors endpoints.
    #[serde(default = "default_true")]
    pub selectorless: bool,
    /// Nodes get zone and region labels from their infra node.
    #[serde(default)]
    pub zone_and_region_enabled: bool,
}

impl Default for CloudProviderOptions {
    fn default() -> Self {
        Self {
            selectorless: true,
            zone_and_region_enabled: false,
        }
    }
}

fn default_true() -> bool {
    true
}

/// `HostedCluster.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostedClusterStatus {
    /// `Available`, `Degraded` and `ValidVersion`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespace of the cluster's control-plane components on this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_namespace: Option<String>,
    /// Namespace of the cluster's VMs and volumes on the infra cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_namespace: Option<String>,
    /// The release being rolled out and the history of rollouts
    /// (HyperShift's `status.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ClusterVersionStatus>,
    /// Hosted control plane: where its API server is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,
    /// Hosted control plane: the Secret in this namespace holding an admin
    /// kubeconfig (key `kubeconfig`) for the published endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<LocalObjectReference>,
}

/// `HostedCluster.status.version`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVersionStatus {
    /// The release the manager rolls out: the spec's.
    pub desired: Release,
    /// The rollouts, newest first (at most ten): `Partial` while one is
    /// under way (or was left for a newer one), `Completed` once every
    /// component ran it.
    #[serde(default)]
    pub history: Vec<UpdateHistory>,
    /// The generation `desired` was taken from.
    pub observed_generation: i64,
}

/// One rollout of a release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateHistory {
    pub state: UpdateState,
    pub started_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// When it completed, or was superseded by a newer rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Suite version.
    pub version: String,
    /// Kubernetes version of a hosted control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}

/// Whether a rollout reached every component.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpdateState {
    Completed,
    Partial,
}

// === impl HostedCluster ===

impl HostedCluster {
    /// The storage driver type, `Default` when unset.
    pub fn storage_driver_type(&self) -> StorageDriverType {
        self.spec
            .platform
            .kubevirt
            .storage_driver
            .as_ref()
            .map(|s| s.type_)
            .unwrap_or_default()
    }

    /// The CCM options, defaults when unset.
    pub fn cloud_provider(&self) -> CloudProviderOptions {
        self.spec
            .platform
            .kubevirt
            .cloud_provider
            .clone()
            .unwrap_or_default()
    }

    /// The manager hosts this cluster's control plane (no kubeconfig given).
    pub fn is_hosted(&self) -> bool {
        self.spec.kubeconfig.is_none()
    }

    /// The Secret key holding the guest's admin kubeconfig: the one the spec
    /// names, or for a hosted control plane the one the manager writes.
    pub fn guest_kubeconfig(&self) -> SecretKeyRef {
        self.spec
            .kubeconfig
            .clone()
            .unwrap_or_else(|| SecretKeyRef {
                name: format!(
                    "{}-admin-kubeconfig",
                    self.metadata.name.as_deref().unwrap_or_default()
                ),
                key: "kubeconfig".to_string(),
            })
    }

    /// The external infra credentials, if the infra is another cluster.
    pub fn external_infra(&self) -> Option<&KubevirtCredentials> {
        self.spec.platform.kubevirt.credentials.as_ref()
    }
}
