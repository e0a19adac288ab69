//! KubeVirt's virt-controller and virt-handler, minus the virtual machines:
//! a VirtualMachine that should run gets a VirtualMachineInstance built from
//! its template; the VMI is scheduled round-robin onto the infra Nodes, given
//! pod-network addresses (IPv4 and IPv6) and a Running virt-launcher Pod, and
//! reports phase Running with its interfaces. Halting or deleting the VM
//! removes the VMI and its pod; a VMI whose pod disappears fails and, under
//! `runStrategy: Always`, is replaced.
//!
//! Like KubeVirt, a change to the VM template reaches the VMI only on restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Node, NodeAddress,
    NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceStatus, VirtualMachineSpec,
    VirtualMachineStatus, VmiInterface, phase,
};
use kubevirt_infra::labels::{
    CREATED_BY_LABEL, VIRT_LAUNCHER_LABEL, VIRT_LAUNCHER_VALUE, VM_NAME_LABEL,
};
use serde_json::{Value, json};

use crate::Error;
use crate::error::{ignore_not_found, not_found_ok};
use crate::meta::{
    controller_of, controller_ref, is_controlled_by, is_deleting, key, now, random_suffix,
};
use crate::pool::{AddressPool, mac_for};
use crate::runner::{drain, error_policy};

/// Finalizer KubeVirt puts on every VMI; removed once its pod is gone.
pub const VMI_FINALIZER: &str = "foregroundDeleteVirtualMachine";
/// Zone and region labels of infra Nodes (read by the cloud provider).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// An infra Node the simulator creates if missing and schedules VMIs onto.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfraNode {
    pub name: String,
    pub zone: String,
    pub region: String,
    /// The node's InternalIP (a virt-launcher pod's hostIP).
    pub address: String,
}

impl InfraNode {
    /// `infra-node-0..n`, spread over zones `zone-a`, `zone-b`, `zone-c` of `region-1`.
    pub fn standard(n: usize) -> Vec<InfraNode> {
        (0..n)
            .map(|i| InfraNode {
                name: format!("infra-node-{i}"),
                zone: format!("zone-{}", char::from(b'a' + (i % 3) as u8)),
                region: "region-1".to_string(),
                address: format!("192.168.100.{}", 10 + i),
            })
            .collect()
    }
}

/// Configuration of the KubeVirt simulator.
#[derive(Clone, Debug)]
pub struct KubevirtConfig {
    /// Nodes created at start (existing Nodes are kept). VMIs are scheduled
    /// round-robin over every schedulable Node of the cluster.
    pub infra_nodes: Vec<InfraNode>,
    /// IPv4 pod network VMIs take their address from.
    pub pod_network_v4: String,
    /// IPv6 pod network VMIs take their address from.
    pub pod_network_v6: String,
    /// Image named in virt-launcher pods and `launcherContainerImageVersion`.
    pub launcher_image: String,
}

impl Default for KubevirtConfig {
    fn default() -> Self {
        Self {
            infra_nodes: InfraNode::standard(3),
            pod_network_v4: "10.128.0.0/14".to_string(),
            pod_network_v6: "fd10:128::/64".to_string(),
            launcher_image: "quay.io/kubevirt/virt-launcher:v1.5.0".to_string(),
        }
    }
}

/// The pod-network addresses of one VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub v4: IpAddr,
    pub v6: IpAddr,
}

struct Ctx {
    client: Client,
    cfg: KubevirtConfig,
    v4: AddressPool,
    v6: AddressPool,
    /// Addresses handed out but perhaps not yet visible in the VMI store.
    pending: Mutex<HashMap<String, Addresses>>,
    /// Every address handed out: a VM's address is not given to another
    /// while this simulator runs, so a connection meant for a stopped VM
    /// can never reach another tenant's VM that inherited its address.
    handed_out: Mutex<HashSet<IpAddr>>,
    vmis: Mutex<Option<Store<VirtualMachineInstance>>>,
    next_node: AtomicUsize,
}

