//! The service controller: one infra LoadBalancer Service per guest
//! LoadBalancer Service, kept equal to [`desired_infra_service`] in every
//! managed field, with the infra ingress copied back to the guest status as
//! soon as the infra watch reports it. Cleanup (guest Service deleted, or no
//! longer a LoadBalancer of ours) removes the infra Service and our
//! EndpointSlices, then the finalizer.
//!
//! Writes per new Service: the finalizer and the infra Service create, then
//! one status patch when the ingress arrives. Nothing is written when nothing
//! differs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::endpoints::{
    KCM_MANAGED_BY_VALUE, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SERVICE_NAME_LABEL,
};
use crate::error::{Error, Result, status_code};
use crate::fresh::Fresh;
use crate::loadbalancer::is_selectorless;
use crate::loadbalancer::{
    LOAD_BALANCER_FINALIZER, LbSettings, desired_infra_service, has_finalizer, infra_ingress,
    infra_patch, infra_service_name, is_managed, status_patch, tenant_service_of,
};

pub const NAME: &str = "service";
pub const ACTION: &str = "EnsureLoadBalancer";

/// Everything the service controller reads and writes.
pub struct Context {
    pub guest: Client,
    pub infra: Client,
    pub settings: LbSettings,
    /// Infra Services of this tenant (label-selected).
    pub infra_services: Store<Service>,
    /// Whether our EndpointSlices may exist (the EndpointSlice controller runs).
    pub eps_controller: bool,
    /// How long an infra Service may wait for its ingress before we warn.
    pub pending_warning_after: Duration,
    pub recorder: Recorder,
    pub fresh_guest: Fresh<Service>,
    pub fresh_infra: Fresh<Service>,
    /// Infra Services we already warned about (no ingress in time).
    pub warned: Mutex<HashSet<String>>,
}

impl Context {
    fn infra_api(&self) -> Api<Service> {
        Api::namespaced(self.infra.clone(), &self.settings.namespace)
    }

    fn infra_ref(&self, name: &str) -> ObjectRef<Service> {
        ObjectRef::new(name).within(&self.settings.namespace)
    }

    /// Mark (`true`) or clear the warning for an infra Service; returns
    /// whether it was marked before.
    fn warned(&self, infra_name: &str, mark: bool) -> bool {
        let mut set = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if mark {
            !set.insert(infra_name.to_string())
        } else {
            set.remove(infra_name)
        }
    }

    fn cached_infra(&self, name: &str) -> Option<Arc<Service>> {
        let key = self.infra_ref(name);
        self.fresh_infra.pick(&key, self.infra_services.get(&key))
    }
}

/// Reconcile one guest Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let key = ObjectRef::from_obj(&*svc);
    let svc = ctx.fresh_guest.pick(&key, Some(svc.clone())).unwrap_or(svc);
    if is_managed(&svc) && svc.metadata.deletion_timestamp.is_none() {
        ensure(&svc, &ctx).await
    } else if has_finalizer(&svc.metadata) {
        cleanup(&svc, &ctx).await
    } else {
        Ok(Action::await_change())
    }
}

async fn ensure(svc: &Service, ctx: &Context) -> Result<Action> {
    let desired = desired_infra_service(svc, &ctx.settings)?;
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let guest_api: Api<Service> = Api::namespaced(ctx.guest.clone(), &ns);

    let mut svc = svc.clone();
    if !has_finalizer(&svc.metadata) {
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        finalizers.push(LOAD_BALANCER_FINALIZER.to_string());
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": svc.metadata.resource_version,
        }});
        let written = guest_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(
                "add finalizer to",
                format!("Service {ns}/{name}"),
            ))?;
        svc = (*ctx.fresh_guest.record(written)).clone();
    }

    let infra_name = desired.name_any();
    let infra = match ctx.cached_infra(&infra_name) {
        Some(existing) => update_infra(existing, &desired, ctx).await?,
        None => create_infra(&desired, &svc, ctx).await?,
    };

    let ingress = infra_ingress(&infra);
    if let Some(patch) = status_patch(&svc, ingress) {
        let written = guest_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(
                "update status of",
                format!("Service {ns}/{name}"),
            ))?;
        ctx.fresh_guest.record(written);
        tracing::info!(service = %format!("{ns}/{name}"), ?ingress, "load balancer ingress updated");
    }
    if ingress.is_empty() {
        return Ok(pending(&svc, &infra, ctx).await);
    }
    ctx.warned(&infra_name, false);
    Ok(Action::await_change())
}

