//! The pod controller of the kubelet stand-in: [`Context`] holds the client,
//! the node plugin, the watch-fed store of this node's pods and the locks;
//! [`reconcile`] brings a pod's claims up (attach, stage, publish, grow) and
//! marks it Running, or takes them down once the pod is deleted, then lets
//! it go; [`error_policy`] retries failures with exponential backoff.
//!
//! A pod that waits for something another controller does (its claim to
//! bind, its volume to attach) is not failing: it is reconciled again when
//! the claim or VolumeAttachment changes, through the controller's watches.
//! Work on one volume is serialized across pods by a per-PV lock, so that
//! "does another pod on this node still use it?" and "stage it" never race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::error::{Error, not_found_ok};
use super::locks::Locks;
use super::network::{self, PodNetwork};
use super::plugin::Plugin;
use super::volumes::{self, AttachState, MountPlan, PodClaim, VolumeRecord};
use super::{KubeletConfig, records, status};

/// First retry after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The component name on the Events kubelet records.
const COMPONENT: &str = "kubelet";

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub cfg: KubeletConfig,
    pub driver: String,
    pub plugin: Plugin,
    /// This node's pods, fed by the controller's watch.
    pub pods: Store<Pod>,
    pub locks: Locks,
    /// Consecutive failures per pod uid, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The node's InternalIP, reported as the pods' hostIP.
    pub host_ip: Option<String>,
    /// Pod addresses and workloads.
    pub network: PodNetwork,
}

/// How far bringing one claim up got.
enum Progress {
    Mounted,
    Waiting(String),
}

// === impl Context ===

impl Context {
    pub fn new(
        client: Client,
        cfg: KubeletConfig,
        driver: String,
        pods: Store<Pod>,
        host_ip: Option<String>,
        network: PodNetwork,
    ) -> Self {
        let plugin = Plugin::new(&cfg.csi_socket);
        Self {
            client,
            cfg,
            driver,
            plugin,
            pods,
            locks: Locks::default(),
            failures: Mutex::default(),
            host_ip,
            network,
        }
    }

