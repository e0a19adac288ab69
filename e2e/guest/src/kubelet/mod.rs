//! A kubelet stand-in for one guest node: the part of kubelet (and of the
//! attach-detach controller) that brings CSI volumes to pods.
//!
//! For each Pod bound to the node (`spec.nodeName`) that mounts
//! PersistentVolumeClaims, [`run`] waits — through watches of claims and
//! VolumeAttachments, never by polling — for each claim to be Bound and its
//! volume attached to the node (creating the VolumeAttachment
//! `csi-<sha256(handle+driver+node)>` as kube-controller-manager does), then
//! calls NodeStageVolume and NodePublishVolume on the node plugin's socket
//! and reports the pod Running. A grown volume gets NodeExpandVolume and
//! the claim its new capacity. A deleted pod's volumes are unpublished,
//! unstaged and detached when no other pod here uses them, then the pod is
//! deleted for good, kubelet's end of a graceful deletion. Failures become
//! Warning Events on the pod and are retried with backoff. The plugin is
//! registered (CSINode) at start.
//!
//! What a "container" sees of a volume is [`volume_path`]: a directory for a
//! filesystem volume, a device file for a raw block one. [`GuestNode`] lays
//! out one node (kubelet directory, plugin socket, device directory) and
//! gives the node plugin's command line, for tests and `lab demo`.
//!
//! Modules: `paths` (kubelet's layout and names), `volumes` (pod, PV and
//! attachment → CSI requests), `status` (pod and claim status bodies),
//! `records` (what the node published, on disk), `network` (pod addresses
//! and the echo workload), `locks`,
//! `plugin` (CSI Node client, registration), `reconcile` (the pod
//! controller), `housekeeping` (pods that vanished), `node` (one node's setup).

mod error;
mod housekeeping;
mod locks;
mod network;
mod node;
mod paths;
mod plugin;
mod reconcile;
mod records;
mod status;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

pub use error::Error;
pub use node::GuestNode;
pub use paths::{attachment_name, staging_path, volume_path};
pub use plugin::Plugin;
pub use reconcile::confirm_deletion;

use network::PodNetwork;
use reconcile::Context;

/// First and longest pause between attempts to register the plugin.
const REGISTER_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

/// One node's kubelet settings.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The guest Node this kubelet runs (= the worker VM's name).
    pub node_name: String,
    /// kubelet's root directory (`/var/lib/kubelet` on a real node).
    pub kubelet_dir: PathBuf,
    /// The unix socket of the node's CSI plugin for `csi.kubevirt.io`.
    pub csi_socket: PathBuf,
    /// The lab's network namespace, where pods' workloads listen; none: no
    /// workloads run.
    pub network: Option<Arc<lab_net::Netns>>,
    /// `--cluster-dns`: the cluster DNS pods' processes resolve names with.
    pub cluster_dns: Option<std::net::IpAddr>,
    /// Run only pods the lab can run for real: every container the echo
    /// image (a hosted cluster's node, whose other pods, such as the CSI
    /// node DaemonSet's, would have nothing behind them). Other pods stay
    /// Pending, and no node plugin is registered. Off: every pod is brought
    /// up (the lab's own guest, whose node plugins the lab runs beside the
    /// stand-in).
    pub echo_only: bool,
}

/// Runs the kubelet stand-in for `cfg.node_name` against the guest cluster
/// of `client` until the future is dropped. Fails only if the node's
/// kubelet directory cannot be created.
pub async fn run(client: Client, cfg: KubeletConfig) -> Result<(), Error> {
    let pods_dir = paths::pods_dir(&cfg.kubelet_dir);
    std::fs::create_dir_all(&pods_dir).map_err(Error::io("create directory", &pods_dir))?;
    let driver = kubevirt_infra::labels::CSI_DRIVER_NAME.to_string();
    let (host_ip, pod_cidr) = addresses(&client, &cfg.node_name).await;
    let node = cfg.node_name.clone();
    let network = PodNetwork::new(cfg.network.clone(), pod_cidr, cfg.cluster_dns, &node);

    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let store = controller.store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        cfg,
        driver,
        store.clone(),
        host_ip,
        network,
    ));

    let (claim_pods, attachment_pods) = (store.clone(), store);
    let pods = controller
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |pvc| pods_using_claim(&claim_pods, &pvc),
        )
        .watches(
            Api::<VolumeAttachment>::all(client.clone()),
            watcher::Config::default(),
            move |va| pods_waiting_for(&attachment_pods, &node, &va),
        )
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "pod reconcile");
            }
            futures::future::ready(())
        });
    // An echo-only node has no node plugin beside it to register.
    let register = async {
        if !ctx.cfg.echo_only {
            register_until_done(ctx.clone()).await;
        }
    };
    tokio::join!(register, pods, housekeeping::run(ctx.clone()));
    Ok(())
}

/// The node's first InternalIP (the pods' hostIP) and its IPv4 podCIDR, if
/// the Node says.
async fn addresses(client: &Client, node: &str) -> (Option<String>, Option<ipnet::Ipv4Net>) {
    let Ok(Some(node)) = Api::<Node>::all(client.clone()).get_opt(node).await else {
        return (None, None);
    };
    let host_ip = node
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address);
    let pod_cidr = node
        .spec
        .and_then(|s| s.pod_cidrs.or(s.pod_cidr.map(|c| vec![c])))
        .into_iter()
        .flatten()
        .find_map(|c| c.parse().ok());
    (host_ip, pod_cidr)
}

/// Registers the plugin, retrying with backoff until it succeeds.
async fn register_until_done(ctx: Arc<Context>) {
    let mut pause = REGISTER_RETRY.0;
    loop {
        match plugin::register(
            &ctx.client,
            &ctx.driver,
            &ctx.cfg.node_name,
            &ctx.cfg.csi_socket,
        )
        .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(node = %ctx.cfg.node_name, error = %e, "CSI plugin registration; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REGISTER_RETRY.1);
            }
        }
    }
}

/// The pods of this node that mount `pvc`.
fn pods_using_claim(pods: &Store<Pod>, pvc: &PersistentVolumeClaim) -> Vec<ObjectRef<Pod>> {
    let (ns, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
    pods.state()
        .iter()
        .filter(|p| volumes::uses_claim(p, &ns, &name))
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// The pods of this node still waiting for volumes, when an attachment to
/// this node changes.
fn pods_waiting_for(pods: &Store<Pod>, node: &str, va: &VolumeAttachment) -> Vec<ObjectRef<Pod>> {
    if va.spec.node_name != node {
        return Vec::new();
    }
    pods.state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !status::is_running(p) && !volumes::pod_claims(p).is_empty())
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}
