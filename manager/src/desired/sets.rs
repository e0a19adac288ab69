//! The complete object sets of one hosted cluster, split by the cluster they
//! go to: the management cluster (control-plane namespace), the external
//! infra cluster (the daemons' accounts), and the guest cluster. Applying a
//! set and pruning what carries the cluster's labels but is not in the set
//! converges that cluster.
//!
//! The token kubeconfig Secrets (of an external infra cluster, and of a
//! hosted guest, where the daemons get identities of their own instead of
//! the admin kubeconfig) are not in these sets: their tokens come from the
//! TokenRequest API and are refreshed on their own schedule (see
//! [`super::kubeconfig`]); [`infra_kubeconfigs`] and [`guest_kubeconfigs`]
//! give their names and token-free kubeconfig text.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::ClusterInputs;
use super::controlplane::{
    guest_kubeconfig_secret, namespace, role, role_binding, service_account,
};
use super::kubeconfig::{ClusterEndpoint, token_kubeconfig};
use super::object::{Object, SerializeError};
use super::{ccm, csi, guest, snapshots};
use crate::hash;
use crate::names;

/// The sides of a hosted cluster, as the [`names::SIDE_LABEL`] value.
pub mod side {
    pub const MANAGEMENT: &str = "management";
    pub const INFRA: &str = "infra";
    pub const GUEST: &str = "guest";
}

/// The selector of one side's objects of a hosted cluster.
pub fn side_selector(inp: &ClusterInputs, side: &str) -> String {
    format!("{},{}={side}", inp.owner_selector(), names::SIDE_LABEL)
}

/// Label every object with its side.
pub fn tag(objects: &mut [Object], side: &str) {
    for o in objects {
        if let Some(labels) = o
            .body
            .pointer_mut("/metadata/labels")
            .and_then(|l| l.as_object_mut())
        {
            labels.insert(names::SIDE_LABEL.to_string(), side.into());
        }
    }
}

/// The objects of one hosted cluster, per target cluster, in apply order.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Management cluster: the control-plane namespace and what is in it (and
    /// the daemons' infra RBAC when the infra is this cluster).
    pub management: Vec<Object>,
    /// External infra cluster: the daemons' ServiceAccounts and Roles in the
    /// infra namespace. Empty when the infra is the management cluster.
    pub infra: Vec<Object>,
    /// Guest cluster.
    pub guest: Vec<Object>,
}

/// A daemon's token kubeconfig: of its ServiceAccount on an external infra
/// cluster, or in a hosted guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenKubeconfig {
    /// Secret name in the control-plane namespace.
    pub secret: &'static str,
    /// The ServiceAccount whose token it holds, and its namespace.
    pub account: &'static str,
    pub account_namespace: String,
    /// The kubeconfig text (the token is in a file next to it).
    pub kubeconfig: String,
}

impl TokenKubeconfig {
    /// Secret `secret`: a kubeconfig for `endpoint` as ServiceAccount
    /// `namespace/account`, whose token the pod reads from `token_file`.
    fn new(
        endpoint: &ClusterEndpoint,
        secret: &'static str,
        account: &'static str,
        namespace: &str,
        token_file: &str,
    ) -> Self {
        Self {
            secret,
            account,
            account_namespace: namespace.to_string(),
            kubeconfig: token_kubeconfig(endpoint, account, token_file, namespace),
        }
    }
}

/// The token kubeconfigs the daemons need on an external infra cluster.
pub fn infra_kubeconfigs(inp: &ClusterInputs, endpoint: &ClusterEndpoint) -> Vec<TokenKubeconfig> {
    let namespace = &inp.infra_namespace;
    let mut out = Vec::new();
    if inp.csi_enabled() {
        out.push(TokenKubeconfig::new(
            endpoint,
            names::CSI_INFRA_KUBECONFIG,
            names::CSI_INFRA_SERVICE_ACCOUNT,
            namespace,
            csi::INFRA_TOKEN_FILE,
        ));
    }
    out.push(TokenKubeconfig::new(
        endpoint,
        names::CCM_INFRA_KUBECONFIG,
        names::CCM,
        namespace,
        ccm::INFRA_TOKEN_FILE,
    ));
    out
}

