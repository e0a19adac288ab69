//! The apply and cleanup paths of a NodePool: check it against its
//! HostedCluster and the supported versions, observe its VMs and their guest
//! Nodes, ask the rollout planner for the next steps and carry them out —
//! create VMs, drain and delete the ones to remove, run the in-place
//! version handshake — then report the status.
//!
//! In-place protocol (see `names`): the manager sets VM annotation
//! `updating-to: <v>`, cordons and drains the node, then sets Node
//! annotation `desired-version: <v>`. The node's update agent moves the node
//! to `<v>` and sets `current-version: <v>`. When the node reports it and is
//! Ready, the manager records `version: <v>` on the VM, drops `updating-to`
//! and uncordons the node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachine;
use serde_json::json;

use super::join::Joining;
use super::nodes::{Drain, GuestNodes};
use super::observe::{self, NodeView, VmView};
use super::{repair, status, validate};
use crate::api::conditions::{self, kind};
use crate::api::{HostedCluster, NodePool, NodePoolStatus};
use crate::apply::Applier;
use crate::clients::{Handles, key_of};
use crate::context::Context;
use crate::desired::kubeconfig::endpoint;
use crate::desired::object::Object;
use crate::desired::vm::{self, PoolInputs};
use crate::error::{Error, Result, Target, is_conflict, is_not_found};
use crate::names;
use crate::rollout;
use crate::version::Refusal;
use crate::watches::{Watched, pool_of_node};

/// Retry delay of an eviction refused by a PodDisruptionBudget (what
/// `kubectl drain` does).
const EVICTION_RETRY: Duration = Duration::from_secs(5);

/// The infra namespace of a hosted cluster's VMs.
pub fn infra_namespace(hc: &HostedCluster) -> String {
    match hc.external_infra() {
        Some(c) => c.infra_namespace.clone(),
        None => names::control_plane_namespace(
            hc.metadata.namespace.as_deref().unwrap_or_default(),
            hc.metadata.name.as_deref().unwrap_or_default(),
        ),
    }
}

/// Everything one pool reconcile works with.
struct Pool<'a> {
    ctx: &'a Context,
    np: &'a NodePool,
    inputs: PoolInputs,
    handles: Handles,
    vms: Api<VirtualMachine>,
    /// The hosted control plane's Kubernetes version, when the pool's VMs
    /// join one.
    kubernetes_version: Option<String>,
    /// Earliest time to look again without a trigger.
    wake: Option<Duration>,
}

async fn get_hosted_cluster(ctx: &Context, np: &NodePool) -> Result<Option<HostedCluster>> {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    Api::<HostedCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&np.spec.cluster_name)
        .await
        .map_err(Error::kube(Target::Management, "get HostedCluster"))
}

/// Write the status `compute` gives, if it changed (computed again on the
/// live object when the cached one is stale; see the HostedCluster's).
async fn write_status(
    ctx: &Context,
    np: &NodePool,
    compute: impl Fn(&NodePool) -> NodePoolStatus,
) -> Result<()> {
    if np.status.as_ref() == Some(&compute(np)) {
        return Ok(());
    }
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let api = Api::<NodePool>::namespaced(ctx.client.clone(), &ns);
    let Some(live) = api.get_opt(&name).await.map_err(Error::kube(
        Target::Management,
        format!("get NodePool {name}"),
    ))?
    else {
        return Ok(());
    };
    // The live status, under the spec that was converged: a newer live spec
    // is not converged yet, so its generation must not be reported observed.
    let mut base = np.clone();
    base.status = live.status.clone();
    let status = compute(&base);
    if live.status.as_ref() == Some(&status) {
        return Ok(());
    }
    ctx.metrics
        .wrote(Target::Management.as_str(), "NodePool", "status");
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .map_err(Error::kube(
        Target::Management,
        format!("update status of NodePool {name}"),
    ))?;
    Ok(())
}

async fn refuse(
    ctx: &Context,
    np: &NodePool,
    condition: &'static str,
    why: Error,
) -> Result<Action> {
    tracing::info!(error = %why, "node pool refused");
    let now = Time(jiff::Timestamp::now());
    write_status(ctx, np, |base| status::refused(base, condition, &why, &now)).await?;
    Ok(Action::await_change())
}

