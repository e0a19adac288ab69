//! KubeVirt's hotplug machinery (virt-controller's attachment pods and
//! virt-handler's mounts) reduced to the status it reports: every hotpluggable
//! volume in a running VMI's spec walks `status.volumeStatus` through Pending
//! → Bound → AttachedToNode → MountedToPod → Ready, and a volume removed from
//! the spec walks UnMountedFromPod → Detaching → gone. One phase per volume
//! per reconcile, each at least `step_latency` after the previous one, with
//! KubeVirt's reasons and messages. A volume whose DataVolume is missing or
//! not Succeeded (or whose PVC is not Bound) stays Pending.
//!
//! With [`crate::devices`] configured, a volume is attached as a loop device
//! (and by-id link) just before it turns Ready and detached just before it
//! leaves the guest; when a Ready volume's claim grows, its loop device
//! re-reads its size before the new capacity shows in the volume status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{
    HotplugVolumeStatus, VirtualMachineInstance, VolumeStatus, phase, volume_phase,
};
use serde_json::{Value, json};

use crate::Error;
use crate::cdi::{backing_file, is_bound};
use crate::devices::Devices;
use crate::error::not_found_ok;
use crate::meta::{is_deleting, key, random_suffix};
use crate::runner::{drain, error_policy};

/// Finalizer that keeps a VMI until its emulated disks are detached.
pub const DEVICES_FINALIZER: &str = "lab.kubevirt.io/hotplug-devices";

/// Configuration of the hotplug simulator.
#[derive(Clone, Debug, Default)]
pub struct HotplugConfig {
    /// Minimum time between two phases of one volume (0: as fast as the watch goes).
    pub step_latency: Duration,
    /// Emulate guest disks as loop devices (None: status only).
    pub devices: Option<Arc<Devices>>,
}

struct Ctx {
    client: Client,
    cfg: HotplugConfig,
    /// When each (VMI uid, volume) last changed phase.
    last_step: Mutex<HashMap<(String, String), Instant>>,
    /// The attachment "pod" of each VMI (by uid).
    attach_pods: Mutex<HashMap<String, HotplugVolumeStatus>>,
}

/// Runs the hotplug controller until the future is dropped.
pub async fn run(client: Client, cfg: HotplugConfig) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        last_step: Mutex::new(HashMap::new()),
        attach_pods: Mutex::new(HashMap::new()),
    });
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let dvs: Api<DataVolume> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let wc = watcher::Config::default;

    let controller = Controller::new(vmis, wc());
    let store = controller.store();
    let by_claim = move |ns: Option<String>, claim: String| {
        store
            .state()
            .into_iter()
            .filter(|vmi| {
                vmi.namespace() == ns
                    && vmi
                        .spec
                        .volumes
                        .iter()
                        .any(|v| v.claim_name() == Some(claim.as_str()))
            })
            .map(|vmi| ObjectRef::from_obj(&*vmi))
            .collect::<Vec<_>>()
    };
    let by_pvc = by_claim.clone();
    let controller = controller
        .watches(dvs, wc(), move |dv| by_claim(dv.namespace(), dv.name_any()))
        .watches(pvcs, wc(), move |pvc| {
            by_pvc(pvc.namespace(), pvc.name_any())
        })
        .run(reconcile, error_policy, ctx);

    drain("hotplug", controller).await;
    Ok(())
}

