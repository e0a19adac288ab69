//! The failure table of hosted control planes: what a HighlyAvailable
//! hosted cluster (its API server published through the infra load
//! balancer) survives in its management cluster, with a client writing
//! through its published endpoint throughout and another requesting a
//! LoadBalancer Service of the cluster's joined nodes every 20 ms (the lab
//! plays the nodes' data plane, `kubevirt_lab::hosted_data_plane`). Each
//! test prints what was lost, for how long, the longest time the hosted
//! API went without a successful write, and what the requests saw.
//!
//! - A management node lost (its machine dies: the management kubelet's
//!   pods there killed, its Lease no longer renewed, its kube-proxy gone,
//!   and the VM of the hosted cluster it ran gone with it), or a whole zone
//!   of them (two of six nodes; the control plane spreads one etcd member
//!   per zone): no write is lost (retried on new connections for up to
//!   30 s), etcd keeps its quorum, and the node lifecycle controller marks
//!   the nodes and their pods not ready, so the Services drop them; with a
//!   zone lost, the lost API servers come back on the nodes left (the
//!   control-plane pods tolerate a lost node for 30 s). Until
//!   then a new connection may still reach the dead API server, so a write
//!   can fail twice in a row: the interruption is measured, not bounded by
//!   one retry. Then the lost zone's nodes are fenced (the out-of-service
//!   taint, as an operator or a machine health check says a machine is
//!   gone for good): the pod GC deletes their pods, the lost etcd member
//!   starts again on a node left from its volume (3 of 3 members), and so
//!   does the lost VM: its Node is Ready again and the Services take its
//!   pod back. The data plane: a NodePool of two VMs on different zones,
//!   an echo pod on each; until the infra Service drops the lost VM (the
//!   CCM follows the hosted cluster's EndpointSlices, which drop the pod
//!   once the hosted node lifecycle controller sees the VM's kubelet
//!   gone) and the live VM's node port drops the lost pod, a connection
//!   may be refused; every request is answered within
//!   [`DATA_PLANE_ATTEMPTS`] attempts, each on a new connection.
//! - The management control plane lost (its kube-apiserver killed): the
//!   hosted cluster runs on in its own processes, `/readyz` answers, no
//!   write fails twice in a row, and when the management API server
//!   returns the manager converges a change made to the cluster. Its data
//!   plane (a NodePool of one VM) never stops: no request fails, not even
//!   once.

use std::time::{Duration, Instant};

use crate::manager_support::hosted::*;
use crate::manager_support::*;
use crate::net_support::Requester;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use kubevirt_lab::hosted_data_plane::{EchoService, HostedDataPlane};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_api_outlives_its_management_control_plane() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);

    let result = async {
        let hc = highly_available(&hcs, "ft1").await?;
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, "ft1", &endpoint_of(&hc)?).await?;
        // A client that may wait on watches (guest_config's fails fast).
        let mut config = guest_config(&kubeconfig).await?;
        config.read_timeout = None;
        let guest = kube::Client::try_from(config)?;
        let (plane, web) = load_balanced_pods(&lab, &infra, &hc, &guest, 1).await?;
        let ingress = web.ingress;
        let requests = Requester::start(&lab, ingress, 0);
        let mut writer = Writer::start(guest_config(&kubeconfig).await?, Retries::Once);
        writer.more(3).await?;

        // The management control plane goes; the hosted API stays, and so
        // does the data plane.
        let killed = Instant::now();
        lab.infra.kill_apiserver().await;
        writer.more(20).await?;
        ensure!(kubectl(&kubeconfig, &["get", "--raw", "/readyz"])?.trim() == "ok");
        lab.infra
            .restart_apiserver()
            .await
            .context("restart the management kube-apiserver")?;
        let outage = killed.elapsed();
        writer.more(3).await?;
        let written = writer.stop().await?;
        let served = requests.stop().await?;
        plane.stop().await;
        eprintln!("the data plane, through the ingress {ingress}: {served}");
        ensure!(
            served.failed.is_empty() && served.count > 0,
            "requests through the ingress failed: {:?}",
            served.failed
        );
        eprintln!(
            "killed: the management kube-apiserver, for {:.1} s; the hosted API: {} writes, \
             {} failed after one retry, longest time without a successful write {:.2} s",
            outage.as_secs_f64(),
            written.count,
            written.failed.len(),
            written.longest_gap.as_secs_f64()
        );
        ensure!(
            written.failed.is_empty(),
            "writes failed after one retry: {:?}",
            written.failed
        );

        // The manager takes up its work again: a change is converged.
        hcs.patch(
            "ft1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"baseDomain": "after-the-outage.example"}})),
        )
        .await?;
        until_dynamic(&hcs, "ft1", "the change converged and Available", |hc| {
            let hc = hc?;
            let observed = hc.data["status"]["observedGeneration"].as_i64();
            (observed.is_some()
                && observed == hc.metadata.generation
                && condition(hc, "Available").is_some_and(|(s, _)| s == "True"))
            .then_some(())
        })
        .await
        .with_context(|| "after the outage")?;
        Ok(())
    }
    .await;
    if result.is_err()
        && let Ok(hc) = hcs.get("ft1").await
    {
        eprintln!(
            "HostedCluster ft1 at the end: {} {}",
            hc.metadata.generation.unwrap_or(0),
            hc.data["status"]
        );
    }
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

