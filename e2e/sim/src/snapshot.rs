//! The CSI snapshot controller and a snapshotter in one: a VolumeSnapshot of a
//! bound PVC gets a VolumeSnapshotContent (driver and deletion policy from its
//! class, or the default class, or the configured default driver) and a sparse
//! copy of the claim's backing file, then reports readyToUse with its restore
//! size. A snapshot of a missing claim or class gets `status.error`, and is
//! tried again after a back-off (doubling from one second to a minute, as
//! the snapshot controller's work queue does); success clears the error.
//!
//! When the snapshot goes, its content goes too if the policy is Delete; the
//! content's finalizer removes the data file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kubevirt_infra::snapshot::{
    SnapshotError, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent,
    VolumeSnapshotContentSource, VolumeSnapshotContentSpec, VolumeSnapshotContentStatus,
    VolumeSnapshotStatus,
};
use serde_json::json;

use crate::cdi::{SNAPSHOT_DATA_ANNOTATION, backing_file, claim_capacity, is_bound};
use crate::error::{ignore_not_found, not_found_ok};
use crate::meta::{is_deleting, key, now_rfc3339};
use crate::quantity::{format_bytes, parse_bytes};
use crate::runner::{drain, error_policy};
use crate::{Error, files};

/// Finalizer on contents: the data file is removed before the content goes.
pub const DATA_FINALIZER: &str = "lab.kubevirt.io/snapshot-data";
/// Annotation marking a VolumeSnapshotClass as the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// Where snapshot data lives and which driver classless snapshots report.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// Directory of the snapshot data files, one `<content-name>.img` each.
    pub data_dir: PathBuf,
    /// Driver of snapshots whose class is not given and no default class exists.
    pub default_driver: String,
}

struct Ctx {
    client: Client,
    cfg: SnapshotConfig,
    /// The next retry delay of each failing snapshot (by uid).
    backoff: Mutex<HashMap<String, Duration>>,
}

/// The first and the longest delay before a failed snapshot is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Runs the snapshot and content controllers until the future is dropped.
pub async fn run(client: Client, cfg: SnapshotConfig) -> Result<(), Error> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(Error::io("create directory", &cfg.data_dir))?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        backoff: Default::default(),
    });
    let snapshots: Api<VolumeSnapshot> = Api::all(client.clone());
    let contents: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let wc = watcher::Config::default;

    let snapshot_controller = Controller::new(snapshots.clone(), wc());
    let store = snapshot_controller.store();
    let snapshot_controller = snapshot_controller
        .watches(contents.clone(), wc(), |content| {
            let r = &content.spec.volume_snapshot_ref;
            match (&r.name, &r.namespace) {
                (Some(name), Some(ns)) => Some(ObjectRef::new(name).within(ns)),
                _ => None,
            }
        })
        .watches(pvcs, wc(), move |pvc| {
            let (ns, name) = (pvc.namespace(), pvc.name_any());
            store
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == ns
                        && s.spec.source.persistent_volume_claim_name.as_deref()
                            == Some(name.as_str())
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(reconcile_snapshot, error_policy, ctx.clone());

    let content_controller = Controller::new(contents, wc())
        .watches(snapshots, wc(), |snap| {
            snap.status
                .as_ref()
                .and_then(|s| s.bound_volume_snapshot_content_name.clone())
                .or_else(|| snap.uid().map(|uid| content_name(&uid)))
                .map(|name| ObjectRef::new(&name))
        })
        .run(reconcile_content, error_policy, ctx);

    tokio::join!(
        drain("snapshot", snapshot_controller),
        drain("snapshot-content", content_controller),
    );
    Ok(())
}

/// Name of the content of the snapshot with `uid`, as the snapshot controller names it.
pub fn content_name(snapshot_uid: &str) -> String {
    format!("snapcontent-{snapshot_uid}")
}

// === VolumeSnapshot ===

async fn reconcile_snapshot(snap: Arc<VolumeSnapshot>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if is_deleting(&*snap) {
        return Ok(Action::await_change());
    }
    let ns = snap
        .namespace()
        .ok_or_else(|| Error::missing("VolumeSnapshot", snap.name_any(), "namespace"))?;
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());

    let uid = snap.uid().unwrap_or_default();
    let mut next = Action::await_change();
    let status = match take_snapshot(&snap, &ns, &ctx, &contents).await? {
        Outcome::Content(content) => {
            ctx.backoff
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
            status_from_content(&content)
        }
        Outcome::Failed(message) => {
            let mut backoff = ctx.backoff.lock().unwrap_or_else(|p| p.into_inner());
            let delay = backoff.entry(uid).or_insert(RETRY_FIRST);
            next = Action::requeue(*delay);
            *delay = (*delay * 2).min(RETRY_MAX);
            VolumeSnapshotStatus {
                ready_to_use: Some(false),
                error: Some(SnapshotError {
                    message: Some(message),
                    time: Some(now_rfc3339()),
                }),
                ..snap.status.clone().unwrap_or_default()
            }
        }
        Outcome::Waiting => return Ok(Action::await_change()),
    };
    if !same_status(snap.status.as_ref(), &status) {
        let mut body = serde_json::to_value(&status)?;
        // Success clears an earlier error.
        if status.error.is_none() {
            body["error"] = serde_json::Value::Null;
        }
        snapshots
            .patch_status(
                &snap.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": body})),
            )
            .await?;
    }
    Ok(next)
}