/// The token kubeconfigs of the daemons in a hosted guest (none for a
/// guest the user runs: there they get the kubeconfig the user gave): the
/// CSI controller and the snapshot controller as their ServiceAccounts in
/// the CSI namespace, the CCM as `kube-system/cloud-controller-manager`.
pub fn guest_kubeconfigs(inp: &ClusterInputs) -> Vec<TokenKubeconfig> {
    let Some(endpoint) = inp.guest_endpoint.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if inp.csi_enabled() {
        out.push(TokenKubeconfig::new(
            endpoint,
            names::CSI_TENANT_KUBECONFIG,
            names::GUEST_CSI_CONTROLLER_SA,
            names::GUEST_CSI_NAMESPACE,
            csi::TENANT_TOKEN_FILE,
        ));
        out.push(TokenKubeconfig::new(
            endpoint,
            names::SNAPSHOT_CONTROLLER_KUBECONFIG,
            names::SNAPSHOT_CONTROLLER,
            names::GUEST_CSI_NAMESPACE,
            snapshots::GUEST_TOKEN_FILE,
        ));
    }
    out.push(TokenKubeconfig::new(
        endpoint,
        names::CCM_GUEST_KUBECONFIG,
        ccm::GUEST_ACCOUNT,
        ccm::GUEST_ACCOUNT_NAMESPACE,
        ccm::GUEST_TOKEN_FILE,
    ));
    out
}

fn config_hash(parts: &[&[u8]]) -> String {
    hash::hex(hash::fnv1a_parts(parts.iter().copied()))
}

