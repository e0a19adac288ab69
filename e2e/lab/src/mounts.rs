//! Cleanup of mounts left under a lab directory (by node plugins under test,
//! or a crashed run): every mount point below the directory is detached,
//! deepest first.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// The source and filesystem type of the mount at `path`, per
/// `/proc/self/mountinfo` (the last mount there wins, as it hides the others).
pub fn mount_of(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = PathBuf::from(unescape(fields.get(4)?));
        // After the optional fields, " - " leads fstype and source.
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?;
        let source = fields.get(sep + 2)?;
        (point == path).then(|| (unescape(source), fstype.to_string()))
    })
}

/// Lazily unmounts everything below `dir`; returns what it unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for mount in mounts_under(dir) {
        match umount2(&mount, MntFlags::MNT_DETACH) {
            Ok(()) => done.push(mount),
            Err(e) => tracing::warn!(mount = %mount.display(), "unmount failed: {e}"),
        }
    }
    done
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if code.len() == 3
                && let Ok(b) = u8::from_str_radix(&code, 8)
            {
                out.push(char::from(b));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(mounts_under(Path::new("/nonexistent-lab-dir")).is_empty());
    }
}
