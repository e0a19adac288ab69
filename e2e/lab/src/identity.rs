//! Who each daemon is in the lab: the ServiceAccount its shipped manifests
//! give it, with exactly the RBAC those manifests grant, applied the way
//! `kubectl apply -k` with an overlay applies them ([`Overlay`]: a namespace
//! and a name suffix, as kustomize's `namespace:` and `nameSuffix:` do), and
//! a token of that ServiceAccount from the TokenRequest API. A rule missing
//! from a manifest fails the test that needs it.
//!
//! The lab's own actors (simulators, stand-ins) authenticate with static
//! tokens of users named `lab:<actor>`; see [`crate::lab`].

use std::collections::BTreeSet;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use lab_cluster::Cluster;
use serde::Deserialize as _;
use serde_json::Value;

use crate::LabError;

/// A shipped manifest: its path in the source tree and its text.
#[derive(Clone, Copy, Debug)]
pub struct Manifest {
    pub path: &'static str,
    pub yaml: &'static str,
}

macro_rules! manifest {
    ($path:literal) => {
        Manifest {
            path: $path,
            yaml: include_str!(concat!("../../../", $path)),
        }
    };
}

/// The CSI controller in the infra cluster (ServiceAccount `kubevirt-csi`).
pub const CSI_INFRA: [Manifest; 2] = [
    manifest!("manifests/csi-driver/infra/serviceaccount.yaml"),
    manifest!("manifests/csi-driver/infra/rbac.yaml"),
];
pub const CSI_INFRA_ACCOUNT: &str = "kubevirt-csi";
/// The CSI controller's sidecars in the guest cluster
/// (`kubevirt-csi-driver/kubevirt-csi-controller-sa`).
pub const CSI_TENANT_CONTROLLER: [Manifest; 1] = [manifest!(
    "manifests/csi-driver/tenant/controller-rbac.yaml"
)];
pub const CSI_TENANT_CONTROLLER_ACCOUNT: &str = "kubevirt-csi-controller-sa";
/// The CSI node plugin in the guest cluster
/// (`kubevirt-csi-driver/kubevirt-csi-node-sa`).
pub const CSI_TENANT_NODE: [Manifest; 1] =
    [manifest!("manifests/csi-driver/tenant/node-rbac.yaml")];
pub const CSI_TENANT_NODE_ACCOUNT: &str = "kubevirt-csi-node-sa";
/// The guest namespace of the CSI driver's guest-side ServiceAccounts.
pub const CSI_TENANT_NAMESPACE: &str = "kubevirt-csi-driver";
/// The cloud controller manager in the infra cluster
/// (ServiceAccount `cloud-controller-manager`).
pub const CCM_INFRA: [Manifest; 2] = [
    manifest!("manifests/cloud-provider/serviceaccount.yaml"),
    manifest!("manifests/cloud-provider/rbac.yaml"),
];
/// The cloud controller manager in the guest cluster
/// (`kube-system/cloud-controller-manager`).
pub const CCM_GUEST: [Manifest; 1] = [manifest!("manifests/cloud-provider/guest/rbac.yaml")];
pub const CCM_ACCOUNT: &str = "cloud-controller-manager";
pub const CCM_GUEST_NAMESPACE: &str = "kube-system";
/// The hosted-control-plane manager in the management cluster
/// (`kubevirt-hcp-manager/kubevirt-hcp-manager`).
pub const MANAGER: [Manifest; 1] = [manifest!("manifests/manager/rbac.yaml")];
pub const MANAGER_ACCOUNT: &str = "kubevirt-hcp-manager";
pub const MANAGER_NAMESPACE: &str = "kubevirt-hcp-manager";

/// How manifests are applied: kustomize's `namespace:` and `nameSuffix:`.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// Namespace of every namespaced object and ServiceAccount subject;
    /// None keeps the manifests' own.
    pub namespace: Option<String>,
    /// Appended to the name of every object, and to references to them.
    pub name_suffix: String,
}

impl Overlay {
    pub fn namespace(namespace: &str) -> Overlay {
        Overlay {
            namespace: Some(namespace.to_string()),
            name_suffix: String::new(),
        }
    }

    pub fn suffixed(mut self, suffix: &str) -> Overlay {
        self.name_suffix = suffix.to_string();
        self
    }
}

/// A daemon's identity in one cluster.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The user name the API server knows it by
    /// (`system:serviceaccount:<namespace>:<name>`).
    pub user: String,
    pub token: String,
    /// The namespace of its ServiceAccount.
    pub namespace: String,
}

/// Applies `manifests` with `overlay` to `cluster` and returns a token of
/// their ServiceAccount `account` (suffixed like everything else).
pub async fn service_account(
    cluster: &Cluster,
    manifests: &[Manifest],
    overlay: &Overlay,
    account: &str,
) -> Result<Identity, LabError> {
    let docs = render(manifests, overlay)?;
    let name = format!("{account}{}", overlay.name_suffix);
    let namespace = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == name.as_str())
        .and_then(|d| d["metadata"]["namespace"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "the manifests define no namespaced ServiceAccount {name}"
            ))
        })?;
    apply(cluster, &docs).await?;
    let token = cluster.service_account_token(&namespace, &name).await?;
    Ok(Identity {
        user: format!("system:serviceaccount:{namespace}:{name}"),
        token,
        namespace,
    })
}

