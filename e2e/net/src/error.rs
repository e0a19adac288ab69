//! Why a network operation of the lab failed.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create the lab's network namespace ({0}); the lab needs root (CAP_SYS_ADMIN) for it"
    )]
    Namespace(nix::Error),
    #[error("`{command}` in the lab's network namespace failed: {message}")]
    Command { command: String, message: String },
    #[error("the lab's network namespace is gone")]
    NamespaceGone,
    #[error("{action} {addr}: {source}")]
    Socket {
        action: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Maps an I/O error of a socket on `addr` (for `map_err`).
    pub fn socket(action: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Socket {
            action,
            addr,
            source,
        }
    }
}