/// Creates the configured infra Nodes, then runs the VM and VMI controllers
/// until the future is dropped.
pub async fn run(client: Client, cfg: KubevirtConfig) -> Result<(), Error> {
    ensure_nodes(&client, &cfg.infra_nodes).await?;
    let ctx = Arc::new(Ctx {
        v4: AddressPool::new(&cfg.pod_network_v4)?,
        v6: AddressPool::new(&cfg.pod_network_v6)?,
        client: client.clone(),
        cfg,
        pending: Mutex::new(HashMap::new()),
        handed_out: Mutex::new(HashSet::new()),
        vmis: Mutex::new(None),
        next_node: AtomicUsize::new(0),
    });
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let dvs: Api<DataVolume> = Api::all(client.clone());
    let wc = watcher::Config::default;

    let vm_controller = Controller::new(vms.clone(), wc());
    let vm_store = vm_controller.store();
    let vm_controller = vm_controller
        .owns(vmis.clone(), wc())
        .watches(dvs, wc(), move |dv| {
            let (ns, name) = (dv.namespace(), dv.name_any());
            vm_store
                .state()
                .into_iter()
                .filter(|vm| {
                    vm.namespace() == ns
                        && (vm
                            .template_volumes()
                            .iter()
                            .any(|v| v.claim_name() == Some(name.as_str()))
                            || controller_of(&dv, "VirtualMachine")
                                .is_some_and(|o| o.name == vm.name_any()))
                })
                .map(|vm| ObjectRef::from_obj(&*vm))
                .collect::<Vec<_>>()
        })
        .run(reconcile_vm, error_policy, ctx.clone());

    let vmi_controller = Controller::new(vmis, wc());
    if let Ok(mut slot) = ctx.vmis.lock() {
        *slot = Some(vmi_controller.store());
    }
    let launchers = || wc().labels(&format!("{VIRT_LAUNCHER_LABEL}={VIRT_LAUNCHER_VALUE}"));
    let kubelet = Controller::new(pods.clone(), launchers()).run(
        reconcile_launcher,
        error_policy,
        Arc::new(client.clone()),
    );
    let vmi_controller = vmi_controller
        .owns(pods, launchers())
        .watches(vms, wc(), |vm| {
            vm.namespace()
                .map(|ns| ObjectRef::new(&vm.name_any()).within(&ns))
        })
        .run(reconcile_vmi, error_policy, ctx);

    tokio::join!(
        drain("kubevirt-vm", vm_controller),
        drain("kubevirt-vmi", vmi_controller),
        drain("kubevirt-launcher-kubelet", kubelet),
    );
    Ok(())
}

/// The infra kubelet's part for virt-launcher pods: a pod being deleted
/// (by virt-controller, the garbage collector or anyone) has its container
/// stopped at once, and the deletion is finished with grace period 0 for
/// that very pod, as kubelet confirms a graceful deletion.
async fn reconcile_launcher(pod: Arc<Pod>, client: Arc<Client>) -> Result<Action, Error> {
    if !is_deleting(&*pod) {
        return Ok(Action::await_change());
    }
    let pods: Api<Pod> = Api::namespaced((*client).clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        // Gone, or a new pod of that name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Creates each infra Node that does not exist yet, Ready, with zone/region labels.
pub async fn ensure_nodes(client: &Client, nodes: &[InfraNode]) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        if not_found_ok(api.get(&node.name).await)?.is_some() {
            continue;
        }
        let desired = desired_node(node);
        api.create(&PostParams::default(), &desired).await?;
        // A real API server drops status on create; write it separately.
        api.patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": desired.status})),
        )
        .await?;
    }
    Ok(())
}

/// The Node object of an infra node.
pub fn desired_node(node: &InfraNode) -> Node {
    let quantity = |s: &str| Quantity(s.to_string());
    let resources = BTreeMap::from([
        ("cpu".to_string(), quantity("32")),
        ("memory".to_string(), quantity("128Gi")),
        ("pods".to_string(), quantity("250")),
        ("devices.kubevirt.io/kvm".to_string(), quantity("1k")),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), node.name.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubevirt.io/schedulable".to_string(), "true".to_string()),
                (ZONE_LABEL.to_string(), node.zone.clone()),
                (REGION_LABEL.to_string(), node.region.clone()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_string(),
                    address: node.address.clone(),
                },
                NodeAddress {
                    type_: "Hostname".to_string(),
                    address: node.name.clone(),
                },
            ]),
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_string(),
                status: "True".to_string(),
                reason: Some("KubeletReady".to_string()),
                message: Some("kubelet is posting ready status".to_string()),
                last_heartbeat_time: Some(now()),
                last_transition_time: Some(now()),
            }]),
            ..NodeStatus::default()
        }),
    }
}

