//! Shared setup of the storage end-to-end tests: a lab with emulated disks,
//! the real `kubevirt-csi-driver` as processes (one controller, one node
//! plugin per guest node), the sidecar stand-ins and one kubelet stand-in
//! per node from `lab-guest`, a guest StorageClass and VolumeSnapshotClass
//! for `csi.kubevirt.io`; then claims and pods as a user makes them, and
//! the files a pod's container would see (its volume paths).
//!
//! Every wait watches and is bounded; [`bounded`] bounds a whole test.
//! [`Storage::finish`] stops everything (tasks, daemons, lab: mounts and
//! loop devices go), also when the scenario failed; dropping a [`Storage`]
//! does the same without waiting.
//!
//! The binary must be built first: `cargo build -p kubevirt-csi-driver`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kubevirt_infra::snapshot::VolumeSnapshotClass;
use kubevirt_lab::daemon::{self, Daemon};
use kubevirt_lab::{Lab, LabConfig, mounts, wait};
use lab_guest::SidecarConfig;
use lab_guest::kubelet::{self, GuestNode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const BINARY: &str = "kubevirt-csi-driver";
pub const DRIVER: &str = "csi.kubevirt.io";
/// The guest StorageClasses (ext4, the default filesystem, and xfs) and
/// VolumeSnapshotClass of these tests.
pub const STORAGE_CLASS: &str = "kubevirt";
pub const XFS_STORAGE_CLASS: &str = "kubevirt-xfs";
pub const SNAPSHOT_CLASS: &str = "kubevirt-snap";
/// Namespace of the tests' claims and pods.
pub const NS: &str = "default";
/// Bound of each wait.
pub const WAIT: Duration = Duration::from_secs(60);
/// Bound of a whole test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);
pub const GIB: u64 = 1 << 30;

tokio::task_local! {
    /// The directory of the lab a [`bounded`] test started, for its report.
    static LAB_DIR: Arc<Mutex<Option<PathBuf>>>;
}

/// Runs a test body for at most [`TEST_TIMEOUT`]. A test that runs out of
/// time fails with what its lab was doing: the tails of the daemons' logs
/// and the last requests each API server answered, read while the lab
/// still exists.
pub async fn bounded<F: Future<Output = anyhow::Result<()>>>(test: F) -> anyhow::Result<()> {
    let dir = Arc::new(Mutex::new(None));
    let test = std::pin::pin!(LAB_DIR.scope(dir.clone(), test));
    tokio::select! {
        outcome = test => outcome,
        () = tokio::time::sleep(TEST_TIMEOUT) => {
            let dir = dir.lock().map(|d| d.clone()).unwrap_or_default();
            let report = dir.map(|d| crate::watchdog::lab_report(&d)).unwrap_or_default();
            Err(anyhow!("test did not finish within {TEST_TIMEOUT:?}\n{report}"))
        }
    }
}

/// Notes the lab of the running [`bounded`] test.
fn note_lab_dir(dir: &Path) {
    let _ = LAB_DIR.try_with(|d| {
        if let Ok(mut d) = d.lock() {
            *d = Some(dir.to_path_buf());
        }
    });
}

/// An in-process task, aborted when dropped.
pub struct Task(JoinHandle<()>);

impl Task {
    /// Aborts the task and waits until it has stopped.
    pub async fn stop(mut self) {
        self.0.abort();
        let handle = &mut self.0;
        let _ = handle.await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One guest node: its layout, its CSI node plugin process, its kubelet.
pub struct NodeSide {
    pub node: GuestNode,
    pub plugin: Daemon,
    kubelet: Option<Task>,
}

/// Runs the kubelet stand-in of `node`.
fn start_kubelet(client: &Client, node: &GuestNode, lab: &Lab) -> Task {
    let (client, cfg) = (client.clone(), lab.kubelet_config(node, &lab.guest));
    Task(tokio::spawn(async move {
        if let Err(e) = kubelet::run(client, cfg).await {
            tracing::error!("kubelet stand-in stopped: {e}");
        }
    }))
}

/// A lab with the whole storage stack running.
pub struct Storage {
    pub lab: Lab,
    pub client: Client,
    pub controller: Daemon,
    pub nodes: Vec<NodeSide>,
    sidecars: Task,
}

/// A claim to create.
#[derive(Clone, Debug)]
pub struct Claim {
    pub name: String,
    pub class: String,
    pub size: String,
    pub block: bool,
    pub access: String,
    pub data_source: Option<Value>,
}

impl Claim {
    /// A ReadWriteOnce filesystem claim.
    pub fn fs(name: &str, size: &str) -> Self {
        Claim {
            name: name.to_string(),
            class: STORAGE_CLASS.to_string(),
            size: size.to_string(),
            block: false,
            access: "ReadWriteOnce".to_string(),
            data_source: None,
        }
    }

    /// A ReadWriteOnce block claim.
    pub fn block(name: &str, size: &str) -> Self {
        Claim {
            block: true,
            ..Claim::fs(name, size)
        }
    }

    pub fn class(mut self, class: &str) -> Self {
        self.class = class.to_string();
        self
    }

    pub fn access(mut self, mode: &str) -> Self {
        self.access = mode.to_string();
        self
    }

    /// Restore from VolumeSnapshot `snapshot`.
    pub fn restored_from(mut self, snapshot: &str) -> Self {
        self.data_source = Some(
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot}),
        );
        self
    }

    /// Clone claim `source`.
    pub fn cloned_from(mut self, source: &str) -> Self {
        self.data_source = Some(json!({"kind": "PersistentVolumeClaim", "name": source}));
        self
    }

    fn object(&self) -> anyhow::Result<PersistentVolumeClaim> {
        let mut spec = json!({
            "accessModes": [self.access],
            "storageClassName": self.class,
            "volumeMode": if self.block { "Block" } else { "Filesystem" },
            "resources": {"requests": {"storage": self.size}},
        });
        if let Some(ds) = &self.data_source {
            spec["dataSource"] = ds.clone();
        }
        from_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {"name": self.name, "namespace": NS}, "spec": spec}))
    }
}

