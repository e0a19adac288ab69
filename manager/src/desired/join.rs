//! How a NodePool's VMs join their hosted control plane: the way kubeadm
//! joins a node, so a real image with kubeadm and kubelet joins unchanged.
//! Pure.
//!
//! Cluster side ([`cluster_objects`]): what `kubeadm init` leaves in a
//! cluster for `kubeadm join` — the bootstrappers' RBAC (create and be
//! auto-approved for a kubelet client CSR, read the two config maps, get
//! Nodes), `kube-public/cluster-info` readable anonymously, and the
//! `kubeadm-config` and `kubelet-config` ConfigMaps. The hosted
//! kube-controller-manager approves and signs the CSRs and signs
//! `cluster-info` for each token (its `bootstrapsigner`). And the
//! `default/kubernetes` Service's endpoints ([`kubernetes_endpoints`]): the
//! published endpoint, which the nodes reach, written here because the API
//! servers' own addresses are the management cluster's pod addresses.
//!
//! Node side: one bootstrap token per VM ([`BootstrapToken`],
//! [`token_secret`]), revoked once the VM's Node has joined, and the VM's
//! cloud-init user data ([`user_data`], [`user_data_secret`]): the endpoint
//! and CA as a discovery kubeconfig, a `JoinConfiguration` naming the token,
//! and `kubeadm join`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::Rng;
use serde_json::{Value, json};

use super::kubeconfig::ClusterEndpoint;
use super::object::{Object, SerializeError};
use crate::names;

/// The group every node bootstrap token authenticates into (kubeadm's).
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
/// `kube-system` Secrets named `bootstrap-token-<id>` are bootstrap tokens.
pub const TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Lifetime of a token; a VM that has not joined gets a new one when a
/// third of it is left.
pub const TOKEN_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);
/// The user data key KubeVirt reads from the Secret a cloud-init volume's
/// `secretRef` names (Go's `UserDataSecretRef`).
pub const USER_DATA_KEY: &str = "userdata";
/// Where the user data puts the discovery kubeconfig and join configuration.
pub const DISCOVERY_KUBECONFIG_PATH: &str = "/etc/kubernetes/discovery.kubeconfig";
pub const JOIN_CONFIG_PATH: &str = "/etc/kubernetes/kubeadm-join.yaml";

const KUBE_SYSTEM: &str = "kube-system";
const KUBE_PUBLIC: &str = "kube-public";
const CLUSTER_INFO: &str = "cluster-info";
const KUBEADM_CONFIG: &str = "kubeadm-config";
const KUBELET_CONFIG: &str = "kubelet-config";
const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The cluster facts the join objects carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinCluster {
    /// The published endpoint and the cluster CA, as nodes reach them.
    pub endpoint: ClusterEndpoint,
    /// Kubernetes version without the `v`.
    pub kubernetes_version: String,
    pub cluster_name: String,
    pub service_cidr: String,
    pub cluster_cidr: String,
    /// The cluster DNS address kubelets give pods (the tenth address of the
    /// service range, as kubeadm's).
    pub dns_address: String,
    pub labels: BTreeMap<String, String>,
}

/// `v` as a `K`, erased.
fn object<K>(name: &str, v: Value) -> Result<Object, SerializeError>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let typed: K = super::hosted::typed(&K::kind(&()), name, v)?;
    Object::new(&typed)
}

fn rbac<K>(
    name: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    body: Value,
) -> Result<Object, SerializeError>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let kind = K::kind(&());
    let mut v = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
    });
    if let Some(ns) = namespace {
        v["metadata"]["namespace"] = json!(ns);
    }
    if let (Some(o), Value::Object(body)) = (v.as_object_mut(), body) {
        o.extend(body);
    }
    object::<K>(name, v)
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name})
}

fn config_map(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    key: &str,
    value: String,
) -> Result<Object, SerializeError> {
    object::<ConfigMap>(
        name,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "data": {key: value},
        }),
    )
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

/// A kubeconfig with the cluster only (no user): what `cluster-info` and a
/// discovery file hold.
pub fn cluster_kubeconfig(endpoint: &ClusterEndpoint) -> String {
    let mut cluster = json!({"server": endpoint.server});
    if let Some(ca) = &endpoint.certificate_authority_data {
        cluster["certificate-authority-data"] = json!(ca);
    }
    yaml(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "", "cluster": cluster}],
        "contexts": [],
        "users": [],
        "preferences": {},
    }))
}

