//! The snapshot simulator through the infra API server: a snapshot of a
//! bound claim becomes ready with its content, restore size and data file; a
//! snapshot of a missing claim or class reports an error; deletion follows
//! the class's deletion policy.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::snapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};
use kubevirt_lab::{Lab, LabConfig, wait};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn lab() -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    })
    .await
}

async fn create_dv(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "16Mi"}}}}
    }))?;
    dvs.create(&PostParams::default(), &dv).await?;
    wait::until(&dvs, name, WAIT, |d| {
        d.filter(|d| d.phase() == "Succeeded").map(|_| ())
    })
    .await?;
    Ok(())
}

async fn snapshot(
    client: &Client,
    ns: &str,
    name: &str,
    claim: &str,
    class: Option<&str>,
) -> anyhow::Result<()> {
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({"source": {"persistentVolumeClaimName": claim}});
    if let Some(class) = class {
        spec["volumeSnapshotClassName"] = json!(class);
    }
    let snap: VolumeSnapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))?;
    snapshots.create(&PostParams::default(), &snap).await?;
    Ok(())
}

#[tokio::test]
async fn snapshots_become_ready_and_go_with_their_content() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    create_dv(&client, &ns, "pvc-a").await?;
    snapshot(&client, &ns, "snap-a", "pvc-a", None).await?;
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
    let snap = wait::until(&snapshots, "snap-a", WAIT, |s| {
        s.filter(|s| s.ready_to_use()).cloned()
    })
    .await?;
    let status = snap.status.clone().context("status")?;
    ensure!(status.restore_size.map(|q| q.0).as_deref() == Some("16Mi"));
    ensure!(status.creation_time.is_some() && status.error.is_none());
    let content_name = status
        .bound_volume_snapshot_content_name
        .context("bound content")?;
    let contents: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let content = contents.get(&content_name).await?;
    ensure!(
        content.spec.driver == lab_sim::cdi::PROVISIONER,
        "driver of the default class"
    );
    ensure!(content.spec.deletion_policy == "Delete");
    ensure!(content.spec.volume_snapshot_ref.uid == snap.metadata.uid);
    ensure!(content.status.as_ref().and_then(|s| s.restore_size) == Some(16 << 20));
    let data = PathBuf::from(
        content
            .annotations()
            .get(lab_sim::cdi::SNAPSHOT_DATA_ANNOTATION)
            .context("data annotation")?,
    );
    ensure!(data.exists() && data.starts_with(&lab.dir));

    snapshots.delete("snap-a", &DeleteParams::default()).await?;
    wait::until(&contents, &content_name, WAIT, |c| {
        c.is_none().then_some(())
    })
    .await?;
    ensure!(!data.exists(), "snapshot data survived its content");

    // A Retain class keeps the content (and its data) after the snapshot goes.
    let classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &VolumeSnapshotClass::new("keep", "keep.example", "Retain"),
        )
        .await?;
    snapshot(&client, &ns, "snap-keep", "pvc-a", Some("keep")).await?;
    let kept = wait::until(&snapshots, "snap-keep", WAIT, |s| {
        s.filter(|s| s.ready_to_use()).cloned()
    })
    .await?;
    let kept_content = kept
        .status
        .and_then(|s| s.bound_volume_snapshot_content_name)
        .context("content")?;
    ensure!(contents.get(&kept_content).await?.spec.driver == "keep.example");
    snapshots
        .delete("snap-keep", &DeleteParams::default())
        .await?;
    wait::until(&snapshots, "snap-keep", WAIT, |s| s.is_none().then_some(())).await?;
    ensure!(
        contents.get_opt(&kept_content).await?.is_some(),
        "Retain content was deleted"
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn snapshots_of_missing_claims_or_classes_report_errors() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
    let error = |s: Option<&VolumeSnapshot>| {
        let s = s?.status.as_ref()?;
        (s.ready_to_use == Some(false)).then(|| s.error.as_ref()?.message.clone())?
    };
    snapshot(&client, &ns, "snap-nothing", "pvc-missing", None).await?;
    let message = wait::until(&snapshots, "snap-nothing", WAIT, error).await?;
    ensure!(message.contains("pvc-missing"), "{message}");

    create_dv(&client, &ns, "pvc-b").await?;
    snapshot(&client, &ns, "snap-noclass", "pvc-b", Some("no-such-class")).await?;
    let message = wait::until(&snapshots, "snap-noclass", WAIT, error).await?;
    ensure!(message.contains("no-such-class"), "{message}");
    lab.shutdown().await?;
    Ok(())
}
