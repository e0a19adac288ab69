//! The manager's one error type. Each variant knows the condition reason it
//! is reported under ([`Error::reason`]) and whether it is a real failure or
//! just "not done yet" ([`Error::is_pending`]); the controllers map errors
//! to status and requeues in one place each.

use crate::api::conditions::reason;
use crate::desired::kubeconfig::EndpointError;
use crate::desired::object::SerializeError;
use crate::rollout::BoundError;
use crate::version::Refusal;

/// Which cluster a Kubernetes call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Management,
    Infra,
    Guest,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Management => "management",
            Target::Infra => "infra",
            Target::Guest => "guest",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{target} cluster: {action}: {}", describe(.source))]
    Kube {
        target: Target,
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{target} kubeconfig Secret {namespace}/{name} not found")]
    SecretMissing {
        target: Target,
        namespace: String,
        name: String,
    },
    #[error("{target} kubeconfig Secret {namespace}/{name} has no key {key:?}")]
    SecretKeyMissing {
        target: Target,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{target} kubeconfig in Secret {namespace}/{name} is unusable: {message}")]
    Kubeconfig {
        target: Target,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("infra kubeconfig: {0}")]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    #[error(transparent)]
    Version(#[from] Refusal),
    #[error(transparent)]
    Bound(#[from] BoundError),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("HostedCluster {0} not found")]
    HostedClusterMissing(String),
    #[error("HostedCluster {0} has not been reconciled yet (ReconciliationSucceeded is not True)")]
    HostedClusterNotAvailable(String),
    #[error("{0}")]
    Pending(String),
    #[error("{}", describe_finalizer(.0))]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    SharedEtcd(#[from] crate::shared_etcd::EtcdError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A Kubernetes call failed.
    pub fn kube(target: Target, action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube {
            target,
            action,
            source,
        }
    }

    /// Not a failure: the object waits for something that is under way.
    pub fn is_pending(&self) -> bool {
        match self {
            Error::Pending(_) => true,
            Error::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::CleanupFailed(e) | kube::runtime::finalizer::Error::ApplyFailed(e)
                    if e.is_pending()
            ),
            _ => false,
        }
    }

    /// The condition reason this error is reported under.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube {
                target: Target::Guest,
                ..
            } => reason::GUEST_UNREACHABLE,
            Error::Kube {
                target: Target::Infra,
                ..
            } => reason::INFRA_UNREACHABLE,
            Error::Kube {
                target: Target::Management,
                ..
            } => reason::APPLY_FAILED,
            Error::SecretMissing {
                target: Target::Infra,
                ..
            }
            | Error::SecretKeyMissing {
                target: Target::Infra,
                ..
            }
            | Error::Kubeconfig {
                target: Target::Infra,
                ..
            }
            | Error::Endpoint(_) => reason::INFRA_CREDENTIALS_UNAVAILABLE,
            Error::SecretMissing { .. } | Error::SecretKeyMissing { .. } => {
                reason::GUEST_KUBECONFIG_UNAVAILABLE
            }
            Error::Kubeconfig { .. } => reason::GUEST_KUBECONFIG_UNAVAILABLE,
            Error::Version(Refusal::NewerThanHostedCluster { .. }) => {
                reason::VERSION_NEWER_THAN_HOSTED_CLUSTER
            }
            Error::Version(Refusal::Skew(_)) => reason::UNSUPPORTED_SKEW,
            Error::Version(_) => reason::UNSUPPORTED_VERSION,
            Error::Bound(_) | Error::InvalidSpec(_) => reason::INVALID_SPEC,
            Error::HostedClusterMissing(_) => reason::HOSTED_CLUSTER_NOT_FOUND,
            Error::HostedClusterNotAvailable(_) => reason::HOSTED_CLUSTER_NOT_AVAILABLE,
            Error::Pending(_) => reason::RECONCILING,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(e)
                | kube::runtime::finalizer::Error::ApplyFailed(e) => e.reason(),
                _ => reason::APPLY_FAILED,
            },
            Error::Serialize(_) | Error::Lease(_) | Error::Io(_) => reason::APPLY_FAILED,
            Error::SharedEtcd(_) => reason::SHARED_ETCD_UNAVAILABLE,
        }
    }

    /// Metric label of the error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::SecretMissing { .. }
            | Error::SecretKeyMissing { .. }
            | Error::Kubeconfig { .. } => "credentials",
            Error::Endpoint(_) => "credentials",
            Error::Serialize(_) => "serialize",
            Error::Version(_) | Error::Bound(_) | Error::InvalidSpec(_) => "spec",
            Error::HostedClusterMissing(_) | Error::HostedClusterNotAvailable(_) => "dependency",
            Error::Pending(_) => "pending",
            Error::Finalizer(_) => "finalizer",
            Error::Lease(_) => "lease",
            Error::Io(_) => "io",
            Error::SharedEtcd(_) => "etcd",
        }
    }
}

