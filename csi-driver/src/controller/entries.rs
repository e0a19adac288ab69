//! The compact records the infra caches keep: only the fields the controller
//! reads from DataVolumes, VMs, VMIs and VolumeSnapshots, so that a thousand
//! volumes cost kilobytes, not the full objects. Each `*_entry` function is a
//! pure "object in, record out" conversion.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_infra::TenantScope;
use kubevirt_infra::cdi::{DataVolume, phase as dv_phase};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::snapshot::VolumeSnapshot;

use super::names::CSI_NAME_ANNOTATION;
use super::quantity::parse_bytes;

/// Annotation on a DataVolume: the bytes its claim was expanded to.
pub const CAPACITY_ANNOTATION: &str = "csi.kubevirt.io/capacity";

/// Where a volume's content came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    /// Restored from this infra VolumeSnapshot.
    Snapshot(String),
    /// Cloned from this volume (DataVolume/PVC of the same name).
    Volume(String),
}

/// A tenant DataVolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEntry {
    pub uid: String,
    /// The CSI name it was created for, when that is not its name
    /// ([`super::names`]).
    pub csi_name: Option<String>,
    /// `spec.storage.resources.requests.storage` in bytes.
    pub size: Option<i64>,
    pub storage_class: Option<String>,
    /// Requested ReadWriteMany (multi-node block).
    pub multi_node: bool,
    pub source: Option<ContentSource>,
    pub phase: String,
    /// Why the DataVolume failed, when it did.
    pub failure: Option<String>,
    /// Marked for deletion (finalizers still running).
    pub deleting: bool,
}

/// A volume in a VM's template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmVolume {
    pub name: String,
    pub hotpluggable: bool,
    /// Its disk is read-only to the guest.
    pub read_only: bool,
}

/// A tenant VM: the volumes of its template that look like tenant volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmEntry {
    pub volumes: Vec<VmVolume>,
}

/// A `status.volumeStatus` entry of a VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiVolume {
    pub name: String,
    pub phase: Option<String>,
    pub hotplug: bool,
    pub message: Option<String>,
    /// `reason: message` when KubeVirt reports a failure (a reason naming
    /// a failure or an error, e.g. `FailedAttach`).
    pub failure: Option<String>,
}

/// A VMI of the infra namespace (any tenant's: the RWO guard must see all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiEntry {
    /// Carries every tenant label.
    pub tenant: bool,
    pub phase: String,
    /// Only entries named like tenant volumes.
    pub volumes: Vec<VmiVolume>,
}

/// A tenant VolumeSnapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub uid: String,
    /// The CSI name it was created for, when that is not its name.
    pub csi_name: Option<String>,
    pub source: Option<String>,
    pub class: Option<String>,
    /// When the snapshot was cut (`status.creationTime`).
    pub cut_at: Option<jiff::Timestamp>,
    /// `metadata.creationTimestamp`, the fallback creation time.
    pub created_at: Option<jiff::Timestamp>,
    pub ready: bool,
    pub restore_size: Option<i64>,
    pub error: Option<String>,
    /// Marked for deletion (finalizers still running): gone, for CSI.
    pub deleting: bool,
}

impl VmEntry {
    pub fn has(&self, name: &str) -> bool {
        self.volumes.iter().any(|v| v.name == name)
    }

    pub fn volume(&self, name: &str) -> Option<&VmVolume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

impl VmiEntry {
    pub fn volume(&self, name: &str) -> Option<&VmiVolume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

impl VmiVolume {
    pub fn is_ready(&self) -> bool {
        self.phase.as_deref() == Some(kubevirt_infra::kubevirt::volume_phase::READY)
    }
}

impl VolumeEntry {
    /// The CSI name of the volume whose object is `name`.
    pub fn csi_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.csi_name.as_deref().unwrap_or(name)
    }
}

impl SnapshotEntry {
    /// The CSI name of the snapshot whose object is `name`.
    pub fn csi_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.csi_name.as_deref().unwrap_or(name)
    }

    /// Cut: usable as a point in time, though maybe not yet ready to restore.
    pub fn is_cut(&self) -> bool {
        self.ready || self.cut_at.is_some()
    }

    pub fn creation_time(&self) -> Option<jiff::Timestamp> {
        self.cut_at.or(self.created_at)
    }
}

fn json_str<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The CSI name recorded on an object, if any.
fn recorded_name(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(CSI_NAME_ANNOTATION))
        .cloned()
}

