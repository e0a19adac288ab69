//! Errors of the stand-ins: an API call, a CSI call, or an object that is not
//! (yet) in the shape a sidecar needs. Reconcilers retry all of them.

/// A stand-in failure.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{call} failed: {code:?}: {message}")]
    Csi {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot connect to the CSI socket {path}: {message}")]
    Connect { path: String, message: String },
    /// The object is not ready for this step yet (e.g. an unbound source).
    #[error("{0}")]
    NotReady(String),
    /// The object can never be handled (e.g. a PV of another driver).
    #[error("{0}")]
    Invalid(String),
}

impl GuestError {
    /// Wrap a kube error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> GuestError {
        let action = action.into();
        move |source| GuestError::Kube { action, source }
    }

    /// Wrap a CSI status.
    pub fn csi(call: &'static str) -> impl FnOnce(tonic::Status) -> GuestError {
        move |s| GuestError::Csi {
            call,
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// `Ok(None)` for a 404.
pub fn not_found_ok<T>(
    r: Result<T, kube::Error>,
    action: impl Into<String>,
) -> Result<Option<T>, GuestError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(GuestError::kube(action)(e)),
    }
}