// === VirtualMachine ===

/// KubeVirt run strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Once,
    Manual,
    Halted,
}

/// The run strategy of a VM spec (`running: true|false` maps to Always|Halted).
pub fn run_strategy(spec: &VirtualMachineSpec) -> RunStrategy {
    match (spec.run_strategy.as_deref(), spec.running) {
        (Some("Always"), _) => RunStrategy::Always,
        (Some("RerunOnFailure"), _) => RunStrategy::RerunOnFailure,
        (Some("Once"), _) => RunStrategy::Once,
        (Some("Manual"), _) => RunStrategy::Manual,
        (Some(_), _) => RunStrategy::Halted,
        (None, Some(true)) => RunStrategy::Always,
        (None, _) => RunStrategy::Halted,
    }
}

async fn reconcile_vm(vm: Arc<VirtualMachine>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if is_deleting(&*vm) {
        return Ok(Action::await_change());
    }
    let ns = vm
        .namespace()
        .ok_or_else(|| Error::missing("VirtualMachine", vm.name_any(), "namespace"))?;
    let name = vm.name_any();
    let uid = vm.uid().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let vmi = not_found_ok(vmis.get(&name).await)?.filter(|vmi| is_controlled_by(vmi, &uid));
    let strategy = run_strategy(&vm.spec);

    let provisioning = ensure_data_volumes(&vm, &ctx.client, &ns).await?;
    // `Once` runs a single VMI: one that existed before is not replaced.
    let ran_once =
        strategy == RunStrategy::Once && vm.status.as_ref().and_then(|s| s.created) == Some(true);
    let vmi = match (&vmi, strategy) {
        (None, RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once)
            if !provisioning && !ran_once =>
        {
            let desired = desired_vmi(&vm)?;
            tracing::info!(vm = %key(&*vm), "starting VMI");
            Some(vmis.create(&PostParams::default(), &desired).await?)
        }
        (Some(current), _) if !is_deleting(current) && should_stop(strategy, current.phase()) => {
            tracing::info!(vm = %key(&*vm), ?strategy, phase = current.phase(), "stopping VMI");
            ignore_not_found(vmis.delete(&name, &DeleteParams::background()).await)?;
            vmi
        }
        _ => vmi,
    };

    let status = desired_vm_status(&vm, vmi.as_ref(), strategy, provisioning);
    if vm.status.as_ref() != Some(&status) {
        let mut updated = (*vm).clone();
        updated.status = Some(status);
        vms.replace_status(&name, &PostParams::default(), &updated)
            .await?;
    }
    Ok(Action::await_change())
}

/// Whether a running VMI must go: the VM is halted, or it finished and the
/// strategy restarts it (deleting it makes room for the new one).
fn should_stop(strategy: RunStrategy, vmi_phase: &str) -> bool {
    let finished = vmi_phase == phase::SUCCEEDED || vmi_phase == phase::FAILED;
    match strategy {
        RunStrategy::Halted => true,
        RunStrategy::Always => finished,
        RunStrategy::RerunOnFailure => vmi_phase == phase::FAILED,
        RunStrategy::Once | RunStrategy::Manual => false,
    }
}

