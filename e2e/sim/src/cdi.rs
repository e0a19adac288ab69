//! CDI and a hostPath provisioner in one: DataVolumes become PVCs, PVCs become
//! PersistentVolumes backed by sparse files, and the DataVolume reports
//! Succeeded once its PVC is Bound.
//!
//! Three controllers share this module:
//! - DataVolume: creates the PVC (same name, owned by the DV; the DV's source
//!   becomes the PVC's `dataSourceRef`), propagates size growth, and writes the
//!   DV status (Pending while the PVC is not Bound, e.g. for a missing
//!   StorageClass; Succeeded, 100.0% once it is).
//! - PersistentVolumeClaim: provisions unbound claims whose StorageClass exists
//!   (blank file, copy of a VolumeSnapshot's data, or copy of another claim's
//!   file), binds them, grows files when a bound claim asks for more, and
//!   deletes claims whose owning DataVolume is gone.
//! - PersistentVolume: reclaims volumes whose claim is gone (policy Delete), and
//!   removes the backing file through a finalizer when the PV is deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    PersistentVolumeStatus, TypedObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::api::storage::v1beta1::VolumeAttributesClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kubevirt_infra::cdi::{DataVolume, DataVolumeCondition, DataVolumeStatus, StorageSpec, phase};
use kubevirt_infra::snapshot::{VolumeSnapshot, VolumeSnapshotContent};
use serde_json::json;

use crate::error::{ignore_not_found, not_found_ok};
use crate::meta::{controller_of, controller_ref, is_deleting, key};
use crate::quantity::{format_bytes, parse_bytes};
use crate::runner::{drain, error_policy};
use crate::{Error, files};

/// Provisioner name written on the PVs this module creates.
pub const PROVISIONER: &str = "lab.kubevirt.io/hostpath";
/// Finalizer on PVs: the backing file is removed before the PV goes.
pub const BACKING_FILE_FINALIZER: &str = "lab.kubevirt.io/backing-file";
/// Annotation naming the data file of a VolumeSnapshotContent (written by [`crate::snapshot`]).
pub const SNAPSHOT_DATA_ANNOTATION: &str = "lab.kubevirt.io/snapshot-data";
/// Annotation marking a StorageClass as the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// Where the CDI simulator keeps volume data.
#[derive(Clone, Debug)]
pub struct CdiConfig {
    /// Directory of the backing files, one `<pv-name>.img` per volume.
    pub volume_dir: PathBuf,
}

struct Ctx {
    client: Client,
    cfg: CdiConfig,
}

/// Runs the DataVolume, PVC and PV controllers until the future is dropped.
pub async fn run(client: Client, cfg: CdiConfig) -> Result<(), Error> {
    std::fs::create_dir_all(&cfg.volume_dir)
        .map_err(Error::io("create directory", &cfg.volume_dir))?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
    });
    let dvs: Api<DataVolume> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let snapshots: Api<VolumeSnapshot> = Api::all(client.clone());
    let wc = watcher::Config::default;

    let dv_controller = Controller::new(dvs.clone(), wc())
        .owns(pvcs.clone(), wc())
        .run(reconcile_dv, error_policy, ctx.clone());

    let pvc_controller = Controller::new(pvcs.clone(), wc());
    let store = pvc_controller.store();
    let (by_class, by_source, by_snapshot) = (store.clone(), store.clone(), store);
    let pvc_controller = pvc_controller
        .watches(dvs, wc(), |dv| {
            dv.namespace()
                .map(|ns| ObjectRef::new(&dv.name_any()).within(&ns))
        })
        .watches(classes, wc(), move |_class| {
            by_class
                .state()
                .into_iter()
                .filter(|pvc| !is_bound(pvc))
                .map(|pvc| ObjectRef::from_obj(&*pvc))
                .collect::<Vec<_>>()
        })
        .watches(pvcs.clone(), wc(), move |source| {
            let (ns, name) = (source.namespace(), source.name_any());
            by_source
                .state()
                .into_iter()
                .filter(|pvc| {
                    data_source(pvc).is_some_and(|r| {
                        r.kind == "PersistentVolumeClaim"
                            && r.name == name
                            && r.namespace.clone().or(pvc.namespace()) == ns
                    })
                })
                .map(|pvc| ObjectRef::from_obj(&*pvc))
                .collect::<Vec<_>>()
        })
        .watches(snapshots, wc(), move |snap| {
            let (ns, name) = (snap.namespace(), snap.name_any());
            by_snapshot
                .state()
                .into_iter()
                .filter(|pvc| {
                    data_source(pvc).is_some_and(|r| {
                        r.kind == "VolumeSnapshot"
                            && r.name == name
                            && r.namespace.clone().or(pvc.namespace()) == ns
                    })
                })
                .map(|pvc| ObjectRef::from_obj(&*pvc))
                .collect::<Vec<_>>()
        })
        .run(reconcile_pvc, error_policy, ctx.clone());

    let pv_controller = Controller::new(pvs, wc())
        .watches(pvcs, wc(), |pvc| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .map(|pv| ObjectRef::new(&pv))
        })
        .run(reconcile_pv, error_policy, ctx);

    tokio::join!(
        drain("cdi-datavolume", dv_controller),
        drain("cdi-pvc", pvc_controller),
        drain("cdi-pv", pv_controller),
    );
    Ok(())
}

