//! Prometheus metrics: per-RPC call counts by method and gRPC code and an RPC
//! latency histogram, recorded by a tower layer around the gRPC router, plus
//! the infra caches' watch errors and the APIs the infra cluster lacks. [`Metrics::encode`] renders the OpenMetrics
//! text served at `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The driver's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    watch_errors: Family<KindLabels, Counter>,
    not_served: Family<KindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubevirt_csi");
        let rpcs = Family::<RpcLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let watch_errors = Family::<KindLabels, Counter>::default();
        let not_served = Family::<KindLabels, Gauge>::default();
        registry.register(
            "grpc_requests",
            "CSI calls handled, by method and gRPC code",
            rpcs.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "CSI call latency, by method",
            latency.clone(),
        );
        registry.register(
            "infra_watch_errors",
            "Failed infra watch attempts, by resource kind",
            watch_errors.clone(),
        );
        registry.register(
            "infra_api_not_served",
            "1 while the infra cluster does not serve the API of a resource kind (its CRD is not installed)",
            not_served.clone(),
        );
        Self {
            registry,
            rpcs,
            latency,
            watch_errors,
            not_served,
        }
    }

    /// Record one finished call.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                grpc_code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(seconds);
    }

    /// Count a failed infra watch attempt.
    pub fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Record whether the infra cluster serves the API of `kind`.
    pub fn set_not_served(&self, kind: &str, not_served: bool) {
        self.not_served
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(i64::from(not_served));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A tower layer recording every gRPC call into [`Metrics`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the router.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The gRPC code of a unary response: the `grpc-status` header of a
/// trailers-only (error) response, else OK.
fn response_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(resp) => response_code(resp.headers()),
                Err(_) => tonic::Code::Internal,
            };
            metrics.observe_rpc(&method, code, start.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rpc_counts_and_latency() {
        let m = Metrics::new();
        m.observe_rpc("CreateVolume", tonic::Code::Ok, 0.002);
        m.observe_rpc("CreateVolume", tonic::Code::InvalidArgument, 0.001);
        m.watch_error("DataVolume");
        m.set_not_served("VolumeSnapshot", true);
        let text = m.encode();
        assert!(text.contains(
            "kubevirt_csi_grpc_requests_total{method=\"CreateVolume\",grpc_code=\"Ok\"} 1"
        ));
        assert!(text.contains("grpc_code=\"InvalidArgument\""));
        assert!(text.contains(
            "kubevirt_csi_grpc_request_duration_seconds_count{method=\"CreateVolume\"} 2"
        ));
        assert!(text.contains("kubevirt_csi_infra_watch_errors_total{kind=\"DataVolume\"} 1"));
        assert!(text.contains("kubevirt_csi_infra_api_not_served{kind=\"VolumeSnapshot\"} 1"));
    }

    #[test]
    fn reads_trailers_only_status() {
        let mut h = http::HeaderMap::new();
        assert_eq!(response_code(&h), tonic::Code::Ok);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(response_code(&h), tonic::Code::NotFound);
    }
}
