//! What a NodePool reconcile sees, reduced to what it decides on: each VM
//! ([`VmView`]) with its guest Node ([`NodeView`]), and the planner's
//! [`Machine`]s built from them for the pool's strategy. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kubevirt_infra::kubevirt::VirtualMachine;

use crate::api::UpgradeType;
use crate::names;
use crate::rollout::Machine;

/// A pool VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmView {
    pub name: String,
    pub uid: String,
    /// When it was created.
    pub created: Option<jiff::Timestamp>,
    pub template_hash: Option<String>,
    /// The version it runs (or, with `updating_to`, ran before the update).
    pub version: Option<String>,
    /// An in-place update to this version is under way.
    pub updating_to: Option<String>,
    /// The manager decided to remove it.
    pub marked: bool,
    pub deleting: bool,
    /// When its drain started.
    pub drain_started: Option<jiff::Timestamp>,
    /// The boot image cache its root disk was cloned from, if any.
    pub cache_source: Option<String>,
}

/// A guest Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    /// Since when it has not been Ready (its Ready condition's last
    /// transition; without one, its creation); none while Ready.
    pub not_ready_since: Option<jiff::Timestamp>,
    pub unschedulable: bool,
    pub cordoned_by_manager: bool,
    pub desired_version: Option<String>,
    pub current_version: Option<String>,
}

impl VmView {
    pub fn of(vm: &VirtualMachine) -> Self {
        let labels = vm.metadata.labels.clone().unwrap_or_default();
        let annotations = vm.metadata.annotations.clone().unwrap_or_default();
        Self {
            name: vm.metadata.name.clone().unwrap_or_default(),
            uid: vm.metadata.uid.clone().unwrap_or_default(),
            created: vm.metadata.creation_timestamp.as_ref().map(|t| t.0),
            template_hash: labels.get(names::TEMPLATE_HASH_LABEL).cloned(),
            version: annotations.get(names::VERSION_ANNOTATION).cloned(),
            updating_to: annotations.get(names::UPDATING_TO_ANNOTATION).cloned(),
            marked: annotations.contains_key(names::DELETE_REQUESTED_ANNOTATION),
            deleting: vm.metadata.deletion_timestamp.is_some(),
            drain_started: annotations
                .get(names::DRAIN_STARTED_ANNOTATION)
                .and_then(|t| t.parse().ok()),
            cache_source: vm
                .spec
                .data_volume_templates
                .first()
                .and_then(|t| t.spec.source.as_ref())
                .and_then(|s| s.pvc.as_ref())
                .map(|p| p.name.clone()),
        }
    }

    /// Still part of the pool: neither being removed nor deleted.
    pub fn active(&self) -> bool {
        !self.marked && !self.deleting
    }
}

#[cfg(test)]
impl VmView {
    /// An active VM of the pool created at `created`, for tests.
    pub fn created_at(name: &str, created: jiff::Timestamp) -> Self {
        Self {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            created: Some(created),
            template_hash: None,
            version: None,
            updating_to: None,
            marked: false,
            deleting: false,
            drain_started: None,
            cache_source: None,
        }
    }
}

impl NodeView {
    pub fn of(node: &Node) -> Self {
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let ready_condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let ready = ready_condition.is_some_and(|c| c.status == "True");
        let not_ready_since = if ready {
            None
        } else {
            ready_condition
                .and_then(|c| c.last_transition_time.as_ref())
                .or(node.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        };
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready,
            not_ready_since,
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            cordoned_by_manager: annotations.contains_key(names::NODE_CORDONED_BY_ANNOTATION),
            desired_version: annotations
                .get(names::NODE_DESIRED_VERSION_ANNOTATION)
                .cloned(),
            current_version: annotations
                .get(names::NODE_CURRENT_VERSION_ANNOTATION)
                .cloned(),
        }
    }
}

/// The planner's view of the pool's VMs.
pub fn machines(
    vms: &[VmView],
    nodes: &BTreeMap<String, NodeView>,
    upgrade: UpgradeType,
    template_hash: &str,
    version: &str,
) -> Vec<Machine> {
    vms.iter()
        .map(|vm| {
            let node_ready = nodes.get(&vm.name).is_some_and(|n| n.ready);
            let updating = upgrade == UpgradeType::InPlace && vm.updating_to.is_some();
            let current = match upgrade {
                UpgradeType::Replace => vm.template_hash.as_deref() == Some(template_hash),
                UpgradeType::InPlace => !updating && vm.version.as_deref() == Some(version),
            };
            Machine {
                name: vm.name.clone(),
                current,
                ready: node_ready && !updating,
                updating,
                marked: vm.marked,
                deleting: vm.deleting,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn vm(name: &str, hash: &str, version: &str) -> VmView {
        VmView {
            name: name.into(),
            template_hash: Some(hash.into()),
            version: Some(version.into()),
            updating_to: None,
            marked: false,
            deleting: false,
            drain_started: None,
            cache_source: None,
            uid: String::new(),
            created: None,
        }
    }

    fn ready(name: &str) -> (String, NodeView) {
        (
            name.into(),
            NodeView {
                name: name.into(),
                ready: true,
                ..NodeView::default()
            },
        )
    }

    #[test]
    fn replace_compares_template_hashes() {
        let vms = [vm("a", "h1", "0.1.0"), vm("b", "h2", "0.2.0")];
        let nodes = BTreeMap::from([ready("a")]);
        let m = machines(&vms, &nodes, UpgradeType::Replace, "h2", "0.2.0");
        assert!(!m[0].current && m[0].ready);
        assert!(m[1].current && !m[1].ready);
    }

    #[test]
    fn in_place_compares_versions_and_tracks_updates() {
        let mut updating = vm("b", "h1", "0.1.0");
        updating.updating_to = Some("0.2.0".into());
        let vms = [vm("a", "h1", "0.1.0"), updating, vm("c", "h1", "0.2.0")];
        let nodes = BTreeMap::from([ready("a"), ready("b"), ready("c")]);
        let m = machines(&vms, &nodes, UpgradeType::InPlace, "h2", "0.2.0");
        assert!(!m[0].current && m[0].ready && !m[0].updating);
        assert!(!m[1].current && !m[1].ready && m[1].updating);
        assert!(m[2].current && m[2].ready);
    }

    #[test]
    fn reads_vm_and_node_objects() {
        let mut v = VirtualMachine::new("w-abcde", Default::default());
        v.metadata.labels = Some(BTreeMap::from([(
            names::TEMPLATE_HASH_LABEL.into(),
            "h".into(),
        )]));
        v.metadata.annotations = Some(BTreeMap::from([
            (names::VERSION_ANNOTATION.into(), "0.1.0".into()),
            (names::DELETE_REQUESTED_ANNOTATION.into(), "true".into()),
            (
                names::DRAIN_STARTED_ANNOTATION.into(),
                "2024-01-01T00:00:00Z".into(),
            ),
        ]));
        let view = VmView::of(&v);
        assert_eq!(view.template_hash.as_deref(), Some("h"));
        assert!(view.marked && !view.active());
        assert!(view.drain_started.is_some());

        let node = Node {
            metadata: ObjectMeta {
                name: Some("w-abcde".into()),
                annotations: Some(BTreeMap::from([(
                    names::NODE_CURRENT_VERSION_ANNOTATION.into(),
                    "0.1.0".into(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let n = NodeView::of(&node);
        assert!(n.ready && n.unschedulable && !n.cordoned_by_manager);
        assert_eq!(n.current_version.as_deref(), Some("0.1.0"));
    }
}