// === DataVolume ===

async fn reconcile_dv(dv: Arc<DataVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if is_deleting(&*dv) {
        return Ok(Action::await_change());
    }
    let ns = dv
        .namespace()
        .ok_or_else(|| Error::missing("DataVolume", dv.name_any(), "namespace"))?;
    let name = dv.name_any();
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);

    let storage = storage_spec(&dv)?;
    let class_problem = match &storage.storage_class_name {
        Some(class) if !class.is_empty() => {
            let classes: Api<StorageClass> = Api::all(ctx.client.clone());
            match not_found_ok(classes.get(class).await)? {
                Some(_) => None,
                None => Some(format!("storageclass.storage.k8s.io \"{class}\" not found")),
            }
        }
        _ => None,
    };

    let mut pvc = not_found_ok(pvcs.get(&name).await)?;
    match &pvc {
        None => {
            let size = match requested(&storage) {
                Some(size) => size,
                None => source_size(&ctx.client, &ns, &storage, &dv).await?,
            };
            let desired = desired_pvc(&dv, &storage, &size)?;
            pvc = Some(pvcs.create(&PostParams::default(), &desired).await?);
        }
        Some(existing) if owned_by(existing, &*dv) => {
            // CDI propagates a larger DataVolume request to its claim.
            if let (Some(want), Some(have)) = (requested(&storage), claim_request(existing))
                && parse_bytes(&want)? > parse_bytes(&have)?
            {
                let patch = json!({"spec": {"resources": {"requests": {"storage": want}}}});
                pvc = Some(
                    pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?,
                );
            }
        }
        Some(_) => {}
    }

    let status = desired_dv_status(&dv, pvc.as_ref(), class_problem.as_deref());
    if dv.status.as_ref() != Some(&status) {
        let patch = json!({"status": status});
        dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::await_change())
}

/// `spec.storage`, or the older `spec.pvc` read into the same shape.
pub fn storage_spec(dv: &DataVolume) -> Result<StorageSpec, Error> {
    match (&dv.spec.storage, &dv.spec.pvc) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(pvc)) => Ok(serde_json::from_value(pvc.clone())?),
        (None, None) => Err(Error::missing("DataVolume", key(dv), "spec.storage")),
    }
}

fn requested(storage: &StorageSpec) -> Option<String> {
    storage
        .resources
        .as_ref()
        .and_then(|r| r.requests.get("storage"))
        .map(|q| q.0.clone())
}

