//! [`NodeService`]: the CSI Node gRPC service of the KubeVirt CSI driver.
//!
//! Each handler validates its request first (see `request`), then takes the
//! volume's in-flight slot (a second concurrent call for the same volume id
//! gets `Aborted`) and does its work in a task of its own that keeps the slot
//! until the work is done, even if the caller hangs up. The work goes through
//! the small modules next door: `device` finds the hotplugged disk, `format`
//! puts a filesystem on a blank one, `mount` mounts, `stats` and `resize`
//! answer usage and growth. Every handler is idempotent: repeating a call
//! that already took effect succeeds without doing anything again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kubevirt_csi_proto::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse,
    node_server::Node,
    node_service_capability::{self, rpc::Type as RpcType},
};
use tonic::{Request, Response, Status};

use super::blockdev::{self, DevNum};
use super::device::DeviceLocator;
use super::error::NodeError;
use super::format::{self, Filesystem};
use super::mount::{self, MountOptions};
use super::mountinfo::{self, MountInfo};
use super::request::{self, Access, Publish, Stage};
use super::resize;
use super::stats;

/// Default `max_volumes_per_node`. Hotplugged volumes sit on the VM's
/// virtio-scsi controller, which addresses far more disks than a VM can
/// sensibly carry (KubeVirt puts the practical limit at a few hundred: every
/// disk is a QEMU device and a guest block device). 255, one SCSI target id
/// range, keeps the scheduler from piling more onto one node. Clusters that
/// hotplug on the virtio bus (one PCIe port per disk) should lower it.
pub const DEFAULT_MAX_VOLUMES_PER_NODE: i64 = 255;

/// Default wait for a hotplugged disk to show up in the guest. Kept below
/// kubelet's 2-minute CSI call timeout so it gets a clear NotFound instead of
/// a deadline error.
pub const DEFAULT_DEVICE_WAIT: Duration = Duration::from_secs(60);

/// Upper bound on mounts stacked at one path that unmounting will peel off.
const MAX_STACKED_MOUNTS: usize = 16;

/// Configuration of the Node service.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `<infra-namespace>/<vm-name>`, see `nodeid::resolve_node_id`.
    pub node_id: String,
    /// Where device nodes live (`/dev`); disks are looked up under
    /// `<device_dir>/disk/by-id`.
    pub device_dir: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sysfs_dir: PathBuf,
    /// Reported by NodeGetInfo; 0 means no limit.
    pub max_volumes_per_node: i64,
    /// How long NodeStageVolume/NodePublishVolume wait for the disk.
    pub device_wait: Duration,
}

impl NodeConfig {
    /// The defaults for a real guest: `/dev`, `/sys`,
    /// [`DEFAULT_MAX_VOLUMES_PER_NODE`], [`DEFAULT_DEVICE_WAIT`].
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            device_dir: PathBuf::from("/dev"),
            sysfs_dir: PathBuf::from("/sys"),
            max_volumes_per_node: DEFAULT_MAX_VOLUMES_PER_NODE,
            device_wait: DEFAULT_DEVICE_WAIT,
        }
    }
}

/// The CSI Node service; serve it with `NodeServer::new(NodeService::new(config))`.
///
/// Cheap to clone: clones share the in-flight set and publish records.
#[derive(Debug, Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    locator: DeviceLocator,
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Read-only flag of each publish this process made, by target path, so
    /// the volume condition can tell an expected read-only mount from one the
    /// kernel forced.
    published: Mutex<HashMap<PathBuf, bool>>,
}

/// Holds a volume id in the in-flight set until dropped.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    volume_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.volume_id);
    }
}

// === impl NodeService ===

