//! The failure table of hosted control planes: what a HighlyAvailable
//! hosted cluster survives in its management cluster, with a client writing
//! through its published endpoint throughout (one retry allowed). Each test
//! prints what was lost, for how long, and the longest time the hosted API
//! went without a successful write.
//!
//! - A management node lost (the management kubelet's machine dies: its
//!   pods' processes killed, its Lease no longer renewed): no write is
//!   lost, etcd keeps its quorum, and the node lifecycle controller marks
//!   the node and its pods not ready, so the Services drop them.
//! - The management control plane lost (its kube-apiserver killed): the
//!   hosted cluster runs on in its own processes, `/readyz` answers, no
//!   write is lost, and when the management API server returns the manager
//!   converges a change made to the cluster.

use std::time::{Duration, Instant};

use crate::manager_support::hosted::*;
use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
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
        let mut writer = Writer::start(guest_client(&kubeconfig).await?);
        writer.more(3).await?;

        // The management control plane goes; the hosted API stays.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_api_outlives_a_lost_management_node() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);
    let cp = "clusters-node1";

    let result = async {
        let hc = highly_available(&hcs, "node1").await?;
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, "node1", &endpoint_of(&hc)?).await?;
        let mut writer = Writer::start(guest_client(&kubeconfig).await?);
        writer.more(3).await?;

        // The node of etcd-0 dies, with whatever else ran there.
        let pods: Api<Pod> = Api::namespaced(infra.clone(), cp);
        let node = pods
            .get("etcd-0")
            .await?
            .spec
            .and_then(|s| s.node_name)
            .context("etcd-0 is not bound")?;
        let mut there: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node))
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect();
        there.sort();
        let kubelet = lab.kubelet.as_ref().context("a management lab has a kubelet")?;
        let lost = Instant::now();
        kubelet.lose_node(&node);
        writer.more(10).await?;

        // The node lifecycle controller notices; the Services drop its pods.
        let nodes: Api<Node> = Api::all(infra.clone());
        until(&nodes, &node, "the lost node not Ready", |n| {
            let ready = n?
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .status
                .clone();
            (ready != "True").then_some(())
        })
        .await?;
        let noticed = lost.elapsed();
        until(&pods, "etcd-0", "etcd-0 not Ready", |p| {
            kubevirt_lab::wait::pod_ready(p).is_none().then_some(())
        })
        .await?;
        writer.more(10).await?;
        let hc = until_dynamic(&hcs, "node1", "etcd with 2 of 3 members", |hc| {
            hc.filter(|hc| condition_message(hc, "EtcdAvailable") == "2 of 3 etcd members ready")
                .cloned()
        })
        .await?;
        ensure!(
            condition(&hc, "EtcdAvailable").is_some_and(|(s, _)| s == "True"),
            "{}",
            hc.data["status"]
        );
        let written = writer.stop().await?;
        eprintln!(
            "lost: management node {node} with {}; noticed after {:.1} s; the hosted API: {} writes, \
             {} failed after one retry, longest time without a successful write {:.2} s",
            there.join(", "),
            noticed.as_secs_f64(),
            written.count,
            written.failed.len(),
            written.longest_gap.as_secs_f64()
        );
        ensure!(
            written.failed.is_empty(),
            "writes failed after one retry: {:?}",
            written.failed
        );
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}