enum Outcome {
    Content(Box<VolumeSnapshotContent>),
    Failed(String),
    Waiting,
}

/// Finds or makes the snapshot's content.
async fn take_snapshot(
    snap: &VolumeSnapshot,
    ns: &str,
    ctx: &Ctx,
    contents: &Api<VolumeSnapshotContent>,
) -> Result<Outcome, Error> {
    if let Some(pre) = &snap.spec.source.volume_snapshot_content_name {
        return Ok(match not_found_ok(contents.get(pre).await)? {
            Some(content) => Outcome::Content(Box::new(content)),
            None => Outcome::Failed(format!("VolumeSnapshotContent {pre} not found")),
        });
    }
    let Some(claim) = snap.spec.source.persistent_volume_claim_name.clone() else {
        return Ok(Outcome::Failed(
            "spec.source names neither a PVC nor a content".into(),
        ));
    };
    let uid = snap
        .uid()
        .ok_or_else(|| Error::missing("VolumeSnapshot", key(snap), "metadata.uid"))?;
    let name = content_name(&uid);
    if let Some(content) = not_found_ok(contents.get(&name).await)? {
        return Ok(Outcome::Content(Box::new(content)));
    }

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pvc) = not_found_ok(pvcs.get(&claim).await)? else {
        return Ok(Outcome::Failed(format!(
            "failed to take snapshot: persistentvolumeclaims \"{claim}\" not found"
        )));
    };
    if !is_bound(&pvc) {
        tracing::debug!(snapshot = %key(snap), "source claim not bound yet");
        return Ok(Outcome::Waiting);
    }
    let class =
        match snapshot_class(&ctx.client, snap.spec.volume_snapshot_class_name.as_deref()).await? {
            Ok(class) => class,
            Err(message) => return Ok(Outcome::Failed(message)),
        };
    let restore_bytes = claim_capacity(&pvc)
        .map(|q| parse_bytes(&q))
        .transpose()?
        .unwrap_or(0);
    let src = backing_file(&ctx.client, ns, &claim).await?;
    let dst = ctx.cfg.data_dir.join(format!("{name}.img"));
    files::copy_sparse_async(src, dst.clone(), 0).await?;

    let content = desired_content(
        snap,
        &pvc,
        &name,
        &dst,
        class.as_ref(),
        &ctx.cfg.default_driver,
    );
    let created = contents.create(&PostParams::default(), &content).await?;
    let status = VolumeSnapshotContentStatus {
        snapshot_handle: Some(format!("snapshot-{uid}")),
        creation_time: Some(
            i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX),
        ),
        ready_to_use: Some(true),
        restore_size: Some(i64::try_from(restore_bytes).unwrap_or(i64::MAX)),
        error: None,
    };
    let content = contents
        .patch_status(
            &created.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    tracing::info!(snapshot = %key(snap), content = %name, size = %format_bytes(restore_bytes), "snapshot taken");
    Ok(Outcome::Content(Box::new(content)))
}