/// Creates the VM's DataVolume templates; `true` while a DataVolume the
/// template boots from is not Succeeded yet.
async fn ensure_data_volumes(
    vm: &VirtualMachine,
    client: &Client,
    ns: &str,
) -> Result<bool, Error> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    for template in &vm.spec.data_volume_templates {
        let Some(name) = template.metadata.name.clone() else {
            continue;
        };
        if not_found_ok(dvs.get(&name).await)?.is_none() {
            let mut dv = DataVolume::new(&name, template.spec.clone());
            dv.metadata.namespace = Some(ns.to_string());
            dv.metadata.labels = template.metadata.labels.clone();
            dv.metadata.annotations = template.metadata.annotations.clone();
            dv.metadata.owner_references = controller_ref(vm).map(|r| vec![r]);
            dvs.create(&PostParams::default(), &dv).await?;
        }
    }
    for volume in vm
        .template_volumes()
        .iter()
        .filter(|v| !v.is_hotpluggable())
    {
        let Some(source) = &volume.data_volume else {
            continue;
        };
        let ready =
            not_found_ok(dvs.get(&source.name).await)?.is_some_and(|dv| dv.phase() == "Succeeded");
        if !ready {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The VMI a VM starts: its template's labels (plus the VM's name), annotations and spec.
pub fn desired_vmi(vm: &VirtualMachine) -> Result<VirtualMachineInstance, Error> {
    let template = vm.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let owner = controller_ref(vm)
        .ok_or_else(|| Error::missing("VirtualMachine", key(vm), "metadata.uid"))?;
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(VM_NAME_LABEL.to_string(), vm.name_any());
    labels.insert(CREATED_BY_LABEL.to_string(), vm.uid().unwrap_or_default());
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        "kubevirt.io/latest-observed-api-version".into(),
        "v1".into(),
    );
    annotations.insert(
        "kubevirt.io/storage-observed-api-version".into(),
        "v1".into(),
    );
    let mut vmi = VirtualMachineInstance::new(&vm.name_any(), template.spec);
    vmi.metadata.namespace = vm.namespace();
    vmi.metadata.labels = Some(labels);
    vmi.metadata.annotations = Some(annotations);
    vmi.metadata.owner_references = Some(vec![owner]);
    vmi.metadata.finalizers = Some(vec![VMI_FINALIZER.to_string()]);
    Ok(vmi)
}

/// The VM status for its VMI: created/ready/printableStatus, and the volume
/// requests that are not reflected in the template yet.
pub fn desired_vm_status(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    strategy: RunStrategy,
    provisioning: bool,
) -> VirtualMachineStatus {
    let mut status = vm.status.clone().unwrap_or_default();
    let running = vmi.is_some_and(|v| v.phase() == phase::RUNNING && !is_deleting(v));
    status.created = Some(vmi.is_some());
    status.ready = Some(running);
    status.observed_generation = vm.metadata.generation;
    status.printable_status = Some(
        match vmi {
            _ if is_deleting(vm) => "Terminating",
            None if provisioning => "Provisioning",
            None if matches!(strategy, RunStrategy::Halted | RunStrategy::Manual) => "Stopped",
            None => "Starting",
            Some(v) if is_deleting(v) => "Stopping",
            Some(v) if v.phase() == phase::RUNNING => "Running",
            Some(v) if v.phase() == phase::SUCCEEDED || v.phase() == phase::FAILED => "Stopped",
            Some(_) => "Starting",
        }
        .to_string(),
    );
    status
        .volume_requests
        .retain(|request| !volume_request_done(vm, request));
    status
}

/// Whether an add/remove volume request is already reflected in the VM template.
fn volume_request_done(vm: &VirtualMachine, request: &Value) -> bool {
    let name_of = |field: &str| {
        request
            .get(field)
            .and_then(|o| o.get("name"))
            .and_then(Value::as_str)
    };
    match (name_of("addVolumeOptions"), name_of("removeVolumeOptions")) {
        (Some(name), _) => vm.has_volume(name),
        (None, Some(name)) => !vm.has_volume(name),
        (None, None) => true,
    }
}

// === VirtualMachineInstance ===

async fn reconcile_vmi(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = vmi
        .namespace()
        .ok_or_else(|| Error::missing("VirtualMachineInstance", vmi.name_any(), "namespace"))?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&vmis, VMI_FINALIZER, vmi, |event| async {
        match event {
            Finalizer::Apply(vmi) => run_vmi(&vmi, &ctx).await,
            Finalizer::Cleanup(vmi) => stop_vmi(&vmi, &ctx).await,
        }
    })
    .await
    .map_err(Error::from)
}

