//! Guest disk emulation: a hotplugged volume that turns Ready on a VMI becomes
//! a loop device over the volume's backing file, and the guest node's
//! `<root>/<node>/dev/disk/by-id/` gets the link a QEMU disk with that serial
//! would get (`scsi-0QEMU_QEMU_HARDDISK_<serial>`, `virtio-<serial[..20]>`,
//! `ata-QEMU_HARDDISK_<serial>`), pointing at `/dev/loopN`.
//!
//! [`Devices`] is the registry of what it attached. Every change is written to
//! a state file in the root, so a later run in the same root detaches what a
//! crashed run left behind; [`Devices::detach_all`] (also run on drop) undoes
//! everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::Error;

const STATE_FILE: &str = ".lab-devices.json";

/// Where guest device trees live.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// `<root>/<node>/dev/disk/by-id/` holds the links of guest node `<node>`.
    pub root: PathBuf,
}

/// One attached disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Guest node (the VMI name).
    pub node: String,
    /// Volume name in the VMI spec.
    pub volume: String,
    /// `/dev/loopN`.
    pub loop_device: PathBuf,
    /// The volume's backing file.
    pub backing_file: PathBuf,
    /// The by-id link.
    pub link: PathBuf,
}

/// The loop devices and links this lab made.
#[derive(Debug)]
pub struct Devices {
    root: PathBuf,
    attached: Mutex<BTreeMap<(String, String), Attachment>>,
}

impl Devices {
    /// Opens the registry in `cfg.root`, first detaching whatever a previous
    /// run recorded there and did not clean up.
    pub fn open(cfg: &DeviceConfig) -> Result<Arc<Devices>, Error> {
        std::fs::create_dir_all(&cfg.root).map_err(Error::io("create directory", &cfg.root))?;
        let devices = Devices {
            root: cfg.root.clone(),
            attached: Mutex::new(BTreeMap::new()),
        };
        let stale = devices.read_state();
        for a in &stale {
            tracing::info!(device = %a.loop_device.display(), file = %a.backing_file.display(), "detaching stale loop device");
            release(a);
        }
        devices.write_state(&BTreeMap::new())?;
        Ok(Arc::new(devices))
    }

    /// The root of the guest device trees.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<node>/dev/disk/by-id`.
    pub fn by_id_dir(&self, node: &str) -> PathBuf {
        self.root.join(node).join("dev/disk/by-id")
    }

    /// Attaches `file` as the disk `volume` of guest `node` (idempotent),
    /// read-only to the guest when `read_only`.
    pub fn attach(
        &self,
        node: &str,
        volume: &str,
        bus: &str,
        serial: &str,
        file: &Path,
        read_only: bool,
    ) -> Result<Attachment, Error> {
        let mut attached = self.lock();
        let k = (node.to_string(), volume.to_string());
        if let Some(a) = attached.get(&k) {
            return Ok(a.clone());
        }
        let dir = self.by_id_dir(node);
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        let file_arg = file.to_string_lossy();
        let mut args = vec!["--find", "--show", "--direct-io=off"];
        if read_only {
            args.push("--read-only");
        }
        args.push(&file_arg);
        let out = losetup(&args)?;
        let loop_device = PathBuf::from(out.trim());
        let link = dir.join(link_name(bus, serial));
        let a = Attachment {
            node: node.to_string(),
            volume: volume.to_string(),
            loop_device: loop_device.clone(),
            backing_file: file.to_path_buf(),
            link: link.clone(),
        };
        attached.insert(k, a.clone());
        // Record before linking so a crash now still gets cleaned up.
        self.write_state(&attached)?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&loop_device, &link).map_err(Error::io("symlink", &link))?;
        tracing::info!(node, volume, read_only, device = %loop_device.display(), link = %link.display(), "disk attached");
        Ok(a)
    }

    /// Detaches the disk `volume` of guest `node`, if attached.
    pub fn detach(&self, node: &str, volume: &str) -> Result<(), Error> {
        let mut attached = self.lock();
        if let Some(a) = attached.remove(&(node.to_string(), volume.to_string())) {
            detach_one(&a)?;
            self.write_state(&attached)?;
            tracing::info!(node, volume, device = %a.loop_device.display(), "disk detached");
        }
        Ok(())
    }

    /// Detaches every disk of guest `node`.
    pub fn detach_node(&self, node: &str) -> Result<(), Error> {
        let volumes: Vec<String> = self
            .lock()
            .keys()
            .filter(|(n, _)| n == node)
            .map(|(_, v)| v.clone())
            .collect();
        volumes.iter().try_for_each(|v| self.detach(node, v))
    }

    /// Makes every loop device over `file` that is smaller than the file
    /// re-read its size (after expansion); returns the devices refreshed.
    pub fn refresh(&self, file: &Path) -> Result<Vec<PathBuf>, Error> {
        let devices: Vec<PathBuf> = self
            .lock()
            .values()
            .filter(|a| a.backing_file == file)
            .map(|a| a.loop_device.clone())
            .collect();
        if devices.is_empty() {
            return Ok(devices);
        }
        let file_size = std::fs::metadata(file)
            .map_err(Error::io("stat", file))?
            .len();
        let mut refreshed = Vec::new();
        for dev in devices {
            if device_size(&dev).is_some_and(|size| size < file_size) {
                losetup(&["-c", &dev.to_string_lossy()])?;
                tracing::info!(device = %dev.display(), size = file_size, "loop device capacity refreshed");
                refreshed.push(dev);
            }
        }
        Ok(refreshed)
    }

    /// What is attached now.
    pub fn attached(&self) -> Vec<Attachment> {
        self.lock().values().cloned().collect()
    }

    /// The disks of guest `node`.
    pub fn attached_to(&self, node: &str) -> Vec<Attachment> {
        self.lock()
            .values()
            .filter(|a| a.node == node)
            .cloned()
            .collect()
    }

    /// Detaches everything; returns the first failure after trying all.
    pub fn detach_all(&self) -> Result<(), Error> {
        let mut attached = self.lock();
        let mut first = None;
        for a in std::mem::take(&mut *attached).into_values() {
            if let Err(e) = detach_one(&a) {
                tracing::warn!(device = %a.loop_device.display(), "detach failed: {e}");
                first.get_or_insert(e);
            }
        }
        let written = self.write_state(&attached);
        first.map_or(written, Err)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Attachment>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    fn read_state(&self) -> Vec<Attachment> {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_state(&self, attached: &BTreeMap<(String, String), Attachment>) -> Result<(), Error> {
        let list: Vec<&Attachment> = attached.values().collect();
        let path = self.state_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)
            .map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!("detaching loop devices on drop: {e}");
        }
    }
}

