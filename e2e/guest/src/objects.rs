//! Pure translations between guest objects and CSI messages, as the
//! sidecars do them: PVC access modes and volume mode to volume
//! capabilities, StorageClass parameters to CSI parameters (the sidecars'
//! own `csi.storage.k8s.io/` keys removed), quantities to bytes, and the PV
//! the provisioner creates for a new volume.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_csi_proto::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use kubevirt_csi_proto::v1::{Volume, VolumeCapability};

/// Prefix of the sidecars' own StorageClass/VolumeSnapshotClass parameters.
pub const SIDECAR_PARAM_PREFIX: &str = "csi.storage.k8s.io/";
/// StorageClass parameter with the filesystem type.
pub const FSTYPE_PARAM: &str = "csi.storage.k8s.io/fstype";
/// PV annotation naming the provisioner.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Parse a quantity to bytes (integers with binary or decimal suffixes).
pub fn bytes(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: i64 = s[..split].parse().ok()?;
    let mult: i64 = match &s[split..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Bytes as a quantity.
pub fn quantity(bytes: i64) -> Quantity {
    Quantity(bytes.to_string())
}

/// `spec.resources.requests.storage` (or `limits`) of a claim, in bytes.
pub fn claim_storage(pvc: &PersistentVolumeClaim, limits: bool) -> Option<i64> {
    let r = pvc.spec.as_ref()?.resources.as_ref()?;
    let m = if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    bytes(m.get("storage")?)
}

/// The access mode of a Kubernetes access mode string.
pub fn access_mode(mode: &str) -> Mode {
    match mode {
        "ReadWriteOnce" => Mode::SingleNodeWriter,
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        _ => Mode::Unknown,
    }
}

/// One capability per access mode, block or mount (with `fs_type`).
pub fn capabilities(access_modes: &[String], block: bool, fs_type: &str) -> Vec<VolumeCapability> {
    access_modes
        .iter()
        .map(|m| VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs_type.to_string(),
                    ..Default::default()
                })
            }),
            access_mode: Some(AccessMode {
                mode: access_mode(m) as i32,
            }),
        })
        .collect()
}

/// The first capability of a PV (as the attacher and resizer send it).
pub fn pv_capability(pv: &PersistentVolume) -> Option<VolumeCapability> {
    let spec = pv.spec.as_ref()?;
    let block = spec.volume_mode.as_deref() == Some("Block");
    let fs = spec
        .csi
        .as_ref()
        .and_then(|c| c.fs_type.clone())
        .unwrap_or_default();
    let modes = spec.access_modes.clone().unwrap_or_default();
    capabilities(&modes, block, &fs).into_iter().next()
}

/// Parameters for the driver: the class's, without the sidecars' own keys.
pub fn driver_parameters(params: Option<&BTreeMap<String, String>>) -> HashMap<String, String> {
    params
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(SIDECAR_PARAM_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The filesystem of a class (`csi.storage.k8s.io/fstype`), else the default.
pub fn fs_type(sc: &StorageClass, default: &str) -> String {
    sc.parameters
        .as_ref()
        .and_then(|p| p.get(FSTYPE_PARAM))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The PV external-provisioner creates for `volume`, pre-bound to `pvc`.
pub fn desired_pv(
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
    volume: &Volume,
    driver: &str,
    default_fs: &str,
) -> PersistentVolume {
    let spec = pvc.spec.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume.volume_id.clone()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                driver.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                quantity(volume.capacity_bytes),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                name: pvc.metadata.name.clone(),
                namespace: pvc.metadata.namespace.clone(),
                uid: pvc.metadata.uid.clone(),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.to_string(),
                volume_handle: volume.volume_id.clone(),
                volume_attributes: Some(volume.volume_context.clone().into_iter().collect()),
                fs_type: (!block).then(|| fs_type(sc, default_fs)),
                ..Default::default()
            }),
            mount_options: sc.mount_options.clone(),
            persistent_volume_reclaim_policy: Some(
                sc.reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_string()),
            ),
            storage_class_name: sc.metadata.name.clone(),
            volume_mode: Some(if block { "Block" } else { "Filesystem" }.to_string()),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn translates_claims_to_capabilities_and_pvs() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "app", "uid": "u-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "kubevirt",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .expect("pvc");
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "kubevirt"}, "provisioner": "csi.kubevirt.io",
            "parameters": {"bus": "scsi", "csi.storage.k8s.io/fstype": "xfs"}
        }))
        .expect("sc");
        assert_eq!(claim_storage(&pvc, false), Some(1 << 30));
        assert_eq!(
            driver_parameters(sc.parameters.as_ref()),
            HashMap::from([("bus".into(), "scsi".into())])
        );
        let caps = capabilities(&["ReadWriteOnce".into()], false, &fs_type(&sc, "ext4"));
        assert!(matches!(&caps[0].access_type, Some(AccessType::Mount(m)) if m.fs_type == "xfs"));
        let vol = Volume {
            capacity_bytes: 1 << 30,
            volume_id: "pvc-u-1".into(),
            volume_context: HashMap::from([("serial".into(), "s".into())]),
            ..Default::default()
        };
        let pv = desired_pv(&pvc, &sc, &vol, "csi.kubevirt.io", "ext4");
        let v = serde_json::to_value(&pv).expect("serializes");
        assert_eq!(v["spec"]["csi"]["volumeHandle"], "pvc-u-1");
        assert_eq!(v["spec"]["csi"]["fsType"], "xfs");
        assert_eq!(v["spec"]["claimRef"]["uid"], "u-1");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(
            pv_capability(&pv).map(|c| c.access_mode.map(|m| m.mode)),
            Some(Some(Mode::SingleNodeWriter as i32))
        );
    }
}
