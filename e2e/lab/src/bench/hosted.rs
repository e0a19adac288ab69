//! Hosted control planes, in a management lab of their own (kube-scheduler
//! and the management kubelet run the real etcd and Kubernetes binaries
//! from the manager's manifests).
//!
//! [`control_planes`]: `n` SingleReplica HostedClusters created one after
//! another, each timed from creation to Available (the API server answering
//! `/readyz` through its published endpoint, watched); the memory of one
//! hosted control plane (its pods' processes); the manager's writes to the
//! management cluster when every cluster is reconciled once more with
//! nothing changed.
//!
//! [`shared_etcd`]: `n` SingleReplica HostedClusters on one shared etcd,
//! created at once: each one's creation to Available, the memory of one
//! control plane (no etcd of its own) and of the shared etcd.
//!
//! [`ephemeral`]: `n` clusters as a service, one after another: a
//! HostedCluster and a NodePool of 2 created together, timed to both Nodes
//! Ready in the hosted cluster (the VMs join with kubeadm's protocol, see
//! `crate::guest_agent`); then both deleted, timed until nothing is left
//! (HostedCluster, NodePool and the control-plane namespace with everything
//! in it, VMs included).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

use super::{Report, rss_mib};
use crate::daemon::Daemon;
use crate::hcp::{self, MANAGER_NAMESPACE, NS, hosted_clusters};
use crate::kubelet::ImageMap;
use crate::shared_etcd::SharedEtcd;
use crate::wait;
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

/// A management lab with the manager's CRDs and the manager running in
/// the lab network.
async fn management_lab() -> Result<(Lab, Option<Daemon>), LabError> {
    let binaries = lab_cluster::Binaries::find()?;
    let lab = Lab::start(LabConfig {
        vms: 0,
        devices: false,
        management: Some(ImageMap::standard(&binaries)),
        ..LabConfig::default()
    })
    .await?;
    let started = async {
        let management = lab.infra_client();
        hcp::install_crds(&management).await?;
        hcp::ensure_namespace(&management, MANAGER_NAMESPACE).await?;
        hcp::ensure_namespace(&management, NS).await?;
        hcp::start_manager_in_netns(
            &lab,
            &["--supported-versions=0.1"],
            "warn",
            &lab.dir.join("logs").join("hcp-manager.log"),
        )
        .await
    }
    .await;
    match started {
        Ok(manager) => Ok((lab, Some(manager))),
        Err(e) => {
            let _ = lab.shutdown().await;
            Err(e)
        }
    }
}

/// Stops the manager and the lab, keeping the first error.
async fn finish(
    lab: Lab,
    manager: Option<Daemon>,
    result: Result<(), LabError>,
) -> Result<(), LabError> {
    if let Some(mut m) = manager {
        let _ = m.terminate(Duration::from_secs(5)).await;
    }
    let shutdown = lab.shutdown().await;
    result.and(shutdown)
}

/// The summed RSS of the containers running in each of `namespaces`,
/// averaged over them.
fn mean_rss_mib(lab: &Lab, namespaces: impl Iterator<Item = String>) -> Option<f64> {
    let kubelet = lab.kubelet.as_ref()?;
    let (mut sum, mut count) = (0.0, 0usize);
    for ns in namespaces {
        sum += kubelet
            .pids(&ns)
            .into_iter()
            .filter_map(rss_mib)
            .sum::<f64>();
        count += 1;
    }
    (count > 0).then(|| sum / count as f64)
}