async fn run_vmi(stale: &VirtualMachineInstance, ctx: &Ctx) -> Result<Action, Error> {
    let ns = stale.namespace().unwrap_or_default();
    let name = stale.name_any();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    // Act on the current object, not the possibly stale cached one.
    let Some(vmi) = not_found_ok(vmis.get(&name).await)? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&vmi) {
        return Ok(Action::await_change());
    }
    if let Some(owner) = controller_of(&vmi, "VirtualMachine") {
        let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        let alive = not_found_ok(vms.get(&owner.name).await)?
            .is_some_and(|vm| vm.metadata.uid.as_deref() == Some(owner.uid.as_str()));
        if !alive {
            tracing::info!(vmi = %key(&vmi), "VirtualMachine gone, deleting its VMI");
            ignore_not_found(vmis.delete(&name, &DeleteParams::background()).await)?;
            return Ok(Action::await_change());
        }
    }
    let current = vmi.phase().to_string();
    if current == phase::SUCCEEDED || current == phase::FAILED {
        return Ok(Action::await_change());
    }
    let uid = vmi
        .uid()
        .ok_or_else(|| Error::missing("VirtualMachineInstance", key(&vmi), "metadata.uid"))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = launcher_pods(&pods, &uid).await?;

    if current == phase::RUNNING && existing.is_empty() {
        tracing::warn!(vmi = %key(&vmi), "virt-launcher pod gone, VMI failed");
        let patch = json!({"status": {"phase": phase::FAILED, "reason": "PodDeleted"}});
        vmis.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::await_change());
    }

    let node = match vmi.status.as_ref().and_then(|s| s.node_name.clone()) {
        Some(node) => node,
        None => schedule(&vmi, ctx).await?,
    };
    let addresses = allocate(&vmi, ctx)?;
    let node_ip = node_address(&ctx.client, &node).await?;
    let pod = match existing.into_iter().next() {
        Some(pod) => pod,
        None => {
            let desired = desired_launcher_pod(&vmi, &node, &ctx.cfg.launcher_image)?;
            pods.create(&PostParams::default(), &desired).await?
        }
    };
    let pod_status =
        desired_launcher_status(&addresses, node_ip.as_deref(), &ctx.cfg.launcher_image);
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": pod_status})),
        )
        .await?;
    }
    let mut status = desired_vmi_status(
        &node,
        &addresses,
        pod.uid().as_deref(),
        &ctx.cfg.launcher_image,
    );
    // The guest agent reports the interfaces from then on: addresses that
    // changed after boot are the guest's, not ours to put back.
    if let Some(reported) = vmi.status.as_ref().filter(|s| !s.interfaces.is_empty()) {
        status.interfaces = reported.interfaces.clone();
    }
    if !status_matches(vmi.status.as_ref(), &status) {
        // Only over the object just read: a phase written meanwhile (the VMI
        // failed, say) is never overwritten with Running. A conflict retries.
        vmis.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"resourceVersion": vmi.resource_version()},
                "status": status,
            })),
        )
        .await?;
        tracing::info!(vmi = %key(&vmi), node = %node, ip = %addresses.v4, "VMI running");
    }
    Ok(Action::await_change())
}

async fn stop_vmi(vmi: &VirtualMachineInstance, ctx: &Ctx) -> Result<Action, Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    if vmi.phase() != phase::SUCCEEDED && vmi.phase() != phase::FAILED {
        let patch = json!({"status": {"phase": phase::SUCCEEDED}});
        ignore_not_found(
            vmis.patch_status(
                &vmi.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
        )?;
    }
    if let Some(uid) = vmi.uid() {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for pod in launcher_pods(&pods, &uid).await? {
            ignore_not_found(pods.delete(&pod.name_any(), &DeleteParams::default()).await)?;
        }
    }
    tracing::info!(vmi = %key(vmi), "VMI stopped");
    Ok(Action::await_change())
}

async fn launcher_pods(pods: &Api<Pod>, vmi_uid: &str) -> Result<Vec<Pod>, Error> {
    let selector =
        format!("{VIRT_LAUNCHER_LABEL}={VIRT_LAUNCHER_VALUE},{CREATED_BY_LABEL}={vmi_uid}");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.into_iter().filter(|p| !is_deleting(p)).collect())
}

/// Picks the next schedulable node (round-robin) matching the VMI's nodeSelector.
async fn schedule(vmi: &VirtualMachineInstance, ctx: &Ctx) -> Result<String, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut candidates: Vec<Node> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| schedulable(n, vmi.spec.node_selector.as_ref()))
        .collect();
    candidates.sort_by_key(|n| n.name_any());
    if candidates.is_empty() {
        return Err(Error::NotReady(format!(
            "no schedulable infra node for {}",
            key(vmi)
        )));
    }
    let i = ctx.next_node.fetch_add(1, Ordering::Relaxed) % candidates.len();
    Ok(candidates[i].name_any())
}

