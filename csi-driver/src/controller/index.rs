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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;

use tokio::sync::watch;
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
        self.sync[kind as usize] = SyncState {
            synced: true,
            error: None,
        };
    }

    pub(super) fn mark_error(&mut self, kind: Kind, error: Option<String>) {
        self.sync[kind as usize].error = error;
    }
}

/// The shared index.
#[derive(Debug)]
pub struct Index {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
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
        }
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

    /// Wait until the kinds are synced, or `Unavailable` at the deadline.
    pub async fn wait_synced(&self, kinds: &[Kind], deadline: Instant) -> Result<()> {
        let done = self
            .wait_for(deadline, |s| {
                kinds.iter().all(|k| s.is_synced(*k)).then_some(())
            })
            .await;
        done.ok_or_else(|| {
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
            Error::Unavailable(format!("infra caches are not synced ({why})"))
        })
    }
}

impl ReadinessCheck for Index {
    fn readiness(&self) -> Readiness {
        self.read(|s| {
            for kind in CORE_KINDS {
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
    }
}