/// The named class, or the default one, or none; `Err(message)` for a named class that does not exist.
async fn snapshot_class(
    client: &Client,
    name: Option<&str>,
) -> Result<Result<Option<VolumeSnapshotClass>, String>, Error> {
    let classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    match name {
        Some(name) => Ok(not_found_ok(classes.get(name).await)?
            .map(Some)
            .ok_or_else(|| format!("VolumeSnapshotClass \"{name}\" not found"))),
        None => {
            let list = classes.list(&Default::default()).await?;
            Ok(Ok(list.items.into_iter().find(|c| {
                c.annotations()
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
            })))
        }
    }
}

/// The content the snapshot controller creates for `snap` of `pvc`.
pub fn desired_content(
    snap: &VolumeSnapshot,
    pvc: &PersistentVolumeClaim,
    name: &str,
    data: &std::path::Path,
    class: Option<&VolumeSnapshotClass>,
    default_driver: &str,
) -> VolumeSnapshotContent {
    let mut content = VolumeSnapshotContent::new(
        name,
        VolumeSnapshotContentSpec {
            deletion_policy: class
                .map_or_else(|| "Delete".to_string(), |c| c.deletion_policy.clone()),
            driver: class.map_or_else(|| default_driver.to_string(), |c| c.driver.clone()),
            source: VolumeSnapshotContentSource {
                volume_handle: pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
                snapshot_handle: None,
            },
            volume_snapshot_ref: ObjectReference {
                api_version: Some("snapshot.storage.k8s.io/v1".to_string()),
                kind: Some("VolumeSnapshot".to_string()),
                name: snap.metadata.name.clone(),
                namespace: snap.metadata.namespace.clone(),
                uid: snap.metadata.uid.clone(),
                resource_version: None,
                field_path: None,
            },
            volume_snapshot_class_name: class.map(|c| c.name_any()),
            source_volume_mode: pvc.spec.as_ref().and_then(|s| s.volume_mode.clone()),
            extra: Default::default(),
        },
    );
    content.metadata = ObjectMeta {
        name: Some(name.to_string()),
        annotations: Some(BTreeMap::from([(
            SNAPSHOT_DATA_ANNOTATION.to_string(),
            data.to_string_lossy().into_owned(),
        )])),
        finalizers: Some(vec![DATA_FINALIZER.to_string()]),
        ..ObjectMeta::default()
    };
    content
}

/// The snapshot status a content implies.
pub fn status_from_content(content: &VolumeSnapshotContent) -> VolumeSnapshotStatus {
    let status = content.status.clone().unwrap_or_default();
    VolumeSnapshotStatus {
        bound_volume_snapshot_content_name: Some(content.name_any()),
        creation_time: status.creation_time.and_then(|ns| {
            jiff::Timestamp::from_nanosecond(i128::from(ns))
                .ok()
                .and_then(|t| t.round(jiff::Unit::Second).ok())
                .map(|t| t.to_string())
        }),
        ready_to_use: Some(status.ready_to_use.unwrap_or(false)),
        restore_size: status
            .restore_size
            .map(|b| Quantity(format_bytes(u64::try_from(b).unwrap_or(0)))),
        error: status.error,
        extra: Default::default(),
    }
}

/// Equal but for the error timestamp (which would otherwise change every time).
fn same_status(current: Option<&VolumeSnapshotStatus>, desired: &VolumeSnapshotStatus) -> bool {
    let strip = |s: &VolumeSnapshotStatus| {
        let mut s = s.clone();
        if let Some(e) = s.error.as_mut() {
            e.time = None;
        }
        s
    };
    current.map(strip) == Some(strip(desired))
}

