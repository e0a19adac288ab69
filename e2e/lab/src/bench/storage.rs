//! Storage scenarios, driven as a guest user drives them (claims and pods
//! through the guest API server) with the real CSI controller, node
//! plugins and the sidecar and kubelet stand-ins doing the work:
//!
//! - lifecycle, one volume after another: claim -> Bound; pod created ->
//!   VolumeAttachment attached (ControllerPublish, hotplug) -> pod Ready
//!   (NodeStage + NodePublish); how long ControllerPublish takes to answer
//!   once the VMI reports the volume Ready; the controller's infra API
//!   requests per CreateVolume and per ControllerPublish;
//! - provisioning throughput with `c` claims created at once.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, PostParams};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use kubevirt_infra::labels::CSI_DRIVER_NAME;
use lab_guest::kubelet::attachment_name;
use serde_json::json;

use super::{Params, Report, Samples, requests_by_verb};
use crate::suite::{STORAGE_CLASS, Suite};
use crate::{Lab, LabError, wait};

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(120);
const SECTION: &str = "storage";

fn claim(name: &str) -> Result<PersistentVolumeClaim, LabError> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                 "resources": {"requests": {"storage": "16Mi"}}}
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))
}

fn pod(name: &str, node: &str, claim: &str) -> Result<Pod, LabError> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": node,
                 "containers": [{"name": "app", "image": "busybox",
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))
}

fn bound_volume(p: Option<&PersistentVolumeClaim>) -> Option<String> {
    p.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .and_then(|p| p.spec.as_ref().and_then(|s| s.volume_name.clone()))
}

/// Total requests and a `verb n, verb n` summary, per operation.
fn per_op(by_verb: &std::collections::BTreeMap<String, u64>, ops: usize) -> (f64, String) {
    let ops = ops.max(1) as f64;
    let total: u64 = by_verb.values().sum();
    let detail: Vec<String> = by_verb
        .iter()
        .map(|(v, n)| format!("{v} {:.1}", *n as f64 / ops))
        .collect();
    (total as f64 / ops, detail.join(", "))
}

