//! The optional HTTP side: `GET /healthz` (200 when ready, 503 with the reason
//! otherwise) and Prometheus `GET /metrics`, each on its own address or both
//! on one, served with axum until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Readiness};
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: Arc<Metrics>,
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.readiness() {
        Readiness::Ready => (StatusCode::OK, "ok\n".to_string()),
        Readiness::Starting(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: {why}\n"),
        ),
        Readiness::Failing(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failing: {why}\n")),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Which endpoints one listener serves.
fn router(state: AppState, health: bool, metrics_on: bool) -> Router {
    let mut r = Router::new();
    if health {
        r = r.route("/healthz", get(healthz));
    }
    if metrics_on {
        r = r.route("/metrics", get(metrics));
    }
    r.with_state(state)
}

/// Bind the configured listeners now (so errors surface at start) and return
/// a future serving them until `shutdown` is cancelled.
pub async fn bind(
    health_address: Option<SocketAddr>,
    metrics_address: Option<SocketAddr>,
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let state = AppState { health, metrics };
    let mut plan: Vec<(SocketAddr, bool, bool)> = Vec::new();
    if let Some(a) = health_address {
        plan.push((a, true, metrics_address == Some(a)));
    }
    if let Some(a) = metrics_address.filter(|a| Some(*a) != health_address) {
        plan.push((a, false, true));
    }
    let mut servers = Vec::new();
    for (addr, h, m) in plan {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(address = %listener.local_addr()?, healthz = h, metrics = m, "serving HTTP");
        let app = router(state.clone(), h, m);
        let token = shutdown.clone();
        servers.push(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
    }
    Ok(async move {
        for r in futures::future::join_all(servers).await {
            r?;
        }
        Ok(())
    })
}