/// Build the object sets. `endpoint` is the external infra cluster (its
/// kubeconfigs feed the config hashes); `live_default_annotation` is the
/// guest default StorageClass's current `is-default-class` value.
pub fn cluster_objects(
    inp: &ClusterInputs,
    endpoint: Option<&ClusterEndpoint>,
    live_default_annotation: Option<&str>,
) -> Result<ClusterObjects, SerializeError> {
    let kubeconfigs = endpoint
        .map(|ep| infra_kubeconfigs(inp, ep))
        .unwrap_or_default();
    let infra_kubeconfig = |secret: &str| {
        kubeconfigs
            .iter()
            .find(|k| k.secret == secret)
            .map(|k| k.kubeconfig.as_bytes())
            .unwrap_or_default()
    };
    let guest_kubeconfigs = guest_kubeconfigs(inp);
    // What a daemon's guest kubeconfig Secret holds, for its config hash:
    // its token kubeconfig in a hosted guest, else the user's kubeconfig.
    let guest_kubeconfig = |secret: &str| {
        guest_kubeconfigs
            .iter()
            .find(|k| k.secret == secret)
            .map_or(inp.guest_kubeconfig.as_slice(), |k| k.kubeconfig.as_bytes())
    };
    let mut out = ClusterObjects::default();
    let cp = &inp.control_plane_namespace;
    let labels = inp.owner_labels();

    out.management.push(Object::new(&namespace(inp))?);

    // The daemons' infra accounts: in the control-plane namespace (which is
    // the infra namespace) or on the external infra cluster. The pods run as
    // the management-side accounts in both cases.
    let infra_rbac = |sa: &str, rules| -> Result<Vec<Object>, SerializeError> {
        let ns = &inp.infra_namespace;
        Ok(vec![
            Object::new(&service_account(sa, ns, labels.clone()))?,
            Object::new(&role(sa, ns, labels.clone(), rules))?,
            Object::new(&role_binding(sa, ns, labels.clone()))?,
        ])
    };
    let pod_account = |sa: &str| -> Result<Object, SerializeError> {
        Object::new::<ServiceAccount>(&service_account(sa, cp, labels.clone()))
    };

    if inp.csi_enabled() {
        let config = csi::driver_config(inp);
        let tenant = guest_kubeconfig_secret(inp, names::CSI_TENANT_KUBECONFIG);
        let data = config.data.clone().unwrap_or_default();
        let hash = config_hash(&[
            data.get(names::CSI_KEY_INFRA_NAMESPACE)
                .map(String::as_bytes)
                .unwrap_or_default(),
            data.get(names::CSI_KEY_INFRA_LABELS)
                .map(String::as_bytes)
                .unwrap_or_default(),
            data.get(names::CSI_KEY_ENFORCEMENT)
                .map(String::as_bytes)
                .unwrap_or_default(),
            guest_kubeconfig(names::CSI_TENANT_KUBECONFIG),
            infra_kubeconfig(names::CSI_INFRA_KUBECONFIG),
        ]);
        if inp.external_infra {
            out.management
                .push(pod_account(names::CSI_INFRA_SERVICE_ACCOUNT)?);
            out.infra.extend(infra_rbac(
                names::CSI_INFRA_SERVICE_ACCOUNT,
                csi::infra_role_rules(),
            )?);
        } else {
            out.management.extend(infra_rbac(
                names::CSI_INFRA_SERVICE_ACCOUNT,
                csi::infra_role_rules(),
            )?);
        }
        out.management.push(Object::new(&config)?);
        if !inp.hosted {
            out.management.push(Object::new(&tenant)?);
        }
        out.management
            .push(Object::new(&csi::controller_deployment(inp, &hash))?);
        if inp.hosted {
            let hash = config_hash(&[guest_kubeconfig(names::SNAPSHOT_CONTROLLER_KUBECONFIG)]);
            out.management
                .push(Object::new(&snapshots::controller_deployment(inp, &hash))?);
        }

        out.guest.push(Object::new(&guest::namespace(inp))?);
        out.guest.push(Object::new(&service_account(
            names::GUEST_CSI_NODE_SA,
            names::GUEST_CSI_NAMESPACE,
            labels.clone(),
        ))?);
        out.guest.push(Object::new(&service_account(
            names::GUEST_CSI_CONTROLLER_SA,
            names::GUEST_CSI_NAMESPACE,
            labels.clone(),
        ))?);
        out.guest.push(Object::new(&guest::cluster_role(
            inp,
            names::GUEST_CSI_NODE_CLUSTER_ROLE,
            guest::node_cluster_role_rules(),
        ))?);
        out.guest.push(Object::new(&guest::cluster_role(
            inp,
            names::GUEST_CSI_CONTROLLER_CLUSTER_ROLE,
            guest::controller_cluster_role_rules(),
        ))?);
        out.guest.push(Object::new(&guest::cluster_role_binding(
            inp,
            names::GUEST_CSI_NODE_BINDING,
            names::GUEST_CSI_NODE_CLUSTER_ROLE,
            names::GUEST_CSI_NODE_SA,
            names::GUEST_CSI_NAMESPACE,
        ))?);
        out.guest.push(Object::new(&guest::cluster_role_binding(
            inp,
            names::GUEST_CSI_CONTROLLER_BINDING,
            names::GUEST_CSI_CONTROLLER_CLUSTER_ROLE,
            names::GUEST_CSI_CONTROLLER_SA,
            names::GUEST_CSI_NAMESPACE,
        ))?);
        if inp.hosted {
            out.guest.extend(guest_account(
                inp,
                names::SNAPSHOT_CONTROLLER,
                names::GUEST_CSI_NAMESPACE,
                snapshots::guest_cluster_role_rules(),
                snapshots::guest_leader_rules(),
            )?);
        }
        out.guest.push(Object::new(&guest::csi_driver(inp))?);
        out.guest.push(Object::new(&guest::node_daemonset(inp))?);
        for sc in guest::storage_classes(inp, live_default_annotation) {
            out.guest.push(Object::new(&sc)?);
        }
        for vsc in guest::snapshot_classes(inp) {
            out.guest.push(Object::new(&vsc)?.optional());
        }
    }

    let cloud = ccm::cloud_config(inp);
    let guest_secret = guest_kubeconfig_secret(inp, names::CCM_GUEST_KUBECONFIG);
    let hash = config_hash(&[
        ccm::cloud_config_yaml(inp).as_bytes(),
        guest_kubeconfig(names::CCM_GUEST_KUBECONFIG),
        infra_kubeconfig(names::CCM_INFRA_KUBECONFIG),
    ]);
    if inp.hosted {
        out.guest.extend(guest_account(
            inp,
            ccm::GUEST_ACCOUNT,
            ccm::GUEST_ACCOUNT_NAMESPACE,
            ccm::guest_cluster_role_rules(),
            ccm::guest_leader_rules(),
        )?);
    }
    if inp.external_infra {
        out.management.push(pod_account(names::CCM)?);
        out.infra
            .extend(infra_rbac(names::CCM, ccm::infra_role_rules())?);
    } else {
        out.management
            .extend(infra_rbac(names::CCM, ccm::infra_role_rules())?);
    }
    out.management.push(Object::new(&cloud)?);
    if !inp.hosted {
        out.management.push(Object::new(&guest_secret)?);
    }
    out.management
        .push(Object::new(&ccm::deployment(inp, &hash))?);
    tag(&mut out.management, side::MANAGEMENT);
    tag(&mut out.infra, side::INFRA);
    tag(&mut out.guest, side::GUEST);
    Ok(out)
}

