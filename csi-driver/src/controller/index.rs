//! The watch-fed index of the tenant's infra objects: DataVolumes, VMs and
//! VolumeSnapshots carrying the tenant labels, and every VMI of the infra
//! namespace (so the single-node attach guard sees volumes on any VMI).
//!
//! It keeps the compact records of [`super::entries`] plus two reverse maps
//! (volume → VMIs reporting it, volume → VMs listing it), so lookups and the
//! attach guard never call the API server. Writers are the watch tasks of
//! [`super::watch`]; every change bumps a generation on a `tokio::sync::watch`
//! channel, which is how RPCs wait for a state ([`Index::wait_for`]) without
//! polling.
//!
//! A kind the infra cluster does not serve (its CRD is not installed: common
//! for snapshots) is recorded as such, not as a failing watch: calls needing
//! it fail at once with [`Error::NotServed`], after asking its watcher to
//! look again ([`Index::wait_synced`]), so a CRD installed since is noticed
//! on the next call rather than after the watcher's long retry delay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::entries::{SnapshotEntry, VmEntry, VmiEntry, VolumeEntry};
use crate::error::{Error, Result};
use crate::health::{Readiness, ReadinessCheck};

/// The kinds the index watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DataVolume = 0,
    VirtualMachine = 1,
    VirtualMachineInstance = 2,
    VolumeSnapshot = 3,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DataVolume => "DataVolume",
            Kind::VirtualMachine => "VirtualMachine",
            Kind::VirtualMachineInstance => "VirtualMachineInstance",
            Kind::VolumeSnapshot => "VolumeSnapshot",
        }
    }
}

/// Kinds the controller cannot serve without (snapshots are optional: an
/// infra cluster may lack the snapshot CRDs).
pub const CORE_KINDS: [Kind; 3] = [
    Kind::DataVolume,
    Kind::VirtualMachine,
    Kind::VirtualMachineInstance,
];

#[derive(Clone, Debug, Default)]
struct SyncState {
    synced: bool,
    error: Option<String>,
    /// The API the infra cluster answered "not found" for (e.g.
    /// `snapshot.storage.k8s.io/v1 volumesnapshots`): the kind does not
    /// exist there, and its cache is empty.
    not_served: Option<String>,
    /// The last re-check request (see [`Index::request_recheck`]) the "not
    /// served" answer covers: it comes from an attempt begun after it.
    not_served_answers: u64,
}

/// The indexed state. Read through [`Index::read`].
#[derive(Debug, Default)]
pub struct State {
    volumes: BTreeMap<String, VolumeEntry>,
    vms: HashMap<String, VmEntry>,
    vmis: HashMap<String, VmiEntry>,
    snapshots: BTreeMap<String, SnapshotEntry>,
    /// volume → VMIs whose volumeStatus lists it
    on_vmis: HashMap<String, BTreeSet<String>>,
    /// volume → VMs whose template lists it
    on_vms: HashMap<String, BTreeSet<String>>,
    sync: [SyncState; 4],
}

fn unlink(rev: &mut HashMap<String, BTreeSet<String>>, volume: &str, holder: &str) {
    if let Some(set) = rev.get_mut(volume) {
        set.remove(holder);
        if set.is_empty() {
            rev.remove(volume);
        }
    }
}

fn link(rev: &mut HashMap<String, BTreeSet<String>>, volume: &str, holder: &str) {
    rev.entry(volume.to_string())
        .or_default()
        .insert(holder.to_string());
}

// === impl State: reads ===

impl State {
    pub fn volume(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.get(name)
    }

    pub fn volumes(&self) -> &BTreeMap<String, VolumeEntry> {
        &self.volumes
    }

    pub fn vm(&self, name: &str) -> Option<&VmEntry> {
        self.vms.get(name)
    }

    pub fn vmi(&self, name: &str) -> Option<&VmiEntry> {
        self.vmis.get(name)
    }

    pub fn snapshot(&self, name: &str) -> Option<&SnapshotEntry> {
        self.snapshots.get(name)
    }

    pub fn snapshots(&self) -> &BTreeMap<String, SnapshotEntry> {
        &self.snapshots
    }