/// The by-id link name of a disk on `bus` with `serial`, as udev names QEMU disks.
pub fn link_name(bus: &str, serial: &str) -> String {
    match bus {
        "virtio" => format!("virtio-{}", serial.chars().take(20).collect::<String>()),
        "sata" => format!("ata-QEMU_HARDDISK_{serial}"),
        _ => format!("scsi-0QEMU_QEMU_HARDDISK_{serial}"),
    }
}

fn detach_one(a: &Attachment) -> Result<(), Error> {
    if let Err(e) = std::fs::remove_file(&a.link)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Error::io("remove", &a.link)(e));
    }
    if backs(&a.loop_device, &a.backing_file) {
        losetup(&["-d", &a.loop_device.to_string_lossy()])?;
    }
    Ok(())
}

/// Best-effort cleanup of a recorded attachment from an earlier run.
fn release(a: &Attachment) {
    if let Err(e) = detach_one(a) {
        tracing::warn!(device = %a.loop_device.display(), "stale loop device not detached: {e}");
    }
}

/// Whether `/dev/loopN` is still attached to `file` (and not reused by someone else).
fn backs(loop_device: &Path, file: &Path) -> bool {
    let Some(name) = loop_device.file_name() else {
        return false;
    };
    let sys = Path::new("/sys/block").join(name).join("loop/backing_file");
    std::fs::read_to_string(sys).is_ok_and(|s| {
        let s = s.trim();
        let s = s.strip_suffix(" (deleted)").unwrap_or(s);
        Path::new(s) == file
    })
}

/// Size in bytes of a block device, from sysfs.
pub fn device_size(dev: &Path) -> Option<u64> {
    let name = dev.file_name()?;
    let sectors = std::fs::read_to_string(Path::new("/sys/block").join(name).join("size")).ok()?;
    sectors.trim().parse::<u64>().ok().map(|s| s * 512)
}

fn losetup(args: &[&str]) -> Result<String, Error> {
    let command = format!("losetup {}", args.join(" "));
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_named_like_udev_names_qemu_disks() {
        let serial = "0123456789abcdef0123456789";
        assert_eq!(
            link_name("scsi", serial),
            format!("scsi-0QEMU_QEMU_HARDDISK_{serial}")
        );
        assert_eq!(link_name("virtio", serial), "virtio-0123456789abcdef0123");
        assert_eq!(link_name("sata", "abc"), "ata-QEMU_HARDDISK_abc");
    }
}
