//! The crate's two error types: [`Error`], what a reconcile can fail with
//! (mapped once, in [`Error::reason`], to the event reason users see), and
//! [`Fatal`], what stops the process (mapped once, in
//! `main`, to a message and exit code 1).

use crate::cli::CliError;
use crate::config::ConfigError;
use crate::loadbalancer::DesiredError;

/// A reconcile failure. Every variant is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {what}: {source}")]
    Kube {
        verb: &'static str,
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot build the infra Service: {0}")]
    Desired(#[from] DesiredError),
    #[error("infra Service {0} exists but was made for another tenant Service; not touching it")]
    NameTaken(String),
    #[error("VirtualMachineInstance {0} not found in the infra namespace")]
    InstanceNotFound(String),
    #[error("VirtualMachineInstance {0} is not running on an infra node yet")]
    InstanceNotScheduled(String),
}

impl Error {
    /// Wrap a client error with what we were doing.
    pub fn kube(verb: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube {
            verb,
            what,
            source: Box::new(source),
        }
    }

    /// The `reason` of the Warning event this error becomes.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { verb: "create", .. } => "CreateFailed",
            Self::Kube { verb: "delete", .. } => "DeleteFailed",
            Self::Kube { .. } => "SyncFailed",
            Self::Desired(_) => "InvalidService",
            Self::NameTaken(_) => "NameConflict",
            Self::InstanceNotFound(_) => "InstanceNotFound",
            Self::InstanceNotScheduled(_) => "InstanceNotScheduled",
        }
    }

    /// Whether the API server answered with this HTTP status.
    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, Self::Kube { source, .. } if status_code(source) == Some(code))
    }
}

/// The HTTP status of an API error response.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops the process: bad flags or config, unusable kubeconfigs, a
/// port that cannot be bound, or lost leadership.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{which} kubeconfig {path}: {message}")]
    Kubeconfig {
        which: &'static str,
        path: String,
        message: String,
    },
    #[error("{which} cluster client: {message}")]
    Client {
        which: &'static str,
        message: String,
    },
    #[error("cannot serve health and metrics on {address}: {message}")]
    Serve { address: String, message: String },
    #[error("leader election lost: {0}")]
    LeadershipLost(String),
}
