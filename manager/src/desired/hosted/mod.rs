//! The hosted control plane of a HostedCluster without a kubeconfig: pure
//! "inputs -> objects" functions, as the rest of [`crate::desired`].
//!
//! - [`pki`]: what the cluster's PKI holds, and the kubeconfigs made from it
//! - [`etcd`]: the etcd StatefulSet and its Services
//! - [`apiserver`]: kube-apiserver's Deployment, its published Service and
//!   its disruption budget
//! - [`controllers`]: kube-controller-manager and kube-scheduler
//!
//! Every component listens on its pod's address (`$(POD_IP)`), reaches the
//! others through their Services, and takes its flags as kubeadm writes them.

pub mod apiserver;
pub mod controllers;
pub mod etcd;
pub mod pki;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::object::SerializeError;
use super::owner_labels_of;
use crate::api::HostedCluster;
use crate::api::controlplane::{
    ApiEndpoint, AvailabilityPolicy, EtcdManagementType, PublishedService, PublishingStrategyType,
};
use crate::names;

/// Port kube-apiserver serves on, in its pod and behind its Service.
pub const APISERVER_PORT: i32 = 6443;
/// etcd's client and peer ports, and the plain-HTTP port of `/health`.
pub const ETCD_CLIENT_PORT: i32 = 2379;
pub const ETCD_PEER_PORT: i32 = 2380;
pub const ETCD_HEALTH_PORT: i32 = 2381;
/// Default ranges, HyperShift's.
pub const DEFAULT_SERVICE_CIDR: &str = "172.31.0.0/16";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.132.0.0/14";
const DEFAULT_ETCD_SIZE: &str = "8Gi";

/// Container images of the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneImages {
    pub etcd: String,
    pub kube_apiserver: String,
    pub kube_controller_manager: String,
    pub kube_scheduler: String,
}

impl ControlPlaneImages {
    /// The upstream images of Kubernetes `version` from `registry`, with the
    /// etcd kubeadm pairs with that minor version.
    pub fn upstream(registry: &str, version: &str) -> Self {
        let registry = registry.trim_end_matches('/');
        let tag = format!("v{}", version.trim_start_matches('v'));
        let image = |name: &str| format!("{registry}/{name}:{tag}");
        Self {
            etcd: format!("{registry}/etcd:{}", etcd_tag(version)),
            kube_apiserver: image("kube-apiserver"),
            kube_controller_manager: image("kube-controller-manager"),
            kube_scheduler: image("kube-scheduler"),
        }
    }
}

/// The etcd image tag kubeadm uses for a Kubernetes version.
fn etcd_tag(version: &str) -> &'static str {
    let minor = version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    match minor {
        0..=30 => "3.5.15-0",
        31 | 32 => "3.5.16-0",
        _ => "3.5.21-0",
    }
}

/// How kube-apiserver is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publishing {
    /// A LoadBalancer Service; `hostname` is published instead of its address.
    LoadBalancer { hostname: Option<String> },
    /// A NodePort Service reached at `address`.
    NodePort { address: String, port: Option<i32> },
}

/// Everything the control-plane objects depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct HostedInputs {
    pub hc_namespace: String,
    pub hc_name: String,
    /// The control-plane namespace.
    pub namespace: String,
    pub infra_id: String,
    pub policy: AvailabilityPolicy,
    /// Kubernetes version without the `v`.
    pub kubernetes_version: String,
    pub images: ControlPlaneImages,
    pub service_cidr: String,
    /// kubernetes.default's ClusterIP: the first address of the service range.
    pub kubernetes_service_ip: IpAddr,
    /// The cluster DNS address kubelets are given: the tenth address of
    /// the service range, as kubeadm's.
    pub dns_service_ip: IpAddr,
    pub cluster_cidr: String,
    pub publishing: Publishing,
    pub etcd_storage_class: Option<String>,
    pub etcd_size: Quantity,
    /// The shared etcd the cluster keeps its data in, instead of its own.
    pub shared_etcd: Option<SharedEtcd>,
    /// Where the control plane's pods run.
    pub placement: super::Placement,
}