/// The CSI controller's identities in `lab`: ServiceAccount
/// `kubevirt-csi` with its Role in the tenant's infra namespace
/// (manifests/csi-driver/infra), and the guest ServiceAccount of its
/// sidecars (manifests/csi-driver/tenant/controller-rbac.yaml).
pub async fn csi_controller(lab: &crate::Lab) -> Result<(Identity, Identity), LabError> {
    let infra = service_account(
        &lab.infra,
        &CSI_INFRA,
        &Overlay::namespace(&lab.infra_namespace),
        CSI_INFRA_ACCOUNT,
    )
    .await?;
    let guest = service_account(
        &lab.guest,
        &CSI_TENANT_CONTROLLER,
        &Overlay::default(),
        CSI_TENANT_CONTROLLER_ACCOUNT,
    )
    .await?;
    Ok((infra, guest))
}

/// Applies `manifests` with `overlay` (server-side apply, namespaces created
/// when missing).
pub async fn install(
    cluster: &Cluster,
    manifests: &[Manifest],
    overlay: &Overlay,
) -> Result<(), LabError> {
    apply(cluster, &render(manifests, overlay)?).await
}

async fn apply(cluster: &Cluster, docs: &[Value]) -> Result<(), LabError> {
    let client = cluster.client();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    for ns in namespaces {
        lab_cluster::ensure_namespace(&client, ns).await?;
    }
    let params = PatchParams::apply("kubevirt-lab").force();
    for doc in docs {
        let object: DynamicObject = serde_json::from_value(doc.clone())
            .map_err(|e| LabError::Invalid(format!("manifest object: {e}")))?;
        let (resource, namespaced) = resource_of(doc)?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match (namespaced, object.metadata.namespace.as_deref()) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (true, None) => {
                return Err(LabError::Invalid(format!(
                    "{} {name} needs a namespace (an overlay gives one)",
                    resource.kind
                )));
            }
            (false, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object)).await?;
    }
    Ok(())
}

/// The manifests' documents with the overlay applied.
pub fn render(manifests: &[Manifest], overlay: &Overlay) -> Result<Vec<Value>, LabError> {
    let mut docs = Vec::new();
    for m in manifests {
        for doc in serde_yaml::Deserializer::from_str(m.yaml) {
            let value = Value::deserialize(doc)
                .map_err(|e| LabError::Invalid(format!("{}: {e}", m.path)))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    // Names of what the manifests define, by kind: only references to
    // those are renamed, as kustomize does.
    let defined: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let suffix = &overlay.name_suffix;
    let renamed = |kind: &str, name: &str| {
        if defined.contains(&(kind.to_string(), name.to_string())) {
            format!("{name}{suffix}")
        } else {
            name.to_string()
        }
    };
    for doc in &mut docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        doc["metadata"]["name"] = Value::String(format!("{name}{suffix}"));
        if let Some(ns) = &overlay.namespace
            && is_namespaced(&kind)
        {
            doc["metadata"]["namespace"] = Value::String(ns.clone());
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            let role_kind = doc["roleRef"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let role = doc["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            doc["roleRef"]["name"] = Value::String(renamed(&role_kind, &role));
            let binding_ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
            if let Some(subjects) = doc["subjects"].as_array_mut() {
                for s in subjects
                    .iter_mut()
                    .filter(|s| s["kind"] == "ServiceAccount")
                {
                    let account = s["name"].as_str().unwrap_or_default().to_string();
                    s["name"] = Value::String(renamed("ServiceAccount", &account));
                    let ns = overlay
                        .namespace
                        .clone()
                        .or_else(|| s["namespace"].as_str().map(str::to_string))
                        .or_else(|| binding_ns.clone());
                    if let Some(ns) = ns {
                        s["namespace"] = Value::String(ns);
                    }
                }
            }
        }
    }
    Ok(docs)
}

fn is_namespaced(kind: &str) -> bool {
    matches!(kind, "ServiceAccount" | "Role" | "RoleBinding")
}

fn resource_of(doc: &Value) -> Result<(ApiResource, bool), LabError> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version, plural, namespaced) = match kind {
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "Namespace" => ("", "v1", "namespaces", false),
        "Role" => ("rbac.authorization.k8s.io", "v1", "roles", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings", true),
        "ClusterRole" => ("rbac.authorization.k8s.io", "v1", "clusterroles", false),
        "ClusterRoleBinding" => (
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            false,
        ),
        other => {
            return Err(LabError::Invalid(format!(
                "identity manifests hold ServiceAccounts and RBAC, not {other}"
            )));
        }
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_sets_namespaces_and_suffixes_names_and_references() {
        let docs =
            render(&CCM_INFRA, &Overlay::namespace("tenant-a").suffixed("-a")).expect("renders");
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{kind} {name} in {docs:#?}"))
        };
        let sa = find("ServiceAccount", "cloud-controller-manager-a");
        assert_eq!(sa["metadata"]["namespace"], "tenant-a");
        let binding = find("RoleBinding", "kubevirt-cloud-controller-manager-a");
        assert_eq!(
            binding["roleRef"]["name"],
            "kubevirt-cloud-controller-manager-a"
        );
        assert_eq!(binding["subjects"][0]["name"], "cloud-controller-manager-a");
        assert_eq!(binding["subjects"][0]["namespace"], "tenant-a");
        let cluster_binding = find(
            "ClusterRoleBinding",
            "kubevirt-cloud-controller-manager-infra-nodes-a",
        );
        assert!(cluster_binding["metadata"]["namespace"].is_null());
        assert_eq!(cluster_binding["subjects"][0]["namespace"], "tenant-a");
    }

    #[test]
    fn without_an_overlay_the_manifests_are_applied_as_written() {
        let docs = render(&CSI_TENANT_NODE, &Overlay::default()).expect("renders");
        assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount"
            && d["metadata"]["name"] == CSI_TENANT_NODE_ACCOUNT
            && d["metadata"]["namespace"] == CSI_TENANT_NAMESPACE));
    }
}
