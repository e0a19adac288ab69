//! mount(2)/umount2(2) for the Node service: filesystem mounts, bind mounts
//! and their read-only remount, and the translation of CSI `mount_flags`
//! (`["noatime", "nodev,nosuid", "errors=remount-ro"]`) into kernel
//! [`MsFlags`] plus the filesystem-specific data string.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::error::NodeError;

/// Flags a bind remount can change: they live on the mount, not on the
/// filesystem (sync, dirsync and lazytime are per superblock).
const PER_MOUNT: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

/// Mount options split into kernel flags and filesystem data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Options the kernel passes to the filesystem (e.g. `errors=remount-ro`).
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    /// Parses CSI mount flags; an entry may itself hold comma-separated
    /// options, and commas inside double quotes (SELinux contexts) do not split.
    pub fn parse<S: AsRef<str>>(mount_flags: &[S]) -> Self {
        let mut opts = Self::default();
        for option in mount_flags.iter().flat_map(|f| split_unquoted(f.as_ref())) {
            opts.add(option);
        }
        opts
    }

    /// Adds one option, later options overriding earlier ones (`ro` then `rw`).
    pub fn add(&mut self, option: &str) {
        let (flag, set) = match option {
            "" | "defaults" => return,
            "ro" => (MsFlags::MS_RDONLY, true),
            "rw" => (MsFlags::MS_RDONLY, false),
            "nosuid" => (MsFlags::MS_NOSUID, true),
            "suid" => (MsFlags::MS_NOSUID, false),
            "nodev" => (MsFlags::MS_NODEV, true),
            "dev" => (MsFlags::MS_NODEV, false),
            "noexec" => (MsFlags::MS_NOEXEC, true),
            "exec" => (MsFlags::MS_NOEXEC, false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, true),
            "async" => (MsFlags::MS_SYNCHRONOUS, false),
            "dirsync" => (MsFlags::MS_DIRSYNC, true),
            "noatime" => (MsFlags::MS_NOATIME, true),
            "atime" => (MsFlags::MS_NOATIME, false),
            "nodiratime" => (MsFlags::MS_NODIRATIME, true),
            "diratime" => (MsFlags::MS_NODIRATIME, false),
            "relatime" => (MsFlags::MS_RELATIME, true),
            "norelatime" => (MsFlags::MS_RELATIME, false),
            "strictatime" => (MsFlags::MS_STRICTATIME, true),
            "nostrictatime" => (MsFlags::MS_STRICTATIME, false),
            "lazytime" => (MsFlags::MS_LAZYTIME, true),
            "nolazytime" => (MsFlags::MS_LAZYTIME, false),
            other => {
                if !self.data.iter().any(|d| d == other) {
                    self.data.push(other.to_owned());
                }
                return;
            }
        };
        self.flags.set(flag, set);
    }

    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    pub fn has_data(&self, option: &str) -> bool {
        self.data.iter().any(|d| d == option)
    }

    fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

fn split_unquoted(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

/// Mounts the filesystem on `device` at `target`.
pub fn mount_filesystem(
    device: &Path,
    target: &Path,
    fs_type: &str,
    opts: &MountOptions,
) -> Result<(), NodeError> {
    let data = opts.data_string();
    mount(
        Some(device),
        target,
        Some(fs_type),
        opts.flags,
        data.as_deref(),
    )
    .map_err(NodeError::sys("mount", target))
}

/// Bind-mounts `source` (a directory, or a device node onto a file) at
/// `target`, then applies the per-mount flags of `opts` (`ro`, `noatime`,
/// `nodev`, ...) with a bind remount, since a plain bind ignores them.
pub fn bind_mount(source: &Path, target: &Path, opts: &MountOptions) -> Result<(), NodeError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(NodeError::sys("bind mount", target))?;
    let flags = opts.flags & PER_MOUNT;
    if flags.is_empty() {
        return Ok(());
    }
    let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
        // Leave nothing half-done behind: a bind without its flags (e.g. a
        // writable view of a read-only publish) must not stay mounted.
        let _ = umount2(target, MntFlags::empty());
        return Err(NodeError::sys("remount", target)(err));
    }
    Ok(())
}

/// Unmounts the topmost mount at `target`. Returns `false` when nothing was
/// mounted there (or the path is gone), so callers can be idempotent.
pub fn unmount(target: &Path) -> Result<bool, NodeError> {
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL | Errno::ENOENT) => Ok(false),
        Err(err) => Err(NodeError::sys("unmount", target)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_flags_become_ms_flags_and_the_rest_data() {
        let opts =
            MountOptions::parse(&["noatime", "nodev,nosuid", "errors=remount-ro", "defaults"]);
        assert_eq!(
            opts.flags,
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID
        );
        assert_eq!(opts.data, ["errors=remount-ro"]);
        assert_eq!(opts.data_string().as_deref(), Some("errors=remount-ro"));
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let opts = MountOptions::parse(&["ro", "exec", "rw", "noexec", "sync", "dirsync"]);
        assert!(!opts.read_only());
        assert_eq!(
            opts.flags,
            MsFlags::MS_NOEXEC | MsFlags::MS_SYNCHRONOUS | MsFlags::MS_DIRSYNC
        );
        assert!(MountOptions::parse(&["rw,ro"]).read_only());
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let opts = MountOptions::parse(&[
            r#"context="system_u:object_r:container_file_t:s0:c1,c2",noexec"#,
        ]);
        assert_eq!(
            opts.data,
            [r#"context="system_u:object_r:container_file_t:s0:c1,c2""#]
        );
        assert_eq!(opts.flags, MsFlags::MS_NOEXEC);
    }

    #[test]
    fn duplicate_data_options_are_kept_once() {
        let opts = MountOptions::parse(&["nouuid", "nouuid"]);
        assert_eq!(opts.data, ["nouuid"]);
        assert!(opts.has_data("nouuid"));
    }
}
