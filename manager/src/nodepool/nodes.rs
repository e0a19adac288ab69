//! Guest Node operations of a node pool: cordon and uncordon (remembering
//! that the manager did it), drain (evict every pod but DaemonSet and
//! mirror pods, the way `kubectl drain` does), the in-place version
//! handshake annotation, and deleting a Node whose VM is gone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::{Error, Result, Target, is_not_found};
use crate::metrics::Metrics;
use crate::names;

/// How far a drain got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Nothing left to wait for.
    Done,
    /// Pods are terminating; their deletion will be seen by the pod watch.
    Terminating,
    /// An eviction was refused (PodDisruptionBudget); try again later.
    Blocked,
}

/// Whether `kubectl drain` would leave this pod alone.
pub fn ignored_by_drain(pod: &Pod) -> bool {
    let daemonset = pod.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.kind == "DaemonSet" && r.controller == Some(true))
    });
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    daemonset || mirror || finished
}

/// A guest cluster's Nodes.
pub struct GuestNodes<'a> {
    pub client: &'a Client,
    pub metrics: &'a Metrics,
}

impl GuestNodes<'_> {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// All guest Nodes by name.
    pub async fn list(&self) -> Result<BTreeMap<String, Node>> {
        Ok(self
            .nodes()
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(Target::Guest, "list Nodes"))?
            .items
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect())
    }

    async fn patch(&self, node: &str, patch: serde_json::Value, what: &str) -> Result<()> {
        self.metrics.wrote(Target::Guest.as_str(), "Node", "patch");
        match self
            .nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(Target::Guest, format!("{what} Node {node}"))(e)),
        }
    }

    /// Mark the node unschedulable, noting that the manager did it.
    pub async fn cordon(&self, node: &str) -> Result<()> {
        self.patch(
            node,
            json!({"metadata": {"annotations": {names::NODE_CORDONED_BY_ANNOTATION: names::FIELD_MANAGER}},
                   "spec": {"unschedulable": true}}),
            "cordon",
        )
        .await
    }

    /// Undo [`Self::cordon`].
    pub async fn uncordon(&self, node: &str) -> Result<()> {
        self.patch(
            node,
            json!({"metadata": {"annotations": {names::NODE_CORDONED_BY_ANNOTATION: null}},
                   "spec": {"unschedulable": null}}),
            "uncordon",
        )
        .await
    }

    /// Ask the node's update agent for `version`.
    pub async fn request_version(&self, node: &str, version: &str) -> Result<()> {
        self.patch(
            node,
            json!({"metadata": {"annotations": {names::NODE_DESIRED_VERSION_ANNOTATION: version}}}),
            "annotate",
        )
        .await
    }

    /// Evict the node's pods.
    pub async fn drain(&self, node: &str) -> Result<Drain> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let pods = all
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(Error::kube(
                Target::Guest,
                format!("list pods of Node {node}"),
            ))?;
        let mut state = Drain::Done;
        for pod in pods.items.iter().filter(|p| !ignored_by_drain(p)) {
            if pod.metadata.deletion_timestamp.is_some() {
                if state == Drain::Done {
                    state = Drain::Terminating;
                }
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            self.metrics.wrote(Target::Guest.as_str(), "Pod", "evict");
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => {
                    if state == Drain::Done {
                        state = Drain::Terminating;
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 429 => state = Drain::Blocked,
                // No eviction subresource: delete the pod instead.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {
                    self.metrics.wrote(Target::Guest.as_str(), "Pod", "delete");
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {
                            if state == Drain::Done {
                                state = Drain::Terminating;
                            }
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            return Err(Error::kube(
                                Target::Guest,
                                format!("delete Pod {ns}/{name}"),
                            )(e));
                        }
                    }
                }
                Err(e) => {
                    return Err(Error::kube(Target::Guest, format!("evict Pod {ns}/{name}"))(e));
                }
            }
        }
        Ok(state)
    }

    /// Delete a Node object (its VM is gone).
    pub async fn delete(&self, node: &str) -> Result<()> {
        self.metrics.wrote(Target::Guest.as_str(), "Node", "delete");
        match self.nodes().delete(node, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(Target::Guest, format!("delete Node {node}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn drain_skips_daemonset_mirror_and_finished_pods() {
        let mut ds = Pod::default();
        ds.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(ignored_by_drain(&ds));
        let mirror = Pod {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    "kubernetes.io/config.mirror".into(),
                    "x".into(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(ignored_by_drain(&mirror));
        let done = Pod {
            status: Some(PodStatus {
                phase: Some("Succeeded".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(ignored_by_drain(&done));
        let mut rs = Pod::default();
        rs.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(!ignored_by_drain(&rs));
    }
}
