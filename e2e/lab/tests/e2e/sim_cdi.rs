//! The CDI simulator through the infra API server: DataVolumes become bound
//! PVCs over sparse backing files (blank, cloned from a PVC, restored from a
//! VolumeSnapshot, with the data copied), claims grow, a missing StorageClass
//! keeps a DataVolume Pending, and deleting a DataVolume removes its claim,
//! volume and file.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::snapshot::VolumeSnapshot;
use kubevirt_lab::{Lab, LabConfig, wait};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn lab() -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    })
    .await
}

fn data_volume(name: &str, ns: &str, spec: Value) -> anyhow::Result<DataVolume> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": ns, "labels": {"tenant": "a"}},
        "spec": spec,
    }))?)
}

async fn create_succeeded(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<DataVolume> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    dvs.create(&PostParams::default(), &data_volume(name, ns, spec)?)
        .await?;
    let dv = wait::until(&dvs, name, WAIT, |dv| {
        dv.filter(|d| d.phase() == "Succeeded").cloned()
    })
    .await?;
    Ok(dv)
}

/// The backing file of the claim `name` (via its bound PV's hostPath).
async fn backing_file(client: &Client, ns: &str, name: &str) -> anyhow::Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .context("claim has no volume")?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    Ok(PathBuf::from(
        pv.spec
            .and_then(|s| s.host_path)
            .context("no hostPath")?
            .path,
    ))
}

