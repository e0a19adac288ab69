//! `status.version` of a HostedCluster, as HyperShift keeps it: the
//! desired release and the history of rollouts, newest first. A new
//! release (suite or Kubernetes version) starts a `Partial` entry; it turns
//! `Completed` once every component runs it; an entry still `Partial` when
//! a newer release starts is closed as it is (its completion time is when
//! it was superseded). Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::Release;
use crate::api::hostedcluster::{ClusterVersionStatus, UpdateHistory, UpdateState};

/// How many rollouts the history keeps.
pub const HISTORY_LIMIT: usize = 10;

fn same(entry: &UpdateHistory, release: &Release) -> bool {
    entry.version == release.version
        && entry
            .kubernetes_version
            .as_deref()
            .map(|v| v.trim_start_matches('v'))
            == release
                .kubernetes_version
                .as_deref()
                .map(|v| v.trim_start_matches('v'))
}

/// The version status after a pass that saw `desired` at `generation`
/// rolled out everywhere (`rolled_out`) or not yet.
pub fn advance(
    previous: Option<&ClusterVersionStatus>,
    desired: &Release,
    generation: i64,
    rolled_out: bool,
    now: &Time,
) -> ClusterVersionStatus {
    let mut history = previous.map(|p| p.history.clone()).unwrap_or_default();
    if !history.first().is_some_and(|h| same(h, desired)) {
        if let Some(last) = history.first_mut()
            && last.completion_time.is_none()
        {
            last.completion_time = Some(now.clone());
        }
        history.insert(
            0,
            UpdateHistory {
                state: UpdateState::Partial,
                started_time: now.clone(),
                completion_time: None,
                version: desired.version.clone(),
                kubernetes_version: desired.kubernetes_version.clone(),
            },
        );
        history.truncate(HISTORY_LIMIT);
    }
    if rolled_out
        && let Some(current) = history.first_mut()
        && current.state == UpdateState::Partial
    {
        current.state = UpdateState::Completed;
        current.completion_time = Some(now.clone());
    }
    ClusterVersionStatus {
        desired: desired.clone(),
        history,
        observed_generation: generation,
    }
}

/// The Kubernetes version of the newest rollout that completed: what every
/// component of the control plane runs, or has run.
pub fn completed_kubernetes(version: Option<&ClusterVersionStatus>) -> Option<&str> {
    version?
        .history
        .iter()
        .find(|h| h.state == UpdateState::Completed)?
        .kubernetes_version
        .as_deref()
}

/// The Kubernetes version of the newest rollout, complete or under way.
pub fn newest_kubernetes(version: Option<&ClusterVersionStatus>) -> Option<&str> {
    version?.history.first()?.kubernetes_version.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000 + s).expect("time"))
    }

    fn release(v: &str, k: &str) -> Release {
        Release {
            version: v.to_string(),
            kubernetes_version: Some(k.to_string()),
        }
    }

    #[test]
    fn the_completed_and_the_newest_kubernetes_versions() {
        let s = advance(None, &release("0.1.0", "1.31.4"), 1, true, &at(0));
        let s = advance(Some(&s), &release("0.1.0", "1.32.13"), 2, false, &at(10));
        assert_eq!(completed_kubernetes(Some(&s)), Some("1.31.4"));
        assert_eq!(newest_kubernetes(Some(&s)), Some("1.32.13"));
        assert_eq!(completed_kubernetes(None), None);
    }

    #[test]
    fn a_first_rollout_is_partial_then_completed() {
        let r = release("0.1.0", "1.32.13");
        let s = advance(None, &r, 1, false, &at(0));
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.history[0].state, UpdateState::Partial);
        assert_eq!(s.history[0].completion_time, None);
        let s = advance(Some(&s), &r, 1, true, &at(10));
        assert_eq!(s.history[0].state, UpdateState::Completed);
        assert_eq!(s.history[0].completion_time, Some(at(10)));
        assert_eq!(s.history[0].started_time, at(0));
        // Nothing changes after that.
        assert_eq!(advance(Some(&s), &r, 1, true, &at(20)), s);
    }

    #[test]
    fn an_upgrade_adds_an_entry_and_a_superseded_one_stays_partial() {
        let old = release("0.1.0", "1.32.13");
        let s = advance(None, &old, 1, true, &at(0));
        let new = release("0.1.0", "1.33.2");
        let s = advance(Some(&s), &new, 2, false, &at(5));
        assert_eq!(s.desired, new);
        assert_eq!(s.observed_generation, 2);
        assert_eq!(
            s.history.iter().map(|h| h.state).collect::<Vec<_>>(),
            [UpdateState::Partial, UpdateState::Completed]
        );
        assert_eq!(s.history[1].completion_time, Some(at(0)));
        let newer = release("0.1.0", "1.33.3");
        let s = advance(Some(&s), &newer, 3, false, &at(9));
        assert_eq!(s.history[1].state, UpdateState::Partial);
        assert_eq!(s.history[1].completion_time, Some(at(9)));
        assert_eq!(s.history.len(), 3);
    }

    #[test]
    fn the_history_is_bounded() {
        let mut s = None;
        for i in 0..15 {
            s = Some(advance(
                s.as_ref(),
                &release(&format!("0.1.{i}"), "1.32.13"),
                i,
                true,
                &at(i),
            ));
        }
        let s = s.expect("status");
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history[0].version, "0.1.14");
    }
}
