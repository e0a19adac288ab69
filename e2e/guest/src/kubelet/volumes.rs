//! Pure translations from a pod, its claims' PersistentVolumes and their
//! VolumeAttachments to what kubelet does for them: the claims a pod uses,
//! the [`VolumeRecord`] of a volume in a pod (what is staged and published
//! where), the VolumeAttachment the attach-detach controller creates, where
//! an attachment stands, the NodeStage/NodePublish requests, and whether a
//! grown volume still needs its filesystem expanded on the node.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{
    VolumeAttachment, VolumeAttachmentSource, VolumeAttachmentSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kubevirt_csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use kubevirt_csi_proto::v1::{
    CapacityRange, NodeExpandVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::paths;
use crate::objects::{access_mode, bytes};

/// Pod-info keys kubelet adds to the publish volume context when the
/// CSIDriver asks for them (`podInfoOnMount: true`, as csi.kubevirt.io does).
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// PVC condition the resizer sets when the node must grow the filesystem.
pub const FS_RESIZE_PENDING: &str = "FileSystemResizePending";

/// One `persistentVolumeClaim` volume of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClaim {
    pub namespace: String,
    pub claim: String,
    pub read_only: bool,
}

/// The claims `pod` mounts, in spec order, each once.
pub fn pod_claims(pod: &Pod) -> Vec<PodClaim> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut claims: Vec<PodClaim> = Vec::new();
    for source in pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
    {
        if claims.iter().any(|c| c.claim == source.claim_name) {
            continue;
        }
        claims.push(PodClaim {
            namespace: namespace.clone(),
            claim: source.claim_name.clone(),
            read_only: source.read_only.unwrap_or(false),
        });
    }
    claims
}

/// Whether `pod` mounts claim `namespace/claim`.
pub fn uses_claim(pod: &Pod, namespace: &str, claim: &str) -> bool {
    pod.namespace().as_deref() == Some(namespace)
        && pod_claims(pod).iter().any(|c| c.claim == claim)
}

/// What kubelet keeps about a volume published into a pod, written before it
/// stages or publishes, so that the volume can be taken down again even
/// when its claim, PV or pod is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub pod_uid: String,
    pub pv_name: String,
    pub volume_handle: String,
    pub driver: String,
    pub claim_namespace: String,
    pub claim_name: String,
    pub block: bool,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    /// The VolumeAttachment of this volume on this node.
    pub attachment: String,
}

/// Everything needed to mount one claim's volume into one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct MountPlan {
    pub record: VolumeRecord,
    pub capability: VolumeCapability,
    /// The PV's `csi.volumeAttributes`.
    pub volume_context: HashMap<String, String>,
    /// The pod mounts it read-only, or the PV is read-only.
    pub read_only: bool,
}

/// The volume handle and driver of a CSI PV, if it is one.
fn csi_source(pv: &PersistentVolume) -> Option<(&str, &str)> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    Some((csi.volume_handle.as_str(), csi.driver.as_str()))
}

/// Whether `pv` is a raw block volume.
pub fn is_block(pv: &PersistentVolume) -> bool {
    pv.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// The capability kubelet sends for `pv`: block or mount (the PV's fsType
/// and mountOptions), access mode from the PV's first access mode
/// (ReadWriteOnce when it lists none).
pub fn capability(pv: &PersistentVolume) -> VolumeCapability {
    let spec = pv.spec.clone().unwrap_or_default();
    let mode = spec
        .access_modes
        .as_ref()
        .and_then(|m| m.first())
        .map_or("ReadWriteOnce", String::as_str);
    let access_type = if is_block(pv) {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: spec
                .csi
                .as_ref()
                .and_then(|c| c.fs_type.clone())
                .unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            ..MountVolume::default()
        })
    };
    VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode {
            mode: access_mode(mode) as i32,
        }),
    }
}

