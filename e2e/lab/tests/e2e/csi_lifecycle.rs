//! The CSI driver end to end through the sidecar stand-ins of `lab-guest`:
//! guest objects in, infra objects out. A guest PVC becomes a labelled infra
//! DataVolume and a bound guest PV; a VolumeAttachment hotplugs it (VMI
//! Ready); growing the PVC grows the infra claim; a VolumeSnapshot becomes an
//! infra VolumeSnapshot and restores; a PVC clones; deleting everything
//! leaves nothing of the tenant in the infra namespace. Guest objects that
//! name another tenant's (or unlabelled) infra volumes or VMs are refused and
//! those infra objects are left alone.
//!
//! Build the binary first: `cargo build -p kubevirt-csi-driver`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::csi_support::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::snapshot::{VolumeSnapshot, VolumeSnapshotClass};
use kubevirt_lab::{Lab, wait};
use lab_guest::SidecarConfig;
use serde_json::{Value, json};

const DRIVER: &str = "csi.kubevirt.io";
const NS: &str = "default";

/// The guest side: classes, registered nodes and the sidecars running.
struct Guest {
    client: Client,
    sidecars: tokio::task::JoinHandle<()>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.sidecars.abort();
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn guest(lab: &Lab, d: &Driver) -> anyhow::Result<Guest> {
    let client = lab.guest_client();
    lab_guest::crds::install(&client, WAIT).await?;
    let sc: StorageClass = from_json(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "kubevirt", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": DRIVER,
        "parameters": {"infraStorageClassName": "local", "bus": "scsi"},
        "allowVolumeExpansion": true,
        "reclaimPolicy": "Delete",
    }))?;
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await?;
    let mut vsc = VolumeSnapshotClass::new("kubevirt-snap", DRIVER, "Delete");
    vsc.parameters
        .insert("infraSnapshotClassName".into(), "local-snapshot".into());
    Api::<VolumeSnapshotClass>::all(client.clone())
        .create(&PostParams::default(), &vsc)
        .await?;
    for node in &lab.nodes {
        let id = format!("{}/{node}", lab.infra_namespace);
        lab_guest::registrar::register(&client, DRIVER, node, &id, 0).await?;
    }
    let sidecars = tokio::spawn(lab_guest::run_all(
        d.channel.clone(),
        client.clone(),
        SidecarConfig::default(),
    ));
    Ok(Guest { client, sidecars })
}

fn pvc(
    name: &str,
    size: &str,
    data_source: Option<Value>,
) -> anyhow::Result<PersistentVolumeClaim> {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "kubevirt",
        "resources": {"requests": {"storage": size}},
    });
    if let Some(ds) = data_source {
        spec["dataSource"] = ds;
    }
    from_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": name, "namespace": NS}, "spec": spec}))
}

fn attachment(name: &str, node: &str, pv: &str) -> anyhow::Result<VolumeAttachment> {
    from_json(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": pv}},
    }))
}

