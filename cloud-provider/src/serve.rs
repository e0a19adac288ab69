//! The health and metrics endpoint on `--secure-port`: `/healthz` and
//! `/readyz` answer `ok`, `/metrics` serves the Prometheus exposition. With
//! `--tls-cert-file`/`--tls-private-key-file` it speaks HTTPS (rustls, ring);
//! without them, plain HTTP. There is no delegated authentication: nothing
//! here is secret or writable. Served with hyper directly: three fixed
//! routes need no router.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::Serving;
use crate::error::Fatal;
use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The answer to one request.
fn handle(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" | "/readyz" | "/livez" => respond(StatusCode::OK, TEXT, "ok"),
        "/metrics" => match metrics.encode() {
            Ok(body) => respond(StatusCode::OK, OPENMETRICS, body),
            Err(_) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "cannot encode metrics\n",
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

fn tls_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())
}

/// Bind the endpoint and serve it until `token` fires. Binding and TLS
/// errors are returned before anything is served; `Ok(None)` when disabled.
pub async fn start(
    serving: &Serving,
    metrics: Metrics,
    token: CancellationToken,
) -> Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>, Fatal> {
    let Some(address) = serving.address else {
        return Ok(None);
    };
    let fatal = |message: String| Fatal::Serve {
        address: address.to_string(),
        message,
    };
    let tls = match &serving.tls {
        Some((cert, key)) => Some(TlsAcceptor::from(Arc::new(
            tls_config(cert, key).map_err(fatal)?,
        ))),
        None => None,
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| fatal(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| fatal(e.to_string()))?;
    tracing::info!(address = %bound, https = tls.is_some(), "serving /healthz and /metrics");
    let task = tokio::spawn(accept_loop(listener, tls, metrics, token));
    Ok(Some((bound, task)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    metrics: Metrics,
    token: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let (tls, metrics, token) = (tls.clone(), metrics.clone(), token.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, metrics, token).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, metrics, token).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
}

async fn serve_connection<S>(stream: S, metrics: Metrics, token: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let response = handle(&req, &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        () = token.cancelled() => {}
        res = conn => if let Err(e) = res {
            tracing::debug!(error = %e, "connection ended with an error");
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        s.write_all(request.as_bytes()).await.expect("writes");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("reads");
        body
    }

    #[tokio::test]
    async fn serves_health_and_metrics_over_http() {
        let metrics = Metrics::default();
        metrics.set_leader(true);
        let token = CancellationToken::new();
        let serving = Serving {
            address: Some("127.0.0.1:0".parse().expect("addr")),
            tls: None,
        };
        let (addr, task) = start(&serving, metrics, token.clone())
            .await
            .expect("binds")
            .expect("enabled");
        for (path, status, want) in [
            ("/healthz", "200", "ok"),
            ("/readyz", "200", "ok"),
            ("/metrics", "200", "kubevirt_ccm_leader 1"),
            ("/nothing", "404", "not found"),
        ] {
            let body = get(addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await;
            assert!(
                body.starts_with(&format!("HTTP/1.0 {status}")),
                "{path}: {body}"
            );
            assert!(body.contains(want), "{path}: {body}");
        }
        let body = get(
            addr,
            "POST /healthz HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(body.starts_with("HTTP/1.0 405"), "{body}");
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("joins");
    }

    #[tokio::test]
    async fn serves_https_with_the_given_certificate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let token = CancellationToken::new();
        let serving = Serving {
            address: Some("127.0.0.1:0".parse().expect("addr")),
            tls: Some((cert.clone(), key)),
        };
        let (addr, _task) = start(&serving, Metrics::default(), token.clone())
            .await
            .expect("binds")
            .expect("enabled");

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cert).expect("reads") {
            roots.add(c.expect("parses")).expect("adds");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let name =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("writes");
        let mut body = Vec::new();
        // The server may close without a TLS close_notify; what arrived counts.
        let _ = tls.read_to_end(&mut body).await;
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with("HTTP/1.0 200"), "{body}");
        assert!(body.ends_with("ok"), "{body}");
        token.cancel();
    }

    #[tokio::test]
    async fn disabled_and_bad_tls_are_reported() {
        let token = CancellationToken::new();
        let off = Serving {
            address: None,
            tls: None,
        };
        assert!(
            start(&off, Metrics::default(), token.clone())
                .await
                .expect("ok")
                .is_none()
        );
        let bad = Serving {
            address: Some("127.0.0.1:0".parse().expect("addr")),
            tls: Some(("/nonexistent/cert".into(), "/nonexistent/key".into())),
        };
        let err = start(&bad, Metrics::default(), token)
            .await
            .expect_err("no cert");
        assert!(err.to_string().contains("/nonexistent/cert"), "{err}");
    }
}
