//! ControllerModifyVolume, and the mutable parameters CreateVolume takes:
//! a guest VolumeAttributesClass names an infra one, which the driver sets
//! on the infra claim behind the DataVolume (its
//! `spec.volumeAttributesClassName`), so the infra storage applies it as
//! it would for any claim of its own. ControllerModifyVolume then waits, on
//! a watch of the claim, until the infra side reports the class current
//! (`status.currentVolumeAttributesClassName`), or refuses it
//! (`modifyVolumeStatus.status: Infeasible`, InvalidArgument).
//!
//! The one mutable parameter is [`INFRA_VAC_PARAM`]; any other is
//! InvalidArgument, before any side effect.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kubevirt_csi_proto::v1::{ControllerModifyVolumeRequest, ControllerModifyVolumeResponse};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::required;
use crate::error::{Error, Result};

/// Mutable parameter naming the infra VolumeAttributesClass.
pub const INFRA_VAC_PARAM: &str = "infraVolumeAttributesClassName";

/// The mutable parameters of a request, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mutable {
    /// The infra VolumeAttributesClass to set on the claim.
    pub infra_class: Option<String>,
}

/// Validate `mutable_parameters`.
pub fn parse(params: &HashMap<String, String>) -> Result<Mutable> {
    let mut out = Mutable::default();
    for (key, value) in params {
        match key.as_str() {
            INFRA_VAC_PARAM if !value.is_empty() => out.infra_class = Some(value.clone()),
            INFRA_VAC_PARAM => {
                return Err(Error::InvalidArgument(format!(
                    "mutable parameter {INFRA_VAC_PARAM} must name a VolumeAttributesClass"
                )));
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "mutable parameter {key:?} is not supported (only {INFRA_VAC_PARAM})"
                )));
            }
        }
    }
    Ok(out)
}

/// Where the infra claim stands on becoming `class`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// The infra storage refused the class.
    Infeasible,
    /// Not yet; what the claim reports.
    Waiting(String),
}

/// The claim's progress towards `class`.
pub fn progress(pvc: &PersistentVolumeClaim, class: &str) -> Progress {
    let status = pvc.status.as_ref();
    if status.and_then(|s| s.current_volume_attributes_class_name.as_deref()) == Some(class) {
        return Progress::Done;
    }
    match status.and_then(|s| s.modify_volume_status.as_ref()) {
        Some(m) if m.status == "Infeasible" => Progress::Infeasible,
        Some(m) => Progress::Waiting(format!("modification {}", m.status)),
        None => Progress::Waiting("no modification reported yet".to_string()),
    }
}

/// Set `class` on the tenant's claim `name` (waiting for CDI to make the
/// claim when the volume is new). FailedPrecondition when the infra API
/// server drops the field (VolumeAttributesClass not enabled there).
pub(super) async fn set_class(
    svc: &ControllerService,
    name: &str,
    uid: &str,
    class: &str,
    deadline: Instant,
) -> Result<()> {
    let pvc = svc.bound_claim(name, uid, deadline).await?;
    let current = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref());
    if current == Some(class) {
        return Ok(());
    }
    let patched = svc.infra.set_claim_class(name, class).await?;
    let kept = patched
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref());
    if kept != Some(class) {
        return Err(Error::FailedPrecondition(
            "the infra cluster does not keep volumeAttributesClassName on claims \
             (VolumeAttributesClass is not enabled there)"
                .into(),
        ));
    }
    tracing::info!(class, "infra VolumeAttributesClass set on the claim");
    Ok(())
}

#[tracing::instrument(name = "ControllerModifyVolume", skip_all, fields(volume = %req.volume_id))]
pub(super) async fn modify_volume(
    svc: &ControllerService,
    req: ControllerModifyVolumeRequest,
    deadline: Instant,
) -> Result<ControllerModifyVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    let mutable = parse(&req.mutable_parameters)?;

    let _guard = svc.in_flight.begin(id)?;
    svc.synced(deadline).await?;
    let volume = svc.volume(id).await?;
    let Some(class) = mutable.infra_class else {
        return Ok(ControllerModifyVolumeResponse {});
    };
    set_class(svc, id, &volume.uid, &class, deadline).await?;
    let settled = |p: Option<&PersistentVolumeClaim>| {
        p.is_none_or(|p| !matches!(progress(p, &class), Progress::Waiting(_)))
    };
    let outcome = match svc.infra.wait_claim(id, deadline, settled).await? {
        Some(Some(pvc)) => progress(&pvc, &class),
        Some(None) => {
            return Err(Error::NotFound(format!(
                "the infra claim of volume {id} was deleted"
            )));
        }
        // The deadline passed: say where the claim stands.
        None => match svc.infra.get_claim(id).await? {
            Some(pvc) => progress(&pvc, &class),
            None => Progress::Waiting("the claim is gone".to_string()),
        },
    };
    match outcome {
        Progress::Done => {
            tracing::info!(class, "infra VolumeAttributesClass is current");
            Ok(ControllerModifyVolumeResponse {})
        }
        Progress::Infeasible => Err(Error::InvalidArgument(format!(
            "the infra storage refused VolumeAttributesClass {class} for volume {id}"
        ))),
        Progress::Waiting(why) => Err(Error::DeadlineExceeded(format!(
            "volume {id} did not take VolumeAttributesClass {class} before the deadline ({why})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_infra_class_is_mutable() {
        assert_eq!(parse(&HashMap::new()).expect("empty"), Mutable::default());
        let p = HashMap::from([(INFRA_VAC_PARAM.to_string(), "gold".to_string())]);
        assert_eq!(
            parse(&p).expect("class").infra_class.as_deref(),
            Some("gold")
        );
        let p = HashMap::from([("XXX_FakeKey".to_string(), "x".to_string())]);
        assert!(matches!(parse(&p), Err(Error::InvalidArgument(m)) if m.contains("XXX_FakeKey")));
        let p = HashMap::from([(INFRA_VAC_PARAM.to_string(), String::new())]);
        assert!(matches!(parse(&p), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn progress_follows_the_claim_status() {
        let pvc = |status: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status}))
                .expect("pvc")
        };
        assert_eq!(
            progress(
                &pvc(json!({"currentVolumeAttributesClassName": "gold"})),
                "gold"
            ),
            Progress::Done
        );
        assert_eq!(
            progress(
                &pvc(
                    json!({"modifyVolumeStatus": {"status": "Infeasible", "targetVolumeAttributesClassName": "gold"}})
                ),
                "gold"
            ),
            Progress::Infeasible
        );
        assert!(matches!(
            progress(&pvc(json!({"currentVolumeAttributesClassName": "silver",
                                 "modifyVolumeStatus": {"status": "Pending"}})), "gold"),
            Progress::Waiting(m) if m.contains("Pending")
        ));
    }
}