pub use kubevirt_infra::api_error::describe;

/// A finalizer helper's error in words: the reconcile's own error as it is,
/// a failed finalizer write through [`describe`].
fn describe_finalizer(e: &kube::runtime::finalizer::Error<Error>) -> String {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e.to_string(),
        F::AddFinalizer(e) => format!("adding the finalizer: {}", describe(e)),
        F::RemoveFinalizer(e) => format!("removing the finalizer: {}", describe(e)),
        F::UnnamedObject => "the object has no name".to_string(),
        F::InvalidFinalizer => "the finalizer is not valid".to_string(),
    }
}

/// Whether a Kubernetes error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a Kubernetes error is a 409 AlreadyExists/Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_errors_read_well() {
        let unparsed = kube::Error::Api(Box::new(
            kube::core::Status::failure("404 page not found", "Failed to parse error data")
                .with_code(404),
        ));
        let e = Error::kube(Target::Guest, "apply VolumeSnapshotClass csi-kubevirt")(unparsed);
        assert_eq!(
            e.to_string(),
            "guest cluster: apply VolumeSnapshotClass csi-kubevirt: the API server does not serve this API (404 page not found)"
        );
        let denied = kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "services is forbidden: User \"x\" cannot list",
                "Forbidden",
            )
            .with_code(403),
        ));
        assert_eq!(
            describe(&denied),
            "services is forbidden: User \"x\" cannot list (HTTP 403)"
        );
    }

    #[test]
    fn reasons_follow_the_failing_cluster() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert_eq!(
            Error::kube(Target::Guest, "apply")(api(500)).reason(),
            reason::GUEST_UNREACHABLE
        );
        assert_eq!(
            Error::kube(Target::Infra, "apply")(api(500)).reason(),
            reason::INFRA_UNREACHABLE
        );
        let missing = |target| Error::SecretMissing {
            target,
            namespace: "clusters".into(),
            name: "k".into(),
        };
        assert_eq!(
            missing(Target::Guest).reason(),
            reason::GUEST_KUBECONFIG_UNAVAILABLE
        );
        assert_eq!(
            missing(Target::Infra).reason(),
            reason::INFRA_CREDENTIALS_UNAVAILABLE
        );
        assert!(is_not_found(&api(404)));
        assert!(!is_not_found(&api(409)));
        assert!(is_conflict(&api(409)));
        assert!(Error::Pending("x".into()).is_pending());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::CleanupFailed(
            Error::Pending("x".into()),
        )));
        assert!(wrapped.is_pending());
        assert_eq!(wrapped.to_string(), "x");
        let gone = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::RemoveFinalizer(
            api(404),
        )));
        assert!(!gone.to_string().contains("Status {"), "{gone}");
        assert_eq!(
            Error::Version(Refusal::NewerThanHostedCluster {
                node_pool: "1.0.0".into(),
                hosted_cluster: "0.1.0".into()
            })
            .reason(),
            reason::VERSION_NEWER_THAN_HOSTED_CLUSTER
        );
    }
}
