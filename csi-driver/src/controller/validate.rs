//! ValidateVolumeCapabilities and ControllerGetCapabilities.
//!
//! Capabilities are confirmed for an existing tenant volume when the driver
//! can serve them: any single-node block or filesystem access, and
//! multi-node access only for block volumes created ReadWriteMany.
//! Parameters are confirmed when they name the volume's infra storage class.

use kubevirt_csi_proto::v1::{
    ControllerGetCapabilitiesResponse, ControllerServiceCapability,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse,
    controller_service_capability, validate_volume_capabilities_response::Confirmed,
};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{check_capability, check_supported, required};
use super::volume::INFRA_STORAGE_CLASS_PARAM;
use crate::error::{Error, Result};

/// The controller RPCs this driver implements (and nothing else), but for
/// the alpha ones ([`ALPHA_RPCS`]).
pub const RPCS: &[controller_service_capability::rpc::Type] = {
    use controller_service_capability::rpc::Type::*;
    &[
        CreateDeleteVolume,
        PublishUnpublishVolume,
        PublishReadonly,
        ListVolumes,
        ListVolumesPublishedNodes,
        GetCapacity,
        CreateDeleteSnapshot,
        ListSnapshots,
        CloneVolume,
        ExpandVolume,
        GetVolume,
        VolumeCondition,
        ModifyVolume,
    ]
};

/// The alpha controller RPCs this driver implements, advertised only when
/// asked for (`--enable-alpha-rpcs`).
pub const ALPHA_RPCS: &[controller_service_capability::rpc::Type] =
    &[controller_service_capability::rpc::Type::GetSnapshot];

pub(super) fn capabilities(alpha: bool) -> ControllerGetCapabilitiesResponse {
    use controller_service_capability::{Rpc, Type};
    let alpha = if alpha { ALPHA_RPCS } else { &[] };
    ControllerGetCapabilitiesResponse {
        capabilities: RPCS
            .iter()
            .chain(alpha)
            .map(|t| ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
            })
            .collect(),
    }
}

pub(super) async fn validate_volume_capabilities(
    svc: &ControllerService,
    req: ValidateVolumeCapabilitiesRequest,
    deadline: Instant,
) -> Result<ValidateVolumeCapabilitiesResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    if req.volume_capabilities.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    let mut refusal = None;
    for cap in &req.volume_capabilities {
        // A malformed capability is the caller's error; an unsupported one is "not confirmed".
        if cap.access_type.is_none() || cap.access_mode.is_none() {
            return Err(Error::InvalidArgument(
                "each volume capability needs an access type and an access mode".into(),
            ));
        }
        match check_capability(cap).and_then(|a| check_supported(a).map(|()| a)) {
            Ok(_) => {}
            Err(e) => {
                refusal.get_or_insert(e.to_string());
            }
        }
    }
    svc.synced(deadline).await?;
    let volume = svc.volume(id).await?;
    if refusal.is_none() {
        let wants_multi = req
            .volume_capabilities
            .iter()
            .any(|c| check_capability(c).is_ok_and(|a| a.multi_node));
        if wants_multi && !volume.multi_node {
            refusal = Some(format!("volume {id} was not created for multi-node access"));
        }
    }
    if refusal.is_none()
        && let Some(sc) = req
            .parameters
            .get(INFRA_STORAGE_CLASS_PARAM)
            .filter(|s| !s.is_empty())
        && volume.storage_class.as_deref() != Some(sc.as_str())
    {
        refusal = Some(format!(
            "volume {id} uses infra storage class {:?}, not {sc:?}",
            volume.storage_class
        ));
    }
    Ok(match refusal {
        Some(message) => ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        },
        None => ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        },
    })
}