/// The size of a DataVolume that names none: its source's.
async fn source_size(
    client: &Client,
    ns: &str,
    storage: &StorageSpec,
    dv: &DataVolume,
) -> Result<String, Error> {
    let source = dv_data_source(dv, storage).ok_or_else(|| {
        Error::missing(
            "DataVolume",
            key(dv),
            "spec.storage.resources.requests.storage",
        )
    })?;
    let source_ns = source.namespace.clone().unwrap_or_else(|| ns.to_string());
    let size = match source.kind.as_str() {
        "VolumeSnapshot" => {
            let snap = Api::<VolumeSnapshot>::namespaced(client.clone(), &source_ns)
                .get(&source.name)
                .await?;
            snap.status.and_then(|s| s.restore_size).map(|q| q.0)
        }
        _ => {
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &source_ns)
                .get(&source.name)
                .await?;
            claim_request(&pvc)
        }
    };
    size.ok_or_else(|| {
        Error::NotReady(format!(
            "size of {}/{} is not known yet",
            source_ns, source.name
        ))
    })
}

/// The PVC CDI creates for `dv`: same name, owned by it, its storage request,
/// and the DV's source as `dataSourceRef`.
pub fn desired_pvc(
    dv: &DataVolume,
    storage: &StorageSpec,
    size: &str,
) -> Result<PersistentVolumeClaim, Error> {
    let owner =
        controller_ref(dv).ok_or_else(|| Error::missing("DataVolume", key(dv), "metadata.uid"))?;
    let mut labels = dv.labels().clone();
    labels.insert("app".into(), "containerized-data-importer".into());
    let access_modes = if storage.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        storage.access_modes.clone()
    };
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(dv.name_any()),
            namespace: dv.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "cdi.kubevirt.io/storage.contentType".to_string(),
                "kubevirt".to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                limits: None,
            }),
            storage_class_name: storage.storage_class_name.clone().filter(|c| !c.is_empty()),
            volume_mode: Some(
                storage
                    .volume_mode
                    .clone()
                    .unwrap_or_else(|| "Filesystem".into()),
            ),
            data_source_ref: dv_data_source(dv, storage),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

/// The DV's content source as a PVC `dataSourceRef`: a snapshot restore, a
/// PVC clone (`spec.source.pvc` or `spec.storage.dataSourceRef`), or none (blank).
pub fn dv_data_source(dv: &DataVolume, storage: &StorageSpec) -> Option<TypedObjectReference> {
    if let Some(source) = &dv.spec.source {
        if let Some(snap) = &source.snapshot {
            return Some(TypedObjectReference {
                api_group: Some(SNAPSHOT_GROUP.to_string()),
                kind: "VolumeSnapshot".to_string(),
                name: snap.name.clone(),
                namespace: snap
                    .namespace
                    .clone()
                    .filter(|n| Some(n) != dv.namespace().as_ref()),
            });
        }
        if let Some(pvc) = &source.pvc {
            return Some(TypedObjectReference {
                api_group: None,
                kind: "PersistentVolumeClaim".to_string(),
                name: pvc.name.clone(),
                namespace: pvc
                    .namespace
                    .clone()
                    .filter(|n| Some(n) != dv.namespace().as_ref()),
            });
        }
    }
    storage.data_source_ref.clone()
}

/// The DataVolume status for the state of its claim.
pub fn desired_dv_status(
    dv: &DataVolume,
    pvc: Option<&PersistentVolumeClaim>,
    class_problem: Option<&str>,
) -> DataVolumeStatus {
    let name = dv.name_any();
    let mut status = dv.status.clone().unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| DataVolumeCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        extra: Default::default(),
    };
    match pvc {
        Some(pvc) if is_bound(pvc) && owned_by(pvc, dv) => {
            status.phase = Some(phase::SUCCEEDED.to_string());
            status.progress = Some("100.0%".to_string());
            status.claim_name = Some(name.clone());
            status.conditions = vec![
                cond("Bound", true, "Bound", format!("PVC {name} Bound")),
                cond("Ready", true, "", String::new()),
                cond("Running", false, "Completed", String::new()),
            ];
        }
        Some(pvc) if !owned_by(pvc, dv) => {
            status.phase = Some(phase::PENDING.to_string());
            status.progress = Some("N/A".to_string());
            let msg = format!("PVC {name} already exists and is not owned by DataVolume {name}");
            status.conditions = vec![
                cond("Bound", false, "ErrExceededQuota", msg.clone()),
                cond("Ready", false, "ErrExceededQuota", msg),
                cond("Running", false, "Pending", String::new()),
            ];
        }
        other => {
            status.phase = Some(phase::PENDING.to_string());
            status.progress = Some("N/A".to_string());
            status.claim_name = other.map(|_| name.clone());
            let msg = class_problem.map_or_else(|| format!("PVC {name} Pending"), str::to_string);
            status.conditions = vec![
                cond("Bound", false, "Pending", msg.clone()),
                cond("Ready", false, "Pending", msg),
                cond("Running", false, "Pending", String::new()),
            ];
        }
    }
    status
        .extra
        .entry("restartCount".to_string())
        .or_insert_with(|| json!(0));
    status
}

