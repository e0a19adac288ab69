//! A NodePool's status from what its reconcile saw: counts, the version all
//! nodes run, and the `Ready`, `UpdatingVersion` and `UpdatingConfig`
//! conditions (the validity conditions are set by the reconcile). Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::observe::VmView;
use crate::api::conditions::{self, Desired, kind, reason};
use crate::api::{NodePool, NodePoolStatus};
use crate::rollout::Machine;

/// The status of `pool` after a reconcile that saw `vms`/`machines`.
pub fn observed(
    pool: &NodePool,
    vms: &[VmView],
    machines: &[Machine],
    template_hash: &str,
    extra: &[Desired],
    health: &Health,
    now: &Time,
) -> NodePoolStatus {
    let not_joined = &health.not_joined;
    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let version = &pool.spec.release.version;
    let active: Vec<&Machine> = machines
        .iter()
        .filter(|m| !m.marked && !m.deleting)
        .collect();
    let active_vms: Vec<&VmView> = vms.iter().filter(|v| v.active()).collect();

    status.replicas = active.len() as i32;
    status.ready_replicas = active.iter().filter(|m| m.ready).count() as i32;
    status.updated_replicas = active.iter().filter(|m| m.current).count() as i32;
    status.observed_generation = generation;

    let outdated_version = active_vms
        .iter()
        .filter(|v| v.version.as_deref() != Some(version.as_str()) || v.updating_to.is_some())
        .count();
    let outdated_config = active_vms
        .iter()
        .filter(|v| {
            v.version.as_deref() == Some(version.as_str())
                && v.template_hash.as_deref() != Some(template_hash)
        })
        .count();
    let mut versions: Vec<&str> = active_vms
        .iter()
        .filter_map(|v| v.version.as_deref())
        .collect();
    versions.dedup();
    if outdated_version == 0 && !active_vms.is_empty() {
        status.version = Some(version.clone());
    } else if status.version.is_none() && versions.len() == 1 {
        status.version = versions.first().map(|v| v.to_string());
    }

    let want = pool.spec.replicas;
    let ready = if status.ready_replicas == want
        && status.replicas == want
        && machines.len() as i32 == want
    {
        Desired::new(
            kind::READY,
            true,
            reason::AS_EXPECTED,
            format!("{want} of {want} nodes are ready"),
        )
    } else if status.replicas < want {
        Desired::new(
            kind::READY,
            false,
            reason::SCALING_UP,
            format!("{} of {want} machines exist", status.replicas),
        )
    } else if machines.len() as i32 > want {
        Desired::new(
            kind::READY,
            false,
            reason::SCALING_DOWN,
            format!("{} machines, {want} wanted", machines.len()),
        )
    } else if let Some(first) = not_joined.vms.first() {
        Desired::new(
            kind::READY,
            false,
            reason::NODES_NOT_JOINED,
            format!(
                "{} of {want} nodes are ready; the node of VM {} has not joined {} after the VM was created: \
                 kubeadm join failed or did not run there (its user data is in Secret {})",
                status.ready_replicas,
                not_joined.vms.join(", "),
                jiff::SignedDuration::try_from(not_joined.timeout)
                    .map(|d| format!("{d:#}"))
                    .unwrap_or_default(),
                crate::desired::join::user_data_secret_name(first),
            ),
        )
    } else {
        Desired::new(
            kind::READY,
            false,
            reason::WAITING_FOR_NODES,
            format!("{} of {want} nodes are ready", status.ready_replicas),
        )
    };
    let ready = match &health.repair_held_back {
        Some(note) if !ready.status => Desired {
            message: format!("{}; {note}", ready.message),
            ..ready
        },
        _ => ready,
    };
    let updating_version = if outdated_version > 0 {
        Desired::new(
            kind::UPDATING_VERSION,
            true,
            reason::ROLLING_OUT,
            format!("{outdated_version} node(s) are not on version {version} yet"),
        )
    } else {
        Desired::new(kind::UPDATING_VERSION, false, reason::AS_EXPECTED, "")
    };
    let updating_config = if outdated_config > 0 {
        Desired::new(
            kind::UPDATING_CONFIG,
            true,
            reason::ROLLING_OUT,
            format!("{outdated_config} machine(s) are on an older configuration"),
        )
    } else {
        Desired::new(kind::UPDATING_CONFIG, false, reason::AS_EXPECTED, "")
    };
    for d in [&ready, &updating_version, &updating_config]
        .into_iter()
        .chain(extra)
    {
        conditions::set(&mut status.conditions, d, generation, now);
    }
    status
}

