//! The watch tasks that feed the [`Index`]: one kube-runtime watcher per
//! kind, label-selected by the tenant labels (VMIs: the whole namespace),
//! turning each object into its compact record as it arrives. A relist
//! (`Init` … `InitDone`) is buffered and swapped in whole, so readers never
//! see a half-listed cache. Failed attempts are recorded (health, metrics)
//! and retried with a growing backoff; the log says when the state of a
//! watch changes (failing, recovered, not served, served), not per retry.
//!
//! A kind the infra cluster does not serve (404 on its collection: the CRD
//! is not installed, common for snapshots) is its own state: one warning,
//! an empty cache, calls needing it answered `FailedPrecondition`, and
//! re-checks on a long backoff or at once when such a call asks for one.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use kubevirt_infra::TenantScope;
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::snapshot::VolumeSnapshot;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::entries::{self, SnapshotEntry, VmEntry, VmiEntry, VolumeEntry};
use super::index::{CORE_KINDS, Index, Kind, State};
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

/// The API of a kind as a person names it: `snapshot.storage.k8s.io/v1
/// volumesnapshots`.
fn api_name<K: kube::Resource<DynamicType = ()>>() -> String {
    format!("{} {}", K::api_version(&()), K::plural(&()))
}

/// How a watch attempt went, as far as health and retries care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A complete list: the cache is whole and current.
    Listed,
    /// The infra cluster does not serve the API (its CRD is not installed).
    NotServed,
    /// The watch fell too far behind (410 Gone): relist at once, no failure.
    Expired,
    /// Anything else (unreachable, forbidden, server errors).
    Failed,
}

/// Sort a watcher error. A 404 on a collection (list or watch) means the
/// API server does not serve the resource at all: listing a namespace that
/// does not exist answers an empty list, not 404.
fn classify(err: &watcher::Error) -> Outcome {
    let code = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => None,
    };
    match code {
        Some(404) => Outcome::NotServed,
        Some(410) => Outcome::Expired,
        _ => Outcome::Failed,
    }
}

/// What the watch of one kind last knew; logged only when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Not listed yet, nothing failed yet.
    Starting,
    Synced,
    Failing,
    NotServed,
}

/// What a change of [`Health`] tells the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Note {
    /// Nothing new (a retry failing as the last one did, a relist).
    Quiet,
    Failed,
    Recovered,
    NotServed,
    Served,
}

/// The next health after `outcome`, and what to log about it.
fn transition(from: Health, outcome: Outcome) -> (Health, Note) {
    match (from, outcome) {
        (_, Outcome::Expired) => (from, Note::Quiet),
        (Health::Failing, Outcome::Listed) => (Health::Synced, Note::Recovered),
        (Health::NotServed, Outcome::Listed) => (Health::Synced, Note::Served),
        (_, Outcome::Listed) => (Health::Synced, Note::Quiet),
        (Health::NotServed, Outcome::NotServed) => (Health::NotServed, Note::Quiet),
        (_, Outcome::NotServed) => (Health::NotServed, Note::NotServed),
        (Health::Failing, Outcome::Failed) => (Health::Failing, Note::Quiet),
        (_, Outcome::Failed) => (Health::Failing, Note::Failed),
    }
}

/// Retry delays after a failure: the first, the cap (each doubles the last).
const FAILED_RETRY: (Duration, Duration) = (Duration::from_millis(800), Duration::from_secs(30));
/// The same while the API is not served: installing a CRD is rare, and a
/// call needing the API asks for a re-check at once (see
/// [`Index::request_recheck`]), so these can be long.
const NOT_SERVED_RETRY: (Duration, Duration) = (Duration::from_secs(15), Duration::from_secs(300));

/// The delay before the next attempt after `outcome`, the `retry`th in a row
/// ending the same way (0: the first).
fn retry_delay(outcome: Outcome, retry: u32) -> Duration {
    let (first, cap) = match outcome {
        Outcome::Listed | Outcome::Expired => return Duration::ZERO,
        Outcome::NotServed => NOT_SERVED_RETRY,
        Outcome::Failed => FAILED_RETRY,
    };
    first.saturating_mul(1 << retry.min(16)).min(cap)
}

/// `delay` less up to a quarter at random, so the drivers of many tenants
/// sharing an infra API server do not retry in step.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    delay.saturating_sub(delay.mul_f64((random % 1000) as f64 / 4000.0))
}

