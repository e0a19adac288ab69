//! Pure validation of Node RPC requests: each `*_request` function checks
//! the fields the spec requires (InvalidArgument naming the field) and turns
//! the request into what the handler acts on, before any side effect.

use std::collections::HashMap;
use std::path::PathBuf;

use kubevirt_csi_proto::v1::{
    NodePublishVolumeRequest, NodeStageVolumeRequest, VolumeCapability,
    volume_capability::{AccessType, access_mode::Mode},
};

use super::device::{Bus, DiskId};
use super::error::NodeError;
use super::format::Filesystem;
use super::mount::MountOptions;

/// `volume_context` / `publish_context` key of the disk serial.
pub const SERIAL_KEY: &str = "serial";
/// `volume_context` / `publish_context` key of the disk bus.
pub const BUS_KEY: &str = "bus";
/// publish_context key: the controller attached the disk read-only.
pub const READONLY_KEY: &str = "readonly";

/// How the volume is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount {
        fs: Filesystem,
        /// `fs_type` was given (an existing filesystem must then match it).
        explicit_fs: bool,
        options: MountOptions,
    },
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub access: Access,
    pub disk: DiskId,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub access: Access,
    /// Needed only for a block volume (its device is bind-mounted directly).
    pub disk: Option<DiskId>,
    pub read_only: bool,
}

pub fn required<'a>(value: &'a str, field: &'static str) -> Result<&'a str, NodeError> {
    if value.is_empty() {
        Err(NodeError::MissingField(field))
    } else {
        Ok(value)
    }
}

pub fn required_path(value: &str, field: &'static str) -> Result<PathBuf, NodeError> {
    let path = PathBuf::from(required(value, field)?);
    if !path.is_absolute() {
        return Err(NodeError::InvalidArgument(format!(
            "{field} {value:?} is not an absolute path"
        )));
    }
    Ok(path)
}

/// The `volume_path` of NodeGetVolumeStats and NodeExpandVolume. A path
/// that is not absolute holds no volume: NotFound, as for any path with no
/// volume at it.
pub fn volume_path(value: &str) -> Result<PathBuf, NodeError> {
    let path = PathBuf::from(required(value, "volume_path")?);
    if !path.is_absolute() {
        return Err(NodeError::PathNotFound(path));
    }
    Ok(path)
}

fn access(
    capability: Option<&VolumeCapability>,
    field: &'static str,
) -> Result<(Access, bool), NodeError> {
    let capability = capability.ok_or(NodeError::MissingField(field))?;
    let reader_only = capability.access_mode.as_ref().is_some_and(|m| {
        matches!(
            m.mode(),
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    });
    let access = match capability.access_type.as_ref() {
        None => return Err(NodeError::MissingField("volume_capability.access_type")),
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(mount)) => Access::Mount {
            fs: Filesystem::parse(&mount.fs_type)?,
            explicit_fs: !mount.fs_type.is_empty(),
            options: MountOptions::parse(&mount.mount_flags),
        },
    };
    Ok((access, reader_only))
}

/// The disk named by `volume_context`, else `publish_context`.
fn disk(
    volume_context: &HashMap<String, String>,
    publish_context: &HashMap<String, String>,
) -> Result<DiskId, NodeError> {
    let lookup = |key: &str| {
        volume_context
            .get(key)
            .or_else(|| publish_context.get(key))
            .filter(|v| !v.is_empty())
    };
    let serial = lookup(SERIAL_KEY).ok_or(NodeError::MissingField("volume_context.serial"))?;
    let bus = lookup(BUS_KEY)
        .map(|b| Bus::parse(Some(b)))
        .transpose()
        .map_err(|e| NodeError::InvalidArgument(format!("volume_context: {e}")))?;
    Ok(DiskId::new(serial, bus))
}

pub fn stage_request(req: &NodeStageVolumeRequest) -> Result<Stage, NodeError> {
    let volume_id = required(&req.volume_id, "volume_id")?.to_owned();
    let staging_path = required_path(&req.staging_target_path, "staging_target_path")?;
    let (access, reader_only) = access(req.volume_capability.as_ref(), "volume_capability")?;
    let disk = disk(&req.volume_context, &req.publish_context)?;
    // A disk attached read-only can only be staged read-only.
    let attached_read_only =
        req.publish_context.get(READONLY_KEY).map(String::as_str) == Some("true");
    let read_only = reader_only
        || attached_read_only
        || matches!(&access, Access::Mount { options, .. } if options.read_only());
    Ok(Stage {
        volume_id,
        staging_path,
        access,
        disk,
        read_only,
    })
}

