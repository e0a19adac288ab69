//! ControllerPublishVolume and ControllerUnpublishVolume: hotplug the
//! DataVolume into the node's VM (`addvolume`) and unplug it
//! (`removevolume` on the VM, or on the VMI for a volume only the VMI still
//! carries), then wait on the VMI watch, bounded by the caller's deadline,
//! until the VMI reports the volume `Ready` or no longer lists it.
//!
//! Both the volume and the VM must be the tenant's (namespace, labels,
//! prefix); anything else is `NotFound`, exactly like an object that does not
//! exist, so a guest learns nothing about other tenants. A single-node
//! volume already on another VM or VMI is refused with `FailedPrecondition`
//! naming that node, from the cache (no listing). A read-only publish
//! hotplugs the disk read-only (KubeVirt's `readonly`) and says so in the
//! publish context; publishing again with the other mode is AlreadyExists.

use std::collections::BTreeSet;

use kubevirt_csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
};
use kubevirt_infra::hotplug::{AddVolumeOptions, Target};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{bus, check_capability, check_supported, node_id, parse_node_id, required};
use super::index::State;
use super::volume::{BUS_PARAM, READONLY_KEY, SERIAL_KEY};
use crate::error::{Error, Result, is_conflict, is_not_found};

/// How long a conflicting `addvolume` waits for the cache to show the
/// volume on the VM (added by an earlier call) before answering Aborted.
const CONFLICT_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the node learns from the attachment: that the disk is read-only.
fn publish_context(read_only: bool) -> std::collections::HashMap<String, String> {
    if read_only {
        [(READONLY_KEY.to_string(), "true".to_string())].into()
    } else {
        Default::default()
    }
}

/// Where a wait for attachment stands.
fn attach_state(s: &State, vm: &str, volume: &str) -> Option<()> {
    s.vmi(vm)
        .and_then(|vmi| vmi.volume(volume))
        .filter(|v| v.is_ready())
        .map(|_| ())
}

/// Describe the VMI's view of the volume, for a timeout message.
fn attach_progress(s: &State, vm: &str, volume: &str) -> String {
    match s.vmi(vm) {
        None => format!("VM {vm} has no running instance"),
        Some(vmi) => match vmi.volume(volume) {
            None => format!("VMI {vm} does not report the volume yet"),
            Some(v) => format!(
                "VMI {vm} reports phase {}{}",
                v.phase.as_deref().unwrap_or("<none>"),
                v.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        },
    }
}

#[tracing::instrument(name = "ControllerPublishVolume", skip_all,
                      fields(volume = %req.volume_id, node = %req.node_id))]
pub(super) async fn publish(
    svc: &ControllerService,
    req: ControllerPublishVolumeRequest,
    deadline: Instant,
) -> Result<ControllerPublishVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    let node = required(&req.node_id, "node_id")?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
    let access = check_capability(cap)?;
    check_supported(access)?;
    let (ns, vm) = parse_node_id(node)?;
    let bus = bus(req.volume_context.get(BUS_PARAM).map(String::as_str))?;
    if ns != svc.scope().namespace() {
        return Err(Error::NotFound(format!(
            "node {node} is not a VM of this cluster (infra namespace {})",
            svc.scope().namespace()
        )));
    }

    let _guard = svc.in_flight.begin(id)?;
    svc.synced(deadline).await?;

    let volume = svc.volume(id).await?;
    if access.multi_node && !volume.multi_node {
        return Err(Error::InvalidArgument(format!(
            "volume {id} was not created for multi-node access"
        )));
    }
    let vm_entry = svc
        .lookup_vm(vm)
        .await?
        .ok_or_else(|| Error::NotFound(format!("node {node} not found")))?;

    if !access.multi_node {
        let elsewhere: Vec<String> = svc.index.read(|s| {
            s.holders(id)
                .into_iter()
                .filter(|h| *h != vm)
                .map(|h| node_id(ns, h))
                .collect()
        });
        if !elsewhere.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached to another node: {}",
                elsewhere.join(", ")
            )));
        }
    }

    if let Some(attached) = vm_entry.volume(id)
        && attached.read_only != req.readonly
    {
        let mode = |ro: bool| if ro { "read-only" } else { "read-write" };
        return Err(Error::AlreadyExists(format!(
            "volume {id} is published to node {node} {}; a {} publish is incompatible",
            mode(attached.read_only),
            mode(req.readonly)
        )));
    }
    if !vm_entry.has(id) {
        let serial = req
            .volume_context
            .get(SERIAL_KEY)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| volume.uid.clone());
        let opts = AddVolumeOptions::data_volume(id, bus.as_str(), &serial).read_only(req.readonly);
        match svc.infra.add_volume(vm, &opts).await {
            Ok(()) => tracing::info!(bus = bus.as_str(), serial = %serial, "hotplug requested"),
            // Added by an earlier call the cache has not seen yet, or refused
            // for now (a conflicting write, a VMI not running): only the cache
            // tells which, and a refusal must not wait out the caller's deadline.
            Err(e) if is_conflict(&e) => {
                let added = svc
                    .index
                    .settle(deadline, CONFLICT_SETTLE, |s| {
                        s.vm(vm).is_some_and(|v| v.has(id))
                    })
                    .await;
                if !added {
                    return Err(Error::Aborted(format!(
                        "hotplugging {id} into VM {vm} conflicted ({e}); retry"
                    )));
                }
                tracing::debug!(error = %e, "volume already being added");
            }
            Err(e) if is_not_found(&e) => {
                return Err(Error::NotFound(format!("node {node} not found")));
            }
            Err(e) => return Err(Error::infra(format!("hotplugging {id} into VM {vm}"))(e)),
        }
    }

    match svc
        .index
        .wait_for(deadline, |s| attach_state(s, vm, id))
        .await
    {
        Some(()) => {
            tracing::info!(read_only = req.readonly, "volume attached");
            Ok(ControllerPublishVolumeResponse {
                publish_context: publish_context(req.readonly),
            })
        }
        None => Err(Error::DeadlineExceeded(format!(
            "volume {id} not ready on node {node} before the deadline: {}",
            svc.index.read(|s| attach_progress(s, vm, id))
        ))),
    }
}

