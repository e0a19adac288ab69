//! The control-plane namespace of a hosted cluster and the guest kubeconfig
//! Secrets the daemons mount there, plus the small object builders the other
//! desired-object modules share.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ClusterInputs;
use crate::names;

/// Metadata with a name, an optional namespace and labels.
pub fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The control-plane namespace `<hc namespace>-<hc name>`.
pub fn namespace(inp: &ClusterInputs) -> Namespace {
    Namespace {
        metadata: meta(&inp.control_plane_namespace, None, inp.owner_labels()),
        ..Namespace::default()
    }
}

/// A Secret holding the guest kubeconfig under key `kubeconfig`, for a daemon.
pub fn guest_kubeconfig_secret(inp: &ClusterInputs, name: &str) -> Secret {
    Secret {
        metadata: meta(name, Some(&inp.control_plane_namespace), inp.owner_labels()),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            names::KUBECONFIG_KEY.to_string(),
            ByteString(inp.guest_kubeconfig.clone()),
        )])),
        ..Secret::default()
    }
}

/// A ServiceAccount.
pub fn service_account(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(namespace), labels),
        ..ServiceAccount::default()
    }
}

/// A policy rule.
pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |xs: &[&str]| Some(xs.iter().map(|s| s.to_string()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// A Role.
pub fn role(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    rules: Vec<PolicyRule>,
) -> Role {
    Role {
        metadata: meta(name, Some(namespace), labels),
        rules: Some(rules),
    }
}

/// A RoleBinding of Role `name` to ServiceAccount `name` in `namespace`.
pub fn role_binding(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> RoleBinding {
    RoleBinding {
        metadata: meta(name, Some(namespace), labels),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: name.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: name.to_string(),
            namespace: Some(namespace.to_string()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn namespace_is_named_like_hypershift_and_labelled() {
        let ns = namespace(&inputs(&hosted_cluster()));
        assert_eq!(ns.metadata.name.as_deref(), Some("clusters-guest1"));
        let labels = ns.metadata.labels.expect("labels");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "kubevirt-hcp-manager"
        );
        assert_eq!(
            labels["hcp.kubevirt-rs.io/hosted-cluster-namespace"],
            "clusters"
        );
        assert_eq!(labels["hcp.kubevirt-rs.io/hosted-cluster-name"], "guest1");
    }

    #[test]
    fn guest_kubeconfig_is_copied_under_key_kubeconfig() {
        let inp = inputs(&hosted_cluster());
        let s = guest_kubeconfig_secret(&inp, names::CSI_TENANT_KUBECONFIG);
        assert_eq!(
            s.metadata.name.as_deref(),
            Some("kubevirt-csi-controller-tenant-kubeconfig")
        );
        assert_eq!(s.metadata.namespace.as_deref(), Some("clusters-guest1"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.data.expect("data")["kubeconfig"].0, inp.guest_kubeconfig);
    }

    #[test]
    fn role_binding_binds_the_same_named_account() {
        let rb = role_binding("kubevirt-csi", "ns1", BTreeMap::new());
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(rb.role_ref.name, "kubevirt-csi");
        let subjects = rb.subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "kubevirt-csi");
        assert_eq!(subjects[0].namespace.as_deref(), Some("ns1"));
    }
}