pub fn publish_request(req: &NodePublishVolumeRequest) -> Result<Publish, NodeError> {
    let volume_id = required(&req.volume_id, "volume_id")?.to_owned();
    let target_path = required_path(&req.target_path, "target_path")?;
    // We advertise STAGE_UNSTAGE_VOLUME, so the CO must pass the staging path.
    let staging_path = required_path(&req.staging_target_path, "staging_target_path")?;
    let (mut access, reader_only) = access(req.volume_capability.as_ref(), "volume_capability")?;
    let disk = match access {
        Access::Block => Some(disk(&req.volume_context, &req.publish_context)?),
        Access::Mount { .. } => None,
    };
    let read_only = req.readonly || reader_only;
    if let Access::Mount { options, .. } = &mut access
        && read_only
    {
        options.add("ro");
    }
    let read_only =
        read_only || matches!(&access, Access::Mount { options, .. } if options.read_only());
    Ok(Publish {
        volume_id,
        staging_path,
        target_path,
        access,
        disk,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use kubevirt_csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use tonic::Code;

    use super::*;

    fn mount_cap(fs_type: &str, flags: &[&str]) -> Option<VolumeCapability> {
        Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs_type.into(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter.into(),
            }),
        })
    }

    fn stage() -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: "/var/lib/kubelet/plugins/x/globalmount".into(),
            volume_capability: mount_cap("xfs", &["noatime"]),
            volume_context: HashMap::from([("serial".into(), "abc".into())]),
            ..Default::default()
        }
    }

    fn code(r: Result<Stage, NodeError>) -> Option<Code> {
        r.err().map(|e| e.code())
    }

    #[test]
    fn stage_validates_required_fields() {
        let ok = stage_request(&stage()).expect("valid");
        assert_eq!(ok.volume_id, "pvc-1");
        assert!(!ok.read_only);
        assert!(matches!(
            ok.access,
            Access::Mount {
                fs: Filesystem::Xfs,
                explicit_fs: true,
                ..
            }
        ));

        for broken in [
            NodeStageVolumeRequest {
                volume_id: String::new(),
                ..stage()
            },
            NodeStageVolumeRequest {
                staging_target_path: String::new(),
                ..stage()
            },
            NodeStageVolumeRequest {
                staging_target_path: "relative/path".into(),
                ..stage()
            },
            NodeStageVolumeRequest {
                volume_capability: None,
                ..stage()
            },
            NodeStageVolumeRequest {
                volume_capability: Some(VolumeCapability {
                    access_type: None,
                    access_mode: None,
                }),
                ..stage()
            },
            NodeStageVolumeRequest {
                volume_context: HashMap::new(),
                ..stage()
            },
            NodeStageVolumeRequest {
                volume_capability: mount_cap("zfs", &[]),
                ..stage()
            },
        ] {
            assert_eq!(
                code(stage_request(&broken)),
                Some(Code::InvalidArgument),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn a_disk_attached_read_only_is_staged_read_only() {
        let req = NodeStageVolumeRequest {
            publish_context: HashMap::from([(READONLY_KEY.to_owned(), "true".to_owned())]),
            ..stage()
        };
        assert!(stage_request(&req).expect("valid").read_only);
    }

    #[test]
    fn serial_may_come_from_the_publish_context() {
        let req = NodeStageVolumeRequest {
            volume_context: HashMap::new(),
            publish_context: HashMap::from([
                ("serial".into(), "s1".into()),
                ("bus".into(), "virtio".into()),
            ]),
            ..stage()
        };
        let parsed = stage_request(&req).expect("valid");
        assert_eq!(parsed.disk.serial(), "s1");
        assert!(parsed.disk.matches_link("virtio-s1"));
        assert!(!parsed.disk.matches_link("scsi-0QEMU_QEMU_HARDDISK_s1"));
    }

    #[test]
    fn reader_only_access_modes_are_read_only() {
        let mut req = stage();
        if let Some(cap) = req.volume_capability.as_mut() {
            cap.access_mode = Some(AccessMode {
                mode: Mode::MultiNodeReaderOnly.into(),
            });
        }
        assert!(stage_request(&req).expect("valid").read_only);
    }

    #[test]
    fn publish_readonly_adds_ro_to_the_mount_options() {
        let req = NodePublishVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: "/staging".into(),
            target_path: "/target".into(),
            volume_capability: mount_cap("", &["nodev"]),
            readonly: true,
            volume_context: HashMap::from([("serial".into(), "abc".into())]),
            ..Default::default()
        };
        let parsed = publish_request(&req).expect("valid");
        assert!(parsed.read_only);
        match parsed.access {
            Access::Mount {
                options,
                explicit_fs,
                fs,
            } => {
                assert!(options.read_only());
                assert!(!explicit_fs);
                assert_eq!(fs, Filesystem::Ext4);
            }
            Access::Block => panic!("expected a mount volume"),
        }
        let block = NodePublishVolumeRequest {
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Block(BlockVolume {})),
                access_mode: None,
            }),
            staging_target_path: String::new(),
            ..req
        };
        assert_eq!(
            publish_request(&block).err().map(|e| e.to_string()),
            Some("missing required field staging_target_path".to_owned())
        );
    }

    #[test]
    fn unknown_bus_is_invalid_argument() {
        let ctx = HashMap::from([
            (SERIAL_KEY.to_owned(), "abc".to_owned()),
            (BUS_KEY.to_owned(), "ide".to_owned()),
        ]);
        let err = disk(&ctx, &HashMap::new()).expect_err("ide is no bus of ours");
        assert_eq!(err.code(), Code::InvalidArgument);
        let ctx = HashMap::from([(SERIAL_KEY.to_owned(), "abc".to_owned())]);
        assert!(disk(&ctx, &HashMap::new()).is_ok(), "no bus: any naming");
    }

    #[test]
    fn a_volume_path_that_cannot_exist_is_not_found() {
        assert_eq!(
            volume_path("").expect_err("required").code(),
            Code::InvalidArgument
        );
        assert_eq!(
            volume_path("some/path").expect_err("relative").code(),
            Code::NotFound
        );
        assert!(volume_path("/var/lib/kubelet/pods/x").is_ok());
    }
}