impl NodeService {
    pub fn new(config: NodeConfig) -> Self {
        let locator = DeviceLocator::new(&config.device_dir, &config.sysfs_dir);
        Self {
            inner: Arc::new(Inner {
                config,
                locator,
                in_flight: Arc::default(),
                published: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Runs `op` for `volume_id` while holding the volume's in-flight slot,
    /// in a task of its own: if the caller gives up (deadline, disconnect),
    /// a started mkfs, mount or resize still runs to completion and the slot
    /// stays taken until it has, so a retry never races a half-done step.
    async fn exclusive<T, F, Fut>(&self, volume_id: &str, op: F) -> Result<T, NodeError>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, NodeError>> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self.inner.begin(volume_id)?;
        let work = op(Arc::clone(&self.inner));
        tokio::spawn(async move {
            let _slot = slot;
            work.await
        })
        .await
        .map_err(|err| NodeError::TaskFailed(err.to_string()))?
    }
}

// === impl Inner ===

impl Inner {
    fn begin(&self, volume_id: &str) -> Result<InFlight, NodeError> {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !set.insert(volume_id.to_owned()) {
            return Err(NodeError::InProgress(volume_id.to_owned()));
        }
        Ok(InFlight {
            set: Arc::clone(&self.in_flight),
            volume_id: volume_id.to_owned(),
        })
    }

    fn record_publish(&self, target: &Path, read_only: Option<bool>) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match read_only {
            Some(ro) => published.insert(target.to_path_buf(), ro),
            None => published.remove(target),
        };
    }

    fn published_read_only(&self, target: &Path) -> Option<bool> {
        let published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        published.get(target).copied()
    }

    async fn stage(&self, req: Stage) -> Result<(), NodeError> {
        let device = self
            .locator
            .wait_for(&req.disk, self.config.device_wait)
            .await?;
        let dev = block_devnum(&device)?;
        let Access::Mount {
            fs,
            explicit_fs,
            options,
        } = req.access
        else {
            // A raw block volume is published straight from its device.
            tracing::info!(volume = req.volume_id, device = %device.display(), "block volume staged");
            return Ok(());
        };
        if let Some(mounted) = mountinfo::top_mount_at(&req.staging_path)? {
            return check_same_device(&req.staging_path, &mounted, dev, &device);
        }
        create_dir(&req.staging_path)?;
        let fs = format::ensure_filesystem(&device, fs, explicit_fs, req.read_only).await?;
        let options = stage_options(options, fs, req.read_only);
        mount::mount_filesystem(&device, &req.staging_path, fs.name(), &options)?;
        tracing::info!(
            volume = req.volume_id,
            device = %device.display(),
            path = %req.staging_path.display(),
            fs = fs.name(),
            "volume staged"
        );
        Ok(())
    }

    async fn unstage(&self, volume_id: &str, staging_path: &Path) -> Result<(), NodeError> {
        unmount_all(staging_path)?;
        remove_unmounted(staging_path)?;
        tracing::info!(volume = volume_id, path = %staging_path.display(), "volume unstaged");
        Ok(())
    }

    async fn publish(&self, req: Publish) -> Result<(), NodeError> {
        match (&req.access, &req.disk) {
            (Access::Mount { options, .. }, _) => self.publish_mount(&req, options)?,
            (Access::Block, Some(disk)) => {
                let device = self.locator.wait_for(disk, self.config.device_wait).await?;
                self.publish_block(&req, &device)?;
            }
            (Access::Block, None) => return Err(NodeError::MissingField("volume_context.serial")),
        }
        self.record_publish(&req.target_path, Some(req.read_only));
        tracing::info!(
            volume = req.volume_id,
            target = %req.target_path.display(),
            read_only = req.read_only,
            "volume published"
        );
        Ok(())
    }

    fn publish_mount(&self, req: &Publish, options: &MountOptions) -> Result<(), NodeError> {
        let staged = mountinfo::top_mount_at(&req.staging_path)?
            .ok_or_else(|| NodeError::NotMounted(req.staging_path.clone()))?;
        let staged_dev = DevNum {
            major: staged.major,
            minor: staged.minor,
        };
        if let Some(mounted) = mountinfo::top_mount_at(&req.target_path)? {
            let same = mounted.major == staged.major && mounted.minor == staged.minor;
            return check_compatible(
                &req.target_path,
                same,
                staged_dev,
                mounted.read_only(),
                req.read_only,
            );
        }
        create_dir(&req.target_path)?;
        mount::bind_mount(&staged.mount_point, &req.target_path, options)
    }

    /// Bind-mounts the disk's device node onto a file at the target path.
    /// `readonly` makes that mount read-only, as kubelet expects; note the
    /// kernel does not refuse writes through a device node on a read-only
    /// mount, and the disk itself is not switched read-only because other
    /// publishes of the volume on this node may share it.
    fn publish_block(&self, req: &Publish, device: &Path) -> Result<(), NodeError> {
        let dev = block_devnum(device)?;
        if let Some(mounted) = mountinfo::top_mount_at(&req.target_path)? {
            // A bind-mounted device node: stat through the mount names the disk.
            let same = blockdev::devnum(&req.target_path)? == Some(dev);
            return check_compatible(
                &req.target_path,
                same,
                dev,
                mounted.read_only(),
                req.read_only,
            );
        }
        if let Some(parent) = req.target_path.parent() {
            create_dir(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&req.target_path)
            .map_err(NodeError::io("create", &req.target_path))?;
        let mut options = MountOptions::default();
        if req.read_only {
            options.add("ro");
        }
        mount::bind_mount(device, &req.target_path, &options)
    }

    async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        unmount_all(target)?;
        remove_unmounted(target)?;
        self.record_publish(target, None);
        tracing::info!(volume = volume_id, target = %target.display(), "volume unpublished");
        Ok(())
    }

    async fn expand(&self, volume_id: &str, path: &Path, required: u64) -> Result<u64, NodeError> {
        if !path.exists() {
            return Err(NodeError::PathNotFound(path.to_path_buf()));
        }
        if let Some(dev) = blockdev::devnum(path)? {
            // Raw block: nothing to grow, report what the device offers now.
            blockdev::rescan(&self.config.sysfs_dir, dev)?;
            return check_capacity(path, blockdev::size_bytes(path)?, required);
        }
        let mounted = mountinfo::top_mount_at(path)?
            .ok_or_else(|| NodeError::NotMounted(path.to_path_buf()))?;
        let dev = DevNum {
            major: mounted.major,
            minor: mounted.minor,
        };
        let device = blockdev::node_for(
            &self.config.sysfs_dir,
            &self.config.device_dir,
            dev,
            Some(Path::new(&mounted.source)),
        )?;
        blockdev::rescan(&self.config.sysfs_dir, dev)?;
        let size = check_capacity(&device, blockdev::size_bytes(&device)?, required)?;
        resize::grow(&mounted.fs_type, &device, &mounted.mount_point).await?;
        tracing::info!(volume = volume_id, device = %device.display(), size, "filesystem grown");
        Ok(size)
    }
}

/// Filesystem mount options for staging: the request's, plus `ro` for a
/// read-only volume and `nouuid` for xfs (clones of one volume share a UUID
/// and must still mount side by side).
fn stage_options(mut options: MountOptions, fs: Filesystem, read_only: bool) -> MountOptions {
    if read_only {
        options.add("ro");
    }
    if fs == Filesystem::Xfs {
        options.add("nouuid");
    }
    options
}

fn block_devnum(device: &Path) -> Result<DevNum, NodeError> {
    blockdev::devnum(device)?.ok_or_else(|| {
        NodeError::InvalidArgument(format!("{} is not a block device", device.display()))
    })
}

fn check_same_device(
    path: &Path,
    mounted: &MountInfo,
    dev: DevNum,
    device: &Path,
) -> Result<(), NodeError> {
    if mounted.major == dev.major && mounted.minor == dev.minor {
        return Ok(());
    }
    Err(NodeError::AlreadyInUse {
        path: path.to_path_buf(),
        reason: format!(
            "device {}:{} ({}) is mounted there, not {} ({dev})",
            mounted.major,
            mounted.minor,
            mounted.source,
            device.display()
        ),
    })
}

fn check_compatible(
    target: &Path,
    same_device: bool,
    dev: DevNum,
    mounted_read_only: bool,
    read_only: bool,
) -> Result<(), NodeError> {
    let reason = if !same_device {
        format!("another device than {dev} is mounted there")
    } else if mounted_read_only != read_only {
        format!("the volume is already published there with readonly={mounted_read_only}")
    } else {
        return Ok(());
    };
    Err(NodeError::AlreadyInUse {
        path: target.to_path_buf(),
        reason,
    })
}

fn check_capacity(device: &Path, size: u64, required: u64) -> Result<u64, NodeError> {
    if size < required {
        return Err(NodeError::CapacityTooSmall {
            device: device.to_path_buf(),
            size,
            required,
        });
    }
    Ok(size)
}

fn create_dir(path: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(NodeError::io("create directory", path))
}

/// Peels off every mount stacked at `path`.
fn unmount_all(path: &Path) -> Result<(), NodeError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        let Some(mounted) = mountinfo::top_mount_at(path)? else {
            return Ok(());
        };
        if !mount::unmount(&mounted.mount_point)? {
            break;
        }
    }
    match mountinfo::top_mount_at(path)? {
        None => Ok(()),
        Some(_) => Err(NodeError::sys("unmount", path)(nix::errno::Errno::EBUSY)),
    }
}