fn read_at(path: &PathBuf, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn write_at(path: &PathBuf, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_all()?;
    Ok(())
}

#[tokio::test]
async fn blank_data_volume_binds_a_sparse_file_and_deletion_cleans_up() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let dv = create_succeeded(
        &client,
        &ns,
        "pvc-blank",
        json!({"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "64Mi"}}}}),
    )
    .await?;
    let status = dv.status.clone().context("status")?;
    ensure!(
        status.progress.as_deref() == Some("100.0%"),
        "progress {:?}",
        status.progress
    );
    ensure!(status.claim_name.as_deref() == Some("pvc-blank"));
    for kind in ["Bound", "Ready"] {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .context("condition")?;
        ensure!(c.status == "True", "{kind} is {}", c.status);
    }

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc = pvcs.get("pvc-blank").await?;
    ensure!(
        pvc.owner_references()
            .iter()
            .any(|o| o.kind == "DataVolume" && Some(&o.uid) == dv.metadata.uid.as_ref())
    );
    let pvc_status = pvc.status.clone().context("claim status")?;
    ensure!(pvc_status.phase.as_deref() == Some("Bound"));
    ensure!(
        pvc_status
            .capacity
            .and_then(|c| c.get("storage").cloned())
            .map(|q| q.0)
            .as_deref()
            == Some("64Mi")
    );
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .context("volumeName")?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    let claim = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.clone())
        .context("claimRef")?;
    ensure!(claim.name.as_deref() == Some("pvc-blank") && claim.uid == pvc.metadata.uid);

    let file = backing_file(&client, &ns, "pvc-blank").await?;
    ensure!(
        file.starts_with(&lab.dir),
        "{} is outside the lab dir",
        file.display()
    );
    ensure!(
        file.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&pv_name))
    );
    let meta = std::fs::metadata(&file)?;
    ensure!(meta.len() == 64 << 20, "file is {} bytes", meta.len());
    ensure!(
        meta.blocks() * 512 < 1 << 20,
        "file is not sparse ({} blocks)",
        meta.blocks()
    );

    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    dvs.delete("pvc-blank", &DeleteParams::default()).await?;
    wait::until(&pvcs, "pvc-blank", WAIT, |p| p.is_none().then_some(())).await?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    wait::until(&pvs, &pv_name, WAIT, |p| p.is_none().then_some(())).await?;
    ensure!(
        !file.exists(),
        "backing file {} survived its volume",
        file.display()
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn clone_and_snapshot_sources_copy_the_data() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let size = json!({"resources": {"requests": {"storage": "32Mi"}}});
    create_succeeded(
        &client,
        &ns,
        "pvc-src",
        json!({"source": {"blank": {}}, "storage": size}),
    )
    .await?;
    let src = backing_file(&client, &ns, "pvc-src").await?;
    write_at(&src, 1 << 20, b"hello from the source")?;

    create_succeeded(
        &client,
        &ns,
        "pvc-clone",
        json!({"storage": {"resources": {"requests": {"storage": "32Mi"}},
                           "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "pvc-src"}}}),
    )
    .await?;
    let clone = backing_file(&client, &ns, "pvc-clone").await?;
    ensure!(clone != src);
    ensure!(
        read_at(&clone, 1 << 20, 21)? == b"hello from the source",
        "clone lacks the data"
    );

    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
    let snap: VolumeSnapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap-src", "namespace": ns},
        "spec": {"source": {"persistentVolumeClaimName": "pvc-src"}}
    }))?;
    snapshots.create(&PostParams::default(), &snap).await?;
    wait::until(&snapshots, "snap-src", WAIT, |s| {
        s.filter(|s| s.ready_to_use()).map(|_| ())
    })
    .await?;
    // Later writes to the source do not reach the snapshot.
    write_at(&src, 1 << 20, b"changed after the snap")?;

    create_succeeded(
        &client,
        &ns,
        "pvc-restored",
        json!({"source": {"snapshot": {"name": "snap-src", "namespace": ns}},
               "storage": {"resources": {"requests": {"storage": "64Mi"}}}}),
    )
    .await?;
    let restored = backing_file(&client, &ns, "pvc-restored").await?;
    ensure!(
        std::fs::metadata(&restored)?.len() == 64 << 20,
        "restore grows to the requested size"
    );
    ensure!(
        read_at(&restored, 1 << 20, 21)? == b"hello from the source",
        "restore lacks the snapshot data"
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn claims_grow_through_the_claim_and_the_data_volume() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    create_succeeded(
        &client,
        &ns,
        "pvc-grow",
        json!({"storage": {"resources": {"requests": {"storage": "16Mi"}}}}),
    )
    .await?;
    let file = backing_file(&client, &ns, "pvc-grow").await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let capacity = |want: &'static str| {
        move |p: Option<&PersistentVolumeClaim>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .filter(|q| q.0 == want)
                .map(|_| ())
        }
    };

    let grow = json!({"spec": {"resources": {"requests": {"storage": "32Mi"}}}});
    pvcs.patch("pvc-grow", &PatchParams::default(), &Patch::Merge(&grow))
        .await?;
    wait::until(&pvcs, "pvc-grow", WAIT, capacity("32Mi")).await?;
    ensure!(std::fs::metadata(&file)?.len() == 32 << 20);
    let pv_name = pvcs
        .get("pvc-grow")
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .context("volumeName")?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    ensure!(
        pv.spec
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("storage").cloned())
            .map(|q| q.0)
            .as_deref()
            == Some("32Mi")
    );

    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    let grow_dv = json!({"spec": {"storage": {"resources": {"requests": {"storage": "48Mi"}}}}});
    dvs.patch("pvc-grow", &PatchParams::default(), &Patch::Merge(&grow_dv))
        .await?;
    wait::until(&pvcs, "pvc-grow", WAIT, capacity("48Mi")).await?;
    ensure!(std::fs::metadata(&file)?.len() == 48 << 20);
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_storage_class_keeps_the_data_volume_pending() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"source": {"blank": {}},
                      "storage": {"storageClassName": "gold", "resources": {"requests": {"storage": "8Mi"}}}});
    dvs.create(&PostParams::default(), &data_volume("pvc-gold", &ns, spec)?)
        .await?;
    let message = wait::until(&dvs, "pvc-gold", WAIT, |dv| {
        let dv = dv?;
        let bound = dv
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Bound")?;
        bound
            .message
            .clone()
            .filter(|m| m.contains("\"gold\" not found"))
    })
    .await?;
    ensure!(dvs.get("pvc-gold").await?.phase() == "Pending", "{message}");

    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "gold"}, "provisioner": lab_sim::cdi::PROVISIONER
    }))?;
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    wait::until(&dvs, "pvc-gold", WAIT, |dv| {
        dv.filter(|d| d.phase() == "Succeeded").map(|_| ())
    })
    .await?;
    lab.shutdown().await?;
    Ok(())
}