    /// VMIs whose status lists the volume.
    pub fn vmis_with(&self, volume: &str) -> impl Iterator<Item = &str> {
        self.on_vmis
            .get(volume)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// VMs whose template lists the volume.
    pub fn vms_with(&self, volume: &str) -> impl Iterator<Item = &str> {
        self.on_vms
            .get(volume)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every VM or VMI holding the volume (sorted, deduplicated).
    pub fn holders(&self, volume: &str) -> BTreeSet<&str> {
        self.vmis_with(volume)
            .chain(self.vms_with(volume))
            .collect()
    }

    pub fn is_synced(&self, kind: Kind) -> bool {
        self.sync[kind as usize].synced
    }

    pub fn error(&self, kind: Kind) -> Option<&str> {
        self.sync[kind as usize].error.as_deref()
    }

    /// The API of `kind`, when the infra cluster does not serve it.
    pub fn not_served(&self, kind: Kind) -> Option<&str> {
        self.sync[kind as usize].not_served.as_deref()
    }

    fn not_served_answers(&self, kind: Kind) -> u64 {
        self.sync[kind as usize].not_served_answers
    }
}

// === impl State: writes (from the watch tasks) ===

impl State {
    pub(super) fn upsert_volume(&mut self, name: String, entry: Option<VolumeEntry>) {
        match entry {
            Some(e) => {
                self.volumes.insert(name, e);
            }
            None => {
                self.volumes.remove(&name);
            }
        }
    }

    pub(super) fn replace_volumes(&mut self, all: Vec<(String, VolumeEntry)>) {
        self.volumes = all.into_iter().collect();
    }

    pub(super) fn upsert_vm(&mut self, name: String, entry: Option<VmEntry>) {
        if let Some(old) = self.vms.remove(&name) {
            for v in &old.volumes {
                unlink(&mut self.on_vms, &v.name, &name);
            }
        }
        if let Some(e) = entry {
            for v in &e.volumes {
                link(&mut self.on_vms, &v.name, &name);
            }
            self.vms.insert(name, e);
        }
    }

    pub(super) fn replace_vms(&mut self, all: Vec<(String, VmEntry)>) {
        self.vms.clear();
        self.on_vms.clear();
        for (name, e) in all {
            self.upsert_vm(name, Some(e));
        }
    }

    pub(super) fn upsert_vmi(&mut self, name: String, entry: Option<VmiEntry>) {
        if let Some(old) = self.vmis.remove(&name) {
            for v in &old.volumes {
                unlink(&mut self.on_vmis, &v.name, &name);
            }
        }
        if let Some(e) = entry {
            for v in &e.volumes {
                link(&mut self.on_vmis, &v.name, &name);
            }
            self.vmis.insert(name, e);
        }
    }

    pub(super) fn replace_vmis(&mut self, all: Vec<(String, VmiEntry)>) {
        self.vmis.clear();
        self.on_vmis.clear();
        for (name, e) in all {
            self.upsert_vmi(name, Some(e));
        }
    }

    pub(super) fn upsert_snapshot(&mut self, name: String, entry: Option<SnapshotEntry>) {
        match entry {
            Some(e) => {
                self.snapshots.insert(name, e);
            }
            None => {
                self.snapshots.remove(&name);
            }
        }
    }

    pub(super) fn replace_snapshots(&mut self, all: Vec<(String, SnapshotEntry)>) {
        self.snapshots = all.into_iter().collect();
    }

    pub(super) fn mark_synced(&mut self, kind: Kind) {
        let sync = &mut self.sync[kind as usize];
        sync.synced = true;
        sync.error = None;
        sync.not_served = None;
    }

    /// A failed attempt (`Some`), or none pending. A failure other than "not
    /// served" says nothing about whether the API exists: that is unknown
    /// again.
    pub(super) fn mark_error(&mut self, kind: Kind, error: Option<String>) {
        let sync = &mut self.sync[kind as usize];
        if error.is_some() {
            sync.not_served = None;
        }
        sync.error = error;
    }

    /// The infra cluster does not serve `api`: nothing of the kind exists,
    /// and its cache is emptied. `answers`: the last re-check request made
    /// before the attempt that found it (see [`Index::rechecks_requested`]).
    pub(super) fn mark_not_served(&mut self, kind: Kind, api: String, answers: u64) {
        match kind {
            Kind::DataVolume => self.replace_volumes(Vec::new()),
            Kind::VirtualMachine => self.replace_vms(Vec::new()),
            Kind::VirtualMachineInstance => self.replace_vmis(Vec::new()),
            Kind::VolumeSnapshot => self.replace_snapshots(Vec::new()),
        }
        let sync = &mut self.sync[kind as usize];
        sync.synced = false;
        sync.error = None;
        sync.not_served = Some(api);
        sync.not_served_answers = answers;
    }
}

/// How long a call waits for the re-check it asked for (never past its own
/// deadline). One list request: far less than this unless the API server is
/// struggling, and then the call still answers in good time.
const RECHECK_WAIT: Duration = Duration::from_secs(5);

/// The shared index.
#[derive(Debug)]
pub struct Index {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    /// Per kind: a call asks the watcher to check again now whether the
    /// infra cluster serves the kind (instead of at the end of its backoff).
    recheck: [Notify; 4],
    /// Per kind: re-check requests made so far (numbering them).
    rechecks: [AtomicU64; 4],
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
            changes: watch::Sender::new(0),
            recheck: Default::default(),
            rechecks: Default::default(),
        }
    }

