//! CreateVolume: validate, resolve the content source, then create the
//! DataVolume of the contract, once. A repeated call returns the existing
//! volume when it matches and `AlreadyExists` when it does not. The call
//! returns as soon as the DataVolume exists (it has its UID, the disk
//! serial); ControllerPublishVolume waits for the volume to be attachable.
//! One API request in the common case, two when the cache has not yet seen
//! an existing volume.
//!
//! The volume id is the DataVolume name: the CSI name itself when it is a
//! valid name with the volume prefix (what Kubernetes sends), else a name
//! derived from it, with the CSI name recorded on the DataVolume
//! ([`super::names`]).

use std::collections::HashMap;

use kubevirt_csi_proto::v1::{
    CreateVolumeRequest, CreateVolumeResponse, Volume, volume_content_source,
};
use tokio::time::Instant;

use super::capability::{Bus, access_of, bus, check_supported, required};
use super::entries::{self, ContentSource, VolumeEntry};
use super::names::{check_length, volume_object_name};
use super::volume::{
    BUS_PARAM, INFRA_STORAGE_CLASS_PARAM, SERIAL_KEY, VolumeRequest, check_compatible,
    desired_data_volume, volume_size,
};
use super::{ControllerService, Lookup, modify};
use crate::error::{Error, Result, is_conflict};

/// How long a call waits for the cache to show its own write.
pub(super) const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The requested content source, validated (not yet resolved).
fn requested_source(req: &CreateVolumeRequest) -> Result<Option<ContentSource>> {
    let Some(src) = &req.volume_content_source else {
        return Ok(None);
    };
    match &src.r#type {
        Some(volume_content_source::Type::Snapshot(s)) => Ok(Some(ContentSource::Snapshot(
            required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?.to_string(),
        ))),
        Some(volume_content_source::Type::Volume(v)) => Ok(Some(ContentSource::Volume(
            required(&v.volume_id, "volume_content_source.volume.volume_id")?.to_string(),
        ))),
        None => Err(Error::InvalidArgument(
            "volume_content_source names neither a snapshot nor a volume".into(),
        )),
    }
}

fn response(
    req: &CreateVolumeRequest,
    volume_id: &str,
    capacity: i64,
    bus: Bus,
    uid: &str,
) -> CreateVolumeResponse {
    CreateVolumeResponse {
        volume: Some(Volume {
            capacity_bytes: capacity,
            volume_id: volume_id.to_string(),
            volume_context: HashMap::from([
                (BUS_PARAM.to_string(), bus.as_str().to_string()),
                (SERIAL_KEY.to_string(), uid.to_string()),
            ]),
            content_source: req.volume_content_source.clone(),
            accessible_topology: Vec::new(),
        }),
    }
}

#[tracing::instrument(name = "CreateVolume", skip_all,
                      fields(name = %req.name, volume = tracing::field::Empty))]
pub(super) async fn create_volume(
    svc: &ControllerService,
    req: CreateVolumeRequest,
    deadline: Instant,
) -> Result<CreateVolumeResponse> {
    let mutable = modify::parse(&req.mutable_parameters)?;
    let response = create_data_volume(svc, req, deadline).await?;
    // A VolumeAttributesClass goes on the infra claim once CDI made it
    // (again on a retry: setting it is idempotent).
    if let (Some(class), Some(volume)) = (&mutable.infra_class, &response.volume) {
        let uid = volume
            .volume_context
            .get(SERIAL_KEY)
            .map_or("", String::as_str);
        modify::set_class(svc, &volume.volume_id, uid, class, deadline).await?;
    }
    Ok(response)
}

