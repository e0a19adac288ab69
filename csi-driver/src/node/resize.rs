//! Grows a mounted filesystem online to fill its (already grown) device:
//! `resize2fs <device>` for ext2/3/4, `xfs_growfs <mount point>` for xfs.
//! Both are no-ops when the filesystem already fills the device, so repeated
//! NodeExpandVolume calls are safe.

use std::path::Path;

use super::command;
use super::error::NodeError;
use super::format::Filesystem;

/// Grows the `fs_type` filesystem on `device`, mounted at `mount_point`.
pub async fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> Result<(), NodeError> {
    let fs =
        Filesystem::parse(fs_type).map_err(|_| NodeError::UnsupportedResize(fs_type.to_owned()))?;
    match fs {
        Filesystem::Ext2 | Filesystem::Ext3 | Filesystem::Ext4 => {
            command::run("resize2fs", [device.as_os_str()]).await?;
        }
        Filesystem::Xfs => {
            command::run("xfs_growfs", ["-d".as_ref(), mount_point.as_os_str()]).await?;
        }
    }
    Ok(())
}