async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ctx.cfg.devices.is_none() {
        return sync(&vmi, &ctx).await;
    }
    let ns = vmi
        .namespace()
        .ok_or_else(|| Error::missing("VirtualMachineInstance", vmi.name_any(), "namespace"))?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&vmis, DEVICES_FINALIZER, vmi, |event| async {
        match event {
            Finalizer::Apply(vmi) => sync(&vmi, &ctx).await,
            Finalizer::Cleanup(vmi) => {
                detach_node(&ctx, &vmi.name_any()).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(Error::from)
}

/// Advances every hotplugged volume of the VMI by one phase.
async fn sync(stale: &VirtualMachineInstance, ctx: &Ctx) -> Result<Action, Error> {
    let ns = stale.namespace().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(vmi) = not_found_ok(vmis.get(&stale.name_any()).await)? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&vmi) {
        return Ok(Action::await_change());
    }
    if vmi.phase() != phase::RUNNING {
        if vmi.phase() == phase::SUCCEEDED || vmi.phase() == phase::FAILED {
            detach_node(ctx, &vmi.name_any()).await?;
        }
        return Ok(Action::await_change());
    }
    let uid = vmi.uid().unwrap_or_default();
    let sources = source_states(&ctx.client, &vmi).await?;
    let attach_pod = attach_pod(ctx, &vmi);
    let now = Instant::now();
    let latency = ctx.cfg.step_latency;
    let mut wait: Option<Duration> = None;
    let plan = {
        let last = ctx
            .last_step
            .lock()
            .map_err(|_| Error::NotReady("hotplug state poisoned".into()))?;
        let may_step = |volume: &str| match last.get(&(uid.clone(), volume.to_string())) {
            Some(at) if now.duration_since(*at) < latency => {
                let left = latency - now.duration_since(*at);
                wait = Some(wait.map_or(left, |w| w.min(left)));
                false
            }
            _ => true,
        };
        plan(&vmi, &sources, &attach_pod, may_step)
    };

    for volume in &plan.detach {
        if let Some(devices) = &ctx.cfg.devices {
            let devices = devices.clone();
            let (node, volume) = (vmi.name_any(), volume.clone());
            tokio::task::spawn_blocking(move || devices.detach(&node, &volume)).await??;
        }
    }
    for volume in &plan.attach {
        if let Some(devices) = &ctx.cfg.devices {
            attach(ctx, &vmi, volume, devices.clone()).await?;
        }
    }
    let current = vmi
        .status
        .as_ref()
        .map(|s| s.volume_status.clone())
        .unwrap_or_default();
    if let Some(devices) = &ctx.cfg.devices {
        for volume in grown(&current, &plan) {
            let file = backing_file(&ctx.client, &ns, &volume).await?;
            let devices = devices.clone();
            tokio::task::spawn_blocking(move || devices.refresh(&file)).await??;
        }
    }
    if plan.statuses != current {
        let patch = json!({"status": {"volumeStatus": plan.statuses}});
        vmis.patch_status(
            &vmi.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        if let Ok(mut last) = ctx.last_step.lock() {
            for volume in &plan.stepped {
                last.insert((uid.clone(), volume.clone()), now);
            }
            last.retain(|(u, v), _| *u != uid || plan.statuses.iter().any(|s| &s.name == v));
        }
        tracing::debug!(vmi = %key(&vmi), stepped = ?plan.stepped, "volume status advanced");
    }
    Ok(wait.map_or_else(Action::await_change, Action::requeue))
}

/// Claims of Ready volumes whose claim info (capacity) changed in this plan.
fn grown(current: &[VolumeStatus], plan: &Plan) -> Vec<String> {
    const INFO: &str = "persistentVolumeClaimInfo";
    plan.statuses
        .iter()
        .filter(|s| s.is_ready() && !plan.attach.contains(&s.name))
        .filter_map(|s| {
            let before = current.iter().find(|c| c.name == s.name)?;
            let after = s.extra.get(INFO)?;
            (before.extra.get(INFO) != Some(after))
                .then(|| {
                    after
                        .get("claimName")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .flatten()
        })
        .collect()
}

async fn attach(
    ctx: &Ctx,
    vmi: &VirtualMachineInstance,
    volume: &str,
    devices: Arc<Devices>,
) -> Result<(), Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let spec_volume = vmi
        .spec
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| Error::NotReady(format!("volume {volume} left the spec of {}", key(vmi))))?;
    let claim = spec_volume
        .claim_name()
        .ok_or_else(|| Error::missing("Volume", volume, "dataVolume/persistentVolumeClaim"))?;
    let file = backing_file(&ctx.client, &ns, claim).await?;
    let disk = vmi
        .spec
        .domain
        .devices
        .disks
        .iter()
        .find(|d| d.name == volume);
    let bus = disk
        .and_then(|d| d.disk.as_ref())
        .and_then(|t| t.bus.clone())
        .unwrap_or_else(|| "scsi".to_string());
    let serial = disk
        .and_then(|d| d.serial.clone())
        .unwrap_or_else(|| volume.to_string());
    let read_only = disk
        .and_then(|d| d.disk.as_ref())
        .is_some_and(|t| t.read_only);
    let (node, volume) = (vmi.name_any(), volume.to_string());
    tokio::task::spawn_blocking(move || {
        devices.attach(&node, &volume, &bus, &serial, &file, read_only)
    })
    .await??;
    Ok(())
}

async fn detach_node(ctx: &Ctx, node: &str) -> Result<(), Error> {
    if let Some(devices) = &ctx.cfg.devices {
        let (devices, node) = (devices.clone(), node.to_string());
        tokio::task::spawn_blocking(move || devices.detach_node(&node)).await??;
    }
    Ok(())
}

/// The attachment pod reported for the VMI's hotplugged volumes: the one its
/// status already names, or a new one.
fn attach_pod(ctx: &Ctx, vmi: &VirtualMachineInstance) -> HotplugVolumeStatus {
    let uid = vmi.uid().unwrap_or_default();
    let reported = vmi
        .status
        .as_ref()
        .and_then(|s| {
            s.volume_status
                .iter()
                .find_map(|v| v.hotplug_volume.clone())
        })
        .filter(|h| h.attach_pod_name.is_some());
    let Ok(mut pods) = ctx.attach_pods.lock() else {
        return reported.unwrap_or_default();
    };
    pods.entry(uid)
        .or_insert_with(|| {
            reported.unwrap_or_else(|| HotplugVolumeStatus {
                attach_pod_name: Some(format!("hp-volume-{}", random_suffix(5))),
                attach_pod_uid: Some(uuid::Uuid::new_v4().to_string()),
            })
        })
        .clone()
}

/// Whether a volume's claim is usable, and why not.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceState {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    /// `persistentVolumeClaimInfo` for the status entry.
    pub claim_info: Option<Value>,
}

async fn source_states(
    client: &Client,
    vmi: &VirtualMachineInstance,
) -> Result<BTreeMap<String, SourceState>, Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut out = BTreeMap::new();
    for volume in vmi.spec.volumes.iter().filter(|v| v.is_hotpluggable()) {
        let Some(claim) = volume.claim_name() else {
            continue;
        };
        let pending = |reason: &str, message: String| SourceState {
            ready: false,
            reason: reason.to_string(),
            message,
            claim_info: None,
        };
        if volume.data_volume.is_some() {
            match not_found_ok(dvs.get(claim).await)? {
                None => {
                    out.insert(
                        volume.name.clone(),
                        pending(
                            "PVCNotReady",
                            format!("DataVolume {ns}/{claim} does not exist"),
                        ),
                    );
                    continue;
                }
                Some(dv) if dv.phase() != "Succeeded" => {
                    let phase = if dv.phase().is_empty() {
                        "Pending"
                    } else {
                        dv.phase()
                    };
                    out.insert(
                        volume.name.clone(),
                        pending(
                            "PVCNotReady",
                            format!("DataVolume {ns}/{claim} is in phase {phase}"),
                        ),
                    );
                    continue;
                }
                Some(_) => {}
            }
        }
        let state = match not_found_ok(pvcs.get(claim).await)? {
            None => pending(
                "FailedPvcNotFound",
                "Unable to determine PVC name".to_string(),
            ),
            Some(pvc) if !is_bound(&pvc) => {
                pending("PVCNotReady", "PVC is in phase ClaimPending".to_string())
            }
            Some(pvc) => SourceState {
                ready: true,
                reason: "PVCNotReady".to_string(),
                message: "PVC is in phase Bound".to_string(),
                claim_info: Some(claim_info(&pvc)),
            },
        };
        out.insert(volume.name.clone(), state);
    }
    Ok(out)
}