/// A cluster's place in a shared etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEtcd {
    pub endpoints: Vec<String>,
    /// The Secret (in the HostedCluster's namespace) with the etcd's CA and
    /// its root user's client certificate.
    pub credentials_secret: String,
    /// The cluster's etcd user and role: the control-plane namespace.
    pub user: String,
}

impl SharedEtcd {
    /// Where `hc` keeps its data, if in a shared etcd.
    pub fn of(hc: &HostedCluster) -> Result<Option<SharedEtcd>, InputError> {
        let etcd = &hc.spec.etcd;
        match etcd.management_type {
            EtcdManagementType::Managed => Ok(None),
            EtcdManagementType::Shared => {
                let shared = etcd.shared.as_ref().ok_or(InputError::NoSharedEtcd)?;
                Ok(Some(SharedEtcd {
                    endpoints: shared.endpoints.clone(),
                    credentials_secret: shared.credentials_secret.name.clone(),
                    user: names::control_plane_namespace(
                        hc.metadata.namespace.as_deref().unwrap_or_default(),
                        hc.metadata.name.as_deref().unwrap_or_default(),
                    ),
                }))
            }
        }
    }

    /// The keys the cluster may touch: `/<user>/`.
    pub fn prefix(&self) -> String {
        format!("/{}/", self.user)
    }
}

/// Why a HostedCluster cannot be hosted as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("release.kubernetesVersion is required for a hosted control plane")]
    NoKubernetesVersion,
    #[error("{field} {value:?} is not a CIDR")]
    Cidr { field: &'static str, value: String },
    #[error("service APIServer is published as NodePort without nodePort.address")]
    NoNodePortAddress,
    #[error("etcd.managementType is Shared without etcd.shared")]
    NoSharedEtcd,
}

impl HostedInputs {
    /// The inputs of `hc`; images come from `registry` (`registry.k8s.io`).
    pub fn new(hc: &HostedCluster, registry: &str) -> Result<Self, InputError> {
        let hc_namespace = hc.metadata.namespace.clone().unwrap_or_default();
        let hc_name = hc.metadata.name.clone().unwrap_or_default();
        let kubernetes_version = hc
            .spec
            .release
            .kubernetes_version
            .as_deref()
            .ok_or(InputError::NoKubernetesVersion)?
            .trim_start_matches('v')
            .to_string();
        let net = &hc.spec.networking;
        let service_cidr = net
            .service_network
            .first()
            .map_or(DEFAULT_SERVICE_CIDR, |n| n.cidr.as_str());
        let cluster_cidr = net
            .cluster_network
            .first()
            .map_or(DEFAULT_CLUSTER_CIDR, |n| n.cidr.as_str());
        let service_net: ipnet::IpNet = service_cidr.parse().map_err(|_| InputError::Cidr {
            field: "networking.serviceNetwork",
            value: service_cidr.to_string(),
        })?;
        if cluster_cidr.parse::<ipnet::IpNet>().is_err() {
            return Err(InputError::Cidr {
                field: "networking.clusterNetwork",
                value: cluster_cidr.to_string(),
            });
        }
        let kubernetes_service_ip = service_net
            .hosts()
            .next()
            .unwrap_or_else(|| service_net.network());
        let dns_service_ip = service_net.hosts().nth(9).unwrap_or(kubernetes_service_ip);
        let publishing = match hc
            .spec
            .services
            .iter()
            .find(|s| s.service == PublishedService::ApiServer)
            .map(|s| &s.service_publishing_strategy)
        {
            Some(s) if s.type_ == PublishingStrategyType::NodePort => {
                let np = s.node_port.as_ref().ok_or(InputError::NoNodePortAddress)?;
                Publishing::NodePort {
                    address: np.address.clone(),
                    port: np.port,
                }
            }
            Some(s) => Publishing::LoadBalancer {
                hostname: s.load_balancer.as_ref().and_then(|l| l.hostname.clone()),
            },
            None => Publishing::LoadBalancer { hostname: None },
        };
        let shared_etcd = SharedEtcd::of(hc)?;
        let pv = hc
            .spec
            .etcd
            .managed
            .as_ref()
            .and_then(|m| m.storage.persistent_volume.clone())
            .unwrap_or_default();
        Ok(Self {
            namespace: names::control_plane_namespace(&hc_namespace, &hc_name),
            infra_id: hc.spec.infra_id.clone(),
            policy: hc.spec.controller_availability_policy,
            images: ControlPlaneImages::upstream(registry, &kubernetes_version),
            kubernetes_version,
            service_cidr: service_cidr.to_string(),
            kubernetes_service_ip,
            dns_service_ip,
            cluster_cidr: cluster_cidr.to_string(),
            publishing,
            etcd_storage_class: pv.storage_class_name,
            etcd_size: pv
                .size
                .unwrap_or_else(|| Quantity(DEFAULT_ETCD_SIZE.to_string())),
            shared_etcd,
            placement: super::Placement::of(hc),
            hc_namespace,
            hc_name,
        })
    }

