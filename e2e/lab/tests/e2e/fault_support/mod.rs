//! Shared pieces of the fault-injection tests: a seeded random source (the
//! seed is printed, and `FAULT_SEED` replays a run), the retry policy of a
//! CSI sidecar (retry what a crash or an overloaded server answers, fail on
//! anything else, count what was retried), the volume lifecycle a sidecar
//! drives for one volume, and the leak check: no DataVolume, no hotplugged
//! volume on any VM or VMI of the tenant.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kubevirt_csi_proto::v1::controller_client::ControllerClient;
use kubevirt_csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, CreateVolumeRequest,
    DeleteVolumeRequest,
};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::daemon::Daemon;
use kubevirt_lab::{Lab, wait};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The deadline of each CSI call, as the sidecars' `--timeout`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts of a call.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `FAULT_SEED`, else from the clock; prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: FAULT_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_micros().max(1) as u64;
        lo + Duration::from_micros(self.next() % span)
    }
}

/// After the work is done, the kill schedule may end with one more kill,
/// so that the final state is reached by a fresh process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Finally {
    KillOnceMore,
    LeaveRunning,
}

/// Kills `daemon` with SIGKILL and starts it again with the same command
/// line at random moments drawn from `every`, until `done` turns true or
/// `max_kills` kills happened; returns the number of kills.
pub async fn kill_at_random(
    daemon: &mut Daemon,
    rng: &mut Rng,
    every: (Duration, Duration),
    max_kills: usize,
    mut done: watch::Receiver<bool>,
    finally: Finally,
) -> anyhow::Result<usize> {
    let mut kills = 0usize;
    while kills < max_kills {
        let pause = rng.between(every.0, every.1);
        tokio::select! {
            // The fault schedule: a random moment, not a wait for a state.
            _ = tokio::time::sleep(pause) => {}
            _ = done.wait_for(|done| *done) => break,
        }
        tokio::task::block_in_place(|| daemon.restart())?;
        kills += 1;
    }
    if finally == Finally::KillOnceMore {
        tokio::task::block_in_place(|| daemon.restart())?;
        kills += 1;
    }
    Ok(kills)
}

/// What the retries saw: gRPC code name -> count.
#[derive(Default)]
pub struct Retries(Mutex<BTreeMap<String, u64>>);

impl Retries {
    fn note(&self, call: &str, s: &Status) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(format!("{call}: {:?}", s.code())).or_default() += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    pub fn summary(&self) -> String {
        self.0.lock().map(|m| format!("{m:?}")).unwrap_or_default()
    }

    /// Whether any retry had code `code`.
    pub fn saw(&self, code: Code) -> bool {
        let name = format!(": {code:?}");
        self.0
            .lock()
            .map(|m| m.keys().any(|k| k.ends_with(&name)))
            .unwrap_or(false)
    }
}

/// Codes a sidecar retries: the driver is gone or restarting (the client
/// reports Unavailable, or Unknown for a connection cut mid-call), the call
/// was cut short (Cancelled, DeadlineExceeded), another call holds the
/// volume (Aborted), or the infra API failed for now (Unavailable,
/// Internal). Anything else is an answer, and a wrong one fails the test.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// A client of the driver's socket that reconnects: after a transport
/// failure the next attempt dials a fresh connection, as a sidecar's gRPC
/// client does, instead of reusing one the crash broke.
pub struct Conn {
    socket: PathBuf,
    client: Option<ControllerClient<Channel>>,
}

impl Conn {
    pub fn new(socket: &Path) -> Conn {
        Conn {
            socket: socket.to_path_buf(),
            client: None,
        }
    }

    fn client(&mut self) -> ControllerClient<Channel> {
        self.client
            .get_or_insert_with(|| ControllerClient::new(lab_guest::connect_lazy(&self.socket)))
            .clone()
    }
}

