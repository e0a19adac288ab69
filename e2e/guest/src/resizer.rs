//! Stand-in for external-resizer: a bound claim of our driver whose request
//! outgrew its volume becomes `ControllerExpandVolume`; the PV's capacity is
//! set to the result, then either the claim's capacity (no node step) or a
//! `FileSystemResizePending` condition for the kubelet's NodeExpandVolume.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kubevirt_csi_proto::v1::{CapacityRange, ControllerExpandVolumeRequest};
use serde_json::json;

use crate::error::not_found_ok;
use crate::objects::{bytes, claim_storage, pv_capability, quantity};
use crate::{Ctx, GuestError};

pub async fn run(ctx: Arc<Ctx>) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    Controller::new(pvcs, watcher::Config::default())
        .run(reconcile, crate::retry, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, GuestError> {
    let Some(pv_name) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
        return Ok(Action::await_change());
    };
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Ok(Action::await_change());
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = not_found_ok(
        pvs.get(&pv_name).await,
        format!("reading PersistentVolume {pv_name}"),
    )?
    else {
        return Ok(Action::await_change());
    };
    let Some(csi) = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.clone())
        .filter(|c| c.driver == ctx.cfg.driver_name)
    else {
        return Ok(Action::await_change());
    };
    let want = claim_storage(&pvc, false).unwrap_or(0);
    let have = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(bytes)
        .unwrap_or(0);
    if want <= have {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::default();
    pvcs.patch_status(
        &name,
        &pp,
        &Patch::Merge(&json!({"status": {"conditions": [{"type": "Resizing", "status": "True"}]}})),
    )
    .await
    .map_err(GuestError::kube(format!(
        "marking claim {ns}/{name} Resizing"
    )))?;
    let req = ControllerExpandVolumeRequest {
        volume_id: csi.volume_handle.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: want,
            limit_bytes: claim_storage(&pvc, true).unwrap_or(0),
        }),
        volume_capability: pv_capability(&pv),
        ..Default::default()
    };
    let resp = ctx
        .csi
        .controller
        .clone()
        .controller_expand_volume(ctx.csi.request(req))
        .await
        .map_err(GuestError::csi("ControllerExpandVolume"))?
        .into_inner();
    let size = quantity(resp.capacity_bytes.max(want));
    pvs.patch(
        &pv_name,
        &pp,
        &Patch::Merge(&json!({"spec": {"capacity": {"storage": size}}})),
    )
    .await
    .map_err(GuestError::kube(format!(
        "resizing PersistentVolume {pv_name}"
    )))?;
    let status = if resp.node_expansion_required {
        json!({"status": {"allocatedResources": {"storage": size},
                          "conditions": [{"type": "FileSystemResizePending", "status": "True",
                                          "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node."}]}})
    } else {
        json!({"status": {"allocatedResources": {"storage": size}, "capacity": {"storage": size}, "conditions": []}})
    };
    pvcs.patch_status(&name, &pp, &Patch::Merge(&status))
        .await
        .map_err(GuestError::kube(format!(
            "updating claim {ns}/{name} after resize"
        )))?;
    tracing::info!(claim = %name, bytes = resp.capacity_bytes, node_step = resp.node_expansion_required, "expanded");
    Ok(Action::await_change())
}