fn schedulable(node: &Node, selector: Option<&BTreeMap<String, String>>) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let labels = node.labels();
    let matches = selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    ready && !cordoned && matches
}

async fn node_address(client: &Client, node: &str) -> Result<Option<String>, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(not_found_ok(nodes.get(node).await)?.and_then(|n| {
        n.status?
            .addresses?
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
    }))
}

/// The VMI's addresses: those in its status, or fresh ones from the pools.
fn allocate(vmi: &VirtualMachineInstance, ctx: &Ctx) -> Result<Addresses, Error> {
    if let Some(existing) = vmi_addresses(vmi) {
        return Ok(existing);
    }
    let uid = vmi.uid().unwrap_or_default();
    let store = ctx.vmis.lock().ok().and_then(|s| s.clone());
    let known: Vec<Arc<VirtualMachineInstance>> = store.map(|s| s.state()).unwrap_or_default();
    let live: HashSet<String> = known.iter().filter_map(|v| v.uid()).collect();
    let mut pending = ctx
        .pending
        .lock()
        .map_err(|_| Error::NotReady("address allocator poisoned".into()))?;
    pending.retain(|uid_, _| live.contains(uid_) || *uid_ == uid);
    if let Some(a) = pending.get(&uid) {
        return Ok(a.clone());
    }
    let mut used: HashSet<IpAddr> = known
        .iter()
        .filter_map(|v| vmi_addresses(v))
        .flat_map(|a| [a.v4, a.v6])
        .collect();
    used.extend(pending.values().flat_map(|a| [a.v4, a.v6]));
    let mut handed_out = ctx
        .handed_out
        .lock()
        .map_err(|_| Error::NotReady("address allocator poisoned".into()))?;
    used.extend(handed_out.iter().copied());
    let v4 = ctx
        .v4
        .first_free(&used)
        .ok_or_else(|| Error::Exhausted(format!("pod network {}", ctx.v4.cidr())))?;
    let v6 = ctx
        .v6
        .first_free(&used)
        .ok_or_else(|| Error::Exhausted(format!("pod network {}", ctx.v6.cidr())))?;
    let a = Addresses { v4, v6 };
    handed_out.extend([v4, v6]);
    pending.insert(uid, a.clone());
    Ok(a)
}

/// The addresses of the `default` interface in a VMI's status.
pub fn vmi_addresses(vmi: &VirtualMachineInstance) -> Option<Addresses> {
    let iface = vmi
        .status
        .as_ref()?
        .interfaces
        .iter()
        .find(|i| i.name.as_deref() == Some("default"))?;
    let ips: Vec<IpAddr> = iface
        .ip_addresses
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    Some(Addresses {
        v4: *ips.iter().find(|ip| ip.is_ipv4())?,
        v6: *ips.iter().find(|ip| ip.is_ipv6())?,
    })
}

/// The virt-launcher pod of a VMI on `node`.
pub fn desired_launcher_pod(
    vmi: &VirtualMachineInstance,
    node: &str,
    image: &str,
) -> Result<Pod, Error> {
    let owner = controller_ref(vmi)
        .ok_or_else(|| Error::missing("VirtualMachineInstance", key(vmi), "metadata.uid"))?;
    let mut labels = vmi.labels().clone();
    labels.insert(
        VIRT_LAUNCHER_LABEL.to_string(),
        VIRT_LAUNCHER_VALUE.to_string(),
    );
    labels.insert(CREATED_BY_LABEL.to_string(), vmi.uid().unwrap_or_default());
    labels.insert(VM_NAME_LABEL.to_string(), vmi.name_any());
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(format!(
                "virt-launcher-{}-{}",
                vmi.name_any(),
                random_suffix(5)
            )),
            namespace: vmi.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                ("kubevirt.io/domain".to_string(), vmi.name_any()),
                (
                    "kubectl.kubernetes.io/default-container".to_string(),
                    "compute".to_string(),
                ),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            hostname: Some(launcher_hostname(&vmi.name_any())),
            restart_policy: Some("Never".to_string()),
            containers: vec![Container {
                name: "compute".to_string(),
                image: Some(image.to_string()),
                command: Some(vec!["/usr/bin/virt-launcher-monitor".to_string()]),
                // virt-controller requests CPU and memory for the launcher
                // and sets no limits: kube-apiserver makes it Burstable.
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("100m".to_string())),
                        ("memory".to_string(), Quantity("256Mi".to_string())),
                    ])),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The launcher pod's hostname, as KubeVirt sanitizes it: the VMI name up
