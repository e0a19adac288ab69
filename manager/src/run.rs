//! Running the manager: serve the HTTP endpoints, win the leader election
//! (when enabled), publish the supported versions, and run both controllers
//! until shutdown or until leadership is lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::clients::ClusterClients;
use crate::context::{Context, Settings};
use crate::desired::object::Object;
use crate::error::{Error, Result, Target};
use crate::http::{self, Endpoints};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::watches::Triggers;
use crate::{hostedcluster, nodepool};

/// How to run.
pub struct Options {
    pub settings: Settings,
    /// `None`: run without leader election.
    pub leader_election: Option<LeaseConfig>,
    /// `None`: do not serve metrics.
    pub metrics_address: Option<SocketAddr>,
    /// `None`: do not serve health checks.
    pub health_address: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
}

/// Run until `shutdown` is cancelled. Returns an error when leadership is
/// lost (the process should exit and start over) or an endpoint cannot bind.
pub async fn run(client: Client, options: Options, shutdown: CancellationToken) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints {
        metrics: options.metrics.clone(),
        ready: ready.clone(),
    };
    let stop_http = shutdown.child_token();
    let mut servers = Vec::new();
    let mut bound = Vec::new();
    for address in [options.metrics_address, options.health_address]
        .into_iter()
        .flatten()
    {
        if bound.contains(&address) {
            continue;
        }
        let (addr, task) = http::serve(address, endpoints.clone(), stop_http.clone()).await?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        bound.push(address);
        servers.push(task);
    }

    let lost = CancellationToken::new();
    let mut keeper = None;
    if let Some(cfg) = options.leader_election.clone() {
        let elector = Elector::new(client.clone(), cfg);
        if !elector.acquire(&shutdown).await {
            return Ok(());
        }
        let (stop, lost) = (shutdown.clone(), lost.clone());
        keeper = Some(tokio::spawn(async move { elector.keep(stop, lost).await }));
    }
    options.metrics.leader.set(1);
    ready.store(true, Ordering::Relaxed);

    let settings = options.settings;
    publish_versions(&client, &settings, &options.metrics).await?;

    let (triggers, triggered) = Triggers::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        clients: ClusterClients::new(client),
        etcd: Default::default(),
        metrics: options.metrics.clone(),
        settings,
        triggers,
    });
    let stop = CancellationToken::new();
    let stop_on = |t: &CancellationToken| {
        let t = t.clone();
        async move { t.cancelled().await }
    };
    let controllers = futures::future::join(
        hostedcluster::controller(ctx.clone(), stop_on(&stop)),
        nodepool::controller(ctx, triggered, stop_on(&stop)),
    );
    tokio::pin!(controllers);
    let outcome = tokio::select! {
        _ = &mut controllers => Ok(()),
        _ = shutdown.cancelled() => Ok(()),
        _ = lost.cancelled() => Err(Error::Lease("leadership lost".into())),
    };
    stop.cancel();
    controllers.await;
    ready.store(false, Ordering::Relaxed);
    options.metrics.leader.set(0);
    if let Some(k) = keeper {
        let _ = k.await;
    }
    stop_http.cancel();
    for s in servers {
        let _ = s.await;
    }
    tracing::info!("stopped");
    outcome
}

/// Write the `supported-versions` ConfigMap (only if it differs).
async fn publish_versions(client: &Client, settings: &Settings, metrics: &Metrics) -> Result<()> {
    let cm = settings.supported.config_map(&settings.namespace);
    Applier {
        client,
        target: Target::Management,
        metrics,
    }
    .apply(&Object::new(&cm)?)
    .await?;
    tracing::info!(versions = ?settings.supported.entries(), namespace = %settings.namespace, "published supported versions");
    Ok(())
}
