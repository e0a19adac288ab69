//! The apply path of a HostedCluster: resolve its inputs, build its object
//! sets, apply them to the management, external infra and guest clusters,
//! keep the infra tokens fresh, prune what is no longer desired (when the
//! spec changed), and report the outcome in the status.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::wait::Condition;
use kube::runtime::wait::await_condition;
use kube::runtime::wait::conditions::is_crd_established;
use kube::{Api, Resource};
use kubevirt_infra::snapshot::VolumeSnapshotClass;

use super::components;
use super::controlplane::{self, ControlPlane, EtcdState};
use super::history;
use super::tokens;
use crate::api::conditions::{self, Desired, kind, reason};
use crate::api::controlplane::LocalObjectReference;
use crate::api::{HostedCluster, HostedClusterStatus, NodePool, StorageDriverType};
use crate::apply::{Applier, keys};
use crate::context::Context;
use crate::desired::ClusterInputs;
use crate::desired::hosted::HostedInputs;
use crate::desired::join::{self, JoinCluster};
use crate::desired::kubeconfig::endpoint;
use crate::desired::object::{Object, ObjectKey};
use crate::desired::sets::{self, side, side_selector};
use crate::desired::snapshots;
use crate::error::{Error, Result, Target, is_not_found};
use crate::names;
use crate::skew;
use crate::version::Refusal;

fn ar<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Kinds pruned in the control-plane namespace.
pub fn management_kinds() -> Vec<(ApiResource, bool)> {
    vec![
        (ar::<Deployment>(), true),
        (ar::<StatefulSet>(), true),
        (ar::<PodDisruptionBudget>(), true),
        (ar::<Service>(), true),
        (ar::<ConfigMap>(), true),
        (ar::<Secret>(), true),
        (ar::<RoleBinding>(), true),
        (ar::<Role>(), true),
        (ar::<ServiceAccount>(), true),
    ]
}

/// Kinds pruned in an external infra namespace.
pub fn infra_kinds() -> Vec<(ApiResource, bool)> {
    vec![
        (ar::<RoleBinding>(), true),
        (ar::<Role>(), true),
        (ar::<ServiceAccount>(), true),
    ]
}

/// Kinds pruned in a guest cluster.
pub fn guest_kinds() -> Vec<(ApiResource, bool)> {
    vec![
        (ar::<StorageClass>(), false),
        (ar::<VolumeSnapshotClass>(), false),
        (ar::<DaemonSet>(), true),
        (ar::<CSIDriver>(), false),
        (ar::<ClusterRoleBinding>(), false),
        (ar::<ClusterRole>(), false),
        (ar::<RoleBinding>(), true),
        (ar::<Role>(), true),
        (ar::<ServiceAccount>(), true),
        (ar::<Namespace>(), false),
    ]
}

/// What a successful convergence learned.
pub struct Converged {
    pub inputs: ClusterInputs,
    /// Optional guest APIs the guest does not serve (the VolumeSnapshot
    /// CRDs): what depends on them was skipped.
    pub guest_apis_missing: BTreeSet<String>,
    /// The guest objects included VolumeSnapshotClasses.
    pub snapshots_wanted: bool,
    /// When an infra token needs refreshing.
    pub refresh_at: Option<jiff::Timestamp>,
    /// Whether the CSI controller and the CCM (and a hosted cluster's
    /// snapshot controller) run.
    pub components: Vec<components::Found>,
}