/// The mount plan of `claim` (bound to `pv`) in pod `pod_uid` on `node`.
pub fn plan(
    kubelet_dir: &Path,
    node: &str,
    driver: &str,
    pod_uid: &str,
    claim: &PodClaim,
    pv: &PersistentVolume,
) -> Result<MountPlan, Error> {
    let pv_name = pv.name_any();
    let (handle, pv_driver) = csi_source(pv)
        .ok_or_else(|| Error::Invalid(format!("PersistentVolume {pv_name} is not a CSI volume")))?;
    if pv_driver != driver {
        return Err(Error::Invalid(format!(
            "PersistentVolume {pv_name} belongs to CSI driver {pv_driver}, not {driver}"
        )));
    }
    let block = is_block(pv);
    let csi = pv.spec.as_ref().and_then(|s| s.csi.as_ref());
    Ok(MountPlan {
        record: VolumeRecord {
            pod_uid: pod_uid.to_string(),
            pv_name: pv_name.clone(),
            volume_handle: handle.to_string(),
            driver: driver.to_string(),
            claim_namespace: claim.namespace.clone(),
            claim_name: claim.claim.clone(),
            block,
            staging_path: paths::staging_path(kubelet_dir, driver, handle, &pv_name, block),
            target_path: paths::volume_path(kubelet_dir, pod_uid, &pv_name, block),
            attachment: paths::attachment_name(handle, driver, node),
        },
        capability: capability(pv),
        volume_context: csi
            .and_then(|c| c.volume_attributes.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        read_only: claim.read_only || csi.and_then(|c| c.read_only).unwrap_or(false),
    })
}

/// The VolumeAttachment the attach-detach controller creates for `pv_name`
/// on `node`.
pub fn desired_attachment(name: &str, driver: &str, node: &str, pv_name: &str) -> VolumeAttachment {
    VolumeAttachment {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: VolumeAttachmentSpec {
            attacher: driver.to_string(),
            node_name: node.to_string(),
            source: VolumeAttachmentSource {
                persistent_volume_name: Some(pv_name.to_string()),
                ..VolumeAttachmentSource::default()
            },
        },
        status: None,
    }
}

/// Where an attachment stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachState {
    /// No VolumeAttachment yet.
    Missing,
    /// Being deleted (detaching); a new one follows once it is gone.
    Deleting,
    /// Created, not attached yet.
    Pending,
    /// The attacher reported an error (it keeps retrying).
    Failed(String),
    /// Attached, with the publish context.
    Attached(HashMap<String, String>),
}

/// The state of attachment `va` (`None`: it does not exist).
pub fn attach_state(va: Option<&VolumeAttachment>) -> AttachState {
    let Some(va) = va else {
        return AttachState::Missing;
    };
    if va.metadata.deletion_timestamp.is_some() {
        return AttachState::Deleting;
    }
    let status = va.status.clone().unwrap_or_default();
    if status.attached {
        return AttachState::Attached(
            status
                .attachment_metadata
                .unwrap_or_default()
                .into_iter()
                .collect(),
        );
    }
    match status.attach_error.and_then(|e| e.message) {
        Some(message) => AttachState::Failed(message),
        None => AttachState::Pending,
    }
}

/// NodeStageVolume for `plan`.
pub fn stage_request(
    plan: &MountPlan,
    publish_context: &HashMap<String, String>,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: plan.record.volume_handle.clone(),
        publish_context: publish_context.clone(),
        staging_target_path: plan.record.staging_path.display().to_string(),
        volume_capability: Some(plan.capability.clone()),
        volume_context: plan.volume_context.clone(),
        ..NodeStageVolumeRequest::default()
    }
}

