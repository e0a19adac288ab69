//! The cloud-node controller (InstancesV2): initializes guest nodes that
//! carry the uninitialized taint (providerID, addresses, instance type,
//! zone and region, then the taint removed) and keeps the addresses of our
//! nodes equal to their VMI's as it changes (the VMI watch triggers it).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachineInstance;

use crate::error::{Error, Result};
use crate::instances::{
    REGION_LABEL, UNINITIALIZED_TAINT, ZONE_LABEL, addresses_patch, has_taint, initialize_patch,
    instance_labels, is_foreign, node_addresses, vmi_name_for_node,
};

pub const NAME: &str = "cloud-node";
pub const ACTION: &str = "InitializeNode";

/// Everything the node controller reads and writes.
pub struct Context {
    pub guest: Client,
    pub infra: Client,
    pub namespace: String,
    pub vmis: Store<VirtualMachineInstance>,
    /// Read zone and region from the VMI's infra node.
    pub zone_and_region: bool,
}

/// Reconcile one guest node.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    if is_foreign(&node) {
        return Ok(Action::await_change());
    }
    let uninitialized = has_taint(&node, UNINITIALIZED_TAINT);
    let has_provider_id = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .is_some_and(|p| !p.is_empty());
    if !uninitialized && !has_provider_id {
        // Not ours to initialize, and not initialized by us.
        return Ok(Action::await_change());
    }
    let vmi_name = vmi_name_for_node(&node);
    let Some(vmi) = ctx
        .vmis
        .get(&ObjectRef::new(&vmi_name).within(&ctx.namespace))
    else {
        return if uninitialized {
            Err(Error::InstanceNotFound(vmi_name))
        } else {
            // The lifecycle controller handles nodes whose VMI is gone.
            Ok(Action::await_change())
        };
    };

    let api: Api<Node> = Api::all(ctx.guest.clone());
    let name = node.name_any();
    let mut node = node;
    if let Some(patch) = addresses_patch(&node, &node_addresses(&node, &vmi)) {
        let written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("update addresses of", format!("Node {name}")))?;
        tracing::info!(node = %name, "addresses updated");
        node = Arc::new(written);
    }
    if !uninitialized {
        return Ok(Action::await_change());
    }

    let (zone, region) = if ctx.zone_and_region {
        topology(&vmi, &ctx).await?
    } else {
        (None, None)
    };
    let labels = instance_labels(&vmi, zone.as_deref(), region.as_deref());
    let patch = initialize_patch(&node, &vmi_name, &labels);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("initialize", format!("Node {name}")))?;
    tracing::info!(node = %name, vmi = %vmi_name, "node initialized");
    Ok(Action::await_change())
}

/// Zone and region labels of the infra node running the VMI.
async fn topology(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> Result<(Option<String>, Option<String>)> {
    let host = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::InstanceNotScheduled(vmi.name_any()))?;
    let infra_nodes: Api<Node> = Api::all(ctx.infra.clone());
    let Some(host_node) = infra_nodes
        .get_opt(&host)
        .await
        .map_err(Error::kube("get", format!("infra Node {host}")))?
    else {
        tracing::warn!(infra_node = %host, "infra node not found; no zone or region");
        return Ok((None, None));
    };
    let label = |key: &str| host_node.labels().get(key).cloned();
    Ok((label(ZONE_LABEL), label(REGION_LABEL)))
}
