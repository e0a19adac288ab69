//! Shared harness of the Node service tests: a [`Lab`] owns a temp dir with a
//! fake device dir (by-id links to real loop devices), runs the real
//! `NodeService` behind a tonic server on a unix socket and hands out the
//! generated client. Dropping the lab unmounts everything mounted under its
//! dir and detaches its loop devices, also when a test fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubevirt_csi_driver::node::{NodeConfig, NodeService, mountinfo};
use kubevirt_csi_proto::v1::node_client::NodeClient;
use kubevirt_csi_proto::v1::node_server::NodeServer;
use kubevirt_csi_proto::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use kubevirt_csi_proto::v1::{
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

pub const MIB: u64 = 1024 * 1024;
/// Every RPC and wait in these tests is bounded by this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Awaits `fut` for at most [`CALL_TIMEOUT`].
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .expect("call timed out")
}

/// A sparse file attached to a loop device; detached on drop.
pub struct LoopDevice {
    pub device: PathBuf,
    pub backing: PathBuf,
}

impl LoopDevice {
    pub fn new(backing: PathBuf, size: u64) -> Self {
        let file = std::fs::File::create(&backing).expect("create backing file");
        file.set_len(size).expect("size backing file");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self { device, backing }
    }

    /// Grows the backing file and tells the loop driver (`losetup -c`).
    pub fn grow(&self, size: u64) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .expect("open backing");
        file.set_len(size).expect("grow backing file");
        run("losetup", &["-c".as_ref(), self.device.as_os_str()]);
    }

    pub fn rdev(&self) -> u64 {
        std::fs::metadata(&self.device)
            .expect("stat loop device")
            .rdev()
    }

    /// `major:minor` as sysfs names it.
    pub fn devnum(&self) -> String {
        let rdev = self.rdev();
        format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Runs a command that must succeed and returns its stdout.
pub fn run(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `findmnt` reports for a mount point: (source, fstype, options).
pub fn findmnt(path: &Path) -> Option<(String, String, Vec<String>)> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "MAJ:MIN,FSTYPE,OPTIONS", "--mountpoint"])
        .arg(path)
        .output()
        .expect("run findmnt");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last()?;
    let mut fields = line.split_whitespace();
    Some((
        fields.next()?.to_owned(),
        fields.next()?.to_owned(),
        fields.next()?.split(',').map(str::to_owned).collect(),
    ))
}

/// The filesystem type blkid finds on `device`, if any.
pub fn blkid_type(device: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(device)
        .output()
        .ok()?;
    let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!t.is_empty()).then_some(t)
}

/// How a by-id link points at its device.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    /// `disk/by-id/<name> -> /dev/loopN` (what the lab's guest does).
    Absolute,
    /// `disk/by-id/<name> -> ../../<kname>`, `<kname> -> /dev/loopN` (udev).
    Relative,
}

pub fn scsi_link(serial: &str) -> String {
    format!("scsi-0QEMU_QEMU_HARDDISK_{serial}")
}

pub fn virtio_link(serial: &str) -> String {
    format!("virtio-{}", serial.chars().take(20).collect::<String>())
}

/// Settings of a lab.
pub struct LabOptions {
    pub device_wait: Duration,
    /// Use a fake sysfs dir (`<lab>/sys`) instead of `/sys`.
    pub fake_sysfs: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            device_wait: Duration::from_secs(10),
            fake_sysfs: false,
        }
    }
}

pub struct Lab {
    pub dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sys_dir: PathBuf,
    pub client: NodeClient<Channel>,
    loops: Vec<LoopDevice>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

impl Lab {
    pub async fn start() -> Self {
        Self::with(LabOptions::default()).await
    }

