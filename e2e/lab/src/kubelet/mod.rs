//! The kubelet of the management cluster's nodes: it runs the pods that
//! kube-scheduler binds to the infra Nodes when the [`ImageMap`] names every
//! one of their images, each container as a process ([`crate::pod`]) in the
//! lab's network namespace with an address of its own from
//! [`lab_net::MANAGEMENT_POD_NET`], and reports their status as a kubelet
//! does, so that Deployments, StatefulSets, EndpointSlices and Services
//! work on them as on a real cluster. Pods it cannot run (an image the map
//! does not name; virt-launcher pods, which the KubeVirt simulator plays)
//! stay Pending, and are removed once deleted, since nothing runs them.
//!
//! Each node's Lease is renewed every ten seconds, as the kubelet's
//! heartbeat, so the node lifecycle controller keeps the nodes Ready (and
//! lifts the not-ready taint new Nodes get).
//!
//! A node can be lost ([`ManagementKubelet::lose_node`]), as a machine
//! that dies: its pods' processes are killed, its Lease is no longer
//! renewed, and nothing answers for its pods any more (no status, no
//! deletion confirmed), so the node lifecycle controller marks the node
//! and its pods not ready after its grace period, as on a real cluster.
//!
//! Per pod ([`worker`]): claims become directories under `DIR/pv-data/<pv>`
//! that outlive the pod; containers are started, restarted when they exit
//! (with a doubling back-off, `restartCount` counted), and probed with their
//! readiness probes; a deleted pod's processes get SIGTERM, then SIGKILL
//! after the grace period, and the pod object is then removed, as the
//! kubelet does. Not done: liveness probes, init containers, resource
//! limits.

mod images;
mod probe;
mod status;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use lab_cluster::Cluster;
use lab_net::Netns;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use images::{ImageMap, repository};

/// What the kubelet runs pods with.
pub struct ManagementKubeletConfig {
    /// The lab directory (pods' files, claims' directories, logs).
    pub dir: PathBuf,
    /// The management cluster.
    pub server: Cluster,
    /// The kubelet's own identity there.
    pub client: Client,
    pub netns: Arc<Netns>,
    /// Its Nodes and their addresses.
    pub nodes: BTreeMap<String, IpAddr>,
    /// The cluster DNS (`ClusterFirst` pods' nameserver).
    pub dns: Option<IpAddr>,
    pub images: ImageMap,
}

/// Shared by the watch loop and the pod workers.
pub(crate) struct Shared {
    pub cfg: ManagementKubeletConfig,
    pub client: Client,
    addresses: Mutex<Addresses>,
    /// The processes of each running pod (`namespace/name`), for
    /// measurements.
    pub processes: Mutex<BTreeMap<String, Vec<u32>>>,
    /// Per node: cancelled when the node is lost, or the kubelet stops.
    alive: BTreeMap<String, CancellationToken>,
    /// The nodes lost.
    lost: Mutex<BTreeSet<String>>,
}

/// Pod addresses handed out, never reused while the lab runs (a stale
/// endpoint can then never reach another pod).
struct Addresses {
    next: u32,
    last: u32,
}

impl Shared {
    fn allocate(&self) -> Option<IpAddr> {
        let mut a = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if a.next > a.last {
            return None;
        }
        let ip = Ipv4Addr::from(a.next);
        a.next += 1;
        Some(IpAddr::V4(ip))
    }

    /// Whether `pod` is bound to one of this kubelet's nodes, not lost.
    fn is_ours(&self, pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| self.cfg.nodes.contains_key(n) && !self.is_lost(n))
    }

    fn is_lost(&self, node: &str) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// Whether this kubelet can run `pod`: every image is in the map.
    fn can_run(&self, pod: &Pod) -> bool {
        pod.spec.as_ref().is_some_and(|spec| {
            spec.containers.iter().all(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|i| self.cfg.images.entrypoint(i).is_some())
            })
        })
    }
}