/// The tenant VMs/VMIs the volume should leave: the one named, or all.
fn unpublish_targets(s: &State, volume: &str, only: Option<&str>) -> BTreeSet<String> {
    let tenant_vmis = s
        .vmis_with(volume)
        .filter(|name| s.vmi(name).is_some_and(|v| v.tenant));
    s.vms_with(volume)
        .chain(tenant_vmis)
        .filter(|name| only.is_none_or(|o| o == *name))
        .map(str::to_string)
        .collect()
}

/// Gone from the VM template and from the VMI status.
fn detached(s: &State, vm: &str, volume: &str) -> bool {
    !s.vm(vm).is_some_and(|v| v.has(volume))
        && !s
            .vmi(vm)
            .is_some_and(|v| v.tenant && v.volume(volume).is_some())
}

#[tracing::instrument(name = "ControllerUnpublishVolume", skip_all,
                      fields(volume = %req.volume_id, node = %req.node_id))]
pub(super) async fn unpublish(
    svc: &ControllerService,
    req: ControllerUnpublishVolumeRequest,
    deadline: Instant,
) -> Result<ControllerUnpublishVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    let only = if req.node_id.is_empty() {
        None
    } else {
        let (ns, vm) = parse_node_id(&req.node_id)?;
        if ns != svc.scope().namespace() {
            tracing::debug!("node is not in the tenant namespace: nothing attached there");
            return Ok(ControllerUnpublishVolumeResponse {});
        }
        Some(vm)
    };
    if svc.scope().check_volume_name(id).is_err() {
        return Ok(ControllerUnpublishVolumeResponse {});
    }

    let _guard = svc.in_flight.begin(id)?;
    svc.synced(deadline).await?;

    let targets = svc.index.read(|s| unpublish_targets(s, id, only));
    for vm in &targets {
        let (on_vm, hotplugged_vm, on_vmi) = svc.index.read(|s| {
            let v = s.vm(vm).and_then(|v| v.volume(id));
            let vmi = s
                .vmi(vm)
                .filter(|i| i.tenant)
                .and_then(|i| i.volume(id))
                .is_some_and(|v| v.hotplug);
            (v.is_some(), v.is_some_and(|v| v.hotpluggable), vmi)
        });
        let target = if on_vm {
            if !hotplugged_vm {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is part of VM {vm}'s definition, not hotplugged; refusing to detach it"
                )));
            }
            Target::VirtualMachine
        } else if on_vmi {
            Target::VirtualMachineInstance
        } else {
            continue;
        };
        match svc.infra.remove_volume(target, vm, id).await {
            Ok(()) => tracing::info!(vm = %vm, ?target, "unplug requested"),
            Err(e) if is_not_found(&e) => tracing::debug!(vm = %vm, "already gone"),
            Err(e) if is_conflict(&e) => {
                tracing::debug!(vm = %vm, error = %e, "already being removed")
            }
            Err(e) => {
                return Err(Error::infra(format!("unplugging {id} from {vm}"))(e));
            }
        }
    }

    let done = svc
        .index
        .wait_for(deadline, |s| {
            targets.iter().all(|vm| detached(s, vm, id)).then_some(())
        })
        .await;
    match done {
        Some(()) => Ok(ControllerUnpublishVolumeResponse {}),
        None => Err(Error::DeadlineExceeded(format!(
            "volume {id} still attached to {} at the deadline",
            targets.into_iter().collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::entries::{VmEntry, VmVolume, VmiEntry, VmiVolume};
    use crate::controller::index::Index;

    #[test]
    fn targets_and_detach_state() {
        let idx = Index::new();
        let vmi = |tenant, phase: &str| VmiEntry {
            tenant,
            phase: "Running".into(),
            volumes: vec![VmiVolume {
                name: "pvc-1".into(),
                phase: Some(phase.into()),
                hotplug: true,
                message: None,
                failure: None,
            }],
        };
        idx.write(|s| {
            s.upsert_vm(
                "vm1".into(),
                Some(VmEntry {
                    volumes: vec![VmVolume {
                        name: "pvc-1".into(),
                        hotpluggable: true,
                        read_only: false,
                    }],
                }),
            );
            s.upsert_vmi("vm1".into(), Some(vmi(true, "Ready")));
            s.upsert_vmi("vm2".into(), Some(vmi(true, "Detaching")));
            s.upsert_vmi("foreign".into(), Some(vmi(false, "Ready")));
        });
        idx.read(|s| {
            assert_eq!(
                unpublish_targets(s, "pvc-1", None)
                    .into_iter()
                    .collect::<Vec<_>>(),
                ["vm1", "vm2"]
            );
            assert_eq!(unpublish_targets(s, "pvc-1", Some("vm2")).len(), 1);
            assert!(attach_state(s, "vm1", "pvc-1").is_some());
            assert!(attach_state(s, "vm2", "pvc-1").is_none());
            assert!(!detached(s, "vm1", "pvc-1"));
            assert!(detached(s, "foreign", "pvc-1"));
            assert!(attach_progress(s, "vm2", "pvc-1").contains("Detaching"));
        });
    }
}