/// The data plane of hosted cluster `hc`: a NodePool of `vms` VMs, joined;
/// an echo pod on each behind a LoadBalancer Service, routed through the
/// infra load balancer. Returns the lab's data plane of the nodes and the
/// Service.
async fn load_balanced_pods(
    lab: &kubevirt_lab::Lab,
    infra: &kube::Client,
    hc: &kube::core::DynamicObject,
    guest: &kube::Client,
    vms: usize,
) -> anyhow::Result<(HostedDataPlane, EchoService)> {
    let cluster = hc.name_any();
    node_pools(infra)
        .create(
            &PostParams::default(),
            &node_pool(
                &format!("{cluster}-workers"),
                &cluster,
                i32::try_from(vms)?,
                "0.1.0",
                json!({}),
            )?,
        )
        .await?;
    let nodes: Api<Node> = Api::all(guest.clone());
    let ready = crate::common::until_list_within(&nodes, "", "Ready nodes", JOIN_WAIT, |n| {
        let ready: Vec<String> = n
            .iter()
            .filter(|n| kubevirt_lab::wait::node_ready(n))
            .map(|n| n.name_any())
            .collect();
        (ready.len() == vms).then_some(ready)
    })
    .await?;
    let plane = HostedDataPlane::start(lab, hc, &ready).await?;
    let web = plane.serve_echo(lab, guest, "web", WAIT).await?;
    Ok((plane, web))
}

/// A hosted cluster and its VMs take longer than [`WAIT`] to come up.
const JOIN_WAIT: Duration = Duration::from_secs(180);

/// How long a write may keep failing when a node is lost. Until the node
/// lifecycle controller marks the node's pods not ready (its 50 s grace),
/// the Services still name the dead API server, and a new connection may
/// land there (kube-proxy does not health-check): a write can fail twice
/// in a row. The test measures the interruption (its longest gap).
const LOST_NODE_RETRIES: Duration = Duration::from_secs(30);