/// Runs `call` until it succeeds, backing off like a sidecar (10 ms
/// doubling to 200 ms) and reconnecting after a failure; a code that is
/// not [`retryable`] is returned.
pub async fn retry<T, F, Fut>(
    retries: &Retries,
    what: &str,
    conn: &mut Conn,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut(ControllerClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut backoff = Duration::from_millis(10);
    loop {
        match call(conn.client()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if retryable(s.code()) => {
                retries.note(what, &s);
                conn.client = None;
                // The sidecar's backoff between attempts (not a wait for a state).
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(s) => return Err(s),
        }
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// What a sidecar does for one volume: CreateVolume, ControllerPublish to
/// `node_id`, ControllerUnpublish, DeleteVolume, each retried until done.
pub async fn volume_lifecycle(
    socket: &Path,
    retries: &Retries,
    create: CreateVolumeRequest,
    node_id: &str,
) -> anyhow::Result<()> {
    let name = create.name.clone();
    let mut conn = Conn::new(socket);
    let conn = &mut conn;
    let volume = retry(retries, "CreateVolume", conn, |mut csi| {
        let req = request(create.clone());
        async move { csi.create_volume(req).await }
    })
    .await
    .map_err(|s| anyhow!("CreateVolume {name}: {s:?}"))?
    .volume
    .ok_or_else(|| anyhow!("CreateVolume {name}: no volume"))?;
    let publish = ControllerPublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        node_id: node_id.to_string(),
        volume_capability: create.volume_capabilities.first().cloned(),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    };
    retry(retries, "ControllerPublishVolume", conn, |mut csi| {
        let req = request(publish.clone());
        async move { csi.controller_publish_volume(req).await }
    })
    .await
    .map_err(|s| anyhow!("ControllerPublishVolume {name}: {s:?}"))?;
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        node_id: node_id.to_string(),
        ..Default::default()
    };
    retry(retries, "ControllerUnpublishVolume", conn, |mut csi| {
        let req = request(unpublish.clone());
        async move { csi.controller_unpublish_volume(req).await }
    })
    .await
    .map_err(|s| anyhow!("ControllerUnpublishVolume {name}: {s:?}"))?;
    let delete = DeleteVolumeRequest {
        volume_id: volume.volume_id.clone(),
        ..Default::default()
    };
    retry(retries, "DeleteVolume", conn, |mut csi| {
        let req = request(delete.clone());
        async move { csi.delete_volume(req).await }
    })
    .await
    .map_err(|s| anyhow!("DeleteVolume {name}: {s:?}"))?;
    Ok(())
}

/// Waits (watching) until each of `names` has no DataVolume, then checks
/// that no DataVolume and no hotplugged volume of the tenant is left on any
/// VM or VMI.
pub async fn assert_nothing_left(
    lab: &Lab,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let infra = lab.infra_client();
    let ns = &lab.infra_namespace;
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), ns);
    for name in names {
        wait::until(&dvs, name, timeout, |dv| dv.is_none().then_some(()))
            .await
            .map_err(|e| anyhow!("DataVolume {name} still there: {e}"))?;
    }
    let left: Vec<String> = dvs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    if !left.is_empty() {
        bail!("DataVolumes left: {left:?}");
    }
    let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), ns);
    for vm in vms.list(&ListParams::default()).await?.items {
        let hot: Vec<&str> = vm
            .template_volumes()
            .iter()
            .filter(|v| v.is_hotpluggable())
            .map(|v| v.name.as_str())
            .collect();
        if !hot.is_empty() {
            bail!("VM {} still has hotplugged volumes {hot:?}", vm.name_any());
        }
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra, ns);
    for vmi in vmis.list(&ListParams::default()).await?.items {
        let hot: Vec<&str> = vmi
            .status
            .iter()
            .flat_map(|s| s.volume_status.iter())
            .filter(|v| v.hotplug_volume.is_some())
            .map(|v| v.name.as_str())
            .collect();
        if !hot.is_empty() {
            bail!(
                "VMI {} still reports hotplugged volumes {hot:?}",
                vmi.name_any()
            );
        }
    }
    Ok(())
}