/// CreateVolume but for its mutable parameters.
async fn create_data_volume(
    svc: &ControllerService,
    req: CreateVolumeRequest,
    deadline: Instant,
) -> Result<CreateVolumeResponse> {
    // Validate everything before touching anything.
    let csi_name = required(&req.name, "name")?;
    check_length(csi_name, "name")?;
    let object_name = volume_object_name(svc.scope(), csi_name);
    let name = object_name.as_str();
    tracing::Span::current().record("volume", name);
    let access = access_of(&req.volume_capabilities)?;
    check_supported(access)?;
    let bus = bus(req.parameters.get(BUS_PARAM).map(String::as_str))?;
    let storage_class = req
        .parameters
        .get(INFRA_STORAGE_CLASS_PARAM)
        .filter(|s| !s.is_empty())
        .cloned();
    svc.enforcement
        .check_storage_class(storage_class.as_deref())
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let source = requested_source(&req)?;
    super::volume::capacity_bounds(req.capacity_range.as_ref())?;

    let _guard = svc.in_flight.begin(name)?;
    svc.synced(deadline).await?;

    // A volume the cache already knows: idempotent answer, no API call.
    if let Some(existing) = svc.index.read(|s| s.volume(name).cloned()) {
        return existing_volume(&req, name, existing, access, storage_class, source, bus);
    }

    let source_size = match &source {
        None => None,
        Some(ContentSource::Snapshot(snap)) => Some(snapshot_size(svc, snap).await?),
        Some(ContentSource::Volume(src)) => {
            let v = svc
                .lookup_volume(src)
                .await?
                .ok_or_else(|| Error::NotFound(format!("source volume {src} not found")))?;
            v.size
        }
    };
    let size = volume_size(req.capacity_range.as_ref(), source_size)?;
    let request = VolumeRequest {
        name: name.to_string(),
        csi_name: csi_name.to_string(),
        size,
        access,
        storage_class,
        source,
    };
    let dv = desired_data_volume(&request, svc.scope());
    match svc.infra.create_data_volume(&dv).await {
        Ok(created) => {
            let uid = created.metadata.uid.unwrap_or_default();
            tracing::info!(size, uid = %uid, "created DataVolume");
            // Let the next call (a retry, ListVolumes, DeleteVolume) see it.
            svc.index
                .settle(deadline, SETTLE, |s| {
                    s.volume(name).is_some_and(|v| v.uid == uid)
                })
                .await;
            Ok(response(&req, name, size, bus, &uid))
        }
        Err(e) if is_conflict(&e) => {
            // Created by an earlier call the cache has not seen yet, or by someone else.
            let found = svc.infra.get_data_volume(name).await?;
            let Some(found) = found else {
                return Err(Error::Aborted(format!(
                    "volume {name} is being deleted; retry"
                )));
            };
            if let Err(why) = svc.scope().check_volume("DataVolume", &found.metadata) {
                return Err(Error::AlreadyExists(format!(
                    "an infra DataVolume named {name} exists outside the tenant scope: {why}"
                )));
            }
            let existing = entries::volume_entry(&found);
            existing_volume(
                &req,
                name,
                existing,
                request.access,
                request.storage_class,
                request.source,
                bus,
            )
        }
        Err(e) => Err(Error::infra(format!("creating DataVolume {name}"))(e)),
    }
}

/// Answer a repeated call from the existing volume.
fn existing_volume(
    req: &CreateVolumeRequest,
    name: &str,
    existing: VolumeEntry,
    access: super::capability::Access,
    storage_class: Option<String>,
    source: Option<ContentSource>,
    bus: Bus,
) -> Result<CreateVolumeResponse> {
    if existing.deleting {
        return Err(Error::Aborted(format!(
            "volume {name} is being deleted; retry"
        )));
    }
    let request = VolumeRequest {
        name: name.to_string(),
        csi_name: req.name.clone(),
        size: existing.size.unwrap_or(0),
        access,
        storage_class,
        source,
    };
    check_compatible(&existing, &request, req.capacity_range.as_ref())?;
    tracing::debug!(uid = %existing.uid, "volume exists; returning it");
    Ok(response(req, name, request.size, bus, &existing.uid))
}

/// The size of a source snapshot (its restore size), or NotFound.
async fn snapshot_size(svc: &ControllerService, snap: &str) -> Result<i64> {
    let entry = match svc.lookup_snapshot(snap).await? {
        Lookup::Ours(e) if !e.deleting => e,
        Lookup::Ours(_) | Lookup::Foreign(_) | Lookup::Absent => {
            return Err(Error::NotFound(format!("source snapshot {snap} not found")));
        }
    };
    if let Some(size) = entry.restore_size {
        return Ok(size);
    }
    // Not ready yet: the source volume's size is what the snapshot will hold.
    let from_source = match &entry.source {
        Some(src) => svc.lookup_volume(src).await?.and_then(|v| v.size),
        None => None,
    };
    Ok(from_source.unwrap_or(0))
}
