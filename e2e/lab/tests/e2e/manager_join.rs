//! Nodes join their hosted control plane. A NodePool of a hosted cluster
//! (real etcd, kube-apiserver and kube-controller-manager run by the
//! management kubelet) gets VMs booted with cloud-init user data: a
//! discovery kubeconfig with the endpoint and CA, and a kubeadm
//! JoinConfiguration with a bootstrap token of the VM's own. The lab's
//! guest agent does in each VM what kubeadm and kubelet do with it, from
//! the VM's address. Checked on the hosted cluster:
//!
//! - `default/kubernetes` leads to the published endpoint;
//! - both Nodes register and are Ready, with providerID `kubevirt://<vm>`
//!   and the VMI's address;
//! - each came through a CSR made with a bootstrap token
//!   (`system:bootstrap:<id>`) and approved and signed by the hosted
//!   kube-controller-manager (reason AutoApproved), and keeps a Lease;
//! - every token is revoked once its Node has joined;
//! - a VM that cannot join (here: its boot image has no kubeadm) never
//!   joins, keeps its token, and its NodePool names it; with auto-repair,
//!   the pool replaces it;
//! - with auto-repair, a joined node whose kubelet reports NotReady (the
//!   VM's container runtime stopped) for longer than the unhealthy timeout
//!   is replaced by a new VM that joins;
//! - Kubernetes' version skew policy: a pool of kubelets four minor
//!   versions behind is refused, and so is a control-plane upgrade that
//!   skips a minor version, which leaves the control plane where it runs;
//! - deleting the pool leaves no VM, Node, user data or token behind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::manager_support::hosted::*;
use crate::manager_support::*;
use crate::net_support::answers;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::hosted_data_plane::HostedDataPlane;
use kubevirt_lab::wait::node_ready;
use serde_json::json;

const CLUSTER: &str = "joined1";
const CP: &str = "clusters-joined1";
const POOL: &str = "workers";
/// A pool whose VMs boot an image without kubeadm.
const BROKEN: &str = "nokubeadm";
/// A pool of kubelets too old for the control plane.
const OLD: &str = "old";
const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The label on a VM's token and user data.
const JOINING_VM: &str = "hcp.kubevirt-rs.io/joining-vm";
/// A hosted cluster and its VMs take longer than [`WAIT`] to come up.
const JOIN_WAIT: Duration = Duration::from_secs(180);

/// The hosted cluster's Service range: a /20 of the lab's ClusterIP range
/// no lab cluster takes.
const SERVICE_NETWORK: &str = "10.108.128.0/20";
/// Its pod range, in the lab's guest pod range.
const CLUSTER_NETWORK: &str = "10.250.0.0/16";

/// The data plane of the joined nodes: an echo pod on each, behind a
/// LoadBalancer Service of the hosted cluster, answers a client outside
/// both clusters through the ingress the hosted CCM got from the infra
/// load balancer: ingress -> virt-launcher pod (the VM) -> the node's
/// node port -> the pod.
async fn traffic_reaches_pods_on_joined_nodes(
    lab: &kubevirt_lab::Lab,
    hc: &DynamicObject,
    guest: &kube::Client,
    nodes: &[String],
) -> anyhow::Result<()> {
    let plane = HostedDataPlane::start(lab, hc, nodes).await?;
    let result = async {
        let web = plane.serve_echo(lab, guest, "web", WAIT).await?;
        let expected: BTreeSet<(String, String)> = web
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.node.clone()))
            .collect();
        let seen = answers(lab, web.ingress, 20).await?;
        println!(
            "through the hosted cluster's ingress {}: {seen:?}",
            web.ingress
        );
        ensure!(
            seen == expected,
            "answered by {seen:?}, expected {expected:?}"
        );
        // Gone again, through the kubelet stand-ins' end of the deletion.
        Ok(web.remove(guest, WAIT).await?)
    }
    .await;
    plane.stop().await;
    result
}

