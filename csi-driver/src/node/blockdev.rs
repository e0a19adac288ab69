//! Facts about block devices: size (ioctl `BLKGETSIZE64`), device numbers,
//! whether the kernel still has the device (sysfs `dev/block/M:m`), which
//! device node names it, and a SCSI capacity rescan after the disk grew.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::NodeError;

mod ioctl {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t): the device size in bytes.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
}

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    pub major: u64,
    pub minor: u64,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// The size of the block device at `path`, in bytes.
pub fn size_bytes(path: &Path) -> Result<u64, NodeError> {
    let file = File::open(path).map_err(NodeError::io("open", path))?;
    let mut size: u64 = 0;
    // SAFETY: `file` is an open descriptor for the duration of the call and
    // `size` is a valid, writable u64, which is exactly what BLKGETSIZE64
    // writes; the kernel rejects descriptors that are not block devices.
    #[allow(unsafe_code)]
    let res = unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut size) };
    res.map_err(NodeError::sys("BLKGETSIZE64", path))?;
    Ok(size)
}

/// The device number of `path` if it is a block device node (following
/// symlinks and mounts, so a published block volume's file reports its disk).
pub fn devnum(path: &Path) -> Result<Option<DevNum>, NodeError> {
    let meta = std::fs::metadata(path).map_err(NodeError::io("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let rdev = meta.rdev();
    Ok(Some(DevNum {
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    }))
}

/// The kernel still knows the device (it disappears from sysfs on unplug).
pub fn present(sysfs_dir: &Path, dev: DevNum) -> bool {
    sysfs_dir.join(format!("dev/block/{dev}")).exists()
}

/// A device node for `dev`: `<device_dir>/<DEVNAME from sysfs>`, else
/// `fallback` (typically the mount source), whichever really is that device.
pub fn node_for(
    sysfs_dir: &Path,
    device_dir: &Path,
    dev: DevNum,
    fallback: Option<&Path>,
) -> Result<PathBuf, NodeError> {
    let uevent = sysfs_dir.join(format!("dev/block/{dev}/uevent"));
    let devname = std::fs::read_to_string(&uevent).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(|name| device_dir.join(name))
    });
    devname
        .into_iter()
        .chain(fallback.map(Path::to_path_buf))
        .find(|candidate| matches!(devnum(candidate), Ok(Some(d)) if d == dev))
        .ok_or_else(|| NodeError::DeviceNodeMissing {
            dev: dev.to_string(),
            dir: device_dir.to_path_buf(),
        })
}

/// Asks a SCSI disk to re-read its capacity; a no-op for other devices.
pub fn rescan(sysfs_dir: &Path, dev: DevNum) -> Result<(), NodeError> {
    let rescan = sysfs_dir.join(format!("dev/block/{dev}/device/rescan"));
    if !rescan.exists() {
        return Ok(());
    }
    std::fs::write(&rescan, "1").map_err(NodeError::io("write", rescan))
}