/// Bring every cluster of `hc` to its desired state. `keep` are management
/// objects made elsewhere (a hosted control plane's) that pruning keeps.
pub async fn converge(
    hc: &HostedCluster,
    ctx: &Context,
    keep: BTreeSet<ObjectKey>,
) -> Result<Converged> {
    ctx.settings.supported.check(&hc.spec.release.version)?;
    let handles = ctx.clients.handles(hc).await?;
    let endpoint = handles
        .infra_kubeconfig
        .as_deref()
        .map(endpoint)
        .transpose()?;
    let guest = Applier {
        client: &handles.guest,
        target: Target::Guest,
        metrics: &ctx.metrics,
    };
    let mut inputs = ClusterInputs::new(hc, &ctx.settings.images, handles.guest_kubeconfig.clone());
    if inputs.hosted {
        inputs.guest_endpoint = Some(crate::desired::kubeconfig::endpoint(
            &String::from_utf8_lossy(&handles.guest_kubeconfig),
        )?);
    }
    inputs.snapshot_api = match (inputs.csi_enabled(), inputs.hosted) {
        (false, _) => false,
        (true, true) => {
            provide_snapshot_api(&guest).await?;
            true
        }
        (true, false) => serves_snapshots(&handles.guest).await?,
    };

    let live_default = if inputs.storage_type == StorageDriverType::Default {
        Api::<StorageClass>::all(handles.guest.clone())
            .get_opt(names::DEFAULT_STORAGE_CLASS)
            .await
            .map_err(Error::kube(Target::Guest, "get StorageClass"))?
            .and_then(|sc| sc.metadata.annotations)
            .and_then(|mut a| a.remove(names::IS_DEFAULT_CLASS_ANNOTATION))
    } else {
        None
    };
    let mut set = sets::cluster_objects(&inputs, endpoint.as_ref(), live_default.as_deref())?;
    if hc.is_hosted() {
        set.guest
            .extend(join_objects(hc, ctx, &inputs, &handles.guest_kubeconfig)?);
    }

    let management = Applier {
        client: &ctx.client,
        target: Target::Management,
        metrics: &ctx.metrics,
    };
    let infra = Applier {
        client: &handles.infra,
        target: Target::Infra,
        metrics: &ctx.metrics,
    };

    // The daemons' Deployments go last: their pods mount the token
    // kubeconfig Secrets written in between, and a pod that starts before
    // its Secret exists waits for the kubelet's next mount retry (a second
    // or more). They are applied even when a step in between fails.
    let (workloads, supporting): (Vec<Object>, Vec<Object>) = set
        .management
        .iter()
        .cloned()
        .partition(|o| o.resource.kind == "Deployment");
    management.apply_all(&supporting).await?;
    let between = async {
        let mut token_keys = Vec::new();
        let mut refresh_at = None;
        if let Some(ep) = &endpoint {
            infra.apply_all(&set.infra).await?;
            let (keys, next) = tokens::ensure(
                ctx,
                &inputs,
                &handles.infra,
                Target::Infra,
                sets::infra_kubeconfigs(&inputs, ep),
            )
            .await?;
            token_keys.extend(keys);
            refresh_at = next;
        }
        let guest_apis_missing = guest.apply_all(&set.guest).await?.not_served;
        // A hosted guest's daemons: tokens of their accounts there (made above).
        let (keys, next) = tokens::ensure(
            ctx,
            &inputs,
            &handles.guest,
            Target::Guest,
            sets::guest_kubeconfigs(&inputs),
        )
        .await?;
        token_keys.extend(keys);
        let refresh_at = match (refresh_at, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok::<_, Error>((guest_apis_missing, refresh_at, token_keys))
    }
    .await;
    let management_applied = management.apply_all(&workloads).await?;
    let (guest_apis_missing, refresh_at, token_keys) = between?;
    let mut keep_management = keys(&set.management);
    keep_management.extend(keep);
    keep_management.extend(token_keys);
    let snapshots_wanted = set
        .guest
        .iter()
        .any(|o| o.resource.kind == "VolumeSnapshotClass");

    // Prune only when the spec changed since the last success: the sets can
    // only shrink then.
    let observed = hc.status.as_ref().and_then(|s| s.observed_generation);
    if observed.is_none() || observed != hc.metadata.generation {
        let pruned = management
            .prune(
                &management_kinds(),
                Some(&inputs.control_plane_namespace),
                &side_selector(&inputs, side::MANAGEMENT),
                &keep_management,
            )
            .await?
            + guest
                .prune(
                    &guest_kinds(),
                    Some(names::GUEST_CSI_NAMESPACE),
                    &side_selector(&inputs, side::GUEST),
                    &keys(&set.guest),
                )
                .await?;
        let pruned_infra = if inputs.external_infra {
            infra
                .prune(
                    &infra_kinds(),
                    Some(&inputs.infra_namespace),
                    &side_selector(&inputs, side::INFRA),
                    &keys(&set.infra),
                )
                .await?
        } else {
            0
        };
        if pruned + pruned_infra > 0 {
            tracing::info!(
                pruned = pruned + pruned_infra,
                "removed objects no longer desired"
            );
        }
    }
    let components = components::observe(&inputs, &management_applied);
    Ok(Converged {
        inputs,
        refresh_at,
        guest_apis_missing,
        snapshots_wanted,
        components,
    })
}

/// How long a new CRD may take to be established.
const CRD_ESTABLISHED_WITHIN: Duration = Duration::from_secs(30);

/// A hosted cluster's VolumeSnapshot API: its CRDs applied in the guest
/// and established (watched for, when new).
async fn provide_snapshot_api(guest: &Applier<'_>) -> Result<()> {
    let crds = snapshots::crds().map_err(|e| Error::InvalidSpec(format!("embedded CRD: {e}")))?;
    let api: Api<CustomResourceDefinition> = Api::all(guest.client.clone());
    for crd in &crds {
        let mut object = Object::new(crd)?;
        sets::tag(std::slice::from_mut(&mut object), side::GUEST);
        let (_, live) = guest.apply_and_read(&object).await?;
        let name = object.name().to_string();
        let live = live.and_then(|o| o.try_parse::<CustomResourceDefinition>().ok());
        if is_crd_established().matches_object(live.as_ref()) {
            continue;
        }
        let established = await_condition(api.clone(), &name, is_crd_established());
        match tokio::time::timeout(CRD_ESTABLISHED_WITHIN, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Pending(format!(
                    "waiting for CRD {name} to be established: {e}"
                )));
            }
            Err(_) => {
                return Err(Error::Pending(format!(
                    "CRD {name} is not established after {}s",
                    CRD_ESTABLISHED_WITHIN.as_secs()
                )));
            }
        }
    }
    Ok(())
}

