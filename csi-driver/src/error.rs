//! The driver's error type and its one mapping to gRPC status codes.
//!
//! Every handler returns [`Error`]; the code a sidecar sees is decided here,
//! once, following the CSI spec's error tables. No path yields `Unknown`:
//! infra API failures are classified by their HTTP status (conflicts and
//! throttling are retryable `Aborted`/`Unavailable`, quota is
//! `ResourceExhausted`, anything unexpected is `Internal`).

use tonic::{Code, Status};

/// An RPC failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or a value is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, snapshot, node or source does not exist in the tenant's scope.
    #[error("{0}")]
    NotFound(String),
    /// An object of that name exists but does not match the request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request cannot proceed in the current state (attached elsewhere, in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The infra cluster does not serve an API the call needs (e.g. the
    /// VolumeSnapshot CRDs are not installed there); `api` names it.
    #[error("the infra cluster does not serve {api} (is its CustomResourceDefinition installed?)")]
    NotServed { api: String },
    /// The requested capacity cannot be provided.
    #[error("{0}")]
    OutOfRange(String),
    /// Quota or a node's volume limit is exhausted.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another call for the same volume or snapshot is in flight.
    #[error("an operation on {0} is already in progress")]
    Busy(String),
    /// The object is in a transient state (e.g. being deleted); retry later.
    #[error("{0}")]
    Aborted(String),
    /// A pagination token this driver did not hand out.
    #[error("invalid starting_token {0:?}")]
    InvalidToken(String),
    /// The RPC is not offered (not advertised in the capabilities).
    #[error("{0}")]
    Unimplemented(String),
    /// The infra cluster did not reach the wanted state before the caller's deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The driver cannot serve yet (infra caches not synced, API unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// Something the driver cannot explain to the caller.
    #[error("{0}")]
    Internal(String),
    /// A call to the infra API failed.
    #[error("{action}: {source}")]
    Infra {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// Result of the driver's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an infra API failure with what was being done.
    pub fn infra(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Infra { action, source }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) | Error::NotServed { .. } => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Busy(_) | Error::Aborted(_) | Error::InvalidToken(_) => Code::Aborted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::Infra { source, .. } => infra_code(source),
        }
    }
}

/// Classify an infra API failure. Lookups turn an expected 404 into "does
/// not exist" before this; a 404 that gets here (a missing namespace or
/// CRD) is the driver's environment, not the caller's request: Internal.
fn infra_code(err: &kube::Error) -> Code {
    match err {
        kube::Error::Api(status) => match status.code {
            409 => Code::Aborted,
            403 if status.message.contains("exceeded quota") => Code::ResourceExhausted,
            429 | 500 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Internal,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Code::Unavailable
        }
        _ => Code::Internal,
    }
}

/// Whether an infra API failure says "not found".
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Whether an infra API failure says "already exists" (or a create conflict).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(err.code(), bounded_message(err.to_string()))
    }
}

/// Longest status message sent, in bytes. Messages quote request fields,
/// and a status travels in an HTTP/2 header (`grpc-message`, percent-
/// encoded): an echoed 20 KB volume id would exceed the client's header
/// limit and turn a precise code into a protocol error.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary,
/// saying how much was left out.
pub fn bounded_message(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} more bytes)",
        &message[..end],
        message.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short".into()), "short");
        let long = format!("volume {} not found", "é".repeat(2000));
        let cut = bounded_message(long.clone());
        assert!(cut.len() < MAX_STATUS_MESSAGE + 40, "{}", cut.len());
        assert!(cut.starts_with("volume éé"));
        assert!(cut.ends_with("more bytes)"), "{cut}");
    }

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.to_string(),
            ..Default::default()
        }))
    }

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::Busy("pvc-1".into()).code(), Code::Aborted);
        assert_eq!(Error::InvalidToken("x".into()).code(), Code::Aborted);
        let not_served = Error::NotServed {
            api: "snapshot.storage.k8s.io/v1 volumesnapshots".into(),
        };
        assert_eq!(not_served.code(), Code::FailedPrecondition);
        assert!(
            not_served
                .to_string()
                .contains("does not serve snapshot.storage.k8s.io/v1 volumesnapshots")
        );
        let infra = |e| Error::infra("creating DataVolume pvc-1")(e).code();
        assert_eq!(infra(api(404, "namespace not found")), Code::Internal);
        assert_eq!(infra(api(409, "conflict")), Code::Aborted);
        assert_eq!(
            infra(api(403, "exceeded quota: q")),
            Code::ResourceExhausted
        );
        assert_eq!(infra(api(403, "forbidden")), Code::Internal);
        assert_eq!(infra(api(503, "unavailable")), Code::Unavailable);
        assert_eq!(infra(api(422, "invalid")), Code::Internal);
    }

    #[test]
    fn status_carries_the_message() {
        let status: Status = Error::NotFound("volume pvc-1 not found".into()).into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "volume pvc-1 not found");
        let status: Status = Error::infra("deleting DataVolume pvc-1")(api(500, "boom")).into();
        assert!(status.message().starts_with("deleting DataVolume pvc-1: "));
    }
}
