//! Finds the hotplugged disk of a volume inside the guest by the serial
//! KubeVirt gave it (the infra DataVolume's uid, passed in `volume_context`).
//!
//! udev names disks under `<device_dir>/disk/by-id/`: SCSI disks keep the
//! full serial (`scsi-0QEMU_QEMU_HARDDISK_<serial>`), virtio-blk truncates it
//! to 20 characters (`virtio-<serial[..20]>`) and SATA names them
//! `ata-QEMU_HARDDISK_<serial>` (ATA serials are 20 characters as well).
//! When udev has not (yet) made a link, sysfs is asked directly
//! (`block/*/serial`, `block/*/device/vpd_pg80`, `block/*/device/wwid`).
//! A disk that is not there yet is waited for with inotify on the device
//! directories, never by polling.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

pub use crate::bus::Bus;

use super::error::NodeError;

/// Longest serial virtio-blk (and ATA) exposes to the guest.
const SHORT_SERIAL: usize = 20;

/// The names and sysfs values under which a disk with `serial` may appear.
#[derive(Debug, Clone)]
pub struct DiskId {
    serial: String,
    short: String,
    bus: Option<Bus>,
}

impl DiskId {
    /// `bus == None` accepts every bus's naming.
    pub fn new(serial: &str, bus: Option<Bus>) -> Self {
        let short = serial.chars().take(SHORT_SERIAL).collect();
        Self {
            serial: serial.to_owned(),
            short,
            bus,
        }
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    fn allows(&self, bus: Bus) -> bool {
        self.bus.is_none_or(|b| b == bus)
    }

    /// Does the `/dev/disk/by-id` entry `name` name this disk?
    pub fn matches_link(&self, name: &str) -> bool {
        if is_partition(name) {
            return false;
        }
        let scsi = self.allows(Bus::Scsi)
            && name.strip_prefix("scsi-").is_some_and(|rest| {
                rest == format!("0QEMU_QEMU_HARDDISK_{}", self.serial)
                    || rest.ends_with(&format!("_{}", self.serial))
            });
        let virtio = self.allows(Bus::Virtio)
            && name
                .strip_prefix("virtio-")
                .is_some_and(|rest| rest == self.short || rest == self.serial);
        let sata = self.allows(Bus::Sata)
            && name.strip_prefix("ata-").is_some_and(|rest| {
                rest.ends_with(&format!("_{}", self.short))
                    || rest.ends_with(&format!("_{}", self.serial))
            });
        scsi || virtio || sata
    }

    /// Does a serial read from sysfs (`serial`, `vpd_pg80`, the last word of
    /// `wwid`) name this disk? Truncated forms count only for virtio/SATA.
    pub fn matches_serial(&self, found: &str) -> bool {
        let found = found.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if found.is_empty() {
            return false;
        }
        found == self.serial
            || (found == self.short && (self.allows(Bus::Virtio) || self.allows(Bus::Sata)))
    }
}

/// The serial inside a SCSI "Unit Serial Number" VPD page (0x80): a 4-byte
/// header whose last two bytes are the length, then the ASCII serial.
pub fn vpd_pg80_serial(page: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*page.get(2)?, *page.get(3)?]));
    let serial = page.get(4..4 + len).or_else(|| page.get(4..))?;
    Some(
        String::from_utf8_lossy(serial)
            .trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .to_owned(),
    )
}

/// Finds disks under a device directory and sysfs.
#[derive(Debug, Clone)]
pub struct DeviceLocator {
    device_dir: PathBuf,
    sysfs_dir: PathBuf,
}

impl DeviceLocator {
    pub fn new(device_dir: impl Into<PathBuf>, sysfs_dir: impl Into<PathBuf>) -> Self {
        Self {
            device_dir: device_dir.into(),
            sysfs_dir: sysfs_dir.into(),
        }
    }

    fn by_id_dir(&self) -> PathBuf {
        self.device_dir.join("disk/by-id")
    }

    /// One look for the disk; `None` when it is not there (yet).
    pub fn find(&self, id: &DiskId) -> Result<Option<PathBuf>, NodeError> {
        if let Some(dev) = self.find_by_id(id)? {
            return Ok(Some(dev));
        }
        Ok(self.find_in_sysfs(id))
    }

    fn find_by_id(&self, id: &DiskId) -> Result<Option<PathBuf>, NodeError> {
        let dir = self.by_id_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(NodeError::io("read directory", dir)(err)),
        };
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|name| name.to_str().is_some_and(|n| id.matches_link(n)))
            .collect();
        names.sort();
        // Links may be relative (udev: ../../sdb) or absolute; a link whose
        // target is not (yet) a block device is a udev race, not a match.
        Ok(names
            .into_iter()
            .filter_map(|name| std::fs::canonicalize(dir.join(name)).ok())
            .find(|dev| is_block_device(dev)))
    }

    fn find_in_sysfs(&self, id: &DiskId) -> Option<PathBuf> {
        let entries = std::fs::read_dir(self.sysfs_dir.join("block")).ok()?;
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        names.into_iter().find_map(|name| {
            let block = self.sysfs_dir.join("block").join(&name);
            let serial = std::fs::read_to_string(block.join("serial")).ok();
            let vpd = std::fs::read(block.join("device/vpd_pg80"))
                .ok()
                .and_then(|p| vpd_pg80_serial(&p));
            let wwid = std::fs::read_to_string(block.join("device/wwid"))
                .ok()
                .and_then(|w| w.split_whitespace().last().map(str::to_owned));
            let found = [serial, vpd, wwid]
                .into_iter()
                .flatten()
                .any(|s| id.matches_serial(&s));
            let dev = self.device_dir.join(&name);
            (found && is_block_device(&dev)).then_some(dev)
        })
    }

    /// Waits up to `timeout` for the disk to appear. The watch is set up
    /// before each look, so a link created between the look and the wait
    /// still wakes us.
    pub async fn wait_for(&self, id: &DiskId, timeout: Duration) -> Result<PathBuf, NodeError> {
        let deadline = Instant::now() + timeout;
        let watcher = DirWatcher::new()?;
        loop {
            // (Re-)watch every level that exists: udev may create disk/ and
            // disk/by-id/ themselves with the first disk that has an id.
            for dir in [
                self.device_dir.clone(),
                self.device_dir.join("disk"),
                self.by_id_dir(),
            ] {
                watcher.watch(&dir);
            }
            if let Some(dev) = self.find(id)? {
                return Ok(dev);
            }
            if tokio::time::timeout_at(deadline, watcher.changed())
                .await
                .is_err()
            {
                return Err(NodeError::DeviceNotFound {
                    serial: id.serial().to_owned(),
                    dir: self.by_id_dir(),
                    waited: timeout,
                });
            }
        }
    }
}

