//! The daemons the manager runs for a cluster in its control-plane
//! namespace, the CSI controller, the cloud controller manager and (for a
//! hosted cluster) the snapshot controller: whether each runs, read from
//! its Deployment. A cluster is Available only when the first two do (the
//! snapshot controller serves an optional API: it shows in
//! VolumeSnapshotsAvailable); what was deployed but does not run is named,
//! with how many replicas are available.

use k8s_openapi::api::apps::v1::Deployment;

use crate::api::conditions::{kind, reason};
use crate::apply::Outcome;
use crate::desired::ClusterInputs;
use crate::names;

/// One daemon: its condition type, what users call it, its Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    pub condition: &'static str,
    pub title: &'static str,
    pub deployment: &'static str,
    /// Serves an optional API: reported in its condition, not in Available.
    pub optional: bool,
}

pub const CSI_CONTROLLER: Component = Component {
    condition: kind::CSI_CONTROLLER_AVAILABLE,
    title: "the CSI controller",
    deployment: names::CSI_CONTROLLER,
    optional: false,
};

pub const CCM: Component = Component {
    condition: kind::CLOUD_CONTROLLER_MANAGER_AVAILABLE,
    title: "the cloud controller manager",
    deployment: names::CCM,
    optional: false,
};

pub const SNAPSHOT_CONTROLLER: Component = Component {
    condition: kind::VOLUME_SNAPSHOTS_AVAILABLE,
    title: "the snapshot controller",
    deployment: names::SNAPSHOT_CONTROLLER,
    optional: true,
};

/// What a pass found of one daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub component: Component,
    pub state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not deployed for this cluster (no storage driver): nothing to wait for.
    NotDeployed,
    /// Available replicas of desired ones, from the Deployment's status.
    Replicas { available: i32, desired: i32 },
}

impl Found {
    pub fn is_available(&self) -> bool {
        match self.state {
            State::NotDeployed => true,
            State::Replicas { available, .. } => available > 0,
        }
    }

    /// Status, reason and message of its condition.
    pub fn condition(&self) -> (bool, &'static str, String) {
        let name = self.component.deployment;
        match self.state {
            State::NotDeployed => (
                true,
                reason::NOT_DEPLOYED,
                format!(
                    "{} is not deployed: the cluster has no storage driver",
                    self.component.title
                ),
            ),
            State::Replicas { available, desired } => (
                self.is_available(),
                if self.is_available() {
                    reason::AS_EXPECTED
                } else {
                    reason::WAITING_FOR_REPLICAS
                },
                format!("Deployment {name}: {available} of {desired} replicas available"),
            ),
        }
    }
}

/// The replicas of `deployment` as its status counts them.
pub fn replicas(deployment: Option<&Deployment>) -> State {
    let desired = deployment
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(1);
    let available = deployment
        .and_then(|d| d.status.as_ref()?.available_replicas)
        .unwrap_or(0);
    State::Replicas { available, desired }
}

/// Why a cluster whose objects are in place is not Available: the daemons
/// that do not run, or `None` when all do.
pub fn not_available(found: &[Found]) -> Option<String> {
    let waiting: Vec<String> = found
        .iter()
        .filter(|f| !f.component.optional && !f.is_available())
        .map(|f| format!("{} ({})", f.component.title, f.condition().2))
        .collect();
    (!waiting.is_empty()).then(|| format!("waiting for {}", waiting.join("; ")))
}

/// The daemons of the cluster of `inp`, from their Deployments as the
/// apply of the management objects read them back.
pub fn observe(inp: &ClusterInputs, applied: &Outcome) -> Vec<Found> {
    let mut components = vec![CSI_CONTROLLER, CCM];
    if inp.hosted && inp.csi_enabled() {
        components.push(SNAPSHOT_CONTROLLER);
    }
    components
        .into_iter()
        .map(|component| {
            let state = if component == CSI_CONTROLLER && !inp.csi_enabled() {
                State::NotDeployed
            } else {
                let d: Option<Deployment> =
                    applied.live(Some(&inp.control_plane_namespace), component.deployment);
                replicas(d.as_ref())
            };
            Found { component, state }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(available: Option<i32>) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubevirt-csi-controller"},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"availableReplicas": available},
        }))
        .expect("deployment")
    }

    #[test]
    fn a_deployment_without_available_replicas_is_waited_for_by_name() {
        let found = [
            Found {
                component: CSI_CONTROLLER,
                state: replicas(Some(&deployment(None))),
            },
            Found {
                component: CCM,
                state: replicas(Some(&deployment(Some(1)))),
            },
        ];
        assert!(!found[0].is_available());
        assert_eq!(
            found[0].condition(),
            (
                false,
                reason::WAITING_FOR_REPLICAS,
                "Deployment kubevirt-csi-controller: 0 of 1 replicas available".to_string()
            )
        );
        assert!(found[1].is_available());
        assert_eq!(
            not_available(&found).as_deref(),
            Some(
                "waiting for the CSI controller (Deployment kubevirt-csi-controller: 0 of 1 replicas available)"
            )
        );
    }

    #[test]
    fn a_missing_deployment_counts_no_replicas_and_none_is_not_waited_for() {
        assert_eq!(
            replicas(None),
            State::Replicas {
                available: 0,
                desired: 1
            }
        );
        let found = [Found {
            component: CSI_CONTROLLER,
            state: State::NotDeployed,
        }];
        assert!(found[0].condition().0);
        assert_eq!(not_available(&found), None);
    }
}
