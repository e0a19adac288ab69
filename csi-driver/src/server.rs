//! The gRPC server: serves the given routes on the CSI endpoint (a unix
//! socket, whose stale file is replaced and whose directory is created, or a
//! TCP address) with the metrics layer around them, until shutdown; then
//! finishes the calls in flight and removes the socket. Connections on the
//! unix socket go through [`AuthorityRewrite`], so that clients that name the
//! socket path as HTTP/2 `:authority` (gRPC C-core, grpc-java) are served.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::authority::AuthorityRewrite;
use crate::endpoint::Endpoint;
use crate::metrics::{GrpcMetricsLayer, Metrics};

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("cannot listen on {endpoint}: {source}")]
    Listen { endpoint: String, source: io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Remove a stale socket at `path` and create its directory. Refuses to
/// remove anything that is not a socket.
fn prepare_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// A bound listener, ready to serve.
pub enum Listener {
    Unix(tokio::net::UnixListener, std::path::PathBuf),
    Tcp(tokio::net::TcpListener),
}

/// Bind a unix socket so that it appears at `path` only once it listens:
/// bind under a temporary name in the same directory, then rename. Whoever
/// watches for the socket (a sidecar, the kubelet) never finds a socket
/// that refuses connections.
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Bind the endpoint now so that errors surface before anything else starts.
pub async fn bind(endpoint: &Endpoint) -> Result<Listener, ServeError> {
    match endpoint {
        Endpoint::Unix(path) => {
            prepare_socket(path).map_err(|source| ServeError::Socket {
                path: path.display().to_string(),
                source,
            })?;
            let l = bind_unix(path).map_err(|source| ServeError::Listen {
                endpoint: endpoint.to_string(),
                source,
            })?;
            Ok(Listener::Unix(l, path.clone()))
        }
        Endpoint::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            Ok(Listener::Tcp(l))
        }
    }
}

/// Serve `routes` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: Listener,
    routes: Routes,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let router = Server::builder()
        .layer(GrpcMetricsLayer::new(metrics))
        .add_routes(routes);
    let signal = async move { shutdown.cancelled().await };
    match listener {
        Listener::Unix(l, path) => {
            tracing::info!(endpoint = %format!("unix://{}", path.display()), "serving CSI");
            let incoming = UnixListenerStream::new(l).map(|c| c.map(AuthorityRewrite::new));
            let r = router.serve_with_incoming_shutdown(incoming, signal).await;
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Listener::Tcp(l) => {
            tracing::info!(endpoint = %format!("tcp://{}", l.local_addr().map(|a| a.to_string()).unwrap_or_default()), "serving CSI");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), signal)
                .await?;
        }
    }
    tracing::info!("gRPC server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets_are_replaced_other_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("sub/csi.sock");
        prepare_socket(&sock).expect("creates the directory");
        assert!(sock.parent().is_some_and(Path::exists));
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("binds");
        drop(l);
        prepare_socket(&sock).expect("removes the stale socket");
        assert!(!sock.exists());
        std::fs::write(&sock, b"x").expect("writes");
        assert!(prepare_socket(&sock).is_err());
    }

    #[tokio::test]
    async fn the_socket_appears_listening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("csi.sock");
        let Listener::Unix(_l, path) = bind(&Endpoint::Unix(sock.clone())).await.expect("binds")
        else {
            panic!("not a unix listener");
        };
        assert_eq!(path, sock);
        tokio::net::UnixStream::connect(&sock)
            .await
            .expect("accepts connections");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("lists")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from("csi.sock")],
            "no temporary socket left"
        );
    }
}