/// Removes the file or empty directory at `path` unless something is still
/// mounted there. A directory that still has contents is left alone: that
/// data is not ours to delete.
fn remove_unmounted(path: &Path) -> Result<(), NodeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(NodeError::io("stat", path)(err)),
    };
    if mountinfo::top_mount_at(path)?.is_some() {
        return Err(NodeError::sys("unmount", path)(nix::errno::Errno::EBUSY));
    }
    let removed = if meta.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            tracing::warn!(path = %path.display(), "directory not empty after unmount; leaving it in place");
            Ok(())
        }
        Err(err) => Err(NodeError::io("remove", path)(err)),
    }
}

fn rpc_capability(kind: RpcType) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc {
                r#type: kind.into(),
            },
        )),
    }
}

// === impl Node for NodeService ===

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request::stage_request(request.get_ref())?;
        let volume_id = req.volume_id.clone();
        self.exclusive(&volume_id, |node| async move { node.stage(req).await })
            .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.get_ref();
        let volume_id = request::required(&req.volume_id, "volume_id")?.to_owned();
        let staging = request::required_path(&req.staging_target_path, "staging_target_path")?;
        self.exclusive(&volume_id.clone(), |node| async move {
            node.unstage(&volume_id, &staging).await
        })
        .await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request::publish_request(request.get_ref())?;
        let volume_id = req.volume_id.clone();
        self.exclusive(&volume_id, |node| async move { node.publish(req).await })
            .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.get_ref();
        let volume_id = request::required(&req.volume_id, "volume_id")?.to_owned();
        let target = request::required_path(&req.target_path, "target_path")?;
        self.exclusive(&volume_id.clone(), |node| async move {
            node.unpublish(&volume_id, &target).await
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.get_ref();
        request::required(&req.volume_id, "volume_id")?;
        let path = request::volume_path(&req.volume_path)?;
        let stats = stats::volume_stats(
            &path,
            &self.inner.config.sysfs_dir,
            self.inner.published_read_only(&path),
        )?;
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: stats.usage,
            volume_condition: Some(stats.condition),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.get_ref();
        let volume_id = request::required(&req.volume_id, "volume_id")?.to_owned();
        let path = request::volume_path(&req.volume_path)?;
        let required = req.capacity_range.as_ref().map_or(0, |r| r.required_bytes);
        let required = u64::try_from(required).map_err(|_| {
            NodeError::InvalidArgument(format!(
                "capacity_range.required_bytes {required} is negative"
            ))
        })?;
        let size = self
            .exclusive(&volume_id.clone(), |node| async move {
                node.expand(&volume_id, &path, required).await
            })
            .await?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            RpcType::StageUnstageVolume,
            RpcType::ExpandVolume,
            RpcType::GetVolumeStats,
            RpcType::VolumeCondition,
        ]
        .into_iter()
        .map(rpc_capability)
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.inner.config.node_id.clone(),
            max_volumes_per_node: self.inner.config.max_volumes_per_node,
            accessible_topology: None,
        }))
    }
}
