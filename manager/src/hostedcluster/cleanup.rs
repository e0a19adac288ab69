//! Deleting a HostedCluster: its NodePools go first (they remove their
//! VMs), then everything labelled with its infra id on the infra cluster
//! (VMs, DataVolumes, VolumeSnapshots, load-balancer Services and their
//! EndpointSlices), the daemons' accounts on an external infra, what the
//! manager put into the guest (best effort: the guest may be gone; nothing
//! for a hosted control plane, which the guest goes with), and the
//! control-plane namespace (with a hosted control plane's etcd and its
//! claims), the hosted admin kubeconfig, and a hosted cluster's keys, user
//! and role in its shared etcd. Waits are watches with a bound; a cleanup that
//! is not finished reports itself pending and is retried.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Resource};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachine;
use kubevirt_infra::snapshot::VolumeSnapshot;

use super::controlplane::credentials;
use super::converge::{guest_kinds, infra_kinds, management_kinds};
use crate::api::{HostedCluster, NodePool};
use crate::apply::Applier;
use crate::clients::key_of;
use crate::context::Context;
use crate::desired::hosted::SharedEtcd;
use crate::desired::owner_selector_of;
use crate::desired::sets::side;
use crate::error::{Error, Result, Target, is_not_found};
use crate::names;
use crate::shared_etcd::{self, EtcdError};