/// Summarize a DataVolume (either the `spec.storage` or the older `spec.pvc` form).
pub fn volume_entry(dv: &DataVolume) -> VolumeEntry {
    let storage = dv.spec.storage.as_ref();
    let pvc = dv.spec.pvc.as_ref();
    let size = dv
        .requested_storage()
        .or_else(|| pvc.and_then(|p| json_str(p, &["resources", "requests", "storage"])))
        .and_then(parse_bytes);
    // Expanded since: the claim grew, the DataVolume's request did not.
    let expanded = dv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CAPACITY_ANNOTATION))
        .and_then(|v| v.parse::<i64>().ok());
    // (`None` orders below any size.)
    let size = size.max(expanded);
    let storage_class = storage
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| {
            pvc.and_then(|p| json_str(p, &["storageClassName"]))
                .map(str::to_string)
        });
    let rwx = |m: &str| m == "ReadWriteMany";
    let multi_node = storage.is_some_and(|s| s.access_modes.iter().any(|m| rwx(m)))
        || pvc
            .and_then(|p| p.get("accessModes"))
            .and_then(|m| m.as_array())
            .is_some_and(|a| a.iter().any(|m| m.as_str().is_some_and(rwx)));
    let source = if let Some(snap) = dv.spec.source.as_ref().and_then(|s| s.snapshot.as_ref()) {
        Some(ContentSource::Snapshot(snap.name.clone()))
    } else if let Some(r) = storage.and_then(|s| s.data_source_ref.as_ref()) {
        (r.kind == "PersistentVolumeClaim").then(|| ContentSource::Volume(r.name.clone()))
    } else {
        dv.spec
            .source
            .as_ref()
            .and_then(|s| s.pvc.as_ref())
            .map(|p| ContentSource::Volume(p.name.clone()))
    };
    let phase = dv.phase().to_string();
    let failure = (phase == dv_phase::FAILED).then(|| {
        dv.status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .filter_map(|c| c.message.clone().filter(|m| !m.is_empty()))
            .next()
            .unwrap_or_else(|| "DataVolume failed".to_string())
    });
    VolumeEntry {
        uid: dv.metadata.uid.clone().unwrap_or_default(),
        csi_name: recorded_name(&dv.metadata),
        size,
        storage_class,
        multi_node,
        source,
        phase,
        failure,
        deleting: dv.metadata.deletion_timestamp.is_some(),
    }
}

/// Summarize a VM: the template volumes named like tenant volumes.
pub fn vm_entry(vm: &VirtualMachine, scope: &TenantScope) -> VmEntry {
    let read_only = |name: &str| {
        vm.template_disks()
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.disk.as_ref())
            .is_some_and(|t| t.read_only)
    };
    VmEntry {
        volumes: vm
            .template_volumes()
            .iter()
            .filter(|v| scope.check_volume_name(&v.name).is_ok())
            .map(|v| VmVolume {
                name: v.name.clone(),
                hotpluggable: v.is_hotpluggable(),
                read_only: read_only(&v.name),
            })
            .collect(),
    }
}

/// Whether a volume status reason reports a failure.
fn is_failure_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("fail") || r.contains("error")
}

/// Summarize a VMI: tenant membership, phase, and its tenant-named volumes.
pub fn vmi_entry(vmi: &VirtualMachineInstance, scope: &TenantScope) -> VmiEntry {
    VmiEntry {
        tenant: scope.check("VirtualMachineInstance", &vmi.metadata).is_ok(),
        phase: vmi.phase().to_string(),
        volumes: vmi
            .status
            .iter()
            .flat_map(|s| s.volume_status.iter())
            .filter(|v| scope.check_volume_name(&v.name).is_ok())
            .map(|v| VmiVolume {
                name: v.name.clone(),
                phase: v.phase.clone(),
                hotplug: v.hotplug_volume.is_some(),
                message: v.message.clone().filter(|m| !m.is_empty()),
                failure: v
                    .reason
                    .as_deref()
                    .filter(|r| is_failure_reason(r))
                    .map(|r| format!("{r}: {}", v.message.as_deref().unwrap_or_default())),
            })
            .collect(),
    }
}

