//! The cloud-node-lifecycle controller: a guest node whose VM is gone is
//! deleted; a node whose VMI finished (Succeeded or Failed) gets the
//! shutdown taint, removed again when the VMI runs.
//!
//! Only nodes with our providerID are considered. A missing VMI is confirmed
//! with a direct read before anything happens, so a lagging or misconfigured
//! cache can never empty the cluster; and while the VirtualMachine of that
//! name still exists the node is kept, since the VMI is only being replaced
//! (a restart) and the same machine comes back.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};

use crate::controllers::notice;
use crate::error::{Error, Result, status_code};
use crate::instances::{is_shut_down, shutdown_taint_patch, vmi_of_provider_id};

pub const NAME: &str = "cloud-node-lifecycle";
pub const ACTION: &str = "NodeLifecycle";

/// How often a node whose VMI is gone but whose VM remains is looked at again.
const VM_RECHECK: Duration = Duration::from_secs(30);

/// Everything the lifecycle controller reads and writes.
pub struct Context {
    pub guest: Client,
    pub infra: Client,
    pub namespace: String,
    pub vmis: Store<VirtualMachineInstance>,
    pub recorder: Recorder,
}

/// Reconcile one guest node.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let Some(vmi_name) = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(vmi_of_provider_id)
        .map(str::to_string)
    else {
        return Ok(Action::await_change());
    };
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.guest.clone());

    if let Some(vmi) = ctx
        .vmis
        .get(&ObjectRef::new(&vmi_name).within(&ctx.namespace))
    {
        if let Some(patch) = shutdown_taint_patch(&node, is_shut_down(&vmi)) {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::kube("update taints of", format!("Node {name}")))?;
            tracing::info!(node = %name, phase = vmi.phase(), "shutdown taint updated");
        }
        return Ok(Action::await_change());
    }

    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.infra.clone(), &ctx.namespace);
    if vmis
        .get_opt(&vmi_name)
        .await
        .map_err(Error::kube(
            "get",
            format!("VirtualMachineInstance {vmi_name}"),
        ))?
        .is_some()
    {
        // The cache is behind; its event will bring us back.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.infra.clone(), &ctx.namespace);
    let vm = vms
        .get_opt(&vmi_name)
        .await
        .map_err(Error::kube("get", format!("VirtualMachine {vmi_name}")))?;
    if vm.is_some_and(|vm| vm.metadata.deletion_timestamp.is_none()) {
        tracing::debug!(node = %name, vmi = %vmi_name, "VMI gone but its VM remains; keeping the node");
        return Ok(Action::requeue(VM_RECHECK));
    }
    notice(
        &ctx.recorder,
        &*node,
        ACTION,
        "DeletingNode",
        format!("Deleting node {name}: its VirtualMachine(Instance) {vmi_name} no longer exists"),
    )
    .await;
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: node.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => tracing::info!(node = %name, vmi = %vmi_name, "deleted node of a vanished VMI"),
        Err(e) if status_code(&e) == Some(404) => {}
        Err(e) => return Err(Error::kube("delete", format!("Node {name}"))(e)),
    }
    Ok(Action::await_change())
}
