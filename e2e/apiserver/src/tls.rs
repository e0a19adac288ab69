//! One port, two protocols: connections that open with a TLS handshake are served
//! over TLS, everything else as plain HTTP. TLS exists because client-go
//! (kubectl) only sends bearer tokens over https; kube-rs clients may use either.
//! Each server mints its own CA and a server certificate for 127.0.0.1, ::1 and
//! localhost when it starts, so no key is ever stored.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A server's freshly minted CA and serving certificate.
pub struct Certs {
    /// The CA certificate (PEM), for kubeconfig `certificate-authority-data`.
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Certs {
    /// A new CA and a server certificate it signs, valid for the loopback names.
    pub fn generate(name: &str) -> Result<Self, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("lab-{name}-ca"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("lab-{name}"));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert: cert.der().clone(),
            server_key: key.serialize_der(),
        })
    }

    fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Io = Either<TcpStream, TlsStream<TcpStream>>;

/// Accepts plain and TLS connections on one listener.
pub struct DualListener {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl DualListener {
    /// Starts accepting; handshakes run in their own tasks so a slow client cannot
    /// hold up others. Stops accepting on `shutdown`.
    pub fn new(
        listener: TcpListener,
        certs: &Certs,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = certs.acceptor()?;
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
