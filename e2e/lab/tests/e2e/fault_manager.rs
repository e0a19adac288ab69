//! The hosted-control-plane manager killed with SIGKILL at random moments
//! while 30 operations run against it (10 HostedClusters, each with a guest
//! control plane of its own, created; 15 spec changes: storage driver and
//! cloud-provider options; 5 of the clusters deleted again), and restarted
//! each time: afterwards every remaining cluster is reconciled
//! (ReconciliationSucceeded) with its latest generation observed and the objects of that
//! spec, and every deleted one is gone with its control-plane namespace
//! and its guest objects. The seed of the kill schedule is printed;
//! `FAULT_SEED=<n>` replays it.
//!
//! Build the manager first: `cargo build -p kubevirt-hcp-manager`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fault_support::{Finally, Rng, kill_at_random};
use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use lab_cluster::Cluster;
use serde_json::json;
use tokio::sync::watch;

const CLUSTERS: usize = 10;
/// Long enough for a restarted manager to finish a reconcile or two.
const KILL_EVERY: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(1200));
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn name(i: usize) -> String {
    format!("hc{i}")
}

/// Deleted again: every other cluster.
fn deleted(i: usize) -> bool {
    i % 2 == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_converge_after_the_manager_is_killed_at_random() -> anyhow::Result<()> {
    let lab = lab().await?;
    let guests = lab.add_clusters("hc", CLUSTERS).await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let mut rng = Rng::from_env("fault_manager");
    let outcome = tokio::time::timeout(
        TEST_TIMEOUT,
        scenario(&lab, &guests, &mut manager, &mut rng),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("not done within {TEST_TIMEOUT:?}")));
    let log = log_of(&manager);
    let full = manager.log();
    manager.terminate(Duration::from_secs(5)).await?;
    for g in guests {
        g.shutdown().await;
    }
    lab.shutdown().await?;
    outcome.with_context(|| format!("manager log (tail):\n{log}"))?;
    ensure!(!full.contains("panicked"), "the manager panicked:\n{log}");
    Ok(())
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    guests: &[Cluster],
    manager: &mut kubevirt_lab::daemon::Daemon,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);
    let (done_tx, done_rx) = watch::channel(false);

    let operations = async {
        let mut ops = 0usize;
        for (i, guest) in guests.iter().enumerate() {
            create_hosted_cluster(lab, guest, &name(i), "0.1.0", json!({})).await?;
            ops += 1;
            // Paced by the manager, so kills land inside reconciles.
            until_reconciled(lab, &name(i)).await?;
            // A spec change on every cluster: the CSI driver goes (None);
            // on the kept ones another follows (zone and region).
            hcs.patch(
                &name(i),
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"platform": {"kubevirt": {
                    "storageDriver": {"type": "None"}}}}})),
            )
            .await?;
            ops += 1;
            if deleted(i) {
                hcs.delete(&name(i), &DeleteParams::default()).await?;
            } else {
                hcs.patch(
                    &name(i),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"platform": {"kubevirt": {
                        "cloudProvider": {"zoneAndRegionEnabled": true}}}}})),
                )
                .await?;
            }
            ops += 1;
        }
        let _ = done_tx.send(true);
        anyhow::Ok(ops)
    };
    let killer = kill_at_random(
        manager,
        rng,
        KILL_EVERY,
        usize::MAX,
        done_rx,
        Finally::KillOnceMore,
    );
    let (ops, kills) = tokio::join!(operations, killer);
    let (ops, kills) = (ops?, kills?);
    println!("{ops} operations, {kills} kills");
    ensure!(
        kills >= 3,
        "only {kills} kills happened: the run proves little"
    );

    let namespaces: Api<Namespace> = Api::all(infra.clone());
    for (i, guest) in guests.iter().enumerate() {
        let cp = format!("clusters-{}", name(i));
        let drivers: Api<CSIDriver> = Api::all(guest.client());
        if deleted(i) {
            until_dynamic(&hcs, &name(i), "a deleted HostedCluster gone", |hc| {
                hc.is_none().then_some(())
            })
            .await?;
            until(&namespaces, &cp, "its control-plane namespace gone", |ns| {
                ns.is_none().then_some(())
            })
            .await?;
            ensure!(
                drivers.list(&ListParams::default()).await?.items.is_empty(),
                "{}: guest CSIDriver left behind",
                name(i)
            );
            continue;
        }
        // The latest spec is the one observed, and what exists matches it.
        until_dynamic(&hcs, &name(i), "the latest spec converged", |hc| {
            let hc = hc?;
            (is_true(hc, "ReconciliationSucceeded")
                && hc.data["status"]["observedGeneration"] == hc.metadata.generation.unwrap_or(0))
            .then_some(())
        })
        .await?;
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), &cp);
        let names: BTreeSet<String> = deployments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|d| d.name_any())
            .collect();
        ensure!(
            names == BTreeSet::from(["kubevirt-cloud-controller-manager".to_string()]),
            "{}: Deployments {names:?} for storage driver None",
            name(i)
        );
        ensure!(
            drivers.list(&ListParams::default()).await?.items.is_empty(),
            "{}: guest CSIDriver with storage driver None",
            name(i)
        );
    }
    Ok(())
}
