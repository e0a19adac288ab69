//! Status conditions: the types and reasons both resources report, and
//! [`set`], which updates a condition list the way `meta.SetStatusCondition`
//! does (the transition time moves only when the status flips), so that a
//! reconcile that changes nothing produces an identical status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod kind {
    /// HostedCluster: every object of the cluster is in place (infra and
    /// guest), its control plane serves (hosted mode), and the CSI controller
    /// and the cloud controller manager run.
    pub const AVAILABLE: &str = "Available";
    /// HostedCluster: the last pass put every object of the cluster in place.
    pub const RECONCILIATION_SUCCEEDED: &str = "ReconciliationSucceeded";
    /// HostedCluster: the CSI controller's Deployment has an available replica.
    pub const CSI_CONTROLLER_AVAILABLE: &str = "CSIControllerAvailable";
    /// HostedCluster: the cloud controller manager's Deployment has an
    /// available replica.
    pub const CLOUD_CONTROLLER_MANAGER_AVAILABLE: &str = "CloudControllerManagerAvailable";
    /// HostedCluster (hosted control plane): a quorum of etcd members is Ready.
    pub const ETCD_AVAILABLE: &str = "EtcdAvailable";
    /// HostedCluster (hosted control plane): an API server is available and
    /// `/readyz` answers through the published endpoint.
    pub const KUBE_APISERVER_AVAILABLE: &str = "KubeAPIServerAvailable";
    /// HostedCluster: the guest serves the VolumeSnapshot API and the
    /// driver's VolumeSnapshotClass is in place. An optional API: False
    /// blocks nothing else.
    pub const VOLUME_SNAPSHOTS_AVAILABLE: &str = "VolumeSnapshotsAvailable";
    /// HostedCluster: something keeps the manager from converging; see the reason.
    pub const DEGRADED: &str = "Degraded";
    /// HostedCluster / NodePool: the requested version is one the manager supports
    /// (and, for a NodePool, not newer than its HostedCluster).
    pub const VALID_VERSION: &str = "ValidVersion";
    /// NodePool: the platform configuration is consistent.
    pub const VALID_PLATFORM_CONFIG: &str = "ValidPlatformConfig";
    /// NodePool: its HostedCluster exists and has been reconciled.
    pub const VALID_HOSTED_CLUSTER: &str = "ValidHostedCluster";
    /// NodePool: `readyReplicas == replicas` and every VM is up to date.
    pub const READY: &str = "Ready";
    /// NodePool: VMs are being moved to a new version.
    pub const UPDATING_VERSION: &str = "UpdatingVersion";
    /// NodePool: VMs are being replaced for a new platform configuration.
    pub const UPDATING_CONFIG: &str = "UpdatingConfig";
}

/// Condition reasons.
pub mod reason {
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const RECONCILING: &str = "Reconciling";
    pub const DELETING: &str = "Deleting";
    pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
    /// A Kubernetes version outside the version skew policy.
    pub const UNSUPPORTED_SKEW: &str = "UnsupportedSkew";
    pub const VERSION_NEWER_THAN_HOSTED_CLUSTER: &str = "VersionNewerThanHostedCluster";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const GUEST_KUBECONFIG_UNAVAILABLE: &str = "GuestKubeconfigUnavailable";
    pub const GUEST_UNREACHABLE: &str = "GuestUnreachable";
    pub const INFRA_CREDENTIALS_UNAVAILABLE: &str = "InfraCredentialsUnavailable";
    pub const INFRA_UNREACHABLE: &str = "InfraUnreachable";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const HOSTED_CLUSTER_NOT_FOUND: &str = "HostedClusterNotFound";
    pub const HOSTED_CLUSTER_NOT_AVAILABLE: &str = "HostedClusterNotAvailable";
    pub const SCALING_UP: &str = "ScalingUp";
    pub const SCALING_DOWN: &str = "ScalingDown";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const WAITING_FOR_NODES: &str = "WaitingForNodes";
    pub const NODES_NOT_JOINED: &str = "NodesNotJoined";
    pub const QUORUM_AVAILABLE: &str = "QuorumAvailable";
    pub const WAITING_FOR_QUORUM: &str = "WaitingForQuorum";
    pub const WAITING_FOR_API_SERVER: &str = "WaitingForAPIServer";
    /// A shared etcd cannot be reached, refuses the manager, or its
    /// credentials are incomplete.
    pub const SHARED_ETCD_UNAVAILABLE: &str = "SharedEtcdUnavailable";
    /// The cluster's user and prefix are in place in its shared etcd.
    pub const SHARED_ETCD_READY: &str = "SharedEtcdReady";
    /// The guest does not serve the VolumeSnapshot API (no CRDs).
    pub const SNAPSHOT_API_MISSING: &str = "SnapshotAPIMissing";
    /// A Deployment of the cluster has no available replica (yet).
    pub const WAITING_FOR_REPLICAS: &str = "WaitingForReplicas";
    /// Available: a component is not available; the message names it.
    pub const COMPONENTS_NOT_AVAILABLE: &str = "ComponentsNotAvailable";
    /// The component is not deployed (the storage driver is None).
    pub const NOT_DEPLOYED: &str = "NotDeployed";
}

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// A condition as computed by a reconcile, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Set `desired` in `conditions`: an existing condition of that type keeps its
/// `lastTransitionTime` unless its status changes.
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: &Desired,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if desired.status { TRUE } else { FALSE };
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.to_string();
            c.reason = desired.reason.to_string();
            c.message = desired.message.clone();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: desired.type_.to_string(),
            status: status.to_string(),
            reason: desired.reason.to_string(),
            message: desired.message.clone(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The condition of this type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid"))
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut list = Vec::new();
        set(
            &mut list,
            &Desired::new(kind::AVAILABLE, false, reason::RECONCILING, "x"),
            Some(1),
            &at(10),
        );
        set(
            &mut list,
            &Desired::new(kind::AVAILABLE, false, reason::APPLY_FAILED, "y"),
            Some(2),
            &at(20),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, at(10));
        assert_eq!(list[0].reason, reason::APPLY_FAILED);
        assert_eq!(list[0].observed_generation, Some(2));
        set(
            &mut list,
            &Desired::new(kind::AVAILABLE, true, reason::AS_EXPECTED, ""),
            Some(2),
            &at(30),
        );
        assert_eq!(list[0].last_transition_time, at(30));
        assert!(is_true(&list, kind::AVAILABLE));
        assert!(!is_true(&list, kind::DEGRADED));
    }
}