/// Whether the guest serves the VolumeSnapshot API (an optional one).
async fn serves_snapshots(guest: &kube::Client) -> Result<bool> {
    match guest
        .list_api_group_resources(&VolumeSnapshotClass::api_version(&()))
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "volumesnapshots")),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::kube(
            Target::Guest,
            "discover the VolumeSnapshot API",
        )(e)),
    }
}

/// What `kubeadm join` needs in a hosted cluster (see [`join`]), for the
/// endpoint and CA of its admin kubeconfig.
fn join_objects(
    hc: &HostedCluster,
    ctx: &Context,
    inputs: &ClusterInputs,
    admin_kubeconfig: &[u8],
) -> Result<Vec<Object>> {
    let hosted = HostedInputs::new(hc, &ctx.settings.images.control_plane_registry)
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let endpoint = endpoint(&String::from_utf8_lossy(admin_kubeconfig))?;
    let mut objects = join::cluster_objects(&JoinCluster {
        endpoint,
        kubernetes_version: hosted.kubernetes_version,
        cluster_name: hosted.infra_id,
        service_cidr: hosted.service_cidr,
        cluster_cidr: hosted.cluster_cidr,
        dns_address: hosted.dns_service_ip.to_string(),
        labels: inputs.owner_labels(),
    })?;
    sets::tag(&mut objects, side::GUEST);
    Ok(objects)
}

/// The conditions of a hosted control plane: what a pass found, or why
/// the pass failed.
fn control_plane_conditions(
    cp: Option<&ControlPlane>,
    outcome: &Result<Converged>,
) -> [Desired; 2] {
    match (cp, outcome) {
        (Some(cp), _) => {
            let etcd = &cp.etcd;
            let reason = match etcd {
                EtcdState::Shared { .. } => reason::SHARED_ETCD_READY,
                EtcdState::Members(_) if etcd.is_available() => reason::QUORUM_AVAILABLE,
                EtcdState::Members(_) => reason::WAITING_FOR_QUORUM,
            };
            [
                Desired::new(
                    kind::ETCD_AVAILABLE,
                    etcd.is_available(),
                    reason,
                    etcd.describe(),
                ),
                match &cp.serving {
                    Ok(()) => Desired::new(
                        kind::KUBE_APISERVER_AVAILABLE,
                        true,
                        reason::AS_EXPECTED,
                        format!(
                            "{} of {} API servers available; the published endpoint is ready",
                            cp.apiserver.ready, cp.apiserver.desired
                        ),
                    ),
                    Err(why) => Desired::new(
                        kind::KUBE_APISERVER_AVAILABLE,
                        false,
                        reason::WAITING_FOR_API_SERVER,
                        why.clone(),
                    ),
                },
            ]
        }
        (None, Err(e)) => [
            Desired::new(kind::ETCD_AVAILABLE, false, e.reason(), e.to_string()),
            Desired::new(
                kind::KUBE_APISERVER_AVAILABLE,
                false,
                e.reason(),
                e.to_string(),
            ),
        ],
        (None, Ok(_)) => [
            Desired::new(kind::ETCD_AVAILABLE, false, reason::RECONCILING, ""),
            Desired::new(
                kind::KUBE_APISERVER_AVAILABLE,
                false,
                reason::RECONCILING,
                "",
            ),
        ],
    }
}

/// What a hosted cluster waits for while its control plane comes up.
pub fn waiting_for(cp: &ControlPlane) -> Error {
    let mut parts = Vec::new();
    if !cp.etcd.is_available() {
        parts.push(cp.etcd.describe());
    }
    if let Err(why) = &cp.serving {
        parts.push(why.clone());
    }
    Error::Pending(format!(
        "waiting for the control plane: {}",
        parts.join("; ")
    ))
}