fn owned_by<K: Resource>(pvc: &PersistentVolumeClaim, owner: &K) -> bool {
    owner
        .meta()
        .uid
        .as_deref()
        .is_some_and(|uid| crate::meta::is_controlled_by(pvc, uid))
}

// === PersistentVolumeClaim ===

async fn reconcile_pvc(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if is_deleting(&*pvc) {
        return Ok(Action::await_change());
    }
    let ns = pvc
        .namespace()
        .ok_or_else(|| Error::missing("PersistentVolumeClaim", pvc.name_any(), "namespace"))?;
    let name = pvc.name_any();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);

    // Garbage-collect claims whose DataVolume is gone (as the API server's
    // owner-reference collector would).
    if let Some(owner) = controller_of(&*pvc, "DataVolume") {
        let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
        let alive = not_found_ok(dvs.get(&owner.name).await)?
            .is_some_and(|dv| dv.metadata.uid.as_deref() == Some(owner.uid.as_str()));
        if !alive {
            tracing::info!(pvc = %key(&*pvc), "DataVolume gone, deleting its claim");
            ignore_not_found(pvcs.delete(&name, &DeleteParams::background()).await)?;
            return Ok(Action::await_change());
        }
    }

    if is_bound(&pvc) {
        apply_attributes_class(&pvc, &ctx).await?;
        return expand(&pvc, &ctx).await;
    }
    provision(&pvc, &ctx).await
}

/// Provisions and binds an unbound claim.
async fn provision(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let spec = pvc.spec.clone().unwrap_or_default();
    let Some(class) = storage_class_for(&ctx.client, &spec).await? else {
        tracing::debug!(pvc = %key(pvc), "StorageClass missing, leaving the claim Pending");
        return Ok(Action::await_change());
    };
    let size_str = claim_request(pvc).ok_or_else(|| {
        Error::missing(
            "PersistentVolumeClaim",
            key(pvc),
            "spec.resources.requests.storage",
        )
    })?;
    let size = parse_bytes(&size_str)?;
    let uid = pvc
        .uid()
        .ok_or_else(|| Error::missing("PersistentVolumeClaim", key(pvc), "metadata.uid"))?;
    let pv_name = spec
        .volume_name
        .clone()
        .unwrap_or_else(|| format!("pvc-{uid}"));
    let file = ctx.cfg.volume_dir.join(format!("{pv_name}.img"));

    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if not_found_ok(pvs.get(&pv_name).await)?.is_none() {
        populate(&ctx.client, pvc, &file, size).await?;
        let pv = desired_pv(pvc, &pv_name, &file, &format_bytes(size), class.as_ref())?;
        pvs.create(&PostParams::default(), &pv).await?;
    }

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if spec.volume_name.as_deref() != Some(pv_name.as_str()) {
        let patch = json!({
            "metadata": {"annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.kubernetes.io/storage-provisioner": PROVISIONER,
            }},
            "spec": {"volumeName": pv_name},
        });
        pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".to_string()),
        access_modes: spec.access_modes.clone(),
        capacity: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(format_bytes(size)),
        )])),
        ..PersistentVolumeClaimStatus::default()
    };
    pvcs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    tracing::info!(pvc = %key(pvc), pv = %pv_name, size = %format_bytes(size), "claim bound");
    Ok(Action::await_change())
}

