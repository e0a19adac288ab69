//! Stand-in for external-attacher: a VolumeAttachment of our driver becomes
//! `ControllerPublishVolume` (node id from the node's CSINode, else its
//! `csi.volume.kubernetes.io/nodeid` annotation) and `status.attached`
//! with the publish context, or `status.attachError`; a deleted one becomes
//! `ControllerUnpublishVolume`, then its finalizer is removed.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kubevirt_csi_proto::v1::{ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest};
use serde_json::json;

use crate::error::not_found_ok;
use crate::objects::pv_capability;
use crate::{Ctx, GuestError};

/// Node annotation the kubelet keeps the CSI node ids in (JSON driver → id).
pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";

/// The attacher's finalizer for a driver (`external-attacher/csi-kubevirt-io`).
pub fn finalizer(driver: &str) -> String {
    format!("external-attacher/{}", driver.replace('.', "-"))
}

pub async fn run(ctx: Arc<Ctx>) {
    let vas: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    Controller::new(vas, watcher::Config::default())
        .run(reconcile, crate::retry, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The CSI node id of `node` for `driver`.
pub async fn node_id(
    client: &kube::Client,
    driver: &str,
    node: &str,
) -> Result<String, GuestError> {
    let csinode = not_found_ok(
        Api::<CSINode>::all(client.clone()).get(node).await,
        format!("reading CSINode {node}"),
    )?;
    if let Some(id) = csinode
        .and_then(|c| c.spec.drivers.into_iter().find(|d| d.name == driver))
        .and_then(|d| d.node_id.into())
        .filter(|id: &String| !id.is_empty())
    {
        return Ok(id);
    }
    let n = not_found_ok(
        Api::<Node>::all(client.clone()).get(node).await,
        format!("reading Node {node}"),
    )?
    .ok_or_else(|| GuestError::NotReady(format!("node {node} not found")))?;
    n.annotations()
        .get(NODE_ID_ANNOTATION)
        .and_then(|v| serde_json::from_str::<std::collections::BTreeMap<String, String>>(v).ok())
        .and_then(|m| m.get(driver).cloned())
        .ok_or_else(|| {
            GuestError::NotReady(format!("node {node} has not registered driver {driver}"))
        })
}

async fn set_status(
    api: &Api<VolumeAttachment>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), GuestError> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(GuestError::kube(format!(
        "updating VolumeAttachment {name} status"
    )))
}

async fn set_finalizers(
    api: &Api<VolumeAttachment>,
    name: &str,
    finalizers: Vec<String>,
) -> Result<(), GuestError> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .map(|_| ())
    .map_err(GuestError::kube(format!(
        "updating VolumeAttachment {name} finalizers"
    )))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

async fn reconcile(va: Arc<VolumeAttachment>, ctx: Arc<Ctx>) -> Result<Action, GuestError> {
    if va.spec.attacher != ctx.cfg.driver_name {
        return Ok(Action::await_change());
    }
    let api: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    let name = va.name_any();
    let fin = finalizer(&ctx.cfg.driver_name);
    let has_fin = va.finalizers().contains(&fin);
    let pv_name = va
        .spec
        .source
        .persistent_volume_name
        .clone()
        .ok_or_else(|| {
            GuestError::Invalid(format!("VolumeAttachment {name} names no PersistentVolume"))
        })?;

    if va.metadata.deletion_timestamp.is_some() {
        if !has_fin {
            return Ok(Action::await_change());
        }
        let handle = crate::provisioner::volume_handle(&ctx, &pv_name).await?;
        let node = node_id(&ctx.client, &ctx.cfg.driver_name, &va.spec.node_name).await?;
        let req = ControllerUnpublishVolumeRequest {
            volume_id: handle,
            node_id: node,
            ..Default::default()
        };
        if let Err(s) = ctx
            .csi
            .controller
            .clone()
            .controller_unpublish_volume(ctx.csi.request(req))
            .await
        {
            let e = GuestError::csi("ControllerUnpublishVolume")(s);
            set_status(
                &api,
                &name,
                json!({"detachError": {"message": e.to_string(), "time": now()}}),
            )
            .await?;
            return Err(e);
        }
        let rest: Vec<String> = va
            .finalizers()
            .iter()
            .filter(|f| **f != fin)
            .cloned()
            .collect();
        set_finalizers(&api, &name, rest).await?;
        tracing::info!(attachment = %name, "detached");
        return Ok(Action::await_change());
    }

    if !has_fin {
        let mut all = va.finalizers().to_vec();
        all.push(fin);
        set_finalizers(&api, &name, all).await?;
    }
    if va.status.as_ref().is_some_and(|s| s.attached) {
        return Ok(Action::await_change());
    }
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get(&pv_name)
        .await
        .map_err(GuestError::kube(format!(
            "reading PersistentVolume {pv_name}"
        )))?;
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.clone())
        .filter(|c| c.driver == ctx.cfg.driver_name)
        .ok_or_else(|| GuestError::Invalid(format!("PersistentVolume {pv_name} is not ours")))?;
    let node = node_id(&ctx.client, &ctx.cfg.driver_name, &va.spec.node_name).await?;
    let req = ControllerPublishVolumeRequest {
        volume_id: csi.volume_handle.clone(),
        node_id: node,
        volume_capability: pv_capability(&pv),
        readonly: csi.read_only.unwrap_or(false),
        volume_context: csi
            .volume_attributes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Default::default()
    };
    match ctx
        .csi
        .controller
        .clone()
        .controller_publish_volume(ctx.csi.request(req))
        .await
    {
        Ok(r) => {
            let context = r.into_inner().publish_context;
            set_status(
                &api,
                &name,
                json!({"attached": true, "attachmentMetadata": context, "attachError": null}),
            )
            .await?;
            tracing::info!(attachment = %name, "attached");
            Ok(Action::await_change())
        }
        Err(s) => {
            let e = GuestError::csi("ControllerPublishVolume")(s);
            set_status(
                &api,
                &name,
                json!({"attached": false, "attachError": {"message": e.to_string(), "time": now()}}),
            )
            .await?;
            Err(e)
        }
    }
}
