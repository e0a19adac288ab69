//! The thin I/O layer to the infra cluster: the few calls the controller
//! makes (create/get/delete a DataVolume, hotplug and unplug, resize the
//! claim, create/get/delete a VolumeSnapshot), each scoped to the tenant's
//! namespace and each mapped to [`Error`] with what it was doing. Reads of
//! the current state go through the [`super::index::Index`] instead. A name
//! that cannot be an object name (a hostile or garbled id) is never sent: no
//! such object can exist, so the read answers "absent".

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ResourceQuota};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use kubevirt_infra::TenantScope;
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::hotplug::{self, AddVolumeOptions, RemoveVolumeOptions, Target};
use kubevirt_infra::kubevirt::VirtualMachine;
use kubevirt_infra::snapshot::VolumeSnapshot;
use serde_json::json;
use tokio::time::Instant;

use super::capability::is_object_name;
use super::entries::CAPACITY_ANNOTATION;
use super::quantity::{format_bytes, parse_bytes};
use crate::error::{Error, Result, is_not_found};

/// Field manager of our writes.
const MANAGER: &str = "kubevirt-csi-driver";

/// Typed handles on the tenant's infra namespace.
#[derive(Clone)]
pub struct Infra {
    client: Client,
    scope: TenantScope,
    dvs: Api<DataVolume>,
    vms: Api<VirtualMachine>,
    pvcs: Api<PersistentVolumeClaim>,
    snapshots: Api<VolumeSnapshot>,
    quotas: Api<ResourceQuota>,
}

/// How our writes identify themselves (creates and patches).
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    }
}

/// `Ok(None)` for 404.
fn optional<T>(r: std::result::Result<T, kube::Error>, action: String) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::Infra { action, source: e }),
    }
}

impl Infra {
    pub fn new(client: Client, scope: TenantScope) -> Self {
        let ns = scope.namespace();
        Self {
            dvs: Api::namespaced(client.clone(), ns),
            vms: Api::namespaced(client.clone(), ns),
            pvcs: Api::namespaced(client.clone(), ns),
            snapshots: Api::namespaced(client.clone(), ns),
            quotas: Api::namespaced(client.clone(), ns),
            client,
            scope,
        }
    }

    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// POST a DataVolume; the raw error so callers can tell a conflict.
    pub async fn create_data_volume(
        &self,
        dv: &DataVolume,
    ) -> std::result::Result<DataVolume, kube::Error> {
        self.dvs.create(&post_params(), dv).await
    }

    pub async fn get_data_volume(&self, name: &str) -> Result<Option<DataVolume>> {
        if !is_object_name(name) {
            return Ok(None);
        }
        optional(
            self.dvs.get(name).await,
            format!("reading DataVolume {name}"),
        )
    }

