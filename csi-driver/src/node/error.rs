//! The one error type of the CSI Node service, [`NodeError`], and its single
//! mapping to a gRPC [`Status`]: every variant carries the code the CSI spec
//! names for that situation, tool failures carry the tool's stderr, and
//! nothing ever reaches the caller as `Unknown`.

use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};

/// Everything that can go wrong while serving a Node RPC.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A field the RPC requires is empty or absent.
    #[error("missing required field {0}")]
    MissingField(&'static str),

    /// A field is present but its value cannot be served.
    #[error("{0}")]
    InvalidArgument(String),

    /// `fs_type` names a filesystem this driver does not create or mount.
    #[error("unsupported fs_type {0:?}: supported are ext4 (default), ext3, ext2 and xfs")]
    UnsupportedFsType(String),

    /// A path named in the request does not exist.
    #[error("path {} does not exist", .0.display())]
    PathNotFound(PathBuf),

    /// A path exists but no volume is mounted there.
    #[error("no volume is mounted at {}", .0.display())]
    NotMounted(PathBuf),

    /// The hotplugged disk never showed up in the guest.
    #[error(
        "no disk with serial {serial:?} appeared under {} (or in sysfs) within {waited:?}; is the volume attached to this VM?",
        dir.display()
    )]
    DeviceNotFound {
        serial: String,
        dir: PathBuf,
        waited: Duration,
    },

    /// The path already holds this volume's mount in an incompatible way, or
    /// another device's mount.
    #[error("{} is already in use: {reason}", path.display())]
    AlreadyInUse { path: PathBuf, reason: String },

    /// The device holds something other than a filesystem we may mount
    /// (a partition table, LVM, swap, ...); it is never formatted.
    #[error("device {} holds {found}; refusing to format or mount it", device.display())]
    ForeignData { device: PathBuf, found: String },

    /// The device holds a filesystem of another type than requested.
    #[error("device {} holds a {found} filesystem but fs_type {requested} was requested", device.display())]
    FsTypeMismatch {
        device: PathBuf,
        found: String,
        requested: String,
    },

    /// A blank device cannot be formatted for a read-only access mode.
    #[error("device {} has no filesystem and the volume is read-only; refusing to format it", .0.display())]
    ReadOnlyBlank(PathBuf),

    /// The filesystem type cannot be grown online by this driver.
    #[error("cannot grow a {0} filesystem online")]
    UnsupportedResize(String),

    /// The device is still smaller than the requested capacity.
    #[error("device {} is {size} bytes, less than the required {required} bytes; the disk has not grown yet", device.display())]
    CapacityTooSmall {
        device: PathBuf,
        size: u64,
        required: u64,
    },

    /// Another RPC for the same volume is still running.
    #[error("an operation on volume {0} is already in progress")]
    InProgress(String),

    /// No device node for the block device behind a mount could be found.
    #[error("no device node for block device {dev} under {}", dir.display())]
    DeviceNodeMissing { dev: String, dir: PathBuf },

    /// The task running an operation panicked or was cancelled.
    #[error("operation failed: {0}")]
    TaskFailed(String),

    /// An external tool (mkfs, blkid, resize2fs, ...) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },

    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// A filesystem operation of the standard library failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    /// Wraps an `std::io::Error` with the operation and path it concerns.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// Wraps a `nix` errno with the operation and path it concerns.
    pub(crate) fn sys(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::Error) -> Self {
        let path = path.into();
        move |source| Self::Sys { op, path, source }
    }

    /// The gRPC code the CSI spec assigns to this failure.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingField(_) | Self::InvalidArgument(_) | Self::UnsupportedFsType(_) => {
                Code::InvalidArgument
            }
            Self::PathNotFound(_)
            | Self::DeviceNotFound { .. }
            | Self::DeviceNodeMissing { .. } => Code::NotFound,
            Self::AlreadyInUse { .. } => Code::AlreadyExists,
            Self::NotMounted(_)
            | Self::ForeignData { .. }
            | Self::FsTypeMismatch { .. }
            | Self::ReadOnlyBlank(_)
            | Self::UnsupportedResize(_) => Code::FailedPrecondition,
            Self::CapacityTooSmall { .. } => Code::OutOfRange,
            Self::InProgress(_) => Code::Aborted,
            Self::Tool { .. } | Self::Sys { .. } | Self::Io { .. } | Self::TaskFailed(_) => {
                Code::Internal
            }
        }
    }
}

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        Status::new(err.code(), crate::error::bounded_message(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let cases = [
            (NodeError::MissingField("volume_id"), Code::InvalidArgument),
            (
                NodeError::UnsupportedFsType("btrfs".into()),
                Code::InvalidArgument,
            ),
            (NodeError::PathNotFound("/x".into()), Code::NotFound),
            (
                NodeError::AlreadyInUse {
                    path: "/x".into(),
                    reason: "other device".into(),
                },
                Code::AlreadyExists,
            ),
            (NodeError::InProgress("pvc-1".into()), Code::Aborted),
            (
                NodeError::Tool {
                    command: "mkfs.xfs /dev/sdb".into(),
                    status: "exit status: 1".into(),
                    stderr: "boom".into(),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
        }
    }

    #[test]
    fn tool_failures_carry_stderr() {
        let status = Status::from(NodeError::Tool {
            command: "resize2fs /dev/sdb".into(),
            status: "exit status: 1".into(),
            stderr: "Bad magic number".into(),
        });
        assert!(
            status.message().contains("Bad magic number"),
            "{}",
            status.message()
        );
    }
}
