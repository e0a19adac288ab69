//! The CSI node id of this guest node, `<infra-namespace>/<vm-name>`, read
//! from the tenant Node object: `spec.providerID` `kubevirt://<vm>` plus the
//! annotation `cluster.x-k8s.io/cluster-namespace`, else the annotations
//! `csi.kubevirt.io/infra-vm-name` and `csi.kubevirt.io/infra-vm-namespace`.
//!
//! [`node_id_from_node`] is the pure rule; [`resolve_node_id`] watches the
//! Node until it exists and carries what the rule needs, bounded by a
//! timeout, and otherwise names exactly what is missing.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

pub const PROVIDER_ID_PREFIX: &str = "kubevirt://";
pub const CLUSTER_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";
pub const INFRA_VM_NAME_ANNOTATION: &str = "csi.kubevirt.io/infra-vm-name";
pub const INFRA_VM_NAMESPACE_ANNOTATION: &str = "csi.kubevirt.io/infra-vm-namespace";

/// Why no node id could be determined.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    #[error("node {node} did not appear within {waited:?}")]
    NodeNotFound { node: String, waited: Duration },

    #[error(
        "node {node} does not name its infra VM: {missing} (need spec.providerID {PROVIDER_ID_PREFIX}<vm> with annotation \
         {CLUSTER_NAMESPACE_ANNOTATION}, or annotations {INFRA_VM_NAME_ANNOTATION} and {INFRA_VM_NAMESPACE_ANNOTATION})"
    )]
    Incomplete { node: String, missing: String },

    #[error("watching node {node} failed: {source}")]
    Watch {
        node: String,
        #[source]
        source: watcher::Error,
    },
}

/// The node id for `node`, or a description of what it lacks.
pub fn node_id_from_node(node: &Node) -> Result<String, String> {
    let annotations = node.metadata.annotations.as_ref();
    let annotation = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    let vm_from_provider = provider_id
        .and_then(|id| id.strip_prefix(PROVIDER_ID_PREFIX))
        .filter(|vm| !vm.is_empty());

    if let (Some(vm), Some(ns)) = (vm_from_provider, annotation(CLUSTER_NAMESPACE_ANNOTATION)) {
        return Ok(format!("{ns}/{vm}"));
    }
    if let (Some(vm), Some(ns)) = (
        annotation(INFRA_VM_NAME_ANNOTATION),
        annotation(INFRA_VM_NAMESPACE_ANNOTATION),
    ) {
        return Ok(format!("{ns}/{vm}"));
    }

    let mut missing = Vec::new();
    match (provider_id, vm_from_provider) {
        (None, _) | (Some(""), _) => missing.push("spec.providerID is not set".to_owned()),
        (Some(id), None) => missing.push(format!(
            "spec.providerID {id:?} is not {PROVIDER_ID_PREFIX}<vm>"
        )),
        (Some(_), Some(_)) => {
            missing.push(format!(
                "annotation {CLUSTER_NAMESPACE_ANNOTATION} is missing"
            ));
        }
    }
    for key in [INFRA_VM_NAME_ANNOTATION, INFRA_VM_NAMESPACE_ANNOTATION] {
        if annotation(key).is_none() {
            missing.push(format!("annotation {key} is missing"));
        }
    }
    Err(missing.join("; "))
}

/// Watches the Node `node_name` until it yields a node id, for at most
/// `timeout`.
pub async fn resolve_node_id(
    client: kube::Client,
    node_name: &str,
    timeout: Duration,
) -> Result<String, NodeIdError> {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // What the last seen version of the Node lacked, and the last watch
    // failure (the watcher retries with backoff), for the timeout error.
    let mut last_missing: Option<String> = None;
    let mut last_error: Option<watcher::Error> = None;

    let wait = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(node) | Event::InitApply(node)) => match node_id_from_node(&node) {
                    Ok(id) => return Some(id),
                    Err(missing) => {
                        tracing::info!(node = node_name, %missing, "waiting for the node to name its infra VM");
                        last_missing = Some(missing);
                    }
                },
                Ok(Event::Delete(_)) => last_missing = None,
                Ok(Event::Init | Event::InitDone) => {}
                Err(err) => {
                    tracing::warn!(node = node_name, %err, "watching the node failed; retrying");
                    last_error = Some(err);
                }
            }
        }
        None
    };
    let found = tokio::time::timeout(timeout, wait).await.ok().flatten();
    let node = node_name.to_owned();
    match (found, last_missing, last_error) {
        (Some(id), _, _) => Ok(id),
        (None, Some(missing), _) => Err(NodeIdError::Incomplete { node, missing }),
        (None, None, Some(source)) => Err(NodeIdError::Watch { node, source }),
        (None, None, None) => Err(NodeIdError::NodeNotFound {
            node,
            waited: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn node(provider_id: Option<&str>, annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("worker-1".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider_id.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn provider_id_and_cluster_namespace() {
        let n = node(
            Some("kubevirt://vm.with.dots"),
            &[(CLUSTER_NAMESPACE_ANNOTATION, "clusters-a")],
        );
        assert_eq!(
            node_id_from_node(&n).as_deref(),
            Ok("clusters-a/vm.with.dots")
        );
    }

    #[test]
    fn infra_vm_annotations_are_the_fallback() {
        let n = node(
            Some("kubevirt://vm-1"),
            &[
                (INFRA_VM_NAME_ANNOTATION, "vm-2"),
                (INFRA_VM_NAMESPACE_ANNOTATION, "infra"),
            ],
        );
        assert_eq!(node_id_from_node(&n).as_deref(), Ok("infra/vm-2"));
        let n = node(
            None,
            &[
                (INFRA_VM_NAME_ANNOTATION, "vm-3"),
                (INFRA_VM_NAMESPACE_ANNOTATION, "ns"),
            ],
        );
        assert_eq!(node_id_from_node(&n).as_deref(), Ok("ns/vm-3"));
    }

    #[test]
    fn provider_id_wins_over_annotations() {
        let n = node(
            Some("kubevirt://vm-1"),
            &[
                (CLUSTER_NAMESPACE_ANNOTATION, "capi"),
                (INFRA_VM_NAME_ANNOTATION, "vm-2"),
                (INFRA_VM_NAMESPACE_ANNOTATION, "infra"),
            ],
        );
        assert_eq!(node_id_from_node(&n).as_deref(), Ok("capi/vm-1"));
    }

    #[test]
    fn errors_name_what_is_missing() {
        let err = node_id_from_node(&node(Some("kubevirt://vm-1"), &[]))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("annotation cluster.x-k8s.io/cluster-namespace is missing"),
            "{err}"
        );
        assert!(
            err.contains("csi.kubevirt.io/infra-vm-namespace is missing"),
            "{err}"
        );

        let err = node_id_from_node(&node(
            Some("aws:///i-1"),
            &[(INFRA_VM_NAME_ANNOTATION, "vm")],
        ))
        .err()
        .unwrap_or_default();
        assert!(
            err.contains(r#""aws:///i-1" is not kubevirt://<vm>"#),
            "{err}"
        );
        assert!(!err.contains("infra-vm-name is missing"), "{err}");

        let err = node_id_from_node(&node(None, &[]))
            .err()
            .unwrap_or_default();
        assert!(err.contains("spec.providerID is not set"), "{err}");
        let err = node_id_from_node(&node(Some("kubevirt://"), &[]))
            .err()
            .unwrap_or_default();
        assert!(err.contains("is not kubevirt://<vm>"), "{err}");
    }
}
