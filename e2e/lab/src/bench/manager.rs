//! The hosted-control-plane manager at scale, in a lab of its own (the
//! management cluster is the infra cluster, no worker VMs): `n`
//! HostedClusters, each with its own guest API server, created at once;
//! the time until all are reconciled (watched; nothing runs their CSI
//! controllers and CCMs here, so they are not Available); the manager's
//! writes while every cluster is reconciled once more with nothing
//! changed; its memory idle and holding them all.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Report, rss_mib};
use crate::hcp::{self, MANAGER_NAMESPACE, NS, hosted_clusters};
use crate::{Lab, LabConfig, LabError, wait};

const SECTION: &str = "manager";
/// Bound of every wait (a hang guard, not a target).
const WAIT: Duration = Duration::from_secs(300);
/// How long the manager is watched for writes after every cluster was
/// poked: writing nothing has no event to wait for.
pub const QUIET_WINDOW: Duration = Duration::from_secs(5);

/// `n` HostedClusters at once: time to reconciled, quiet reconciles, memory.
pub async fn clusters(n: usize, report: &mut Report) -> Result<(), LabError> {
    let lab = Lab::start(LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    })
    .await?;
    let mut guests = Vec::with_capacity(n);
    let mut manager = None;
    let result = async {
        let management = lab.infra_client();
        hcp::install_crds(&management).await?;
        hcp::ensure_namespace(&management, MANAGER_NAMESPACE).await?;
        hcp::ensure_namespace(&management, NS).await?;
        for i in 0..n {
            guests.push(lab.add_cluster(&format!("hc{i}")).await?);
        }
        let m = manager.insert(
            hcp::start_manager(
                &lab,
                &["--supported-versions=0.1"],
                "warn",
                &lab.dir.join("logs").join("hcp-manager.log"),
            )
            .await?,
        );
        let cms: Api<ConfigMap> = Api::namespaced(management.clone(), MANAGER_NAMESPACE);
        wait::until(&cms, "supported-versions", WAIT, |cm| cm.map(|_| ())).await?;
        if let Some(rss) = m.pid().and_then(rss_mib) {
            report.add(SECTION, "manager RSS idle", rss, "MiB");
        }

        let hcs = hosted_clusters(&management);
        let started = Instant::now();
        let all_available = async {
            hcp::all_reconciled(&hcs, n).await?;
            Ok::<_, LabError>(started.elapsed())
        };
        let create = async {
            for (i, guest) in guests.iter().enumerate() {
                hcp::create_hosted_cluster(
                    &management,
                    guest,
                    &format!("hc{i}"),
                    "0.1.0",
                    json!({}),
                )
                .await?;
            }
            Ok::<_, LabError>(())
        };
        let (took, created) = tokio::join!(tokio::time::timeout(WAIT, all_available), create);
        created?;
        let took = took.map_err(|_| LabError::Timeout {
            what: format!("{n} HostedClusters reconciled"),
            after: WAIT,
        })??;
        report.add_target(
            SECTION,
            format!("{n} HostedClusters created -> all reconciled"),
            took.as_secs_f64(),
            "s",
            "<= 30",
        );
        if let Some(rss) = m.pid().and_then(rss_mib) {
            report.add_target(
                SECTION,
                format!("manager RSS holding {n} HostedClusters"),
                rss,
                "MiB",
                "<= 48",
            );
        }

        // Every cluster reconciled once more, nothing changed.
        let before = hcp::writes(&lab.infra, &guests);
        for i in 0..n {
            hcs.patch(
                &format!("hc{i}"),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"bench/poke": "1"}}})),
            )
            .await?;
        }
        tokio::time::sleep(QUIET_WINDOW).await;
        let after = hcp::writes(&lab.infra, &guests);
        report.add_target(
            SECTION,
            format!(
                "writes per reconcile with nothing changed ({n} clusters poked, {}s window)",
                QUIET_WINDOW.as_secs()
            ),
            (after - before) as f64 / n.max(1) as f64,
            "req",
            "<= 0",
        );
        Ok(())
    }
    .await;
    if let Some(mut m) = manager {
        let _ = m.terminate(Duration::from_secs(5)).await;
    }
    for g in guests {
        g.shutdown().await;
    }
    let shutdown = lab.shutdown().await;
    result.and(shutdown)
}