async fn update_infra(
    existing: Arc<Service>,
    desired: &Service,
    ctx: &Context,
) -> Result<Arc<Service>> {
    let Some(patch) = infra_patch(&existing, desired, &ctx.settings.annotations) else {
        return Ok(existing);
    };
    let name = desired.name_any();
    tracing::info!(infra_service = %name, %patch, "updating infra Service");
    let written = ctx
        .infra_api()
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("update", format!("infra Service {name}")))?;
    if !is_selectorless(&existing) && is_selectorless(&written) {
        forget_selector_slices(&name, ctx).await?;
    }
    Ok(ctx.fresh_infra.record(written))
}

/// Deletes what the infra cluster wrote for a Service that had a selector.
/// Its controllers leave the Endpoints and EndpointSlices in place when the
/// selector goes, and the EndpointSlice mirroring controller then mirrors
/// the stale Endpoints: traffic would keep going to every VM next to ours
/// (found in the lab after a switch to `externalTrafficPolicy: Local`).
async fn forget_selector_slices(name: &str, ctx: &Context) -> Result<()> {
    let endpoints: Api<Endpoints> = Api::namespaced(ctx.infra.clone(), &ctx.settings.namespace);
    match endpoints.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if status_code(&e) == Some(404) => {}
        Err(e) => return Err(Error::kube("delete", format!("the Endpoints of {name}"))(e)),
    }
    delete_slices(ctx, name, KCM_MANAGED_BY_VALUE).await
}

/// Deletes the EndpointSlices of infra Service `name` in our scope that
/// `managed_by` wrote.
async fn delete_slices(ctx: &Context, name: &str, managed_by: &str) -> Result<()> {
    let mut selector = ctx.settings.scope_labels();
    selector.insert(SERVICE_NAME_LABEL.into(), name.to_string());
    selector.insert(MANAGED_BY_LABEL.into(), managed_by.to_string());
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.infra.clone(), &ctx.settings.namespace);
    let lp = ListParams::default().labels(&kubevirt_infra::labels::selector_string(&selector));
    slices
        .delete_collection(&DeleteParams::default(), &lp)
        .await
        .map_err(Error::kube(
            "delete",
            format!("the EndpointSlices of {name} ({managed_by})"),
        ))?;
    Ok(())
}

async fn create_infra(desired: &Service, svc: &Service, ctx: &Context) -> Result<Arc<Service>> {
    let name = desired.name_any();
    match ctx
        .infra_api()
        .create(&PostParams::default(), desired)
        .await
    {
        Ok(created) => {
            tracing::info!(infra_service = %name, service = %ObjectRef::from_obj(svc), "created infra Service");
            Ok(ctx.fresh_infra.record(created))
        }
        Err(e) if status_code(&e) == Some(409) => {
            // It exists but not in our cache: its labels were changed. Adopt
            // it only if it was made for this very Service.
            let existing = ctx
                .infra_api()
                .get(&name)
                .await
                .map_err(Error::kube("get", format!("infra Service {name}")))?;
            let ours = (svc.namespace().unwrap_or_default(), svc.name_any());
            match tenant_service_of(&existing.metadata) {
                Some(owner) if owner != ours => Err(Error::NameTaken(name)),
                _ => update_infra(Arc::new(existing), desired, ctx).await,
            }
        }
        Err(e) => Err(Error::kube("create", format!("infra Service {name}"))(e)),
    }
}

