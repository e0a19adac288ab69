//! KubeVirt `kubevirt.io/v1` VirtualMachine and VirtualMachineInstance, with
//! the fields this suite reads and writes (hotplug volumes, volume status,
//! interfaces, phase, node) and everything else kept in `extra`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Unmodelled fields, kept verbatim.
pub type Extra = BTreeMap<String, Value>;

/// `VirtualMachine.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    shortname = "vm",
    namespaced,
    status = "VirtualMachineStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<VirtualMachineInstanceTemplate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `VirtualMachine.spec.template`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
}

/// An entry of `VirtualMachine.spec.dataVolumeTemplates`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: crate::cdi::DataVolumeSpec,
}

/// `VirtualMachine.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_requests: Vec<Value>,
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `VirtualMachineInstance.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    shortname = "vmi",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    #[serde(default)]
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain` of a VMI: only the devices are modelled.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    #[serde(default)]
    pub devices: Devices,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.devices` of a VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A disk of a VMI's domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `disk.disk`: the bus the disk is attached through, and whether the
/// guest sees it read-only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// KubeVirt's `readonly` (all lower case).
    #[serde(
        default,
        rename = "readonly",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub read_only: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A volume of a VMI spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volume.dataVolume`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hotpluggable: bool,
}

/// `volume.persistentVolumeClaim`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSource {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hotpluggable: bool,
}

impl Volume {
    /// Name of the DataVolume or PVC this volume is backed by, if any.
    pub fn claim_name(&self) -> Option<&str> {
        self.data_volume
            .as_ref()
            .map(|d| d.name.as_str())
            .or_else(|| {
                self.persistent_volume_claim
                    .as_ref()
                    .map(|p| p.claim_name.as_str())
            })
    }

    /// Whether the volume was hotplugged (as opposed to part of the VM template).
    pub fn is_hotpluggable(&self) -> bool {
        self.data_volume.as_ref().is_some_and(|d| d.hotpluggable)
            || self
                .persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.hotpluggable)
    }
}

/// VMI phases (`status.phase`).
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const SCHEDULING: &str = "Scheduling";
    pub const SCHEDULED: &str = "Scheduled";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const UNKNOWN: &str = "Unknown";
}

/// Phases of a hotplugged volume in `status.volumeStatus[].phase`.
pub mod volume_phase {
    pub const PENDING: &str = "Pending";
    pub const BOUND: &str = "Bound";
    pub const ATTACHED_TO_NODE: &str = "AttachedToNode";
    pub const MOUNTED_TO_POD: &str = "MountedToPod";
    pub const READY: &str = "Ready";
    pub const DETACHING: &str = "Detaching";
    pub const UNMOUNTED_FROM_POD: &str = "UnMountedFromPod";
}

/// `VirtualMachineInstance.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VmiInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_status: Vec<VolumeStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An entry of `status.interfaces`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiInterface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An entry of `status.volumeStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    /// The disk's target in the guest (`sda`), empty until it has one.
    /// Always written: KubeVirt's CRD requires it.
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_volume: Option<HotplugVolumeStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumeStatus[].hotplugVolume`: set for hotplugged volumes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotplugVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_pod_name: Option<String>,
    #[serde(
        default,
        rename = "attachPodUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub attach_pod_uid: Option<String>,
}

impl VolumeStatus {
    /// The volume is hotplugged and ready for the guest.
    pub fn is_ready(&self) -> bool {
        self.phase.as_deref() == Some(volume_phase::READY)
    }
}

impl VirtualMachineInstance {
    /// The status entry for the named volume, if the VMI reports one.
    pub fn volume_status(&self, name: &str) -> Option<&VolumeStatus> {
        self.status
            .as_ref()
            .and_then(|s| s.volume_status.iter().find(|v| v.name == name))
    }

    /// Whether the spec lists a volume with this name.
    pub fn has_volume(&self, name: &str) -> bool {
        self.spec.volumes.iter().any(|v| v.name == name)
    }

    /// The phase, or `""` when the status has none yet.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("")
    }
}

impl VirtualMachine {
    /// The volumes of the VM template (hotplugged ones included).
    pub fn template_volumes(&self) -> &[Volume] {
        self.spec
            .template
            .as_ref()
            .map(|t| t.spec.volumes.as_slice())
            .unwrap_or(&[])
    }

    /// The disks of the VM template.
    pub fn template_disks(&self) -> &[Disk] {
        self.spec
            .template
            .as_ref()
            .map(|t| t.spec.domain.devices.disks.as_slice())
            .unwrap_or(&[])
    }

    /// Whether the VM template lists a volume with this name.
    pub fn has_volume(&self, name: &str) -> bool {
        self.template_volumes().iter().any(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vmi_round_trips_unknown_fields() {
        let raw = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns"},
            "spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]},
                           "memory": {"guest": "1Gi"}},
                "volumes": [{"name": "pvc-1", "dataVolume": {"name": "pvc-1", "hotpluggable": true}}],
                "evictionStrategy": "LiveMigrate"
            },
            "status": {
                "phase": "Running",
                "nodeName": "infra-1",
                "interfaces": [{"name": "default", "ipAddresses": ["10.0.0.2", "fd00::2"]}],
                "volumeStatus": [{"name": "pvc-1", "phase": "Ready", "hotplugVolume": {"attachPodName": "hp-x"}}]
            }
        });
        let vmi: VirtualMachineInstance = serde_json::from_value(raw.clone()).expect("parses");
        assert_eq!(vmi.phase(), phase::RUNNING);
        assert!(
            vmi.volume_status("pvc-1")
                .is_some_and(VolumeStatus::is_ready)
        );
        assert!(vmi.has_volume("pvc-1"));
        assert!(vmi.spec.volumes[0].is_hotpluggable());
        assert_eq!(vmi.spec.volumes[0].claim_name(), Some("pvc-1"));
        let back = serde_json::to_value(&vmi).expect("serializes");
        assert_eq!(back["spec"]["evictionStrategy"], "LiveMigrate");
        assert_eq!(back["spec"]["domain"]["memory"]["guest"], "1Gi");
        assert_eq!(
            back["spec"]["domain"]["devices"]["disks"][0]["bootOrder"],
            1
        );
    }
}