    /// Labels of every object of the control plane.
    pub fn labels(&self) -> BTreeMap<String, String> {
        owner_labels_of(&self.hc_namespace, &self.hc_name)
    }

    /// The labels of one component's pods (and its selector): `app=<name>`.
    pub fn app_labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), app.to_string())])
    }

    /// `<service>.<namespace>.svc`.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }

    /// The URL the control plane's own clients reach kube-apiserver at.
    pub fn internal_server(&self) -> String {
        format!(
            "https://{}:{APISERVER_PORT}",
            self.service_host(names::KUBE_APISERVER)
        )
    }

    /// Replicas of etcd and kube-apiserver.
    pub fn replicas(&self) -> i32 {
        self.policy.replicas()
    }

    pub fn highly_available(&self) -> bool {
        self.policy == AvailabilityPolicy::HighlyAvailable
    }
}

/// The URL of a published endpoint.
pub fn endpoint_url(endpoint: &ApiEndpoint) -> String {
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    format!("https://{host}:{}", endpoint.port)
}

/// A typed object from its JSON form (the builders write objects as the
/// YAML a reader knows, checked against the types here).
pub(crate) fn typed<K: DeserializeOwned>(
    kind: &str,
    name: &str,
    v: Value,
) -> Result<K, SerializeError> {
    serde_json::from_value(v).map_err(|source| SerializeError {
        kind: kind.to_string(),
        name: name.to_string(),
        source,
    })
}

/// A control-plane container: the program named as the container, the
/// pod's env, a read-only root, logs as the termination message; `extra`
/// adds what differs (ports, probes, resources, mounts).
pub(crate) fn container(name: &str, image: &str, args: Vec<String>, extra: Value) -> Value {
    let mut c = serde_json::json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [name],
        "args": args,
        "env": pod_env(),
        "securityContext": {"readOnlyRootFilesystem": true},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

/// The pod template of component `app`: its labels, the hash that rolls it
/// when the configuration it reads at start changes, no ServiceAccount
/// token, spread over nodes in HA.
pub(crate) fn pod_template(
    inp: &HostedInputs,
    app: &str,
    config_hash: &str,
    container: Value,
    volumes: Vec<Value>,
) -> Value {
    let mut labels = inp.labels();
    labels.extend(HostedInputs::app_labels(app));
    let (affinity, spread) = affinity_and_spread(inp, app);
    serde_json::json!({
        "metadata": {
            "labels": labels,
            "annotations": {crate::desired::csi::CONFIG_HASH_ANNOTATION: config_hash},
        },
        "spec": {
            "automountServiceAccountToken": false,
            "nodeSelector": inp.placement.node_selector(),
            "affinity": affinity,
            "topologySpreadConstraints": spread,
            "tolerations": inp.placement.tolerations(),
            "containers": [container],
            "volumes": volumes,
        },
    })
}

/// Environment every control-plane container gets: its pod's name, address
/// and namespace.
pub(crate) fn pod_env() -> Value {
    serde_json::json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ])
}