/// What a failure takes down, given the infra node a VM of the hosted
/// cluster runs on.
enum Loss {
    /// That node.
    Node,
    /// Every node of that node's zone.
    Zone,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_api_outlives_a_lost_management_node() -> anyhow::Result<()> {
    outlives(3, "node1", Loss::Node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_api_outlives_a_lost_management_zone() -> anyhow::Result<()> {
    // Six nodes, two per zone: the HA control plane spreads over the zones.
    outlives(6, "zone1", Loss::Zone).await
}

/// How often a request through the ingress is tried, on a new connection
/// each time, while a lost VM is still named by the Services: the infra
/// load balancer alternates between the two VMs, and the live VM's node
/// port between the two pods, so one attempt in four or more may reach
/// the live pod until the node lifecycle controllers take the lost ones out.
const DATA_PLANE_ATTEMPTS: usize = 8;

/// A HighlyAvailable hosted cluster `name` on `nodes` management nodes,
/// with a NodePool of two VMs serving a LoadBalancer Service, loses what
/// `loss` says (the node of the first VM, or its zone), while a client
/// writes through the cluster's endpoint and another requests the Service.
async fn outlives(nodes: usize, name: &str, loss: Loss) -> anyhow::Result<()> {
    let lab = management_lab_of(nodes).await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);
    let cp = format!("clusters-{name}");

    let result = async {
        let hc = highly_available(&hcs, name).await?;
        let pods: Api<Pod> = Api::namespaced(infra.clone(), &cp);
        let all_nodes: Api<Node> = Api::all(infra.clone());
        let zone_of = |n: &Node| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
                .unwrap_or_default()
        };
        let zones: std::collections::BTreeMap<String, String> = all_nodes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), zone_of(n)))
            .collect();
        let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let is_member = |p: &Pod| p.metadata.name.as_deref().is_some_and(|n| n.starts_with("etcd-"));

        let (_forward, kubeconfig) = admin_kubeconfig(&lab, name, &endpoint_of(&hc)?).await?;
        let mut config = guest_config(&kubeconfig).await?;
        config.read_timeout = None;
        let guest = kube::Client::try_from(config)?;
        let (plane, web) = load_balanced_pods(&lab, &infra, &hc, &guest, 2).await?;
        // Where the VMs run.
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), &cp);
        let mut runs_on = std::collections::BTreeMap::new();
        for pod in &web.pods {
            let vmi = vmis.get(&pod.node).await?;
            let node = vmi.status.and_then(|s| s.node_name).context("a VMI's node")?;
            runs_on.insert(pod.node.clone(), node);
        }

        let bound = pods.list(&ListParams::default()).await?.items;
        // One etcd member per zone (the control plane's zone spread).
        let member_zones: std::collections::BTreeSet<String> = bound
            .iter()
            .filter(|p| is_member(p))
            .filter_map(|p| zones.get(&node_of(p)).cloned())
            .collect();
        ensure!(member_zones.len() == 3, "etcd members in zones {member_zones:?}");

        let mut writer = Writer::start(guest_config(&kubeconfig).await?, Retries::Within(LOST_NODE_RETRIES));
        let requests = Requester::start(&lab, web.ingress, DATA_PLANE_ATTEMPTS - 1);
        writer.more(3).await?;

        // The node of the first VM dies (or its whole zone), with whatever
        // ran there: control-plane pods, the VM.
        let (lost_vm, first) = runs_on.iter().next().context("a VM")?;
        let gone: Vec<String> = match loss {
            Loss::Node => vec![first.clone()],
            Loss::Zone => zones
                .iter()
                .filter(|(_, z)| Some(*z) == zones.get(first))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        let (live_vm, live_on) = runs_on
            .iter()
            .find(|(_, n)| !gone.contains(n))
            .with_context(|| format!("both VMs on the lost nodes: {runs_on:?}"))?;
        let mut there: Vec<String> = bound
            .iter()
            .filter(|p| gone.contains(&node_of(p)))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        there.push(format!("VM {lost_vm}"));
        there.sort();
        let lost_members: Vec<String> = bound
            .iter()
            .filter(|p| is_member(p) && gone.contains(&node_of(p)))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        ensure!(lost_members.len() == 1, "etcd members on the lost nodes: {lost_members:?}");
        let lost = Instant::now();
        for node in &gone {
            lab.lose_node(node);
        }
        writer.more(10).await?;

        // The node lifecycle controller notices; the Services drop its pods.
        for node in &gone {
            until(&all_nodes, node, "the lost node not Ready", |n| {
                (!kubevirt_lab::wait::node_ready(n?)).then_some(())
            })
            .await?;
        }
        let noticed = lost.elapsed();
        until(&pods, &lost_members[0], "the lost etcd member not Ready", |p| {
            kubevirt_lab::wait::pod_ready(p).is_none().then_some(())
        })
        .await?;
        writer.more(10).await?;
        let hc = until_dynamic(&hcs, name, "etcd with 2 of 3 members", |hc| {
            hc.filter(|hc| condition_message(hc, "EtcdAvailable") == "2 of 3 etcd members ready")
                .cloned()
        })
        .await?;
        ensure!(
            condition(&hc, "EtcdAvailable").is_some_and(|(s, _)| s == "True"),
            "{}",
            hc.data["status"]
        );
        // The data plane: both hops forward to the live VM and pod only
        // (the hosted node lifecycle controller saw the lost VM's kubelet
        // stop, as the management one saw the node).
        let live_port = *web
            .node_ports
            .get(live_vm)
            .and_then(|ports| ports.first())
            .context("the live node's port")?;
        let tcp = lab_net::proxy::Listen::tcp;
        let moved = async {
            lab.infra_proxy.until_forwarding(tcp(web.ingress), 1).await;
            plane.proxy.until_forwarding(tcp(live_port), 1).await;
        };
        if tokio::time::timeout(JOIN_WAIT, moved).await.is_err() {
            let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                Api::namespaced(infra.clone(), &cp);
            let slices: Vec<_> = slices
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|s| (s.metadata.name, s.endpoints))
                .collect();
            anyhow::bail!(
                "the Services did not drop the lost VM and its pod within {JOIN_WAIT:?}: \
                 the ingress forwards to {:?}, the live node port to {:?}; infra slices {slices:?}",
                lab.infra_proxy.serving().borrow().get(&tcp(web.ingress)),
                plane.proxy.serving().borrow().get(&tcp(live_port)),
            );
        }
        let moved = lost.elapsed();
        // The lost API servers are replaced on the nodes left (their pods
        // tolerate a lost node for 30 s), where there is room for them.
        let replaced = if matches!(loss, Loss::Zone) {
            let deployments: Api<Deployment> = Api::namespaced(infra.clone(), &cp);
            until(&deployments, "kube-apiserver", "3 API servers again", |d| {
                (d?.status.as_ref()?.available_replicas == Some(3)).then_some(())
            })
            .await?;
            let serving: Vec<String> = pods
                .list(&ListParams::default().labels("app=kube-apiserver"))
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| kubevirt_lab::wait::pod_ready(Some(p)).is_some())
                .map(node_of)
                .collect();
            ensure!(
                serving.len() == 3 && serving.iter().all(|n| !gone.contains(n)),
                "API servers on {serving:?}, lost {gone:?}"
            );
            let servers_back = lost.elapsed();
            // Fenced: the out-of-service taint says the nodes are gone for
            // good, as an operator or a machine health check says it. The
            // pod GC deletes their pods, and the lost etcd member starts
            // again on a node left, from its volume.
            let fenced = Instant::now();
            let taint = json!([{"op": "add", "path": "/spec/taints/-", "value":
                {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}}]);
            for node in &gone {
                all_nodes
                    .patch(node, &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(taint.clone())?))
                    .await?;
            }
            until_dynamic(&hcs, name, "etcd with 3 of 3 members again", |hc| {
                hc.filter(|hc| condition_message(hc, "EtcdAvailable") == "3 of 3 etcd members ready")
                    .map(|_| ())
            })
            .await?;
            let member = pods.get(&lost_members[0]).await?;
            ensure!(
                !gone.contains(&node_of(&member)),
                "etcd member {} is back on lost node {}",
                lost_members[0],
                node_of(&member)
            );
            // So does the lost VM (its launcher pod deleted, KubeVirt
            // starts it again), and its kubelet, with the credentials its
            // disk kept, makes its Node Ready again.
            let restarted_on = until(&vmis, lost_vm, "the lost VM running on a node left", |v| {
                let v = v?;
                let on = v.status.as_ref()?.node_name.clone()?;
                (v.phase() == kubevirt_infra::kubevirt::phase::RUNNING && !gone.contains(&on))
                    .then_some(on)
            })
            .await?;
            let hosted_nodes: Api<Node> = Api::all(guest.clone());
            until(&hosted_nodes, lost_vm, "the lost VM's Node Ready again", |n| {
                kubevirt_lab::wait::node_ready(n?).then_some(())
            })
            .await?;
            // Its pod runs again, and both hops take it back.
            let back = async {
                lab.infra_proxy.until_forwarding(tcp(web.ingress), 2).await;
                plane.proxy.until_forwarding(tcp(live_port), 2).await;
            };
            kubevirt_lab::wait::within(JOIN_WAIT, || "the Services to take the VM back".to_string(), back)
                .await?;
            format!(
                "; 3 API servers again after {:.1} s; the lost nodes fenced, \
                 3 etcd members ({} on {}) and VM {lost_vm} Ready on {restarted_on}, \
                 its pod served again, {:.1} s later",
                servers_back.as_secs_f64(),
                lost_members[0],
                node_of(&member),
                fenced.elapsed().as_secs_f64(),
            )
        } else {
            String::new()
        };
        let written = writer.stop().await?;
        let served = requests.stop().await?.since(lost);
        plane.stop().await;
        eprintln!(
            "lost: management node(s) {} with {}; noticed after {:.1} s{replaced}; the hosted API: {} writes, \
             {} retried, {} failed, longest time without a successful write {:.2} s",
            gone.join(", "),
            there.join(", "),
            noticed.as_secs_f64(),
            written.count,
            written.retried,
            written.failed.len(),
            written.longest_gap.as_secs_f64()
        );
        eprintln!(
            "the data plane, through the ingress {} (VM {live_vm} on {live_on} left): {served} \
             (times after the loss); the Services dropped the lost VM after {:.1} s",
            web.ingress,
            moved.as_secs_f64()
        );
        ensure!(
            written.failed.is_empty(),
            "writes failed for {LOST_NODE_RETRIES:?}: {:?}",
            written.failed
        );
        ensure!(
            served.failed.is_empty() && served.count > 0,
            "requests through the ingress failed {DATA_PLANE_ATTEMPTS} times: {:?}",
            served.failed
        );
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}