/// The kubeadm API version of `kubernetes_version`'s kubeadm: v1beta4 from
/// 1.31 on.
fn kubeadm_api(kubernetes_version: &str) -> &'static str {
    let minor = kubernetes_version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    if minor >= 31 {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    }
}

/// The objects `kubeadm join` reads or relies on in the hosted cluster.
pub fn cluster_objects(c: &JoinCluster) -> Result<Vec<Object>, SerializeError> {
    let l = &c.labels;
    let server = c.endpoint.server.trim_start_matches("https://");
    let cluster_configuration = json!({
        "apiVersion": kubeadm_api(&c.kubernetes_version),
        "kind": "ClusterConfiguration",
        "kubernetesVersion": format!("v{}", c.kubernetes_version),
        "clusterName": c.cluster_name,
        "controlPlaneEndpoint": server,
        "certificatesDir": "/etc/kubernetes/pki",
        "networking": {
            "dnsDomain": "cluster.local",
            "serviceSubnet": c.service_cidr,
            "podSubnet": c.cluster_cidr,
        },
    });
    let kubelet_configuration = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "systemd",
        "clusterDNS": [c.dns_address],
        "clusterDomain": "cluster.local",
        "rotateCertificates": true,
        "serverTLSBootstrap": false,
        "staticPodPath": "/etc/kubernetes/manifests",
    });
    let node_readers = json!([group(BOOTSTRAPPERS_GROUP), group("system:nodes")]);
    let cluster_role_binding = |name: &str, role: &str, subject: Value| {
        rbac::<ClusterRoleBinding>(
            name,
            None,
            l,
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [subject],
            }),
        )
    };
    let reader = |name: &str,
                  namespace: &str,
                  config_map: &str,
                  subjects: Value|
     -> Result<[Object; 2], SerializeError> {
        Ok([
            rbac::<Role>(
                name,
                Some(namespace),
                l,
                json!({"rules": [{
                    "apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": [config_map], "verbs": ["get"],
                }]}),
            )?,
            rbac::<RoleBinding>(
                name,
                Some(namespace),
                l,
                json!({
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": subjects,
                }),
            )?,
        ])
    };
    let mut out = vec![
        cluster_role_binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            group(BOOTSTRAPPERS_GROUP),
        )?,
        cluster_role_binding(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            group(BOOTSTRAPPERS_GROUP),
        )?,
        cluster_role_binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            group("system:nodes"),
        )?,
        rbac::<ClusterRole>(
            "kubeadm:get-nodes",
            None,
            l,
            json!({"rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        )?,
        cluster_role_binding(
            "kubeadm:get-nodes",
            "kubeadm:get-nodes",
            group(BOOTSTRAPPERS_GROUP),
        )?,
        config_map(
            CLUSTER_INFO,
            KUBE_PUBLIC,
            l,
            "kubeconfig",
            cluster_kubeconfig(&c.endpoint),
        )?,
        config_map(
            KUBEADM_CONFIG,
            KUBE_SYSTEM,
            l,
            "ClusterConfiguration",
            yaml(&cluster_configuration),
        )?,
        config_map(
            KUBELET_CONFIG,
            KUBE_SYSTEM,
            l,
            "kubelet",
            yaml(&kubelet_configuration),
        )?,
    ];
    out.extend(kubernetes_endpoints(&c.endpoint, l)?);
    out.extend(reader(
        "kubeadm:bootstrap-signer-clusterinfo",
        KUBE_PUBLIC,
        CLUSTER_INFO,
        json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "system:anonymous"}]),
    )?);
    out.extend(reader(
        "kubeadm:nodes-kubeadm-config",
        KUBE_SYSTEM,
        KUBEADM_CONFIG,
        node_readers.clone(),
    )?);
    out.extend(reader(
        "kubeadm:kubelet-config",
        KUBE_SYSTEM,
        KUBELET_CONFIG,
        node_readers,
    )?);
    Ok(out)
}

/// The address and port of an `https://host:port` server whose host is
/// an IP address.
fn server_address(server: &str) -> Option<(std::net::IpAddr, u16)> {
    let uri: http::Uri = server.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.parse().ok()?, uri.port_u16().unwrap_or(443)))
}

