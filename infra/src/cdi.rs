//! CDI `cdi.kubevirt.io/v1beta1` DataVolume: the infra-side volume that a guest
//! PVC becomes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TypedObjectReference;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kubevirt::Extra;

/// `DataVolume.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    plural = "datavolumes",
    shortname = "dv",
    namespaced,
    status = "DataVolumeStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// The older `spec.pvc` form (a PVC spec); read by the simulators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source`: where the DataVolume's content comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<NamespacedName>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{name, namespace}` as CDI uses it for snapshot and PVC sources.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacedName {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec.storage`: the PVC CDI will create, before CDI's own defaulting.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<StorageResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_ref: Option<TypedObjectReference>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.storage.resources`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StorageResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
}

/// DataVolume phases (`status.phase`).
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const PVC_BOUND: &str = "PVCBound";
    pub const IMPORT_IN_PROGRESS: &str = "ImportInProgress";
    pub const CLONE_IN_PROGRESS: &str = "CloneInProgress";
    pub const SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS: &str = "SnapshotForSmartCloneInProgress";
    pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const UNKNOWN: &str = "Unknown";
}

/// `DataVolume.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<DataVolumeCondition>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An entry of `status.conditions` (types Bound, Ready, Running).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl DataVolume {
    /// The phase, or `""` when the status has none yet.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("")
    }

    /// The requested size, as written in `spec.storage.resources.requests.storage`.
    pub fn requested_storage(&self) -> Option<&str> {
        self.spec
            .storage
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.get("storage"))
            .map(|q| q.0.as_str())
    }
}
