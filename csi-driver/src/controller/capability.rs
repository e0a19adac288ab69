//! Volume capabilities and the other request fields every RPC validates the
//! same way: what a set of `VolumeCapability` asks for (block or filesystem,
//! single- or multi-node), the disk bus, object names and node ids. Pure.

use kubevirt_csi_proto::v1::VolumeCapability;
use kubevirt_csi_proto::v1::volume_capability::{AccessType, access_mode::Mode};

use crate::error::{Error, Result};

/// Filesystems the node service can create and mount.
pub const SUPPORTED_FS_TYPES: &[&str] = &["", "ext4", "ext3", "ext2", "xfs"];

/// What the capabilities of a request ask of a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Raw block (else a mounted filesystem).
    pub block: bool,
    /// Published to several nodes at once.
    pub multi_node: bool,
}

/// Check one capability: it names an access type and a known access mode.
pub fn check_capability(cap: &VolumeCapability) -> Result<Access> {
    let block = match &cap.access_type {
        Some(AccessType::Block(_)) => true,
        Some(AccessType::Mount(m)) => {
            if !SUPPORTED_FS_TYPES.contains(&m.fs_type.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "filesystem type {:?} is not supported (ext2, ext3, ext4, xfs)",
                    m.fs_type
                )));
            }
            false
        }
        None => {
            return Err(Error::InvalidArgument(
                "volume capability names no access type (block or mount)".into(),
            ));
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("volume capability has no access mode".into()))?;
    let multi_node = match Mode::try_from(mode.mode) {
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => false,
        Ok(
            Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter,
        ) => true,
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "access mode {} is not supported",
                mode.mode
            )));
        }
    };
    Ok(Access { block, multi_node })
}

/// Check a request's capabilities and combine them. Mixed block and
/// filesystem capabilities are refused: one volume cannot be both.
pub fn access_of(caps: &[VolumeCapability]) -> Result<Access> {
    if caps.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    let mut out: Option<Access> = None;
    for cap in caps {
        let a = check_capability(cap)?;
        out = Some(match out {
            None => a,
            Some(prev) if prev.block != a.block => {
                return Err(Error::InvalidArgument(
                    "volume_capabilities mix block and mount access".into(),
                ));
            }
            Some(prev) => Access {
                block: prev.block,
                multi_node: prev.multi_node || a.multi_node,
            },
        });
    }
    Ok(out.unwrap_or_default())
}

/// Refuse what KubeVirt cannot do: a filesystem shared by several nodes.
pub fn check_supported(access: Access) -> Result<()> {
    if access.multi_node && !access.block {
        return Err(Error::InvalidArgument(
            "multi-node access is only supported for block volumes".into(),
        ));
    }
    Ok(())
}

pub use crate::bus::Bus;

/// The disk bus a request names (absent: SCSI).
pub fn bus(v: Option<&str>) -> Result<Bus> {
    Bus::parse(v).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Require a non-empty field.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// Split a node id `<infra-namespace>/<vm-name>`. Any other id names no
/// VM, so no node: `NotFound`, as the spec asks for a node that does not
/// exist.
pub fn parse_node_id(node_id: &str) -> Result<(&str, &str)> {
    match node_id.split_once('/') {
        Some((ns, vm)) if is_object_name(ns) && is_object_name(vm) && !vm.contains('/') => {
            Ok((ns, vm))
        }
        _ => Err(Error::NotFound(format!(
            "node {node_id:?} not found: node ids are <infra-namespace>/<vm-name>"
        ))),
    }
}

/// The node id of a VM.
pub fn node_id(namespace: &str, vm: &str) -> String {
    format!("{namespace}/{vm}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kubevirt_csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    pub fn cap(block: bool, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn combines_and_validates_capabilities() {
        assert_eq!(
            access_of(&[cap(false, Mode::SingleNodeWriter)]).expect("valid"),
            Access {
                block: false,
                multi_node: false
            }
        );
        assert_eq!(
            access_of(&[
                cap(true, Mode::SingleNodeWriter),
                cap(true, Mode::MultiNodeMultiWriter)
            ])
            .expect("valid"),
            Access {
                block: true,
                multi_node: true
            }
        );
        assert!(access_of(&[]).is_err());
        assert!(
            access_of(&[
                cap(true, Mode::SingleNodeWriter),
                cap(false, Mode::SingleNodeWriter)
            ])
            .is_err()
        );
        assert!(access_of(&[cap(true, Mode::Unknown)]).is_err());
        assert!(access_of(&[VolumeCapability::default()]).is_err());
        let mut xfs = cap(false, Mode::SingleNodeWriter);
        xfs.access_type = Some(AccessType::Mount(MountVolume {
            fs_type: "zfs".into(),
            ..Default::default()
        }));
        assert!(access_of(&[xfs]).is_err());
        assert!(
            check_supported(Access {
                block: false,
                multi_node: true
            })
            .is_err()
        );
        assert!(
            check_supported(Access {
                block: true,
                multi_node: true
            })
            .is_ok()
        );
    }

    #[test]
    fn parses_bus_names_and_node_ids() {
        assert_eq!(bus(None).expect("default"), Bus::Scsi);
        assert_eq!(bus(Some("virtio")).expect("virtio"), Bus::Virtio);
        assert!(matches!(bus(Some("ide")), Err(Error::InvalidArgument(_))));
        assert_eq!(
            parse_node_id("infra/vm-1").expect("valid"),
            ("infra", "vm-1")
        );
        assert!(matches!(parse_node_id("vm-1"), Err(Error::NotFound(_))));
        assert!(parse_node_id("a/b/c").is_err());
        assert!(parse_node_id("/vm").is_err());
        assert!(is_object_name("pvc-1.x"));
        assert!(!is_object_name("PVC"));
        assert!(!is_object_name("a-"));
    }
}