/// The endpoints of `default/kubernetes` (an Endpoints and an
/// EndpointSlice, as kube-apiserver writes them), pointing at the
/// published endpoint; none when it is a host name (a slice needs an
/// address).
pub fn kubernetes_endpoints(
    endpoint: &ClusterEndpoint,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Object>, SerializeError> {
    let Some((ip, port)) = server_address(&endpoint.server) else {
        return Ok(Vec::new());
    };
    let mut endpoints_labels = labels.clone();
    // kube-apiserver's own: its slice is written alongside, not mirrored.
    endpoints_labels.insert(
        "endpointslice.kubernetes.io/skip-mirror".to_string(),
        "true".to_string(),
    );
    let mut slice_labels = labels.clone();
    slice_labels.insert(
        "kubernetes.io/service-name".to_string(),
        "kubernetes".to_string(),
    );
    let port_of = json!({"name": "https", "port": port, "protocol": "TCP"});
    Ok(vec![
        object::<Endpoints>(
            "kubernetes",
            json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": endpoints_labels},
                "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [port_of]}],
            }),
        )?,
        object::<EndpointSlice>(
            "kubernetes",
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": slice_labels},
                "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [port_of],
            }),
        )?,
    ])
}

/// A bootstrap token: `<id>.<secret>`, 6 and 16 characters of `[a-z0-9]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
    pub expires: jiff::Timestamp,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn random_string(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())]))
        .collect()
}

impl BootstrapToken {
    /// A new random token valid for [`TOKEN_LIFETIME`] from `now`.
    pub fn generate(now: jiff::Timestamp) -> Self {
        Self {
            id: random_string(6),
            secret: random_string(16),
            expires: now.checked_add(TOKEN_LIFETIME).unwrap_or(now),
        }
    }

    /// `<id>.<secret>`, as kubeadm and kubelet take it.
    pub fn value(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The token a bootstrap token Secret holds, if it is one.
    pub fn of(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        Some(Self {
            id: text("token-id")?,
            secret: text("token-secret")?,
            expires: text("expiration")?.parse().ok()?,
        })
    }

    /// Whether a VM still waiting to join should get a new token.
    pub fn needs_renewal(&self, now: jiff::Timestamp) -> bool {
        now >= self.renew_at()
    }

    /// When a third of its lifetime is left.
    pub fn renew_at(&self) -> jiff::Timestamp {
        self.expires
            .checked_sub(TOKEN_LIFETIME / 3)
            .unwrap_or(self.expires)
    }
}

/// The VM a token or user data Secret is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoiningVm<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub pool: &'a str,
    /// The pool's HostedCluster's owner labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl JoiningVm<'_> {
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(names::NODE_POOL_LABEL.to_string(), self.pool.to_string());
        labels.insert(names::JOINING_VM_LABEL.to_string(), self.name.to_string());
        labels
    }

    /// The label selector of the VM's tokens.
    pub fn token_selector(&self) -> String {
        format!("{}={}", names::JOINING_VM_LABEL, self.name)
    }

    /// The name of the VM's user data Secret.
    pub fn user_data_secret_name(&self) -> String {
        user_data_secret_name(self.name)
    }
}

/// The name of VM `vm`'s user data Secret.
pub fn user_data_secret_name(vm: &str) -> String {
    format!("{vm}-user-data")
}

