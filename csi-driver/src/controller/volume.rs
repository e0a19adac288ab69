//! CreateVolume as pure functions: the size a capacity range asks for, the
//! DataVolume of the contract for a validated request, and whether an
//! existing volume satisfies a repeated request (idempotency).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TypedObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_csi_proto::v1::CapacityRange;
use kubevirt_infra::TenantScope;
use kubevirt_infra::cdi::{
    DataVolume, DataVolumeSource, DataVolumeSpec, NamespacedName, StorageResources, StorageSpec,
};
use kubevirt_infra::labels::CDI_DELETE_AFTER_COMPLETION;

use super::capability::Access;
use super::entries::{ContentSource, VolumeEntry};
use super::names::record;
use super::quantity::format_bytes;
use crate::error::{Error, Result};

/// Size of a volume created without a capacity range and without a source.
pub const DEFAULT_SIZE: i64 = 1 << 30;

/// StorageClass parameter naming the infra StorageClass.
pub const INFRA_STORAGE_CLASS_PARAM: &str = "infraStorageClassName";
/// StorageClass parameter naming the disk bus.
pub const BUS_PARAM: &str = "bus";
/// volume_context key of the disk serial.
pub const SERIAL_KEY: &str = "serial";
/// publish_context key saying the disk was attached read-only.
pub const READONLY_KEY: &str = "readonly";

/// The bounds of a capacity range, checked. `(required, limit)`, 0 = unset.
pub fn capacity_bounds(range: Option<&CapacityRange>) -> Result<(i64, i64)> {
    let Some(r) = range else { return Ok((0, 0)) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::InvalidArgument(
            "capacity_range must not be negative".into(),
        ));
    }
    check_supported_size(r.required_bytes)?;
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Error::InvalidArgument(format!(
            "capacity_range required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok((r.required_bytes, r.limit_bytes))
}

/// The largest volume provisioned or grown to: 1 EiB, the most an ext4
/// filesystem can hold. A request beyond it can never be satisfied, so it is
/// refused at once instead of waiting for storage that will not come.
pub const MAX_VOLUME_BYTES: i64 = 1 << 60;

/// OutOfRange for a size beyond [`MAX_VOLUME_BYTES`].
pub fn check_supported_size(bytes: i64) -> Result<()> {
    if bytes > MAX_VOLUME_BYTES {
        return Err(Error::OutOfRange(format!(
            "{bytes} bytes is more than the largest supported volume ({MAX_VOLUME_BYTES} bytes)"
        )));
    }
    Ok(())
}

/// The size to provision: the required bytes, else the source's size, else
/// the default (capped by the limit); refused when the source does not fit.
pub fn volume_size(range: Option<&CapacityRange>, source_size: Option<i64>) -> Result<i64> {
    let (required, limit) = capacity_bounds(range)?;
    if let Some(src) = source_size {
        if limit > 0 && src > limit {
            return Err(Error::OutOfRange(format!(
                "the source holds {src} bytes, more than limit_bytes {limit}"
            )));
        }
        return Ok(required.max(src));
    }
    Ok(match (required, limit) {
        (r, _) if r > 0 => r,
        (_, l) if l > 0 => l.min(DEFAULT_SIZE),
        _ => DEFAULT_SIZE,
    })
}

/// A validated CreateVolume request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRequest {
    /// The DataVolume name (the volume id).
    pub name: String,
    /// The CSI name asked for ([`super::names`]).
    pub csi_name: String,
    pub size: i64,
    pub access: Access,
    pub storage_class: Option<String>,
    pub source: Option<ContentSource>,
}

