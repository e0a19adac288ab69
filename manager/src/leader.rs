//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: the holder renews `renewTime` every retry period; another
//! replica takes the lease once `renewTime + leaseDurationSeconds` has
//! passed; writes carry the lease's resourceVersion so two replicas cannot
//! both win; a holder that cannot renew within the renew deadline stops;
//! the lease is released on shutdown so a successor need not wait.
//!
//! [`decide`] is the pure rule; [`Elector`] does the I/O.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, is_conflict};

/// Timing and identity of an election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with a lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Someone else holds it, valid until then.
    Wait,
}

/// The rule: our lease is renewed; an empty or expired one is taken.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: jiff::Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let duration =
        jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expires = spec
        .renew_time
        .as_ref()
        .and_then(|t| t.0.checked_add(duration).ok());
    match expires {
        Some(at) if at > now => Decision::Wait,
        _ => Decision::Take,
    }
}

/// The spec we write when taking or renewing.
pub fn claimed(previous: Option<&LeaseSpec>, cfg: &LeaseConfig, now: jiff::Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// Runs one replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// One attempt to take or renew; whether we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = jiff::Timestamp::now();
        let lease_err = |e: kube::Error| Error::Lease(crate::error::describe(&e));
        let current = self.api.get_opt(&self.cfg.name).await.map_err(lease_err)?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(None, &self.cfg, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(lease_err(e)),
            };
        };
        if decide(current.spec.as_ref(), &self.cfg.identity, now) == Decision::Wait {
            return Ok(false);
        }
        let mut next = current.clone();
        next.spec = Some(claimed(current.spec.as_ref(), &self.cfg, now));
        // `replace` sends the resourceVersion we read: a concurrent writer wins, we lose.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(lease_err(e)),
        }
    }

    /// Wait until we hold the lease (or `shutdown`). `false` on shutdown.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return true;
                }
                Ok(false) => tracing::debug!("lease held by another replica"),
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Renew until renewal fails for longer than the renew deadline (then
    /// cancel `lost`) or `shutdown` (then release the lease).
    pub async fn keep(&self, shutdown: CancellationToken, lost: CancellationToken) {
        let mut last_renewed = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(self.cfg.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return;
                }
                _ = tick.tick() => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader lease taken by another replica");
                    lost.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
            }
            if last_renewed.elapsed() > self.cfg.renew_deadline {
                tracing::error!("could not renew the leader lease in time");
                lost.cancel();
                return;
            }
        }
    }

    /// Give the lease up (successors need not wait for it to expire).
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).expect("ts")
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", at(100)), Decision::Take);
        assert_eq!(
            decide(Some(&held("me", 90)), "me", at(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held("other", 90)), "me", at(100)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held("other", 80)), "me", at(100)),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", at(100)),
            Decision::Take
        );
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_does_not() {
        let cfg = LeaseConfig::new("ns", "lease", "me");
        let taken = claimed(Some(&held("other", 80)), &cfg, at(100));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(100))));
        let renewed = claimed(Some(&held("me", 90)), &cfg, at(100));
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(-10))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
    }
}