/// The `kube-system` Secret of `token`, for `vm`.
pub fn token_secret(vm: &JoiningVm<'_>, token: &BootstrapToken) -> Secret {
    let data = [
        ("token-id", token.id.clone()),
        ("token-secret", token.secret.clone()),
        ("expiration", token.expires.to_string()),
        ("usage-bootstrap-authentication", "true".to_string()),
        ("usage-bootstrap-signing", "true".to_string()),
        ("auth-extra-groups", BOOTSTRAPPERS_GROUP.to_string()),
        (
            "description",
            format!(
                "Joins VM {}/{} of NodePool {} to its hosted cluster; revoked once its node has joined.",
                vm.namespace, vm.name, vm.pool
            ),
        ),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{TOKEN_SECRET_PREFIX}{}", token.id)),
            namespace: Some(KUBE_SYSTEM.to_string()),
            labels: Some(vm.labels()),
            ..ObjectMeta::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// What a node needs to join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinNode<'a> {
    pub endpoint: &'a ClusterEndpoint,
    pub token: &'a BootstrapToken,
    pub node_name: &'a str,
    pub kubernetes_version: &'a str,
}

/// The `JoinConfiguration` of a node.
pub fn join_configuration(n: &JoinNode<'_>) -> Value {
    let api = kubeadm_api(n.kubernetes_version);
    let args = [
        ("provider-id", format!("kubevirt://{}", n.node_name)),
        ("cloud-provider", "external".to_string()),
    ];
    let kubelet_args = if api.ends_with("v1beta3") {
        Value::Object(
            args.into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    } else {
        args.into_iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect()
    };
    json!({
        "apiVersion": api,
        "kind": "JoinConfiguration",
        "discovery": {
            "file": {"kubeConfigPath": DISCOVERY_KUBECONFIG_PATH},
            "tlsBootstrapToken": n.token.value(),
        },
        "nodeRegistration": {
            "name": n.node_name,
            "kubeletExtraArgs": kubelet_args,
        },
    })
}

/// The cloud-init user data of a node: the discovery kubeconfig and the
/// join configuration as files, then `kubeadm join`.
pub fn user_data(n: &JoinNode<'_>) -> String {
    let config = json!({
        "write_files": [
            {
                "path": DISCOVERY_KUBECONFIG_PATH,
                "permissions": "0600",
                "content": cluster_kubeconfig(n.endpoint),
            },
            {
                "path": JOIN_CONFIG_PATH,
                "permissions": "0600",
                "content": yaml(&join_configuration(n)),
            },
        ],
        "runcmd": [["kubeadm", "join", "--config", JOIN_CONFIG_PATH]],
    });
    format!("#cloud-config\n{}", yaml(&config))
}

/// The VM's user data Secret in the infra namespace, owned by the VM (so
/// it goes with it).
pub fn user_data_secret(vm: &JoiningVm<'_>, user_data: String) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(vm.user_data_secret_name()),
            namespace: Some(vm.namespace.to_string()),
            labels: Some(vm.labels()),
            owner_references: Some(vec![OwnerReference {
                api_version: "kubevirt.io/v1".to_string(),
                kind: "VirtualMachine".to_string(),
                name: vm.name.to_string(),
                uid: vm.uid.to_string(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            USER_DATA_KEY.to_string(),
            ByteString(user_data.into_bytes()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token a VM's user data Secret was written with.
    fn token_in_user_data(secret: &Secret) -> Option<String> {
        let text = secret
            .data
            .as_ref()?
            .get(USER_DATA_KEY)
            .and_then(|v| std::str::from_utf8(&v.0).ok())?;
        let config: Value = serde_yaml::from_str(text).ok()?;
        let join = config["write_files"]
            .as_array()?
            .iter()
            .find(|f| f["path"] == JOIN_CONFIG_PATH)?["content"]
            .as_str()?;
        let join: Value = serde_yaml::from_str(join).ok()?;
        join["discovery"]["tlsBootstrapToken"]
            .as_str()
            .map(str::to_string)
    }

    fn endpoint() -> ClusterEndpoint {
        ClusterEndpoint {
            server: "https://192.168.200.1:6443".to_string(),
            certificate_authority_data: Some("Q0E=".to_string()),
            insecure_skip_tls_verify: false,
        }
    }

    fn cluster() -> JoinCluster {
        JoinCluster {
            endpoint: endpoint(),
            kubernetes_version: "1.32.13".to_string(),
            cluster_name: "guest1-x7k2p".to_string(),
            service_cidr: "172.31.0.0/16".to_string(),
            cluster_cidr: "10.132.0.0/14".to_string(),
            dns_address: "172.31.0.10".to_string(),
            labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-12-07T00:00:00Z".parse().expect("time")
    }

    fn joining(labels: &BTreeMap<String, String>) -> JoiningVm<'_> {
        JoiningVm {
            name: "workers-abcde",
            namespace: "clusters-guest1",
            uid: "u",
            pool: "workers",
            labels,
        }
    }

    #[test]
    fn cluster_objects_are_kubeadms() {
        let objects = cluster_objects(&cluster()).expect("objects");
        let find = |kind: &str, name: &str| {
            objects
                .iter()
                .find(|o| o.resource.kind == kind && o.name() == name)
                .unwrap_or_else(|| panic!("{kind} {name}"))
        };
        let info = find("ConfigMap", "cluster-info");
        assert_eq!(info.namespace(), Some("kube-public"));
        let kubeconfig: Value = serde_yaml::from_str(
            info.body["data"]["kubeconfig"]
                .as_str()
                .expect("kubeconfig"),
        )
        .expect("yaml");
        assert_eq!(
            kubeconfig["clusters"][0]["cluster"]["server"],
            "https://192.168.200.1:6443"
        );
        let anonymous = find("RoleBinding", "kubeadm:bootstrap-signer-clusterinfo");
        assert_eq!(anonymous.body["subjects"][0]["name"], "system:anonymous");
        let approve = find("ClusterRoleBinding", "kubeadm:node-autoapprove-bootstrap");
        assert_eq!(approve.body["subjects"][0]["name"], BOOTSTRAPPERS_GROUP);
        let config: Value = serde_yaml::from_str(
            find("ConfigMap", "kubeadm-config").body["data"]["ClusterConfiguration"]
                .as_str()
                .expect("config"),
        )
        .expect("yaml");
        assert_eq!(config["kubernetesVersion"], "v1.32.13");
        assert_eq!(config["controlPlaneEndpoint"], "192.168.200.1:6443");
        assert_eq!(config["apiVersion"], "kubeadm.k8s.io/v1beta4");
        assert!(
            objects
                .iter()
                .all(|o| o.body["metadata"]["labels"]["a"] == "b")
        );
    }

    #[test]
    fn tokens_are_random_well_formed_and_renewed_late() {
        let a = BootstrapToken::generate(now());
        let b = BootstrapToken::generate(now());
        assert_ne!(a.value(), b.value());
        assert_eq!(a.id.len(), 6);
        assert_eq!(a.secret.len(), 16);
        assert!(
            a.value()
                .bytes()
                .all(|c| c == b'.' || TOKEN_ALPHABET.contains(&c))
        );
        assert!(!a.needs_renewal(now()));
        let late = now() + jiff::SignedDuration::from_hours(17);
        assert!(a.needs_renewal(late));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn token_secret_round_trips_and_is_kubeadms() {
        let labels = BTreeMap::new();
        let vm = joining(&labels);
        let token = BootstrapToken::generate(now());
        let secret = token_secret(&vm, &token);
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(format!("bootstrap-token-{}", token.id).as_str())
        );
        assert_eq!(secret.type_.as_deref(), Some(TOKEN_SECRET_TYPE));
        assert_eq!(BootstrapToken::of(&secret), Some(token));
    }

    #[test]
    fn user_data_joins_with_the_token_and_ca() {
        let ep = endpoint();
        let token = BootstrapToken::generate(now());
        let node = JoinNode {
            endpoint: &ep,
            token: &token,
            node_name: "workers-abcde",
            kubernetes_version: "1.32.13",
        };
        let text = user_data(&node);
        assert!(text.starts_with("#cloud-config\n"));
        let labels = BTreeMap::new();
        let vm = joining(&labels);
        let secret = user_data_secret(&vm, text.clone());
        assert_eq!(token_in_user_data(&secret), Some(token.value()));
        let config: Value = serde_yaml::from_str(&text).expect("yaml");
        let discovery: Value = serde_yaml::from_str(
            config["write_files"][0]["content"]
                .as_str()
                .expect("content"),
        )
        .expect("kubeconfig");
        assert_eq!(
            discovery["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        let join = join_configuration(&node);
        assert_eq!(
            join["nodeRegistration"]["kubeletExtraArgs"][0],
            json!({"name": "provider-id", "value": "kubevirt://workers-abcde"})
        );
        let old = join_configuration(&JoinNode {
            kubernetes_version: "1.30.4",
            ..node
        });
        assert_eq!(old["apiVersion"], "kubeadm.k8s.io/v1beta3");
        assert_eq!(
            old["nodeRegistration"]["kubeletExtraArgs"]["provider-id"],
            "kubevirt://workers-abcde"
        );
    }
}
