//! Stand-in for the snapshot controller ([`run_controller`]) and
//! external-snapshotter ([`run_sidecar`]), or both ([`run`]):
//! a guest VolumeSnapshot of a class of our driver gets a
//! VolumeSnapshotContent (`snapcontent-<uid>`), the content becomes
//! `CreateSnapshot` (name `snapshot-<uid>`, the class parameters), repeated
//! until ready as the sidecar does, and the results flow back to the content
//! and snapshot status. A content whose snapshot is gone and whose policy is
//! Delete becomes `DeleteSnapshot`, then is deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kubevirt_csi_proto::v1::{CreateSnapshotRequest, DeleteSnapshotRequest};
use kubevirt_infra::snapshot::{
    VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent, VolumeSnapshotContentSource,
    VolumeSnapshotContentSpec,
};
use serde_json::json;

use crate::error::not_found_ok;
use crate::objects::driver_parameters;
use crate::{Ctx, GuestError, events};

const COMPONENT: &str = "csi-snapshotter";
/// Annotation marking the default VolumeSnapshotClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// How often a cut but not yet ready snapshot is asked about again.
const READY_RECHECK: Duration = Duration::from_millis(500);

/// Content name for the snapshot with `uid`.
pub fn content_name(uid: &str) -> String {
    format!("snapcontent-{uid}")
}

/// CSI snapshot name for the snapshot with `uid`.
pub fn snapshot_name(uid: &str) -> String {
    format!("snapshot-{uid}")
}

/// Both parts, as one actor (the lab's guest clusters run no snapshot
/// controller of their own).
pub async fn run(ctx: Arc<Ctx>) {
    tokio::join!(run_controller(ctx.clone()), run_sidecar(ctx));
}