/// Wait until the claim is bound; its PV.
async fn bound(g: &Guest, name: &str, d: &Driver) -> anyhow::Result<PersistentVolume> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(g.client.clone(), NS);
    let pv_name = wait::until(&pvcs, name, WAIT, |p| {
        p.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .and_then(|p| p.spec.as_ref().and_then(|s| s.volume_name.clone()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("claim {name} not bound: {e}\n{}", d.log_tail()))?;
    Ok(Api::<PersistentVolume>::all(g.client.clone())
        .get(&pv_name)
        .await?)
}

fn handle(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn guest_volumes_end_to_end() -> anyhow::Result<()> {
    let lab = lab(2, "life", Duration::ZERO).await?;
    let d = start_driver(&lab, DriverOptions::default()).await?;
    synced(&d).await?;
    let g = guest(&lab, &d).await?;
    let infra = lab.infra_client();
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let infra_pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(infra.clone(), &lab.infra_namespace);
    let infra_snaps: Api<VolumeSnapshot> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(g.client.clone(), NS);
    let pvs: Api<PersistentVolume> = Api::all(g.client.clone());
    let vas: Api<VolumeAttachment> = Api::all(g.client.clone());
    let snaps: Api<VolumeSnapshot> = Api::namespaced(g.client.clone(), NS);

    // PVC → DataVolume of the contract → bound PV.
    let claim = pvcs
        .create(&PostParams::default(), &pvc("data", "1Gi", None)?)
        .await?;
    let pv = bound(&g, "data", &d).await?;
    let volume = handle(&pv);
    assert_eq!(volume, format!("pvc-{}", claim.uid().unwrap_or_default()));
    let dv = dvs.get(&volume).await?;
    let raw = serde_json::to_value(&dv)?;
    assert_eq!(raw["metadata"]["labels"][INFRA_ID], "life");
    assert_eq!(
        raw["spec"]["storage"]["resources"]["requests"]["storage"],
        GIB.to_string()
    );
    assert_eq!(raw["spec"]["storage"]["storageClassName"], "local");
    let attrs = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .and_then(|c| c.volume_attributes.clone())
        .unwrap_or_default();
    assert_eq!(attrs.get("serial"), dv.metadata.uid.as_ref());
    assert_eq!(attrs.get("bus").map(String::as_str), Some("scsi"));
    assert_eq!(
        pv.spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .and_then(|c| c.fs_type.as_deref()),
        Some("ext4")
    );

    // VolumeAttachment → hotplugged, Ready on the node's VMI.
    vas.create(
        &PostParams::default(),
        &attachment("va-data", &lab.nodes[0], &pv.name_any())?,
    )
    .await?;
    wait::until(&vas, "va-data", WAIT, |va| {
        va.filter(|v| v.status.as_ref().is_some_and(|s| s.attached))
            .map(|_| ())
    })
    .await
    .map_err(|e| anyhow::anyhow!("not attached: {e}\n{}", d.log_tail()))?;
    assert!(
        vmis.get(&lab.nodes[0])
            .await?
            .volume_status(&volume)
            .is_some_and(|s| s.is_ready())
    );

    // Grow the claim → the infra claim grows; the node finishes the filesystem.
    pvcs.patch(
        "data",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
    )
    .await?;
    wait::until(&pvcs, "data", WAIT, |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .filter(|cs| cs.iter().any(|c| c.type_ == "FileSystemResizePending"))
            .map(|_| ())
    })
    .await
    .map_err(|e| anyhow::anyhow!("no resize: {e}\n{}", d.log_tail()))?;
    let infra_claim = infra_pvcs.get(&volume).await?;
    assert_eq!(
        serde_json::to_value(&infra_claim)?["spec"]["resources"]["requests"]["storage"],
        (2 * GIB).to_string()
    );
    let pv = pvs.get(&pv.name_any()).await?;
    assert_eq!(
        serde_json::to_value(&pv)?["spec"]["capacity"]["storage"],
        (2 * GIB).to_string()
    );

    // Snapshot → infra VolumeSnapshot → ready; restore from it.
    let vs: VolumeSnapshot = from_json(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap", "namespace": NS},
        "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "kubevirt-snap"},
    }))?;
    let vs = snaps.create(&PostParams::default(), &vs).await?;
    wait::until(&snaps, "snap", WAIT, |s| {
        s.filter(|s| s.ready_to_use()).map(|_| ())
    })
    .await
    .map_err(|e| anyhow::anyhow!("snapshot not ready: {e}\n{}", d.log_tail()))?;
    let infra_snap_name = format!("snapshot-{}", vs.uid().unwrap_or_default());
    let infra_snap = infra_snaps.get(&infra_snap_name).await?;
    assert_eq!(
        infra_snap.labels().get(INFRA_ID).map(String::as_str),
        Some("life")
    );
    assert_eq!(
        infra_snap
            .spec
            .source
            .persistent_volume_claim_name
            .as_deref(),
        Some(volume.as_str())
    );

    let snap_source =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"});
    pvcs.create(
        &PostParams::default(),
        &pvc("restored", "2Gi", Some(snap_source))?,
    )
    .await?;
    let restored = handle(&bound(&g, "restored", &d).await?);
    assert_eq!(
        serde_json::to_value(dvs.get(&restored).await?)?["spec"]["source"],
        json!({"snapshot": {"name": infra_snap_name, "namespace": lab.infra_namespace}})
    );

    // Clone.
    pvcs.create(
        &PostParams::default(),
        &pvc(
            "cloned",
            "2Gi",
            Some(json!({"kind": "PersistentVolumeClaim", "name": "data"})),
        )?,
    )
    .await?;
    let cloned = handle(&bound(&g, "cloned", &d).await?);
    assert_eq!(
        serde_json::to_value(dvs.get(&cloned).await?)?["spec"]["storage"]["dataSourceRef"],
        json!({"kind": "PersistentVolumeClaim", "name": volume})
    );

    // Detach; delete everything; nothing of the tenant is left in infra.
    vas.delete("va-data", &DeleteParams::default()).await?;
    wait::until(&vas, "va-data", WAIT, |va| va.is_none().then_some(()))
        .await
        .map_err(|e| anyhow::anyhow!("not detached: {e}\n{}", d.log_tail()))?;
    assert!(
        vmis.get(&lab.nodes[0])
            .await?
            .volume_status(&volume)
            .is_none()
    );
    snaps.delete("snap", &DeleteParams::default()).await?;
    wait::until(&infra_snaps, &infra_snap_name, WAIT, |s| {
        s.is_none().then_some(())
    })
    .await?;
    for name in ["data", "restored", "cloned"] {
        let pv_name = pvcs
            .get(name)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .unwrap_or_default();
        pvcs.delete(name, &DeleteParams::default()).await?;
        wait::until(&pvs, &pv_name, WAIT, |p| p.is_none().then_some(()))
            .await
            .map_err(|e| anyhow::anyhow!("PV {pv_name} not deleted: {e}\n{}", d.log_tail()))?;
    }
    for v in [&volume, &restored, &cloned] {
        wait::until(&dvs, v, WAIT, |dv| dv.is_none().then_some(())).await?;
    }
    let selector = format!("{INFRA_ID}=life");
    let left = dvs
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    assert!(
        left.items.is_empty(),
        "tenant DataVolumes left: {:?}",
        left.items.iter().map(|d| d.name_any()).collect::<Vec<_>>()
    );
    let left = infra_snaps
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    assert!(left.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn guest_objects_cannot_reach_other_tenants() -> anyhow::Result<()> {
    let mut lab = lab(2, "guarded", Duration::ZERO).await?;
    lab.add_guest_cluster(
        "neighbour",
        BTreeMap::from([(INFRA_ID.to_string(), "neighbour".to_string())]),
        1,
    )
    .await?;
    let their_vm = lab.tenants[0].nodes[0].clone();
    let d = start_driver(&lab, DriverOptions::default()).await?;
    synced(&d).await?;
    let g = guest(&lab, &d).await?;
    let infra = lab.infra_client();
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let pvs: Api<PersistentVolume> = Api::all(g.client.clone());
    let vas: Api<VolumeAttachment> = Api::all(g.client.clone());

    // The neighbour's volume and an unlabelled one, with our volume prefix.
    let theirs = volume_name();
    let unlabelled = volume_name();
    for (n, labels) in [
        (&theirs, json!({INFRA_ID: "neighbour"})),
        (&unlabelled, json!({})),
    ] {
        let dv: DataVolume = from_json(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": n, "namespace": lab.infra_namespace, "labels": labels},
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
        }))?;
        dvs.create(&PostParams::default(), &dv).await?;
    }
    // Guest PVs naming them (as a malicious guest admin could), bound to
    // claims of a class of no driver (so nothing provisions them), attached.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(g.client.clone(), NS);
    for (i, n) in [&theirs, &unlabelled].into_iter().enumerate() {
        let mut claim = pvc(&format!("stolen-{i}"), "1Gi", None)?;
        if let Some(spec) = claim.spec.as_mut() {
            spec.storage_class_name = Some("manual".into());
        }
        let claim = pvcs.create(&PostParams::default(), &claim).await?;
        let pv: PersistentVolume = from_json(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("stolen-{i}")},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "claimRef": {"namespace": NS, "name": format!("stolen-{i}"), "uid": claim.uid()},
                     "csi": {"driver": DRIVER, "volumeHandle": n, "fsType": "ext4",
                             "volumeAttributes": {"bus": "scsi", "serial": "x"}}},
        }))?;
        pvs.create(&PostParams::default(), &pv).await?;
        let va = format!("va-stolen-{i}");
        vas.create(
            &PostParams::default(),
            &attachment(&va, &lab.nodes[0], &format!("stolen-{i}"))?,
        )
        .await?;
        let err = wait::until(&vas, &va, WAIT, |v| {
            v.and_then(|v| v.status.as_ref())
                .and_then(|s| s.attach_error.as_ref())
                .and_then(|e| e.message.clone())
        })
        .await?;
        assert!(
            err.contains("NotFound"),
            "attach of a foreign volume: {err}"
        );
    }
    // Released PVs (claims deleted) are deleted through DeleteVolume, which
    // succeeds without touching the foreign volumes.
    for i in 0..2 {
        vas.delete(&format!("va-stolen-{i}"), &DeleteParams::default())
            .await?;
        pvcs.delete(&format!("stolen-{i}"), &DeleteParams::default())
            .await?;
        wait::until(&pvs, &format!("stolen-{i}"), WAIT, |p| {
            p.is_none().then_some(())
        })
        .await?;
    }
    for n in [&theirs, &unlabelled] {
        assert!(
            dvs.get_opt(n).await?.is_some(),
            "foreign DataVolume {n} was deleted"
        );
        assert!(
            !vms.get(&lab.nodes[0]).await?.has_volume(n),
            "foreign volume {n} was hotplugged"
        );
    }

    // A guest node that claims to be the neighbour's VM gets nothing attached.
    pvcs.create(&PostParams::default(), &pvc("mine", "1Gi", None)?)
        .await?;
    let pv = bound(&g, "mine", &d).await?;
    let liar = &lab.nodes[1];
    lab_guest::registrar::register(
        &g.client,
        DRIVER,
        liar,
        &format!("{}/{their_vm}", lab.infra_namespace),
        0,
    )
    .await?;
    vas.create(
        &PostParams::default(),
        &attachment("va-liar", liar, &pv.name_any())?,
    )
    .await?;
    let err = wait::until(&vas, "va-liar", WAIT, |v| {
        v.and_then(|v| v.status.as_ref())
            .and_then(|s| s.attach_error.as_ref())
            .and_then(|e| e.message.clone())
    })
    .await?;
    assert!(
        err.contains("NotFound"),
        "attach to the neighbour's VM: {err}"
    );
    assert!(!vms.get(&their_vm).await?.has_volume(&handle(&pv)));
    Ok(())
}
