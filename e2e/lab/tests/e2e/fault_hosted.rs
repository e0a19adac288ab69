//! The failure table of hosted control planes: what a hosted cluster
//! survives in its management cluster. The case the lab plays today: the
//! management control plane lost (its kube-apiserver killed). The hosted
//! HighlyAvailable cluster runs on in its own processes: a client writing
//! through the published endpoint throughout loses no write (one retry
//! allowed), `/readyz` answers, and when the management API server returns
//! the manager converges a change made to the cluster. The test prints what
//! was killed, for how long, and the longest time the hosted API went
//! without a successful write.

use std::time::{Duration, Instant};

use crate::manager_support::hosted::*;
use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use kube::api::{Patch, PatchParams};
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