    /// Ask the watcher of `kind` to check again at once whether the infra
    /// cluster serves it. Requests made while it is busy are kept (one).
    /// Returns the request's number.
    pub fn request_recheck(&self, kind: Kind) -> u64 {
        let n = self.rechecks[kind as usize].fetch_add(1, Ordering::SeqCst) + 1;
        self.recheck[kind as usize].notify_one();
        n
    }

    /// The re-check requests of `kind` so far; the watcher reads it before
    /// each attempt, which answers every request up to it.
    pub(super) fn rechecks_requested(&self, kind: Kind) -> u64 {
        self.rechecks[kind as usize].load(Ordering::SeqCst)
    }

    /// Resolves when a re-check of `kind` is asked for (the watcher's side).
    pub(super) async fn recheck_requested(&self, kind: Kind) {
        self.recheck[kind as usize].notified().await
    }

    /// `NotServed` if the infra cluster did not serve `kind` when last
    /// checked; asks for a re-check then, so that the next call knows. For
    /// calls that cannot wait for the answer.
    pub fn check_served(&self, kind: Kind) -> Result<()> {
        match self.read(|s| s.not_served(kind).map(str::to_string)) {
            None => Ok(()),
            Some(api) => {
                self.request_recheck(kind);
                Err(Error::NotServed { api })
            }
        }
    }

    /// For the kinds last found not served: ask their watchers to look again
    /// and wait (at most [`RECHECK_WAIT`], never past `deadline`) for the
    /// answer, so a CRD installed since is served to this very call.
    async fn recheck_not_served(&self, kinds: &[Kind], deadline: Instant) {
        let unserved: Vec<Kind> = self.read(|s| {
            kinds
                .iter()
                .copied()
                .filter(|k| s.not_served(*k).is_some())
                .collect()
        });
        if unserved.is_empty() {
            return;
        }
        let asked: Vec<(Kind, u64)> = unserved
            .into_iter()
            .map(|k| (k, self.request_recheck(k)))
            .collect();
        let until = deadline.min(Instant::now() + RECHECK_WAIT);
        self.wait_for(until, |s| {
            asked
                .iter()
                .all(|(k, n)| s.not_served(*k).is_none() || s.not_served_answers(*k) >= *n)
                .then_some(())
        })
        .await;
    }

