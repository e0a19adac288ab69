//! Watches on the clusters a hosted cluster spans, turned into NodePool
//! reconcile triggers: the pool's VMs on the infra cluster (creation, status,
//! deletion), the guest Nodes (registration, readiness, version reports),
//! and the pods of a node being drained. Nothing is cached: an event only
//! says which NodePool to look at again.
//!
//! One task per watch, owned by [`Triggers`]; restarted when the cluster's
//! clients change, stopped when the cluster is deleted or the drain is over.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use kubevirt_infra::kubevirt::VirtualMachine;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::NodePool;
use crate::clients::ClusterKey;
use crate::names;

/// The NodePool a guest Node belongs to: VM (and node) names are
/// `<pool>-<5 characters>`.
pub fn pool_of_node(node: &str) -> Option<&str> {
    let (pool, suffix) = node.rsplit_once('-')?;
    (crate::hash::is_safe_suffix(suffix, 5) && !pool.is_empty()).then_some(pool)
}

struct ClusterWatches {
    identity: u64,
    tasks: Vec<JoinHandle<()>>,
    drains: HashMap<String, JoinHandle<()>>,
}

impl Drop for ClusterWatches {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(self.drains.values()) {
            t.abort();
        }
    }
}

/// The watch tasks of every hosted cluster with node pools.
pub struct Triggers {
    tx: mpsc::UnboundedSender<ObjectRef<NodePool>>,
    clusters: Mutex<HashMap<ClusterKey, ClusterWatches>>,
}

/// What a cluster's watches need.
pub struct Watched<'a> {
    pub key: &'a ClusterKey,
    /// Changes when the clients change.
    pub identity: u64,
    pub infra: &'a Client,
    pub infra_namespace: &'a str,
    pub infra_id: &'a str,
    pub guest: &'a Client,
}

fn spawn_watch<K, F>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<ObjectRef<NodePool>>,
    map: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&K) -> Option<ObjectRef<NodePool>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().touched_objects());
        while let Some(event) = events.next().await {
            match event {
                Ok(obj) => {
                    if let Some(r) = map(&obj)
                        && tx.send(r).is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watch error; backing off"),
            }
        }
    })
}

impl Triggers {
    /// Triggers and the stream the NodePool controller consumes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ObjectRef<NodePool>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx,
                clusters: Mutex::new(HashMap::new()),
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, ClusterWatches>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make sure the VM and Node watches of a cluster run on its current clients.
    pub fn ensure(&self, w: &Watched<'_>) {
        let mut clusters = self.lock();
        if clusters
            .get(w.key)
            .is_some_and(|c| c.identity == w.identity)
        {
            return;
        }
        let pool_ns = w.key.0.clone();
        let vm_ns = pool_ns.clone();
        let vms: Api<VirtualMachine> = Api::namespaced(w.infra.clone(), w.infra_namespace);
        let vm_task = spawn_watch(
            vms,
            watcher::Config::default().labels(&format!("{}={}", names::INFRA_ID_LABEL, w.infra_id)),
            self.tx.clone(),
            move |vm: &VirtualMachine| {
                let pool = vm.metadata.labels.as_ref()?.get(names::NODE_POOL_LABEL)?;
                Some(ObjectRef::new(pool).within(&vm_ns))
            },
        );
        let nodes: Api<Node> = Api::all(w.guest.clone());
        let node_ns = pool_ns.clone();
        let node_task = spawn_watch(
            nodes,
            watcher::Config::default(),
            self.tx.clone(),
            move |node: &Node| {
                let name = node.metadata.name.as_deref()?;
                Some(ObjectRef::new(pool_of_node(name)?).within(&node_ns))
            },
        );
        clusters.insert(
            w.key.clone(),
            ClusterWatches {
                identity: w.identity,
                tasks: vec![vm_task, node_task],
                drains: HashMap::new(),
            },
        );
    }

    /// Watch the pods of a node being drained, triggering its pool.
    pub fn watch_drain(
        &self,
        key: &ClusterKey,
        guest: &Client,
        node: &str,
        pool: ObjectRef<NodePool>,
    ) {
        let mut clusters = self.lock();
        let Some(cluster) = clusters.get_mut(key) else {
            return;
        };
        if cluster.drains.contains_key(node) {
            return;
        }
        let pods: Api<Pod> = Api::all(guest.clone());
        let task = spawn_watch(
            pods,
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            self.tx.clone(),
            move |_: &Pod| Some(pool.clone()),
        );
        cluster.drains.insert(node.to_string(), task);
    }

    /// Stop watching a node's pods.
    pub fn drain_done(&self, key: &ClusterKey, node: &str) {
        if let Some(cluster) = self.lock().get_mut(key)
            && let Some(task) = cluster.drains.remove(node)
        {
            task.abort();
        }
    }

    /// Stop every watch of a cluster.
    pub fn forget(&self, key: &ClusterKey) {
        self.lock().remove(key);
    }

    /// Trigger a NodePool directly.
    pub fn trigger(&self, pool: ObjectRef<NodePool>) {
        let _ = self.tx.send(pool);
    }

    /// Number of clusters watched (for tests and metrics).
    pub fn watched_clusters(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_map_to_their_pool() {
        assert_eq!(pool_of_node("workers-bx2k9"), Some("workers"));
        let generated = crate::desired::vm::vm_name("gpu-pool", "h", 7);
        assert_eq!(pool_of_node(&generated), Some("gpu-pool"));
        assert_eq!(pool_of_node("gpu-pool-a-bx2k9"), Some("gpu-pool-a"));
        assert_eq!(pool_of_node("workers-bx2k"), None);
        assert_eq!(pool_of_node("control-plane"), None);
        assert_eq!(pool_of_node("-bx2k9"), None);
    }
}
