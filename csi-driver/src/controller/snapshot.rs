//! CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot over infra
//! VolumeSnapshots labelled with the tenant labels.
//!
//! CreateSnapshot picks the infra VolumeSnapshotClass with the enforcement
//! policy (`infraSnapshotClassName` and `storageSnapshotMapping`), creates the
//! snapshot once, and blocks (on the snapshot watch) until it is cut, as the
//! spec asks; `ready_to_use` then says whether it can be restored yet, and
//! the caller repeats the call until it can. The size is the infra restore
//! size, or the source volume's size before that is known.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_csi_proto::v1::{
    CreateSnapshotRequest, CreateSnapshotResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest, ListSnapshotsResponse, Snapshot,
    list_snapshots_response,
};
use kubevirt_infra::snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};
use tokio::time::Instant;

use super::capability::{is_object_name, required};
use super::entries::SnapshotEntry;
use super::names::{check_length, record, snapshot_object_name};
use super::pagination;
use super::{ControllerService, Lookup};
use crate::error::{Error, Result, is_conflict};

/// VolumeSnapshotClass parameter naming the infra snapshot class.
pub const INFRA_SNAPSHOT_CLASS_PARAM: &str = "infraSnapshotClassName";

/// The CSI view of a snapshot; `fallback_size` when the restore size is unknown.
pub fn csi_snapshot(name: &str, e: &SnapshotEntry, fallback_size: Option<i64>) -> Snapshot {
    Snapshot {
        size_bytes: e.restore_size.or(fallback_size).unwrap_or(0),
        snapshot_id: name.to_string(),
        source_volume_id: e.source.clone().unwrap_or_default(),
        creation_time: e.creation_time().map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }),
        ready_to_use: e.ready,
        group_snapshot_id: String::new(),
    }
}

/// The infra VolumeSnapshot `name` for a new snapshot asked for as `csi_name`.
pub fn desired_snapshot(
    name: &str,
    csi_name: &str,
    source: &str,
    class: Option<String>,
    scope: &kubevirt_infra::TenantScope,
) -> VolumeSnapshot {
    let mut vs = VolumeSnapshot::new(
        name,
        VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(source.to_string()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: class,
            extra: Default::default(),
        },
    );
    vs.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(scope.namespace().to_string()),
        labels: Some(scope.labels().clone()),
        annotations: record(name, csi_name).map(|a| [a].into()),
        ..Default::default()
    };
    vs
}

#[tracing::instrument(name = "CreateSnapshot", skip_all,
                      fields(name = %req.name, snapshot = tracing::field::Empty,
                             volume = %req.source_volume_id))]
pub(super) async fn create_snapshot(
    svc: &ControllerService,
    req: CreateSnapshotRequest,
    deadline: Instant,
) -> Result<CreateSnapshotResponse> {
    let csi_name = required(&req.name, "name")?;
    check_length(csi_name, "name")?;
    let source = required(&req.source_volume_id, "source_volume_id")?;
    let object_name = snapshot_object_name(csi_name);
    let name = object_name.as_str();
    tracing::Span::current().record("snapshot", name);
    let requested_class = req
        .parameters
        .get(INFRA_SNAPSHOT_CLASS_PARAM)
        .filter(|s| !s.is_empty())
        .map(String::as_str);

    let _guard = svc.in_flight.begin(&format!("snapshot/{name}"))?;
    svc.synced(deadline).await?;
    svc.snapshots_synced(deadline).await?;

    let volume = svc.lookup_volume(source).await?;
    match svc.lookup_snapshot(name).await? {
        Lookup::Ours(existing) => {
            if existing.deleting {
                return Err(Error::Aborted(format!(
                    "snapshot {name} is being deleted; retry"
                )));
            }
            let existing_name = existing.csi_name(name);
            if existing_name != csi_name {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name} was created for another name, {existing_name:?}"
                )));
            }
            if existing.source.as_deref() != Some(source) {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name} exists for volume {}",
                    existing.source.as_deref().unwrap_or("<none>")
                )));
            }
        }
        Lookup::Foreign(why) => {
            return Err(Error::AlreadyExists(format!(
                "an infra VolumeSnapshot named {name} exists outside the tenant scope: {why}"
            )));
        }
        Lookup::Absent => {
            let volume = volume
                .as_ref()
                .ok_or_else(|| Error::NotFound(format!("source volume {source} not found")))?;
            let class = svc
                .enforcement
                .snapshot_class(volume.storage_class.as_deref(), requested_class)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let vs = desired_snapshot(name, csi_name, source, class.clone(), svc.scope());
            match svc.infra.create_snapshot(&vs).await {
                Ok(_) => tracing::info!(
                    class = class.as_deref().unwrap_or("<default>"),
                    "created VolumeSnapshot"
                ),
                Err(e) if is_conflict(&e) => tracing::debug!("VolumeSnapshot already created"),
                Err(e) => return Err(Error::infra(format!("creating VolumeSnapshot {name}"))(e)),
            }
        }
    }

    // Block until cut, as the spec requires. An error in the snapshot's
    // status is not the end: the snapshot controller keeps retrying (a
    // source claim not created yet, say) and clears it on success, so it is
    // reported only with the deadline.
    let cut = svc
        .index
        .wait_for(deadline, |s| {
            s.snapshot(name).filter(|e| e.is_cut()).cloned()
        })
        .await;
    let Some(entry) = cut else {
        let last = svc
            .index
            .read(|s| s.snapshot(name).and_then(|e| e.error.clone()));
        return Err(Error::DeadlineExceeded(match last {
            Some(msg) => {
                format!("infra snapshot {name} was not cut before the deadline; last error: {msg}")
            }
            None => format!("infra snapshot {name} was not cut before the deadline"),
        }));
    };
    Ok(CreateSnapshotResponse {
        snapshot: Some(csi_snapshot(name, &entry, volume.and_then(|v| v.size))),
    })
}