/// to its first dot (a pod hostname is one DNS label), at most 63 bytes.
pub fn launcher_hostname(vmi_name: &str) -> String {
    let label = vmi_name.split('.').next().unwrap_or(vmi_name);
    label.chars().take(63).collect()
}

/// A Running, Ready virt-launcher pod status with the VMI's addresses.
pub fn desired_launcher_status(
    addresses: &Addresses,
    host_ip: Option<&str>,
    image: &str,
) -> PodStatus {
    let condition = |type_: &str| PodCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    };
    PodStatus {
        phase: Some("Running".to_string()),
        pod_ip: Some(addresses.v4.to_string()),
        pod_ips: Some(vec![
            PodIP {
                ip: addresses.v4.to_string(),
            },
            PodIP {
                ip: addresses.v6.to_string(),
            },
        ]),
        host_ip: host_ip.map(str::to_string),
        conditions: Some(
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            ]
            .into_iter()
            .map(condition)
            .collect(),
        ),
        container_statuses: Some(vec![ContainerStatus {
            name: "compute".to_string(),
            image: image.to_string(),
            image_id: image.to_string(),
            ready: true,
            restart_count: 0,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        start_time: Some(now()),
        ..PodStatus::default()
    }
}

/// The status of a running VMI.
pub fn desired_vmi_status(
    node: &str,
    addresses: &Addresses,
    pod_uid: Option<&str>,
    image: &str,
) -> VirtualMachineInstanceStatus {
    let mut extra = BTreeMap::new();
    extra.insert(
        "conditions".to_string(),
        json!([{"type": "Ready", "status": "True"},
               {"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable"}]),
    );
    if let Some(uid) = pod_uid {
        extra.insert("activePods".to_string(), json!({uid: node}));
    }
    extra.insert("launcherContainerImageVersion".to_string(), json!(image));
    extra.insert("qosClass".to_string(), json!("Burstable"));
    extra.insert("guestOSInfo".to_string(), json!({}));
    VirtualMachineInstanceStatus {
        phase: Some(phase::RUNNING.to_string()),
        node_name: Some(node.to_string()),
        interfaces: vec![VmiInterface {
            name: Some("default".to_string()),
            ip_address: Some(addresses.v4.to_string()),
            ip_addresses: vec![addresses.v4.to_string(), addresses.v6.to_string()],
            mac: Some(mac_for(&addresses.v4)),
            interface_name: Some("eth0".to_string()),
            extra: BTreeMap::from([("infoSource".to_string(), json!("domain, guest-agent"))]),
        }],
        volume_status: Vec::new(),
        extra,
    }
}

/// Whether `current` already carries everything `desired` sets (volume status
/// belongs to the hotplug controller and is ignored).
fn status_matches(
    current: Option<&VirtualMachineInstanceStatus>,
    desired: &VirtualMachineInstanceStatus,
) -> bool {
    let Some(current) = current else { return false };
    current.phase == desired.phase
        && current.node_name == desired.node_name
        && current.interfaces == desired.interfaces
        && desired
            .extra
            .iter()
            .all(|(k, v)| current.extra.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(spec: Value) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "demo-worker-0", "namespace": "infra", "uid": "vm-uid"},
            "spec": spec
        }))
        .expect("valid VM")
    }

    #[test]
    fn run_strategies() {
        let s = |v: Value| run_strategy(&vm(v).spec);
        assert_eq!(s(json!({"runStrategy": "Always"})), RunStrategy::Always);
        assert_eq!(s(json!({"runStrategy": "Halted"})), RunStrategy::Halted);
        assert_eq!(s(json!({"running": true})), RunStrategy::Always);
        assert_eq!(s(json!({"running": false})), RunStrategy::Halted);
        assert_eq!(s(json!({})), RunStrategy::Halted);
        assert!(should_stop(RunStrategy::Halted, phase::RUNNING));
        assert!(should_stop(RunStrategy::Always, phase::FAILED));
        assert!(!should_stop(RunStrategy::Always, phase::RUNNING));
        assert!(!should_stop(RunStrategy::RerunOnFailure, phase::SUCCEEDED));
    }

    #[test]
    fn vmi_comes_from_the_template() -> Result<(), Error> {
        let vm = vm(json!({
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"cluster.x-k8s.io/role": "worker"}, "annotations": {"a": "b"}},
                "spec": {"domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                         "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]}
            }
        }));
        let vmi = serde_json::to_value(desired_vmi(&vm)?)?;
        assert_eq!(vmi["metadata"]["name"], "demo-worker-0");
        assert_eq!(vmi["metadata"]["labels"]["cluster.x-k8s.io/role"], "worker");
        assert_eq!(vmi["metadata"]["labels"][VM_NAME_LABEL], "demo-worker-0");
        assert_eq!(vmi["metadata"]["annotations"]["a"], "b");
        assert_eq!(vmi["metadata"]["ownerReferences"][0]["uid"], "vm-uid");
        assert_eq!(vmi["spec"]["volumes"][0]["containerDisk"]["image"], "x");
        assert_eq!(vmi["metadata"]["finalizers"], json!([VMI_FINALIZER]));
        Ok(())
    }

    #[test]
    fn launcher_pod_carries_labels_node_and_addresses() -> Result<(), Error> {
        let mut vmi = desired_vmi(&vm(
            json!({"template": {"metadata": {"labels": {"app": "x"}}}}),
        ))?;
        vmi.metadata.uid = Some("vmi-uid".into());
        let pod = desired_launcher_pod(&vmi, "infra-node-1", "img")?;
        let name = pod.name_any();
        assert!(
            name.starts_with("virt-launcher-demo-worker-0-")
                && name.len() == "virt-launcher-demo-worker-0-".len() + 5
        );
        let labels = pod.labels();
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(
            labels.get(VIRT_LAUNCHER_LABEL).map(String::as_str),
            Some("virt-launcher")
        );
        assert_eq!(
            labels.get(CREATED_BY_LABEL).map(String::as_str),
            Some("vmi-uid")
        );
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("infra-node-1")
        );

        let a = Addresses {
            v4: "10.128.0.7".parse().expect("ip"),
            v6: "fd10:128::7".parse().expect("ip"),
        };
        let st = desired_launcher_status(&a, Some("192.168.100.10"), "img");
        assert_eq!(st.pod_ip.as_deref(), Some("10.128.0.7"));
        assert_eq!(launcher_hostname("pool-a.worker-9"), "pool-a");
        assert_eq!(launcher_hostname(&"w".repeat(70)).len(), 63);
        assert_eq!(st.pod_ips.as_ref().map(Vec::len), Some(2));
        let vs = desired_vmi_status("infra-node-1", &a, Some("pod-uid"), "img");
        let iface = &vs.interfaces[0];
        assert_eq!(iface.ip_addresses, ["10.128.0.7", "fd10:128::7"]);
        assert_eq!(iface.interface_name.as_deref(), Some("eth0"));
        let mut vmi2 = vmi.clone();
        vmi2.status = Some(vs.clone());
        assert_eq!(vmi_addresses(&vmi2), Some(a));
        assert!(status_matches(Some(&vs), &vs));
        Ok(())
    }

    #[test]
    fn vm_status_prunes_done_volume_requests() {
        let mut v = vm(json!({
            "runStrategy": "Always",
            "template": {"spec": {"volumes": [{"name": "pvc-a", "dataVolume": {"name": "pvc-a", "hotpluggable": true}}]}}
        }));
        v.status = Some(VirtualMachineStatus {
            volume_requests: vec![
                json!({"addVolumeOptions": {"name": "pvc-a"}}),
                json!({"addVolumeOptions": {"name": "pvc-b"}}),
                json!({"removeVolumeOptions": {"name": "pvc-c"}}),
            ],
            ..Default::default()
        });
        let s = desired_vm_status(&v, None, RunStrategy::Always, false);
        assert_eq!(
            s.volume_requests,
            vec![json!({"addVolumeOptions": {"name": "pvc-b"}})]
        );
        assert_eq!(s.printable_status.as_deref(), Some("Starting"));
        assert_eq!(s.created, Some(false));
    }
}
