//! The NodePool controller end to end, with a stand-in node agent playing
//! kubelet (a running VMI registers its guest Node) and the in-place update
//! agent: scaling 2 -> 4 -> 1 (removed nodes are drained first and their
//! Nodes deleted), a Replace upgrade of 3 nodes with maxSurge 1 and
//! maxUnavailable 0 that never has fewer than 3 Ready nodes, an InPlace
//! upgrade that keeps the VMs and updates one node at a time, and refused
//! version skew.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachine;
use kubevirt_lab::Lab;
use kubevirt_lab::wait::node_ready;
use serde_json::json;
use tokio::task::JoinHandle;

const CP: &str = "clusters-guest1";
const POOL: &str = "workers";

fn pool_selector() -> String {
    format!("{INFRA_ID_LABEL}=guest1-id,{NODE_POOL_LABEL}={POOL}")
}

fn schedulable(node: &Node) -> bool {
    !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// A lab with the manager, cluster `guest1` at `version` Available, and the node agent.
async fn setup(version: &str) -> anyhow::Result<(Lab, kubevirt_lab::daemon::Daemon, NodeAgent)> {
    let lab = lab().await?;
    let manager = start_manager(&lab, &[]).await?;
    create_hosted_cluster(&lab, &lab.guest, "guest1", version, json!({})).await?;
    until_reconciled(&lab, "guest1").await?;
    let agent = NodeAgent::start(
        lab.infra_client(),
        lab.guest_client(),
        CP,
        "guest1-id",
        Duration::from_millis(200),
        Duration::from_millis(300),
    );
    Ok((lab, manager, agent))
}

/// Waits until the pool reports `n` ready, updated replicas and `Ready`.
async fn until_pool_ready(infra: &Client, n: i64, version: &str) -> anyhow::Result<()> {
    let pools = node_pools(infra);
    until_dynamic(
        &pools,
        POOL,
        &format!("{n} ready nodes on {version}"),
        |np| {
            let np = np?;
            let s = &np.data["status"];
            (s["readyReplicas"] == n
                && s["replicas"] == n
                && s["updatedReplicas"] == n
                && s["version"] == version
                && is_true(np, "Ready")
                && condition(np, "UpdatingVersion").is_some_and(|(st, _)| st == "False"))
            .then_some(())
        },
    )
    .await
}

/// Records, from a guest Node watch, the fewest Ready schedulable pool
/// nodes and the most cordoned ones seen at once.
struct NodeWatch {
    min_ready: Arc<Mutex<Option<usize>>>,
    max_cordoned: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl NodeWatch {
    fn start(guest: Client) -> Self {
        let min_ready = Arc::new(Mutex::new(None));
        let max_cordoned = Arc::new(Mutex::new(0));
        let (mr, mc) = (min_ready.clone(), max_cordoned.clone());
        let nodes: Api<Node> = Api::all(guest);
        let task = tokio::spawn(async move {
            let mut current: BTreeMap<String, Node> = BTreeMap::new();
            let mut events = std::pin::pin!(watcher::watcher(nodes, watcher::Config::default()));
            let mut synced = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::InitApply(n)) | Ok(Event::Apply(n)) => {
                        current.insert(n.name_any(), n);
                    }
                    Ok(Event::Delete(n)) => {
                        current.remove(&n.name_any());
                    }
                    Ok(Event::InitDone) => synced = true,
                    _ => {}
                }
                if !synced {
                    continue;
                }
                let pool: Vec<&Node> = current
                    .values()
                    .filter(|n| n.name_any().starts_with("workers-"))
                    .collect();
                let ready_count = pool
                    .iter()
                    .filter(|n| node_ready(n) && schedulable(n))
                    .count();
                let cordoned = pool.iter().filter(|n| !schedulable(n)).count();
                if let Ok(mut m) = mr.lock() {
                    *m = Some(m.map_or(ready_count, |v: usize| v.min(ready_count)));
                }
                if let Ok(mut m) = mc.lock() {
                    *m = (*m).max(cordoned);
                }
            }
        });
        Self {
            min_ready,
            max_cordoned,
            task,
        }
    }

    fn min_ready(&self) -> Option<usize> {
        self.min_ready.lock().map(|m| *m).unwrap_or(None)
    }

    fn max_cordoned(&self) -> usize {
        self.max_cordoned.lock().map(|m| *m).unwrap_or(0)
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records the most VMs (not being deleted) of the pool seen at once.
fn watch_vm_count(infra: Client) -> (Arc<Mutex<usize>>, JoinHandle<()>) {
    let max = Arc::new(Mutex::new(0));
    let m = max.clone();
    let vms: Api<VirtualMachine> = Api::namespaced(infra, CP);
    let task = tokio::spawn(async move {
        let mut current: BTreeMap<String, bool> = BTreeMap::new();
        let mut events = std::pin::pin!(watcher::watcher(
            vms,
            watcher::Config::default().labels(&pool_selector())
        ));
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::InitApply(v)) | Ok(Event::Apply(v)) => {
                    current.insert(v.name_any(), v.metadata.deletion_timestamp.is_none());
                }
                Ok(Event::Delete(v)) => {
                    current.remove(&v.name_any());
                }
                _ => {}
            }
            let live = current.values().filter(|alive| **alive).count();
            if let Ok(mut mm) = m.lock() {
                *mm = (*mm).max(live);
            }
        }
    });
    (max, task)
}

