//! The rollout planner: a pure function from a node pool's machines (VMs
//! with their template state and guest readiness) and its desired size and
//! strategy to the next steps — how many VMs to create, which to remove
//! (drain, then delete) and which to update in place.
//!
//! Guarantees, for every input (see the property tests):
//! - it never removes a Ready machine when that would leave fewer than
//!   `replicas - maxUnavailable` Ready machines (or fewer than there are
//!   now, when there already are fewer);
//! - it never creates beyond `replicas + maxSurge` machines;
//! - repeated planning converges to `replicas` Ready machines, all current.
//!
//! Machines being drained count toward the total (they still run) but not
//! as Ready; machines already being deleted count toward neither.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One VM as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    /// On the desired template (Replace) or reporting the desired version
    /// (InPlace).
    pub current: bool,
    /// Its guest Node is Ready (and, for InPlace, not being updated).
    pub ready: bool,
    /// An in-place update was started and has not finished.
    pub updating: bool,
    /// The manager decided to remove it; it is being drained.
    pub marked: bool,
    /// It has a deletion timestamp.
    pub deleting: bool,
}

/// How outdated machines are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Replace outdated machines, at most `max_surge` above and
    /// `max_unavailable` below `replicas`.
    RollingUpdate {
        max_surge: u32,
        max_unavailable: u32,
    },
    /// Replace only machines someone else deleted.
    OnDelete,
    /// Update machines where they run, `max_unavailable` at a time.
    InPlace { max_unavailable: u32 },
}

/// The next steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New machines to create on the desired template.
    pub create: u32,
    /// Machines to drain and delete.
    pub remove: Vec<String>,
    /// Machines whose in-place update to start.
    pub update: Vec<String>,
}

/// A `maxSurge`/`maxUnavailable` that is neither a count nor a percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} is not a non-negative count or a percentage")]
pub struct BoundError {
    pub field: &'static str,
    pub value: String,
}

/// Resolve a count-or-percentage against `replicas` (percentages round up
/// for a surge and down for unavailability, as Deployments do).
pub fn resolve(
    field: &'static str,
    value: &IntOrString,
    replicas: u32,
    round_up: bool,
) -> Result<u32, BoundError> {
    let err = || BoundError {
        field,
        value: format!("{value:?}"),
    };
    match value {
        IntOrString::Int(n) => u32::try_from(*n).map_err(|_| err()),
        IntOrString::String(s) => {
            let pct: u64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(err)?;
            let scaled = pct * u64::from(replicas);
            let v = if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            };
            u32::try_from(v).map_err(|_| err())
        }
    }
}

/// The rolling-update bounds, with Deployment's rule that both may not be 0
/// (then one machine may be unavailable).
pub fn rolling_bounds(max_surge: u32, max_unavailable: u32) -> Strategy {
    let max_unavailable = if max_surge == 0 && max_unavailable == 0 {
        1
    } else {
        max_unavailable
    };
    Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    }
}

/// Removal order: unready before ready, outdated before current, then name.
fn removal_order(a: &&Machine, b: &&Machine) -> std::cmp::Ordering {
    (a.ready, a.current, &a.name).cmp(&(b.ready, b.current, &b.name))
}