/// Waits (watching) until `check` accepts the guest's Nodes.
async fn until_nodes<T>(
    nodes: &Api<Node>,
    what: &str,
    mut check: impl FnMut(&BTreeMap<String, Node>) -> Option<T>,
) -> anyhow::Result<T> {
    use futures::StreamExt;
    let watch = async {
        let mut seen = BTreeMap::new();
        let mut events = std::pin::pin!(watcher::watcher(nodes.clone(), Default::default()));
        while let Some(e) = events.next().await {
            match e? {
                Event::Init => seen.clear(),
                Event::InitApply(n) | Event::Apply(n) => {
                    seen.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                Event::Delete(n) => {
                    seen.remove(n.metadata.name.as_deref().unwrap_or_default());
                }
                Event::InitDone => {}
            }
            if let Some(t) = check(&seen) {
                return Ok(t);
            }
        }
        anyhow::bail!("watch ended")
    };
    tokio::time::timeout(JOIN_WAIT, watch)
        .await
        .with_context(|| format!("timed out waiting for {what}"))?
}

/// Every bootstrap token in the guest.
/// The message of a ValidVersion condition refused for skew.
fn refused_for_skew(o: Option<&DynamicObject>) -> Option<String> {
    let o = o?;
    let (status, reason) = condition(o, "ValidVersion")?;
    (status == "False" && reason == "UnsupportedSkew").then(|| condition_message(o, "ValidVersion"))
}

/// With auto-repair, a joined node whose kubelet reports NotReady (its
/// VM's container runtime stopped) for longer than the unhealthy timeout is
/// replaced: its VM goes, a new one (a new uid) joins, and the pool is back
/// to two Ready nodes.
async fn a_node_not_ready_is_replaced(
    pools: &Api<DynamicObject>,
    vms: &Api<VirtualMachine>,
    infra: &kube::Client,
    nodes: &Api<Node>,
    joined: &BTreeMap<String, Node>,
) -> anyhow::Result<()> {
    pools
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"management": {"autoRepair": true}}})),
        )
        .await?;
    let sick = joined.keys().next().context("a joined node")?.clone();
    let sick_uid = vms.get(&sick).await?.metadata.uid;
    Api::<VirtualMachineInstance>::namespaced(infra.clone(), CP)
        .patch(
            &sick,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                kubevirt_lab::guest_agent::RUNTIME_ANNOTATION: "down"
            }}})),
        )
        .await?;
    until_nodes(nodes, "the sick node NotReady", |n| {
        n.get(&sick).filter(|node| !node_ready(node)).map(|_| ())
    })
    .await?;
    crate::common::until_list_within(
        vms,
        &format!("{NODE_POOL_LABEL}={POOL}"),
        "the NotReady node's VM replaced",
        JOIN_WAIT,
        |list: &[VirtualMachine]| {
            let live: Vec<&VirtualMachine> = list
                .iter()
                .filter(|vm| vm.metadata.deletion_timestamp.is_none())
                .collect();
            (live.len() == 2 && live.iter().all(|vm| vm.metadata.uid != sick_uid)).then_some(())
        },
    )
    .await?;
    until_nodes(nodes, "2 Ready nodes of the pool again", |n| {
        let ready = n
            .iter()
            .filter(|(name, node)| name.starts_with(&format!("{POOL}-")) && node_ready(node))
            .count();
        (ready == 2).then_some(())
    })
    .await?;
    until_dynamic(pools, POOL, "pool Ready with 2 nodes again", |np| {
        let np = np?;
        (np.data["status"]["readyReplicas"] == 2 && is_true(np, "Ready")).then_some(())
    })
    .await?;
    println!("auto-repair replaced the NotReady node {sick}");
    Ok(())
}

/// The skew policy, on the running cluster: a pool four minor versions
/// behind is refused; an upgrade skipping a minor version is refused and
/// leaves the control plane (Available) at its version until undone.
async fn version_skew(
    hcs: &Api<DynamicObject>,
    pools: &Api<DynamicObject>,
    infra: &kube::Client,
) -> anyhow::Result<()> {
    let mut old = node_pool(OLD, CLUSTER, 0, "0.1.0", json!({}))?;
    old.data["spec"]["release"]["kubernetesVersion"] = json!("1.28.15");
    pools.create(&PostParams::default(), &old).await?;
    let message = until_dynamic(pools, OLD, "pool refused", refused_for_skew).await?;
    ensure!(
        message
            == "NodePool old runs kubelet 1.28.15, more than three minor versions older than the control plane's 1.32.13; upgrade the NodePool first",
        "{message}"
    );

    let set_version =
        |v: &str| Patch::Merge(json!({"spec": {"release": {"kubernetesVersion": v}}}));
    hcs.patch(CLUSTER, &PatchParams::default(), &set_version("1.34.0"))
        .await?;
    let message = until_dynamic(hcs, CLUSTER, "upgrade refused", refused_for_skew).await?;
    ensure!(
        message
            == "Kubernetes 1.34.0 skips a minor version: the control plane runs 1.32.13 and moves one minor version at a time (next: 1.33)",
        "{message}"
    );
    let hc = hcs.get(CLUSTER).await?;
    ensure!(is_true(&hc, "Available"), "Available while refused");
    ensure!(
        hc.data["status"]["version"]["desired"]["kubernetesVersion"] == "1.32.13",
        "{}",
        hc.data["status"]["version"]
    );
    let apiserver = Api::<Deployment>::namespaced(infra.clone(), CP)
        .get("kube-apiserver")
        .await?;
    let images: Vec<String> = apiserver
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
        .unwrap_or_default();
    ensure!(
        images.iter().all(|i| i.ends_with(":v1.32.13")),
        "{images:?}"
    );
    hcs.patch(CLUSTER, &PatchParams::default(), &set_version("1.32.13"))
        .await?;
    until_dynamic(hcs, CLUSTER, "version valid again", |hc| {
        let hc = hc?;
        is_true(hc, "ValidVersion").then_some(())
    })
    .await?;
    Ok(())
}

