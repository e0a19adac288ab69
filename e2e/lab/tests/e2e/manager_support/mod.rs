//! Shared pieces of the hosted-control-plane manager's end-to-end tests: a
//! lab without worker VMs or loop devices, the manager's CRDs (read from
//! `manifests/manager/crds`), the `kubevirt-hcp-manager` binary started as a
//! real process with its own identity (user `hcp-manager` on both API
//! servers, so its writes can be counted), HostedCluster and NodePool
//! objects, and the guest "node agent" stand-in that plays kubelet and the
//! in-place update agent.
//!
//! The binary must be built first: `cargo build -p kubevirt-hcp-manager`.

#![allow(dead_code)]

pub mod hosted;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::daemon::Daemon;
use kubevirt_lab::hcp;
use kubevirt_lab::{Lab, LabConfig};
use lab_cluster::Cluster;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use kubevirt_lab::hcp::{
    BINARY, GUEST_USER, MANAGER_NAMESPACE, NS, USER, ensure_namespace, hosted_cluster,
    hosted_clusters, install_crds, is_true, node_pool, node_pools,
};
/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

pub const INFRA_ID_LABEL: &str = "hypershift.openshift.io/infra-id";
pub const NODE_POOL_LABEL: &str = "hypershift.openshift.io/nodePool";
pub const VERSION_ANNOTATION: &str = "hcp.kubevirt-rs.io/version";
pub const DESIRED_VERSION: &str = "hcp.kubevirt-rs.io/desired-version";
pub const CURRENT_VERSION: &str = "hcp.kubevirt-rs.io/current-version";

/// A lab with no workers of its own: the manager makes them.
pub async fn lab() -> anyhow::Result<Lab> {
    let cfg = LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    };
    manager_lab(cfg).await
}

/// A lab whose infra cluster is a management cluster: kube-scheduler, and
/// the management kubelet running the hosted control planes' images.
pub async fn management_lab() -> anyhow::Result<Lab> {
    management_lab_of(3).await
}

