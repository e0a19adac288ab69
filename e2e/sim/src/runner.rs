//! Running a kube-runtime controller: the shared error policy (retry conflicts
//! at once, other failures after a short back-off) and the loop that drains a
//! controller's result stream, logging failures.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::Error;

/// Retry delay after a failed reconcile that was not a conflict.
const RETRY: Duration = Duration::from_secs(1);
/// Retry delay after an optimistic-concurrency conflict.
const RETRY_CONFLICT: Duration = Duration::from_millis(20);

/// The error policy of every simulator controller.
pub(crate) fn error_policy<K, C>(_obj: Arc<K>, err: &Error, _ctx: Arc<C>) -> Action {
    if err.is_conflict() {
        Action::requeue(RETRY_CONFLICT)
    } else {
        Action::requeue(RETRY)
    }
}

/// Drains a controller's result stream until it ends, logging failures.
pub(crate) async fn drain<K, S>(name: &'static str, stream: S)
where
    K: Resource + Debug,
    K::DynamicType: Debug,
    S: Stream<Item = Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>>,
{
    stream
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::trace!(controller = name, object = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(err, obj)) if err.is_conflict() => {
                    tracing::debug!(controller = name, object = %obj, "conflict, retrying: {err}")
                }
                Err(controller::Error::ReconcilerFailed(err, obj)) => {
                    tracing::warn!(controller = name, object = %obj, "reconcile failed: {err}")
                }
                Err(controller::Error::ObjectNotFound(_)) => {}
                Err(err) => tracing::warn!(controller = name, "controller error: {err}"),
            }
        })
        .await;
}
