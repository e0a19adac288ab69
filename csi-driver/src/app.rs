//! Wiring: from a validated [`Config`] to running services. Builds the infra
//! and tenant clients, starts the controller (and its watches) and/or the
//! node service, binds the CSI endpoint and the optional HTTP endpoints, and
//! runs until SIGTERM or SIGINT, then shuts down gracefully.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kubevirt_csi_proto::v1::controller_server::ControllerServer;
use kubevirt_csi_proto::v1::identity_server::IdentityServer;
use kubevirt_csi_proto::v1::node_server::NodeServer;
use kubevirt_infra::TenantScope;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::config::Config;
use crate::controller::ControllerService;
use crate::health::Health;
use crate::identity::IdentityService;
use crate::metrics::Metrics;
use crate::node::{NodeConfig, NodeService};

/// How long the node service waits for its Node to name its VM.
const NODE_ID_TIMEOUT: Duration = Duration::from_secs(120);

/// A kube client from a kubeconfig file, or the in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>, what: &str) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the {what} kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading the {what} kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .with_context(|| format!("no {what} kubeconfig given and not running in a cluster"))?,
    };
    kube::Client::try_from(config).with_context(|| format!("building the {what} client"))
}

/// Cancel `token` on SIGTERM or SIGINT.
fn spawn_signal_handler(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

/// Run the driver until a signal (or `shutdown`) stops it.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    spawn_signal_handler(shutdown.clone())?;
    let metrics = Arc::new(Metrics::new());
    let mut health = Health::new();
    let mut routes = Routes::default();

    if let Some(cc) = &cfg.controller {
        let infra = client(cfg.infra_kubeconfig.as_deref(), "infra cluster").await?;
        let namespace = cc
            .infra_namespace
            .clone()
            .unwrap_or_else(|| infra.default_namespace().to_string());
        let scope = TenantScope::new(&namespace, cc.infra_labels.clone(), &cc.volume_prefix);
        tracing::info!(
            namespace = %namespace,
            labels = %scope.selector(),
            volume_prefix = %cc.volume_prefix,
            "controller service: infra scope"
        );
        let (service, index) = ControllerService::start(
            infra,
            scope,
            cc.enforcement.clone(),
            metrics.clone(),
            shutdown.child_token(),
        );
        let service = service.with_alpha_rpcs(cc.alpha_rpcs);
        health.register(index);
        routes = routes.add_service(ControllerServer::new(service));
    }

    if let Some(ns) = &cfg.node {
        let tenant = client(cfg.tenant_kubeconfig.as_deref(), "tenant cluster").await?;
        let node_id = tokio::select! {
            r = crate::node::resolve_node_id(tenant, &ns.node_name, NODE_ID_TIMEOUT) => r
                .with_context(|| format!("resolving the infra VM of node {}", ns.node_name))?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        tracing::info!(node = %ns.node_name, node_id = %node_id, "node service");
        let service = NodeService::new(NodeConfig {
            node_id,
            device_dir: ns.device_dir.clone(),
            sysfs_dir: ns.sysfs_dir.clone(),
            max_volumes_per_node: ns.max_volumes_per_node,
            device_wait: ns.device_wait,
        });
        routes = routes.add_service(NodeServer::new(service));
    }

    let identity = IdentityService::new(cfg.controller.is_some(), health.clone());
    routes = routes.add_service(IdentityServer::new(identity));

    let listener = crate::server::bind(&cfg.endpoint).await?;
    let http = crate::http::bind(
        cfg.health_address,
        cfg.metrics_address,
        health,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .context("binding the HTTP endpoints")?;
    let http = tokio::spawn(http);
    let grpc = crate::server::serve(listener, routes, metrics, shutdown.clone()).await;
    shutdown.cancel();
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    grpc.map_err(Into::into)
}