/// Summarize a VolumeSnapshot.
pub fn snapshot_entry(vs: &VolumeSnapshot) -> SnapshotEntry {
    let status = vs.status.as_ref();
    SnapshotEntry {
        uid: vs.metadata.uid.clone().unwrap_or_default(),
        csi_name: recorded_name(&vs.metadata),
        source: vs.spec.source.persistent_volume_claim_name.clone(),
        class: vs.spec.volume_snapshot_class_name.clone(),
        cut_at: status
            .and_then(|s| s.creation_time.as_deref())
            .and_then(|t| t.parse().ok()),
        created_at: vs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ready: vs.ready_to_use(),
        restore_size: status
            .and_then(|s| s.restore_size.as_ref())
            .and_then(|q| parse_bytes(&q.0)),
        error: status
            .and_then(|s| s.error.as_ref())
            .and_then(|e| e.message.clone()),
        deleting: vs.metadata.deletion_timestamp.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> TenantScope {
        TenantScope::new("infra", [("t".to_string(), "a".to_string())].into(), "pvc")
    }

    #[test]
    fn an_expanded_volume_reports_its_recorded_capacity() {
        let dv = |annotation: &str| -> DataVolume {
            serde_json::from_value(json!({
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                "metadata": {"name": "pvc-1", "namespace": "infra", "uid": "u1",
                             "annotations": {CAPACITY_ANNOTATION: annotation}},
                "spec": {"source": {"blank": {}},
                         "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
            }))
            .expect("dv")
        };
        assert_eq!(volume_entry(&dv("2147483648")).size, Some(2 << 30));
        // Never below the request, and a garbled value is ignored.
        assert_eq!(volume_entry(&dv("1")).size, Some(1 << 30));
        assert_eq!(volume_entry(&dv("lots")).size, Some(1 << 30));
    }

    #[test]
    fn summarizes_data_volumes() {
        let dv: DataVolume = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "pvc-1", "namespace": "infra", "uid": "u1"},
            "spec": {"source": {"snapshot": {"name": "snap-1", "namespace": "infra"}},
                     "storage": {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                                 "resources": {"requests": {"storage": "2Gi"}}}},
            "status": {"phase": "Failed", "conditions": [{"type": "Running", "status": "False", "message": "no space"}]}
        }))
        .expect("dv");
        let e = volume_entry(&dv);
        assert_eq!(e.uid, "u1");
        assert_eq!(e.size, Some(2 << 30));
        assert_eq!(e.storage_class.as_deref(), Some("fast"));
        assert!(e.multi_node);
        assert_eq!(e.source, Some(ContentSource::Snapshot("snap-1".into())));
        assert_eq!(e.failure.as_deref(), Some("no space"));

        let clone: DataVolume = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "pvc-2"},
            "spec": {"storage": {"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "pvc-1"},
                                 "resources": {"requests": {"storage": "1073741824"}}}}
        }))
        .expect("dv");
        let e = volume_entry(&clone);
        assert_eq!(e.source, Some(ContentSource::Volume("pvc-1".into())));
        assert!(!e.multi_node);
        assert_eq!(e.failure, None);
    }

    #[test]
    fn summarizes_vms_and_vmis_keeping_tenant_volumes_only() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "infra", "labels": {"t": "a"}},
            "spec": {},
            "status": {"phase": "Running", "volumeStatus": [
                {"name": "rootdisk", "phase": "Ready"},
                {"name": "pvc-1", "phase": "Ready", "hotplugVolume": {"attachPodName": "hp"}},
                {"name": "pvc-2", "phase": "Pending", "reason": "FailedAttach", "message": "no device"}]}
        }))
        .expect("vmi");
        let e = vmi_entry(&vmi, &scope());
        assert!(e.tenant);
        assert_eq!(e.volumes.len(), 2);
        assert!(
            e.volume("pvc-1")
                .is_some_and(|v| v.is_ready() && v.hotplug && v.failure.is_none())
        );
        assert_eq!(
            e.volume("pvc-2").and_then(|v| v.failure.as_deref()),
            Some("FailedAttach: no device")
        );

        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "infra"},
            "spec": {"template": {"spec": {
                "domain": {"devices": {"disks": [
                    {"name": "rootdisk", "disk": {"bus": "virtio"}},
                    {"name": "pvc-1", "disk": {"bus": "scsi", "readonly": true}}]}},
                "volumes": [
                    {"name": "rootdisk", "dataVolume": {"name": "root"}},
                    {"name": "pvc-1", "dataVolume": {"name": "pvc-1", "hotpluggable": true}}]}}}
        }))
        .expect("vm");
        let e = vm_entry(&vm, &scope());
        assert_eq!(
            e.volumes,
            [VmVolume {
                name: "pvc-1".into(),
                hotpluggable: true,
                read_only: true,
            }]
        );
    }

    #[test]
    fn summarizes_snapshots() {
        let vs: VolumeSnapshot = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "snap-1", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"source": {"persistentVolumeClaimName": "pvc-1"}},
            "status": {"creationTime": "2024-01-01T00:00:05Z", "readyToUse": false, "restoreSize": "1Gi"}
        }))
        .expect("vs");
        let e = snapshot_entry(&vs);
        assert!(e.is_cut() && !e.ready);
        assert_eq!(e.restore_size, Some(1 << 30));
        assert_eq!(e.source.as_deref(), Some("pvc-1"));
        assert_eq!(
            e.creation_time().map(|t| t.as_second()),
            Some(1_704_067_205)
        );
    }
}