/// `...-part3`: a partition of a disk, never the disk itself.
fn is_partition(name: &str) -> bool {
    name.rsplit_once("-part")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// An inotify instance registered with tokio's reactor.
struct DirWatcher {
    fd: AsyncFd<InotifyFd>,
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatcher {
    fn new() -> Result<Self, NodeError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(NodeError::sys("inotify_init", "/"))?;
        // SAFETY: `InotifyFd` owns the inotify descriptor (nix keeps it in an
        // OwnedFd) and only ever hands out that same descriptor; it is neither
        // closed nor replaced while the AsyncFd, which owns the InotifyFd,
        // exists, so it stays valid and unchanged for the registration.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(|err| NodeError::io("register inotify", "/")(err.into()))?;
        Ok(Self { fd })
    }

    /// Watches `dir` for new or renamed-in entries; a directory that does not
    /// exist yet is skipped (its parent's watch reports its creation).
    fn watch(&self, dir: &Path) {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_ONLYDIR;
        if let Err(err) = self.fd.get_ref().0.add_watch(dir, mask)
            && err != Errno::ENOENT
            && err != Errno::ENOTDIR
        {
            tracing::debug!(dir = %dir.display(), %err, "cannot watch directory");
        }
    }

    /// Resolves once at least one event arrived since the last call.
    async fn changed(&self) -> Result<(), NodeError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(NodeError::io("wait for inotify", "/"))?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(err) => return Err(NodeError::sys("read inotify events", "/")(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f9c2d1e-8b7a-4c6d-9e0f-123456789abc";

    #[test]
    fn scsi_links_carry_the_full_serial() {
        let id = DiskId::new(UID, Some(Bus::Scsi));
        assert!(id.matches_link(&format!("scsi-0QEMU_QEMU_HARDDISK_{UID}")));
        assert!(id.matches_link(&format!("scsi-SQEMU_QEMU_HARDDISK_{UID}")));
        assert!(!id.matches_link(&format!("scsi-0QEMU_QEMU_HARDDISK_{UID}-part1")));
        assert!(!id.matches_link("scsi-0QEMU_QEMU_HARDDISK_3f9c2d1e-8b7a-4c6d-9"));
        assert!(
            !id.matches_link("virtio-3f9c2d1e-8b7a-4c6d-9"),
            "bus scsi only accepts scsi names"
        );
    }

    #[test]
    fn virtio_links_carry_twenty_characters() {
        let id = DiskId::new(UID, Some(Bus::Virtio));
        assert!(id.matches_link("virtio-3f9c2d1e-8b7a-4c6d-9"));
        assert!(!id.matches_link("virtio-3f9c2d1e-8b7a-4c6d-"));
        let short = DiskId::new("disk1", None);
        assert!(short.matches_link("virtio-disk1"));
        assert!(!short.matches_link("virtio-disk10"));
    }

    #[test]
    fn sata_links_and_any_bus() {
        let id = DiskId::new(UID, None);
        assert!(id.matches_link("ata-QEMU_HARDDISK_3f9c2d1e-8b7a-4c6d-9"));
        assert!(id.matches_link(&format!("ata-QEMU_HARDDISK_{UID}")));
        assert!(id.matches_link(&format!("scsi-0QEMU_QEMU_HARDDISK_{UID}")));
        assert!(!id.matches_link("wwn-0x5000c500a1b2c3d4"));
    }

    #[test]
    fn sysfs_serials() {
        let scsi = DiskId::new(UID, Some(Bus::Scsi));
        assert!(scsi.matches_serial(&format!("{UID}\n")));
        assert!(!scsi.matches_serial("3f9c2d1e-8b7a-4c6d-9"));
        assert!(!scsi.matches_serial("\n"));
        let virtio = DiskId::new(UID, Some(Bus::Virtio));
        assert!(virtio.matches_serial("3f9c2d1e-8b7a-4c6d-9\n"));
    }

    #[test]
    fn vpd_page_80_is_decoded() {
        let mut page = vec![0x00, 0x80, 0x00, 0x24];
        page.extend_from_slice(UID.as_bytes());
        assert_eq!(vpd_pg80_serial(&page).as_deref(), Some(UID));
        assert_eq!(vpd_pg80_serial(&[0, 0x80]), None);
    }
}