fn claim_info(pvc: &PersistentVolumeClaim) -> Value {
    let spec = pvc.spec.clone().unwrap_or_default();
    json!({
        "claimName": pvc.name_any(),
        "accessModes": spec.access_modes,
        "volumeMode": spec.volume_mode,
        "requests": spec.resources.and_then(|r| r.requests),
        "capacity": pvc.status.as_ref().and_then(|s| s.capacity.clone()),
        "filesystemOverhead": "0",
    })
}

/// The next volume status of a VMI and the side effects it needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The whole `status.volumeStatus`, sorted by name.
    pub statuses: Vec<VolumeStatus>,
    /// Volumes that changed phase.
    pub stepped: Vec<String>,
    /// Volumes turning Ready: attach their disk first.
    pub attach: Vec<String>,
    /// Volumes leaving the guest: detach their disk first.
    pub detach: Vec<String>,
}

/// One step of the hotplug state machine for every volume of `vmi`.
/// `may_step(volume)` says whether the volume may change phase now.
pub fn plan(
    vmi: &VirtualMachineInstance,
    sources: &BTreeMap<String, SourceState>,
    attach_pod: &HotplugVolumeStatus,
    mut may_step: impl FnMut(&str) -> bool,
) -> Plan {
    let current: Vec<VolumeStatus> = vmi
        .status
        .as_ref()
        .map(|s| s.volume_status.clone())
        .unwrap_or_default();
    let by_name: HashMap<&str, &VolumeStatus> =
        current.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut used_targets: HashSet<String> = current
        .iter()
        .filter(|s| !s.target.is_empty())
        .map(|s| s.target.clone())
        .collect();
    let mut out = Plan::default();
    let pod_name = attach_pod.attach_pod_name.clone().unwrap_or_default();
    let set = |s: &mut VolumeStatus, phase: &str, reason: &str, message: String| {
        s.phase = Some(phase.to_string());
        s.reason = Some(reason.to_string());
        s.message = Some(message);
    };

    for volume in &vmi.spec.volumes {
        let name = volume.name.as_str();
        let bus = disk_bus(vmi, name);
        let existing = by_name.get(name).copied();
        if !volume.is_hotpluggable() {
            let mut s = existing.cloned().unwrap_or_else(|| VolumeStatus {
                name: name.to_string(),
                ..VolumeStatus::default()
            });
            if s.target.is_empty() {
                let t = next_target(bus.as_deref().unwrap_or("virtio"), &used_targets);
                used_targets.insert(t.clone());
                s.target = t;
            }
            out.statuses.push(s);
            continue;
        }
        let source = sources.get(name);
        let mut s = match existing {
            // Still leaving from an earlier removal: finish that first.
            Some(e) if is_leaving(e) => {
                if let Some(next) = leave(e, &pod_name, &mut may_step, &mut out) {
                    out.statuses.push(next);
                }
                continue;
            }
            Some(e) => e.clone(),
            None => {
                let mut s = VolumeStatus {
                    name: name.to_string(),
                    hotplug_volume: Some(attach_pod.clone()),
                    ..VolumeStatus::default()
                };
                let (reason, message) = match source {
                    Some(s) if !s.ready => (s.reason.as_str(), s.message.clone()),
                    _ => (
                        "VolumePending",
                        format!("Volume {name} is waiting to be attached"),
                    ),
                };
                set(&mut s, volume_phase::PENDING, reason, message);
                out.stepped.push(name.to_string());
                if let Some(info) = source.and_then(|s| s.claim_info.clone()) {
                    s.extra.insert("persistentVolumeClaimInfo".into(), info);
                }
                out.statuses.push(s);
                continue;
            }
        };
        if let Some(info) = source.and_then(|s| s.claim_info.clone()) {
            s.extra.insert("persistentVolumeClaimInfo".into(), info);
        }
        let ready_source = source.is_some_and(|s| s.ready);
        let phase = s.phase.clone().unwrap_or_default();
        match phase.as_str() {
            volume_phase::PENDING if !ready_source => {
                if let Some(src) = source {
                    set(
                        &mut s,
                        volume_phase::PENDING,
                        &src.reason,
                        src.message.clone(),
                    );
                }
            }
            volume_phase::PENDING if may_step(name) => {
                set(
                    &mut s,
                    volume_phase::BOUND,
                    "PVCNotReady",
                    "PVC is in phase Bound".to_string(),
                );
                out.stepped.push(name.to_string());
            }
            volume_phase::BOUND if may_step(name) => {
                set(
                    &mut s,
                    volume_phase::ATTACHED_TO_NODE,
                    "SuccessfulCreate",
                    format!("Created hotplug attachment pod {pod_name}, for volume {name}"),
                );
                out.stepped.push(name.to_string());
            }
            volume_phase::ATTACHED_TO_NODE if may_step(name) => {
                set(
                    &mut s,
                    volume_phase::MOUNTED_TO_POD,
                    "VolumeMountedToPod",
                    format!("Volume {name} has been mounted in virt-launcher pod"),
                );
                out.stepped.push(name.to_string());
            }
            volume_phase::MOUNTED_TO_POD if may_step(name) => {
                set(
                    &mut s,
                    volume_phase::READY,
                    "VolumeReady",
                    format!("Successfully attach hotplugged volume {name} to VM"),
                );
                if s.target.is_empty() {
                    let t = next_target(bus.as_deref().unwrap_or("scsi"), &used_targets);
                    used_targets.insert(t.clone());
                    s.target = t;
                }
                out.stepped.push(name.to_string());
                out.attach.push(name.to_string());
            }
            _ => {}
        }
        out.statuses.push(s);
    }

    // Hotplugged volumes no longer in the spec leave the guest.
    for s in &current {
        if vmi.has_volume(&s.name) || s.hotplug_volume.is_none() {
            continue;
        }
        if let Some(next) = leave(s, &pod_name, &mut may_step, &mut out) {
            out.statuses.push(next);
        }
    }
    out.statuses.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_leaving(s: &VolumeStatus) -> bool {
    matches!(
        s.phase.as_deref(),
        Some(volume_phase::UNMOUNTED_FROM_POD | volume_phase::DETACHING)
    )
}

/// One removal step: guest phases → UnMountedFromPod (disk detached) →
/// Detaching → gone (`None`). A volume that never got past Pending just goes.
fn leave(
    s: &VolumeStatus,
    pod_name: &str,
    may_step: &mut impl FnMut(&str) -> bool,
    out: &mut Plan,
) -> Option<VolumeStatus> {
    let name = s.name.clone();
    let phase = s.phase.as_deref().unwrap_or_default();
    if phase == volume_phase::PENDING || phase.is_empty() {
        out.stepped.push(name);
        return None;
    }
    if !may_step(&name) {
        return Some(s.clone());
    }
    out.stepped.push(name.clone());
    let mut next = s.clone();
    match phase {
        volume_phase::DETACHING => None,
        volume_phase::UNMOUNTED_FROM_POD => {
            next.phase = Some(volume_phase::DETACHING.to_string());
            next.reason = Some("SuccessfulDelete".to_string());
            next.message = Some(format!(
                "Deleted hotplug attachment pod {pod_name}, for volume {name}"
            ));
            Some(next)
        }
        _ => {
            out.detach.push(name.clone());
            next.phase = Some(volume_phase::UNMOUNTED_FROM_POD.to_string());
            next.reason = Some("VolumeUnMountedFromPod".to_string());
            next.message = Some(format!(
                "Volume {name} has been unmounted from virt-launcher pod"
            ));
            next.target = String::new();
            Some(next)
        }
    }
}

fn disk_bus(vmi: &VirtualMachineInstance, volume: &str) -> Option<String> {
    vmi.spec
        .domain
        .devices
        .disks
        .iter()
        .find(|d| d.name == volume)
        .and_then(|d| d.disk.as_ref())
        .and_then(|t| t.bus.clone())
}

/// The first free target name for `bus`: `sda`, `sdb`, … (scsi, sata) or `vda`, … (virtio).
pub fn next_target(bus: &str, used: &HashSet<String>) -> String {
    let prefix = if bus == "virtio" { "vd" } else { "sd" };
    let letters = (b'a'..=b'z').map(|c| (c as char).to_string());
    let two = (b'a'..=b'z')
        .flat_map(|a| (b'a'..=b'z').map(move |b| format!("{}{}", a as char, b as char)));
    letters
        .chain(two)
        .map(|l| format!("{prefix}{l}"))
        .find(|t| !used.contains(t))
        .unwrap_or_else(|| format!("{prefix}zzz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(volumes: Value, status: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm-0", "namespace": "infra", "uid": "u"},
            "spec": {
                "domain": {"devices": {"disks": [
                    {"name": "root", "disk": {"bus": "virtio"}},
                    {"name": "pvc-1", "disk": {"bus": "scsi"}, "serial": "s1"}
                ]}},
                "volumes": volumes
            },
            "status": {"phase": "Running", "volumeStatus": status}
        }))
        .expect("valid VMI")
    }

    fn ready_source() -> BTreeMap<String, SourceState> {
        BTreeMap::from([(
            "pvc-1".to_string(),
            SourceState {
                ready: true,
                reason: "PVCNotReady".into(),
                message: "PVC is in phase Bound".into(),
                claim_info: None,
            },
        )])
    }

    fn pod() -> HotplugVolumeStatus {
        HotplugVolumeStatus {
            attach_pod_name: Some("hp-volume-abcde".into()),
            attach_pod_uid: Some("pod-uid".into()),
        }
    }

    fn phase_of(p: &Plan, name: &str) -> Option<String> {
        p.statuses
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.phase.clone())
    }

    #[test]
    fn walks_a_volume_to_ready_and_back_out() {
        let volumes = json!([
            {"name": "root", "containerDisk": {"image": "x"}},
            {"name": "pvc-1", "dataVolume": {"name": "pvc-1", "hotpluggable": true}}
        ]);
        let mut v = vmi(volumes.clone(), json!([]));
        let mut seen = Vec::new();
        for _ in 0..5 {
            let p = plan(&v, &ready_source(), &pod(), |_| true);
            seen.push(phase_of(&p, "pvc-1").unwrap_or_default());
            if let Some(s) = v.status.as_mut() {
                s.volume_status = p.statuses.clone();
            }
            if seen.last().map(String::as_str) == Some("Ready") {
                assert_eq!(p.attach, ["pvc-1"]);
            } else {
                assert!(p.attach.is_empty());
            }
        }
        assert_eq!(
            seen,
            [
                "Pending",
                "Bound",
                "AttachedToNode",
                "MountedToPod",
                "Ready"
            ]
        );
        let ready = v.volume_status("pvc-1").expect("status entry");
        assert_eq!(ready.target, "sda");
        assert_eq!(
            ready.message.as_deref(),
            Some("Successfully attach hotplugged volume pvc-1 to VM")
        );
        assert_eq!(ready.hotplug_volume, Some(pod()));
        assert_eq!(
            v.volume_status("root").map(|s| s.target.as_str()),
            Some("vda")
        );
        assert_eq!(
            plan(&v, &ready_source(), &pod(), |_| true).statuses,
            v.status
                .as_ref()
                .map(|s| s.volume_status.clone())
                .unwrap_or_default(),
            "Ready is stable"
        );

        // Removed from the spec: UnMountedFromPod (detach), Detaching, gone.
        v.spec.volumes.retain(|vol| vol.name != "pvc-1");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let p = plan(&v, &BTreeMap::new(), &pod(), |_| true);
            seen.push(phase_of(&p, "pvc-1").unwrap_or_else(|| "gone".into()));
            assert_eq!(p.detach.len(), usize::from(seen.len() == 1));
            if let Some(s) = v.status.as_mut() {
                s.volume_status = p.statuses.clone();
            }
        }
        assert_eq!(seen, ["UnMountedFromPod", "Detaching", "gone"]);
    }

    #[test]
    fn pending_until_the_data_volume_is_ready_and_latency_holds_steps() {
        let volumes =
            json!([{"name": "pvc-1", "dataVolume": {"name": "pvc-1", "hotpluggable": true}}]);
        let not_ready = BTreeMap::from([(
            "pvc-1".to_string(),
            SourceState {
                ready: false,
                reason: "PVCNotReady".into(),
                message: "DataVolume infra/pvc-1 does not exist".into(),
                claim_info: None,
            },
        )]);
        let v = vmi(
            volumes.clone(),
            json!([{"name": "pvc-1", "phase": "Pending", "hotplugVolume": {}}]),
        );
        let p = plan(&v, &not_ready, &pod(), |_| true);
        let s = &p.statuses[0];
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            s.message.as_deref(),
            Some("DataVolume infra/pvc-1 does not exist")
        );
        assert!(p.stepped.is_empty());

        let held = plan(&v, &ready_source(), &pod(), |_| false);
        assert_eq!(
            held.statuses[0].phase.as_deref(),
            Some("Pending"),
            "latency not elapsed"
        );
        assert!(held.stepped.is_empty());
    }

    #[test]
    fn targets_fill_the_first_free_letter() {
        let used: HashSet<String> =
            ["sda".to_string(), "sdc".to_string(), "vda".to_string()].into();
        assert_eq!(next_target("scsi", &used), "sdb");
        assert_eq!(next_target("sata", &HashSet::new()), "sda");
        assert_eq!(next_target("virtio", &used), "vdb");
    }
}