async fn tokens(guest: &kube::Client) -> anyhow::Result<Vec<Secret>> {
    Ok(Api::<Secret>::namespaced(guest.clone(), "kube-system")
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some(TOKEN_TYPE))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pool_joins_its_hosted_control_plane_with_bootstrap_tokens() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(
        &lab,
        &[
            "--node-join-timeout-seconds=15",
            "--node-unhealthy-timeout-seconds=3",
        ],
    )
    .await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);
    let pools = node_pools(&infra);

    let result = async {
        // Pod and Service ranges of the lab's network, for the data plane.
        let mut hc = hosted(CLUSTER, Some("1.32.13"))?;
        hc.data["spec"]["networking"] = json!({
            "serviceNetwork": [{"cidr": SERVICE_NETWORK}],
            "clusterNetwork": [{"cidr": CLUSTER_NETWORK}],
        });
        hcs.create(&PostParams::default(), &hc).await?;
        let hc = until_available_within(&hcs, CLUSTER, JOIN_WAIT).await?;
        let endpoint = endpoint_of(&hc)?;
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, CLUSTER, &endpoint).await?;
        // A client that may wait on watches (guest_client's fails fast).
        let mut config = guest_config(&kubeconfig).await?;
        config.read_timeout = None;
        let guest = kube::Client::try_from(config)?;
        let nodes: Api<Node> = Api::all(guest.clone());

        pools
            .create(
                &PostParams::default(),
                &node_pool(POOL, CLUSTER, 2, "0.1.0", json!({}))?,
            )
            .await?;
        // Pods reach the API server through `kubernetes` at the published
        // endpoint, which the nodes reach (the API servers' own addresses
        // are the management cluster's).
        let slice = Api::<EndpointSlice>::namespaced(guest.clone(), "default")
            .get("kubernetes")
            .await?;
        let published: Vec<String> = slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .zip(slice.ports.iter().flatten().filter_map(|p| p.port))
            .map(|(a, p)| format!("{a}:{p}"))
            .collect();
        ensure!(
            published == [endpoint.clone()],
            "kubernetes endpoints {published:?}, published {endpoint}"
        );
        let joined = until_nodes(&nodes, "2 Ready nodes", |n| {
            (n.len() == 2 && n.values().all(node_ready)).then(|| n.clone())
        })
        .await?;

        // Each Node is its VM's, with the VMI's address.
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), CP);
        for (name, node) in &joined {
            let vmi = vmis.get(name).await?;
            let ip = lab_sim::kubevirt::vmi_addresses(&vmi)
                .context("VMI address")?
                .v4
                .to_string();
            let spec = node.spec.clone().unwrap_or_default();
            ensure!(
                spec.provider_id.as_deref() == Some(&format!("kubevirt://{name}")),
                "{name}: providerID {:?}",
                spec.provider_id
            );
            let addresses = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default();
            ensure!(
                addresses
                    .iter()
                    .any(|a| a.type_ == "InternalIP" && a.address == ip),
                "{name}: {addresses:?}, VMI at {ip}"
            );
            let lease = Api::<Lease>::namespaced(guest.clone(), "kube-node-lease")
                .get(name)
                .await?;
            ensure!(
                lease.spec.and_then(|s| s.holder_identity).as_deref() == Some(name.as_str()),
                "{name}: lease"
            );
        }

        // Each through a CSR of a bootstrap token, approved and signed by
        // the hosted kube-controller-manager.
        let csrs = Api::<CertificateSigningRequest>::all(guest.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let kubelet: Vec<&CertificateSigningRequest> = csrs
            .iter()
            .filter(|c| c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet")
            .collect();
        ensure!(kubelet.len() == 2, "{} kubelet CSRs", kubelet.len());
        for csr in kubelet {
            let username = csr.spec.username.clone().unwrap_or_default();
            ensure!(
                username.starts_with("system:bootstrap:"),
                "CSR made by {username}"
            );
            let status = csr.status.clone().unwrap_or_default();
            ensure!(
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Approved" && c.reason.as_deref() == Some("AutoApproved")),
                "{:?}",
                status.conditions
            );
            ensure!(status.certificate.is_some(), "CSR not signed");
        }

        // Every token is revoked once its node has joined.
        let system: Api<Secret> = Api::namespaced(guest.clone(), "kube-system");
        crate::common::until_list_within(
            &system,
            JOINING_VM,
            "bootstrap tokens revoked",
            WAIT,
            |s: &[Secret]| s.is_empty().then_some(()),
        )
        .await?;
        until_dynamic(&pools, POOL, "pool Ready with 2 nodes", |np| {
            let np = np?;
            (np.data["status"]["readyReplicas"] == 2 && is_true(np, "Ready")).then_some(())
        })
        .await?;

        let names: Vec<String> = joined.keys().cloned().collect();
        traffic_reaches_pods_on_joined_nodes(&lab, &hc, &guest, &names).await?;

        // A VM that cannot join never does, and its pool says which: a pool
        // booting an image without kubeadm.
        let mut broken = node_pool(BROKEN, CLUSTER, 1, "0.1.0", json!({}))?;
        broken.data["spec"]["platform"]["kubevirt"]["bootImage"]["containerDiskImage"] =
            json!(format!("{}:1", kubevirt_lab::guest_agent::NO_KUBEADM_IMAGE));
        pools.create(&PostParams::default(), &broken).await?;
        let message = until_dynamic(&pools, BROKEN, "NodesNotJoined", |np| {
            let np = np?;
            let (status, reason) = condition(np, "Ready")?;
            (status == "False" && reason == "NodesNotJoined")
                .then(|| condition_message(np, "Ready"))
        })
        .await?;
        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), CP);
        let stuck = vms
            .list(&ListParams::default().labels(&format!("{NODE_POOL_LABEL}={BROKEN}")))
            .await?
            .items
            .into_iter()
            .find_map(|vm| vm.metadata.name)
            .context("the broken pool's VM")?;
        ensure!(
            message.contains(&format!("VM {stuck} has not joined"))
                && message.contains(&format!("{stuck}-user-data")),
            "{message}"
        );
        ensure!(nodes.get_opt(&stuck).await?.is_none(), "{stuck} joined");
        let left = tokens(&guest).await?;
        ensure!(
            left.len() == 1,
            "{} bootstrap tokens while one VM waits",
            left.len()
        );
        // With auto-repair, the pool replaces the VM that never joined
        // (the replacement may take its name: a new VM has a new uid).
        let stuck_uid = vms.get(&stuck).await?.metadata.uid;
        pools
            .patch(
                BROKEN,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"management": {"autoRepair": true}}})),
            )
            .await?;
        let replacement = crate::common::until_list_within(
            &vms,
            &format!("{NODE_POOL_LABEL}={BROKEN}"),
            "the VM that never joined replaced",
            WAIT,
            |list: &[VirtualMachine]| {
                let fresh: Vec<&str> = list
                    .iter()
                    .filter(|vm| vm.metadata.deletion_timestamp.is_none())
                    .filter(|vm| vm.metadata.uid != stuck_uid)
                    .filter_map(|vm| vm.metadata.name.as_deref())
                    .collect();
                (fresh.len() == 1).then(|| fresh[0].to_string())
            },
        )
        .await?;
        println!("auto-repair replaced VM {stuck} with a new VM {replacement}");

        a_node_not_ready_is_replaced(&pools, &vms, &infra, &nodes, &joined).await?;

        version_skew(&hcs, &pools, &infra).await?;

        // Deleting the pools leaves nothing behind.
        for pool in [POOL, BROKEN, OLD] {
            pools.delete(pool, &DeleteParams::default()).await?;
        }
        for pool in [POOL, BROKEN, OLD] {
            until_dynamic(&pools, pool, "NodePool gone", |np| {
                np.is_none().then_some(())
            })
            .await?;
        }
        ensure!(
            vms.list(&ListParams::default()).await?.items.is_empty(),
            "VMs left"
        );
        until_nodes(&nodes, "no Nodes", |n| n.is_empty().then_some(())).await?;
        let left = tokens(&guest).await?;
        ensure!(left.is_empty(), "{} bootstrap tokens left", left.len());
        let secrets: Api<Secret> = Api::namespaced(infra.clone(), CP);
        crate::common::until_list_within(
            &secrets,
            JOINING_VM,
            "user data Secrets gone",
            WAIT,
            |s: &[Secret]| s.is_empty().then_some(()),
        )
        .await?;
        Ok(())
    }
    .await;
    let log = std::fs::read_to_string(lab.dir.join("hcp-manager.log"))
        .unwrap_or_else(|_| log_of(&manager));
    let log = log
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}
