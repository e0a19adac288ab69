//! Hosted control planes, in a management lab of their own (kube-scheduler
//! and the management kubelet run the real etcd and Kubernetes binaries
//! from the manager's manifests): `n` SingleReplica HostedClusters created
//! one after another, each timed from creation to Available (the API server
//! answering `/readyz` through its published endpoint, watched); the memory
//! of one hosted control plane (its pods' processes); the manager's writes
//! to the management cluster when every cluster is reconciled once more
//! with nothing changed.

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

use super::{Report, rss_mib};
use crate::hcp::{self, MANAGER_NAMESPACE, NS, hosted_clusters};
use crate::kubelet::ImageMap;
use crate::{Lab, LabConfig, LabError};

const SECTION: &str = "hosted control planes";
/// Bound of every wait (a hang guard, not a target).
const WAIT: Duration = Duration::from_secs(180);

fn hosted_cluster(name: &str) -> Result<DynamicObject, LabError> {
    serde_json::from_value(json!({
        "apiVersion": "hcp.kubevirt-rs.io/v1alpha1",
        "kind": "HostedCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "release": {"version": "0.1.0", "kubernetesVersion": lab_cluster::KUBERNETES_VERSION},
            "infraID": format!("{name}-id"),
            "services": [{"service": "APIServer", "servicePublishingStrategy": {"type": "LoadBalancer"}}],
        }
    }))
    .map_err(|e| LabError::Invalid(format!("HostedCluster {name}: {e}")))
}

/// `n` hosted control planes, one after another.
pub async fn control_planes(n: usize, report: &mut Report) -> Result<(), LabError> {
    let binaries = lab_cluster::Binaries::find()?;
    let lab = Lab::start(LabConfig {
        vms: 0,
        devices: false,
        management: Some(ImageMap::standard(&binaries)),
        ..LabConfig::default()
    })
    .await?;
    let mut manager = None;
    let result = async {
        let management = lab.infra_client();
        hcp::install_crds(&management).await?;
        hcp::ensure_namespace(&management, MANAGER_NAMESPACE).await?;
        hcp::ensure_namespace(&management, NS).await?;
        manager = Some(
            hcp::start_manager_in_netns(
                &lab,
                &["--supported-versions=0.1"],
                "warn",
                &lab.dir.join("logs").join("hcp-manager.log"),
            )
            .await?,
        );
        let hcs = hosted_clusters(&management);
        let mut took = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("hcp{i}");
            let started = Instant::now();
            hcs.create(&PostParams::default(), &hosted_cluster(&name)?)
                .await?;
            // The earlier clusters are Available already: i + 1 means this one.
            tokio::time::timeout(WAIT, hcp::all_available(&hcs, i + 1))
                .await
                .map_err(|_| LabError::Timeout {
                    what: format!("HostedCluster {name} Available"),
                    after: WAIT,
                })??;
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        let p50 = took[took.len() / 2];
        report.add_target(
            SECTION,
            format!("HostedCluster created -> Available, p50 of {n}"),
            p50,
            "ms",
            "<= 10000",
        );
        report.add(
            SECTION,
            format!("... max of {n}"),
            took[took.len() - 1],
            "ms",
        );

        if let Some(kubelet) = &lab.kubelet {
            let rss: f64 = (0..n)
                .flat_map(|i| kubelet.pids(&format!("{NS}-hcp{i}")))
                .filter_map(rss_mib)
                .sum();
            report.add(
                SECTION,
                "memory per hosted control plane (RSS of its four processes)",
                rss / n.max(1) as f64,
                "MiB",
            );
        }
        if let Some(rss) = manager.as_ref().and_then(|m| m.pid()).and_then(rss_mib) {
            report.add(
                SECTION,
                format!("manager RSS holding {n} hosted control planes"),
                rss,
                "MiB",
            );
        }

        let before = lab.infra.counters().writes_by(hcp::USER);
        for i in 0..n {
            hcs.patch(
                &format!("hcp{i}"),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"bench/poke": "1"}}})),
            )
            .await?;
        }
        tokio::time::sleep(super::manager::QUIET_WINDOW).await;
        let after = lab.infra.counters().writes_by(hcp::USER);
        report.add_target(
            SECTION,
            format!("management writes per reconcile with nothing changed ({n} clusters poked)"),
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
    let shutdown = lab.shutdown().await;
    result.and(shutdown)
}