/// NodePublishVolume for `plan` in `pod`, with the pod information.
pub fn publish_request(
    plan: &MountPlan,
    publish_context: &HashMap<String, String>,
    pod: &Pod,
) -> NodePublishVolumeRequest {
    let mut volume_context = plan.volume_context.clone();
    volume_context.extend([
        (POD_NAME_KEY.to_string(), pod.name_any()),
        (
            POD_NAMESPACE_KEY.to_string(),
            pod.namespace().unwrap_or_default(),
        ),
        (POD_UID_KEY.to_string(), plan.record.pod_uid.clone()),
        (
            SERVICE_ACCOUNT_KEY.to_string(),
            pod.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
        ),
        (EPHEMERAL_KEY.to_string(), "false".to_string()),
    ]);
    NodePublishVolumeRequest {
        volume_id: plan.record.volume_handle.clone(),
        publish_context: publish_context.clone(),
        staging_target_path: plan.record.staging_path.display().to_string(),
        target_path: plan.record.target_path.display().to_string(),
        volume_capability: Some(plan.capability.clone()),
        readonly: plan.read_only,
        volume_context,
        ..NodePublishVolumeRequest::default()
    }
}

/// NodeUnpublishVolume of a recorded volume.
pub fn unpublish_request(record: &VolumeRecord) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: record.volume_handle.clone(),
        target_path: record.target_path.display().to_string(),
    }
}

/// NodeUnstageVolume of a recorded volume.
pub fn unstage_request(record: &VolumeRecord) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: record.volume_handle.clone(),
        staging_target_path: record.staging_path.display().to_string(),
    }
}

/// NodeExpandVolume of a published filesystem volume to `required_bytes`.
pub fn expand_request(plan: &MountPlan, required_bytes: i64) -> NodeExpandVolumeRequest {
    NodeExpandVolumeRequest {
        volume_id: plan.record.volume_handle.clone(),
        volume_path: plan.record.target_path.display().to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes,
            limit_bytes: 0,
        }),
        staging_target_path: plan.record.staging_path.display().to_string(),
        volume_capability: Some(plan.capability.clone()),
        ..NodeExpandVolumeRequest::default()
    }
}

