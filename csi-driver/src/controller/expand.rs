//! ControllerExpandVolume: grow the infra claim behind the DataVolume and
//! wait, on a watch of the claim, until the infra storage has grown it (its
//! capacity reached the size, or only the infra-side filesystem resize
//! remains). Filesystem volumes then need the guest's NodeExpandVolume.
//!
//! The claim is accepted as the tenant's as `ControllerService::tenant_claim` says:
//! owned by the tenant's DataVolume or labelled, so the resize needs
//! no cluster-scoped access to PersistentVolumes.

use kubevirt_csi_proto::v1::{ControllerExpandVolumeRequest, ControllerExpandVolumeResponse};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{check_capability, required};
use super::infra::claim_sizes;
use super::volume::{capacity_bounds, check_supported_size};
use crate::error::{Error, Result};

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
    let pvc = svc.bound_claim(id, &volume.uid, deadline).await?;
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
