//! Reads `/proc/self/mountinfo` to answer "what is mounted at this path, from
//! which device, with which options". [`parse`] is pure (and decodes the
//! kernel's octal escapes such as `\040` for a space); [`top_mount_at`] is the
//! thin I/O layer the service uses.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::error::NodeError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// Device of the mounted filesystem (for ext4/xfs: the block device).
    pub major: u64,
    pub minor: u64,
    /// Directory of the filesystem that is the root of this mount.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `noatime`, `nodev`, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    /// Mount source as given to mount(2), e.g. `/dev/sdb`.
    pub source: String,
    /// Per-superblock options; `ro` here with `rw` per mount means the kernel
    /// switched the filesystem read-only (e.g. `errors=remount-ro`).
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// The mount itself is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The filesystem (superblock) is read-only, including ext4's
    /// `emergency_ro` state after an error with `errors=remount-ro`.
    pub fn super_read_only(&self) -> bool {
        self.super_options
            .iter()
            .any(|o| o == "ro" || o == "emergency_ro")
    }

    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// Parses the text of a mountinfo file.
pub fn parse(text: &[u8]) -> Result<Vec<MountInfo>, String> {
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            parse_line(line).ok_or_else(|| {
                format!(
                    "malformed mountinfo line: {}",
                    String::from_utf8_lossy(line)
                )
            })
        })
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let mut fields = line.split(|b| *b == b' ');
    let id = utf8(fields.next()?)?.parse().ok()?;
    let parent = utf8(fields.next()?)?.parse().ok()?;
    let (major, minor) = utf8(fields.next()?)?.split_once(':')?;
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = split_options(fields.next()?);
    // Optional fields (shared:N, master:N, ...) end with a lone "-".
    fields.by_ref().find(|f| *f == b"-")?;
    let fs_type = utf8(fields.next()?)?.to_owned();
    let source = unescape(fields.next()?).to_string_lossy().into_owned();
    let super_options = split_options(fields.next().unwrap_or_default());
    Some(MountInfo {
        id,
        parent,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

fn utf8(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field).ok()
}

fn split_options(field: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(field)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Decodes the `\ooo` octal escapes the kernel uses for space, tab, newline
/// and backslash in paths.
fn unescape(field: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// The mount entries of the current mount namespace.
pub fn read() -> Result<Vec<MountInfo>, NodeError> {
    let text = std::fs::read(MOUNTINFO).map_err(NodeError::io("read", MOUNTINFO))?;
    parse(&text).map_err(|msg| NodeError::Io {
        op: "parse",
        path: MOUNTINFO.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    })
}

/// Among `mounts`, the visible (topmost) mount at exactly `mount_point`.
pub fn top_of<'a>(mounts: &'a [MountInfo], mount_point: &Path) -> Option<&'a MountInfo> {
    let here: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.mount_point == mount_point)
        .collect();
    // A mount stacked on top of another at the same path has it as parent.
    here.iter()
        .copied()
        .find(|m| !here.iter().any(|other| other.parent == m.id))
}

/// The topmost mount at `path`, or `None` when `path` does not exist or is
/// not a mount point. Symlinks in `path` are resolved first, as the kernel
/// records resolved paths.
pub fn top_mount_at(path: &Path) -> Result<Option<MountInfo>, NodeError> {
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(NodeError::io("resolve", path)(err)),
    };
    let mounts = read()?;
    Ok(top_of(&mounts, &resolved).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime shared:2 - devtmpfs devtmpfs rw,size=1k,mode=755
312 27 7:3 / /var/lib/kubelet/plugins/csi.kubevirt.io/pv/pvc-1/globalmount rw,relatime shared:40 - ext4 /dev/loop3 rw
313 27 7:3 / /var/lib/kubelet/pods/a\\040b/volumes/x\\134y ro,noatime master:40 - ext4 /dev/loop3 ro,errors=remount-ro
400 24 0:6 /loop3 /tmp/block\\011file rw,nosuid - devtmpfs devtmpfs rw
";

    #[test]
    fn parses_fields_and_optional_tags() {
        let mounts = parse(SAMPLE).expect("sample parses");
        assert_eq!(mounts.len(), 5);
        let staged = &mounts[2];
        assert_eq!((staged.id, staged.parent), (312, 27));
        assert_eq!((staged.major, staged.minor), (7, 3));
        assert_eq!(staged.fs_type, "ext4");
        assert_eq!(staged.source, "/dev/loop3");
        assert!(!staged.read_only());
        assert_eq!(staged.options, ["rw", "relatime"]);
    }

    #[test]
    fn decodes_octal_escapes() {
        let mounts = parse(SAMPLE).expect("sample parses");
        assert_eq!(
            mounts[3].mount_point,
            Path::new("/var/lib/kubelet/pods/a b/volumes/x\\y")
        );
        assert!(mounts[3].read_only() && mounts[3].super_read_only());
        assert!(mounts[3].has_option("noatime"));
        assert_eq!(mounts[4].mount_point, Path::new("/tmp/block\tfile"));
        assert_eq!(mounts[4].root, Path::new("/loop3"));
        // A backslash not followed by three octal digits is kept as is.
        assert_eq!(unescape(b"a\\9b\\04"), OsString::from("a\\9b\\04"));
    }

    #[test]
    fn ext4_emergency_read_only_counts_as_read_only() {
        let line =
            b"42 27 7:0 / /mnt rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro,emergency_ro\n";
        let mounts = parse(line).expect("parses");
        assert!(!mounts[0].read_only());
        assert!(mounts[0].super_read_only());
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse(b"22 27 0:21 / /proc rw,relatime proc proc rw\n").is_err());
        assert!(parse(b"x 27 0:21 / /proc rw - proc proc rw\n").is_err());
    }

    #[test]
    fn top_of_picks_the_stacked_mount() {
        let text = b"10 1 7:1 / /mnt rw - ext4 /dev/loop1 rw
11 10 7:2 / /mnt rw - ext4 /dev/loop2 rw
12 1 7:3 / /other rw - ext4 /dev/loop3 rw
";
        let mounts = parse(text).expect("parses");
        assert_eq!(top_of(&mounts, Path::new("/mnt")).map(|m| m.minor), Some(2));
        assert_eq!(
            top_of(&mounts, Path::new("/other")).map(|m| m.minor),
            Some(3)
        );
        assert!(top_of(&mounts, Path::new("/none")).is_none());
    }
}
