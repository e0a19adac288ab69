//! Usage and health of a published or staged volume: `statvfs` bytes and
//! inodes for a filesystem, the device size for a raw block volume, and a
//! [`VolumeCondition`] that turns abnormal when the disk is gone from the VM
//! or the filesystem went read-only behind the workload's back.
//! [`assess`] is the pure decision; [`volume_stats`] gathers the facts.

use std::path::Path;

use kubevirt_csi_proto::v1::{VolumeCondition, VolumeUsage, volume_usage::Unit};
use nix::sys::statvfs::statvfs;

use super::blockdev::{self, DevNum};
use super::error::NodeError;
use super::mountinfo::{self, MountInfo};

/// What [`assess`] needs to know about a volume.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub device: DevNum,
    /// The kernel still has the device.
    pub device_present: bool,
    /// Per-mount read-only (None for a raw block volume).
    pub mount_read_only: Option<bool>,
    /// Filesystem (superblock) read-only.
    pub fs_read_only: bool,
    /// What the last NodePublishVolume asked for, if this process served it.
    pub published_read_only: Option<bool>,
}

/// Decides whether the volume is healthy, and says why not.
pub fn assess(facts: &Facts) -> VolumeCondition {
    let problem = if !facts.device_present {
        Some(format!(
            "block device {} backing the volume is gone from the node (disk detached from the VM?)",
            facts.device
        ))
    } else if facts.fs_read_only && facts.mount_read_only == Some(false) {
        Some(format!(
            "filesystem on {} was switched read-only by the kernel (I/O or filesystem errors; see the guest's kernel log)",
            facts.device
        ))
    } else if facts.published_read_only == Some(false) && facts.mount_read_only == Some(true) {
        Some(format!(
            "volume was published read-write but is mounted read-only (device {})",
            facts.device
        ))
    } else {
        None
    };
    match problem {
        Some(message) => VolumeCondition {
            abnormal: true,
            message,
        },
        None => VolumeCondition {
            abnormal: false,
            message: "volume is healthy".to_owned(),
        },
    }
}

/// Usage and condition of the volume at `path`.
pub struct VolumeStats {
    pub usage: Vec<VolumeUsage>,
    pub condition: VolumeCondition,
}

/// Gathers usage and condition for `path` (a mount point, or a file with a
/// block device bind-mounted onto it).
pub fn volume_stats(
    path: &Path,
    sysfs_dir: &Path,
    published_read_only: Option<bool>,
) -> Result<VolumeStats, NodeError> {
    if !path.exists() {
        return Err(NodeError::PathNotFound(path.to_path_buf()));
    }
    if let Some(device) = blockdev::devnum(path)? {
        return Ok(block_stats(path, device, sysfs_dir));
    }
    let mount =
        mountinfo::top_mount_at(path)?.ok_or_else(|| NodeError::NotMounted(path.to_path_buf()))?;
    let usage = filesystem_usage(path)?;
    let condition = assess(&mount_facts(&mount, sysfs_dir, published_read_only));
    Ok(VolumeStats { usage, condition })
}

fn block_stats(path: &Path, device: DevNum, sysfs_dir: &Path) -> VolumeStats {
    let present = blockdev::present(sysfs_dir, device);
    let facts = Facts {
        device,
        device_present: present,
        mount_read_only: None,
        fs_read_only: false,
        published_read_only: None,
    };
    let mut condition = assess(&facts);
    let usage = match blockdev::size_bytes(path) {
        Ok(size) => vec![VolumeUsage {
            total: i64::try_from(size).unwrap_or(i64::MAX),
            unit: Unit::Bytes.into(),
            ..Default::default()
        }],
        Err(err) => {
            if !condition.abnormal {
                condition = VolumeCondition {
                    abnormal: true,
                    message: format!("cannot read the device size: {err}"),
                };
            }
            Vec::new()
        }
    };
    VolumeStats { usage, condition }
}

/// The condition facts of a mounted filesystem.
pub fn mount_facts(
    mount: &MountInfo,
    sysfs_dir: &Path,
    published_read_only: Option<bool>,
) -> Facts {
    let device = DevNum {
        major: mount.major,
        minor: mount.minor,
    };
    Facts {
        device,
        device_present: blockdev::present(sysfs_dir, device),
        mount_read_only: Some(mount.read_only()),
        fs_read_only: mount.super_read_only(),
        published_read_only,
    }
}

fn filesystem_usage(path: &Path) -> Result<Vec<VolumeUsage>, NodeError> {
    let st = statvfs(path).map_err(NodeError::sys("statvfs", path))?;
    let frsize = st.fragment_size();
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(frsize)).unwrap_or(i64::MAX);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let (blocks, bfree, bavail) = (st.blocks(), st.blocks_free(), st.blocks_available());
    let (files, ffree) = (st.files(), st.files_free());
    Ok(vec![
        VolumeUsage {
            available: bytes(bavail),
            total: bytes(blocks),
            used: bytes(blocks.saturating_sub(bfree)),
            unit: Unit::Bytes.into(),
        },
        VolumeUsage {
            available: count(ffree),
            total: count(files),
            used: count(files.saturating_sub(ffree)),
            unit: Unit::Inodes.into(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            device: DevNum {
                major: 8,
                minor: 16,
            },
            device_present: true,
            mount_read_only: Some(false),
            fs_read_only: false,
            published_read_only: Some(false),
        }
    }

    #[test]
    fn healthy_volume_is_normal() {
        assert!(!assess(&healthy()).abnormal);
        let ro_publish = Facts {
            mount_read_only: Some(true),
            published_read_only: Some(true),
            ..healthy()
        };
        assert!(!assess(&ro_publish).abnormal);
        let read_only_stage = Facts {
            mount_read_only: Some(true),
            fs_read_only: true,
            published_read_only: None,
            ..healthy()
        };
        assert!(!assess(&read_only_stage).abnormal);
    }

    #[test]
    fn missing_device_is_abnormal() {
        let c = assess(&Facts {
            device_present: false,
            ..healthy()
        });
        assert!(c.abnormal);
        assert!(
            c.message.contains("8:16") && c.message.contains("gone"),
            "{}",
            c.message
        );
    }

    #[test]
    fn kernel_read_only_filesystem_is_abnormal() {
        let c = assess(&Facts {
            fs_read_only: true,
            ..healthy()
        });
        assert!(c.abnormal);
        assert!(
            c.message.contains("read-only by the kernel"),
            "{}",
            c.message
        );
    }

    #[test]
    fn read_only_mount_of_a_read_write_publish_is_abnormal() {
        let c = assess(&Facts {
            mount_read_only: Some(true),
            ..healthy()
        });
        assert!(c.abnormal);
        assert!(c.message.contains("published read-write"), "{}", c.message);
    }
}
