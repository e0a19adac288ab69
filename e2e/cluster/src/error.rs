//! Why a control-plane operation failed: a missing binary, a process that
//! would not start or become ready, a certificate, a file, or the API.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{binary} not found: set KUBE_BIN_DIR, put ../shared/tools/{binary}.gz beside the \
         project, or install it on PATH (Kubernetes v{version})"
    )]
    BinaryMissing {
        binary: &'static str,
        version: &'static str,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{process} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    Exited {
        process: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{process} was not ready after {after:?}; last lines of {log}:\n{tail}")]
    NotReady {
        process: String,
        after: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Maps an I/O error about `path` (for `map_err`).
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
