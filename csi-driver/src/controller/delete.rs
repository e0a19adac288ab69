//! DeleteVolume: idempotent; refuses (`FailedPrecondition`) while the volume
//! is still hotplugged into any VM or VMI, and never touches an infra object
//! outside the tenant scope.
//!
//! A volume id that is not the tenant's (wrong prefix, missing labels) is,
//! from the tenant's point of view, a volume that does not exist, and the
//! spec says deleting a volume that does not exist succeeds. So such a call
//! returns OK and deletes nothing (and says so in the log): the guest's PV
//! goes away, the foreign DataVolume stays.

use kubevirt_csi_proto::v1::{DeleteVolumeRequest, DeleteVolumeResponse};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{node_id, required};
use crate::error::{Error, Result};

#[tracing::instrument(name = "DeleteVolume", skip_all, fields(volume = %req.volume_id))]
pub(super) async fn delete_volume(
    svc: &ControllerService,
    req: DeleteVolumeRequest,
    deadline: Instant,
) -> Result<DeleteVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    if let Err(why) = svc.scope().check_volume_name(id) {
        tracing::warn!(reason = %why, "not the tenant's volume; nothing deleted");
        return Ok(DeleteVolumeResponse {});
    }
    let _guard = svc.in_flight.begin(id)?;
    svc.synced(deadline).await?;

    let Some(volume) = svc.lookup_volume(id).await? else {
        tracing::debug!("volume does not exist (in the tenant scope)");
        return Ok(DeleteVolumeResponse {});
    };
    let ns = svc.scope().namespace().to_string();
    let holders: Vec<String> = svc.index.read(|s| {
        s.holders(id)
            .into_iter()
            .map(|vm| node_id(&ns, vm))
            .collect()
    });
    if !holders.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is still attached to {}",
            holders.join(", ")
        )));
    }
    svc.infra.delete_data_volume(id, &volume.uid).await?;
    tracing::info!(uid = %volume.uid, "deleted DataVolume");
    // The DataVolume may linger (finalizers); only wait for the cache briefly.
    svc.index
        .settle(deadline, super::create::SETTLE, |s| {
            s.volume(id)
                .is_none_or(|v| v.uid != volume.uid || v.deleting)
        })
        .await;
    Ok(DeleteVolumeResponse {})
}