/// A running pod and where its volumes are on its node.
#[derive(Clone, Debug)]
pub struct RunningPod {
    pub name: String,
    pub uid: String,
    pub node: String,
    /// claim name → (PV name, block).
    pub volumes: BTreeMap<String, (String, bool)>,
    kubelet_dir: PathBuf,
}

impl RunningPod {
    /// What the pod's container sees of claim `claim`: a directory, or the
    /// device file of a block claim.
    pub fn volume(&self, claim: &str) -> anyhow::Result<PathBuf> {
        let (pv, block) = self
            .volumes
            .get(claim)
            .ok_or_else(|| anyhow!("pod {} does not mount claim {claim}", self.name))?;
        Ok(kubelet::volume_path(
            &self.kubelet_dir,
            &self.uid,
            pv,
            *block,
        ))
    }
}

pub fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

// === impl Storage ===

impl Storage {
    /// Starts a lab with `vms` guest nodes and the storage stack on it.
    pub async fn start(vms: usize) -> anyhow::Result<Storage> {
        Storage::start_with_latency(vms, Duration::ZERO).await
    }

    /// [`Storage::start`], each hotplug phase taking at least `latency`
    /// (attachments then take a while, as on a real cluster).
    pub async fn start_with_latency(vms: usize, latency: Duration) -> anyhow::Result<Storage> {
        let lab = crate::common::start_lab_for(
            BINARY,
            "kubevirt-csi-driver",
            LabConfig {
                vms,
                devices: true,
                hotplug_step_latency: latency,
                ..LabConfig::default()
            },
        )
        .await?;
        note_lab_dir(&lab.dir);
        let client = lab.guest_client();
        lab_guest::crds::install(&client, WAIT).await?;
        create_classes(&client).await?;

        let controller = start_controller(&lab).await?;
        // Lazy: the socket file appears at bind(), a moment before the
        // driver listens; the sidecars (re)connect on use.
        let channel = lab_guest::connect_lazy(&controller_socket(&lab));
        let sidecars = Task(tokio::spawn(lab_guest::run_all(
            channel,
            client.clone(),
            SidecarConfig::default(),
        )));

        let mut nodes = Vec::new();
        for name in &lab.nodes {
            let node = GuestNode::new(name, &lab.dir.join("nodes").join(name));
            node.prepare()
                .with_context(|| format!("prepare node {name}"))?;
            let plugin = daemon::spawn(
                BINARY,
                node.plugin_args(&lab.guest_kubeconfig)
                    .into_iter()
                    .chain(["--v=5".to_string()]),
                [("RUST_BACKTRACE", "1")],
                &lab.dir.join("logs").join(format!("node-{name}.log")),
            )?;
            let kubelet = start_kubelet(&client, &node, &lab);
            nodes.push(NodeSide {
                node,
                plugin,
                kubelet: Some(kubelet),
            });
        }
        let storage = Storage {
            lab,
            client,
            controller,
            nodes,
            sidecars,
        };
        storage.registered().await?;
        Ok(storage)
    }