/// What the pool's status says of its machines' health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub not_joined: NotJoined,
    /// Why auto-repair replaces none of the unhealthy VMs, if it does not.
    pub repair_held_back: Option<String>,
}

/// The VMs whose nodes have not joined within the join timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotJoined {
    pub vms: Vec<String>,
    pub timeout: std::time::Duration,
}

/// The active VMs created more than `timeout` before `now` without a Node,
/// and how long until the next one would be.
pub fn not_joined(
    vms: &[VmView],
    nodes: &std::collections::BTreeMap<String, super::observe::NodeView>,
    timeout: std::time::Duration,
    now: jiff::Timestamp,
) -> (NotJoined, Option<std::time::Duration>) {
    let mut late = NotJoined {
        vms: Vec::new(),
        timeout,
    };
    let mut next: Option<std::time::Duration> = None;
    for v in vms
        .iter()
        .filter(|v| v.active() && !nodes.contains_key(&v.name))
    {
        let Some(created) = v.created else { continue };
        let waited = std::time::Duration::try_from(now.duration_since(created)).unwrap_or_default();
        match timeout.checked_sub(waited) {
            Some(left) if !left.is_zero() => next = Some(next.map_or(left, |n| n.min(left))),
            _ => late.vms.push(v.name.clone()),
        }
    }
    (late, next)
}

/// The validity conditions of a pool that passed validation.
pub fn valid() -> Vec<Desired> {
    vec![
        Desired::new(kind::VALID_VERSION, true, reason::AS_EXPECTED, ""),
        Desired::new(kind::VALID_PLATFORM_CONFIG, true, reason::AS_EXPECTED, ""),
        Desired::new(kind::VALID_HOSTED_CLUSTER, true, reason::AS_EXPECTED, ""),
    ]
}

