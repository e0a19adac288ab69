//! The watch tasks that feed the [`Index`]: one kube-runtime watcher per
//! kind, label-selected by the tenant labels (VMIs: the whole namespace),
//! turning each object into its compact record as it arrives. A relist
//! (`Init` … `InitDone`) is buffered and swapped in whole, so readers never
//! see a half-listed cache. Failed attempts are recorded (health, metrics)
//! and retried with kube-runtime's default backoff.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kubevirt_infra::TenantScope;
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::snapshot::VolumeSnapshot;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::entries::{self, SnapshotEntry, VmEntry, VmiEntry, VolumeEntry};
use super::index::{Index, Kind, State};
use crate::metrics::Metrics;

/// A watched resource: how it becomes a record and where the record goes.
trait Watched:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    const KIND: Kind;
    type Entry: Send + 'static;
    /// The record, or `None` when the object is not the tenant's.
    fn entry(&self, scope: &TenantScope) -> Option<Self::Entry>;
    fn upsert(state: &mut State, name: String, entry: Option<Self::Entry>);
    fn replace(state: &mut State, all: Vec<(String, Self::Entry)>);
}

impl Watched for DataVolume {
    const KIND: Kind = Kind::DataVolume;
    type Entry = VolumeEntry;
    fn entry(&self, scope: &TenantScope) -> Option<VolumeEntry> {
        scope
            .check_volume("DataVolume", &self.metadata)
            .is_ok()
            .then(|| entries::volume_entry(self))
    }
    fn upsert(state: &mut State, name: String, entry: Option<VolumeEntry>) {
        state.upsert_volume(name, entry)
    }
    fn replace(state: &mut State, all: Vec<(String, VolumeEntry)>) {
        state.replace_volumes(all)
    }
}

impl Watched for VirtualMachine {
    const KIND: Kind = Kind::VirtualMachine;
    type Entry = VmEntry;
    fn entry(&self, scope: &TenantScope) -> Option<VmEntry> {
        scope
            .check("VirtualMachine", &self.metadata)
            .is_ok()
            .then(|| entries::vm_entry(self, scope))
    }
    fn upsert(state: &mut State, name: String, entry: Option<VmEntry>) {
        state.upsert_vm(name, entry)
    }
    fn replace(state: &mut State, all: Vec<(String, VmEntry)>) {
        state.replace_vms(all)
    }
}

impl Watched for VirtualMachineInstance {
    const KIND: Kind = Kind::VirtualMachineInstance;
    type Entry = VmiEntry;
    fn entry(&self, scope: &TenantScope) -> Option<VmiEntry> {
        Some(entries::vmi_entry(self, scope))
    }
    fn upsert(state: &mut State, name: String, entry: Option<VmiEntry>) {
        state.upsert_vmi(name, entry)
    }
    fn replace(state: &mut State, all: Vec<(String, VmiEntry)>) {
        state.replace_vmis(all)
    }
}

impl Watched for VolumeSnapshot {
    const KIND: Kind = Kind::VolumeSnapshot;
    type Entry = SnapshotEntry;
    fn entry(&self, scope: &TenantScope) -> Option<SnapshotEntry> {
        scope
            .check("VolumeSnapshot", &self.metadata)
            .is_ok()
            .then(|| entries::snapshot_entry(self))
    }
    fn upsert(state: &mut State, name: String, entry: Option<SnapshotEntry>) {
        state.upsert_snapshot(name, entry)
    }
    fn replace(state: &mut State, all: Vec<(String, SnapshotEntry)>) {
        state.replace_snapshots(all)
    }
}

fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// Run one watcher into the index until cancelled.
async fn run<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    scope: TenantScope,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer: Vec<(String, K::Entry)> = Vec::new();
    let mut failing = false;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        let Some(event) = next else { return };
        match event {
            Ok(event) => {
                if failing {
                    failing = false;
                    index.write(|s| s.mark_error(K::KIND, None));
                    tracing::info!(kind = K::KIND.as_str(), "infra watch recovered");
                }
                match event {
                    Event::Init => buffer.clear(),
                    Event::InitApply(obj) => {
                        if let Some(e) = obj.entry(&scope) {
                            buffer.push((name_of(&obj), e));
                        }
                    }
                    Event::InitDone => {
                        let all = std::mem::take(&mut buffer);
                        let n = all.len();
                        index.write(|s| {
                            K::replace(s, all);
                            s.mark_synced(K::KIND);
                        });
                        tracing::debug!(kind = K::KIND.as_str(), objects = n, "infra cache synced");
                    }
                    Event::Apply(obj) => {
                        let e = obj.entry(&scope);
                        index.write(|s| K::upsert(s, name_of(&obj), e));
                    }
                    Event::Delete(obj) => index.write(|s| K::upsert(s, name_of(&obj), None)),
                }
            }
            Err(err) => {
                metrics.watch_error(K::KIND.as_str());
                tracing::warn!(kind = K::KIND.as_str(), error = %err, "infra watch failed; retrying");
                failing = true;
                let msg = err.to_string();
                index.write(|s| s.mark_error(K::KIND, Some(msg)));
            }
        }
    }
}

/// Objects per page of the initial list. Small pages bound the memory a
/// (re)list takes: only the compact records outlive a page, and a page of
/// full objects is what the process peaks at.
const LIST_PAGE_SIZE: u32 = 50;

/// Start the four watchers; they stop when `cancel` fires.
pub fn spawn(
    client: kube::Client,
    scope: TenantScope,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ns = scope.namespace().to_string();
    let all = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let labelled = all.clone().labels(&scope.selector());
    vec![
        tokio::spawn(run::<DataVolume>(
            Api::namespaced(client.clone(), &ns),
            labelled.clone(),
            scope.clone(),
            index.clone(),
            metrics.clone(),
            cancel.clone(),
        )),
        tokio::spawn(run::<VirtualMachine>(
            Api::namespaced(client.clone(), &ns),
            labelled.clone(),
            scope.clone(),
            index.clone(),
            metrics.clone(),
            cancel.clone(),
        )),
        tokio::spawn(run::<VirtualMachineInstance>(
            Api::namespaced(client.clone(), &ns),
            all,
            scope.clone(),
            index.clone(),
            metrics.clone(),
            cancel.clone(),
        )),
        tokio::spawn(run::<VolumeSnapshot>(
            Api::namespaced(client, &ns),
            labelled,
            scope,
            index,
            metrics,
            cancel,
        )),
    ]
}
