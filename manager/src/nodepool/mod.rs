//! The NodePool controller: `reconcile` wraps the finalizer helper and
//! dispatches to [`converge::apply`] and [`converge::cleanup`];
//! `error_policy` decides the retry; [`controller`] wires the triggers
//! (NodePools, their HostedClusters, and the per-cluster VM, Node and drain
//! watches of [`crate::watches`]).

pub mod converge;
pub mod join;
pub mod nodes;
pub mod observe;
pub mod repair;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::{Future, StreamExt};
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{HostedCluster, NodePool};
use crate::backoff;
use crate::context::Context;
use crate::error::{Error, Result};

const CONTROLLER: &str = "nodepool";

/// Reconcile one NodePool.
pub async fn reconcile(np: Arc<NodePool>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = ctx.as_ref();
    crate::reconcile::with_finalizer(
        CONTROLLER,
        np,
        ctx,
        |np| async move { converge::apply(&np, ctx).await },
        |np| async move { converge::cleanup(&np, ctx).await },
    )
    .await
}

/// Retry after a failed or unfinished reconcile.
pub fn error_policy(np: Arc<NodePool>, error: &Error, _ctx: Arc<Context>) -> Action {
    crate::reconcile::retry(np.as_ref(), error)
}

/// Run the controller until `shutdown` resolves. `triggers` is the stream
/// of [`crate::watches::Triggers`].
pub async fn controller(
    ctx: Arc<Context>,
    mut triggers: UnboundedReceiver<ObjectRef<NodePool>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = backoff::controller(
        Api::<NodePool>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(
        Config::default()
            .debounce(Duration::from_millis(100))
            .concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    let triggered = futures::stream::poll_fn(move |cx| triggers.poll_recv(cx));
    controller
        .watches_stream(
            backoff::watch(
                Api::<HostedCluster>::all(client),
                watcher::Config::default(),
            ),
            move |hc: HostedCluster| {
                let ns = hc.namespace();
                let name = hc.name_any();
                store
                    .state()
                    .iter()
                    .filter(|np| np.namespace() == ns && np.spec.cluster_name == name)
                    .map(|np| ObjectRef::from_obj(np.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(triggered)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "nodepool controller event");
            }
        })
        .await;
}