/// The StorageClass a claim asks for (`Ok(Some(None))` when it names none and
/// no default exists); `Ok(None)` when the named class is missing.
async fn storage_class_for(
    client: &Client,
    spec: &PersistentVolumeClaimSpec,
) -> Result<Option<Option<StorageClass>>, Error> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    match spec.storage_class_name.as_deref() {
        Some("") => Ok(Some(None)),
        Some(class) => Ok(not_found_ok(classes.get(class).await)?.map(Some)),
        None => {
            let list = classes.list(&Default::default()).await?;
            Ok(Some(list.items.into_iter().find(|c| {
                c.annotations()
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
            })))
        }
    }
}

/// Writes the claim's initial content to `file`.
async fn populate(
    client: &Client,
    pvc: &PersistentVolumeClaim,
    file: &Path,
    size: u64,
) -> Result<(), Error> {
    let ns = pvc.namespace().unwrap_or_default();
    match data_source(pvc) {
        None => files::create_sparse_async(file.to_path_buf(), size).await,
        Some(r) if r.kind == "PersistentVolumeClaim" => {
            let source_ns = r.namespace.clone().unwrap_or(ns);
            let src = backing_file(client, &source_ns, &r.name).await?;
            tracing::info!(pvc = %key(pvc), source = %format!("{source_ns}/{}", r.name), "cloning");
            files::copy_sparse_async(src, file.to_path_buf(), size).await
        }
        Some(r) if r.kind == "VolumeSnapshot" => {
            let source_ns = r.namespace.clone().unwrap_or(ns);
            let src = snapshot_data(client, &source_ns, &r.name).await?;
            tracing::info!(pvc = %key(pvc), snapshot = %format!("{source_ns}/{}", r.name), "restoring");
            files::copy_sparse_async(src, file.to_path_buf(), size).await
        }
        Some(r) => Err(Error::NotReady(format!(
            "data source kind {} of {} is not supported",
            r.kind,
            key(pvc)
        ))),
    }
}

/// The PV bound to `pvc`, backed by `file`, deleted with its claim.
pub fn desired_pv(
    pvc: &PersistentVolumeClaim,
    pv_name: &str,
    file: &Path,
    size: &str,
    class: Option<&StorageClass>,
) -> Result<PersistentVolume, Error> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let reclaim = class
        .and_then(|c| c.reclaim_policy.clone())
        .unwrap_or_else(|| "Delete".to_string());
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_string()),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".to_string(),
                PROVISIONER.to_string(),
            )])),
            finalizers: Some(vec![BACKING_FILE_FINALIZER.to_string()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(size.to_string()),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                name: pvc.metadata.name.clone(),
                namespace: pvc.metadata.namespace.clone(),
                uid: pvc.metadata.uid.clone(),
                resource_version: None,
                field_path: None,
            }),
            host_path: Some(HostPathVolumeSource {
                path: file.to_string_lossy().into_owned(),
                type_: Some("File".to_string()),
            }),
            persistent_volume_reclaim_policy: Some(reclaim),
            storage_class_name: class
                .map(|c| c.name_any())
                .or(spec.storage_class_name.clone()),
            volume_mode: spec.volume_mode.clone(),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

/// The status a bound claim asking for VolumeAttributesClass `want` gets,
/// as the external-resizer writes it for a driver that can modify volumes:
/// the class is current once it exists, the modification Pending while it
/// does not. `None` when the status already says so.
pub fn attributes_class_status(
    pvc: &PersistentVolumeClaim,
    want: &str,
    class_exists: bool,
) -> Option<serde_json::Value> {
    let status = pvc.status.as_ref();
    let current = status.and_then(|s| s.current_volume_attributes_class_name.as_deref());
    let pending = status
        .and_then(|s| s.modify_volume_status.as_ref())
        .is_some_and(|m| {
            m.status == "Pending" && m.target_volume_attributes_class_name.as_deref() == Some(want)
        });
    match (current == Some(want), class_exists, pending) {
        (true, ..) | (false, false, true) => None,
        (false, true, _) => Some(json!({"status": {
            "currentVolumeAttributesClassName": want, "modifyVolumeStatus": null}})),
        (false, false, false) => Some(json!({"status": {"modifyVolumeStatus": {
            "targetVolumeAttributesClassName": want, "status": "Pending"}}})),
    }
}