/// The status after a convergence attempt: conditions with the outcome,
/// for a hosted control plane what `cp` found of it, and the Kubernetes
/// version refused, if one was (the cluster held at the one it runs).
pub fn status_after(
    hc: &HostedCluster,
    cp: Option<&ControlPlane>,
    outcome: &Result<Converged>,
    refused: Option<&Refusal>,
    now: &Time,
) -> HostedClusterStatus {
    let mut status = hc.status.clone().unwrap_or_default();
    let generation = hc.metadata.generation;
    if hc.is_hosted() {
        for d in &control_plane_conditions(cp, outcome) {
            conditions::set(&mut status.conditions, d, generation, now);
        }
        if let Some(cp) = cp {
            status.control_plane_endpoint = cp.endpoint.clone();
            status.kubeconfig = cp.endpoint.as_ref().map(|_| LocalObjectReference {
                name: names::admin_kubeconfig_secret(&hc.metadata.name.clone().unwrap_or_default()),
            });
        }
    }
    let hc_namespace = hc.metadata.namespace.clone().unwrap_or_default();
    let hc_name = hc.metadata.name.clone().unwrap_or_default();
    status.control_plane_namespace = Some(names::control_plane_namespace(&hc_namespace, &hc_name));
    let (available, reconciled, degraded, valid_version) = match outcome {
        Ok(c) => {
            status.infra_namespace = Some(c.inputs.infra_namespace.clone());
            status.observed_generation = generation;
            for found in c.components.iter().filter(|f| !f.component.optional) {
                let (ok, why, message) = found.condition();
                let d = Desired::new(found.component.condition, ok, why, message);
                conditions::set(&mut status.conditions, &d, generation, now);
            }
            (
                match components::not_available(&c.components) {
                    None => Desired::new(
                        kind::AVAILABLE,
                        true,
                        reason::AS_EXPECTED,
                        "All components are available",
                    ),
                    Some(why) => Desired::new(
                        kind::AVAILABLE,
                        false,
                        reason::COMPONENTS_NOT_AVAILABLE,
                        why,
                    ),
                },
                Desired::new(
                    kind::RECONCILIATION_SUCCEEDED,
                    true,
                    reason::AS_EXPECTED,
                    "Every object of the cluster is in place",
                ),
                Desired::new(kind::DEGRADED, false, reason::AS_EXPECTED, ""),
                match refused.cloned().map(Error::Version) {
                    Some(why) => {
                        Desired::new(kind::VALID_VERSION, false, why.reason(), why.to_string())
                    }
                    None => Desired::new(kind::VALID_VERSION, true, reason::AS_EXPECTED, ""),
                },
            )
        }
        Err(e) => {
            let message = e.to_string();
            let valid_version = match e {
                Error::Version(_) => {
                    Desired::new(kind::VALID_VERSION, false, e.reason(), message.clone())
                }
                _ => Desired::new(kind::VALID_VERSION, true, reason::AS_EXPECTED, ""),
            };
            (
                Desired::new(kind::AVAILABLE, false, e.reason(), message.clone()),
                Desired::new(
                    kind::RECONCILIATION_SUCCEEDED,
                    false,
                    e.reason(),
                    message.clone(),
                ),
                Desired::new(kind::DEGRADED, !e.is_pending(), e.reason(), message),
                valid_version,
            )
        }
    };
    for d in [&available, &reconciled, &degraded, &valid_version] {
        conditions::set(&mut status.conditions, d, generation, now);
    }
    // The release's rollout: done when every component runs it.
    if !matches!(outcome, Err(Error::Version(_))) {
        let rolled_out = outcome.is_ok() && (!hc.is_hosted() || cp.is_some_and(|c| c.rolled_out));
        status.version = Some(history::advance(
            status.version.as_ref(),
            &hc.spec.release,
            generation.unwrap_or_default(),
            rolled_out,
            now,
        ));
    }
    if let Ok(c) = outcome
        && let Some(d) = snapshots_condition(c)
    {
        conditions::set(&mut status.conditions, &d, generation, now);
    }
    status
}

/// VolumeSnapshotsAvailable, when the guest should have a snapshot class:
/// whether its API is served. Missing, it is reported here alone.
fn snapshots_condition(c: &Converged) -> Option<Desired> {
    if !c.snapshots_wanted {
        return None;
    }
    let missing: Vec<&str> = c
        .guest_apis_missing
        .iter()
        .filter(|api| api.ends_with(" VolumeSnapshotClass"))
        .map(String::as_str)
        .collect();
    let controller = c
        .components
        .iter()
        .find(|f| f.component == components::SNAPSHOT_CONTROLLER && !f.is_available());
    Some(
        if let (true, Some(controller)) = (missing.is_empty(), controller) {
            let (_, why, message) = controller.condition();
            Desired::new(
                kind::VOLUME_SNAPSHOTS_AVAILABLE,
                false,
                why,
                format!("waiting for the snapshot controller ({message})"),
            )
        } else if missing.is_empty() {
            Desired::new(
                kind::VOLUME_SNAPSHOTS_AVAILABLE,
                true,
                reason::AS_EXPECTED,
                "the guest serves the VolumeSnapshot API; the driver's VolumeSnapshotClass is in place",
            )
        } else {
            Desired::new(
                kind::VOLUME_SNAPSHOTS_AVAILABLE,
                false,
                reason::SNAPSHOT_API_MISSING,
                format!(
                    "the guest cluster does not serve {} (install the VolumeSnapshot CRDs and a snapshot controller there): volume snapshots are unavailable; everything else works",
                    missing.join(", ")
                ),
            )
        },
    )
}