// === VolumeSnapshotContent ===

async fn reconcile_content(
    content: Arc<VolumeSnapshotContent>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    if !content.annotations().contains_key(SNAPSHOT_DATA_ANNOTATION) {
        return Ok(Action::await_change());
    }
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    finalizer(&contents, DATA_FINALIZER, content, |event| async {
        match event {
            Finalizer::Apply(content) => delete_if_released(&content, &ctx).await,
            Finalizer::Cleanup(content) => {
                if let Some(file) = content.annotations().get(SNAPSHOT_DATA_ANNOTATION) {
                    files::remove_async(PathBuf::from(file)).await?;
                    tracing::info!(content = %content.name_any(), "snapshot data removed");
                }
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(Error::from)
}

/// Deletes a content (policy Delete) whose snapshot is gone.
async fn delete_if_released(content: &VolumeSnapshotContent, ctx: &Ctx) -> Result<Action, Error> {
    let r = &content.spec.volume_snapshot_ref;
    let (Some(ns), Some(name)) = (&r.namespace, &r.name) else {
        return Ok(Action::await_change());
    };
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let alive = not_found_ok(snapshots.get(name).await)?
        .is_some_and(|s| r.uid.is_none() || s.metadata.uid == r.uid);
    if !alive && content.spec.deletion_policy == "Delete" {
        tracing::info!(content = %content.name_any(), "snapshot gone, deleting content");
        let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
        ignore_not_found(
            contents
                .delete(&content.name_any(), &DeleteParams::default())
                .await,
        )?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_takes_class_driver_and_policy() {
        let snap: VolumeSnapshot = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "snap-1", "namespace": "infra", "uid": "u1"},
            "spec": {"source": {"persistentVolumeClaimName": "pvc-1"}}
        }))
        .expect("valid snapshot");
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "namespace": "infra"},
            "spec": {"volumeName": "pv-1", "volumeMode": "Block"}
        }))
        .expect("valid claim");
        let class = VolumeSnapshotClass::new("retain", "csi.example", "Retain");
        let c = desired_content(
            &snap,
            &pvc,
            "snapcontent-u1",
            std::path::Path::new("/s/x.img"),
            Some(&class),
            "dflt",
        );
        assert_eq!(c.spec.driver, "csi.example");
        assert_eq!(c.spec.deletion_policy, "Retain");
        assert_eq!(c.spec.source.volume_handle.as_deref(), Some("pv-1"));
        assert_eq!(c.spec.volume_snapshot_ref.uid.as_deref(), Some("u1"));
        assert_eq!(
            c.annotations()
                .get(SNAPSHOT_DATA_ANNOTATION)
                .map(String::as_str),
            Some("/s/x.img")
        );
        let d = desired_content(
            &snap,
            &pvc,
            "snapcontent-u1",
            std::path::Path::new("/s/x.img"),
            None,
            "dflt",
        );
        assert_eq!(
            (d.spec.driver.as_str(), d.spec.deletion_policy.as_str()),
            ("dflt", "Delete")
        );
    }

    #[test]
    fn snapshot_status_mirrors_content() {
        let mut c =
            VolumeSnapshotContent::new("snapcontent-u1", VolumeSnapshotContentSpec::default());
        c.status = Some(VolumeSnapshotContentStatus {
            creation_time: Some(1_700_000_000_123_456_789),
            ready_to_use: Some(true),
            restore_size: Some(1 << 30),
            ..Default::default()
        });
        let s = status_from_content(&c);
        assert_eq!(
            s.bound_volume_snapshot_content_name.as_deref(),
            Some("snapcontent-u1")
        );
        assert_eq!(s.ready_to_use, Some(true));
        assert_eq!(s.restore_size, Some(Quantity("1Gi".into())));
        assert_eq!(s.creation_time.as_deref(), Some("2023-11-14T22:13:20Z"));
    }
}