/// One volume after another through its whole life.
pub async fn lifecycle(
    lab: &Lab,
    suite: &Suite,
    p: &Params,
    report: &mut Report,
) -> Result<(), LabError> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    let pvs: Api<PersistentVolume> = Api::all(guest.clone());
    let vas: Api<VolumeAttachment> = Api::all(guest.clone());
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra, &lab.infra_namespace);

    let (mut bound, mut attached, mut staged, mut after_ready) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut create_requests = std::collections::BTreeMap::new();
    let mut publish_requests = std::collections::BTreeMap::new();
    for i in 0..p.volumes {
        let (name, pod_name) = (format!("bench-{i}"), format!("bench-pod-{i}"));
        let node = &lab.nodes[i % lab.nodes.len()];

        let before = lab.infra.counters();
        let t0 = Instant::now();
        pvcs.create(&PostParams::default(), &claim(&name)?).await?;
        let pv = wait::until(&pvcs, &name, WAIT, bound_volume).await?;
        bound.push(t0.elapsed());
        let created = lab.infra.counters();
        for (verb, n) in
            requests_by_verb(&before, &created, &suite.users.controller_infra, |_| true)
        {
            *create_requests.entry(verb).or_insert(0) += n;
        }

        let handle = pvs
            .get(&pv)
            .await?
            .spec
            .and_then(|s| s.csi)
            .map(|c| c.volume_handle)
            .ok_or_else(|| LabError::Invalid(format!("PV {pv} is not a CSI volume")))?;
        let va = attachment_name(&handle, CSI_DRIVER_NAME, node);
        let t1 = Instant::now();
        let (vmi_ready, va_attached, pod_ready, ()) = tokio::try_join!(
            wait::until(&vmis, node, WAIT, |v| {
                v?.volume_status(&handle)
                    .filter(|s| s.is_ready())
                    .map(|_| Instant::now())
            }),
            wait::until(&vas, &va, WAIT, |a| {
                a?.status
                    .as_ref()
                    .filter(|s| s.attached)
                    .map(|_| Instant::now())
            }),
            wait::until(&pods, &pod_name, WAIT, |p| {
                wait::pod_ready(p).map(|()| Instant::now())
            }),
            async {
                pods.create(&PostParams::default(), &pod(&pod_name, node, &name)?)
                    .await?;
                Ok::<_, LabError>(())
            },
        )?;
        attached.push(va_attached.saturating_duration_since(t1));
        after_ready.push(va_attached.saturating_duration_since(vmi_ready));
        staged.push(pod_ready.saturating_duration_since(va_attached));
        for (verb, n) in requests_by_verb(
            &created,
            &lab.infra.counters(),
            &suite.users.controller_infra,
            |_| true,
        ) {
            *publish_requests.entry(verb).or_insert(0) += n;
        }

        pods.delete(&pod_name, &DeleteParams::default()).await?;
        wait::until(&pods, &pod_name, WAIT, |p| p.is_none().then_some(())).await?;
        wait::until(&vas, &va, WAIT, |a| a.is_none().then_some(())).await?;
        pvcs.delete(&name, &DeleteParams::default()).await?;
        wait::until(&pvs, &pv, WAIT, |p| p.is_none().then_some(())).await?;
    }

    report.add(
        SECTION,
        "claim created -> Bound (CreateVolume) p50",
        bound.quantile_ms(0.5),
        "ms",
    );
    report.add(
        SECTION,
        "claim created -> Bound (CreateVolume) p99",
        bound.quantile_ms(0.99),
        "ms",
    );
    report.add(
        SECTION,
        "pod created -> attached (ControllerPublish, hotplug) p50",
        attached.quantile_ms(0.5),
        "ms",
    );
    report.add(
        SECTION,
        "pod created -> attached (ControllerPublish, hotplug) p99",
        attached.quantile_ms(0.99),
        "ms",
    );
    report.add_target(
        SECTION,
        "VMI volume Ready -> ControllerPublish answered p50",
        after_ready.quantile_ms(0.5),
        "ms",
        "<= 10",
    );
    report.add(
        SECTION,
        "attached -> pod Ready (NodeStage + NodePublish) p50",
        staged.quantile_ms(0.5),
        "ms",
    );
    report.add(
        SECTION,
        "attached -> pod Ready (NodeStage + NodePublish) p99",
        staged.quantile_ms(0.99),
        "ms",
    );
    let (create_total, create_detail) = per_op(&create_requests, p.volumes);
    report.add_target(
        SECTION,
        format!("infra API requests per CreateVolume, besides watches ({create_detail})"),
        create_total,
        "req",
        "<= 3",
    );
    let (publish_total, publish_detail) = per_op(&publish_requests, p.volumes);
    report.add_target(
        SECTION,
        format!("infra API requests per ControllerPublish, besides watches ({publish_detail})"),
        publish_total,
        "req",
        "<= 4",
    );
    Ok(())
}

/// `c` claims created at once, until all are Bound; then all deleted.
pub async fn throughput(lab: &Lab, c: usize, report: &mut Report) -> Result<(), LabError> {
    let guest = lab.guest_client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), NS);
    let pvs: Api<PersistentVolume> = Api::all(guest);
    let names: Vec<String> = (0..c).map(|i| format!("burst-{c}-{i}")).collect();
    let t0 = Instant::now();
    let bound = try_join_all(names.iter().map(|name| {
        let pvcs = pvcs.clone();
        async move {
            pvcs.create(&PostParams::default(), &claim(name)?).await?;
            wait::until(&pvcs, name, WAIT, bound_volume).await
        }
    }))
    .await?;
    let elapsed = t0.elapsed();
    report.add(
        SECTION,
        format!("claims provisioned per second, {c} at once"),
        c as f64 / elapsed.as_secs_f64(),
        "1/s",
    );
    try_join_all(names.iter().zip(&bound).map(|(name, pv)| {
        let (pvcs, pvs) = (pvcs.clone(), pvs.clone());
        async move {
            pvcs.delete(name, &DeleteParams::default()).await?;
            wait::until(&pvs, pv, WAIT, |p| p.is_none().then_some(())).await
        }
    }))
    .await?;
    Ok(())
}
