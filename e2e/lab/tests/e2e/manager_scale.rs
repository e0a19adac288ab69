//! The manager at scale: 12 HostedClusters, each with its own guest control
//! plane (a real kube-apiserver and kube-controller-manager, some 300 MB
//! each, which bounds how many a CI machine holds), all become Available;
//! once they are, a round of reconciles of every cluster writes nothing.
//! (How fast, and in how much memory, is the benchmark's to measure:
//! `bench`, section manager.)

use std::time::{Duration, Instant};

use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use kube::api::{Patch, PatchParams};
use lab_cluster::Cluster;
use serde_json::json;

const CLUSTERS: usize = 12;
/// Bound of the wait for all clusters (a hang guard, not a target).
const AVAILABLE_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clusters_available_quietly() -> anyhow::Result<()> {
    let lab = lab().await?;
    let guests = lab.add_clusters("g", CLUSTERS).await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let infra = lab.infra_client();

    let result = async {
        // The published versions are written once the manager runs.
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(infra.clone(), MANAGER_NAMESPACE);
        until(&cms, "supported-versions", "manager up", |cm| {
            cm.map(|_| ())
        })
        .await?;
        let started = Instant::now();
        for (i, guest) in guests.iter().enumerate() {
            create_hosted_cluster(&lab, guest, &format!("g{i}"), "0.1.0", json!({})).await?;
        }
        // Watch until every cluster is Available.
        let hcs = hosted_clusters(&infra);
        tokio::time::timeout(
            AVAILABLE_WITHIN,
            kubevirt_lab::hcp::all_reconciled(&hcs, CLUSTERS),
        )
        .await
        .with_context(|| {
            format!("not all {CLUSTERS} clusters Available within {AVAILABLE_WITHIN:?}")
        })??;
        let took = started.elapsed();
        eprintln!("{CLUSTERS} clusters Available after {took:?}");

        // A reconcile of every cluster (each poked once) writes nothing.
        let quiet = |servers: &[Cluster]| kubevirt_lab::hcp::writes(&lab.infra, servers);
        let breakdown = |servers: &[Cluster]| {
            let mut all = std::collections::BTreeMap::new();
            let guests = servers.iter().map(|s| (s, GUEST_USER));
            for (s, me) in guests.chain(std::iter::once((&lab.infra, USER))) {
                for ((verb, resource, user), n) in s.counters().counts {
                    if user == me && !matches!(verb.as_str(), "get" | "list" | "watch") {
                        *all.entry((verb, resource)).or_insert(0u64) += n;
                    }
                }
            }
            all
        };
        let before_detail = breakdown(&guests);
        let before = quiet(&guests);
        for i in 0..CLUSTERS {
            hcs.patch(
                &format!("g{i}"),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
            )
            .await?;
        }
        // Writing nothing has no event to wait for: a bounded quiet period
        // for the reconciles to run.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = quiet(&guests);
        let after_detail = breakdown(&guests);
        let changed: Vec<_> = after_detail
            .iter()
            .filter(|(k, n)| before_detail.get(*k) != Some(*n))
            .map(|(k, n)| (k.clone(), n - before_detail.get(k).copied().unwrap_or(0)))
            .collect();
        ensure!(
            before == after,
            "{} writes in a reconcile round that changed nothing: {changed:?}",
            after - before
        );

        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    for g in guests {
        g.shutdown().await;
    }
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}