/// The DataVolume of the contract for `req`, in the tenant's namespace with its labels.
pub fn desired_data_volume(req: &VolumeRequest, scope: &TenantScope) -> DataVolume {
    let (source, data_source_ref) = match &req.source {
        None => (
            Some(DataVolumeSource {
                blank: Some(BTreeMap::new()),
                ..Default::default()
            }),
            None,
        ),
        Some(ContentSource::Snapshot(snap)) => (
            Some(DataVolumeSource {
                snapshot: Some(NamespacedName {
                    name: snap.clone(),
                    namespace: Some(scope.namespace().to_string()),
                }),
                ..Default::default()
            }),
            None,
        ),
        Some(ContentSource::Volume(src)) => (
            None,
            Some(TypedObjectReference {
                kind: "PersistentVolumeClaim".to_string(),
                name: src.clone(),
                ..Default::default()
            }),
        ),
    };
    let mut dv = DataVolume::new(
        &req.name,
        DataVolumeSpec {
            source,
            storage: Some(StorageSpec {
                access_modes: if req.access.multi_node {
                    vec!["ReadWriteMany".to_string()]
                } else {
                    Vec::new()
                },
                resources: Some(StorageResources {
                    requests: BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(format_bytes(req.size)),
                    )]),
                }),
                storage_class_name: req.storage_class.clone(),
                data_source_ref,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    dv.metadata = ObjectMeta {
        name: Some(req.name.clone()),
        namespace: Some(scope.namespace().to_string()),
        labels: Some(scope.labels().clone()),
        annotations: Some(
            [(CDI_DELETE_AFTER_COMPLETION.to_string(), "false".to_string())]
                .into_iter()
                .chain(record(&req.name, &req.csi_name))
                .collect(),
        ),
        ..Default::default()
    };
    dv
}

/// Whether an existing volume satisfies a repeated CreateVolume; the
/// mismatch otherwise (reported as AlreadyExists).
pub fn check_compatible(
    existing: &VolumeEntry,
    req: &VolumeRequest,
    range: Option<&CapacityRange>,
) -> Result<()> {
    let (required, limit) = capacity_bounds(range)?;
    let existing_name = existing.csi_name(&req.name);
    if existing_name != req.csi_name {
        return Err(Error::AlreadyExists(format!(
            "volume {} was created for another name, {existing_name:?}",
            req.name
        )));
    }
    let mismatch = |what: String| {
        Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with {what}",
            req.csi_name
        )))
    };
    let size = existing.size.unwrap_or(0);
    if range.is_some() && (size < required || (limit > 0 && size > limit)) {
        return mismatch(format!("size {size} bytes, outside the requested range"));
    }
    if req.access.multi_node && !existing.multi_node {
        return mismatch("single-node access".to_string());
    }
    if existing.storage_class != req.storage_class {
        return mismatch(format!("infra storage class {:?}", existing.storage_class));
    }
    if existing.source != req.source {
        return mismatch(format!("content source {:?}", existing.source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> TenantScope {
        TenantScope::new(
            "infra-ns",
            [(
                "hypershift.openshift.io/infra-id".to_string(),
                "t1".to_string(),
            )]
            .into(),
            "pvc",
        )
    }

    fn request(source: Option<ContentSource>, multi_node: bool) -> VolumeRequest {
        VolumeRequest {
            name: "pvc-123".into(),
            csi_name: "pvc-123".into(),
            size: 3 << 30,
            access: Access {
                block: multi_node,
                multi_node,
            },
            storage_class: Some("fast".into()),
            source,
        }
    }

    #[test]
    fn blank_volume_matches_the_contract() {
        let dv = desired_data_volume(&request(None, false), &scope());
        let v = serde_json::to_value(&dv).expect("serializes");
        assert_eq!(
            v,
            json!({
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": {
                    "name": "pvc-123", "namespace": "infra-ns",
                    "labels": {"hypershift.openshift.io/infra-id": "t1"},
                    "annotations": {"cdi.kubevirt.io/storage.deleteAfterCompletion": "false"}
                },
                "spec": {
                    "source": {"blank": {}},
                    "storage": {"resources": {"requests": {"storage": "3221225472"}},
                                "storageClassName": "fast"}
                }
            })
        );
    }

    #[test]
    fn snapshot_and_clone_sources() {
        let v = serde_json::to_value(desired_data_volume(
            &request(Some(ContentSource::Snapshot("snap-1".into())), true),
            &scope(),
        ))
        .expect("serializes");
        assert_eq!(
            v["spec"]["source"],
            json!({"snapshot": {"name": "snap-1", "namespace": "infra-ns"}})
        );
        assert_eq!(
            v["spec"]["storage"]["accessModes"],
            json!(["ReadWriteMany"])
        );

        let v = serde_json::to_value(desired_data_volume(
            &request(Some(ContentSource::Volume("pvc-src".into())), false),
            &scope(),
        ))
        .expect("serializes");
        assert!(v["spec"].get("source").is_none());
        assert_eq!(
            v["spec"]["storage"]["dataSourceRef"],
            json!({"kind": "PersistentVolumeClaim", "name": "pvc-src"})
        );
        assert!(v["spec"]["storage"].get("accessModes").is_none());
    }

    #[test]
    fn sizes() {
        let range = |r, l| CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        };
        assert_eq!(volume_size(None, None).expect("ok"), DEFAULT_SIZE);
        assert_eq!(volume_size(Some(&range(5, 0)), None).expect("ok"), 5);
        assert_eq!(volume_size(Some(&range(0, 100)), None).expect("ok"), 100);
        assert_eq!(volume_size(Some(&range(0, 0)), Some(7)).expect("ok"), 7);
        assert_eq!(volume_size(Some(&range(10, 0)), Some(7)).expect("ok"), 10);
        assert!(matches!(
            volume_size(Some(&range(0, 5)), Some(7)),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            volume_size(Some(&range(10, 5)), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            volume_size(Some(&range(-1, 0)), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            volume_size(Some(&range(i64::MAX, 0)), None),
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(
            volume_size(Some(&range(MAX_VOLUME_BYTES, i64::MAX)), None).expect("ok"),
            MAX_VOLUME_BYTES
        );
    }

    #[test]
    fn compatibility() {
        let req = request(None, false);
        let existing = VolumeEntry {
            uid: "u".into(),
            csi_name: None,
            size: Some(3 << 30),
            storage_class: Some("fast".into()),
            multi_node: false,
            source: None,
            phase: String::new(),
            failure: None,
            deleting: false,
        };
        let exact = CapacityRange {
            required_bytes: 3 << 30,
            limit_bytes: 0,
        };
        assert!(check_compatible(&existing, &req, Some(&exact)).is_ok());
        let bigger = CapacityRange {
            required_bytes: 4 << 30,
            limit_bytes: 0,
        };
        assert!(matches!(
            check_compatible(&existing, &req, Some(&bigger)),
            Err(Error::AlreadyExists(_))
        ));
        let mut other = req.clone();
        other.storage_class = None;
        assert!(check_compatible(&existing, &other, None).is_err());
        let mut other = req.clone();
        other.source = Some(ContentSource::Volume("x".into()));
        assert!(check_compatible(&existing, &other, None).is_err());

        // A mapped name: the recorded CSI name must be the one asked for.
        let mut mapped = req.clone();
        mapped.csi_name = "My-Volume".into();
        let recorded = VolumeEntry {
            csi_name: Some("My-Volume".into()),
            ..existing.clone()
        };
        assert!(check_compatible(&recorded, &mapped, None).is_ok());
        mapped.csi_name = "Other-Volume".into();
        assert!(matches!(
            check_compatible(&recorded, &mapped, None),
            Err(Error::AlreadyExists(m)) if m.contains("My-Volume")
        ));
        // An object named as is belongs to no other CSI name.
        assert!(check_compatible(&existing, &mapped, None).is_err());
    }

    #[test]
    fn a_mapped_name_is_recorded_on_the_data_volume() {
        let mut req = request(None, false);
        req.csi_name = "Sanity-Volume".into();
        let v = serde_json::to_value(desired_data_volume(&req, &scope())).expect("serializes");
        assert_eq!(
            v["metadata"]["annotations"],
            json!({"cdi.kubevirt.io/storage.deleteAfterCompletion": "false",
                   "csi.kubevirt.io/csi-name": "Sanity-Volume"})
        );
    }
}