/// Log what a transition tells (once per change; repeats at debug level).
fn log_note(kind: Kind, api: &str, note: Note, err: Option<&watcher::Error>) {
    let name = kind.as_str();
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    match note {
        Note::Quiet if err.is_empty() => {}
        Note::Quiet => {
            tracing::debug!(kind = name, error = %err, "infra watch attempt failed again")
        }
        Note::Failed => tracing::warn!(kind = name, error = %err, "infra watch failed; retrying"),
        Note::Recovered => tracing::info!(kind = name, "infra watch recovered"),
        Note::NotServed => {
            let consequence = if CORE_KINDS.contains(&kind) {
                "the controller is not ready until it does"
            } else {
                "snapshot calls fail until it does"
            };
            tracing::warn!(
                kind = name,
                "the infra cluster does not serve {api}; {consequence}"
            );
        }
        Note::Served => tracing::info!(kind = name, "the infra cluster now serves {api}"),
    }
}

/// One kind's watch: health, retries, and where it reports.
struct Watch<'a> {
    kind: Kind,
    api: String,
    index: &'a Index,
    metrics: &'a Metrics,
    health: Health,
    /// Attempts in a row that ended as the last one did.
    retry: u32,
    /// The re-check requests made before the current attempt began: the
    /// ones its answer covers.
    asked: u64,
}

impl Watch<'_> {
    /// Take an outcome in: health, log, index, metrics. Returns the delay
    /// before the next attempt.
    fn observe(&mut self, outcome: Outcome, err: Option<&watcher::Error>) -> Duration {
        let (next, note) = transition(self.health, outcome);
        self.retry = if next == self.health && outcome != Outcome::Listed {
            self.retry.saturating_add(1)
        } else {
            0
        };
        self.health = next;
        log_note(self.kind, &self.api, note, err);
        match outcome {
            Outcome::Listed => {}
            Outcome::Expired => {}
            Outcome::Failed => {
                self.metrics.watch_error(self.kind.as_str());
                let msg = err.map(|e| e.to_string()).unwrap_or_default();
                self.index.write(|s| s.mark_error(self.kind, Some(msg)));
            }
            Outcome::NotServed => {
                let api = self.api.clone();
                let asked = self.asked;
                self.index
                    .write(|s| s.mark_not_served(self.kind, api, asked));
            }
        }
        self.metrics
            .set_not_served(self.kind.as_str(), next == Health::NotServed);
        retry_delay(outcome, self.retry)
    }
}

/// Run one watcher into the index until cancelled. Each attempt is a fresh
/// kube-runtime watcher, so it starts with a complete list and a recovery
/// is only ever reported on one. Failures are retried here, with a backoff
/// that grows until an attempt lists (kube-runtime's own would reset on the
/// `Init` event every attempt yields before its list fails).
async fn run<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    scope: TenantScope,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut watch = Watch {
        kind: K::KIND,
        api: api_name::<K>(),
        index: &index,
        metrics: &metrics,
        health: Health::Starting,
        retry: 0,
        asked: 0,
    };
    loop {
        watch.asked = index.rechecks_requested(K::KIND);
        let stream = watcher::watcher(api.clone(), config.clone());
        let err = tokio::select! {
            _ = cancel.cancelled() => return,
            err = follow::<K>(stream, &scope, &mut watch) => err,
        };
        // The watcher's stream never ends by itself.
        let Some(err) = err else { return };
        let delay = watch.observe(classify(&err), Some(&err));
        if delay.is_zero() {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(jittered(delay)) => {}
            _ = index.recheck_requested(K::KIND) => {
                tracing::debug!(kind = K::KIND.as_str(), "re-checking at a call's request");
            }
        }
    }
}

