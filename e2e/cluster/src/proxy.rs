//! The front door of a lab cluster: a TLS proxy on loopback that every
//! kubeconfig the lab writes points at, passing requests and their bearer
//! tokens through to kube-apiserver unchanged, so that faults can be injected
//! between clients and the real server, as a flaky network or load balancer
//! would inject them ([`Faults`]): added latency, a share of requests on a
//! resource answered with an HTTP error, and every open watch cut. Like a
//! load balancer with a health check, it answers 503 while kube-apiserver is
//! down or not ready yet ([`FrontProxy::set_ready`]): a kube-apiserver that
//! just started serves before its RBAC caches are filled, and would answer
//! 403 to everyone.
//!
//! Upgrade requests (exec, port-forward) are not proxied.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::pki::Issued;

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// Injected faults, shared by the proxy and its handles.
#[derive(Default)]
struct FaultState {
    latency: Mutex<Duration>,
    /// resource (`pods`, `pods/status`, `*`) -> (rate, HTTP code)
    error_rates: Mutex<HashMap<String, (f64, u16)>>,
    /// resource -> errors injected so far
    injected: Mutex<HashMap<String, u64>>,
}

/// A handle on the faults of one cluster's front proxy.
#[derive(Clone)]
pub struct Faults {
    state: Arc<FaultState>,
    drops: watch::Sender<u64>,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            state: Arc::new(FaultState::default()),
            drops: watch::channel(0).0,
        }
    }

    /// Every request waits `latency` before it is forwarded.
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut l) = self.state.latency.lock() {
            *l = latency;
        }
    }

    /// A share `rate` of the requests on `resource` (`pods`, which covers its
    /// subresources, `pods/status`, or `*`) is answered with `code`.
    pub fn set_error_rate(&self, resource: &str, rate: f64, code: u16) {
        if let Ok(mut r) = self.state.error_rates.lock() {
            r.insert(resource.to_string(), (rate, code));
        }
    }

    /// Cuts every watch open through the proxy (the clients see their watch
    /// end and start another).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|g| *g += 1);
    }

    /// No more latency or errors.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        if let Ok(mut r) = self.state.error_rates.lock() {
            r.clear();
        }
    }

    /// How many answers on `resource` (exactly as injected: `pods/status`)
    /// the proxy has made up so far; they never reached kube-apiserver and
    /// are not in its audit log.
    pub fn injected(&self, resource: &str) -> u64 {
        self.state
            .injected
            .lock()
            .map(|i| i.get(resource).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn latency(&self) -> Duration {
        self.state.latency.lock().map(|l| *l).unwrap_or_default()
    }

    fn injected_error(&self, resource: &str) -> Option<u16> {
        let rates = self.state.error_rates.lock().ok()?;
        let base = resource.split('/').next().unwrap_or(resource);
        let (rate, code) = rates
            .get(resource)
            .or_else(|| rates.get(base))
            .or_else(|| rates.get("*"))?;
        let inject = rand::rng().random::<f64>() < *rate;
        if inject && let Ok(mut counts) = self.state.injected.lock() {
            *counts.entry(resource.to_string()).or_default() += 1;
        }
        inject.then_some(*code)
    }
}

/// A running front proxy.
pub struct FrontProxy {
    addr: SocketAddr,
    faults: Faults,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl FrontProxy {
    /// Serves on a free loopback port with `serving` (a certificate of the
    /// cluster's CA), forwarding to `upstream` (`https://127.0.0.1:<port>`),
    /// whose certificate `ca_pem` signs.
    pub async fn start(
        serving: &Issued,
        ca_pem: &str,
        upstream: &str,
    ) -> Result<FrontProxy, Error> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::io("bind", "127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("read the address of", "127.0.0.1:0"))?;
        let acceptor = acceptor(serving)?;
        let client = upstream_client(ca_pem)?;
        let faults = Faults::new();
        let ready = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let (f, s, r) = (faults.clone(), stop.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("front proxy accept: {e}");
                            continue;
                        }
                    },
                };
                let (acceptor, client, faults, upstream, stop, ready) = (
                    acceptor.clone(),
                    client.clone(),
                    f.clone(),
                    upstream.clone(),
                    s.clone(),
                    r.clone(),
                );
                tokio::spawn(async move {
                    // As a load balancer forwards: no Nagle delay of its own.
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let up = ready.load(Ordering::Acquire);
                        forward(req, client.clone(), faults.clone(), upstream.clone(), up)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(FrontProxy {
            addr,
            faults,
            ready,
            stop,
        })
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Whether kube-apiserver is up and ready: the proxy answers 503 while
    /// it is not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn acceptor(serving: &Issued) -> Result<TlsAcceptor, Error> {
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("front proxy certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| Error::Tls(format!("front proxy key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn upstream_client(ca_pem: &str) -> Result<Upstream, Error> {
    https_client(ca_pem)
}

/// An HTTPS client (HTTP/1.1) trusting only `ca_pem`.
pub(crate) fn https_client<B>(
    ca_pem: &str,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>, Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Tls(format!("cluster CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("cluster CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Headers that belong to one hop, not to the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn forward(
    req: Request<Incoming>,
    client: Upstream,
    faults: Faults,
    upstream: Arc<str>,
    upstream_ready: bool,
) -> Result<Response<Body>, Infallible> {
    if !upstream_ready {
        return Ok(status(503, "the API server is not ready"));
    }
    let latency = faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = req.uri().path().to_string();
    if let Some(resource) = resource_of(&path)
        && let Some(code) = faults.injected_error(&resource)
    {
        return Ok(status(
            code,
            &format!("injected by the lab's front proxy for {resource}"),
        ));
    }
    let watching = is_watch(req.uri());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = format!("{upstream}{path_and_query}").parse::<http::Uri>() else {
        return Ok(status(400, "the request path is not a valid URI"));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("front proxy: upstream: {e}");
            return Ok(status(503, "the API server is not reachable"));
        }
    };
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    let body = if watching {
        cut_on_drop(body, faults.drops.subscribe())
    } else {
        body.boxed()
    };
    Ok(Response::from_parts(parts, body))
}

/// A watch's response body that ends when the watches are dropped.
fn cut_on_drop(body: Incoming, mut drops: watch::Receiver<u64>) -> Body {
    drops.mark_unchanged();
    let frames = futures::stream::unfold(Some((body, drops)), |state| async move {
        let (mut body, mut drops) = state?;
        tokio::select! {
            frame = body.frame() => match frame? {
                Ok(f) => Some((Ok(f), Some((body, drops)))),
                Err(e) => Some((Err(e), None)),
            },
            _ = drops.changed() => None,
        }
    });
    StreamBody::new(frames).boxed()
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.path().contains("/watch/")
        || uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

/// A metav1 Status answer with `code`.
fn status(code: u16, message: &str) -> Response<Body> {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = match code.as_u16() {
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The resource a request path addresses, with its subresource
/// (`pods/status`); None for paths that address no resource (discovery).
pub fn resource_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let rest = match rest {
        ["watch", rest @ ..] => rest,
        rest => rest,
    };
    let rest = match rest {
        ["namespaces", _ns, sub @ ("finalize" | "status")] => {
            return Some(format!("namespaces/{sub}"));
        }
        ["namespaces", _ns, resource, more @ ..] => [&[*resource][..], more].concat(),
        other => other.to_vec(),
    };
    match rest.as_slice() {
        [] => None,
        [resource] | [resource, _] => Some(resource.to_string()),
        [resource, _, sub, ..] => Some(format!("{resource}/{sub}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_of_paths() {
        let cases = [
            ("/api/v1/namespaces/a/pods", Some("pods")),
            ("/api/v1/namespaces/a/pods/p/status", Some("pods/status")),
            ("/api/v1/namespaces/a", Some("namespaces")),
            ("/api/v1/namespaces", Some("namespaces")),
            ("/api/v1/namespaces/a/finalize", Some("namespaces/finalize")),
            ("/api/v1/nodes/n", Some("nodes")),
            ("/api/v1/watch/namespaces/a/pods", Some("pods")),
            (
                "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachines/vm/addvolume",
                Some("virtualmachines/addvolume"),
            ),
            (
                "/apis/cdi.kubevirt.io/v1beta1/datavolumes",
                Some("datavolumes"),
            ),
            ("/apis/cdi.kubevirt.io/v1beta1", None),
            ("/api", None),
            ("/healthz", None),
        ];
        for (path, want) in cases {
            assert_eq!(resource_of(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn injected_errors_follow_the_rates() {
        let faults = Faults::new();
        assert_eq!(faults.injected_error("pods"), None);
        faults.set_error_rate("pods", 1.0, 500);
        assert_eq!(
            faults.injected_error("pods/status"),
            Some(500),
            "covers subresources"
        );
        faults.set_error_rate("pods/status", 0.0, 409);
        assert_eq!(
            faults.injected_error("pods/status"),
            None,
            "the subresource's own rate"
        );
        faults.clear();
        assert_eq!(faults.injected_error("pods"), None);
    }
}