fn ar<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Deletes the cluster's keys, etcd user and role from its shared etcd. A
/// spec that names no usable shared etcd, or credentials that are gone,
/// leave them behind (with a warning): deletion is not blocked forever.
async fn remove_from_shared_etcd(hc: &HostedCluster, ctx: &Context) -> Result<()> {
    let Ok(Some(shared)) = SharedEtcd::of(hc) else {
        return Ok(());
    };
    let ns = hc.metadata.namespace.as_deref().unwrap_or_default();
    match credentials(&ctx.client, ns, &shared.credentials_secret).await {
        Ok(creds) => Ok(shared_etcd::remove(&ctx.etcd, &shared, &creds).await?),
        Err(Error::SharedEtcd(EtcdError::SecretMissing(secret))) => {
            tracing::warn!(
                secret,
                user = shared.user,
                "shared etcd credentials are gone; the cluster's keys, user and role are left behind"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Remove everything `hc` made.
pub async fn cleanup(hc: &HostedCluster, ctx: &Context) -> Result<Action> {
    let key = key_of(hc);
    let (ns, name) = (&key.0, &key.1);

    // 1. Node pools.
    let pools: Api<NodePool> = Api::namespaced(ctx.client.clone(), ns);
    let mine: Vec<NodePool> = pools
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(Target::Management, "list NodePools"))?
        .items
        .into_iter()
        .filter(|p| &p.spec.cluster_name == name)
        .collect();
    for p in &mine {
        if p.metadata.deletion_timestamp.is_none() {
            let pool = p.metadata.name.clone().unwrap_or_default();
            ctx.metrics
                .wrote(Target::Management.as_str(), "NodePool", "delete");
            match pools.delete(&pool, &DeleteParams::background()).await {
                Ok(_) => tracing::info!(pool, "deleting node pool of deleted cluster"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(Error::kube(
                        Target::Management,
                        format!("delete NodePool {pool}"),
                    )(e));
                }
            }
        }
    }
    if !mine.is_empty() {
        return Err(Error::Pending(format!(
            "waiting for {} node pool(s) to be deleted",
            mine.len()
        )));
    }

    let cp_ns = names::control_plane_namespace(ns, name);
    let owner = owner_selector_of(ns, name);
    let handles = ctx.clients.handles(hc).await;

    // 2. Infra objects of the cluster.
    let (infra_client, infra_ns) = match (&handles, hc.external_infra()) {
        (Ok(h), Some(creds)) => (Some(h.infra.clone()), creds.infra_namespace.clone()),
        (Err(e), Some(_)) => {
            tracing::warn!(error = %e, "infra cluster unreachable; its objects are left behind");
            (None, String::new())
        }
        (_, None) => (Some(ctx.client.clone()), cp_ns.clone()),
    };
    if let Some(infra) = &infra_client {
        let applier = Applier {
            client: infra,
            target: Target::Infra,
            metrics: &ctx.metrics,
        };
        let by_infra_id = format!("{}={}", names::INFRA_ID_LABEL, hc.spec.infra_id);
        delete_services(&applier, infra, &infra_ns, &by_infra_id).await?;
        let mut remaining = Vec::new();
        for resource in [
            ar::<VirtualMachine>(),
            ar::<DataVolume>(),
            ar::<VolumeSnapshot>(),
        ] {
            for obj in applier
                .delete_matching(&resource, &infra_ns, &by_infra_id)
                .await?
            {
                remaining.push((resource.clone(), obj));
            }
        }
        if hc.external_infra().is_some() {
            applier
                .prune(
                    &infra_kinds(),
                    Some(&infra_ns),
                    &format!("{owner},{}={}", names::SIDE_LABEL, side::INFRA),
                    &BTreeSet::new(),
                )
                .await?;
        }
        wait_gone(ctx, infra, &infra_ns, &remaining).await?;
    }

    // 3. The guest, best effort; a hosted guest goes with its control plane.
    match &handles {
        _ if hc.is_hosted() => {}
        Ok(h) => {
            let guest = Applier {
                client: &h.guest,
                target: Target::Guest,
                metrics: &ctx.metrics,
            };
            let selector = format!("{owner},{}={}", names::SIDE_LABEL, side::GUEST);
            let pruned = tokio::time::timeout(
                ctx.settings.cleanup_wait,
                guest.prune(
                    &guest_kinds(),
                    Some(names::GUEST_CSI_NAMESPACE),
                    &selector,
                    &BTreeSet::new(),
                ),
            )
            .await;
            match pruned {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "guest objects left behind"),
                Err(_) => {
                    tracing::warn!("guest cluster did not answer; its objects are left behind")
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "guest cluster unreachable; its objects are left behind")
        }
    }

    // 4. The control-plane namespace.
    let management = Applier {
        client: &ctx.client,
        target: Target::Management,
        metrics: &ctx.metrics,
    };
    management
        .prune(
            &management_kinds(),
            Some(&cp_ns),
            &format!("{owner},{}={}", names::SIDE_LABEL, side::MANAGEMENT),
            &BTreeSet::new(),
        )
        .await?;
    if hc.is_hosted() {
        management
            .delete(
                &ar::<Secret>(),
                Some(ns),
                &names::admin_kubeconfig_secret(name),
            )
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if let Some(live) = namespaces
        .get_opt(&cp_ns)
        .await
        .map_err(Error::kube(Target::Management, "get Namespace"))?
    {
        management.delete(&ar::<Namespace>(), None, &cp_ns).await?;
        let uid = live.metadata.uid.clone().unwrap_or_default();
        let gone = tokio::time::timeout(
            ctx.settings.cleanup_wait,
            await_condition(namespaces, &cp_ns, conditions::is_deleted(&uid)),
        )
        .await;
        if !matches!(gone, Ok(Ok(_))) {
            return Err(Error::Pending(format!(
                "waiting for namespace {cp_ns} to be deleted"
            )));
        }
    }

    // 5. Its place in a shared etcd, once no API server of it runs.
    if hc.is_hosted() {
        remove_from_shared_etcd(hc, ctx).await?;
    }

    ctx.clients.forget(&key);
    ctx.triggers.forget(&key);
    tracing::info!(namespace = %ns, name = %name, "hosted cluster cleaned up");
    Ok(Action::await_change())
}

/// Delete the cluster's load-balancer Services and the EndpointSlices the
/// CCM mirrored for them.
async fn delete_services(
    applier: &Applier<'_>,
    infra: &Client,
    namespace: &str,
    selector: &str,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(infra.clone(), namespace);
    let list = services
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(Error::kube(Target::Infra, "list Services"))?;
    for svc in list.items {
        let name = svc.metadata.name.unwrap_or_default();
        applier
            .delete_matching(
                &ar::<EndpointSlice>(),
                namespace,
                &format!("kubernetes.io/service-name={name}"),
            )
            .await?;
        applier
            .delete(&ar::<Service>(), Some(namespace), &name)
            .await?;
    }
    Ok(())
}

/// Wait, watching, for objects being deleted to disappear.
async fn wait_gone(
    ctx: &Context,
    client: &Client,
    namespace: &str,
    objects: &[(ApiResource, String)],
) -> Result<()> {
    let wait = async {
        for (resource, name) in objects {
            let api: Api<kube::core::DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, resource);
            let live = match api.get_opt(name).await {
                Ok(Some(live)) => live,
                Ok(None) => continue,
                Err(e) => return Err(e),
            };
            let uid = live.metadata.uid.unwrap_or_default();
            // `await_condition` needs the static type; watch by name instead.
            wait_deleted(&api, name, &uid).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(ctx.settings.cleanup_wait, wait).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::kube(Target::Infra, "wait for deletion")(e)),
        Err(_) => Err(Error::Pending(format!(
            "waiting for {} infra object(s) to be deleted",
            objects.len()
        ))),
    }
}

/// Watch one dynamic object until it is gone (or replaced by another uid).
async fn wait_deleted(
    api: &Api<kube::core::DynamicObject>,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api.clone(), config));
    let mut seen: Option<bool> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Delete(_)) => return Ok(()),
            Ok(watcher::Event::Init) => seen = Some(false),
            Ok(watcher::Event::InitApply(o)) | Ok(watcher::Event::Apply(o)) => {
                if o.metadata.uid.as_deref() != Some(uid) {
                    return Ok(());
                }
                seen = Some(true);
            }
            Ok(watcher::Event::InitDone) => {
                if seen == Some(false) {
                    return Ok(());
                }
            }
            Err(e) => tracing::debug!(error = %e, "watch error while waiting for deletion"),
        }
    }
    Ok(())
}
