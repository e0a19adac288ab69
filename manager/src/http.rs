//! The manager's HTTP endpoints: `/healthz` (the process serves),
//! `/readyz` (the controllers run: this replica leads), and `/metrics`
//! (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Shared by the handlers.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(e): State<Endpoints>) -> impl IntoResponse {
    if e.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not leading")
    }
}

async fn metrics(State(e): State<Endpoints>) -> impl IntoResponse {
    match e.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Every endpoint on one router.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(endpoints)
}

/// Bind `address` and serve the router until `shutdown`. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    address: SocketAddr,
    endpoints: Endpoints,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = router(endpoints);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let metrics = Metrics::new();
        metrics.wrote("guest", "StorageClass", "apply");
        let ready = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let endpoints = Endpoints {
            metrics,
            ready: ready.clone(),
        };
        let (addr, task) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            endpoints,
            stop.clone(),
        )
        .await
        .expect("binds");
        let checks = async {
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
            ready.store(true, Ordering::Relaxed);
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
            let text = get(addr, "/metrics").await;
            assert!(text.contains("kubevirt_hcp_manager_writes_total{target=\"guest\",kind=\"StorageClass\",verb=\"apply\"} 1"), "{text}");
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), checks)
            .await
            .expect("in time");
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("joins");
    }
}
