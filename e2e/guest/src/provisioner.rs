//! Stand-in for external-provisioner (plus, with
//! [`SidecarConfig::pv_controller`](crate::SidecarConfig), the PV
//! controller's binding): a PVC of a StorageClass of our driver becomes
//! `CreateVolume` with name `<prefix>-<pvc uid>`, the class parameters and
//! the claim's data source, then a PV (CSI source, handle, attributes,
//! fsType) pre-bound to the claim. A PV whose claim is gone (Released) is
//! deleted with `DeleteVolume` when its reclaim policy is Delete.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kubevirt_csi_proto::v1::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, VolumeContentSource,
    volume_content_source,
};
use kubevirt_infra::snapshot::{VolumeSnapshot, VolumeSnapshotContent};
use serde_json::json;

use crate::error::not_found_ok;
use crate::objects::{capabilities, claim_storage, desired_pv, driver_parameters, fs_type};
use crate::{Ctx, GuestError, events};

const COMPONENT: &str = "external-provisioner";
/// Annotation marking the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Run both controllers until the future is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let provision = Controller::new(pvcs.clone(), watcher::Config::default())
        .run(reconcile_claim, crate::retry, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let deleter = Controller::new(pvs, watcher::Config::default());
    let volumes = deleter.store();
    let delete = deleter
        .watches(pvcs, watcher::Config::default(), move |pvc| {
            // The claim's volume: by the claim's volumeName, or by a PV's
            // claimRef naming it (pre-bound volumes).
            let (ns, name) = (pvc.namespace(), pvc.name_any());
            let mut refs: Vec<ObjectRef<PersistentVolume>> = volumes
                .state()
                .into_iter()
                .filter(|pv| {
                    pv.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| {
                            r.namespace == ns && r.name.as_deref() == Some(name.as_str())
                        })
                })
                .map(|pv| ObjectRef::from_obj(&*pv))
                .collect();
            if let Some(v) = pvc.spec.and_then(|s| s.volume_name) {
                refs.push(ObjectRef::new(&v));
            }
            refs
        })
        .run(reconcile_volume, crate::retry, ctx)
        .for_each(|_| futures::future::ready(()));
    tokio::join!(provision, delete);
}

/// The claim's class, when it is one of our driver's.
async fn our_class(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<StorageClass>, GuestError> {
    let api: Api<StorageClass> = Api::all(ctx.client.clone());
    let name = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    let sc = match name {
        Some(n) if !n.is_empty() => {
            not_found_ok(api.get(&n).await, format!("reading StorageClass {n}"))?
        }
        Some(_) => None,
        None => api
            .list(&Default::default())
            .await
            .map_err(GuestError::kube("listing StorageClasses"))?
            .items
            .into_iter()
            .find(|sc| {
                sc.annotations()
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
            }),
    };
    Ok(sc.filter(|sc| sc.provisioner == ctx.cfg.driver_name))
}

/// The CSI content source of a claim's data source.
async fn content_source(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<VolumeContentSource>, GuestError> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let ns = pvc.namespace().unwrap_or_default();
    let (group, kind, name) = match (spec.data_source_ref, spec.data_source) {
        (Some(r), _) => (r.api_group, r.kind, r.name),
        (None, Some(r)) => (r.api_group, r.kind, r.name),
        (None, None) => return Ok(None),
    };
    match (group.as_deref().unwrap_or(""), kind.as_str()) {
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => {
            let vs = Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &ns)
                .get(&name)
                .await
                .map_err(GuestError::kube(format!(
                    "reading VolumeSnapshot {ns}/{name}"
                )))?;
            let status = vs.status.unwrap_or_default();
            let content = status
                .bound_volume_snapshot_content_name
                .filter(|_| status.ready_to_use == Some(true))
                .ok_or_else(|| {
                    GuestError::NotReady(format!("snapshot {ns}/{name} is not ready"))
                })?;
            let content = Api::<VolumeSnapshotContent>::all(ctx.client.clone())
                .get(&content)
                .await
                .map_err(GuestError::kube(format!(
                    "reading VolumeSnapshotContent {content}"
                )))?;
            let handle = content
                .status
                .and_then(|s| s.snapshot_handle)
                .ok_or_else(|| {
                    GuestError::NotReady(format!("snapshot {ns}/{name} has no handle"))
                })?;
            Ok(Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Snapshot(
                    volume_content_source::SnapshotSource {
                        snapshot_id: handle,
                    },
                )),
            }))
        }
        ("", "PersistentVolumeClaim") => {
            let src = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                .get(&name)
                .await
                .map_err(GuestError::kube(format!(
                    "reading source claim {ns}/{name}"
                )))?;
            let pv_name = src.spec.and_then(|s| s.volume_name).ok_or_else(|| {
                GuestError::NotReady(format!("source claim {ns}/{name} is not bound"))
            })?;
            let handle = volume_handle(ctx, &pv_name).await?;
            Ok(Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Volume(
                    volume_content_source::VolumeSource { volume_id: handle },
                )),
            }))
        }
        (g, k) => Err(GuestError::Invalid(format!(
            "unsupported data source {g}/{k}"
        ))),
    }
}