/// No ingress yet: come back when the warning is due, and warn once it is.
async fn pending(svc: &Service, infra: &Service, ctx: &Context) -> Action {
    let Some(created) = infra.metadata.creation_timestamp.as_ref() else {
        return Action::await_change();
    };
    let age = jiff::Timestamp::now().duration_since(created.0);
    let age = Duration::try_from(age).unwrap_or_default();
    if let Some(left) = ctx
        .pending_warning_after
        .checked_sub(age)
        .filter(|d| !d.is_zero())
    {
        return Action::requeue(left);
    }
    if ctx.warned(&infra.name_any(), true) {
        return Action::await_change();
    }
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "LoadBalancerPending".into(),
        note: Some(format!(
            "infra Service {} has no ingress after {}s",
            infra.name_any(),
            ctx.pending_warning_after.as_secs()
        )),
        action: ACTION.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &svc.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
    Action::await_change()
}

/// Delete the infra Services of ours whose guest Service is gone (its
/// finalizer was removed by hand, or it went while we were not running) or
/// is no longer ours. Guest Services carrying our finalizer are left to
/// `cleanup`. Runs once the caches are filled and after every guest Service
/// deletion; returns how many it deleted.
pub async fn sweep_orphans(ctx: &Context, guest_services: &Store<Service>) -> usize {
    let mut deleted = 0;
    for infra in ctx.infra_services.state() {
        let Some((ns, name)) = tenant_service_of(&infra.metadata) else {
            continue;
        };
        let infra_name = infra.name_any();
        let live = guest_services
            .get(&ObjectRef::new(&name).within(&ns))
            .is_some_and(|g| {
                g.metadata.uid.as_deref().map(infra_service_name).as_deref()
                    == Some(infra_name.as_str())
                    && (is_managed(&g) || has_finalizer(&g.metadata))
            });
        if live {
            continue;
        }
        match ctx
            .infra_api()
            .delete(&infra_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                tracing::info!(infra_service = %infra_name, service = %format!("{ns}/{name}"), "deleted orphaned infra Service");
                deleted += 1;
            }
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => {
                tracing::warn!(infra_service = %infra_name, error = %e, "cannot delete orphaned infra Service")
            }
        }
    }
    deleted
}

async fn cleanup(svc: &Service, ctx: &Context) -> Result<Action> {
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let infra_name = infra_service_name(&uid);

    if let Some(existing) = ctx.cached_infra(&infra_name)
        && tenant_service_of(&existing.metadata) == Some((ns.clone(), name.clone()))
    {
        match ctx
            .infra_api()
            .delete(&infra_name, &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!(infra_service = %infra_name, "deleted infra Service"),
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(Error::kube("delete", format!("infra Service {infra_name}"))(e)),
        }
        ctx.fresh_infra.forget(&ctx.infra_ref(&infra_name));
    }
    ctx.warned(&infra_name, false);
    if ctx.eps_controller {
        delete_slices(ctx, &infra_name, MANAGED_BY_VALUE).await?;
    }

    let guest_api: Api<Service> = Api::namespaced(ctx.guest.clone(), &ns);
    let mut resource_version = svc.metadata.resource_version.clone();
    if svc.metadata.deletion_timestamp.is_none()
        && let Some(patch) = status_patch(svc, &[])
    {
        let written = guest_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(
                "clear status of",
                format!("Service {ns}/{name}"),
            ))?;
        resource_version = written.metadata.resource_version;
    }
    let finalizers: Vec<String> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != LOAD_BALANCER_FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "finalizers": if finalizers.is_empty() { serde_json::Value::Null } else { json!(finalizers) },
        "resourceVersion": resource_version,
    }});
    match guest_api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(written) => {
            ctx.fresh_guest.record(written);
        }
        Err(e) if status_code(&e) == Some(404) => {}
        Err(e) => {
            return Err(Error::kube(
                "remove finalizer from",
                format!("Service {ns}/{name}"),
            )(e));
        }
    }
    tracing::info!(service = %format!("{ns}/{name}"), "load balancer removed");
    Ok(Action::await_change())
}