/// The status of a pool refused before looking at its machines: the
/// matching validity condition goes False, `Ready` follows.
pub fn refused(
    pool: &NodePool,
    condition: &'static str,
    why: &crate::error::Error,
    now: &Time,
) -> NodePoolStatus {
    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let message = why.to_string();
    for d in valid() {
        let d = if d.type_ == condition {
            Desired::new(condition, false, why.reason(), message.clone())
        } else {
            d
        };
        conditions::set(&mut status.conditions, &d, generation, now);
    }
    conditions::set(
        &mut status.conditions,
        &Desired::new(kind::READY, false, why.reason(), message),
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::is_true;
    use crate::api::{
        BootImage, KubevirtNodePoolPlatform, NodePoolPlatform, NodePoolSpec, Release,
    };
    use crate::error::Error;
    use crate::version::Refusal;

    fn pool(replicas: i32, version: &str) -> NodePool {
        let platform = KubevirtNodePoolPlatform {
            compute: Default::default(),
            root_volume: Default::default(),
            boot_image: BootImage {
                container_disk_image: Some("img".into()),
                url: None,
            },
            additional_networks: vec![],
            attach_default_network: true,
            host_devices: vec![],
            node_selector: Default::default(),
        };
        let mut p = NodePool::new(
            "workers",
            NodePoolSpec {
                cluster_name: "guest1".into(),
                replicas,
                release: Release {
                    version: version.into(),
                    kubernetes_version: None,
                },
                platform: NodePoolPlatform { kubevirt: platform },
                management: Default::default(),
                node_drain_timeout_seconds: None,
            },
        );
        p.metadata.generation = Some(4);
        p
    }

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

    fn machine(name: &str, current: bool, ready: bool) -> Machine {
        Machine {
            name: name.into(),
            current,
            ready,
            updating: false,
            marked: false,
            deleting: false,
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
    }

    #[test]
    fn a_vm_whose_node_never_joined_is_named() {
        let p = pool(2, "0.1.0");
        let t = |s: i64| Some(jiff::Timestamp::from_second(1_700_000_000 - s).expect("ts"));
        let mut old = vm("old", "h", "0.1.0");
        old.created = t(700);
        let mut young = vm("young", "h", "0.1.0");
        young.created = t(100);
        let vms = [old, young];
        let timeout = std::time::Duration::from_secs(600);
        let (late, next) = not_joined(&vms, &Default::default(), timeout, now().0);
        assert_eq!(late.vms, ["old"]);
        assert_eq!(next, Some(std::time::Duration::from_secs(500)));
        let ms = [machine("old", true, false), machine("young", true, false)];
        let mut health = Health {
            not_joined: late,
            repair_held_back: None,
        };
        let s = observed(&p, &vms, &ms, "h", &valid(), &health, &now());
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == kind::READY)
            .expect("Ready");
        assert_eq!(ready.reason, reason::NODES_NOT_JOINED);
        assert!(
            ready.message.contains("VM old has not joined 10m"),
            "{}",
            ready.message
        );
        assert!(
            ready.message.contains("Secret old-user-data"),
            "{}",
            ready.message
        );
        let held = "auto-repair holds back: 3 VMs are unhealthy, more than 2 at once";
        health.repair_held_back = Some(held.to_string());
        let s = observed(&p, &vms, &ms, "h", &valid(), &health, &now());
        let ready = conditions::find(&s.conditions, kind::READY).expect("Ready");
        assert!(
            ready.message.ends_with(&format!("; {held}")),
            "{}",
            ready.message
        );
    }

    #[test]
    fn all_ready_and_current_is_ready() {
        let p = pool(2, "0.1.0");
        let vms = [vm("a", "h", "0.1.0"), vm("b", "h", "0.1.0")];
        let ms = [machine("a", true, true), machine("b", true, true)];
        let s = observed(&p, &vms, &ms, "h", &valid(), &Health::default(), &now());
        assert_eq!(
            (s.replicas, s.ready_replicas, s.updated_replicas),
            (2, 2, 2)
        );
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
        assert!(is_true(&s.conditions, kind::READY));
        assert!(!is_true(&s.conditions, kind::UPDATING_VERSION));
        assert!(is_true(&s.conditions, kind::VALID_VERSION));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn a_version_rollout_is_reported_until_done() {
        let mut p = pool(2, "0.2.0");
        p.status = Some(NodePoolStatus {
            version: Some("0.1.0".into()),
            ..Default::default()
        });
        let vms = [vm("a", "h1", "0.1.0"), vm("b", "h2", "0.2.0")];
        let ms = [machine("a", false, true), machine("b", true, true)];
        let s = observed(&p, &vms, &ms, "h2", &valid(), &Health::default(), &now());
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
        assert!(is_true(&s.conditions, kind::UPDATING_VERSION));
        assert_eq!(s.updated_replicas, 1);
        // Ready speaks of nodes, not of the rollout.
        assert!(is_true(&s.conditions, kind::READY));
    }

    #[test]
    fn scaling_reasons() {
        let p = pool(3, "0.1.0");
        let s = observed(
            &p,
            &[vm("a", "h", "0.1.0")],
            &[machine("a", true, true)],
            "h",
            &valid(),
            &Health::default(),
            &now(),
        );
        assert_eq!(
            conditions::find(&s.conditions, kind::READY).map(|c| c.reason.as_str()),
            Some("ScalingUp")
        );
    }

    #[test]
    fn refusals_name_their_condition() {
        let p = pool(1, "0.3.0");
        let e = Error::Version(Refusal::NewerThanHostedCluster {
            node_pool: "0.3.0".into(),
            hosted_cluster: "0.2.0".into(),
        });
        let s = refused(&p, kind::VALID_VERSION, &e, &now());
        let c = conditions::find(&s.conditions, kind::VALID_VERSION).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "VersionNewerThanHostedCluster")
        );
        assert!(is_true(&s.conditions, kind::VALID_PLATFORM_CONFIG));
        assert!(!is_true(&s.conditions, kind::READY));
    }
}