/// The CSI volume handle of one of our PVs.
pub(crate) async fn volume_handle(ctx: &Ctx, pv_name: &str) -> Result<String, GuestError> {
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get(pv_name)
        .await
        .map_err(GuestError::kube(format!(
            "reading PersistentVolume {pv_name}"
        )))?;
    pv.spec
        .and_then(|s| s.csi)
        .filter(|c| c.driver == ctx.cfg.driver_name)
        .map(|c| c.volume_handle)
        .ok_or_else(|| {
            GuestError::Invalid(format!(
                "PersistentVolume {pv_name} is not a {} volume",
                ctx.cfg.driver_name
            ))
        })
}

/// Bind claim and volume (the PV controller's part).
async fn bind(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), GuestError> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let pv_name = pv.name_any();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::default();
    if pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()) != Some(pv_name.as_str()) {
        let patch = json!({
            "metadata": {"annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.kubernetes.io/storage-provisioner": ctx.cfg.driver_name,
            }},
            "spec": {"volumeName": pv_name},
        });
        pvcs.patch(&name, &pp, &Patch::Merge(&patch))
            .await
            .map_err(GuestError::kube(format!("binding claim {ns}/{name}")))?;
    }
    let pv_spec = pv.spec.clone().unwrap_or_default();
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        let status = json!({"status": {
            "phase": "Bound",
            "accessModes": pv_spec.access_modes,
            "capacity": pv_spec.capacity,
        }});
        pvcs.patch_status(&name, &pp, &Patch::Merge(&status))
            .await
            .map_err(GuestError::kube(format!("marking claim {ns}/{name} Bound")))?;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        Api::<PersistentVolume>::all(ctx.client.clone())
            .patch_status(
                &pv_name,
                &pp,
                &Patch::Merge(&json!({"status": {"phase": "Bound"}})),
            )
            .await
            .map_err(GuestError::kube(format!("marking volume {pv_name} Bound")))?;
    }
    Ok(())
}