/// A Secret volume, optionally with only some keys.
pub(crate) fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Value {
    let mut source = serde_json::json!({"secretName": secret, "defaultMode": 0o640});
    if !keys.is_empty() {
        source["items"] = keys
            .iter()
            .map(|k| serde_json::json!({"key": k, "path": k}))
            .collect();
    }
    serde_json::json!({"name": name, "secret": source})
}

/// The pods' affinity (dedicated nodes preferred; in HA, one replica of
/// `app` per node, required) and, in HA, their spread over zones.
fn affinity_and_spread(inp: &HostedInputs, app: &str) -> (Value, Value) {
    let mut affinity = serde_json::json!({"nodeAffinity": inp.placement.node_affinity()});
    if !inp.highly_available() {
        return (affinity, Value::Null);
    }
    let selector = serde_json::json!({"matchLabels": HostedInputs::app_labels(app)});
    affinity["podAntiAffinity"] = serde_json::json!({"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"}
    ]});
    let spread = serde_json::json!([{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": selector,
    }]);
    (affinity, spread)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::api::controlplane::{
        NodePortPublishingStrategy, ServicePublishingStrategy, ServicePublishingStrategyMapping,
    };

    /// A hosted (no kubeconfig) cluster, published on a node port.
    pub fn hosted() -> HostedCluster {
        let mut hc = crate::desired::fixtures::hosted_cluster();
        hc.spec.kubeconfig = None;
        hc.spec.release.kubernetes_version = Some("1.32.13".into());
        hc.spec.services = vec![ServicePublishingStrategyMapping {
            service: PublishedService::ApiServer,
            service_publishing_strategy: ServicePublishingStrategy {
                type_: PublishingStrategyType::NodePort,
                node_port: Some(NodePortPublishingStrategy {
                    address: "192.168.100.10".into(),
                    port: Some(30443),
                }),
                load_balancer: None,
            },
        }];
        hc
    }

    pub fn inputs(hc: &HostedCluster) -> HostedInputs {
        HostedInputs::new(hc, "registry.k8s.io").expect("inputs")
    }

    /// `hc` with its data in a shared etcd.
    pub fn shared(mut hc: HostedCluster) -> HostedCluster {
        hc.spec.etcd.management_type = EtcdManagementType::Shared;
        hc.spec.etcd.shared = Some(crate::api::controlplane::SharedEtcdSpec {
            endpoints: vec!["https://etcd.shared-etcd.svc:2379".into()],
            credentials_secret: crate::api::controlplane::LocalObjectReference {
                name: "shared-etcd-root".into(),
            },
        });
        hc
    }

    pub fn ha(mut hc: HostedCluster) -> HostedCluster {
        hc.spec.controller_availability_policy = AvailabilityPolicy::HighlyAvailable;
        hc
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn inputs_default_like_hypershift() {
        let mut hc = hosted();
        hc.spec.services.clear();
        let inp = inputs(&hc);
        assert_eq!(inp.namespace, "clusters-guest1");
        assert_eq!(inp.service_cidr, "172.31.0.0/16");
        assert_eq!(inp.kubernetes_service_ip.to_string(), "172.31.0.1");
        assert_eq!(inp.dns_service_ip.to_string(), "172.31.0.10");
        assert_eq!(inp.cluster_cidr, "10.132.0.0/14");
        assert_eq!(inp.publishing, Publishing::LoadBalancer { hostname: None });
        assert_eq!(inp.replicas(), 1);
        assert_eq!(inp.etcd_size, Quantity("8Gi".into()));
        assert_eq!(
            inp.images,
            ControlPlaneImages {
                etcd: "registry.k8s.io/etcd:3.5.16-0".into(),
                kube_apiserver: "registry.k8s.io/kube-apiserver:v1.32.13".into(),
                kube_controller_manager: "registry.k8s.io/kube-controller-manager:v1.32.13".into(),
                kube_scheduler: "registry.k8s.io/kube-scheduler:v1.32.13".into(),
            }
        );
        assert_eq!(
            inp.internal_server(),
            "https://kube-apiserver.clusters-guest1.svc:6443"
        );
        assert_eq!(inputs(&ha(hc)).replicas(), 3);
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let mut hc = hosted();
        hc.spec.release.kubernetes_version = None;
        assert_eq!(
            HostedInputs::new(&hc, "r")
                .expect_err("version")
                .to_string(),
            "release.kubernetesVersion is required for a hosted control plane"
        );
        let mut hc = hosted();
        hc.spec.networking.service_network = vec![crate::api::controlplane::NetworkEntry {
            cidr: "10.0.0.0/33".into(),
        }];
        assert_eq!(
            HostedInputs::new(&hc, "r").expect_err("cidr").to_string(),
            "networking.serviceNetwork \"10.0.0.0/33\" is not a CIDR"
        );
        let mut hc = hosted();
        hc.spec.etcd.management_type = EtcdManagementType::Shared;
        assert_eq!(
            HostedInputs::new(&hc, "r").expect_err("shared").to_string(),
            "etcd.managementType is Shared without etcd.shared"
        );
    }

    #[test]
    fn a_shared_etcd_gives_the_cluster_a_user_and_prefix_of_its_own() {
        let inp = inputs(&shared(hosted()));
        let shared = inp.shared_etcd.expect("shared");
        assert_eq!(shared.user, "clusters-guest1");
        assert_eq!(shared.prefix(), "/clusters-guest1/");
        assert_eq!(shared.credentials_secret, "shared-etcd-root");
        assert_eq!(inputs(&hosted()).shared_etcd, None);
    }

    #[test]
    fn control_plane_pods_are_placed_as_hypershift_places_them() {
        let mut hc = hosted();
        hc.spec.node_selector = BTreeMap::from([("pool".into(), "control-planes".into())]);
        let pod = pod_template(&inputs(&hc), "etcd", "h", Value::Null, vec![]);
        let spec = &pod["spec"];
        assert_eq!(
            spec["nodeSelector"],
            serde_json::json!({"pool": "control-planes"})
        );
        let tolerations = spec["tolerations"].as_array().expect("tolerations");
        // Nodes dedicated to control planes, or to this one.
        assert_eq!(
            tolerations[..2],
            [
                serde_json::json!({"key": "hypershift.openshift.io/control-plane",
                    "operator": "Equal", "value": "true", "effect": "NoSchedule"}),
                serde_json::json!({"key": "hypershift.openshift.io/cluster",
                    "operator": "Equal", "value": "clusters-guest1", "effect": "NoSchedule"}),
            ]
        );
        // A lost node is left within half a minute.
        assert_eq!(tolerations.len(), 4);
        assert!(
            tolerations[2..]
                .iter()
                .all(|t| t["effect"] == "NoExecute" && t["tolerationSeconds"] == 30)
        );
        // Dedicated nodes are preferred, this cluster's most.
        let preferred =
            &spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(preferred[0]["weight"], 50);
        assert_eq!(preferred[1]["weight"], 100);
        assert_eq!(
            preferred[1]["preference"]["matchExpressions"][0],
            serde_json::json!({"key": "hypershift.openshift.io/cluster",
                "operator": "In", "values": ["clusters-guest1"]})
        );
        // Without a selector, any node.
        let pod = pod_template(&inputs(&hosted()), "etcd", "h", Value::Null, vec![]);
        assert!(pod["spec"]["nodeSelector"].is_null());
    }

    #[test]
    fn endpoint_urls_bracket_ipv6() {
        let ep = |host: &str| ApiEndpoint {
            host: host.into(),
            port: 6443,
        };
        assert_eq!(endpoint_url(&ep("10.0.0.1")), "https://10.0.0.1:6443");
        assert_eq!(endpoint_url(&ep("fd00::1")), "https://[fd00::1]:6443");
        assert_eq!(endpoint_url(&ep("api.example")), "https://api.example:6443");
    }
}
