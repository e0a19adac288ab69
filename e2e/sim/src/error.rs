//! The one error type of the simulators. Reconcilers return it; the runners
//! log it and requeue, and `run` functions return it only when a simulator
//! cannot start at all.

use std::path::PathBuf;

/// Why a simulator step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", kubevirt_infra::api_error::describe(.0))]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("invalid quantity {0:?}")]
    Quantity(String),
    #[error("CRD {file}: {source}")]
    Crd {
        file: &'static str,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("address pool {cidr:?}: {message}")]
    Pool { cidr: String, message: String },
    #[error("{kind} {name} has no {field}")]
    MissingField {
        kind: &'static str,
        name: String,
        field: &'static str,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0} exhausted")]
    Exhausted(String),
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(
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

    pub(crate) fn missing(
        kind: &'static str,
        name: impl Into<String>,
        field: &'static str,
    ) -> Error {
        Error::MissingField {
            kind,
            name: name.into(),
            field,
        }
    }

    /// An API conflict (stale resourceVersion): worth an immediate retry.
    /// Through the finalizer helper too: its own writes (a 422 there is a
    /// stale finalizer list) and the reconcile it wrapped.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(kube::Error::Api(s)) => s.is_conflict(),
            Error::Finalizer(f) => match &**f {
                F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) => {
                    s.is_conflict() || s.code == 422
                }
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(e))
    }
}

/// `Ok(None)` for a 404, the object otherwise.
pub(crate) fn not_found_ok<T>(r: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Treats "already gone" as success for deletes.
pub(crate) fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    not_found_ok(r).map(|_| ())
}