fn storage(
    resources: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<i64> {
    resources.and_then(|r| r.get("storage")).and_then(bytes)
}

/// The size the filesystem of `pv` must grow to on the node, if the resizer
/// grew the volume (PV capacity above the claim's reported capacity, or the
/// claim waits with `FileSystemResizePending`). Raw block volumes have no
/// filesystem to grow.
pub fn node_expansion(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> Option<i64> {
    if is_block(pv) {
        return None;
    }
    let want = storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))?;
    let status = pvc.status.as_ref();
    let have = storage(status.and_then(|s| s.capacity.as_ref())).unwrap_or(0);
    let pending = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == FS_RESIZE_PENDING && c.status == "True")
    });
    (want > have || pending).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_csi_proto::v1::volume_capability::access_mode::Mode;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "app", "namespace": "ns", "uid": "u-1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}],
                     "volumes": [
                        {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "b", "persistentVolumeClaim": {"claimName": "logs", "readOnly": true}},
                        {"name": "c", "emptyDir": {}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
        }))
        .expect("pod")
    }

    fn pv(mode: &str, access: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1"},
            "spec": {"accessModes": [access], "volumeMode": mode, "mountOptions": ["noatime"],
                     "capacity": {"storage": "2Gi"},
                     "csi": {"driver": "csi.kubevirt.io", "volumeHandle": "pvc-abc", "fsType": "ext4",
                             "volumeAttributes": {"bus": "scsi", "serial": "s-1"}}}
        }))
        .expect("pv")
    }

    #[test]
    fn claims_of_a_pod() {
        let claims = pod_claims(&pod());
        assert_eq!(claims.len(), 2, "PVC volumes, each claim once");
        assert_eq!(claims[0].claim, "data");
        assert!(!claims[0].read_only);
        assert!(claims[1].read_only);
        assert!(uses_claim(&pod(), "ns", "logs"));
        assert!(!uses_claim(&pod(), "other", "logs"));
    }

    #[test]
    fn plans_filesystem_and_block_volumes() -> Result<(), Error> {
        let k = Path::new("/k");
        let claim = &pod_claims(&pod())[0];
        let fs = plan(
            k,
            "n1",
            "csi.kubevirt.io",
            "u-1",
            claim,
            &pv("Filesystem", "ReadWriteOnce"),
        )?;
        assert_eq!(
            fs.record.target_path,
            paths::volume_path(k, "u-1", "pvc-1", false)
        );
        assert_eq!(
            fs.record.attachment,
            paths::attachment_name("pvc-abc", "csi.kubevirt.io", "n1")
        );
        assert_eq!(
            fs.volume_context.get("serial").map(String::as_str),
            Some("s-1")
        );
        match &fs.capability.access_type {
            Some(AccessType::Mount(m)) => {
                assert_eq!(m.fs_type, "ext4");
                assert_eq!(m.mount_flags, ["noatime"]);
            }
            other => panic!("mount capability expected, got {other:?}"),
        }
        let publish = publish_request(&fs, &HashMap::from([("k".into(), "v".into())]), &pod());
        assert_eq!(
            publish.volume_context.get(POD_UID_KEY).map(String::as_str),
            Some("u-1")
        );
        assert_eq!(
            publish.volume_context.get("bus").map(String::as_str),
            Some("scsi")
        );
        assert_eq!(
            publish.publish_context.get("k").map(String::as_str),
            Some("v")
        );
        assert_eq!(
            publish.staging_target_path,
            stage_request(&fs, &HashMap::new()).staging_target_path
        );
        assert!(!publish.readonly);

        let ro = plan(
            k,
            "n1",
            "csi.kubevirt.io",
            "u-1",
            &pod_claims(&pod())[1],
            &pv("Block", "ReadWriteMany"),
        )?;
        assert!(ro.read_only && ro.record.block);
        assert!(matches!(
            ro.capability.access_type,
            Some(AccessType::Block(_))
        ));
        assert_eq!(
            ro.capability.access_mode.map(|m| m.mode),
            Some(Mode::MultiNodeMultiWriter as i32)
        );

        let err = plan(
            k,
            "n1",
            "other.driver",
            "u-1",
            claim,
            &pv("Filesystem", "ReadWriteOnce"),
        );
        assert!(matches!(err, Err(Error::Invalid(m)) if m.contains("csi.kubevirt.io")));
        Ok(())
    }

    #[test]
    fn attachment_states() {
        let mut va = desired_attachment("csi-x", "csi.kubevirt.io", "n1", "pvc-1");
        assert_eq!(
            va.spec.source.persistent_volume_name.as_deref(),
            Some("pvc-1")
        );
        assert_eq!(attach_state(None), AttachState::Missing);
        assert_eq!(attach_state(Some(&va)), AttachState::Pending);
        va.status =
            serde_json::from_value(json!({"attached": false, "attachError": {"message": "busy"}}))
                .ok();
        assert_eq!(attach_state(Some(&va)), AttachState::Failed("busy".into()));
        va.status =
            serde_json::from_value(json!({"attached": true, "attachmentMetadata": {"a": "b"}}))
                .ok();
        assert_eq!(
            attach_state(Some(&va)),
            AttachState::Attached(HashMap::from([("a".into(), "b".into())]))
        );
        va.metadata.deletion_timestamp = serde_json::from_value(json!("2024-01-01T00:00:00Z")).ok();
        assert_eq!(attach_state(Some(&va)), AttachState::Deleting);
    }

    #[test]
    fn node_expansion_follows_the_resizer() {
        let claim = |capacity: &str, pending: bool| -> PersistentVolumeClaim {
            let conditions = if pending {
                json!([{"type": FS_RESIZE_PENDING, "status": "True"}])
            } else {
                json!([])
            };
            serde_json::from_value(json!({"metadata": {"name": "data"},
                "status": {"phase": "Bound", "capacity": {"storage": capacity}, "conditions": conditions}}))
            .expect("pvc")
        };
        let fs = pv("Filesystem", "ReadWriteOnce");
        assert_eq!(node_expansion(&claim("1Gi", false), &fs), Some(2 << 30));
        assert_eq!(node_expansion(&claim("2Gi", false), &fs), None);
        assert_eq!(node_expansion(&claim("2Gi", true), &fs), Some(2 << 30));
        assert_eq!(
            node_expansion(&claim("1Gi", true), &pv("Block", "ReadWriteOnce")),
            None
        );
    }
}