/// The running kubelet; [`ManagementKubelet::stop`] stops its pods.
pub struct ManagementKubelet {
    stop: CancellationToken,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl ManagementKubelet {
    pub fn start(cfg: ManagementKubeletConfig) -> Result<ManagementKubelet, crate::LabError> {
        let net: ipnet::Ipv4Net = lab_net::MANAGEMENT_POD_NET
            .parse()
            .map_err(|e| crate::LabError::Invalid(format!("management pod network: {e}")))?;
        let first = u32::from(net.network()) + 2;
        let last = u32::from(net.broadcast()) - 1;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            client: cfg.client.clone(),
            alive: cfg
                .nodes
                .keys()
                .map(|n| (n.clone(), stop.child_token()))
                .collect(),
            cfg,
            addresses: Mutex::new(Addresses { next: first, last }),
            processes: Mutex::new(BTreeMap::new()),
            lost: Mutex::new(BTreeSet::new()),
        });
        let stop_for_run = stop.clone();
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), stop.clone()));
        let for_run = shared.clone();
        let task = tokio::spawn(async move {
            run(for_run, stop_for_run).await;
            let _ = heartbeat.await;
        });
        Ok(ManagementKubelet { stop, task, shared })
    }

    /// The process ids of the containers running in `namespace`.
    pub fn pids(&self, namespace: &str) -> Vec<u32> {
        let prefix = format!("{namespace}/");
        self.shared
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(pod, _)| pod.starts_with(&prefix))
            .flat_map(|(_, pids)| pids.iter().copied())
            .collect()
    }

    /// Loses `node`, as a machine that dies: its pods' processes are
    /// killed, its Lease is no longer renewed, and nothing answers for its
    /// pods any more.
    pub fn lose_node(&self, node: &str) {
        self.shared
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string());
        if let Some(alive) = self.shared.alive.get(node) {
            alive.cancel();
        }
    }

    /// Stops every pod's processes (without touching the pod objects).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// How often a node's Lease is renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

/// Each node's heartbeat: its Lease in `kube-node-lease`, renewed as the
/// kubelet does, so the node lifecycle controller sees the node alive.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // One round, given up when the kubelet stops: a renewal may hang on
        // a connection whose server is gone.
        tokio::select! {
            _ = stop.cancelled() => return,
            () = renew_leases(&shared, &leases) => {}
        }
    }
}

/// Renews the Lease of every node not lost, each request bounded by the
/// Lease's duration, as the kubelet's heartbeat client is.
async fn renew_leases(shared: &Shared, leases: &Api<Lease>) {
    let now = MicroTime(jiff::Timestamp::now());
    for node in shared.cfg.nodes.keys().filter(|n| !shared.is_lost(n)) {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(node.clone()),
                namespace: Some("kube-node-lease".to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(now.clone()),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply("lab-management-kubelet").force();
        let patch = Patch::Apply(&lease);
        let renewal = leases.patch(node, &params, &patch);
        match tokio::time::timeout(Duration::from_secs(LEASE_SECONDS as u64), renewal).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(%node, "node lease: {e}"),
            Err(_) => tracing::debug!(%node, "node lease: no answer within {LEASE_SECONDS} s"),
        }
    }
}

struct Running {
    /// Cancelled when the pod is deleted.
    deleted: CancellationToken,
    task: JoinHandle<()>,
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), watcher::Config::default()));
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        running.retain(|_, r| !r.task.is_finished());
        let pod = match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
            Ok(Event::Delete(pod)) => {
                if let Some(r) = running.get(&pod.uid().unwrap_or_default()) {
                    r.deleted.cancel();
                }
                continue;
            }
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                tracing::debug!("management kubelet watch: {e}");
                continue;
            }
        };
        let uid = pod.uid().unwrap_or_default();
        if !shared.is_ours(&pod) {
            continue;
        }
        match (running.get(&uid), pod.metadata.deletion_timestamp.is_some()) {
            (Some(r), true) => r.deleted.cancel(),
            (Some(_), false) => {}
            // Never started here (an image the map does not name): nothing
            // to stop.
            (None, true) => remove(&shared.client, &pod).await,
            (None, false) if !shared.can_run(&pod) => {}
            (None, false) => {
                let deleted = CancellationToken::new();
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let alive = node
                    .and_then(|n| shared.alive.get(n))
                    .cloned()
                    .unwrap_or_else(|| stop.clone());
                let task = tokio::spawn(worker::run(shared.clone(), pod, deleted.clone(), alive));
                running.insert(uid, Running { deleted, task });
            }
        }
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
}

/// Removes a pod object whose processes are gone, as the kubelet does once
/// its containers stopped (grace 0, this very pod).
pub(crate) async fn remove(client: &Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(&pod.name_any(), &params).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
    {
        tracing::warn!(pod = %pod.name_any(), "removing a stopped pod: {e}");
    }
}