async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, GuestError> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(sc) = our_class(&ctx, &pvc).await? else {
        return Ok(Action::await_change());
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let bound_to = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    let pv_name = bound_to.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            ctx.cfg.volume_name_prefix,
            pvc.uid().unwrap_or_default()
        )
    });
    if let Some(pv) = not_found_ok(
        pvs.get(&pv_name).await,
        format!("reading PersistentVolume {pv_name}"),
    )? {
        if ctx.cfg.pv_controller {
            bind(&ctx, &pvc, &pv).await?;
        }
        return Ok(Action::await_change());
    }
    if bound_to.is_some() {
        // Bound to a volume that is gone: nothing to provision.
        return Ok(Action::await_change());
    }
    let source = match content_source(&ctx, &pvc).await {
        Ok(s) => s,
        Err(e) => {
            events::record(
                &ctx.client,
                COMPONENT,
                &*pvc,
                true,
                "ProvisioningFailed",
                &e.to_string(),
            )
            .await;
            return Err(e);
        }
    };
    let spec = pvc.spec.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let request = CreateVolumeRequest {
        name: pv_name.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: claim_storage(&pvc, false).unwrap_or(0),
            limit_bytes: claim_storage(&pvc, true).unwrap_or(0),
        }),
        volume_capabilities: capabilities(
            &spec.access_modes.clone().unwrap_or_default(),
            block,
            &fs_type(&sc, &ctx.cfg.default_fs_type),
        ),
        parameters: driver_parameters(sc.parameters.as_ref()),
        volume_content_source: source,
        ..Default::default()
    };
    let response = ctx
        .csi
        .controller
        .clone()
        .create_volume(ctx.csi.request(request))
        .await;
    let volume = match response {
        Ok(r) => r
            .into_inner()
            .volume
            .ok_or_else(|| GuestError::Invalid("CreateVolume returned no volume".into()))?,
        Err(status) => {
            let e = GuestError::csi("CreateVolume")(status);
            events::record(
                &ctx.client,
                COMPONENT,
                &*pvc,
                true,
                "ProvisioningFailed",
                &e.to_string(),
            )
            .await;
            return Err(e);
        }
    };
    let pv = desired_pv(
        &pvc,
        &sc,
        &volume,
        &ctx.cfg.driver_name,
        &ctx.cfg.default_fs_type,
    );
    let pv = match pvs.create(&PostParams::default(), &pv).await {
        Ok(pv) => pv,
        Err(kube::Error::Api(s)) if s.code == 409 => pvs.get(&pv_name).await.map_err(
            GuestError::kube(format!("reading PersistentVolume {pv_name}")),
        )?,
        Err(e) => {
            return Err(GuestError::kube(format!(
                "creating PersistentVolume {pv_name}"
            ))(e));
        }
    };
    events::record(
        &ctx.client,
        COMPONENT,
        &*pvc,
        false,
        "ProvisioningSucceeded",
        &format!("Successfully provisioned volume {pv_name}"),
    )
    .await;
    tracing::info!(claim = %pvc.name_any(), volume = %pv_name, "provisioned");
    if ctx.cfg.pv_controller {
        bind(&ctx, &pvc, &pv).await?;
    }
    Ok(Action::await_change())
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, GuestError> {
    let Some(spec) = pv.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(csi) = spec
        .csi
        .as_ref()
        .filter(|c| c.driver == ctx.cfg.driver_name)
    else {
        return Ok(Action::await_change());
    };
    let Some(claim) = spec.claim_ref.as_ref() else {
        return Ok(Action::await_change());
    };
    let (ns, name) = (
        claim.namespace.clone().unwrap_or_default(),
        claim.name.clone().unwrap_or_default(),
    );
    let pvc = not_found_ok(
        Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .get(&name)
            .await,
        format!("reading claim {ns}/{name}"),
    )?;
    if pvc.is_some_and(|p| p.uid() == claim.uid) {
        return Ok(Action::await_change());
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv_name = pv.name_any();
    // The PV controller's part: a volume whose claim is gone is Released
    // (which also lets kube-controller-manager's PV protection drop its
    // finalizer once the volume is deleted).
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    if !released && !ctx.cfg.pv_controller {
        // The PV controller has not released it yet.
        return Ok(Action::await_change());
    }
    if !released {
        pvs.patch_status(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Released"}})),
        )
        .await
        .map_err(GuestError::kube(format!("releasing {pv_name}")))?;
    }
    if spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
        return Ok(Action::await_change());
    }
    let request = DeleteVolumeRequest {
        volume_id: csi.volume_handle.clone(),
        ..Default::default()
    };
    if let Err(status) = ctx
        .csi
        .controller
        .clone()
        .delete_volume(ctx.csi.request(request))
        .await
    {
        let e = GuestError::csi("DeleteVolume")(status);
        events::record(
            &ctx.client,
            COMPONENT,
            &*pv,
            true,
            "VolumeFailedDelete",
            &e.to_string(),
        )
        .await;
        return Err(e);
    }
    not_found_ok(
        pvs.delete(&pv_name, &DeleteParams::default()).await,
        format!("deleting {pv_name}"),
    )?;
    tracing::info!(volume = %pv_name, "deleted");
    Ok(Action::await_change())
}
