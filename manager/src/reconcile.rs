//! What the HostedCluster and NodePool reconcilers share: the finalizer goes
//! on first (that write is a reconcile of its own, whose event brings the
//! object back), then kube's finalizer helper dispatches to `apply` or
//! `cleanup`; the outcome is counted per controller and result, and logged
//! within a span naming the object. [`retry`] is their error policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::api::FINALIZER;
use crate::context::Context;
use crate::error::{Error, Result, Target, is_not_found};

/// A reconcile still waiting on something else (a guest API, a VM) is
/// looked at again this soon.
const PENDING_RETRY: Duration = Duration::from_secs(5);
/// A failed one after this long.
const FAILED_RETRY: Duration = Duration::from_secs(15);

/// Reconcile `obj` of `controller`: its finalizer, then `apply` while it
/// lives or `cleanup` once it is being deleted.
pub async fn with_finalizer<K, A, C, FA, FC>(
    controller: &'static str,
    obj: Arc<K>,
    ctx: &Context,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
    A: FnOnce(Arc<K>) -> FA,
    C: FnOnce(Arc<K>) -> FC,
    FA: Future<Output = Result<Action>>,
    FC: Future<Output = Result<Action>>,
{
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_default();
    let span = tracing::info_span!("reconcile", kind = %K::kind(&()), namespace = %ns, name = %obj.name_any());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let result = async {
        if crate::finalizers::ensure(&api, obj.as_ref(), FINALIZER)
            .await
            .map_err(Error::kube(Target::Management, "add finalizer"))?
        {
            return Ok(Action::await_change());
        }
        finalizer(&api, FINALIZER, obj, |event| async move {
            match event {
                Event::Apply(obj) => apply(obj).await,
                Event::Cleanup(obj) => cleanup(obj).await,
            }
        })
        .await
        .or_else(|e| match e {
            // Removing the finalizer of an object already gone: done.
            kube::runtime::finalizer::Error::RemoveFinalizer(e) if is_not_found(&e) => {
                Ok(Action::await_change())
            }
            e => Err(Error::Finalizer(Box::new(e))),
        })
    }
    .instrument(span)
    .await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_pending() => "pending",
        Err(e) => e.metric_label(),
    };
    ctx.metrics.reconciled(controller, label, started.elapsed());
    result
}

/// The error policy: soon for a reconcile that is only waiting, later for
/// one that failed.
pub fn retry<K: Resource>(obj: &K, error: &Error) -> Action {
    let (ns, name) = (obj.namespace(), obj.name_any());
    if error.is_pending() {
        tracing::debug!(namespace = ?ns, %name, %error, "pending");
        Action::requeue(PENDING_RETRY)
    } else {
        tracing::warn!(namespace = ?ns, %name, %error, "reconcile failed");
        Action::requeue(FAILED_RETRY)
    }
}
