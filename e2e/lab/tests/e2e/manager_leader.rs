//! Two managers with leader election: one holds the Lease and reconciles;
//! on SIGTERM it exits cleanly and releases the Lease, and the other takes
//! over at once and reconciles from then on.

use std::time::Duration;

use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn holder(lease: Option<&Lease>) -> Option<String> {
    lease?
        .spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_stops() -> anyhow::Result<()> {
    let lab = lab().await?;
    let mut a = start_manager(&lab, &["--leader-elect=true", "--identity=manager-a"]).await?;
    let infra = lab.infra_client();
    let leases: Api<Lease> = Api::namespaced(infra.clone(), MANAGER_NAMESPACE);
    let first = until(&leases, "kubevirt-hcp-manager", "a leader", holder).await;
    let mut b = start_manager_as(
        &lab,
        &["--leader-elect=true", "--identity=manager-b"],
        "hcp-manager-b.log",
    )
    .await?;

    let result = async {
        ensure!(first? == "manager-a", "manager-a started first and should lead");
        create_hosted_cluster(&lab, &lab.guest, "guest1", "0.1.0", json!({})).await?;
        until_reconciled(&lab, "guest1").await?;

        // The leader stops; it exits cleanly and hands the lease over.
        let status = a.terminate(Duration::from_secs(10)).await?.context("manager-a still running")?;
        ensure!(status.success(), "manager-a exited with {status}");
        until(&leases, "kubevirt-hcp-manager", "manager-b leading", |l| {
            holder(l).filter(|h| h == "manager-b")
        })
        .await?;

        // The new leader reconciles.
        hosted_clusters(&infra)
            .patch(
                "guest1",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"platform": {"kubevirt": {"storageDriver": {"type": "None"}}}}})),
            )
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), "clusters-guest1");
        until(&deployments, "kubevirt-csi-controller", "CSI controller pruned by manager-b", |d| d.is_none().then_some(()))
            .await?;
        Ok(())
    }
    .await;
    let log = format!("manager-a:\n{}\nmanager-b:\n{}", log_of(&a), log_of(&b));
    a.terminate(Duration::from_secs(5)).await?;
    b.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| log)
}