/// Write the status `compute` gives, if it changed. The object a reconcile
/// works on may be older than the live one (the watch cache lags our own
/// writes); when the cached status differs, the status is computed again on
/// the live status (for the converged spec) and written only if that differs
/// too, so a status already written is not written again.
pub async fn write_status(
    ctx: &Context,
    hc: &HostedCluster,
    compute: impl Fn(&HostedCluster) -> HostedClusterStatus,
) -> Result<()> {
    if hc.status.as_ref() == Some(&compute(hc)) {
        return Ok(());
    }
    let ns = hc.metadata.namespace.clone().unwrap_or_default();
    let name = hc.metadata.name.clone().unwrap_or_default();
    let api: Api<HostedCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(live) = api.get_opt(&name).await.map_err(Error::kube(
        Target::Management,
        format!("get HostedCluster {name}"),
    ))?
    else {
        return Ok(());
    };
    // The live status, under the spec that was converged: a newer live spec
    // is not converged yet, so its generation must not be reported observed.
    let mut base = hc.clone();
    base.status = live.status.clone();
    let status = compute(&base);
    if live.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({"status": status});
    ctx.metrics
        .wrote(Target::Management.as_str(), "HostedCluster", "status");
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(
            Target::Management,
            format!("update status of HostedCluster {name}"),
        ))?;
    Ok(())
}

/// `(node, kubelet version)` of the hosted guest's Nodes. The guest may be
/// what an upgrade is meant to repair: unreachable, its Nodes are not
/// looked at (each pool then counts as running the control plane's version).
async fn guest_kubelets(hc: &HostedCluster, ctx: &Context) -> Vec<(String, String)> {
    let nodes = match ctx.clients.handles(hc).await {
        Ok(handles) => Api::<Node>::all(handles.guest)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(Target::Guest, "list Nodes")),
        Err(e) => Err(e),
    };
    match nodes {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|n| {
                let version = n.status?.node_info?.kubelet_version;
                Some((n.metadata.name?, version))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "skew check without the guest's Nodes");
            Vec::new()
        }
    }
}

/// The kubelets the skew policy weighs, as `(who, version)`: each pool's
/// own version, or for a pool without one, each of its Nodes' (`nodes`:
/// `(node, kubelet version)`).
fn kubelets_of(pools: &[NodePool], nodes: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for np in pools {
        let pool = np.metadata.name.clone().unwrap_or_default();
        match &np.spec.release.kubernetes_version {
            Some(v) => out.push((pool, v.clone())),
            None => out.extend(
                nodes
                    .iter()
                    .filter(|(node, _)| crate::watches::pool_of_node(node) == Some(pool.as_str()))
                    .map(|(node, v)| (format!("{pool} (node {node})"), v.clone())),
            ),
        }
    }
    out
}

/// A hosted cluster's change of Kubernetes version that the skew policy
/// forbids (see [`skew`]): looked at while the spec's version is not the
/// newest rollout's, against the version last rolled out everywhere and
/// the kubelets of the cluster's NodePools (a pool without a version of
/// its own runs the control plane's).
async fn refused_kubernetes(hc: &HostedCluster, ctx: &Context) -> Result<Option<Refusal>> {
    let Some(desired) = hc.spec.release.kubernetes_version.as_deref() else {
        return Ok(None);
    };
    let version = hc.status.as_ref().and_then(|s| s.version.as_ref());
    let bare = |v: &str| v.trim_start_matches('v').to_string();
    if !hc.is_hosted() || history::newest_kubernetes(version).map(bare) == Some(bare(desired)) {
        return Ok(None);
    }
    let ns = hc.metadata.namespace.clone().unwrap_or_default();
    let name = hc.metadata.name.clone().unwrap_or_default();
    let pools: Vec<NodePool> = Api::<NodePool>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(Target::Management, "list NodePools"))?
        .items
        .into_iter()
        .filter(|np| np.spec.cluster_name == name)
        .collect();
    // A pool without a version of its own: what its Nodes' kubelets report
    // (they may predate the control plane's last upgrade).
    let nodes = if pools
        .iter()
        .any(|np| np.spec.release.kubernetes_version.is_none())
    {
        guest_kubelets(hc, ctx).await
    } else {
        Vec::new()
    };
    let kubelets = kubelets_of(&pools, &nodes);
    Ok(
        skew::cluster_upgrade(history::completed_kubernetes(version), desired, &kubelets)
            .err()
            .map(Refusal::from),
    )
}

/// `hc` held at the Kubernetes version of its newest rollout, while the
/// version its spec asks for is refused; none before its first rollout.
fn holding(hc: &HostedCluster) -> Option<HostedCluster> {
    let version = hc.status.as_ref().and_then(|s| s.version.as_ref());
    let newest = history::newest_kubernetes(version)?;
    let mut held = hc.clone();
    held.spec.release.kubernetes_version = Some(newest.to_string());
    Some(held)
}

