//! GetCapacity: how much the tenant may still provision, as the
//! ResourceQuotas of its infra namespace tell. Every DataVolume becomes an
//! infra claim in that namespace, so a quota on `requests.storage` (all
//! classes) or `<class>.storageclass.storage.k8s.io/requests.storage` (the
//! infra storage class the parameters name) bounds what a new volume can
//! get, and an exhausted claim count (`persistentvolumeclaims`, or per
//! class) leaves nothing. Without any such quota the namespace sets no
//! bound: the answer is the largest value the field holds, and
//! `maximum_volume_size` is the largest volume the driver provisions.
//! The quotas' `status` (written by the quota controller) is what counts;
//! a quota not yet counted bounds nothing yet.

use k8s_openapi::api::core::v1::ResourceQuota;
use kubevirt_csi_proto::v1::{GetCapacityRequest, GetCapacityResponse};

use super::ControllerService;
use super::quantity::parse_bytes;
use super::volume::{INFRA_STORAGE_CLASS_PARAM, MAX_VOLUME_BYTES};
use crate::error::Result;

/// The quota keys on storage requests and on claim counts that apply to
/// volumes of `class` (when known).
fn keys(class: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut bytes = vec!["requests.storage".to_string()];
    let mut count = vec!["persistentvolumeclaims".to_string()];
    if let Some(c) = class {
        bytes.push(format!("{c}.storageclass.storage.k8s.io/requests.storage"));
        count.push(format!(
            "{c}.storageclass.storage.k8s.io/persistentvolumeclaims"
        ));
    }
    (bytes, count)
}

/// What is left of `key` in one quota's status: `hard - used`, never
/// negative; `None` when the quota does not limit it.
fn remaining(quota: &ResourceQuota, key: &str) -> Option<i64> {
    let status = quota.status.as_ref()?;
    let hard = parse_bytes(&status.hard.as_ref()?.get(key)?.0)?;
    let used = status
        .used
        .as_ref()
        .and_then(|u| u.get(key))
        .and_then(|q| parse_bytes(&q.0))
        .unwrap_or(0);
    Some(hard.saturating_sub(used).max(0))
}

/// The bytes volumes of `class` may still take: the least any quota
/// leaves, `None` when none limits them.
pub fn available(quotas: &[ResourceQuota], class: Option<&str>) -> Option<i64> {
    let (bytes, count) = keys(class);
    let mut least: Option<i64> = None;
    for quota in quotas {
        if count.iter().any(|k| remaining(quota, k) == Some(0)) {
            return Some(0);
        }
        for left in bytes.iter().filter_map(|k| remaining(quota, k)) {
            least = Some(least.map_or(left, |l| l.min(left)));
        }
    }
    least
}

pub(super) async fn get_capacity(
    svc: &ControllerService,
    req: GetCapacityRequest,
) -> Result<GetCapacityResponse> {
    let class = req
        .parameters
        .get(INFRA_STORAGE_CLASS_PARAM)
        .filter(|s| !s.is_empty())
        .map(String::as_str);
    // A class the policy refuses can hold none of this tenant's volumes.
    if svc.enforcement.check_storage_class(class).is_err() {
        return Ok(GetCapacityResponse {
            available_capacity: 0,
            maximum_volume_size: Some(0),
            minimum_volume_size: None,
        });
    }
    let quotas = svc.infra.list_quotas().await?;
    let left = available(&quotas, class);
    Ok(GetCapacityResponse {
        available_capacity: left.unwrap_or(i64::MAX),
        maximum_volume_size: Some(left.map_or(MAX_VOLUME_BYTES, |l| l.min(MAX_VOLUME_BYTES))),
        minimum_volume_size: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(hard: serde_json::Value, used: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(json!({
            "metadata": {"name": "q"},
            "status": {"hard": hard, "used": used}
        }))
        .expect("quota")
    }

    #[test]
    fn no_quota_is_no_bound() {
        assert_eq!(available(&[], Some("fast")), None);
        let cpu_only = quota(json!({"requests.cpu": "4"}), json!({"requests.cpu": "1"}));
        assert_eq!(available(&[cpu_only], None), None);
        let uncounted: ResourceQuota = serde_json::from_value(
            json!({"metadata": {"name": "q"}, "spec": {"hard": {"requests.storage": "1Gi"}}}),
        )
        .expect("quota");
        assert_eq!(available(&[uncounted], None), None);
    }

    #[test]
    fn the_tightest_quota_wins() {
        let all = quota(
            json!({"requests.storage": "10Gi"}),
            json!({"requests.storage": "4Gi"}),
        );
        let fast = quota(
            json!({"fast.storageclass.storage.k8s.io/requests.storage": "5Gi"}),
            json!({"fast.storageclass.storage.k8s.io/requests.storage": "2Gi"}),
        );
        let quotas = [all, fast];
        assert_eq!(available(&quotas, None), Some(6 << 30));
        assert_eq!(available(&quotas, Some("fast")), Some(3 << 30));
        assert_eq!(available(&quotas, Some("slow")), Some(6 << 30));
    }

    #[test]
    fn overdrawn_or_counted_out_is_zero() {
        let over = quota(
            json!({"requests.storage": "1Gi"}),
            json!({"requests.storage": "2Gi"}),
        );
        assert_eq!(available(&[over], None), Some(0));
        let claims = quota(
            json!({"persistentvolumeclaims": "3", "requests.storage": "100Gi"}),
            json!({"persistentvolumeclaims": "3", "requests.storage": "1Gi"}),
        );
        assert_eq!(available(&[claims], None), Some(0));
    }
}
