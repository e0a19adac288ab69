//! ControllerExpandVolume: grow the infra claim behind the DataVolume and
//! wait, on a watch of the claim, until the infra storage has grown it (its
//! capacity reached the size, or only the infra-side filesystem resize
//! remains). Filesystem volumes then need the guest's NodeExpandVolume.
//!
//! The claim is accepted as the tenant's when it carries the tenant labels or
//! is owned by the tenant's DataVolume (CDI's ownership), so the resize needs
//! no cluster-scoped access to PersistentVolumes.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kubevirt_csi_proto::v1::{ControllerExpandVolumeRequest, ControllerExpandVolumeResponse};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{check_capability, required};
use super::infra::claim_sizes;
use super::volume::{capacity_bounds, check_supported_size};
use crate::error::{Error, Result};

/// The claim belongs to the DataVolume with `uid` or carries the tenant labels.
fn claim_is_tenants(svc: &ControllerService, pvc: &PersistentVolumeClaim, uid: &str) -> bool {
    let owned = pvc
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DataVolume" && o.uid == uid);
    owned
        || svc
            .scope()
            .check_volume("PersistentVolumeClaim", &pvc.metadata)
            .is_ok()
}

/// The infra claim behind the tenant's volume `name` (DataVolume `uid`),
/// waiting on a watch for CDI to make it when the volume is new.
pub(super) async fn tenant_claim(
    svc: &ControllerService,
    name: &str,
    uid: &str,
    deadline: Instant,
) -> Result<PersistentVolumeClaim> {
    let pvc = match svc.infra.get_claim(name).await? {
        Some(pvc) => pvc,
        // Just created: CDI makes the claim right after the DataVolume.
        None => svc
            .infra
            .wait_claim_exists(name, deadline)
            .await?
            .ok_or_else(|| {
                Error::DeadlineExceeded(format!(
                    "the infra claim of volume {name} did not appear before the deadline"
                ))
            })?,
    };
    if !claim_is_tenants(svc, &pvc, uid) {
        return Err(Error::NotFound(format!(
            "the infra claim of volume {name} was not found"
        )));
    }
    Ok(pvc)
}

#[tracing::instrument(name = "ControllerExpandVolume", skip_all, fields(volume = %req.volume_id))]
pub(super) async fn expand_volume(
    svc: &ControllerService,
    req: ControllerExpandVolumeRequest,
    deadline: Instant,
) -> Result<ControllerExpandVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    let range = req
        .capacity_range
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
    let (required_bytes, limit) = capacity_bounds(Some(range))?;
    let want = if required_bytes > 0 {
        required_bytes
    } else {
        limit
    };
    if want == 0 {
        return Err(Error::InvalidArgument(
            "capacity_range must set required_bytes or limit_bytes".into(),
        ));
    }
    check_supported_size(want)?;
    let block = match &req.volume_capability {
        Some(cap) => check_capability(cap)?.block,
        None => false,
    };

    let _guard = svc.in_flight.begin(id)?;
    svc.synced(deadline).await?;

    let volume = svc.volume(id).await?;
    let pvc = tenant_claim(svc, id, &volume.uid, deadline).await?;
    let (requested, capacity) = claim_sizes(&pvc);
    let current = requested.unwrap_or(0).max(capacity.unwrap_or(0));
    if limit > 0 && current > limit {
        return Err(Error::OutOfRange(format!(
            "volume {id} already holds {current} bytes, more than limit_bytes {limit}"
        )));
    }
    if requested.unwrap_or(0) < want {
        svc.infra.resize_claim(id, want).await?;
        tracing::info!(from = requested, to = want, "infra claim resize requested");
    }
    let target = want.max(requested.unwrap_or(0));
    if !svc.infra.wait_claim_resized(id, want, deadline).await? {
        return Err(Error::DeadlineExceeded(format!(
            "the infra claim of volume {id} did not reach {want} bytes before the deadline"
        )));
    }
    if volume.size.unwrap_or(0) < target {
        svc.infra.record_capacity(id, target).await?;
        // Let the next ListVolumes or ControllerGetVolume see the new size.
        svc.index
            .settle(deadline, super::create::SETTLE, |s| {
                s.volume(id).is_some_and(|v| v.size >= Some(target))
            })
            .await;
    }
    Ok(ControllerExpandVolumeResponse {
        capacity_bytes: target,
        node_expansion_required: !block,
    })
}
