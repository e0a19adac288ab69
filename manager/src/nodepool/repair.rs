//! Auto-repair of a NodePool (`spec.management.autoRepair`), as the
//! MachineHealthCheck HyperShift gives such a pool: a VM is unhealthy when
//! its node has not joined within the join timeout of the VM's creation,
//! or its Node has not been Ready (False or Unknown) for the unhealthy
//! timeout. Unhealthy VMs are deleted, and the pool creates their
//! replacements, unless more than [`MAX_UNHEALTHY`] are unhealthy at once:
//! then something larger is wrong (a partition, the control plane, the
//! boot image), replacing machines would not mend it, and nothing is
//! deleted (the health check's short-circuit). Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use super::observe::{NodeView, VmView};

/// Unhealthy VMs beyond which none is replaced (HyperShift's default).
pub const MAX_UNHEALTHY: usize = 2;

/// An unhealthy VM, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    pub vm: String,
    pub why: String,
}

/// What auto-repair decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub unhealthy: Vec<Unhealthy>,
    /// Whether the unhealthy VMs are to be replaced (not too many).
    pub replace: bool,
    /// When a VM not Ready yet would turn unhealthy.
    pub next: Option<Duration>,
}

impl Verdict {
    /// What holds repair back, for the pool's status.
    pub fn held_back(&self) -> Option<String> {
        (!self.replace && !self.unhealthy.is_empty()).then(|| {
            format!(
                "auto-repair holds back: {} VMs are unhealthy, more than {MAX_UNHEALTHY} at once",
                self.unhealthy.len()
            )
        })
    }
}

fn seconds(d: Duration) -> String {
    jiff::SignedDuration::try_from(d)
        .map(|d| format!("{d:#}"))
        .unwrap_or_default()
}

/// Judge the pool's active VMs: `not_joined` are those past the join
/// timeout without a Node; a joined one is unhealthy once its Node has
/// not been Ready for `unhealthy_after`.
pub fn assess(
    vms: &[VmView],
    nodes: &BTreeMap<String, NodeView>,
    not_joined: &[String],
    join_timeout: Duration,
    unhealthy_after: Duration,
    now: jiff::Timestamp,
) -> Verdict {
    let mut out = Verdict::default();
    for vm in vms.iter().filter(|v| v.active()) {
        if not_joined.contains(&vm.name) {
            out.unhealthy.push(Unhealthy {
                vm: vm.name.clone(),
                why: format!(
                    "its node has not joined within {} of its creation",
                    seconds(join_timeout)
                ),
            });
            continue;
        }
        let Some(since) = nodes.get(&vm.name).and_then(|n| n.not_ready_since) else {
            continue;
        };
        let waited = Duration::try_from(now.duration_since(since)).unwrap_or_default();
        match unhealthy_after.checked_sub(waited) {
            Some(left) if !left.is_zero() => {
                out.next = Some(out.next.map_or(left, |n| n.min(left)));
            }
            _ => out.unhealthy.push(Unhealthy {
                vm: vm.name.clone(),
                why: format!("its node has not been Ready for {}", seconds(waited)),
            }),
        }
    }
    out.replace = !out.unhealthy.is_empty() && out.unhealthy.len() <= MAX_UNHEALTHY;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).expect("time")
    }

    fn vm(name: &str) -> VmView {
        VmView::created_at(name, at(0))
    }

    fn node(name: &str, not_ready_since: Option<i64>) -> (String, NodeView) {
        (
            name.into(),
            NodeView {
                name: name.into(),
                ready: not_ready_since.is_none(),
                not_ready_since: not_ready_since.map(at),
                ..NodeView::default()
            },
        )
    }

    const JOIN: Duration = Duration::from_secs(600);
    const UNHEALTHY: Duration = Duration::from_secs(480);

    #[test]
    fn a_node_not_ready_past_the_timeout_and_a_vm_never_joined_are_replaced() {
        let vms = [vm("a"), vm("b"), vm("c"), vm("d")];
        let nodes = BTreeMap::from([node("a", None), node("b", Some(100)), node("c", Some(500))]);
        let v = assess(&vms, &nodes, &["d".into()], JOIN, UNHEALTHY, at(700));
        assert_eq!(
            v.unhealthy,
            vec![
                Unhealthy {
                    vm: "b".into(),
                    why: "its node has not been Ready for 10m".into()
                },
                Unhealthy {
                    vm: "d".into(),
                    why: "its node has not joined within 10m of its creation".into()
                },
            ]
        );
        assert!(v.replace);
        // c turns unhealthy 480 s after 500.
        assert_eq!(v.next, Some(Duration::from_secs(280)));
        assert_eq!(v.held_back(), None);
    }

    #[test]
    fn too_many_unhealthy_at_once_replaces_none() {
        let vms = [vm("a"), vm("b"), vm("c")];
        let nodes = BTreeMap::from([node("a", Some(0)), node("b", Some(0))]);
        let v = assess(&vms, &nodes, &["c".into()], JOIN, UNHEALTHY, at(1000));
        assert_eq!(v.unhealthy.len(), 3);
        assert!(!v.replace);
        assert_eq!(
            v.held_back().as_deref(),
            Some("auto-repair holds back: 3 VMs are unhealthy, more than 2 at once")
        );
    }

    #[test]
    fn vms_being_removed_and_healthy_pools_are_left_alone() {
        let mut gone = vm("a");
        gone.deleting = true;
        let nodes = BTreeMap::from([node("a", Some(0)), node("b", None)]);
        let v = assess(&[gone, vm("b")], &nodes, &[], JOIN, UNHEALTHY, at(1000));
        assert_eq!(v, Verdict::default());
    }
}
