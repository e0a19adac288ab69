//! The EndpointSlice controller (`kubevirt-eps`): for every selectorless
//! infra Service of ours, infra EndpointSlices that send traffic only to the
//! VMIs whose guest nodes run a ready endpoint of the tenant Service.
//!
//! Keyed by the guest Service. Everything it reads comes from watch caches:
//! guest slices (which nodes host endpoints), guest nodes (node -> VMI via
//! providerID), VMIs (their addresses), the infra Service and our infra
//! slices, the latter selected by our labels so tenants sharing an infra
//! namespace never see each other's slices.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachineInstance;

use crate::endpoints::{SERVICE_NAME_LABEL, desired_slices, hosting_nodes, plan};
use crate::error::{Error, Result, status_code};
use crate::instances::vmi_name_for_node;
use crate::loadbalancer::{infra_service_name, is_managed, tenant_service_of};

pub const NAME: &str = "kubevirt-eps";
pub const ACTION: &str = "SyncEndpointSlices";

/// Everything the EndpointSlice controller reads and writes.
pub struct Context {
    pub infra: Client,
    pub namespace: String,
    pub infra_services: Store<Service>,
    /// Our infra slices (label-selected).
    pub infra_slices: Store<EndpointSlice>,
    /// Guest slices, trimmed to node names and readiness.
    pub guest_slices: Store<EndpointSlice>,
    pub guest_nodes: Store<Node>,
    pub vmis: Store<VirtualMachineInstance>,
}

impl Context {
    /// The VMI behind a guest node name.
    fn vmi_of_node(&self, node_name: &str) -> Option<Arc<VirtualMachineInstance>> {
        let vmi_name = self
            .guest_nodes
            .get(&ObjectRef::new(node_name))
            .map_or_else(|| node_name.to_string(), |n| vmi_name_for_node(&n));
        self.vmis
            .get(&ObjectRef::new(&vmi_name).within(&self.namespace))
    }
}

/// The guest slices of a guest Service.
pub fn slices_of(store: &Store<EndpointSlice>, ns: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
    store.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns)
            && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
    })
}

/// Reconcile the infra slices of one guest Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let Some(uid) = svc.metadata.uid.as_deref() else {
        return Ok(Action::await_change());
    };
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let infra_name = infra_service_name(uid);

    let desired = match ctx
        .infra_services
        .get(&ObjectRef::new(&infra_name).within(&ctx.namespace))
    {
        Some(infra)
            if is_managed(&svc)
                && svc.metadata.deletion_timestamp.is_none()
                && tenant_service_of(&infra.metadata) == Some((ns.clone(), name.clone())) =>
        {
            let guest_slices = slices_of(&ctx.guest_slices, &ns, &name);
            let hosts: Vec<Arc<VirtualMachineInstance>> =
                hosting_nodes(guest_slices.iter().map(|s| &**s))
                    .iter()
                    .filter_map(|node| ctx.vmi_of_node(node))
                    .collect();
            let hosts: Vec<&VirtualMachineInstance> = hosts.iter().map(|v| &**v).collect();
            desired_slices(&infra, &svc, &hosts)
        }
        _ => Vec::new(),
    };
    let existing = slices_of(&ctx.infra_slices, &ctx.namespace, &infra_name);
    let existing: Vec<&EndpointSlice> = existing.iter().map(|s| &**s).collect();
    let plan = plan(&existing, desired);
    if plan.is_empty() {
        return Ok(Action::await_change());
    }

    let api: Api<EndpointSlice> = Api::namespaced(ctx.infra.clone(), &ctx.namespace);
    let recreated: Vec<&String> = plan
        .delete
        .iter()
        .filter(|n| {
            plan.create
                .iter()
                .any(|c| c.metadata.name.as_ref() == Some(*n))
        })
        .collect();
    for slice in &recreated {
        delete(&api, slice).await?;
    }
    for slice in &plan.create {
        let slice_name = slice.name_any();
        match api.create(&PostParams::default(), slice).await {
            Ok(_) => {}
            // Written by a previous run our cache has not seen yet.
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => return Err(Error::kube("create", format!("EndpointSlice {slice_name}"))(e)),
        }
    }
    for (slice_name, patch) in &plan.update {
        api.patch(slice_name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("update", format!("EndpointSlice {slice_name}")))?;
    }
    for slice in plan.delete.iter().filter(|n| !recreated.contains(n)) {
        delete(&api, slice).await?;
    }
    tracing::info!(
        service = %format!("{ns}/{name}"),
        infra_service = %infra_name,
        created = plan.create.len(),
        updated = plan.update.len(),
        deleted = plan.delete.len(),
        "infra EndpointSlices synced"
    );
    Ok(Action::await_change())
}

async fn delete(api: &Api<EndpointSlice>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(Error::kube("delete", format!("EndpointSlice {name}"))(e)),
    }
}