    fn failed(&self, uid: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Whether a pod on this node other than `except_uid` still uses claim
    /// `namespace/claim`: it has the volume published (its record), or it is
    /// a live pod that mounts the claim and may be about to.
    fn volume_still_used(&self, record: &VolumeRecord) -> Result<bool, Error> {
        if records::used_by_other_pod(&self.cfg.kubelet_dir, &record.pv_name, &record.pod_uid)? {
            return Ok(true);
        }
        Ok(self.pods.state().iter().any(|p| {
            p.uid().as_deref() != Some(record.pod_uid.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && volumes::uses_claim(p, &record.claim_namespace, &record.claim_name)
        }))
    }
}

/// Backoff after the `n`th consecutive failure.
fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Reconciles one pod of this node; a failure is recorded as a Warning
/// Event on the pod.
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = pod.uid().unwrap_or_default();
    match reconcile_pod(&pod, &ctx).await {
        Ok(action) => {
            ctx.succeeded(&uid);
            Ok(action)
        }
        Err(e) => {
            tracing::warn!(node = %ctx.cfg.node_name, pod = %pod.name_any(), error = %e, "pod volumes");
            crate::events::record(
                &ctx.client,
                COMPONENT,
                &*pod,
                true,
                e.event_reason(),
                &e.to_string(),
            )
            .await;
            Err(e)
        }
    }
}

/// Requeue with exponential backoff per pod.
pub fn error_policy(pod: Arc<Pod>, _err: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.failed(&pod.uid().unwrap_or_default());
    Action::requeue(backoff(n))
}

async fn reconcile_pod(pod: &Pod, ctx: &Context) -> Result<Action, Error> {
    let ours =
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(ctx.cfg.node_name.as_str());
    if !ours {
        return Ok(Action::await_change());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    if pod.metadata.deletion_timestamp.is_some() {
        // Kubelet's part of a graceful deletion: the server keeps the pod
        // until the kubelet, its volumes down, deletes it for good.
        ctx.network.release(&pod.uid().unwrap_or_default());
        cleanup(pod, ctx).await?;
        confirm_deletion(&api, pod)
            .await
            .map_err(|e| Error::KillPod(format!("deleting pod {}: {e}", pod.name_any())))?;
        return Ok(Action::await_change());
    }
    if ctx.cfg.echo_only && !network::runs_echo_only(pod) {
        tracing::debug!(node = %ctx.cfg.node_name, pod = %pod.name_any(), "not an echo pod: left Pending");
        return Ok(Action::await_change());
    }
    let claims = volumes::pod_claims(pod);
    apply(pod, &claims, ctx, &api).await
}

/// Brings every claim of `pod` up, then reports the pod Running.
async fn apply(
    pod: &Pod,
    claims: &[PodClaim],
    ctx: &Context,
    api: &Api<Pod>,
) -> Result<Action, Error> {
    let uid = pod.uid().unwrap_or_default();
    let _pod = ctx.locks.lock(format!("pod/{uid}")).await;
    let mut waiting = Vec::new();
    for claim in claims {
        if let Progress::Waiting(why) = mount_claim(pod, &uid, claim, ctx).await? {
            waiting.push(why);
        }
    }
    if !waiting.is_empty() {
        tracing::debug!(pod = %pod.name_any(), waiting = ?waiting, "pod waits for its volumes");
        return Ok(Action::await_change());
    }
    let ip = ctx.network.pod_ip(pod, &ctx.pods.state())?;
    ctx.network.start_workload(pod, ip).await?;
    if !status::is_running(pod) {
        let now = jiff::Timestamp::now().to_string();
        let body = status::running_status(pod, &ip.to_string(), ctx.host_ip.as_deref(), &now);
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
        .map_err(Error::kube(format!(
            "reporting pod {} Running",
            pod.name_any()
        )))?;
        tracing::info!(node = %ctx.cfg.node_name, pod = %pod.name_any(), volumes = claims.len(), "pod running");
    }
    Ok(Action::await_change())
}

/// Attaches, stages, publishes (and grows) the volume of `claim` in `pod`.
async fn mount_claim(
    pod: &Pod,
    uid: &str,
    claim: &PodClaim,
    ctx: &Context,
) -> Result<Progress, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &claim.namespace);
    let what = format!("persistentvolumeclaim \"{}\"", claim.claim);
    let pvc = not_found_ok(pvcs.get(&claim.claim).await, format!("reading {what}"))?
        .ok_or_else(|| Error::Claim(format!("{what} not found")))?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
    else {
        return Ok(Progress::Waiting(format!("{what} is not bound")));
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = not_found_ok(
        pvs.get(&pv_name).await,
        format!("reading PersistentVolume {pv_name}"),
    )?
    else {
        return Ok(Progress::Waiting(format!(
            "PersistentVolume {pv_name} does not exist yet"
        )));
    };
    let claim_uid = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.clone());
    if claim_uid.is_some() && claim_uid != pvc.uid() {
        return Err(Error::Claim(format!(
            "PersistentVolume {pv_name} is bound to another claim than {what}"
        )));
    }
    let plan = volumes::plan(
        &ctx.cfg.kubelet_dir,
        &ctx.cfg.node_name,
        &ctx.driver,
        uid,
        claim,
        &pv,
    )?;

    let _volume = ctx.locks.lock(format!("pv/{pv_name}")).await;
    // Recorded before anything happens on the node, so it can be undone.
    records::write(&ctx.cfg.kubelet_dir, &plan.record)?;
    let publish_context = match attachment(ctx, &plan).await? {
        Ok(context) => context,
        Err(why) => return Ok(Progress::Waiting(why)),
    };
    ctx.plugin
        .stage(volumes::stage_request(&plan, &publish_context))
        .await?;
    ctx.plugin
        .publish(volumes::publish_request(&plan, &publish_context, pod))
        .await?;
    grow_if_needed(ctx, &pvcs, &claim.claim, &pv, &plan).await?;
    Ok(Progress::Mounted)
}