    pub async fn with(options: LabOptions) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("csinode-")
            .tempdir()
            .expect("tempdir");
        let dir = std::fs::canonicalize(tmp.path()).expect("canonical tempdir");
        let dev_dir = dir.join("dev");
        std::fs::create_dir_all(&dev_dir).expect("create dev dir");
        let sys_dir = if options.fake_sysfs {
            let sys = dir.join("sys");
            std::fs::create_dir_all(sys.join("dev/block")).expect("create fake sysfs");
            std::fs::create_dir_all(sys.join("block")).expect("create fake sysfs");
            sys
        } else {
            PathBuf::from("/sys")
        };
        let config = NodeConfig {
            device_dir: dev_dir.clone(),
            sysfs_dir: sys_dir.clone(),
            device_wait: options.device_wait,
            ..NodeConfig::new("infra-ns/vm-1")
        };
        let socket = dir.join("csi.sock");
        let listener = UnixListener::bind(&socket).expect("bind unix socket");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(NodeServer::new(NodeService::new(config)))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        });
        let channel =
            Endpoint::try_from("http://[::]:50051")
                .expect("endpoint")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .expect("connect");
        Self {
            dir,
            dev_dir,
            sys_dir,
            client: NodeClient::new(channel),
            loops: Vec::new(),
            shutdown: Some(tx),
            server,
            _tmp: tmp,
        }
    }

    /// A new blank loop device of `size` bytes (not yet visible by id).
    pub fn loop_device(&mut self, size: u64) -> usize {
        let backing = self.dir.join(format!("disk{}.img", self.loops.len()));
        self.loops.push(LoopDevice::new(backing, size));
        self.loops.len() - 1
    }

    pub fn disk(&self, index: usize) -> &LoopDevice {
        &self.loops[index]
    }

    /// A new blank disk visible as `disk/by-id/<link_name>`.
    pub fn add_disk(&mut self, size: u64, link_name: &str, link: Link) -> usize {
        let index = self.loop_device(size);
        self.link_disk(index, link_name, link);
        index
    }

    /// Publishes the by-id link of a disk the way udev does: a temporary link
    /// renamed into place.
    pub fn link_disk(&self, index: usize, link_name: &str, link: Link) {
        let by_id = self.dev_dir.join("disk/by-id");
        std::fs::create_dir_all(&by_id).expect("create by-id");
        let device = &self.loops[index].device;
        let target = match link {
            Link::Absolute => device.clone(),
            Link::Relative => {
                let kname = format!(
                    "sd{}",
                    char::from(b'a' + u8::try_from(index).expect("few disks"))
                );
                std::os::unix::fs::symlink(device, self.dev_dir.join(&kname)).expect("kname link");
                PathBuf::from("../..").join(kname)
            }
        };
        let tmp = by_id.join(format!(".{link_name}.tmp"));
        std::os::unix::fs::symlink(target, &tmp).expect("by-id link");
        std::fs::rename(&tmp, by_id.join(link_name)).expect("rename by-id link");
    }

    /// Mirrors a disk into the fake sysfs (`dev/block/M:m` -> the real entry).
    pub fn sysfs_add(&self, index: usize) -> PathBuf {
        let devnum = self.loops[index].devnum();
        let link = self.sys_dir.join("dev/block").join(&devnum);
        std::os::unix::fs::symlink(Path::new("/sys/dev/block").join(&devnum), &link)
            .expect("sysfs link");
        link
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
        // Unmount everything under the lab dir, newest first, then let the
        // loop devices detach.
        if let Ok(mut mounts) = mountinfo::read() {
            mounts.retain(|m| m.mount_point.starts_with(&self.dir));
            mounts.sort_by_key(|m| std::cmp::Reverse(m.id));
            for m in mounts {
                let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        self.loops.clear();
    }
}

// === request builders ===

pub fn mount_cap(fs_type: &str, flags: &[&str]) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.to_owned(),
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter.into(),
        }),
    })
}

pub fn block_cap() -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter.into(),
        }),
    })
}

pub fn context(serial: &str, bus: Option<&str>) -> HashMap<String, String> {
    let mut ctx = HashMap::from([("serial".to_owned(), serial.to_owned())]);
    if let Some(bus) = bus {
        ctx.insert("bus".to_owned(), bus.to_owned());
    }
    ctx
}

pub fn stage_req(
    volume_id: &str,
    staging: &Path,
    cap: Option<VolumeCapability>,
    ctx: HashMap<String, String>,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: cap,
        volume_context: ctx,
        ..Default::default()
    }
}

pub fn publish_req(
    volume_id: &str,
    staging: &Path,
    target: &Path,
    cap: Option<VolumeCapability>,
    readonly: bool,
    ctx: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: cap,
        readonly,
        volume_context: ctx,
        ..Default::default()
    }
}

pub fn unpublish_req(volume_id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target.to_string_lossy().into_owned(),
    }
}

pub fn unstage_req(volume_id: &str, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_string_lossy().into_owned(),
    }
}