/// The snapshot controller's part: VolumeSnapshots of our driver's classes
/// get their content, and its status flows back to them. It makes no CSI
/// call.
pub async fn run_controller(ctx: Arc<Ctx>) {
    let snapshots: Api<VolumeSnapshot> = Api::all(ctx.client.clone());
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    Controller::new(snapshots, watcher::Config::default())
        .watches(contents, watcher::Config::default(), |c| {
            let r = &c.spec.volume_snapshot_ref;
            match (&r.name, &r.namespace) {
                (Some(n), Some(ns)) => Some(ObjectRef::new(n).within(ns)),
                _ => None,
            }
        })
        .run(reconcile_snapshot, crate::retry, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// external-snapshotter's part: contents of our driver become
/// `CreateSnapshot` (and, their snapshot gone, `DeleteSnapshot`).
pub async fn run_sidecar(ctx: Arc<Ctx>) {
    let snapshots: Api<VolumeSnapshot> = Api::all(ctx.client.clone());
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    Controller::new(contents, watcher::Config::default())
        .watches(snapshots, watcher::Config::default(), |s| {
            s.uid().map(|uid| ObjectRef::new(&content_name(&uid)))
        })
        .run(reconcile_content, crate::retry, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The snapshot's class, when it is one of our driver's.
async fn our_class(
    ctx: &Ctx,
    name: Option<&str>,
) -> Result<Option<VolumeSnapshotClass>, GuestError> {
    let api: Api<VolumeSnapshotClass> = Api::all(ctx.client.clone());
    let class = match name {
        Some(n) => not_found_ok(api.get(n).await, format!("reading VolumeSnapshotClass {n}"))?,
        None => api
            .list(&Default::default())
            .await
            .map_err(GuestError::kube("listing VolumeSnapshotClasses"))?
            .items
            .into_iter()
            .find(|c| {
                c.driver == ctx.cfg.driver_name
                    && c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .map(String::as_str)
                        == Some("true")
            }),
    };
    Ok(class.filter(|c| c.driver == ctx.cfg.driver_name))
}

async fn reconcile_snapshot(vs: Arc<VolumeSnapshot>, ctx: Arc<Ctx>) -> Result<Action, GuestError> {
    if vs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(class) = our_class(&ctx, vs.spec.volume_snapshot_class_name.as_deref()).await? else {
        return Ok(Action::await_change());
    };
    let ns = vs.namespace().unwrap_or_default();
    let uid = vs.uid().unwrap_or_default();
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let cname = content_name(&uid);
    let content = match not_found_ok(contents.get(&cname).await, format!("reading {cname}"))? {
        Some(c) => c,
        None => {
            let claim = vs
                .spec
                .source
                .persistent_volume_claim_name
                .clone()
                .ok_or_else(|| {
                    GuestError::Invalid("only dynamic snapshots of a claim are handled".into())
                })?;
            let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                .get(&claim)
                .await
                .map_err(GuestError::kube(format!("reading claim {ns}/{claim}")))?;
            let pv = pvc
                .spec
                .and_then(|s| s.volume_name)
                .ok_or_else(|| GuestError::NotReady(format!("claim {ns}/{claim} is not bound")))?;
            let handle = crate::provisioner::volume_handle(&ctx, &pv).await?;
            let mut content = VolumeSnapshotContent::new(
                &cname,
                VolumeSnapshotContentSpec {
                    deletion_policy: class.deletion_policy.clone(),
                    driver: ctx.cfg.driver_name.clone(),
                    source: VolumeSnapshotContentSource {
                        volume_handle: Some(handle),
                        snapshot_handle: None,
                    },
                    volume_snapshot_ref: ObjectReference {
                        api_version: Some("snapshot.storage.k8s.io/v1".into()),
                        kind: Some("VolumeSnapshot".into()),
                        name: Some(vs.name_any()),
                        namespace: Some(ns.clone()),
                        uid: Some(uid.clone()),
                        ..Default::default()
                    },
                    volume_snapshot_class_name: class.metadata.name.clone(),
                    source_volume_mode: None,
                    extra: Default::default(),
                },
            );
            content.metadata = ObjectMeta {
                name: Some(cname.clone()),
                ..Default::default()
            };
            match contents.create(&PostParams::default(), &content).await {
                Ok(c) => c,
                Err(kube::Error::Api(s)) if s.code == 409 => contents
                    .get(&cname)
                    .await
                    .map_err(GuestError::kube(format!("reading {cname}")))?,
                Err(e) => return Err(GuestError::kube(format!("creating {cname}"))(e)),
            }
        }
    };
    let cs = content.status.clone().unwrap_or_default();
    let creation = cs
        .creation_time
        .and_then(|ns| jiff::Timestamp::from_nanosecond(i128::from(ns)).ok())
        .map(|t| t.to_string());
    let status = json!({"status": {
        "boundVolumeSnapshotContentName": cname,
        "readyToUse": cs.ready_to_use.unwrap_or(false),
        "restoreSize": cs.restore_size.map(|b| b.to_string()),
        "creationTime": creation,
        "error": cs.error.as_ref().map(|e| json!({"message": e.message, "time": e.time})),
    }});
    Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &vs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .map_err(GuestError::kube(format!(
            "updating VolumeSnapshot {ns}/{}",
            vs.name_any()
        )))?;
    Ok(Action::await_change())
}

async fn reconcile_content(
    content: Arc<VolumeSnapshotContent>,
    ctx: Arc<Ctx>,
) -> Result<Action, GuestError> {
    if content.spec.driver != ctx.cfg.driver_name {
        return Ok(Action::await_change());
    }
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let name = content.name_any();
    let r = &content.spec.volume_snapshot_ref;
    let (ns, vs_name) = (
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
    );
    let vs = not_found_ok(
        Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &ns)
            .get(&vs_name)
            .await,
        format!("reading VolumeSnapshot {ns}/{vs_name}"),
    )?;
    let snapshot_gone = !vs
        .as_ref()
        .is_some_and(|v| v.uid() == r.uid && v.metadata.deletion_timestamp.is_none());
    let handle = content
        .status
        .as_ref()
        .and_then(|s| s.snapshot_handle.clone());

    if snapshot_gone {
        if content.spec.deletion_policy == "Delete" {
            if let Some(h) = handle {
                let req = DeleteSnapshotRequest {
                    snapshot_id: h,
                    ..Default::default()
                };
                if let Err(s) = ctx
                    .csi
                    .controller
                    .clone()
                    .delete_snapshot(ctx.csi.request(req))
                    .await
                {
                    let e = GuestError::csi("DeleteSnapshot")(s);
                    events::record(
                        &ctx.client,
                        COMPONENT,
                        &*content,
                        true,
                        "SnapshotDeleteError",
                        &e.to_string(),
                    )
                    .await;
                    return Err(e);
                }
            }
            not_found_ok(
                contents.delete(&name, &DeleteParams::default()).await,
                format!("deleting {name}"),
            )?;
            tracing::info!(content = %name, "snapshot deleted");
        }
        return Ok(Action::await_change());
    }

    let Some(source) = content.spec.source.volume_handle.clone() else {
        return Ok(Action::await_change());
    };
    if content.status.as_ref().and_then(|s| s.ready_to_use) == Some(true) {
        return Ok(Action::await_change());
    }
    let params = match content.spec.volume_snapshot_class_name.as_deref() {
        Some(c) => our_class(&ctx, Some(c)).await?.map(|c| c.parameters),
        None => None,
    };
    let req = CreateSnapshotRequest {
        source_volume_id: source,
        name: snapshot_name(r.uid.as_deref().unwrap_or_default()),
        parameters: driver_parameters(params.as_ref()),
        ..Default::default()
    };
    let snapshot = match ctx
        .csi
        .controller
        .clone()
        .create_snapshot(ctx.csi.request(req))
        .await
    {
        Ok(r) => r
            .into_inner()
            .snapshot
            .ok_or_else(|| GuestError::Invalid("CreateSnapshot returned nothing".into()))?,
        Err(s) => {
            let e = GuestError::csi("CreateSnapshot")(s);
            let status = json!({"status": {"readyToUse": false,
                "error": {"message": e.to_string(), "time": jiff::Timestamp::now().to_string()}}});
            contents
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(GuestError::kube(format!("updating {name} status")))?;
            return Err(e);
        }
    };
    let created = snapshot
        .creation_time
        .map(|t| i64::from(t.nanos) + t.seconds.saturating_mul(1_000_000_000));
    let status = json!({"status": {
        "snapshotHandle": snapshot.snapshot_id,
        "creationTime": created,
        "readyToUse": snapshot.ready_to_use,
        "restoreSize": snapshot.size_bytes,
        "error": null,
    }});
    contents
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(GuestError::kube(format!("updating {name} status")))?;
    if snapshot.ready_to_use {
        tracing::info!(content = %name, handle = %snapshot.snapshot_id, "snapshot ready");
        Ok(Action::await_change())
    } else {
        // The sidecar asks again until the snapshot is ready.
        Ok(Action::requeue(READY_RECHECK))
    }
}