    /// Stops the kubelet stand-in of `node` (its mounts stay).
    pub async fn stop_kubelet(&mut self, node: &str) -> anyhow::Result<()> {
        let side = self
            .nodes
            .iter_mut()
            .find(|n| n.node.node_name == node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        if let Some(kubelet) = side.kubelet.take() {
            kubelet.stop().await;
        }
        Ok(())
    }

    /// Starts the kubelet stand-in of `node` again.
    pub fn start_kubelet(&mut self, node: &str) -> anyhow::Result<()> {
        let client = self.client.clone();
        let side = self
            .nodes
            .iter_mut()
            .find(|n| n.node.node_name == node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        side.kubelet = Some(start_kubelet(&client, &side.node, &self.lab));
        Ok(())
    }

    /// Waits until every node's plugin is registered (its CSINode names the driver).
    async fn registered(&self) -> anyhow::Result<()> {
        let csinodes: Api<k8s_openapi::api::storage::v1::CSINode> = Api::all(self.client.clone());
        for n in &self.nodes {
            wait::until(&csinodes, &n.node.node_name, WAIT, |c| {
                c.filter(|c| c.spec.drivers.iter().any(|d| d.name == DRIVER))
                    .map(|_| ())
            })
            .await
            .map_err(|e| {
                anyhow!(
                    "node {} not registered: {e}\n{}",
                    n.node.node_name,
                    self.logs()
                )
            })?;
        }
        Ok(())
    }

    /// Stops everything and hands back `outcome` (its error first).
    pub async fn finish(self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let Storage {
            lab,
            mut controller,
            nodes,
            sidecars,
            ..
        } = self;
        drop(sidecars);
        for mut n in nodes {
            drop(n.kubelet);
            n.plugin.terminate(Duration::from_secs(5)).await?;
        }
        controller.terminate(Duration::from_secs(5)).await?;
        let dir = lab.dir.clone();
        lab.shutdown().await?;
        let left = mounts::mounts_under(&dir);
        outcome?;
        if !left.is_empty() {
            bail!("mounts left after shutdown: {left:?}");
        }
        Ok(())
    }

    pub fn pvcs(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    pub fn attachments(&self) -> Api<VolumeAttachment> {
        Api::all(self.client.clone())
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&GuestNode> {
        self.nodes
            .iter()
            .map(|n| &n.node)
            .find(|n| n.node_name == name)
            .ok_or_else(|| anyhow!("no node {name}"))
    }

    /// The tails of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- controller ---\n{}",
            crate::common::tail(&self.controller.log(), 40)
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "\n--- node {} ---\n{}",
                n.node.node_name,
                crate::common::tail(&n.plugin.log(), 30)
            ));
        }
        out
    }

    /// Creates `claim`.
    pub async fn create_claim(&self, claim: &Claim) -> anyhow::Result<PersistentVolumeClaim> {
        Ok(self
            .pvcs()
            .create(&PostParams::default(), &claim.object()?)
            .await?)
    }

