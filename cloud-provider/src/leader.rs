//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's
//! rules: a lease is taken over only when its record has not changed for
//! its `leaseDurationSeconds` as seen by our own clock; the holder renews
//! every retry period and gives up when no renewal succeeded within the
//! renew deadline; a clean shutdown releases the lease so a standby takes
//! over at once.
//!
//! Standbys watch the Lease, so they notice a release immediately and time
//! an expired lease from the moment its last renewal arrived.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::LeaderElection;
use crate::error::status_code;

/// How leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was requested; the caller should release.
    Cancelled,
    /// Another replica holds the lease, or renewals failed past the deadline.
    Lost(String),
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderElection,
    identity: String,
    /// The last record we saw and when it last changed (by our clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// The lease as we last wrote it, to renew without a read.
    held: Option<Lease>,
}

fn duration_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Elector {
    pub fn new(client: Client, config: LeaderElection, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            identity,
            observed: None,
            held: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Note a record; the clock restarts only when it changed.
    fn observe(&mut self, spec: &LeaseSpec) {
        self.observe_at(spec, Instant::now());
    }

    fn observe_at(&mut self, spec: &LeaseSpec, now: Instant) {
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| seen != spec);
        if changed {
            self.observed = Some((spec.clone(), now));
        }
    }

    /// When the observed record expires, if someone else holds it.
    fn expiry(&self) -> Option<Instant> {
        let (spec, at) = self.observed.as_ref()?;
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        if holder.is_empty() || holder == self.identity {
            return None;
        }
        let secs = spec.lease_duration_seconds.unwrap_or(0).max(0);
        Some(*at + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }

    fn record(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = Some(MicroTime(jiff::Timestamp::now()));
        let mine =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_seconds(self.config.lease_duration)),
            renew_time: now.clone(),
            acquire_time: if mine {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                now
            },
            lease_transitions: Some(match previous {
                None => 0,
                Some(p) if mine => p.lease_transitions.unwrap_or(0),
                Some(p) => p.lease_transitions.unwrap_or(0).saturating_add(1),
            }),
            ..previous.cloned().unwrap_or_default()
        }
    }

    /// One attempt to take or renew the lease. `Ok(false)`: someone else
    /// holds it (or won a race).
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = match self.held.take() {
            Some(lease) => lease,
            None => match self.api.get_opt(&self.config.name).await? {
                Some(lease) => lease,
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.config.name.clone()),
                            namespace: Some(self.config.namespace.clone()),
                            ..Default::default()
                        },
                        spec: Some(self.record(None)),
                    };
                    return match self.api.create(&PostParams::default(), &lease).await {
                        Ok(created) => {
                            self.observe(&created.spec.clone().unwrap_or_default());
                            self.held = Some(created);
                            Ok(true)
                        }
                        Err(e) if status_code(&e) == Some(409) => Ok(false),
                        Err(e) => Err(e),
                    };
                }
            },
        };
        let spec = current.spec.clone().unwrap_or_default();
        self.observe(&spec);
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        if !holder.is_empty()
            && holder != self.identity
            && self.expiry().is_some_and(|at| at > Instant::now())
        {
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(self.record(Some(&spec)));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observe(&written.spec.clone().unwrap_or_default());
                self.held = Some(written);
                Ok(true)
            }
            Err(e) if status_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until we hold the lease. Returns `false` if `token` fired first.
    pub async fn acquire(&mut self, token: &CancellationToken) -> bool {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.name));
        let changes = watcher::watcher(self.api.clone(), config);
        let mut changes = std::pin::pin!(changes);
        loop {
            let wait_until = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.config.name, "acquired leadership");
                    return true;
                }
                Ok(false) => {
                    let holder = self
                        .observed
                        .as_ref()
                        .and_then(|(s, _)| s.holder_identity.clone())
                        .unwrap_or_default();
                    tracing::debug!(%holder, "lease held by another replica");
                    self.expiry()
                        .unwrap_or_else(|| Instant::now() + self.config.retry_period)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read or write the leader lease");
                    Instant::now() + self.config.retry_period
                }
            };
            // Sleep until the lease can expire, waking early when it changes.
            loop {
                tokio::select! {
                    () = token.cancelled() => return false,
                    () = tokio::time::sleep_until(wait_until) => break,
                    event = changes.next() => match event {
                        Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)))
                            if lease.metadata.name.as_deref() == Some(self.config.name.as_str()) =>
                        {
                            let spec = lease.spec.unwrap_or_default();
                            self.observe(&spec);
                            if spec.holder_identity.as_deref().unwrap_or("").is_empty() {
                                break;
                            }
                        }
                        Some(Ok(watcher::Event::Delete(_))) => break,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "lease watch failed");
                            tokio::time::sleep(self.config.retry_period.min(Duration::from_secs(1))).await;
                        }
                        Some(Ok(_)) => {}
                        None => {
                            tokio::time::sleep_until(wait_until).await;
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Renew until shutdown or until leadership is lost.
    pub async fn hold(&mut self, token: &CancellationToken) -> Ended {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                () = token.cancelled() => return Ended::Cancelled,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
            let deadline = last_renewal + self.config.renew_deadline;
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => {
                    let holder = self
                        .observed
                        .as_ref()
                        .and_then(|(s, _)| s.holder_identity.clone())
                        .unwrap_or_default();
                    if holder != self.identity {
                        return Ended::Lost(format!("the lease is now held by {holder:?}"));
                    }
                    // A write conflict on our own record: read it again next time.
                    tracing::debug!("lease changed under us, retrying the renewal");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
            }
            if last_renewal.elapsed() >= self.config.renew_deadline {
                return Ended::Lost(format!(
                    "no successful renewal within {:?}",
                    self.config.renew_deadline
                ));
            }
        }
    }

    /// Give the lease up so a standby can take over without waiting.
    pub async fn release(&mut self) {
        let Some(mut lease) = self.held.take() else {
            return;
        };
        let now = Some(MicroTime(jiff::Timestamp::now()));
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = now.clone();
            spec.acquire_time = now;
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %self.identity, "released leadership"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
        }
    }
}