/// [`management_lab`] with `nodes` infra (management) nodes.
pub async fn management_lab_of(nodes: usize) -> anyhow::Result<Lab> {
    let binaries = lab_cluster::Binaries::find()?;
    let cfg = LabConfig {
        vms: 0,
        devices: false,
        infra_nodes: nodes,
        management: Some(kubevirt_lab::kubelet::ImageMap::standard(&binaries)),
        dir: std::env::var_os("DEBUG_LAB_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_default(),
        ..LabConfig::default()
    };
    manager_lab(cfg).await
}

/// A lab of `cfg` with the manager's CRDs and namespaces.
async fn manager_lab(cfg: LabConfig) -> anyhow::Result<Lab> {
    let lab = crate::common::start_lab_for(BINARY, "kubevirt-hcp-manager", cfg).await?;
    install_crds(&lab.infra_client()).await?;
    ensure_namespace(&lab.infra_client(), MANAGER_NAMESPACE).await?;
    ensure_namespace(&lab.infra_client(), NS).await?;
    Ok(lab)
}

/// Starts the manager inside the lab's network, as a pod of the management
/// cluster runs (it then reaches hosted control planes' endpoints).
pub async fn start_manager_in_netns(lab: &Lab, extra: &[&str]) -> anyhow::Result<Daemon> {
    let mut args = vec!["--supported-versions=0.1,0.2"];
    args.extend_from_slice(extra);
    Ok(hcp::start_manager_in_netns(
        lab,
        &args,
        "info,kube=warn",
        &lab.dir.join("hcp-manager.log"),
    )
    .await?)
}

/// Starts the manager against the lab's infra cluster (the management
/// cluster here), with `extra` flags.
pub async fn start_manager(lab: &Lab, extra: &[&str]) -> anyhow::Result<Daemon> {
    start_manager_as(lab, extra, "hcp-manager.log").await
}

/// [`start_manager`] logging to `log` under the lab directory.
pub async fn start_manager_as(lab: &Lab, extra: &[&str], log: &str) -> anyhow::Result<Daemon> {
    let mut args = vec!["--supported-versions=0.1,0.2"];
    args.extend_from_slice(extra);
    Ok(hcp::start_manager(lab, &args, "info,kube=warn", &lab.dir.join(log)).await?)
}

/// The guest kubeconfig Secret `name` of a hosted cluster on `guest`.
pub async fn guest_kubeconfig_secret(lab: &Lab, guest: &Cluster, name: &str) -> anyhow::Result<()> {
    Ok(hcp::guest_kubeconfig_secret(&lab.infra_client(), guest, name).await?)
}

/// Creates the guest kubeconfig Secret and the HostedCluster.
pub async fn create_hosted_cluster(
    lab: &Lab,
    guest: &Cluster,
    name: &str,
    version: &str,
    platform: Value,
) -> anyhow::Result<()> {
    Ok(hcp::create_hosted_cluster(&lab.infra_client(), guest, name, version, platform).await?)
}

pub fn condition_message(hc: &DynamicObject, type_: &str) -> String {
    hc.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The condition `type_` of a dynamic object: (status, reason).
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Writes by the manager on guest cluster `server` (create, update,
/// patch, delete).
pub fn writes(server: &Cluster) -> u64 {
    server.counters().writes_by(GUEST_USER)
}

/// Waits until `check` accepts the named object (or its absence).
pub async fn until<K, T>(
    api: &Api<K>,
    name: &str,
    what: &str,
    check: impl FnMut(Option<&K>) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    crate::common::until_within(api, name, what, WAIT, check).await
}

/// Waits until `check` accepts a dynamic object (or its absence).
pub async fn until_dynamic<T>(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    mut check: impl FnMut(Option<&DynamicObject>) -> Option<T>,
) -> anyhow::Result<T> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = async {
        let mut events = std::pin::pin!(watcher::watcher(api.clone(), config));
        let mut seen = false;
        let mut last = None;
        while let Some(event) = events.next().await {
            let found = match event? {
                Event::Init => {
                    seen = false;
                    None
                }
                Event::InitApply(o) | Event::Apply(o) => {
                    seen = true;
                    let r = check(Some(&o));
                    last = Some(o);
                    r
                }
                Event::InitDone if !seen => check(None),
                Event::InitDone => None,
                Event::Delete(_) => {
                    last = None;
                    check(None)
                }
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        bail!("watch ended; last seen: {last:#?}")
    };
    match tokio::time::timeout(WAIT, watch).await {
        Ok(r) => r.with_context(|| format!("waiting for {what}")),
        Err(_) => bail!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Waits until `check` accepts the objects matching `labels` (watching).
pub async fn until_list<K, T>(
    api: &Api<K>,
    labels: &str,
    what: &str,
    check: impl FnMut(&[K]) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    crate::common::until_list_within(api, labels, what, WAIT, check).await
}

/// Waits until the HostedCluster is reconciled: every object in place. (In
/// a lab without a management kubelet nothing runs the CSI controller and
/// the CCM, so such a cluster is never Available.)
pub async fn until_reconciled(lab: &Lab, name: &str) -> anyhow::Result<DynamicObject> {
    let api = hosted_clusters(&lab.infra_client());
    until_dynamic(
        &api,
        name,
        &format!("HostedCluster {name} reconciled"),
        |hc| {
            hc.filter(|hc| is_true(hc, "ReconciliationSucceeded"))
                .cloned()
        },
    )
    .await
}

/// Waits until the HostedCluster is Available.
pub async fn until_available(lab: &Lab, name: &str) -> anyhow::Result<DynamicObject> {
    let api = hosted_clusters(&lab.infra_client());
    until_dynamic(
        &api,
        name,
        &format!("HostedCluster {name} Available"),
        |hc| hc.filter(|hc| is_true(hc, "Available")).cloned(),
    )
    .await
}

/// The manager's log tail, for failure messages.
pub fn log_of(d: &Daemon) -> String {
    let log = d.log();
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

// === the guest node agent stand-in ===

fn ready_node(name: &str, version: Option<&str>) -> Node {
    let now = Time(jiff::Timestamp::now());
    let mut annotations = BTreeMap::new();
    if let Some(v) = version {
        annotations.insert(CURRENT_VERSION.to_string(), v.to_string());
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("kubevirt://{name}")),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// Plays kubelet and the in-place update agent of every VM of `infra_id`:
/// a Running VMI registers its guest Node (Ready, `current-version` = the
/// VM's version annotation, after `boot`); a pod on one of those Nodes that
/// is being deleted (evicted by a drain, say) is stopped and its deletion
/// confirmed (grace period 0); a Node asked for another version
/// (`desired-version`) reports it after `update`. Stops when dropped.
pub struct NodeAgent {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl NodeAgent {
    /// Stops the agent and waits until its watches are closed.
    pub async fn stop(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn start(
        infra: Client,
        guest: Client,
        infra_namespace: &str,
        infra_id: &str,
        boot: Duration,
        update: Duration,
    ) -> Self {
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), infra_namespace);
        let vms: Api<VirtualMachine> = Api::namespaced(infra, infra_namespace);
        let pods: Api<Pod> = Api::all(guest.clone());
        let nodes: Api<Node> = Api::all(guest.clone());
        let selector = format!("{INFRA_ID_LABEL}={infra_id}");
        let registered = Arc::new(Mutex::new(BTreeSet::<String>::new()));
        let mine = registered.clone();
        let register_nodes = nodes.clone();
        let register = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(
                vmis,
                watcher::Config::default().labels(&selector)
            ));
            while let Some(event) = events.next().await {
                let Ok(Event::Apply(vmi) | Event::InitApply(vmi)) = event else {
                    continue;
                };
                if vmi.phase() != "Running" || vmi.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = vmi.name_any();
                if matches!(register_nodes.get_opt(&name).await, Ok(Some(_))) {
                    continue;
                }
                let version = vms.get_opt(&name).await.ok().flatten().and_then(|vm| {
                    vm.metadata
                        .annotations
                        .and_then(|mut a| a.remove(VERSION_ANNOTATION))
                });
                let nodes = register_nodes.clone();
                if let Ok(mut names) = mine.lock() {
                    names.insert(name.clone());
                }
                tokio::spawn(async move {
                    tokio::time::sleep(boot).await;
                    let node = ready_node(&name, version.as_deref());
                    if nodes.create(&PostParams::default(), &node).await.is_ok() {
                        let _ = nodes
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": node.status})),
                            )
                            .await;
                    }
                });
            }
        });
        let agent = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher::watcher(nodes.clone(), watcher::Config::default()));
            while let Some(event) = events.next().await {
                let Ok(Event::Apply(node) | Event::InitApply(node)) = event else {
                    continue;
                };
                let annotations = node.metadata.annotations.clone().unwrap_or_default();
                let (Some(desired), current) = (
                    annotations.get(DESIRED_VERSION),
                    annotations.get(CURRENT_VERSION),
                ) else {
                    continue;
                };
                if Some(desired) == current {
                    continue;
                }
                let (nodes, name, desired) = (nodes.clone(), node.name_any(), desired.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(update).await;
                    let _ = nodes
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(
                                &json!({"metadata": {"annotations": {CURRENT_VERSION: desired}}}),
                            ),
                        )
                        .await;
                });
            }
        });
        let kubelet = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let Ok(Event::Apply(pod) | Event::InitApply(pod)) = event else {
                    continue;
                };
                let on_mine = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| registered.lock().is_ok_and(|names| names.contains(n)));
                if !on_mine || pod.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                let api: Api<Pod> =
                    Api::namespaced(guest.clone(), &pod.namespace().unwrap_or_default());
                let _ = lab_guest::kubelet::confirm_deletion(&api, &pod).await;
            }
        });
        Self {
            tasks: vec![register, agent, kubelet],
        }
    }
}
