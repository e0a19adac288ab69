//! The four controllers and the loop they share.
//!
//! Each controller module has a `Context`, a `reconcile(obj, ctx)` and is run
//! by [`run`], which drives kube's `applier` from the controller's request
//! queue, counts and times every reconcile, turns failures into Warning
//! events on the reconciled object, and retries them with per-object
//! exponential backoff (the `error_policy`).

pub mod eps;
pub mod lifecycle;
pub mod node;
pub mod service;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Resource;
use kube::runtime::controller::{Action, Config};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::watch::Requests;

/// First and longest retry delay after a failed reconcile.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(120);

/// What every controller needs besides its own context.
#[derive(Clone)]
pub struct Runtime {
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub token: CancellationToken,
}

/// Failures per object, for the backoff.
#[derive(Default)]
struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reset(&self, key: &str) {
        self.map().remove(key);
    }

    /// Count one more failure and return the delay before the next try.
    fn next_delay(&self, key: &str) -> Duration {
        let mut map = self.map();
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        BACKOFF_MIN
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16)))
            .min(BACKOFF_MAX)
    }
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    ObjectRef::from_obj(obj).to_string()
}

/// Run one controller until its request queue closes or `rt.token` fires.
/// `action` names what the controller does, for events (`EnsureLoadBalancer`).
#[allow(clippy::too_many_arguments)]
pub async fn run<K, Ctx, F, Fut>(
    name: &'static str,
    action: &'static str,
    store: Store<K>,
    requests: Requests<K>,
    ctx: Arc<Ctx>,
    concurrency: u16,
    rt: Runtime,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    Ctx: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let failures = Arc::new(Failures::default());
    let reconcile = Arc::new(reconcile);
    let queue = UnboundedReceiverStream::new(requests)
        .map(Ok::<_, std::convert::Infallible>)
        .take_until(rt.token.clone().cancelled_owned());

    let wrapped = {
        let failures = failures.clone();
        let rt = rt.clone();
        move |obj: Arc<K>, ctx: Arc<Ctx>| {
            let (reconcile, failures, rt) = (reconcile.clone(), failures.clone(), rt.clone());
            CancelableJoinHandle::spawn(
                async move {
                    let started = Instant::now();
                    let result = reconcile(obj.clone(), ctx).await;
                    rt.metrics
                        .reconciled(name, result.is_ok(), started.elapsed());
                    match &result {
                        Ok(_) => failures.reset(&key_of(&*obj)),
                        Err(e) => report(&rt.recorder, &*obj, action, e).await,
                    }
                    result
                },
                &tokio::runtime::Handle::current(),
            )
        }
    };
    let error_policy = move |obj: Arc<K>, _err: &Error, _ctx: Arc<Ctx>| {
        Action::requeue(failures.next_delay(&key_of(&*obj)))
    };

    tracing::info!(controller = name, "starting");
    kube::runtime::applier(
        wrapped,
        error_policy,
        ctx,
        store,
        queue,
        Config::default().concurrency(concurrency),
    )
    .for_each(|res| async move {
        if let Err(e) = res {
            match e {
                kube::runtime::controller::Error::ObjectNotFound(r) => {
                    tracing::trace!(controller = name, object = %r, "gone before reconcile");
                }
                other => tracing::debug!(controller = name, error = %other, "reconcile failed"),
            }
        }
    })
    .await;
    tracing::info!(controller = name, "stopped");
}

/// Log a failed reconcile and record it as a Warning event on the object.
/// Write conflicts are routine (another writer won a race) and only logged.
async fn report<K>(recorder: &Recorder, obj: &K, action: &'static str, e: &Error)
where
    K: Resource<DynamicType = ()>,
{
    let object = key_of(obj);
    if e.is_status(409) {
        tracing::debug!(%object, error = %e, "write conflict, retrying");
        return;
    }
    tracing::warn!(%object, error = %e, "reconcile failed");
    let event = Event {
        type_: EventType::Warning,
        reason: e.reason().to_string(),
        note: Some(truncate(e.to_string(), 1000)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(pe) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(%object, error = %pe, "cannot publish event");
    }
}

/// Publish a Normal event (best effort).
pub async fn notice<K>(recorder: &Recorder, obj: &K, action: &str, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(object = %key_of(obj), error = %e, "cannot publish event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let f = Failures::default();
        assert_eq!(f.next_delay("a"), Duration::from_millis(250));
        assert_eq!(f.next_delay("a"), Duration::from_millis(500));
        assert_eq!(f.next_delay("a"), Duration::from_secs(1));
        for _ in 0..40 {
            f.next_delay("a");
        }
        assert_eq!(f.next_delay("a"), BACKOFF_MAX);
        f.reset("a");
        assert_eq!(f.next_delay("a"), Duration::from_millis(250));
        assert_eq!(f.next_delay("b"), Duration::from_millis(250));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
