//! The lab's error type: failures of the control planes, the simulators, the
//! Kubernetes client, the lab network, the filesystem and child processes, and waits that ran
//! out of time.

use std::path::PathBuf;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("control plane: {0}")]
    Cluster(#[from] lab_cluster::Error),
    #[error("simulator: {0}")]
    Sim(#[from] lab_sim::Error),
    #[error("guest stand-in: {0}")]
    Guest(#[from] lab_guest::GuestError),
    #[error("lab network: {0}")]
    Net(#[from] lab_net::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    #[error("watch of {what} failed: {message}")]
    Watch { what: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl LabError {
    /// Maps an I/O error about `path` (for `map_err`).
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io {
            action,
            path,
            source,
        }
    }
}