/// The publish context of the volume's attachment to this node, creating
/// the VolumeAttachment if there is none; `Err(why)` while it is not attached.
async fn attachment(
    ctx: &Context,
    plan: &MountPlan,
) -> Result<Result<HashMap<String, String>, String>, Error> {
    let api: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    let name = &plan.record.attachment;
    let va = not_found_ok(
        api.get(name).await,
        format!("reading VolumeAttachment {name}"),
    )?;
    match volumes::attach_state(va.as_ref()) {
        AttachState::Attached(context) => Ok(Ok(context)),
        AttachState::Missing => {
            let va = volumes::desired_attachment(
                name,
                &ctx.driver,
                &ctx.cfg.node_name,
                &plan.record.pv_name,
            );
            match api.create(&PostParams::default(), &va).await {
                Ok(_) => {
                    tracing::info!(node = %ctx.cfg.node_name, attachment = %name, pv = %plan.record.pv_name, "VolumeAttachment created")
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(Error::kube(format!("creating VolumeAttachment {name}"))(e)),
            }
            Ok(Err(format!("VolumeAttachment {name} created")))
        }
        AttachState::Deleting => Ok(Err(format!("VolumeAttachment {name} is being detached"))),
        AttachState::Pending => Ok(Err(format!("VolumeAttachment {name} is not attached yet"))),
        AttachState::Failed(message) => Err(Error::Attach {
            volume: plan.record.pv_name.clone(),
            message,
        }),
    }
}

/// NodeExpandVolume when the resizer grew the volume and left the
/// filesystem to the node, then the claim's new capacity (what kubelet's
/// MarkFSResizeFinished writes). Read again under the volume's lock, so
/// that two pods of one claim grow it once.
async fn grow_if_needed(
    ctx: &Context,
    pvcs: &Api<PersistentVolumeClaim>,
    claim: &str,
    pv: &PersistentVolume,
    plan: &MountPlan,
) -> Result<(), Error> {
    let Some(pvc) = not_found_ok(
        pvcs.get(claim).await,
        format!("reading persistentvolumeclaim {claim}"),
    )?
    else {
        return Ok(());
    };
    let Some(want) = volumes::node_expansion(&pvc, pv) else {
        return Ok(());
    };
    let size = ctx
        .plugin
        .expand(volumes::expand_request(plan, want))
        .await?;
    let capacity = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map_or_else(|| want.to_string(), |q| q.0.clone());
    pvcs.patch_status(
        claim,
        &PatchParams::default(),
        &Patch::Merge(&status::resize_finished_status(&pvc, &capacity)),
    )
    .await
    .map_err(Error::kube(format!(
        "reporting the new capacity of persistentvolumeclaim {claim}"
    )))?;
    tracing::info!(node = %ctx.cfg.node_name, claim, bytes = size, "filesystem grown");
    Ok(())
}

/// Takes down every volume recorded for a pod being deleted.
async fn cleanup(pod: &Pod, ctx: &Context) -> Result<(), Error> {
    let uid = pod.uid().unwrap_or_default();
    let _pod = ctx.locks.lock(format!("pod/{uid}")).await;
    teardown(ctx, &uid).await
}

/// Unpublishes every volume recorded for pod `uid`; unstages it and deletes
/// its VolumeAttachment when no other pod on this node uses it; removes the
/// records. The caller holds the pod's lock.
pub async fn teardown(ctx: &Context, uid: &str) -> Result<(), Error> {
    for record in records::of_pod(&ctx.cfg.kubelet_dir, uid)? {
        let _volume = ctx.locks.lock(format!("pv/{}", record.pv_name)).await;
        ctx.plugin
            .unpublish(volumes::unpublish_request(&record))
            .await?;
        if !ctx.volume_still_used(&record)? {
            ctx.plugin
                .unstage(volumes::unstage_request(&record))
                .await?;
            delete_attachment(ctx, &record.attachment).await?;
        }
        records::remove(&ctx.cfg.kubelet_dir, &record)?;
        tracing::info!(node = %ctx.cfg.node_name, pod_uid = uid, pv = %record.pv_name, "volume unpublished");
    }
    records::remove_pod_dir_if_empty(&ctx.cfg.kubelet_dir, uid);
    Ok(())
}

async fn delete_attachment(ctx: &Context, name: &str) -> Result<(), Error> {
    let api: Api<VolumeAttachment> = Api::all(ctx.client.clone());
    not_found_ok(
        api.delete(name, &DeleteParams::default()).await,
        format!("deleting VolumeAttachment {name}"),
    )?;
    Ok(())
}

/// Kubelet's end of a graceful deletion: the pod's containers are stopped,
/// so it is deleted with grace period 0, for this pod's uid only (a new pod
/// of the same name is left alone).
pub async fn confirm_deletion(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        // Gone already, or a new pod of the same name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(4), BACKOFF_BASE * 8);
        assert_eq!(backoff(100), BACKOFF_MAX);
    }
}