    /// Waits until claim `name` is Bound; its PV.
    pub async fn bound(&self, name: &str) -> anyhow::Result<PersistentVolume> {
        let pv = wait::until(&self.pvcs(), name, WAIT, |p| {
            p.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .and_then(|p| p.spec.as_ref().and_then(|s| s.volume_name.clone()))
        })
        .await
        .map_err(|e| anyhow!("claim {name} not bound: {e}\n{}", self.logs()))?;
        Ok(self.pvs().get(&pv).await?)
    }

    /// Creates a claim and waits until it is bound; its PV.
    pub async fn provision(&self, claim: &Claim) -> anyhow::Result<PersistentVolume> {
        self.create_claim(claim).await?;
        self.bound(&claim.name).await
    }

    /// Creates pod `name` on `node` mounting `claims` (block claims as
    /// devices) and waits until it runs.
    pub async fn run_pod(
        &self,
        name: &str,
        node: &str,
        claims: &[&str],
    ) -> anyhow::Result<RunningPod> {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let mut devices = Vec::new();
        let mut pvs = BTreeMap::new();
        for (i, claim) in claims.iter().enumerate() {
            let pv = self.bound(claim).await?;
            let block = pv.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
            let volume = format!("v{i}");
            volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}));
            if block {
                devices.push(json!({"name": volume, "devicePath": format!("/dev/xvd{i}")}));
            } else {
                mounts.push(json!({"name": volume, "mountPath": format!("/data/{claim}")}));
            }
            pvs.insert(claim.to_string(), (pv.name_any(), block));
        }
        let pod: Pod = from_json(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"],
                                "volumeMounts": mounts, "volumeDevices": devices}],
                "volumes": volumes,
            }
        }))?;
        let pod = self.pods().create(&PostParams::default(), &pod).await?;
        self.running(name).await?;
        Ok(RunningPod {
            name: name.to_string(),
            uid: pod.uid().unwrap_or_default(),
            node: node.to_string(),
            volumes: pvs,
            kubelet_dir: self.node(node)?.kubelet_dir.clone(),
        })
    }

    /// Waits until pod `name` runs and is ready.
    pub async fn running(&self, name: &str) -> anyhow::Result<()> {
        let result = wait::until(&self.pods(), name, WAIT, wait::pod_ready).await;
        if let Err(e) = result {
            let events = self.events_of(name).await.unwrap_or_default();
            bail!(
                "pod {name} not running: {e}\nevents: {events:#?}\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    /// Deletes pod `name` and waits until it is gone (its volumes down).
    pub async fn delete_pod(&self, name: &str) -> anyhow::Result<()> {
        self.pods().delete(name, &DeleteParams::default()).await?;
        let result = wait::until(&self.pods(), name, WAIT, |p| p.is_none().then_some(())).await;
        if let Err(e) = result {
            let events = self.events_of(name).await.unwrap_or_default();
            bail!(
                "pod {name} not gone: {e}\nevents: {events:#?}\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    /// Deletes claim `name` and waits until its PV is gone.
    pub async fn delete_claim(&self, name: &str) -> anyhow::Result<()> {
        let pv = self
            .pvcs()
            .get(name)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .unwrap_or_default();
        self.pvcs().delete(name, &DeleteParams::default()).await?;
        wait::until(&self.pvs(), &pv, WAIT, |p| p.is_none().then_some(()))
            .await
            .map_err(|e| anyhow!("PV {pv} of claim {name} not deleted: {e}\n{}", self.logs()))?;
        Ok(())
    }

    /// Waits until no VolumeAttachment names PV `pv`.
    pub async fn detached(&self, attachment: &str) -> anyhow::Result<()> {
        wait::until(&self.attachments(), attachment, WAIT, |a| {
            a.is_none().then_some(())
        })
        .await
        .map_err(|e| {
            anyhow!(
                "VolumeAttachment {attachment} not gone: {e}\n{}",
                self.logs()
            )
        })?;
        Ok(())
    }

    /// "reason: message" of the Events about object `name` in [`NS`].
    pub async fn events_of(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?;
        Ok(list
            .items
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                )
            })
            .collect())
    }

    /// Waits for an Event about object `name` with `reason` whose message
    /// names `naming`; its message. Earlier Events of that reason (a
    /// transient failure the retry outgrows) are passed over.
    pub async fn event(&self, name: &str, reason: &str, naming: &str) -> anyhow::Result<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let config = watcher::Config::default().fields(&format!("involvedObject.name={name}"));
        let found = async {
            let mut stream = std::pin::pin!(watcher::watcher(events, config));
            while let Some(event) = stream.next().await {
                if let watcher::Event::Apply(e) | watcher::Event::InitApply(e) = event?
                    && e.reason.as_deref() == Some(reason)
                    && e.message.as_deref().is_some_and(|m| m.contains(naming))
                {
                    return Ok(e.message.unwrap_or_default());
                }
            }
            Err(anyhow!("event watch ended"))
        };
        tokio::time::timeout(WAIT, found).await.map_err(|_| {
            anyhow!("no {reason} event about {name} naming {naming:?} within {WAIT:?}")
        })?
    }

    /// Mount points left under node `node`'s kubelet directory.
    pub fn mounts_on(&self, node: &str) -> anyhow::Result<Vec<PathBuf>> {
        Ok(mounts::mounts_under(&self.node(node)?.kubelet_dir))
    }
}

async fn create_classes(client: &Client) -> anyhow::Result<()> {
    for (name, params) in [
        (STORAGE_CLASS, json!({"bus": "scsi"})),
        (
            XFS_STORAGE_CLASS,
            json!({"bus": "scsi", "csi.storage.k8s.io/fstype": "xfs"}),
        ),
    ] {
        let sc: StorageClass = from_json(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": DRIVER,
            "parameters": params,
            "allowVolumeExpansion": true,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }))?;
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &sc)
            .await?;
    }
    let vsc = VolumeSnapshotClass::new(SNAPSHOT_CLASS, DRIVER, "Delete");
    Api::<VolumeSnapshotClass>::all(client.clone())
        .create(&PostParams::default(), &vsc)
        .await?;
    Ok(())
}