    /// DELETE a DataVolume, only the incarnation with `uid`; gone is success.
    pub async fn delete_data_volume(&self, name: &str, uid: &str) -> Result<()> {
        let dp = DeleteParams {
            preconditions: (!uid.is_empty()).then(|| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        optional(
            self.dvs.delete(name, &dp).await,
            format!("deleting DataVolume {name}"),
        )
        .map(|_| ())
    }

    pub async fn get_vm(&self, name: &str) -> Result<Option<VirtualMachine>> {
        if !is_object_name(name) {
            return Ok(None);
        }
        optional(
            self.vms.get(name).await,
            format!("reading VirtualMachine {name}"),
        )
    }

    /// PUT `.../virtualmachines/{vm}/addvolume`.
    pub async fn add_volume(
        &self,
        vm: &str,
        opts: &AddVolumeOptions,
    ) -> std::result::Result<(), kube::Error> {
        hotplug::add_volume(
            &self.client,
            Target::VirtualMachine,
            self.scope.namespace(),
            vm,
            opts,
        )
        .await
    }

    /// PUT `.../{virtualmachines|virtualmachineinstances}/{name}/removevolume`.
    pub async fn remove_volume(
        &self,
        target: Target,
        name: &str,
        volume: &str,
    ) -> std::result::Result<(), kube::Error> {
        let opts = RemoveVolumeOptions {
            name: volume.to_string(),
            dry_run: Vec::new(),
        };
        hotplug::remove_volume(&self.client, target, self.scope.namespace(), name, &opts).await
    }

    pub async fn get_claim(&self, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        if !is_object_name(name) {
            return Ok(None);
        }
        optional(
            self.pvcs.get(name).await,
            format!("reading PersistentVolumeClaim {name}"),
        )
    }

    /// Raise the claim's storage request to `bytes`.
    pub async fn resize_claim(&self, name: &str, bytes: i64) -> Result<()> {
        let patch = json!({"spec": {"resources": {"requests": {"storage": format_bytes(bytes)}}}});
        self.patch_claim(
            name,
            &patch,
            format!("resizing PersistentVolumeClaim {name}"),
        )
        .await
        .map(|_| ())
    }

    /// Merge-patch the claim `name`; `action` says what for.
    async fn patch_claim(
        &self,
        name: &str,
        patch: &serde_json::Value,
        action: String,
    ) -> Result<PersistentVolumeClaim> {
        self.pvcs
            .patch(name, &patch_params(), &Patch::Merge(patch))
            .await
            .map_err(Error::infra(action))
    }

    /// Record on DataVolume `name` the capacity its claim was expanded to
    /// (the DataVolume's own size request stays what it was created with),
    /// so that ListVolumes and ControllerGetVolume report the current size.
    pub async fn record_capacity(&self, name: &str, bytes: i64) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {CAPACITY_ANNOTATION: bytes.to_string()}}});
        self.dvs
            .patch(name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(Error::infra(format!(
                "recording the expanded capacity on DataVolume {name}"
            )))
    }

    /// Wait, on a watch of the claim, until the storage side has grown it to
    /// `bytes`: its capacity reached the size, or only the filesystem resize
    /// (done where the claim is mounted) remains. `false` at the deadline.
    pub async fn wait_claim_resized(
        &self,
        name: &str,
        bytes: i64,
        deadline: Instant,
    ) -> Result<bool> {
        let cond =
            move |pvc: Option<&PersistentVolumeClaim>| pvc.is_some_and(|p| claim_resized(p, bytes));
        match self.wait_claim(name, deadline, cond).await? {
            Some(Some(_)) => Ok(true),
            Some(None) => Err(Error::NotFound(format!("infra claim {name} was deleted"))),
            None => Ok(false),
        }
    }

    /// The claim `name`, waiting on a watch until it exists (CDI creates a
    /// DataVolume's claim just after the DataVolume); `None` at the deadline.
    pub async fn wait_claim_exists(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Option<PersistentVolumeClaim>> {
        let cond = |pvc: Option<&PersistentVolumeClaim>| pvc.is_some();
        Ok(self.wait_claim(name, deadline, cond).await?.flatten())
    }

    /// Watch the claim until `cond` holds: `Some(the claim)` then (`None`
    /// if it holds for an absent claim), `None` at the deadline.
    pub async fn wait_claim(
        &self,
        name: &str,
        deadline: Instant,
        cond: impl kube::runtime::wait::Condition<PersistentVolumeClaim>,
    ) -> Result<Option<Option<PersistentVolumeClaim>>> {
        match tokio::time::timeout_at(
            deadline,
            kube::runtime::wait::await_condition(self.pvcs.clone(), name, cond),
        )
        .await
        {
            Ok(Ok(found)) => Ok(Some(found)),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "watching PersistentVolumeClaim {name}: {e}"
            ))),
            Err(_) => Ok(None),
        }
    }

    /// Set the claim's `spec.volumeAttributesClassName`; the claim as the
    /// API server stored it.
    pub async fn set_claim_class(&self, name: &str, class: &str) -> Result<PersistentVolumeClaim> {
        let patch = json!({"spec": {"volumeAttributesClassName": class}});
        let action = format!("setting the VolumeAttributesClass of PersistentVolumeClaim {name}");
        self.patch_claim(name, &patch, action).await
    }

    /// The ResourceQuotas of the namespace.
    pub async fn list_quotas(&self) -> Result<Vec<ResourceQuota>> {
        self.quotas
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(Error::infra("listing ResourceQuotas"))
    }

    pub async fn create_snapshot(
        &self,
        vs: &VolumeSnapshot,
    ) -> std::result::Result<VolumeSnapshot, kube::Error> {
        self.snapshots.create(&post_params(), vs).await
    }

    pub async fn get_snapshot(&self, name: &str) -> Result<Option<VolumeSnapshot>> {
        if !is_object_name(name) {
            return Ok(None);
        }
        optional(
            self.snapshots.get(name).await,
            format!("reading VolumeSnapshot {name}"),
        )
    }

    /// DELETE a VolumeSnapshot (only the incarnation with `uid`); gone is success.
    pub async fn delete_snapshot(&self, name: &str, uid: &str) -> Result<()> {
        let dp = DeleteParams {
            preconditions: (!uid.is_empty()).then(|| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        optional(
            self.snapshots.delete(name, &dp).await,
            format!("deleting VolumeSnapshot {name}"),
        )
        .map(|_| ())
    }
}

/// The storage request and capacity of a claim, in bytes.
pub fn claim_sizes(pvc: &PersistentVolumeClaim) -> (Option<i64>, Option<i64>) {
    let request = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_bytes(&q.0));
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_bytes(&q.0));
    (request, capacity)
}

/// The controller side of a resize to `bytes` is done.
pub fn claim_resized(pvc: &PersistentVolumeClaim, bytes: i64) -> bool {
    let (_, capacity) = claim_sizes(pvc);
    capacity.is_some_and(|c| c >= bytes)
        || pvc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "FileSystemResizePending" && c.status == "True")
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_is_done_at_capacity_or_pending_fs_resize() {
        let pvc = |v: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(v).expect("pvc")
        };
        let base = json!({"metadata": {"name": "pvc-1"}, "spec": {"resources": {"requests": {"storage": "2Gi"}}},
                          "status": {"capacity": {"storage": "1Gi"}}});
        assert!(!claim_resized(&pvc(base.clone()), 2 << 30));
        let mut grown = base.clone();
        grown["status"]["capacity"]["storage"] = json!("2Gi");
        assert!(claim_resized(&pvc(grown), 2 << 30));
        let mut pending = base;
        pending["status"]["conditions"] =
            json!([{"type": "FileSystemResizePending", "status": "True"}]);
        assert!(claim_resized(&pvc(pending), 2 << 30));
    }
}