/// Converge (the hosted control plane first, when there is one), report,
/// and decide when to look again. A refused Kubernetes version leaves the
/// control plane at the version it runs, and says why.
pub async fn apply(hc: &HostedCluster, ctx: &Context) -> Result<Action> {
    let refused = refused_kubernetes(hc, ctx).await?;
    let held = refused.as_ref().and_then(|_| holding(hc));
    let target = held.as_ref().unwrap_or(hc);
    let (cp, outcome) = if let (Some(refusal), None) = (&refused, &held) {
        (None, Err(Error::Version(refusal.clone())))
    } else if hc.is_hosted() {
        match controlplane::converge(target, ctx).await {
            Ok(cp) if cp.is_serving() && cp.etcd.is_available() => {
                let outcome = converge(target, ctx, cp.keys.clone()).await;
                (Some(cp), outcome)
            }
            Ok(cp) => {
                let waiting = waiting_for(&cp);
                (Some(cp), Err(waiting))
            }
            Err(e) => (None, Err(e)),
        }
    } else {
        (None, converge(hc, ctx, BTreeSet::new()).await)
    };
    let now = Time(jiff::Timestamp::now());
    write_status(ctx, target, |base| {
        status_after(base, cp.as_ref(), &outcome, refused.as_ref(), &now)
    })
    .await?;
    match outcome {
        Ok(c) => {
            let mut after = ctx.settings.resync;
            let renew = cp.as_ref().and_then(|cp| cp.renew_at);
            let next = match (c.refresh_at, renew) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = next {
                let until = at.duration_since(jiff::Timestamp::now());
                let until = Duration::try_from(until).unwrap_or(Duration::ZERO);
                after = after.min(until.max(Duration::from_secs(1)));
            }
            Ok(Action::requeue(after))
        }
        // A refused version waits for the spec to change.
        Err(Error::Version(_)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::hostedcluster::UpdateState;
    use crate::desired::fixtures::hosted_cluster;
    use crate::version::Refusal;

    /// Both daemons with their replica available.
    fn running() -> Vec<components::Found> {
        [components::CSI_CONTROLLER, components::CCM]
            .into_iter()
            .map(|component| components::Found {
                component,
                state: components::State::Replicas {
                    available: 1,
                    desired: 1,
                },
            })
            .collect()
    }

    #[test]
    fn a_pool_without_a_version_is_weighed_by_its_nodes_kubelets() {
        let pool = |name: &str, version: Option<&str>| {
            let mut np: NodePool = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "clusters"},
                "spec": {"clusterName": "hc", "replicas": 1,
                         "release": {"version": "0.1.0"},
                         "platform": {"kubevirt": {"bootImage": {"containerDiskImage": "img"}}}}
            }))
            .expect("pool");
            np.spec.release.kubernetes_version = version.map(str::to_string);
            np
        };
        let nodes = [
            ("plain-b2c4d".to_string(), "v1.29.3".to_string()),
            ("other-d4f5g".to_string(), "v1.32.13".to_string()),
        ];
        assert_eq!(
            kubelets_of(
                &[pool("pinned", Some("1.31.0")), pool("plain", None)],
                &nodes
            ),
            [
                ("pinned".to_string(), "1.31.0".to_string()),
                (
                    "plain (node plain-b2c4d)".to_string(),
                    "v1.29.3".to_string()
                ),
            ]
        );
        // Its node's kubelet would be four minors behind 1.33.
        assert!(
            crate::skew::cluster_upgrade(
                Some("1.32.13"),
                "1.33.0",
                &kubelets_of(&[pool("plain", None)], &nodes)
            )
            .is_err()
        );
    }

    #[test]
    fn deployed_but_not_running_is_reconciled_and_not_available() {
        let hc = hosted_cluster();
        let mut found = running();
        found[1].state = components::State::Replicas {
            available: 0,
            desired: 1,
        };
        let s = status_after(
            &hc,
            None,
            &Ok(Converged {
                inputs: crate::desired::fixtures::inputs(&hc),
                refresh_at: None,
                guest_apis_missing: BTreeSet::new(),
                snapshots_wanted: false,
                components: found,
            }),
            None,
            &now(),
        );
        assert!(conditions::is_true(
            &s.conditions,
            kind::RECONCILIATION_SUCCEEDED
        ));
        assert!(conditions::is_true(
            &s.conditions,
            kind::CSI_CONTROLLER_AVAILABLE
        ));
        let ccm =
            conditions::find(&s.conditions, kind::CLOUD_CONTROLLER_MANAGER_AVAILABLE).expect("set");
        assert_eq!(
            (ccm.status.as_str(), ccm.reason.as_str()),
            ("False", reason::WAITING_FOR_REPLICAS)
        );
        let available = conditions::find(&s.conditions, kind::AVAILABLE).expect("set");
        assert_eq!(
            (
                available.status.as_str(),
                available.reason.as_str(),
                available.message.as_str()
            ),
            (
                "False",
                reason::COMPONENTS_NOT_AVAILABLE,
                "waiting for the cloud controller manager (Deployment kubevirt-cloud-controller-manager: 0 of 1 replicas available)"
            )
        );
        assert!(!conditions::is_true(&s.conditions, kind::DEGRADED));
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
    }

    #[test]
    fn success_is_available_and_records_the_generation() {
        let mut hc = hosted_cluster();
        hc.metadata.generation = Some(3);
        let inputs = crate::desired::fixtures::inputs(&hc);
        let s = status_after(
            &hc,
            None,
            &Ok(Converged {
                inputs,
                refresh_at: None,
                guest_apis_missing: BTreeSet::new(),
                snapshots_wanted: false,
                components: running(),
            }),
            None,
            &now(),
        );
        assert!(conditions::is_true(&s.conditions, kind::AVAILABLE));
        assert!(!conditions::is_true(&s.conditions, kind::DEGRADED));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.control_plane_namespace.as_deref(),
            Some("clusters-guest1")
        );
        // An external cluster's release is rolled out once deployed.
        let version = s.version.expect("version");
        assert_eq!(version.desired.version, "0.1.0");
        assert_eq!(version.history[0].state, UpdateState::Completed);
        assert_eq!(version.observed_generation, 3);
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn a_refused_kubernetes_version_is_reported_while_the_cluster_stays_available() {
        let hc = hosted_cluster();
        let converged = Converged {
            inputs: crate::desired::fixtures::inputs(&hc),
            refresh_at: None,
            guest_apis_missing: BTreeSet::new(),
            snapshots_wanted: false,
            components: running(),
        };
        let refusal = Refusal::from(
            crate::skew::control_plane_upgrade("1.32.13", "1.34.0").expect_err("skips"),
        );
        let s = status_after(&hc, None, &Ok(converged), Some(&refusal), &now());
        assert!(conditions::is_true(&s.conditions, kind::AVAILABLE));
        assert!(!conditions::is_true(&s.conditions, kind::DEGRADED));
        let valid = conditions::find(&s.conditions, kind::VALID_VERSION).expect("set");
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", reason::UNSUPPORTED_SKEW)
        );
        assert!(
            valid
                .message
                .starts_with("Kubernetes 1.34.0 skips a minor version")
        );
        // Reported again, nothing changes (no write).
        let mut again = hc.clone();
        again.status = Some(s.clone());
        let converged = Converged {
            inputs: crate::desired::fixtures::inputs(&hc),
            refresh_at: None,
            guest_apis_missing: BTreeSet::new(),
            snapshots_wanted: false,
            components: running(),
        };
        let later = Time(jiff::Timestamp::from_second(1_700_000_100).expect("ts"));
        assert_eq!(
            status_after(&again, None, &Ok(converged), Some(&refusal), &later),
            s
        );
    }

    #[test]
    fn a_missing_snapshot_api_is_its_own_condition_and_blocks_nothing() {
        let hc = hosted_cluster();
        let converged = |missing: &[&str]| Converged {
            inputs: crate::desired::fixtures::inputs(&hc),
            refresh_at: None,
            guest_apis_missing: missing.iter().map(|s| s.to_string()).collect(),
            snapshots_wanted: true,
            components: running(),
        };
        let s = status_after(
            &hc,
            None,
            &Ok(converged(&[
                "snapshot.storage.k8s.io/v1 VolumeSnapshotClass",
            ])),
            None,
            &now(),
        );
        assert!(conditions::is_true(&s.conditions, kind::AVAILABLE));
        let snap = conditions::find(&s.conditions, kind::VOLUME_SNAPSHOTS_AVAILABLE).expect("set");
        assert_eq!(
            (snap.status.as_str(), snap.reason.as_str()),
            ("False", "SnapshotAPIMissing")
        );
        assert!(
            snap.message.starts_with(
                "the guest cluster does not serve snapshot.storage.k8s.io/v1 VolumeSnapshotClass"
            ),
            "{}",
            snap.message
        );
        let s = status_after(&hc, None, &Ok(converged(&[])), None, &now());
        assert!(conditions::is_true(
            &s.conditions,
            kind::VOLUME_SNAPSHOTS_AVAILABLE
        ));
    }

    #[test]
    fn failures_are_degraded_with_their_reason() {
        let mut hc = hosted_cluster();
        hc.metadata.generation = Some(2);
        let e = Error::Version(Refusal::Unsupported {
            version: "9.9.9".into(),
            supported: "0.1".into(),
        });
        let s = status_after(&hc, None, &Err(e), None, &now());
        let available = conditions::find(&s.conditions, kind::AVAILABLE).expect("available");
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            ("False", "UnsupportedVersion")
        );
        assert!(conditions::is_true(&s.conditions, kind::DEGRADED));
        assert!(!conditions::is_true(&s.conditions, kind::VALID_VERSION));
        assert_eq!(s.observed_generation, None);

        let e = Error::SecretMissing {
            target: Target::Guest,
            namespace: "clusters".into(),
            name: "k".into(),
        };
        let s = status_after(&hc, None, &Err(e), None, &now());
        let degraded = conditions::find(&s.conditions, kind::DEGRADED).expect("degraded");
        assert_eq!(degraded.reason, "GuestKubeconfigUnavailable");
        assert!(conditions::is_true(&s.conditions, kind::VALID_VERSION));
    }

    #[test]
    fn an_unchanged_outcome_leaves_the_status_equal() {
        let hc0 = hosted_cluster();
        let inputs = crate::desired::fixtures::inputs(&hc0);
        let first = status_after(
            &hc0,
            None,
            &Ok(Converged {
                inputs: inputs.clone(),
                refresh_at: None,
                guest_apis_missing: BTreeSet::new(),
                snapshots_wanted: false,
                components: running(),
            }),
            None,
            &now(),
        );
        let mut hc1 = hc0.clone();
        hc1.status = Some(first.clone());
        let later = Time(jiff::Timestamp::from_second(1_700_000_500).expect("ts"));
        let second = status_after(
            &hc1,
            None,
            &Ok(Converged {
                inputs,
                refresh_at: None,
                guest_apis_missing: BTreeSet::new(),
                snapshots_wanted: false,
                components: running(),
            }),
            None,
            &later,
        );
        assert_eq!(first, second);
    }

    #[test]
    fn a_hosted_cluster_reports_its_control_plane_as_it_is() {
        use super::controlplane::{EtcdState, Readiness};
        use crate::api::controlplane::ApiEndpoint;
        let hc = crate::desired::hosted::fixtures::hosted();
        let cp = ControlPlane {
            endpoint: Some(ApiEndpoint {
                host: "192.168.100.10".into(),
                port: 30443,
            }),
            etcd: EtcdState::Members(Readiness {
                ready: 0,
                desired: 1,
            }),
            apiserver: Readiness {
                ready: 0,
                desired: 1,
            },
            rolled_out: false,
            serving: Err("0 of 1 API servers available".into()),
            admin_kubeconfig: None,
            renew_at: None,
            keys: BTreeSet::new(),
        };
        let s = status_after(&hc, Some(&cp), &Err(waiting_for(&cp)), None, &now());
        let get = |t: &str| {
            conditions::find(&s.conditions, t)
                .expect("condition")
                .clone()
        };
        let etcd = get(kind::ETCD_AVAILABLE);
        assert_eq!(
            (
                etcd.status.as_str(),
                etcd.reason.as_str(),
                etcd.message.as_str()
            ),
            ("False", "WaitingForQuorum", "0 of 1 etcd members ready")
        );
        let kas = get(kind::KUBE_APISERVER_AVAILABLE);
        assert_eq!(kas.message, "0 of 1 API servers available");
        let available = get(kind::AVAILABLE);
        assert_eq!(available.status, "False");
        assert_eq!(
            available.message,
            "waiting for the control plane: 0 of 1 etcd members ready; 0 of 1 API servers available"
        );
        assert!(!conditions::is_true(&s.conditions, kind::DEGRADED));
        assert_eq!(
            s.kubeconfig.map(|k| k.name).as_deref(),
            Some("guest1-admin-kubeconfig")
        );
        assert_eq!(s.control_plane_endpoint.map(|e| e.port), Some(30443));
        let partial = s.version.clone().expect("version");
        assert_eq!(partial.history[0].state, UpdateState::Partial);

        let up = ControlPlane {
            etcd: EtcdState::Members(Readiness {
                ready: 1,
                desired: 1,
            }),
            apiserver: Readiness {
                ready: 1,
                desired: 1,
            },
            serving: Ok(()),
            ..cp
        };
        let s = status_after(
            &hc,
            Some(&up),
            &Err(Error::Pending("x".into())),
            None,
            &now(),
        );
        assert!(conditions::is_true(&s.conditions, kind::ETCD_AVAILABLE));
        let version = s.version.clone().expect("version");
        assert_eq!(version.history[0].state, UpdateState::Partial, "pending");
        assert!(conditions::is_true(
            &s.conditions,
            kind::KUBE_APISERVER_AVAILABLE
        ));

        let shared = ControlPlane {
            etcd: EtcdState::Shared {
                endpoints: "https://etcd.shared-etcd.svc:2379".into(),
                prefix: "/clusters-guest1/".into(),
            },
            ..up
        };
        let s = status_after(
            &hc,
            Some(&shared),
            &Err(Error::Pending("x".into())),
            None,
            &now(),
        );
        let etcd = get_in(&s, kind::ETCD_AVAILABLE);
        assert_eq!(
            (
                etcd.status.as_str(),
                etcd.reason.as_str(),
                etcd.message.as_str()
            ),
            (
                "True",
                "SharedEtcdReady",
                "the cluster's etcd user and prefix /clusters-guest1/ are in place in the shared etcd at https://etcd.shared-etcd.svc:2379"
            )
        );
    }

    fn get_in(
        s: &HostedClusterStatus,
        t: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&s.conditions, t)
            .expect("condition")
            .clone()
    }
}