/// Converge a NodePool.
pub async fn apply(np: &NodePool, ctx: &Context) -> Result<Action> {
    let Some(hc) = get_hosted_cluster(ctx, np).await? else {
        return refuse(
            ctx,
            np,
            kind::VALID_HOSTED_CLUSTER,
            Error::HostedClusterMissing(np.spec.cluster_name.clone()),
        )
        .await;
    };
    let hc_reconciled = hc
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, kind::RECONCILIATION_SUCCEEDED));
    if !hc_reconciled || hc.metadata.deletion_timestamp.is_some() {
        return refuse(
            ctx,
            np,
            kind::VALID_HOSTED_CLUSTER,
            Error::HostedClusterNotAvailable(np.spec.cluster_name.clone()),
        )
        .await;
    }
    if let Err(e) = ctx
        .settings
        .supported
        .check_node_pool(&np.spec.release.version, &hc.spec.release.version)
    {
        return refuse(ctx, np, kind::VALID_VERSION, e.into()).await;
    }
    if let Err(e) = validate::kubelet_skew(np, &hc) {
        return refuse(ctx, np, kind::VALID_VERSION, Refusal::from(e).into()).await;
    }
    let strategy =
        match validate::platform(&np.spec.platform.kubevirt).and_then(|_| validate::strategy(np)) {
            Ok(s) => s,
            Err(e) => return refuse(ctx, np, kind::VALID_PLATFORM_CONFIG, e).await,
        };
    let replicas = validate::replicas(np)?;

    let mut pool = Pool::new(ctx, np, &hc).await?;
    let hash = vm::template_hash(&pool.inputs);
    pool.ensure_cache().await?;

    let (vms, nodes) = pool.observe().await?;
    let machines = observe::machines(
        &vms,
        &nodes,
        np.spec.management.upgrade_type,
        &hash,
        &np.spec.release.version,
    );
    let plan = rollout::plan(replicas, &machines, strategy);
    if plan != rollout::Plan::default() {
        tracing::info!(create = plan.create, remove = ?plan.remove, update = ?plan.update, "rollout step");
    }

    pool.create(plan.create, &hash, &vms).await?;
    for name in &plan.remove {
        pool.annotate_vm(name, json!({names::DELETE_REQUESTED_ANNOTATION: "true"}))
            .await?;
    }
    for name in &plan.update {
        pool.annotate_vm(
            name,
            json!({names::UPDATING_TO_ANNOTATION: np.spec.release.version}),
        )
        .await?;
    }
    // Act on what was decided in this and earlier reconciles.
    let (vms, nodes) = if plan == rollout::Plan::default() {
        (vms, nodes)
    } else {
        pool.observe().await?
    };
    pool.drive_removals(&vms, &nodes, false).await?;
    pool.drive_updates(&vms, &nodes).await?;
    pool.delete_orphan_nodes(&vms, &nodes).await?;
    pool.collect_caches(&vms).await?;
    pool.join(&vms, &nodes).await?;

    let machines = observe::machines(
        &vms,
        &nodes,
        np.spec.management.upgrade_type,
        &hash,
        &np.spec.release.version,
    );
    let now = Time(jiff::Timestamp::now());
    let (not_joined, next_late) =
        status::not_joined(&vms, &nodes, ctx.settings.node_join_timeout, now.0);
    if let Some(after) = next_late {
        pool.wake_in(after);
    }
    let repair = if np.spec.management.auto_repair {
        repair::assess(
            &vms,
            &nodes,
            &not_joined.vms,
            ctx.settings.node_join_timeout,
            ctx.settings.node_unhealthy_timeout,
            now.0,
        )
    } else {
        repair::Verdict::default()
    };
    if let Some(after) = repair.next {
        pool.wake_in(after);
    }
    pool.repair(&repair, &nodes).await?;
    let health = status::Health {
        not_joined,
        repair_held_back: repair.held_back(),
    };
    write_status(ctx, np, |base| {
        status::observed(
            base,
            &vms,
            &machines,
            &hash,
            &status::valid(),
            &health,
            &now,
        )
    })
    .await?;
    Ok(Action::requeue(
        pool.wake
            .unwrap_or(ctx.settings.resync)
            .min(ctx.settings.resync),
    ))
}