/// `<hostname>_<uuid>`, as client-go names candidates.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elector() -> Elector {
        // A client that is never called: the tests exercise pure logic only.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let client = Client::try_from(config).expect("client");
        Elector::new(
            client,
            LeaderElection {
                enabled: true,
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
                namespace: "kube-system".into(),
                name: "cloud-controller-manager".into(),
            },
            "me_1".into(),
        )
    }

    #[tokio::test]
    async fn records_count_transitions_and_keep_acquire_time_on_renewal() {
        let e = elector();
        let first = e.record(None);
        assert_eq!(first.holder_identity.as_deref(), Some("me_1"));
        assert_eq!(first.lease_duration_seconds, Some(15));
        assert_eq!(first.lease_transitions, Some(0));
        let other = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_transitions: Some(3),
            ..Default::default()
        };
        assert_eq!(e.record(Some(&other)).lease_transitions, Some(4));
        let renewed = e.record(Some(&first));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
    }

    #[tokio::test]
    async fn expiry_is_timed_from_the_last_observed_change() {
        let mut e = elector();
        let held = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let t0 = Instant::now();
        e.observe_at(&held, t0);
        assert_eq!(e.expiry(), Some(t0 + Duration::from_secs(15)));
        // The same record again does not restart the clock...
        e.observe_at(&held, t0 + Duration::from_secs(10));
        assert_eq!(e.expiry(), Some(t0 + Duration::from_secs(15)));
        // ...a renewal does.
        let renewed = LeaseSpec {
            lease_transitions: Some(1),
            ..held.clone()
        };
        e.observe_at(&renewed, t0 + Duration::from_secs(10));
        assert_eq!(e.expiry(), Some(t0 + Duration::from_secs(25)));
        // A released lease (no holder) or our own never waits.
        e.observe(&LeaseSpec::default());
        assert_eq!(e.expiry(), None);
        e.observe(&LeaseSpec {
            holder_identity: Some("me_1".into()),
            ..Default::default()
        });
        assert_eq!(e.expiry(), None);
    }

    #[test]
    fn identities_are_unique() {
        assert_ne!(identity(), identity());
    }
}
