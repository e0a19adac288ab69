//! [`Error`]: why the kubelet stand-in could not bring a pod's volumes up or
//! down. Every failure is retried with backoff; [`Error::event_reason`] names
//! the Event kubelet records on the pod for it (`FailedMount`,
//! `FailedAttachVolume`, ...).

use std::path::PathBuf;

/// A kubelet stand-in failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{call} of volume {volume} failed: {code:?}: {message}")]
    Csi {
        call: &'static str,
        volume: String,
        code: tonic::Code,
        message: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the record {path} is unreadable: {message}")]
    Record { path: PathBuf, message: String },
    /// The volume's attachment reports an error from the attacher.
    #[error("attaching volume {volume} failed: {message}")]
    Attach { volume: String, message: String },
    /// A claim the pod names does not exist, or is bound to something else.
    #[error("{0}")]
    Claim(String),
    /// The pod or volume can never be handled as it is (e.g. a PV of another driver).
    #[error("{0}")]
    Invalid(String),
    /// The pod's volumes are down but deleting it failed.
    #[error("{0}")]
    KillPod(String),
    #[error("registering the CSI plugin: {0}")]
    Register(#[source] crate::GuestError),
}

impl Error {
    /// Wrap a kube error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Wrap the status of a CSI call about `volume`.
    pub fn csi(call: &'static str, volume: &str) -> impl FnOnce(tonic::Status) -> Error {
        let volume = volume.to_string();
        move |s| Error::Csi {
            call,
            volume,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// Wrap an I/O error about `path`.
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

    /// The reason of the Warning Event recorded on the pod, as kubelet names it.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::Attach { .. } => "FailedAttachVolume",
            Error::Csi { call, .. } => match *call {
                "NodeUnpublishVolume" | "NodeUnstageVolume" => "FailedUnmount",
                "NodeExpandVolume" => "FileSystemResizeFailed",
                "NodeGetInfo" => "FailedRegistration",
                _ => "FailedMount",
            },
            Error::KillPod(_) => "FailedKillPod",
            Error::Register(_) => "FailedRegistration",
            _ => "FailedMount",
        }
    }
}

/// `Ok(None)` for a 404.
pub(crate) fn not_found_ok<T>(
    r: Result<T, kube::Error>,
    action: impl Into<String>,
) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube(action)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_like_kubelets() {
        let stage = Error::csi("NodeStageVolume", "pvc-1")(tonic::Status::not_found("no disk"));
        assert_eq!(stage.event_reason(), "FailedMount");
        assert!(
            stage
                .to_string()
                .contains("NodeStageVolume of volume pvc-1 failed: NotFound: no disk")
        );
        let unstage = Error::csi("NodeUnstageVolume", "pvc-1")(tonic::Status::internal("busy"));
        assert_eq!(unstage.event_reason(), "FailedUnmount");
        let attach = Error::Attach {
            volume: "pvc-1".into(),
            message: "on another node".into(),
        };
        assert_eq!(attach.event_reason(), "FailedAttachVolume");
        assert_eq!(Error::Claim("x".into()).event_reason(), "FailedMount");
    }
}
