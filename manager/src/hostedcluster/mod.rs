//! The HostedCluster controller: `reconcile` wraps the finalizer helper and
//! dispatches to [`converge::apply`] and [`cleanup::cleanup`];
//! `error_policy` decides the retry; [`controller`] wires the watches that
//! trigger it (HostedClusters, the Secrets they name, their NodePools, and
//! the Deployments and ConfigMaps the manager made).

pub mod cleanup;
pub mod components;
pub mod controlplane;
pub mod converge;
pub mod history;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use futures::{Future, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::api::{HostedCluster, NodePool};
use crate::backoff;
use crate::context::Context;
use crate::desired::sets::side;
use crate::error::{Error, Result};
use crate::names;

const CONTROLLER: &str = "hostedcluster";

/// Reconcile one HostedCluster.
pub async fn reconcile(hc: Arc<HostedCluster>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = ctx.as_ref();
    crate::reconcile::with_finalizer(
        CONTROLLER,
        hc,
        ctx,
        |hc| async move { converge::apply(&hc, ctx).await },
        |hc| async move { cleanup::cleanup(&hc, ctx).await },
    )
    .await
}

/// Retry after a failed or unfinished reconcile.
pub fn error_policy(hc: Arc<HostedCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    crate::reconcile::retry(hc.as_ref(), error)
}

/// The HostedClusters of `store` that name Secret `ns/name`.
fn referencing(
    store: &Store<HostedCluster>,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<HostedCluster>> {
    store
        .state()
        .iter()
        .filter(|hc| hc.namespace().as_deref() == Some(ns))
        .filter(|hc| {
            hc.guest_kubeconfig().name == name
                || hc
                    .external_infra()
                    .is_some_and(|c| c.infra_kube_config_secret.name == name)
        })
        .map(|hc| ObjectRef::from_obj(hc.as_ref()))
        .collect()
}

/// The HostedCluster a managed object belongs to, from its labels.
fn owner_of<K: Resource>(obj: &PartialObjectMeta<K>) -> Option<ObjectRef<HostedCluster>> {
    let labels = obj.metadata.labels.as_ref()?;
    let ns = labels.get(names::HOSTED_CLUSTER_NAMESPACE_LABEL)?;
    let name = labels.get(names::HOSTED_CLUSTER_NAME_LABEL)?;
    Some(ObjectRef::new(name).within(ns))
}

/// Run the controller until `shutdown` resolves.
pub async fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = backoff::controller(
        Api::<HostedCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(
        Config::default()
            .debounce(Duration::from_millis(200))
            .concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    let managed = format!(
        "{}={},{}={}",
        names::MANAGED_BY_LABEL,
        names::FIELD_MANAGER,
        names::SIDE_LABEL,
        side::MANAGEMENT
    );

    // `Api<PartialObjectMeta<_>>` watches metadata only: small in memory.
    controller
        .watches_stream(
            backoff::watch(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                watcher::Config::default(),
            ),
            move |s: PartialObjectMeta<Secret>| {
                referencing(
                    &store,
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                )
            },
        )
        .watches_stream(
            backoff::watch(
                Api::<NodePool>::all(client.clone()),
                watcher::Config::default(),
            ),
            |np: NodePool| {
                np.namespace()
                    .map(|ns| ObjectRef::new(&np.spec.cluster_name).within(&ns))
            },
        )
        .watches_stream(
            backoff::watch(
                Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
                watcher::Config::default().labels(&managed),
            ),
            |d| owner_of(&d),
        )
        .watches_stream(
            backoff::watch(
                Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
                watcher::Config::default().labels(&managed),
            ),
            |c| owner_of(&c),
        )
        // A hosted control plane: members and load-balancer addresses.
        .watches_stream(
            backoff::watch(
                Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
                watcher::Config::default().labels(&managed),
            ),
            |s| owner_of(&s),
        )
        .watches_stream(
            backoff::watch(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                watcher::Config::default().labels(&managed),
            ),
            |s| owner_of(&s),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "hostedcluster controller event");
            }
        })
        .await;
}
