//! The hosted control plane's part of `HostedCluster.spec` and `.status`:
//! availability policy, etcd, how the API server is published, the cluster's
//! networks, and where its endpoint and admin kubeconfig are reported. Names
//! and shapes follow HyperShift's `hypershift.openshift.io/v1beta1`.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `spec.controllerAvailabilityPolicy`: how many replicas each control-plane
/// component runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AvailabilityPolicy {
    /// One replica of each component: the cheapest control plane.
    #[default]
    SingleReplica,
    /// Three etcd members and three API servers, spread over nodes.
    HighlyAvailable,
}

impl AvailabilityPolicy {
    /// Replicas of etcd and of kube-apiserver.
    pub fn replicas(self) -> i32 {
        match self {
            AvailabilityPolicy::SingleReplica => 1,
            AvailabilityPolicy::HighlyAvailable => 3,
        }
    }
}

/// `spec.etcd`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Who runs the cluster's etcd. `Managed`: the manager, a StatefulSet in
    /// the control-plane namespace. `Shared`: an etcd the administrator runs
    /// for many clusters, each under its own key prefix and etcd user.
    /// Immutable.
    #[serde(default)]
    pub management_type: EtcdManagementType,
    /// Settings of a `Managed` etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedEtcdSpec>,
    /// Where the `Shared` etcd is and the credentials to administer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedEtcdSpec>,
}

/// `spec.etcd.managementType`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EtcdManagementType {
    #[default]
    Managed,
    Shared,
}

/// `spec.etcd.shared`: an etcd serving many clusters, as Kamaji's shared
/// datastores do. It must run with client-certificate authentication and
/// auth enabled (`--client-cert-auth`, `etcdctl auth enable`), and compact
/// itself (`--auto-compaction-retention`): a cluster's API server may only
/// touch its own prefix, so it does not compact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedEtcdSpec {
    /// The etcd's client URLs (`https://host:port`), as the cluster's API
    /// server and the manager reach it.
    #[schemars(length(min = 1, max = 9))]
    pub endpoints: Vec<String>,
    /// A Secret in the HostedCluster's namespace with the etcd's CA
    /// (`ca.crt`, and `ca.key` to issue each cluster's client certificate)
    /// and a client certificate of its `root` user (`tls.crt`, `tls.key`).
    /// The manager gives each cluster an etcd user and role limited to the
    /// prefix `/<control-plane namespace>/`, and removes both, with the
    /// cluster's keys, when the cluster is deleted.
    pub credentials_secret: LocalObjectReference,
}

/// `spec.etcd.managed`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedEtcdSpec {
    /// Where each member keeps its data.
    #[serde(default)]
    pub storage: ManagedEtcdStorage,
}

/// `spec.etcd.managed.storage`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedEtcdStorage {
    /// `PersistentVolume`: a claim per member.
    #[serde(default, rename = "type")]
    pub type_: EtcdStorageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolumeEtcdStorage>,
}

/// `spec.etcd.managed.storage.type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EtcdStorageType {
    #[default]
    PersistentVolume,
}

/// `spec.etcd.managed.storage.persistentVolume`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeEtcdStorage {
    /// StorageClass of the members' claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of each member's claim (default `8Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

/// One entry of `spec.services`: how a control-plane service is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePublishingStrategyMapping {
    pub service: PublishedService,
    pub service_publishing_strategy: ServicePublishingStrategy,
}

/// Services that can be published.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PublishedService {
    #[serde(rename = "APIServer")]
    ApiServer,
}

/// `servicePublishingStrategy`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePublishingStrategy {
    /// `LoadBalancer`: a Service of that type in the control-plane namespace.
    /// `NodePort`: a NodePort Service reached at `nodePort.address`.
    #[serde(rename = "type")]
    pub type_: PublishingStrategyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<NodePortPublishingStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerPublishingStrategy>,
}

/// Publishing strategy types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PublishingStrategyType {
    LoadBalancer,
    NodePort,
}

/// `servicePublishingStrategy.nodePort`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePortPublishingStrategy {
    /// The address clients reach the management cluster's nodes at (an IP
    /// address or a DNS name).
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// The node port; one is allocated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// `servicePublishingStrategy.loadBalancer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPublishingStrategy {
    /// A DNS name that resolves to the load balancer, published instead of
    /// its address (and added to the serving certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `spec.networking`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworking {
    /// The Services' ClusterIP range (first entry; default `172.31.0.0/16`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_network: Vec<NetworkEntry>,
    /// The pods' range (first entry; default `10.132.0.0/14`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_network: Vec<NetworkEntry>,
}

/// A CIDR.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NetworkEntry {
    #[schemars(length(min = 1, max = 43))]
    pub cidr: String,
}

/// `status.controlPlaneEndpoint`: where the API server is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: i32,
}

/// A Secret in the HostedCluster's namespace, by name (`status.kubeconfig`,
/// `etcd.shared.credentialsSecret`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    pub name: String,
}