fn controller_socket(lab: &Lab) -> PathBuf {
    lab.dir.join("controller/csi.sock")
}

/// The driver's controller service, on the lab's infra and guest clusters.
async fn start_controller(lab: &Lab) -> anyhow::Result<Daemon> {
    let socket = controller_socket(lab);
    let dir = socket.parent().unwrap_or(&lab.dir).to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let labels: Vec<String> = lab
        .infra_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!(
            "--infra-cluster-kubeconfig={}",
            lab.infra_kubeconfig.display()
        ),
        format!("--infra-cluster-namespace={}", lab.infra_namespace),
        format!("--infra-cluster-labels={}", labels.join(",")),
        format!(
            "--tenant-cluster-kubeconfig={}",
            lab.guest_kubeconfig.display()
        ),
        "--run-node-service=false".to_string(),
        "--run-controller-service=true".to_string(),
        "--v=5".to_string(),
    ];
    wait::remove_stale(&socket)?;
    let daemon = daemon::spawn(
        BINARY,
        args,
        [("RUST_BACKTRACE", "1")],
        &lab.dir.join("logs/controller.log"),
    )?;
    if let Err(e) = wait::file_exists(&socket, true, WAIT).await {
        bail!("controller socket did not appear: {e}\n{}", daemon.log());
    }
    Ok(daemon)
}

// === data through a pod's volume ===

/// Writes `content` to `path` and makes it durable (file and directory).
pub fn write_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// Writes `content` at `offset` of a block device and flushes it to the disk.
pub fn write_device(device: &Path, offset: u64, content: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(device)
        .with_context(|| format!("open {}", device.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}

/// Reads `len` bytes at `offset` of a block device, bypassing whatever this
/// host cached of it (another node may have written the disk).
pub fn read_device(device: &Path, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .open(device)
        .with_context(|| format!("open {}", device.display()))?;
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .with_context(|| format!("drop the cache of {}", device.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Size of the filesystem mounted at `path`, in bytes (what `df` reports).
pub fn fs_size(path: &Path) -> anyhow::Result<u64> {
    let st =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.blocks() * st.fragment_size())
}
