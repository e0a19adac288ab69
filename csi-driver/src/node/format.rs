//! Decides what a device holds and puts a filesystem on a blank one: probes
//! with `blkid -p -o export` (exit 2 = nothing found), formats only a blank
//! device (`mkfs.ext4 -F -m0`, `mkfs.xfs`), and never touches a device that
//! already holds data. [`Filesystem::parse`] and [`parse_probe`] are pure.

use std::collections::HashMap;
use std::path::Path;

use super::command;
use super::error::NodeError;

/// Filesystems this driver creates, mounts and grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext2,
    Ext3,
    Ext4,
    Xfs,
}

impl Filesystem {
    /// The filesystem for a CSI `fs_type`; empty means the default, ext4.
    pub fn parse(fs_type: &str) -> Result<Self, NodeError> {
        match fs_type.to_ascii_lowercase().as_str() {
            "" | "ext4" => Ok(Self::Ext4),
            "ext3" => Ok(Self::Ext3),
            "ext2" => Ok(Self::Ext2),
            "xfs" => Ok(Self::Xfs),
            _ => Err(NodeError::UnsupportedFsType(fs_type.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ext2 => "ext2",
            Self::Ext3 => "ext3",
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }

    /// The mkfs invocation for `device`.
    fn mkfs(self, device: &Path) -> (&'static str, Vec<&std::ffi::OsStr>) {
        let dev = device.as_os_str();
        match self {
            // -F: the target is a whole disk, not a partition; -m0: no
            // blocks reserved for root on a data volume.
            Self::Ext2 => ("mkfs.ext2", vec!["-F".as_ref(), "-m0".as_ref(), dev]),
            Self::Ext3 => ("mkfs.ext3", vec!["-F".as_ref(), "-m0".as_ref(), dev]),
            Self::Ext4 => ("mkfs.ext4", vec!["-F".as_ref(), "-m0".as_ref(), dev]),
            Self::Xfs => ("mkfs.xfs", vec![dev]),
        }
    }
}

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No signature at all.
    Blank,
    /// A filesystem of this type (blkid `TYPE` with `USAGE=filesystem`).
    Filesystem(String),
    /// Anything else: partition table, LVM, RAID, swap, crypto, ...
    Other(String),
}

/// Interprets `blkid -p -o export` output (`KEY=value` lines).
pub fn parse_probe(output: &str) -> Content {
    let fields: HashMap<&str, &str> = output
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    match (
        fields.get("TYPE"),
        fields.get("USAGE"),
        fields.get("PTTYPE"),
    ) {
        (Some(fs), Some(&"filesystem"), _) => Content::Filesystem((*fs).to_owned()),
        (Some(kind), usage, _) => Content::Other(format!(
            "a {kind} signature (usage {})",
            usage.copied().unwrap_or("unknown")
        )),
        (None, _, Some(pt)) => Content::Other(format!("a {pt} partition table")),
        (None, _, None) if fields.is_empty() => Content::Blank,
        (None, _, None) => Content::Other("an unrecognised signature".to_owned()),
    }
}

/// Probes `device` with blkid's low-level (uncached) probe.
pub async fn probe(device: &Path) -> Result<Content, NodeError> {
    let args = ["-p", "-o", "export"].map(std::ffi::OsStr::new);
    let args = [&args[..], &[device.as_os_str()]].concat();
    let out = command::output("blkid", &args).await?;
    match out.status.code() {
        Some(0) => Ok(parse_probe(&String::from_utf8_lossy(&out.stdout))),
        // 2: no signature found, the device is blank.
        Some(2) => Ok(Content::Blank),
        _ => Err(command::failure("blkid", &args, &out)),
    }
}

/// Makes sure `device` carries a filesystem that can be mounted for the
/// request and returns its type: formats a blank device with `wanted`
/// (unless `read_only`), keeps an existing filesystem of the same type, or of
/// any supported type when no `fs_type` was requested (`explicit == false`).
pub async fn ensure_filesystem(
    device: &Path,
    wanted: Filesystem,
    explicit: bool,
    read_only: bool,
) -> Result<Filesystem, NodeError> {
    match probe(device).await? {
        Content::Blank if read_only => Err(NodeError::ReadOnlyBlank(device.to_path_buf())),
        Content::Blank => {
            // blkid also answers 2 when it cannot read the device at all;
            // only a device we can read is known to be blank.
            ensure_readable(device)?;
            let (program, args) = wanted.mkfs(device);
            command::run(program, args).await?;
            Ok(wanted)
        }
        Content::Filesystem(found) => match Filesystem::parse(&found) {
            Ok(fs) if fs == wanted || !explicit => Ok(fs),
            Ok(_) => Err(NodeError::FsTypeMismatch {
                device: device.to_path_buf(),
                found,
                requested: wanted.name().to_owned(),
            }),
            Err(_) if explicit => Err(NodeError::FsTypeMismatch {
                device: device.to_path_buf(),
                found,
                requested: wanted.name().to_owned(),
            }),
            Err(_) => Err(NodeError::ForeignData {
                device: device.to_path_buf(),
                found: format!("a {found} filesystem this driver does not mount"),
            }),
        },
        Content::Other(found) => Err(NodeError::ForeignData {
            device: device.to_path_buf(),
            found,
        }),
    }
}

fn ensure_readable(device: &Path) -> Result<(), NodeError> {
    use std::io::Read as _;
    let mut head = vec![0u8; 64 * 1024];
    let mut file = std::fs::File::open(device).map_err(NodeError::io("open", device))?;
    file.read(&mut head)
        .map_err(NodeError::io("read", device))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_type_defaults_to_ext4_and_refuses_the_unknown() {
        assert_eq!(Filesystem::parse("").ok(), Some(Filesystem::Ext4));
        assert_eq!(Filesystem::parse("XFS").ok(), Some(Filesystem::Xfs));
        let err = Filesystem::parse("btrfs").err().map(|e| e.code());
        assert_eq!(err, Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn probe_output_is_classified() {
        let ext4 = "DEVNAME=/dev/sdb\nUUID=1b2c\nVERSION=1.0\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(parse_probe(ext4), Content::Filesystem("ext4".into()));
        let gpt = "DEVNAME=/dev/sdb\nPTUUID=aa\nPTTYPE=gpt\n";
        assert_eq!(
            parse_probe(gpt),
            Content::Other("a gpt partition table".into())
        );
        let lvm = "DEVNAME=/dev/sdb\nTYPE=LVM2_member\nUSAGE=raid\n";
        assert!(matches!(parse_probe(lvm), Content::Other(s) if s.contains("LVM2_member")));
        let swap = "TYPE=swap\nUSAGE=other\n";
        assert!(matches!(parse_probe(swap), Content::Other(_)));
        assert_eq!(parse_probe(""), Content::Blank);
    }

    #[test]
    fn mkfs_reserves_no_root_blocks_on_ext() {
        let (program, args) = Filesystem::Ext4.mkfs(Path::new("/dev/sdb"));
        assert_eq!(program, "mkfs.ext4");
        assert_eq!(args, ["-F", "-m0", "/dev/sdb"]);
        assert_eq!(Filesystem::Xfs.mkfs(Path::new("/dev/sdb")).0, "mkfs.xfs");
    }
}
