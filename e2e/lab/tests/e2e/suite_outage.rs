//! The whole suite (CSI controller and node plugins, CCM, sidecar and
//! kubelet stand-ins) rides out a 10 s outage of the infra API server that
//! starts while claims, pods and LoadBalancer Services are being made, and
//! watches dropped on both clusters: every pod ends up running on its
//! volume, every Service gets its address, and deleting everything leaves
//! no DataVolume or infra Service behind.
//!
//! Build the binaries first: `cargo build --bins`.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_lab::suite::{STORAGE_CLASS, Suite, SuiteConfig};
use kubevirt_lab::{Lab, LabConfig, wait};
use serde_json::json;

const NS: &str = "default";
const WORKLOADS: usize = 4;
/// Bound of each wait: the outage plus generous recovery.
const WAIT: Duration = Duration::from_secs(90);
const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infra_outage_and_dropped_watches_are_survived() -> anyhow::Result<()> {
    let run = async {
        let lab = crate::common::start_lab(LabConfig {
            vms: 2,
            devices: true,
            ..LabConfig::default()
        })
        .await?;
        let suite = match Suite::start(&lab, &SuiteConfig::default()).await {
            Ok(suite) => suite,
            Err(e) => {
                lab.shutdown().await?;
                return Err(e.into());
            }
        };
        let outcome = scenario(&lab).await;
        let logs = suite.log_tails(25);
        suite.stop().await?;
        lab.shutdown().await?;
        outcome.with_context(|| format!("daemon logs:\n{logs}"))
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .context("the test did not finish within 300 s")?
}

fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn scenario(lab: &Lab) -> anyhow::Result<()> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    let services: Api<Service> = Api::namespaced(guest.clone(), NS);

    // Everything is asked for at once; the infra API goes down right after.
    let mut uids = Vec::new();
    for i in 0..WORKLOADS {
        let claim = format!("data-{i}");
        pvcs.create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": claim, "namespace": NS},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                         "resources": {"requests": {"storage": "16Mi"}}}
            }))?,
        )
        .await?;
        pods.create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": format!("app-{i}"), "namespace": NS},
                "spec": {"nodeName": lab.nodes[i % lab.nodes.len()],
                         "containers": [{"name": "app", "image": "busybox",
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
            }))?,
        )
        .await?;
        let svc = services
            .create(
                &PostParams::default(),
                &object(json!({
                    "metadata": {"name": format!("web-{i}"), "namespace": NS},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                             "ports": [{"port": 80, "targetPort": 8080}]}
                }))?,
            )
            .await?;
        uids.push(svc.uid().unwrap_or_default());
    }
    lab.infra.outage(OUTAGE);
    lab.guest.faults().drop_watches();

    // Everything completes once the infra API is back.
    try_join_all((0..WORKLOADS).map(|i| {
        let pods = pods.clone();
        async move { wait::until(&pods, &format!("app-{i}"), WAIT, wait::pod_ready).await }
    }))
    .await
    .context("pods running after the outage")?;
    lab.infra.faults().drop_watches();
    try_join_all((0..WORKLOADS).map(|i| {
        let services = services.clone();
        async move {
            wait::until(&services, &format!("web-{i}"), WAIT, |s| {
                s.and_then(|s| s.status.as_ref())
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .filter(|i| !i.is_empty())
                    .map(|_| ())
            })
            .await
        }
    }))
    .await
    .context("ingress after the outage")?;

    // Deleting everything leaves nothing in the infra cluster.
    let pvs: Api<PersistentVolume> = Api::all(guest.clone());
    let mut volumes = Vec::new();
    for i in 0..WORKLOADS {
        let pvc = pvcs.get(&format!("data-{i}")).await?;
        let pv = pvc
            .spec
            .and_then(|s| s.volume_name)
            .context("a bound claim")?;
        let handle = pvs
            .get(&pv)
            .await?
            .spec
            .and_then(|s| s.csi)
            .map(|c| c.volume_handle)
            .context("a CSI volume")?;
        volumes.push(handle);
    }
    let dp = DeleteParams::default();
    for i in 0..WORKLOADS {
        pods.delete(&format!("app-{i}"), &dp).await?;
        services.delete(&format!("web-{i}"), &dp).await?;
    }
    for i in 0..WORKLOADS {
        wait::until(&pods, &format!("app-{i}"), WAIT, |p| {
            p.is_none().then_some(())
        })
        .await?;
        pvcs.delete(&format!("data-{i}"), &dp).await?;
    }
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    for handle in &volumes {
        wait::until(&dvs, handle, WAIT, |d| d.is_none().then_some(()))
            .await
            .with_context(|| format!("DataVolume {handle} deleted"))?;
    }
    let infra_services: Api<Service> = Api::namespaced(infra, &lab.infra_namespace);
    for uid in &uids {
        let mut name: String = std::iter::once('a')
            .chain(uid.chars().filter(|c| *c != '-'))
            .collect();
        name.truncate(32);
        wait::until(&infra_services, &name, WAIT, |s| s.is_none().then_some(()))
            .await
            .with_context(|| format!("infra Service {name} deleted"))?;
    }
    Ok(())
}