/// Feed one watcher's events into the index until it fails; its error.
async fn follow<K: Watched>(
    stream: impl futures::Stream<Item = watcher::Result<Event<K>>>,
    scope: &TenantScope,
    watch: &mut Watch<'_>,
) -> Option<watcher::Error> {
    futures::pin_mut!(stream);
    let index = watch.index;
    let mut buffer: Vec<(String, K::Entry)> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Err(err) => return Some(err),
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(obj)) => {
                if let Some(e) = obj.entry(scope) {
                    buffer.push((name_of(&obj), e));
                }
            }
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut buffer);
                let n = all.len();
                index.write(|s| {
                    K::replace(s, all);
                    s.mark_synced(K::KIND);
                });
                watch.observe(Outcome::Listed, None);
                tracing::debug!(kind = K::KIND.as_str(), objects = n, "infra cache synced");
            }
            Ok(Event::Apply(obj)) => {
                let e = obj.entry(scope);
                index.write(|s| K::upsert(s, name_of(&obj), e));
            }
            Ok(Event::Delete(obj)) => index.write(|s| K::upsert(s, name_of(&obj), None)),
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "the server could not find the requested resource".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_404_on_the_collection_is_not_served() {
        use watcher::Error as E;
        assert_eq!(
            classify(&E::InitialListFailed(api_error(404))),
            Outcome::NotServed
        );
        assert_eq!(
            classify(&E::WatchStartFailed(api_error(404))),
            Outcome::NotServed
        );
        assert_eq!(
            classify(&E::WatchError(Box::new(kube::core::Status {
                code: 410,
                ..Default::default()
            }))),
            Outcome::Expired
        );
        assert_eq!(
            classify(&E::InitialListFailed(api_error(403))),
            Outcome::Failed
        );
        assert_eq!(classify(&E::WatchFailed(api_error(500))), Outcome::Failed);
        assert_eq!(classify(&E::NoResourceVersion), Outcome::Failed);
    }

    /// Feed outcomes from `Starting`; the notes logged (quiet ones left out).
    fn notes(outcomes: &[Outcome]) -> Vec<Note> {
        let mut health = Health::Starting;
        let mut out = Vec::new();
        for o in outcomes {
            let (next, note) = transition(health, *o);
            health = next;
            if note != Note::Quiet {
                out.push(note);
            }
        }
        out
    }

    #[test]
    fn logs_on_change_only() {
        use Outcome::*;
        // No CRD: one warning however often it is re-checked; no "recovered".
        assert_eq!(notes(&[NotServed; 5]), [Note::NotServed]);
        // Then it is installed: one line saying so.
        assert_eq!(
            notes(&[NotServed, NotServed, Listed, Listed]),
            [Note::NotServed, Note::Served]
        );
        // Ordinary failures: one warning, one recovery, on a real list only.
        assert_eq!(
            notes(&[Listed, Failed, Failed, Failed, Listed]),
            [Note::Failed, Note::Recovered]
        );
        assert_eq!(
            notes(&[Failed, Failed, Listed]),
            [Note::Failed, Note::Recovered]
        );
        // A first list is no news; an expired watch relists quietly.
        assert_eq!(notes(&[Listed, Expired, Listed]), []);
        // The CRD removed while watched, and a blip while not served.
        assert_eq!(
            notes(&[Listed, NotServed, Failed, NotServed]),
            [Note::NotServed, Note::Failed, Note::NotServed]
        );
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let failed: Vec<_> = (0..8).map(|n| retry_delay(Outcome::Failed, n)).collect();
        assert_eq!(failed[0], Duration::from_millis(800));
        assert_eq!(failed[1], Duration::from_millis(1600));
        assert_eq!(failed[7], Duration::from_secs(30));
        assert_eq!(retry_delay(Outcome::NotServed, 0), Duration::from_secs(15));
        assert_eq!(
            retry_delay(Outcome::NotServed, u32::MAX),
            Duration::from_secs(300)
        );
        assert_eq!(retry_delay(Outcome::Expired, 3), Duration::ZERO);
        let d = Duration::from_secs(100);
        let j = jittered(d);
        assert!(j <= d && j >= d * 3 / 4, "{j:?}");
    }

    #[test]
    fn observe_records_the_state_and_the_retry_count() {
        let index = Index::new();
        let metrics = Metrics::new();
        let mut w = Watch {
            kind: Kind::VolumeSnapshot,
            api: api_name::<VolumeSnapshot>(),
            index: &index,
            metrics: &metrics,
            health: Health::Starting,
            retry: 0,
            asked: 0,
        };
        assert_eq!(w.api, "snapshot.storage.k8s.io/v1 volumesnapshots");
        let err = watcher::Error::InitialListFailed(api_error(404));
        assert_eq!(
            w.observe(Outcome::NotServed, Some(&err)),
            NOT_SERVED_RETRY.0
        );
        assert_eq!(
            w.observe(Outcome::NotServed, Some(&err)),
            NOT_SERVED_RETRY.0 * 2
        );
        index.read(|s| {
            assert_eq!(
                s.not_served(Kind::VolumeSnapshot),
                Some("snapshot.storage.k8s.io/v1 volumesnapshots")
            );
            assert!(!s.is_synced(Kind::VolumeSnapshot));
        });
        assert!(
            metrics
                .encode()
                .contains("infra_api_not_served{kind=\"VolumeSnapshot\"} 1")
        );
        index.write(|s| s.mark_synced(Kind::VolumeSnapshot));
        assert_eq!(w.observe(Outcome::Listed, None), Duration::ZERO);
        assert_eq!((w.health, w.retry), (Health::Synced, 0));
        assert!(
            metrics
                .encode()
                .contains("infra_api_not_served{kind=\"VolumeSnapshot\"} 0")
        );
        let err = watcher::Error::InitialListFailed(api_error(503));
        assert_eq!(w.observe(Outcome::Failed, Some(&err)), FAILED_RETRY.0);
        index.read(|s| assert!(s.error(Kind::VolumeSnapshot).is_some()));
    }
}