/// `n` hosted control planes, one after another.
pub async fn control_planes(n: usize, report: &mut Report) -> Result<(), LabError> {
    let (lab, manager) = management_lab().await?;
    let result = async {
        let management = lab.infra_client();
        let hcs = hosted_clusters(&management);
        let mut took = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("hcp{i}");
            let started = Instant::now();
            hcs.create(&PostParams::default(), &hosted_cluster(&name)?)
                .await?;
            // The earlier clusters are Available already: i + 1 means this one.
            wait::within(WAIT, || format!("HostedCluster {name} Available"), hcp::all_available(&hcs, i + 1)).await??;
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

        if let Some(rss) = mean_rss_mib(&lab, (0..n).map(|i| format!("{NS}-hcp{i}"))) {
            report.add(
                SECTION,
                "memory per hosted cluster on the management side (RSS of every process of its control-plane namespace)",
                rss,
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

        // The last cluster may still be finishing its rollout (its status
        // then changes): the poke waits for every cluster to settle.
        wait::within(WAIT, || format!("{n} HostedClusters settled"), hcp::all_settled(&hcs, n)).await??;
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
    finish(lab, manager, result).await
}

/// `n` hosted control planes on one shared etcd, created at once.
pub async fn shared_etcd(n: usize, report: &mut Report) -> Result<(), LabError> {
    let (lab, manager) = management_lab().await?;
    let result = async {
        let management = lab.infra_client();
        let etcd = SharedEtcd::deploy(&lab, "shared-etcd").await?;
        etcd.create_credentials(&management, NS, "shared-etcd-root")
            .await?;
        let hcs = hosted_clusters(&management);
        let wait = WAIT + Duration::from_secs(15 * n as u64);
        let watch = tokio::spawn({
            let hcs = hcs.clone();
            async move { tokio::time::timeout(wait, hcp::all_available(&hcs, n)).await }
        });
        let mut created = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("shared{i}");
            let mut hc = hosted_cluster(&name)?;
            hc.data["spec"]["etcd"] = json!({
                "managementType": "Shared",
                "shared": {
                    "endpoints": [etcd.endpoint],
                    "credentialsSecret": {"name": "shared-etcd-root"},
                },
            });
            created.push((name, Instant::now()));
            hcs.create(&PostParams::default(), &hc).await?;
        }
        let available = watch
            .await
            .map_err(|e| LabError::Invalid(format!("watch task: {e}")))?
            .map_err(|_| LabError::Timeout {
                what: format!("{n} HostedClusters on a shared etcd Available"),
                after: wait,
            })??;
        let mut took: Vec<f64> = created
            .iter()
            .filter_map(|(name, at)| Some(available.get(name)?.duration_since(*at)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        took.sort_by(f64::total_cmp);
        report.add(
            SECTION,
            format!("{n} clusters on one shared etcd, created at once: created -> Available, p50"),
            took[took.len() / 2],
            "ms",
        );
        report.add(
            SECTION,
            format!("... the last of {n}"),
            took[took.len() - 1],
            "ms",
        );
        if let Some(rss) = mean_rss_mib(&lab, (0..n).map(|i| format!("{NS}-shared{i}"))) {
            report.add(
                SECTION,
                "memory per hosted cluster on a shared etcd (RSS of every process of its control-plane namespace)",
                rss,
                "MiB",
            );
        }
        if let Some(rss) = mean_rss_mib(&lab, std::iter::once("shared-etcd".to_string())) {
            report.add(
                SECTION,
                format!("shared etcd RSS holding {n} clusters"),
                rss,
                "MiB",
            );
        }
        Ok(())
    }
    .await;
    finish(lab, manager, result).await
}

/// Waits until `api` has no object `name` (watching).
async fn until_gone(api: &kube::Api<DynamicObject>, name: &str) -> Result<(), LabError> {
    let gone =
        kube::runtime::wait::await_condition(api.clone(), name, |o: Option<&DynamicObject>| {
            o.is_none()
        });
    wait::within(WAIT, || format!("{name} gone"), gone)
        .await?
        .map_err(|e| LabError::Invalid(format!("watching {name}: {e}")))?;
    Ok(())
}

fn p50(mut took: Vec<f64>) -> (f64, f64) {
    took.sort_by(f64::total_cmp);
    (took[took.len() / 2], took[took.len() - 1])
}

/// `n` ephemeral clusters with 2 nodes each, one after another.
pub async fn ephemeral(n: usize, report: &mut Report) -> Result<(), LabError> {
    let (lab, manager) = management_lab().await?;
    let result = async {
        let management = lab.infra_client();
        let hcs = hosted_clusters(&management);
        let pools = hcp::node_pools(&management);
        let namespaces = kube::Api::<Namespace>::all(management.clone());
        let (mut ready, mut gone) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let name = format!("eph{i}");
            let started = Instant::now();
            hcs.create(&PostParams::default(), &hosted_cluster(&name)?)
                .await?;
            pools
                .create(
                    &PostParams::default(),
                    &hcp::node_pool(&name, &name, 2, "0.1.0", json!({}))?,
                )
                .await?;
            wait::within(
                WAIT,
                || format!("HostedCluster {name} Available"),
                hcp::all_available(&hcs, 1),
            )
            .await??;
            let (_forward, hosted) = hcp::admin_client(&lab, &hcs.get(&name).await?).await?;
            let nodes = kube::Api::<Node>::all(hosted);
            crate::wait::until_count(&nodes, "", 2, WAIT, crate::wait::node_ready).await?;
            ready.push(started.elapsed().as_secs_f64() * 1000.0);

            let deleting = Instant::now();
            pools.delete(&name, &DeleteParams::default()).await?;
            hcs.delete(&name, &DeleteParams::default()).await?;
            until_gone(&pools, &name).await?;
            until_gone(&hcs, &name).await?;
            let cp = format!("{NS}-{name}");
            crate::wait::until(&namespaces, &cp, WAIT, |ns| ns.is_none().then_some(())).await?;
            gone.push(deleting.elapsed().as_secs_f64() * 1000.0);
        }
        let (ready_p50, ready_max) = p50(ready);
        report.add_target(
            SECTION,
            format!("HostedCluster + NodePool of 2 created -> 2 Nodes Ready, p50 of {n}"),
            ready_p50,
            "ms",
            "<= 30000",
        );
        report.add(SECTION, format!("... max of {n}"), ready_max, "ms");
        let (gone_p50, gone_max) = p50(gone);
        report.add_target(
            SECTION,
            format!("... deleted -> nothing left (control-plane namespace gone), p50 of {n}"),
            gone_p50,
            "ms",
            "<= 15000",
        );
        report.add(SECTION, format!("... max of {n}"), gone_max, "ms");
        Ok(())
    }
    .await;
    finish(lab, manager, result).await
}