/// Plan the next steps for `replicas` machines under `strategy`.
pub fn plan(replicas: u32, machines: &[Machine], strategy: Strategy) -> Plan {
    let active: Vec<&Machine> = machines
        .iter()
        .filter(|m| !m.deleting && !m.marked)
        .collect();
    let in_flight = machines.iter().filter(|m| !m.deleting && m.marked).count() as u32;
    let total = active.len() as u32 + in_flight;
    let ready = active.iter().filter(|m| m.ready).count() as u32;
    let mut out = Plan::default();

    match strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            let new: Vec<&Machine> = active.iter().copied().filter(|m| m.current).collect();
            let mut old: Vec<&Machine> = active.iter().copied().filter(|m| !m.current).collect();
            let min_available = replicas.saturating_sub(max_unavailable);
            let max_total = replicas + max_surge;

            // Scale up the new template within the surge.
            let want_new = replicas.saturating_sub(new.len() as u32);
            out.create = want_new.min(max_total.saturating_sub(total));

            // Ready machines we may lose without going below the floor.
            let mut budget = ready.saturating_sub(min_available);
            let mut take = |m: &Machine, out: &mut Plan| -> bool {
                if m.ready {
                    if budget == 0 {
                        return false;
                    }
                    budget -= 1;
                }
                out.remove.push(m.name.clone());
                true
            };

            // Scale down: new machines beyond `replicas` (no old ones remain
            // to remove then).
            if new.len() as u32 > replicas {
                let mut excess: Vec<&Machine> = new.clone();
                excess.sort_by(removal_order);
                let n = new.len() - replicas as usize;
                for m in excess.into_iter().take(n) {
                    take(m, &mut out);
                }
            }
            // Replace old machines, unready first.
            old.sort_by(removal_order);
            for m in old {
                if !take(m, &mut out) {
                    break;
                }
            }
        }
        Strategy::OnDelete | Strategy::InPlace { .. } => {
            let mut by_order = active.clone();
            by_order.sort_by(removal_order);
            let n = active.len() as u32;
            out.create = replicas.saturating_sub(n);
            let excess = n.saturating_sub(replicas) as usize;
            out.remove
                .extend(by_order.iter().take(excess).map(|m| m.name.clone()));

            if let Strategy::InPlace { max_unavailable } = strategy {
                let max_unavailable = max_unavailable.max(1);
                let staying: Vec<&Machine> = by_order.into_iter().skip(excess).collect();
                let unavailable = staying.iter().filter(|m| !m.ready || m.updating).count() as u32;
                let mut allowed = max_unavailable.saturating_sub(unavailable);
                let mut outdated: Vec<&Machine> = staying
                    .into_iter()
                    .filter(|m| !m.current && !m.updating)
                    .collect();
                outdated.sort_by(removal_order);
                for m in outdated {
                    if m.ready {
                        // Updating a Ready machine makes it unavailable.
                        if allowed == 0 {
                            continue;
                        }
                        allowed -= 1;
                    }
                    out.update.push(m.name.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, current: bool, ready: bool) -> Machine {
        Machine {
            name: name.into(),
            current,
            ready,
            updating: false,
            marked: false,
            deleting: false,
        }
    }

    #[test]
    fn resolves_counts_and_percentages() {
        assert_eq!(resolve("maxSurge", &IntOrString::Int(2), 10, true), Ok(2));
        assert_eq!(
            resolve("maxSurge", &IntOrString::String("25%".into()), 10, true),
            Ok(3)
        );
        assert_eq!(
            resolve(
                "maxUnavailable",
                &IntOrString::String("25%".into()),
                10,
                false
            ),
            Ok(2)
        );
        assert!(resolve("maxSurge", &IntOrString::Int(-1), 10, true).is_err());
        assert!(resolve("maxSurge", &IntOrString::String("x".into()), 10, true).is_err());
        assert_eq!(
            rolling_bounds(0, 0),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 1
            }
        );
    }

    #[test]
    fn scales_up_and_down() {
        let s = rolling_bounds(1, 0);
        assert_eq!(
            plan(2, &[], s),
            Plan {
                create: 2,
                ..Plan::default()
            }
        );
        let two = [m("a", true, true), m("b", true, true)];
        assert_eq!(plan(4, &two, s).create, 2);
        let four = [
            m("a", true, true),
            m("b", true, false),
            m("c", true, true),
            m("d", true, true),
        ];
        let p = plan(1, &four, s);
        assert_eq!(p.create, 0);
        // The unready one goes first; one Ready machine stays.
        assert_eq!(p.remove, vec!["b", "a", "c"]);
    }

    #[test]
    fn surge_one_unavailable_zero_replaces_one_at_a_time() {
        let s = rolling_bounds(1, 0);
        let old = [
            m("o1", false, true),
            m("o2", false, true),
            m("o3", false, true),
        ];
        // Start: one new machine, nothing removed.
        assert_eq!(
            plan(3, &old, s),
            Plan {
                create: 1,
                ..Plan::default()
            }
        );
        // The new one is not Ready yet: wait.
        let mut state = old.to_vec();
        state.push(m("n1", true, false));
        assert_eq!(plan(3, &state, s), Plan::default());
        // Ready: remove one old machine.
        state[3].ready = true;
        assert_eq!(
            plan(3, &state, s),
            Plan {
                remove: vec!["o1".into()],
                ..Plan::default()
            }
        );
        // While o1 drains no new machine is created (it still runs).
        state[0].marked = true;
        assert_eq!(plan(3, &state, s), Plan::default());
        // Once it is being deleted, the next new machine comes.
        state[0].deleting = true;
        assert_eq!(plan(3, &state, s).create, 1);
    }

    #[test]
    fn on_delete_replaces_only_missing_machines() {
        let state = [m("o1", false, true), m("o2", false, true)];
        assert_eq!(plan(2, &state, Strategy::OnDelete), Plan::default());
        assert_eq!(plan(3, &state, Strategy::OnDelete).create, 1);
    }

    #[test]
    fn in_place_updates_max_unavailable_at_a_time() {
        let s = Strategy::InPlace { max_unavailable: 1 };
        let mut state = vec![
            m("a", false, true),
            m("b", false, true),
            m("c", false, true),
        ];
        assert_eq!(plan(3, &state, s).update, vec!["a"]);
        state[0].updating = true;
        state[0].ready = false;
        assert!(plan(3, &state, s).update.is_empty());
        state[0] = m("a", true, true);
        assert_eq!(plan(3, &state, s).update, vec!["b"]);
        // Unready outdated machines are updated without spending the budget.
        let state = [m("a", false, false), m("b", false, true)];
        assert_eq!(
            plan(2, &state, Strategy::InPlace { max_unavailable: 1 }).update,
            vec!["a"]
        );
        let state = [
            m("a", false, false),
            m("b", false, true),
            m("c", false, true),
        ];
        assert_eq!(
            plan(3, &state, Strategy::InPlace { max_unavailable: 2 }).update,
            vec!["a", "b"]
        );
    }

    // === property tests ===

    /// xorshift64*: a small deterministic generator for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn random_state(rng: &mut Rng) -> (u32, Vec<Machine>, Strategy) {
        let replicas = rng.below(7) as u32;
        let n = rng.below(10) as usize;
        let machines = (0..n)
            .map(|i| {
                let deleting = rng.chance(10);
                Machine {
                    name: format!("m{i}"),
                    current: rng.chance(50),
                    ready: rng.chance(70),
                    updating: false,
                    marked: !deleting && rng.chance(10),
                    deleting,
                }
            })
            .collect();
        let strategy = rolling_bounds(rng.below(3) as u32, rng.below(3) as u32);
        (replicas, machines, strategy)
    }

    #[test]
    fn never_drops_below_the_availability_floor() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let (replicas, machines, strategy) = random_state(&mut rng);
            let Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            } = strategy
            else {
                unreachable!()
            };
            let p = plan(replicas, &machines, strategy);
            let counted = |m: &&Machine| !m.deleting && !m.marked;
            let ready_before = machines.iter().filter(counted).filter(|m| m.ready).count() as u32;
            let removed_ready = machines
                .iter()
                .filter(counted)
                .filter(|m| m.ready && p.remove.contains(&m.name))
                .count() as u32;
            let ready_after = ready_before - removed_ready;
            let floor = replicas.saturating_sub(max_unavailable).min(ready_before);
            assert!(
                ready_after >= floor,
                "{replicas} {machines:?} {strategy:?} -> {p:?}"
            );

            let total_before = machines.iter().filter(|m| !m.deleting).count() as u32;
            let total_after = total_before + p.create;
            assert!(
                p.create == 0 || total_after <= replicas + max_surge,
                "{replicas} {machines:?} {strategy:?} -> {p:?}"
            );
            // Only live, unmarked machines are removed, each once.
            let mut seen = std::collections::BTreeSet::new();
            for name in &p.remove {
                assert!(seen.insert(name));
                assert!(machines.iter().any(|m| &m.name == name && counted(&m)));
            }
        }
    }

    /// In-place updates never make more than `maxUnavailable` machines
    /// unavailable that were available.
    #[test]
    fn in_place_respects_max_unavailable() {
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let replicas = rng.below(6) as u32;
            let max_unavailable = 1 + rng.below(3) as u32;
            let machines: Vec<Machine> = (0..rng.below(8))
                .map(|i| {
                    let updating = rng.chance(15);
                    Machine {
                        name: format!("m{i}"),
                        current: !updating && rng.chance(40),
                        ready: !updating && rng.chance(70),
                        updating,
                        marked: false,
                        deleting: false,
                    }
                })
                .collect();
            let p = plan(replicas, &machines, Strategy::InPlace { max_unavailable });
            let staying: Vec<&Machine> = machines
                .iter()
                .filter(|m| !p.remove.contains(&m.name))
                .collect();
            let unavailable_after = staying
                .iter()
                .filter(|m| !m.ready || m.updating || p.update.contains(&m.name))
                .count() as u32;
            let unavailable_before =
                staying.iter().filter(|m| !m.ready || m.updating).count() as u32;
            assert!(
                unavailable_after <= max_unavailable.max(unavailable_before),
                "{replicas} {max_unavailable} {machines:?} -> {p:?}"
            );
            assert!(p.update.iter().all(|n| {
                machines
                    .iter()
                    .any(|m| &m.name == n && !m.current && !m.updating)
            }));
        }
    }

    /// Simulate a cluster: created machines become Ready a step later,
    /// removed ones drain for a step and then disappear. Every rollout ends
    /// with exactly `replicas` Ready current machines, and never dips below
    /// the floor on the way.
    #[test]
    fn rollouts_converge_without_dipping() {
        let mut rng = Rng(42);
        for case in 0..2_000 {
            let replicas = 1 + rng.below(5) as u32;
            let start = rng.below(7) as usize;
            let strategy = rolling_bounds(rng.below(3) as u32, rng.below(3) as u32);
            let Strategy::RollingUpdate {
                max_unavailable, ..
            } = strategy
            else {
                unreachable!()
            };
            let mut machines: Vec<Machine> = (0..start)
                .map(|i| m(&format!("old{i}"), false, true))
                .collect();
            let mut serial = 0;
            for step in 0..200 {
                let ready_now = machines
                    .iter()
                    .filter(|m| m.ready && !m.marked && !m.deleting)
                    .count() as u32;
                let p = plan(replicas, &machines, strategy);
                // Progress of the previous step.
                machines.retain(|m| !m.deleting);
                for mm in &mut machines {
                    if mm.marked {
                        mm.deleting = true;
                    } else if mm.current {
                        mm.ready = true;
                    }
                }
                for name in &p.remove {
                    if let Some(mm) = machines.iter_mut().find(|mm| &mm.name == name) {
                        mm.marked = true;
                    }
                }
                for _ in 0..p.create {
                    serial += 1;
                    machines.push(m(&format!("new{serial}"), true, false));
                }
                let ready_after = machines
                    .iter()
                    .filter(|m| m.ready && !m.marked && !m.deleting)
                    .count() as u32;
                let floor = replicas.saturating_sub(max_unavailable).min(ready_now);
                assert!(
                    ready_after >= floor,
                    "case {case} step {step}: {machines:?}"
                );
                let done = machines
                    .iter()
                    .all(|m| m.current && m.ready && !m.marked && !m.deleting)
                    && machines.len() as u32 == replicas;
                if done {
                    break;
                }
                assert!(step < 199, "case {case} did not converge: {machines:?}");
            }
        }
    }
}