/// Applies the VolumeAttributesClass a bound claim names (the hostpath
/// volumes have no attributes to change, so any existing class applies).
async fn apply_attributes_class(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    let Some(want) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref())
        .filter(|c| !c.is_empty())
    else {
        return Ok(());
    };
    let classes: Api<VolumeAttributesClass> = Api::all(ctx.client.clone());
    let exists = not_found_ok(classes.get(want).await)?.is_some();
    let Some(status) = attributes_class_status(pvc, want, exists) else {
        return Ok(());
    };
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    pvcs.patch_status(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    tracing::info!(pvc = %key(pvc), class = want, exists, "VolumeAttributesClass applied");
    Ok(())
}

/// Grows the file, PV and claim status when a bound claim asks for more.
async fn expand(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let (Some(want), Some(have)) = (claim_request(pvc), claim_capacity(pvc)) else {
        return Ok(Action::await_change());
    };
    let (want, have) = (parse_bytes(&want)?, parse_bytes(&have)?);
    if want <= have {
        return Ok(Action::await_change());
    }
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .ok_or_else(|| Error::missing("PersistentVolumeClaim", key(pvc), "spec.volumeName"))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs.get(&pv_name).await?;
    let file = pv_file(&pv)?;
    files::grow_async(file, want).await?;
    let size = json!({"storage": format_bytes(want)});
    pvs.patch(
        &pv_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"capacity": size}})),
    )
    .await?;
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    pvcs.patch_status(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"status": {"capacity": size, "conditions": null, "allocatedResources": size}}),
        ),
    )
    .await?;
    tracing::info!(pvc = %key(pvc), from = %format_bytes(have), to = %format_bytes(want), "claim expanded");
    Ok(Action::await_change())
}

// === PersistentVolume ===