/// Remove a NodePool's VMs: drained while the cluster lives, at once when
/// the cluster is being deleted.
pub async fn cleanup(np: &NodePool, ctx: &Context) -> Result<Action> {
    let Some(hc) = get_hosted_cluster(ctx, np).await? else {
        tracing::warn!(cluster = %np.spec.cluster_name, "hosted cluster is gone; the pool's VMs cannot be reached");
        return Ok(Action::await_change());
    };
    let fast = hc.metadata.deletion_timestamp.is_some();
    let mut pool = match Pool::new(ctx, np, &hc).await {
        Ok(p) => p,
        Err(e) if fast => {
            tracing::warn!(error = %e, "cluster is being deleted and unreachable; it removes the VMs itself");
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let (vms, nodes) = pool.observe().await?;
    for v in vms.iter().filter(|v| !v.marked && !v.deleting) {
        pool.annotate_vm(&v.name, json!({names::DELETE_REQUESTED_ANNOTATION: "true"}))
            .await?;
    }
    let (vms, nodes) = if vms.iter().any(|v| !v.marked) {
        pool.observe().await?
    } else {
        (vms, nodes)
    };
    pool.drive_removals(&vms, &nodes, fast).await?;
    pool.delete_orphan_nodes(&vms, &nodes).await?;
    if !vms.is_empty() {
        return Err(Error::Pending(format!(
            "waiting for {} VM(s) to be removed",
            vms.len()
        )));
    }
    pool.collect_caches(&[]).await?;
    if let Some(joining) = pool.joining()? {
        joining.revoke_all().await?;
    }
    Ok(Action::await_change())
}

// === impl Pool ===

impl<'a> Pool<'a> {
    async fn new(ctx: &'a Context, np: &'a NodePool, hc: &HostedCluster) -> Result<Self> {
        let handles = ctx.clients.handles(hc).await?;
        let infra_namespace = infra_namespace(hc);
        let key = key_of(hc);
        ctx.triggers.ensure(&Watched {
            key: &key,
            identity: handles.identity,
            infra: &handles.infra,
            infra_namespace: &infra_namespace,
            infra_id: &hc.spec.infra_id,
            guest: &handles.guest,
        });
        let inputs = PoolInputs {
            pool_namespace: np.metadata.namespace.clone().unwrap_or_default(),
            pool_name: np.metadata.name.clone().unwrap_or_default(),
            hc_name: np.spec.cluster_name.clone(),
            infra_id: hc.spec.infra_id.clone(),
            infra_namespace: infra_namespace.clone(),
            version: np.spec.release.version.clone(),
            platform: np.spec.platform.kubevirt.clone(),
            join: hc.is_hosted(),
        };
        let vms = Api::namespaced(handles.infra.clone(), &infra_namespace);
        let kubernetes_version = hc
            .is_hosted()
            .then(|| hc.spec.release.kubernetes_version.clone())
            .flatten()
            .map(|v| v.trim_start_matches('v').to_string());
        Ok(Self {
            ctx,
            np,
            inputs,
            handles,
            vms,
            kubernetes_version,
            wake: None,
        })
    }

    fn wake_in(&mut self, after: Duration) {
        self.wake = Some(self.wake.map_or(after, |w| w.min(after)));
    }

    fn pool_ref(&self) -> ObjectRef<NodePool> {
        ObjectRef::new(&self.inputs.pool_name).within(&self.inputs.pool_namespace)
    }

    fn guest(&self) -> GuestNodes<'_> {
        GuestNodes {
            client: &self.handles.guest,
            metrics: &self.ctx.metrics,
        }
    }

    fn cluster_key(&self) -> (String, String) {
        (
            self.inputs.pool_namespace.clone(),
            self.inputs.hc_name.clone(),
        )
    }

    /// The pool's VMs and the guest Nodes by name.
    async fn observe(&self) -> Result<(Vec<VmView>, BTreeMap<String, NodeView>)> {
        let list = self
            .vms
            .list(&ListParams::default().labels(&self.inputs.selector()))
            .await
            .map_err(Error::kube(Target::Infra, "list VirtualMachines"))?;
        let vms: Vec<VmView> = list.items.iter().map(VmView::of).collect();
        let nodes = self
            .guest()
            .list()
            .await?
            .into_iter()
            .filter(|(name, _)| pool_of_node(name) == Some(self.inputs.pool_name.as_str()))
            .map(|(name, n)| (name, NodeView::of(&n)))
            .collect();
        Ok((vms, nodes))
    }

    /// Apply the boot image cache DataVolume of a cached pool.
    async fn ensure_cache(&self) -> Result<()> {
        if let Some(dv) = vm::boot_image_cache(&self.inputs) {
            let applier = Applier {
                client: &self.handles.infra,
                target: Target::Infra,
                metrics: &self.ctx.metrics,
            };
            applier.apply(&Object::new(&dv)?).await?;
        }
        Ok(())
    }

    /// Create `n` VMs on template `hash`.
    async fn create(&self, n: u32, hash: &str, existing: &[VmView]) -> Result<()> {
        let taken: BTreeSet<&str> = existing.iter().map(|v| v.name.as_str()).collect();
        let mut created = 0;
        let mut candidate = 0u32;
        while created < n {
            let name = vm::vm_name(&self.inputs.pool_name, hash, candidate);
            candidate += 1;
            if taken.contains(name.as_str()) {
                continue;
            }
            let desired = vm::virtual_machine(&self.inputs, &name, hash);
            self.ctx
                .metrics
                .wrote(Target::Infra.as_str(), "VirtualMachine", "create");
            match self.vms.create(&PostParams::default(), &desired).await {
                Ok(_) => tracing::info!(vm = %name, "created VM"),
                // Made by an earlier reconcile whose list we did not see.
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    return Err(Error::kube(
                        Target::Infra,
                        format!("create VirtualMachine {name}"),
                    )(e));
                }
            }
            created += 1;
        }
        Ok(())
    }

    async fn annotate_vm(&self, name: &str, annotations: serde_json::Value) -> Result<()> {
        self.ctx
            .metrics
            .wrote(Target::Infra.as_str(), "VirtualMachine", "patch");
        match self
            .vms
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": annotations}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(
                Target::Infra,
                format!("annotate VirtualMachine {name}"),
            )(e)),
        }
    }

    /// Replace the unhealthy VMs auto-repair found, if it may: each is
    /// deleted with its guest Node (its replacement, which may take the
    /// same name, joins afresh), and the next pass creates the replacement.
    async fn repair(
        &self,
        verdict: &repair::Verdict,
        nodes: &BTreeMap<String, NodeView>,
    ) -> Result<()> {
        if !verdict.replace {
            if let Some(why) = verdict.held_back() {
                tracing::warn!(pool = %self.np.name_any(), "{why}");
            }
            return Ok(());
        }
        for u in &verdict.unhealthy {
            tracing::warn!(vm = %u.vm, "replacing the VM: {}", u.why);
            self.ctx.metrics.repaired(
                &self.np.namespace().unwrap_or_default(),
                &self.np.name_any(),
            );
            self.delete_vm(&u.vm).await?;
            if nodes.contains_key(&u.vm) {
                self.guest().delete(&u.vm).await?;
            }
        }
        Ok(())
    }

    async fn delete_vm(&self, name: &str) -> Result<()> {
        self.ctx
            .metrics
            .wrote(Target::Infra.as_str(), "VirtualMachine", "delete");
        match self.vms.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(vm = %name, "deleting VM");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(
                Target::Infra,
                format!("delete VirtualMachine {name}"),
            )(e)),
        }
    }

    /// Drain and delete the VMs marked for removal (`fast`: no drain).
    async fn drive_removals(
        &mut self,
        vms: &[VmView],
        nodes: &BTreeMap<String, NodeView>,
        fast: bool,
    ) -> Result<()> {
        let now = jiff::Timestamp::now();
        let timeout = self
            .np
            .spec
            .node_drain_timeout_seconds
            .map(|s| jiff::SignedDuration::from_secs(i64::from(s)));
        for v in vms.iter().filter(|v| v.marked && !v.deleting) {
            let Some(node) = nodes.get(&v.name).filter(|_| !fast) else {
                self.delete_vm(&v.name).await?;
                continue;
            };
            if !node.unschedulable {
                self.guest().cordon(&node.name).await?;
            }
            let started = match v.drain_started {
                Some(t) => t,
                None => {
                    self.annotate_vm(
                        &v.name,
                        json!({names::DRAIN_STARTED_ANNOTATION: now.to_string()}),
                    )
                    .await?;
                    now
                }
            };
            let deadline = timeout.and_then(|t| started.checked_add(t).ok());
            let expired = deadline.is_some_and(|d| now >= d);
            match self.guest().drain(&node.name).await? {
                Drain::Done => self.delete_vm(&v.name).await?,
                _ if expired => {
                    tracing::warn!(vm = %v.name, "drain timed out; deleting the VM anyway");
                    self.delete_vm(&v.name).await?;
                }
                state => {
                    self.ctx.triggers.watch_drain(
                        &self.cluster_key(),
                        &self.handles.guest,
                        &node.name,
                        self.pool_ref(),
                    );
                    if state == Drain::Blocked {
                        self.wake_in(EVICTION_RETRY);
                    }
                    if let Some(d) = deadline {
                        let left =
                            Duration::try_from(d.duration_since(now)).unwrap_or(Duration::ZERO);
                        self.wake_in(left.max(Duration::from_secs(1)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Carry the in-place handshake forward for VMs being updated.
    async fn drive_updates(
        &mut self,
        vms: &[VmView],
        nodes: &BTreeMap<String, NodeView>,
    ) -> Result<()> {
        for v in vms.iter().filter(|v| v.active()) {
            let Some(target) = &v.updating_to else {
                continue;
            };
            let Some(node) = nodes.get(&v.name) else {
                continue;
            };
            if node.current_version.as_deref() == Some(target.as_str()) && node.ready {
                self.annotate_vm(
                    &v.name,
                    json!({names::VERSION_ANNOTATION: target, names::UPDATING_TO_ANNOTATION: null}),
                )
                .await?;
                if node.cordoned_by_manager {
                    self.guest().uncordon(&node.name).await?;
                }
                self.ctx
                    .triggers
                    .drain_done(&self.cluster_key(), &node.name);
                tracing::info!(vm = %v.name, version = %target, "node updated in place");
                continue;
            }
            if node.desired_version.as_deref() == Some(target.as_str()) {
                continue; // The node's agent is at work.
            }
            if !node.unschedulable {
                self.guest().cordon(&node.name).await?;
            }
            match self.guest().drain(&node.name).await? {
                Drain::Done => {
                    self.ctx
                        .triggers
                        .drain_done(&self.cluster_key(), &node.name);
                    self.guest().request_version(&node.name, target).await?;
                }
                state => {
                    self.ctx.triggers.watch_drain(
                        &self.cluster_key(),
                        &self.handles.guest,
                        &node.name,
                        self.pool_ref(),
                    );
                    if state == Drain::Blocked {
                        self.wake_in(EVICTION_RETRY);
                    }
                }
            }
        }
        Ok(())
    }

    /// Delete the guest Nodes of this pool whose VM is gone.
    async fn delete_orphan_nodes(
        &self,
        vms: &[VmView],
        nodes: &BTreeMap<String, NodeView>,
    ) -> Result<()> {
        let live: BTreeSet<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        for name in nodes.keys().filter(|n| !live.contains(n.as_str())) {
            self.guest().delete(name).await?;
            self.ctx.triggers.drain_done(&self.cluster_key(), name);
            tracing::info!(node = %name, "deleted guest node of removed VM");
        }
        Ok(())
    }

    /// How this pool's VMs join their hosted control plane; `None` when the
    /// cluster is not hosted here.
    fn joining(&self) -> Result<Option<Joining<'_>>> {
        let Some(version) = &self.kubernetes_version else {
            return Ok(None);
        };
        let endpoint = endpoint(&String::from_utf8_lossy(&self.handles.guest_kubeconfig))?;
        Ok(Some(Joining {
            guest: &self.handles.guest,
            infra: &self.handles.infra,
            metrics: &self.ctx.metrics,
            endpoint,
            kubernetes_version: version,
            pool: &self.inputs.pool_name,
            namespace: &self.inputs.infra_namespace,
            labels: self.inputs.owner_labels(),
        }))
    }

    /// Tokens and user data for the VMs waiting to join (see [`Joining`]).
    async fn join(&mut self, vms: &[VmView], nodes: &BTreeMap<String, NodeView>) -> Result<()> {
        let Some(joining) = self.joining()? else {
            return Ok(());
        };
        if let Some(renew) = joining.converge(vms, nodes).await? {
            self.wake_in(renew.max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Delete boot image caches no VM clones from any more.
    async fn collect_caches(&self, vms: &[VmView]) -> Result<()> {
        let current = if self.inputs.cached() {
            Some(vm::boot_image_cache_name(&self.inputs))
        } else {
            None
        };
        let in_use: BTreeSet<&str> = vms
            .iter()
            .filter_map(|v| v.cache_source.as_deref())
            .collect();
        let dvs: Api<DataVolume> =
            Api::namespaced(self.handles.infra.clone(), &self.inputs.infra_namespace);
        let selector = format!(
            "{},{}=true",
            self.inputs.selector(),
            names::BOOT_IMAGE_CACHE_LABEL
        );
        let list = match dvs
            .list_metadata(&ListParams::default().labels(&selector))
            .await
        {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::kube(Target::Infra, "list DataVolumes")(e)),
        };
        let applier = Applier {
            client: &self.handles.infra,
            target: Target::Infra,
            metrics: &self.ctx.metrics,
        };
        for dv in list.items {
            let name = dv.metadata.name.unwrap_or_default();
            if Some(&name) == current.as_ref()
                || in_use.contains(name.as_str())
                || dv.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            applier
                .delete(
                    &ApiResource::erase::<DataVolume>(&()),
                    Some(&self.inputs.infra_namespace),
                    &name,
                )
                .await?;
        }
        Ok(())
    }
}