    /// Read the state (briefly: never across an await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Change the state and wake the waiters.
    pub(super) fn write(&self, f: impl FnOnce(&mut State)) {
        {
            let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
            f(&mut guard);
        }
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wait until `check` returns `Some`, re-checking on every change; `None`
    /// once `deadline` passes.
    pub async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changes.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = self.read(&mut check) {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Sender gone (shutting down) or deadline passed.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Wait until the watch reflects one of our own writes (read-your-writes
    /// for the next call), at most `settle` and never past `deadline`.
    /// Returns whether it did; not seeing it in time is not an error.
    pub async fn settle(
        &self,
        deadline: Instant,
        settle: std::time::Duration,
        check: impl FnMut(&State) -> bool,
    ) -> bool {
        let mut check = check;
        let until = deadline.min(Instant::now() + settle);
        self.wait_for(until, |s| check(s).then_some(()))
            .await
            .is_some()
    }

    /// Wait until the kinds are synced, or `Unavailable` at the deadline;
    /// `NotServed` at once if the infra cluster does not serve one of them
    /// (after a re-check, see [`Self::recheck_not_served`]).
    pub async fn wait_synced(&self, kinds: &[Kind], deadline: Instant) -> Result<()> {
        self.recheck_not_served(kinds, deadline).await;
        let done = self
            .wait_for(deadline, |s| {
                if let Some(api) = kinds.iter().find_map(|k| s.not_served(*k)) {
                    return Some(Err(Error::NotServed {
                        api: api.to_string(),
                    }));
                }
                kinds.iter().all(|k| s.is_synced(*k)).then_some(Ok(()))
            })
            .await;
        if let Some(done) = done {
            return done;
        }
        let why = self.read(|s| {
            kinds
                .iter()
                .filter(|k| !s.is_synced(**k))
                .map(|k| match s.error(*k) {
                    Some(e) => format!("{}: {e}", k.as_str()),
                    None => format!("{}: not listed yet", k.as_str()),
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        Err(Error::Unavailable(format!(
            "infra caches are not synced ({why})"
        )))
    }
}

impl ReadinessCheck for Index {
    fn readiness(&self) -> Readiness {
        self.read(|s| {
            for kind in CORE_KINDS {
                if let Some(api) = s.not_served(kind) {
                    return Readiness::Failing(format!("the infra cluster does not serve {api}"));
                }
                match (s.is_synced(kind), s.error(kind)) {
                    (true, None) => {}
                    (true, Some(e)) => {
                        return Readiness::Failing(format!(
                            "infra {} watch failing: {e}",
                            kind.as_str()
                        ));
                    }
                    (false, e) => {
                        return Readiness::Starting(format!(
                            "infra {} cache not synced{}",
                            kind.as_str(),
                            e.map(|e| format!(": {e}")).unwrap_or_default()
                        ));
                    }
                }
            }
            Readiness::Ready
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::entries::{VmVolume, VmiVolume};
    use std::sync::Arc;
    use std::time::Duration;

    fn vmi_with(names: &[&str]) -> VmiEntry {
        VmiEntry {
            tenant: true,
            phase: "Running".into(),
            volumes: names
                .iter()
                .map(|n| VmiVolume {
                    name: n.to_string(),
                    phase: Some("Ready".into()),
                    hotplug: true,
                    message: None,
                    failure: None,
                })
                .collect(),
        }
    }

    #[test]
    fn reverse_maps_follow_updates() {
        let idx = Index::new();
        idx.write(|s| {
            s.upsert_vmi("vm1".into(), Some(vmi_with(&["pvc-1", "pvc-2"])));
            s.upsert_vmi("vm2".into(), Some(vmi_with(&["pvc-1"])));
            s.upsert_vm(
                "vm3".into(),
                Some(VmEntry {
                    volumes: vec![VmVolume {
                        name: "pvc-2".into(),
                        hotpluggable: true,
                        read_only: false,
                    }],
                }),
            );
        });
        idx.read(|s| {
            assert_eq!(s.vmis_with("pvc-1").collect::<Vec<_>>(), ["vm1", "vm2"]);
            assert_eq!(
                s.holders("pvc-2").into_iter().collect::<Vec<_>>(),
                ["vm1", "vm3"]
            );
        });
        idx.write(|s| {
            s.upsert_vmi("vm1".into(), Some(vmi_with(&["pvc-2"])));
            s.upsert_vmi("vm2".into(), None);
        });
        idx.read(|s| {
            assert_eq!(s.vmis_with("pvc-1").count(), 0);
            assert!(!s.on_vmis.contains_key("pvc-1"));
        });
        idx.write(|s| s.replace_vms(Vec::new()));
        idx.read(|s| assert_eq!(s.vms_with("pvc-2").count(), 0));
    }

    #[tokio::test]
    async fn waiters_wake_on_change_and_time_out() {
        let idx = Arc::new(Index::new());
        let waiter = {
            let idx = idx.clone();
            tokio::spawn(async move {
                idx.wait_for(Instant::now() + Duration::from_secs(5), |s| {
                    s.vmi("vm1")
                        .and_then(|v| v.volume("pvc-1"))
                        .map(|v| v.is_ready())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        idx.write(|s| s.upsert_vmi("vm1".into(), Some(vmi_with(&["pvc-1"]))));
        assert_eq!(waiter.await.expect("joins"), Some(true));
        let none = idx
            .wait_for(Instant::now() + Duration::from_millis(20), |s| {
                s.vmi("nope").map(|_| ())
            })
            .await;
        assert_eq!(none, None);
    }

    const SNAP_API: &str = "snapshot.storage.k8s.io/v1 volumesnapshots";

    fn a_snapshot() -> SnapshotEntry {
        let vs = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "snap-1"},
            "spec": {"source": {"persistentVolumeClaimName": "pvc-1"}}
        }))
        .expect("parses");
        crate::controller::entries::snapshot_entry(&vs)
    }

    #[tokio::test]
    async fn not_served_answers_at_once_after_a_recheck() {
        let idx = Arc::new(Index::new());
        idx.write(|s| {
            s.upsert_snapshot("snap-1".into(), Some(a_snapshot()));
            s.mark_synced(Kind::VolumeSnapshot);
            s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), 0);
        });
        idx.read(|s| assert!(s.snapshots().is_empty(), "nothing exists unserved"));
        // A watcher that re-checks when asked and finds it still missing.
        let watcher = {
            let idx = idx.clone();
            tokio::spawn(async move {
                idx.recheck_requested(Kind::VolumeSnapshot).await;
                let asked = idx.rechecks_requested(Kind::VolumeSnapshot);
                idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), asked));
            })
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let err = idx
            .wait_synced(&[Kind::VolumeSnapshot], deadline)
            .await
            .expect_err("not served");
        assert!(
            matches!(&err, Error::NotServed { api } if api == SNAP_API),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        watcher.await.expect("joins");
        // The core kinds are not held up by it.
        idx.write(|s| CORE_KINDS.iter().for_each(|k| s.mark_synced(*k)));
        idx.wait_synced(&CORE_KINDS, deadline)
            .await
            .expect("core kinds synced");
        assert_eq!(idx.readiness(), Readiness::Ready);
        // Calls that cannot wait fail at once and leave a re-check request.
        assert!(matches!(
            idx.check_served(Kind::VolumeSnapshot),
            Err(Error::NotServed { .. })
        ));
        tokio::time::timeout(
            Duration::from_secs(1),
            idx.recheck_requested(Kind::VolumeSnapshot),
        )
        .await
        .expect("a re-check was requested");
    }

    /// A call waiting (up to a minute) for the snapshot cache.
    fn wait_for_snapshots(idx: &Arc<Index>) -> tokio::task::JoinHandle<Result<()>> {
        let idx = idx.clone();
        tokio::spawn(async move {
            idx.wait_synced(
                &[Kind::VolumeSnapshot],
                Instant::now() + Duration::from_secs(60),
            )
            .await
        })
    }

    #[tokio::test]
    async fn an_answer_from_before_the_request_does_not_count() {
        let idx = Arc::new(Index::new());
        idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), 0));
        let call = wait_for_snapshots(&idx);
        idx.recheck_requested(Kind::VolumeSnapshot).await;
        // An attempt begun before the call asked ends: not its answer.
        idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), 0));
        // Single-threaded runtime: these let the call run until it waits again.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished(), "answered by a stale attempt");
        // The attempt it asked for.
        let asked = idx.rechecks_requested(Kind::VolumeSnapshot);
        assert_eq!(asked, 1);
        idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), asked));
        let r = tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .expect("answered")
            .expect("joins");
        assert!(matches!(r, Err(Error::NotServed { .. })));
    }

    #[tokio::test]
    async fn a_recheck_that_lists_serves_the_call() {
        let idx = Arc::new(Index::new());
        idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), 0));
        let watcher = {
            let idx = idx.clone();
            tokio::spawn(async move {
                idx.recheck_requested(Kind::VolumeSnapshot).await;
                idx.write(|s| {
                    s.replace_snapshots(vec![("snap-1".into(), a_snapshot())]);
                    s.mark_synced(Kind::VolumeSnapshot);
                });
            })
        };
        idx.wait_synced(
            &[Kind::VolumeSnapshot],
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .expect("served once the CRD is installed");
        idx.read(|s| assert!(s.snapshot("snap-1").is_some()));
        assert!(idx.check_served(Kind::VolumeSnapshot).is_ok());
        watcher.await.expect("joins");
    }

    #[tokio::test]
    async fn a_first_list_answered_not_served_ends_the_wait() {
        let idx = Arc::new(Index::new());
        let waiter = wait_for_snapshots(&idx);
        tokio::task::yield_now().await;
        idx.write(|s| s.mark_not_served(Kind::VolumeSnapshot, SNAP_API.into(), 0));
        let r = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("answers before the deadline")
            .expect("joins");
        assert!(matches!(r, Err(Error::NotServed { .. })));
    }

    #[test]
    fn readiness_reflects_sync_and_errors() {
        let idx = Index::new();
        assert!(matches!(idx.readiness(), Readiness::Starting(_)));
        idx.write(|s| CORE_KINDS.iter().for_each(|k| s.mark_synced(*k)));
        assert_eq!(idx.readiness(), Readiness::Ready);
        idx.write(|s| s.mark_error(Kind::VirtualMachine, Some("connection refused".into())));
        assert!(
            matches!(idx.readiness(), Readiness::Failing(m) if m.contains("connection refused"))
        );
        idx.write(|s| {
            s.mark_not_served(
                Kind::DataVolume,
                "cdi.kubevirt.io/v1beta1 datavolumes".into(),
                0,
            )
        });
        assert!(
            matches!(idx.readiness(), Readiness::Failing(m) if m.contains("does not serve cdi.kubevirt.io"))
        );
    }
}