async fn reconcile_pv(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if pv
        .annotations()
        .get("pv.kubernetes.io/provisioned-by")
        .map(String::as_str)
        != Some(PROVISIONER)
    {
        return Ok(Action::await_change());
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    finalizer(&pvs, BACKING_FILE_FINALIZER, pv, |event| async {
        match event {
            Finalizer::Apply(pv) => reclaim_if_released(&pv, &ctx).await,
            Finalizer::Cleanup(pv) => {
                let file = pv_file(&pv)?;
                files::remove_async(file.clone()).await?;
                tracing::info!(pv = %pv.name_any(), file = %file.display(), "backing file removed");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(Error::from)
}

/// Marks a PV Bound while its claim exists; once the claim is gone marks it
/// Released and deletes it (unless its policy is Retain).
async fn reclaim_if_released(pv: &PersistentVolume, ctx: &Ctx) -> Result<Action, Error> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let spec = pv.spec.clone().unwrap_or_default();
    let Some(claim) = spec.claim_ref else {
        return Ok(Action::await_change());
    };
    let ns = claim.namespace.clone().unwrap_or_default();
    let name = claim.name.clone().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claim_alive = not_found_ok(pvcs.get(&name).await)?
        .is_some_and(|pvc| claim.uid.is_none() || pvc.metadata.uid == claim.uid);
    let current = pv.status.as_ref().and_then(|s| s.phase.clone());
    if claim_alive {
        if current.as_deref() != Some("Bound") {
            let status = PersistentVolumeStatus {
                phase: Some("Bound".to_string()),
                ..PersistentVolumeStatus::default()
            };
            pvs.patch_status(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    // Released first, whatever the policy: kube-controller-manager's PV
    // protection keeps a Bound volume's finalizer.
    if current.as_deref() != Some("Released") {
        ignore_not_found(
            pvs.patch_status(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": "Released"}})),
            )
            .await,
        )?;
    }
    if spec.persistent_volume_reclaim_policy.as_deref() != Some("Retain") {
        tracing::info!(pv = %pv.name_any(), claim = %format!("{ns}/{name}"), "claim gone, deleting volume");
        ignore_not_found(pvs.delete(&pv.name_any(), &DeleteParams::default()).await)?;
    }
    Ok(Action::await_change())
}

// === lookups shared with the other simulators ===

/// Whether the claim is Bound.
pub fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// `spec.resources.requests.storage` of a claim.
pub fn claim_request(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
}

/// `status.capacity.storage` of a claim.
pub fn claim_capacity(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
}

/// `spec.dataSourceRef` of a claim (or `dataSource`, its older form).
pub fn data_source(pvc: &PersistentVolumeClaim) -> Option<TypedObjectReference> {
    let spec = pvc.spec.as_ref()?;
    spec.data_source_ref.clone().or_else(|| {
        spec.data_source.as_ref().map(|d| TypedObjectReference {
            api_group: d.api_group.clone(),
            kind: d.kind.clone(),
            name: d.name.clone(),
            namespace: None,
        })
    })
}

/// The backing file of a PV (`spec.hostPath.path`).
pub fn pv_file(pv: &PersistentVolume) -> Result<PathBuf, Error> {
    pv.spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
        .ok_or_else(|| Error::missing("PersistentVolume", pv.name_any(), "spec.hostPath.path"))
}

/// The backing file of the bound claim `ns/name`.
pub async fn backing_file(client: &Client, ns: &str, name: &str) -> Result<PathBuf, Error> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| is_bound(&pvc))
        .ok_or_else(|| Error::NotReady(format!("PVC {ns}/{name} is not bound yet")))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    pv_file(&pv)
}

/// The data file of the ready snapshot `ns/name`.
pub async fn snapshot_data(client: &Client, ns: &str, name: &str) -> Result<PathBuf, Error> {
    let snap = Api::<VolumeSnapshot>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let content_name = snap
        .status
        .as_ref()
        .filter(|s| s.ready_to_use == Some(true))
        .and_then(|s| s.bound_volume_snapshot_content_name.clone())
        .ok_or_else(|| Error::NotReady(format!("VolumeSnapshot {ns}/{name} is not ready yet")))?;
    let content = Api::<VolumeSnapshotContent>::all(client.clone())
        .get(&content_name)
        .await?;
    content
        .annotations()
        .get(SNAPSHOT_DATA_ANNOTATION)
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::missing(
                "VolumeSnapshotContent",
                content_name,
                SNAPSHOT_DATA_ANNOTATION,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dv(spec: serde_json::Value) -> DataVolume {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": "pvc-1", "namespace": "infra", "uid": "dv-uid", "labels": {"tenant": "a"}},
            "spec": spec,
        }))
        .expect("valid DataVolume")
    }

    #[test]
    fn blank_dv_becomes_an_owned_claim() -> Result<(), Error> {
        let dv = dv(json!({
            "source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast", "volumeMode": "Block"}
        }));
        let storage = storage_spec(&dv)?;
        let pvc = desired_pvc(&dv, &storage, "1Gi")?;
        let v = serde_json::to_value(&pvc)?;
        assert_eq!(v["metadata"]["name"], "pvc-1");
        assert_eq!(v["metadata"]["namespace"], "infra");
        assert_eq!(v["metadata"]["labels"]["tenant"], "a");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "dv-uid");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert_eq!(v["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(v["spec"]["storageClassName"], "fast");
        assert_eq!(v["spec"]["volumeMode"], "Block");
        assert!(v["spec"].get("dataSourceRef").is_none());
        Ok(())
    }

    #[test]
    fn sources_become_data_source_refs() -> Result<(), Error> {
        let snap = dv(
            json!({"source": {"snapshot": {"name": "snap-1", "namespace": "infra"}},
                             "storage": {"resources": {"requests": {"storage": "1Gi"}}}}),
        );
        let r = dv_data_source(&snap, &storage_spec(&snap)?).expect("snapshot source");
        assert_eq!(
            (r.kind.as_str(), r.name.as_str(), r.namespace),
            ("VolumeSnapshot", "snap-1", None)
        );
        assert_eq!(r.api_group.as_deref(), Some("snapshot.storage.k8s.io"));

        let clone = dv(
            json!({"storage": {"resources": {"requests": {"storage": "1Gi"}},
                                          "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "pvc-src"}}}),
        );
        let r = dv_data_source(&clone, &storage_spec(&clone)?).expect("clone source");
        assert_eq!(
            (r.kind.as_str(), r.name.as_str()),
            ("PersistentVolumeClaim", "pvc-src")
        );

        let other_ns = dv(
            json!({"source": {"pvc": {"name": "src", "namespace": "elsewhere"}},
                                 "pvc": {"resources": {"requests": {"storage": "2Gi"}}}}),
        );
        let storage = storage_spec(&other_ns)?;
        assert_eq!(
            requested(&storage).as_deref(),
            Some("2Gi"),
            "spec.pvc is read like spec.storage"
        );
        let r = dv_data_source(&other_ns, &storage).expect("pvc source");
        assert_eq!(r.namespace.as_deref(), Some("elsewhere"));
        Ok(())
    }

    #[test]
    fn status_follows_the_claim() -> Result<(), Error> {
        let dv = dv(
            json!({"storage": {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "nope"}}),
        );
        let pending = desired_dv_status(
            &dv,
            None,
            Some("storageclass.storage.k8s.io \"nope\" not found"),
        );
        assert_eq!(pending.phase.as_deref(), Some("Pending"));
        assert!(
            pending.conditions[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("nope"))
        );

        let mut pvc = desired_pvc(&dv, &storage_spec(&dv)?, "1Gi")?;
        pvc.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        let done = desired_dv_status(&dv, Some(&pvc), None);
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        assert_eq!(done.progress.as_deref(), Some("100.0%"));
        assert_eq!(done.claim_name.as_deref(), Some("pvc-1"));
        let bound = done
            .conditions
            .iter()
            .find(|c| c.type_ == "Bound")
            .expect("Bound condition");
        let ready = done
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(
            (bound.status.as_str(), ready.status.as_str()),
            ("True", "True")
        );
        Ok(())
    }

    #[test]
    fn pv_points_at_the_file_and_claim() -> Result<(), Error> {
        let dv = dv(json!({"storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        let mut pvc = desired_pvc(&dv, &storage_spec(&dv)?, "1Gi")?;
        pvc.metadata.uid = Some("claim-uid".into());
        let pv = desired_pv(
            &pvc,
            "pvc-claim-uid",
            Path::new("/data/pvc-claim-uid.img"),
            "1Gi",
            None,
        )?;
        let v = serde_json::to_value(&pv)?;
        assert_eq!(v["spec"]["hostPath"]["path"], "/data/pvc-claim-uid.img");
        assert_eq!(v["spec"]["claimRef"]["uid"], "claim-uid");
        assert_eq!(v["spec"]["claimRef"]["name"], "pvc-1");
        assert_eq!(v["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["metadata"]["finalizers"], json!([BACKING_FILE_FINALIZER]));
        assert_eq!(pv_file(&pv)?, PathBuf::from("/data/pvc-claim-uid.img"));
        Ok(())
    }

    #[test]
    fn attributes_class_is_current_once_it_exists() {
        let pvc = |status: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "spec": {"volumeAttributesClassName": "gold"}, "status": status}))
            .expect("pvc")
        };
        let fresh = pvc(json!({"phase": "Bound"}));
        assert_eq!(
            attributes_class_status(&fresh, "gold", true),
            Some(
                json!({"status": {"currentVolumeAttributesClassName": "gold", "modifyVolumeStatus": null}})
            )
        );
        let pending = attributes_class_status(&fresh, "gold", false).expect("pending");
        assert_eq!(pending["status"]["modifyVolumeStatus"]["status"], "Pending");
        let waiting = pvc(pending["status"].clone());
        assert_eq!(attributes_class_status(&waiting, "gold", false), None);
        let done = pvc(json!({"currentVolumeAttributesClassName": "gold"}));
        assert_eq!(attributes_class_status(&done, "gold", true), None);
    }
}
