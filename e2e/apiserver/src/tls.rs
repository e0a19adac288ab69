//! One port, two protocols: connections that open with a TLS handshake are served
//! over TLS (a lab-only CA and server certificate for 127.0.0.1, ::1 and localhost,
//! embedded below), everything else as plain HTTP. TLS exists because client-go
//! (kubectl) only sends bearer tokens over https; kube-rs clients may use either.
//! The key is public in this source tree: never use it outside the lab.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// The lab CA certificate (PEM, base64-encoded), for kubeconfig `certificate-authority-data`.
pub const CA_PEM_BASE64: &str = include_str!("tls/ca.pem.b64");
/// The lab CA certificate (PEM).
pub const CA_PEM: &str = include_str!("tls/ca.pem");
const SERVER_CERT_DER: &[u8] = include_bytes!("tls/server.der");
const SERVER_KEY_DER: &[u8] = include_bytes!("tls/server.key.der");

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Io = Either<TcpStream, TlsStream<TcpStream>>;

fn acceptor() -> io::Result<TlsAcceptor> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(SERVER_CERT_DER.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(SERVER_KEY_DER.to_vec())),
        )
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts plain and TLS connections on one listener.
pub struct DualListener {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl DualListener {
    /// Starts accepting; handshakes run in their own tasks so a slow client cannot
    /// hold up others. Stops accepting on `shutdown`.
    pub fn new(listener: TcpListener, shutdown: CancellationToken) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = acceptor()?;
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                // Best effort: without it small watch frames may wait for delayed ACKs.
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let io =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
                            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                                    .await
                                {
                                    Ok(Ok(tls)) => Either::Right(tls),
                                    _ => return,
                                }
                            }
                            Ok(Ok(_)) => Either::Left(tcp),
                            _ => return,
                        };
                    let _ = tx.send((io, addr)).await;
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for DualListener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // Accepting has stopped (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