/// Stops the agent and the manager, then the lab (whose API servers wait
/// for open watches to end), and attaches the manager's log to a failure.
async fn finish(
    lab: Lab,
    mut manager: kubevirt_lab::daemon::Daemon,
    agent: NodeAgent,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    agent.stop().await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pool_scales_up_and_down_draining_nodes() -> anyhow::Result<()> {
    let (lab, manager, agent) = setup("0.1.0").await?;
    let infra = lab.infra_client();
    let guest = lab.guest_client();
    let result = async {
        let pools = node_pools(&infra);
        pools
            .create(
                &PostParams::default(),
                &node_pool(POOL, "guest1", 2, "0.1.0", json!({}))?,
            )
            .await?;
        until_pool_ready(&infra, 2, "0.1.0").await?;

        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), CP);
        let list = vms
            .list(&ListParams::default().labels(&pool_selector()))
            .await?;
        ensure!(list.items.len() == 2);
        for vm in &list.items {
            let name = vm.name_any();
            ensure!(
                name.starts_with("workers-") && name.len() == "workers-".len() + 5,
                "{name}"
            );
            let labels = vm.labels();
            ensure!(labels["cluster.x-k8s.io/role"] == "worker");
            ensure!(labels["cluster.x-k8s.io/cluster-name"] == "guest1-id");
            ensure!(vm.spec.run_strategy.as_deref() == Some("Always"));
            let template = vm
                .spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone());
            ensure!(template.is_some_and(|l| l[NODE_POOL_LABEL] == POOL));
        }

        node_pools(&infra)
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": 4}})),
            )
            .await?;
        until_pool_ready(&infra, 4, "0.1.0").await?;

        // A workload pod on every node; the nodes that go must be drained.
        let nodes: Api<Node> = Api::all(guest.clone());
        let names: Vec<String> = nodes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        let pods: Api<Pod> = Api::namespaced(guest.clone(), "default");
        for node in &names {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("app-{node}"), "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]}
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
        }

        node_pools(&infra)
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": 1}})),
            )
            .await?;
        until_pool_ready(&infra, 1, "0.1.0").await?;
        let left = until_list(&vms, &pool_selector(), "one VM left", |vms| {
            (vms.len() == 1).then(|| vms[0].name_any())
        })
        .await?;
        until_list(&nodes, "", "only its Node left", |ns| {
            let names: BTreeSet<String> = ns.iter().map(|n| n.name_any()).collect();
            (names == BTreeSet::from([left.clone()])).then_some(())
        })
        .await?;
        let remaining: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        ensure!(
            remaining == vec![format!("app-{left}")],
            "pods of removed nodes were not drained: {remaining:?}"
        );
        let survivor = nodes.get(&left).await?;
        ensure!(schedulable(&survivor), "the remaining node was cordoned");

        // Deleting the pool drains and removes its last VM and Node.
        node_pools(&infra).delete(POOL, &Default::default()).await?;
        until_dynamic(&node_pools(&infra), POOL, "NodePool gone", |np| {
            np.is_none().then_some(())
        })
        .await?;
        ensure!(
            vms.list(&ListParams::default().labels(&pool_selector()))
                .await?
                .items
                .is_empty()
        );
        until_list(&nodes, "", "no Nodes left", |ns| {
            ns.is_empty().then_some(())
        })
        .await?;
        ensure!(
            pods.list(&ListParams::default()).await?.items.is_empty(),
            "the last node was not drained"
        );
        Ok(())
    }
    .await;
    finish(lab, manager, agent, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_upgrade_never_drops_below_replicas() -> anyhow::Result<()> {
    let (lab, manager, agent) = setup("0.2.0").await?;
    let infra = lab.infra_client();
    let guest = lab.guest_client();
    let result = async {
        let management = json!({"upgradeType": "Replace",
            "replace": {"strategy": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}});
        node_pools(&infra).create(&PostParams::default(), &node_pool(POOL, "guest1", 3, "0.1.0", management)?).await?;
        until_pool_ready(&infra, 3, "0.1.0").await?;
        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), CP);
        let before: BTreeSet<String> =
            vms.list(&ListParams::default().labels(&pool_selector())).await?.items.iter().map(|v| v.name_any()).collect();

        let watch = NodeWatch::start(guest.clone());
        let (max_vms, vm_task) = watch_vm_count(infra.clone());
        node_pools(&infra)
            .patch(POOL, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"release": {"version": "0.2.0"}}})))
            .await?;
        until_pool_ready(&infra, 3, "0.2.0").await?;
        vm_task.abort();

        let after = vms.list(&ListParams::default().labels(&pool_selector())).await?.items;
        ensure!(after.len() == 3);
        for vm in &after {
            ensure!(!before.contains(&vm.name_any()), "old VM {} survived the Replace upgrade", vm.name_any());
            ensure!(vm.annotations()[VERSION_ANNOTATION] == "0.2.0");
        }
        let min_ready = watch.min_ready().context("node watch saw nothing")?;
        ensure!(min_ready >= 3, "only {min_ready} Ready nodes during the rollout");
        let most = max_vms.lock().map(|m| *m).unwrap_or(0);
        ensure!(most <= 4, "{most} VMs at once with maxSurge 1");

        // Deleting the HostedCluster takes its NodePool and every VM with it.
        hosted_clusters(&infra).delete("guest1", &Default::default()).await?;
        until_dynamic(&hosted_clusters(&infra), "guest1", "HostedCluster gone", |hc| hc.is_none().then_some(())).await?;
        ensure!(node_pools(&infra).get_opt(POOL).await?.is_none(), "NodePool left behind");
        let all_vms: Api<VirtualMachine> = Api::all(infra.clone());
        ensure!(
            all_vms.list(&ListParams::default().labels(&format!("{INFRA_ID_LABEL}=guest1-id"))).await?.items.is_empty(),
            "VMs left behind"
        );
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(infra.clone());
        ensure!(namespaces.get_opt(CP).await?.is_none(), "control-plane namespace left behind");
        Ok(())
    }
    .await;
    finish(lab, manager, agent, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_upgrade_updates_nodes_one_at_a_time() -> anyhow::Result<()> {
    let (lab, manager, agent) = setup("0.2.0").await?;
    let infra = lab.infra_client();
    let guest = lab.guest_client();
    let result = async {
        let management = json!({"upgradeType": "InPlace", "inPlace": {"maxUnavailable": 1}});
        node_pools(&infra)
            .create(
                &PostParams::default(),
                &node_pool(POOL, "guest1", 3, "0.1.0", management)?,
            )
            .await?;
        until_pool_ready(&infra, 3, "0.1.0").await?;
        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), CP);
        let before: BTreeSet<String> = vms
            .list(&ListParams::default().labels(&pool_selector()))
            .await?
            .items
            .iter()
            .map(|v| v.name_any())
            .collect();

        let watch = NodeWatch::start(guest.clone());
        node_pools(&infra)
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"release": {"version": "0.2.0"}}})),
            )
            .await?;
        until_pool_ready(&infra, 3, "0.2.0").await?;

        let after = vms
            .list(&ListParams::default().labels(&pool_selector()))
            .await?
            .items;
        let names: BTreeSet<String> = after.iter().map(|v| v.name_any()).collect();
        ensure!(
            names == before,
            "in-place upgrade replaced VMs: {before:?} -> {names:?}"
        );
        ensure!(
            after
                .iter()
                .all(|v| v.annotations()[VERSION_ANNOTATION] == "0.2.0")
        );
        let nodes: Api<Node> = Api::all(guest.clone());
        for n in nodes.list(&ListParams::default()).await?.items {
            ensure!(
                n.annotations().get(CURRENT_VERSION).map(String::as_str) == Some("0.2.0"),
                "{} not updated",
                n.name_any()
            );
            ensure!(schedulable(&n), "{} left cordoned", n.name_any());
        }
        ensure!(
            watch.max_cordoned() <= 1,
            "{} nodes updated at once with maxUnavailable 1",
            watch.max_cordoned()
        );
        ensure!(
            watch.max_cordoned() == 1,
            "no node was cordoned for its update"
        );
        Ok(())
    }
    .await;
    finish(lab, manager, agent, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_skew_is_refused() -> anyhow::Result<()> {
    let (lab, manager, agent) = setup("0.1.0").await?;
    let infra = lab.infra_client();
    let result = async {
        let pools = node_pools(&infra);
        pools
            .create(
                &PostParams::default(),
                &node_pool(POOL, "guest1", 2, "0.2.0", json!({}))?,
            )
            .await?;
        let refused = until_dynamic(&pools, POOL, "skew refused", |np| {
            np.and_then(|np| condition(np, "ValidVersion"))
                .filter(|(s, _)| s == "False")
        })
        .await?;
        ensure!(refused.1 == "VersionNewerThanHostedCluster", "{refused:?}");

        pools
            .create(
                &PostParams::default(),
                &node_pool("unsupported", "guest1", 1, "0.9.0", json!({}))?,
            )
            .await?;
        let refused = until_dynamic(&pools, "unsupported", "unsupported refused", |np| {
            np.and_then(|np| condition(np, "ValidVersion"))
                .filter(|(s, _)| s == "False")
        })
        .await?;
        ensure!(refused.1 == "UnsupportedVersion", "{refused:?}");

        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), CP);
        ensure!(
            vms.list(&ListParams::default()).await?.items.is_empty(),
            "a refused pool made VMs"
        );

        // Lowering the version to the cluster's admits it.
        pools
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"release": {"version": "0.1.0"}}})),
            )
            .await?;
        until_pool_ready(&infra, 2, "0.1.0").await?;
        Ok(())
    }
    .await;
    finish(lab, manager, agent, result).await
}