#[tracing::instrument(name = "DeleteSnapshot", skip_all, fields(snapshot = %req.snapshot_id))]
pub(super) async fn delete_snapshot(
    svc: &ControllerService,
    req: DeleteSnapshotRequest,
    deadline: Instant,
) -> Result<DeleteSnapshotResponse> {
    let id = required(&req.snapshot_id, "snapshot_id")?;
    if !is_object_name(id) {
        return Ok(DeleteSnapshotResponse {});
    }
    let _guard = svc.in_flight.begin(&format!("snapshot/{id}"))?;
    match svc.snapshots_synced(deadline).await {
        // Deleting is idempotent, and no snapshot can exist where the API
        // is not served (the CRD's objects go with it): the wanted state
        // holds, and failing would only stall the sidecar on a
        // VolumeSnapshotContent that has nothing left to delete.
        Err(Error::NotServed { api }) => {
            tracing::info!("the infra cluster does not serve {api}: no snapshot to delete");
            return Ok(DeleteSnapshotResponse {});
        }
        other => other?,
    }
    match svc.lookup_snapshot(id).await? {
        Lookup::Ours(e) => {
            svc.infra.delete_snapshot(id, &e.uid).await?;
            tracing::info!("deleted VolumeSnapshot");
            // Let the next ListSnapshots or GetSnapshot see it gone (it may
            // linger with finalizers: then it is marked deleting).
            svc.index
                .settle(deadline, super::create::SETTLE, |s| {
                    s.snapshot(id).is_none_or(|v| v.uid != e.uid || v.deleting)
                })
                .await;
        }
        Lookup::Foreign(why) => {
            tracing::warn!(reason = %why, "not the tenant's snapshot; nothing deleted");
        }
        Lookup::Absent => {}
    }
    Ok(DeleteSnapshotResponse {})
}

pub(super) async fn list_snapshots(
    svc: &ControllerService,
    req: ListSnapshotsRequest,
    deadline: Instant,
) -> Result<ListSnapshotsResponse> {
    pagination::check_request(req.max_entries, &req.starting_token)?;
    svc.snapshots_synced(deadline).await?;
    let page = svc.index.read(|s| {
        pagination::page(
            s.snapshots(),
            req.max_entries,
            &req.starting_token,
            |name, e| {
                if !req.snapshot_id.is_empty() && req.snapshot_id != name {
                    return None;
                }
                if !req.source_volume_id.is_empty()
                    && e.source.as_deref() != Some(&req.source_volume_id)
                {
                    return None;
                }
                if !e.is_cut() || e.deleting {
                    return None;
                }
                let fallback = e
                    .source
                    .as_deref()
                    .and_then(|v| s.volume(v))
                    .and_then(|v| v.size);
                Some(list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(name, e, fallback)),
                })
            },
        )
    })?;
    Ok(ListSnapshotsResponse {
        entries: page.entries,
        next_token: page.next_token,
    })
}

pub(super) async fn get_snapshot(
    svc: &ControllerService,
    req: GetSnapshotRequest,
    deadline: Instant,
) -> Result<GetSnapshotResponse> {
    let id = required(&req.snapshot_id, "snapshot_id")?;
    svc.snapshots_synced(deadline).await?;
    let entry = match svc.lookup_snapshot(id).await? {
        Lookup::Ours(e) if !e.deleting => e,
        Lookup::Ours(_) | Lookup::Foreign(_) | Lookup::Absent => {
            return Err(Error::NotFound(format!("snapshot {id} not found")));
        }
    };
    let fallback = svc.index.read(|s| {
        entry
            .source
            .as_deref()
            .and_then(|v| s.volume(v))
            .and_then(|v| v.size)
    });
    Ok(GetSnapshotResponse {
        snapshot: Some(csi_snapshot(id, &entry, fallback)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::entries;
    use serde_json::json;

    #[test]
    fn desired_snapshot_is_labelled_and_sourced() {
        let scope = kubevirt_infra::TenantScope::new(
            "ns",
            [("t".to_string(), "a".to_string())].into(),
            "pvc",
        );
        let v = serde_json::to_value(desired_snapshot(
            "snapshot-1",
            "snapshot-1",
            "pvc-1",
            Some("csi-snap".into()),
            &scope,
        ))
        .expect("serializes");
        assert_eq!(
            v,
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "snapshot-1", "namespace": "ns", "labels": {"t": "a"}},
                "spec": {"source": {"persistentVolumeClaimName": "pvc-1"}, "volumeSnapshotClassName": "csi-snap"}
            })
        );
        let e = entries::snapshot_entry(&serde_json::from_value(v).expect("parses"));
        let s = csi_snapshot("snapshot-1", &e, Some(42));
        assert_eq!(
            (s.size_bytes, s.ready_to_use, s.source_volume_id.as_str()),
            (42, false, "pvc-1")
        );
    }
}