/// A daemon's identity in a hosted guest: ServiceAccount `account` in
/// `namespace`, a ClusterRole of `rules` and a Role of `leader_rules` in
/// that namespace (both named after the account), bound to it.
fn guest_account(
    inp: &ClusterInputs,
    account: &str,
    namespace: &str,
    rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    leader_rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
) -> Result<Vec<Object>, SerializeError> {
    let labels = inp.owner_labels();
    let cluster_role = format!("kubevirt-{account}");
    Ok(vec![
        Object::new(&service_account(account, namespace, labels.clone()))?,
        Object::new(&guest::cluster_role(inp, &cluster_role, rules))?,
        Object::new(&guest::cluster_role_binding(
            inp,
            &cluster_role,
            &cluster_role,
            account,
            namespace,
        ))?,
        Object::new(&role(account, namespace, labels.clone(), leader_rules))?,
        Object::new(&role_binding(account, namespace, labels))?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{StorageDriverSpec, StorageDriverType};
    use crate::desired::fixtures::*;

    fn keys(objects: &[Object]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o.resource.kind,
                    o.namespace().unwrap_or("-"),
                    o.name()
                )
            })
            .collect()
    }

    #[test]
    fn same_cluster_sets() {
        let set = cluster_objects(&inputs(&hosted_cluster()), None, None).expect("objects");
        assert_eq!(
            keys(&set.management),
            vec![
                "Namespace/-/clusters-guest1",
                "ServiceAccount/clusters-guest1/kubevirt-csi",
                "Role/clusters-guest1/kubevirt-csi",
                "RoleBinding/clusters-guest1/kubevirt-csi",
                "ConfigMap/clusters-guest1/driver-config",
                "Secret/clusters-guest1/kubevirt-csi-controller-tenant-kubeconfig",
                "Deployment/clusters-guest1/kubevirt-csi-controller",
                "ServiceAccount/clusters-guest1/kubevirt-cloud-controller-manager",
                "Role/clusters-guest1/kubevirt-cloud-controller-manager",
                "RoleBinding/clusters-guest1/kubevirt-cloud-controller-manager",
                "ConfigMap/clusters-guest1/kubevirt-cloud-config",
                "Secret/clusters-guest1/service-network-admin-kubeconfig",
                "Deployment/clusters-guest1/kubevirt-cloud-controller-manager",
            ]
        );
        assert!(set.infra.is_empty());
        assert_eq!(
            keys(&set.guest),
            vec![
                "Namespace/-/kubevirt-csi-driver",
                "ServiceAccount/kubevirt-csi-driver/kubevirt-csi-node-sa",
                "ServiceAccount/kubevirt-csi-driver/kubevirt-csi-controller-sa",
                "ClusterRole/-/kubevirt-csi-node-cr",
                "ClusterRole/-/kubevirt-csi-controller-cr",
                "ClusterRoleBinding/-/kubevirt-csi-node-binding",
                "ClusterRoleBinding/-/kubevirt-csi-controller-binding",
                "CSIDriver/-/csi.kubevirt.io",
                "DaemonSet/kubevirt-csi-driver/kubevirt-csi-node",
                "StorageClass/-/kubevirt-csi-infra-default",
                "VolumeSnapshotClass/-/kubevirt-csi-snapshot",
            ]
        );
        assert!(set.management.iter().chain(&set.guest).all(|o| {
            o.body
                .pointer("/metadata/labels/hcp.kubevirt-rs.io~1hosted-cluster-name")
                == Some(&"guest1".into())
        }));
        let side_of = |o: &Object| {
            o.body
                .pointer("/metadata/labels/hcp.kubevirt-rs.io~1side")
                .cloned()
        };
        assert!(
            set.management
                .iter()
                .all(|o| side_of(o) == Some("management".into()))
        );
        assert!(set.guest.iter().all(|o| side_of(o) == Some("guest".into())));
    }

    #[test]
    fn external_infra_moves_rbac_to_the_infra_cluster() {
        let inp = inputs(&external(hosted_cluster()));
        let ep = ClusterEndpoint {
            server: "https://infra:6443".into(),
            certificate_authority_data: None,
            insecure_skip_tls_verify: false,
        };
        let set = cluster_objects(&inp, Some(&ep), None).expect("objects");
        assert_eq!(
            keys(&set.infra),
            vec![
                "ServiceAccount/guest1-vms/kubevirt-csi",
                "Role/guest1-vms/kubevirt-csi",
                "RoleBinding/guest1-vms/kubevirt-csi",
                "ServiceAccount/guest1-vms/kubevirt-cloud-controller-manager",
                "Role/guest1-vms/kubevirt-cloud-controller-manager",
                "RoleBinding/guest1-vms/kubevirt-cloud-controller-manager",
            ]
        );
        assert!(!keys(&set.management).iter().any(|k| k.starts_with("Role")));
        let kcs = infra_kubeconfigs(&inp, &ep);
        assert_eq!(
            kcs.iter().map(|k| k.secret).collect::<Vec<_>>(),
            vec![
                "kubevirt-csi-infra-kubeconfig",
                "kubevirt-cloud-controller-manager-infra-kubeconfig"
            ]
        );
        assert!(
            kcs[0]
                .kubeconfig
                .contains("/var/run/secrets/infracluster/token")
        );
        assert!(
            kcs[1]
                .kubeconfig
                .contains("/etc/kubernetes/infra-kubeconfig/token")
        );
    }

    #[test]
    fn a_hosted_guests_daemons_get_identities_of_their_own() {
        let mut inp = inputs(&hosted_cluster());
        inp.hosted = true;
        inp.guest_endpoint = Some(ClusterEndpoint {
            server: "https://192.168.0.10:30443".to_string(),
            certificate_authority_data: Some("Q0E=".to_string()),
            insecure_skip_tls_verify: false,
        });
        let set = cluster_objects(&inp, None, None).expect("objects");
        let management = keys(&set.management);
        // No copy of the admin kubeconfig: token Secrets instead.
        assert!(
            !management.iter().any(|k| k.ends_with("tenant-kubeconfig")
                || k.ends_with("service-network-admin-kubeconfig")),
            "{management:?}"
        );
        assert!(
            management.contains(&"Deployment/clusters-guest1/csi-snapshot-controller".to_string())
        );
        let guest = keys(&set.guest);
        for k in [
            "ServiceAccount/kube-system/cloud-controller-manager",
            "ClusterRole/-/kubevirt-cloud-controller-manager",
            "Role/kube-system/cloud-controller-manager",
            "ServiceAccount/kubevirt-csi-driver/csi-snapshot-controller",
            "ClusterRoleBinding/-/kubevirt-csi-snapshot-controller",
            "RoleBinding/kubevirt-csi-driver/csi-snapshot-controller",
        ] {
            assert!(guest.contains(&k.to_string()), "{k} not in {guest:?}");
        }
        let kcs = guest_kubeconfigs(&inp);
        assert_eq!(
            kcs.iter()
                .map(|k| (k.secret, k.account, k.account_namespace.as_str()))
                .collect::<Vec<_>>(),
            [
                (
                    "kubevirt-csi-controller-tenant-kubeconfig",
                    "kubevirt-csi-controller-sa",
                    "kubevirt-csi-driver"
                ),
                (
                    "csi-snapshot-controller-kubeconfig",
                    "csi-snapshot-controller",
                    "kubevirt-csi-driver"
                ),
                (
                    "service-network-admin-kubeconfig",
                    "cloud-controller-manager",
                    "kube-system"
                ),
            ]
        );
        assert!(kcs[0].kubeconfig.contains("https://192.168.0.10:30443"));
        assert!(
            kcs[0]
                .kubeconfig
                .contains("/var/run/secrets/tenantcluster/token")
        );
        assert!(
            kcs[2]
                .kubeconfig
                .contains("/etc/kubernetes/kubeconfig/token")
        );
        // A guest the user runs: the kubeconfig the user gave.
        assert!(guest_kubeconfigs(&inputs(&hosted_cluster())).is_empty());
    }

    #[test]
    fn storage_driver_none_deploys_only_the_ccm() {
        let mut hc = hosted_cluster();
        hc.spec.platform.kubevirt.storage_driver = Some(StorageDriverSpec {
            type_: StorageDriverType::None,
            manual: None,
        });
        let set = cluster_objects(&inputs(&hc), None, None).expect("objects");
        assert!(set.guest.is_empty());
        assert!(!keys(&set.management).iter().any(|k| k.contains("csi")));
        assert!(
            keys(&set.management).contains(
                &"Deployment/clusters-guest1/kubevirt-cloud-controller-manager".to_string()
            )
        );
    }

    #[test]
    fn config_changes_roll_the_daemons_and_nothing_else_does() {
        let hash_of = |set: &ClusterObjects, name: &str| {
            set.management
                .iter()
                .find(|o| o.resource.kind == "Deployment" && o.name() == name)
                .and_then(|o| {
                    o.body
                        .pointer(
                            "/spec/template/metadata/annotations/hcp.kubevirt-rs.io~1config-hash",
                        )
                        .cloned()
                })
                .expect("hash")
        };
        let base = inputs(&hosted_cluster());
        let a = cluster_objects(&base, None, None).expect("objects");
        let again = cluster_objects(&base, None, None).expect("objects");
        assert_eq!(
            hash_of(&a, names::CSI_CONTROLLER),
            hash_of(&again, names::CSI_CONTROLLER)
        );

        let manual_inp = inputs(&manual(hosted_cluster()));
        let b = cluster_objects(&manual_inp, None, None).expect("objects");
        assert_ne!(
            hash_of(&a, names::CSI_CONTROLLER),
            hash_of(&b, names::CSI_CONTROLLER)
        );
        assert_eq!(hash_of(&a, names::CCM), hash_of(&b, names::CCM));

        let mut other_kubeconfig = base.clone();
        other_kubeconfig.guest_kubeconfig = b"other".to_vec();
        let c = cluster_objects(&other_kubeconfig, None, None).expect("objects");
        assert_ne!(
            hash_of(&a, names::CSI_CONTROLLER),
            hash_of(&c, names::CSI_CONTROLLER)
        );
        assert_ne!(hash_of(&a, names::CCM), hash_of(&c, names::CCM));
    }
}
