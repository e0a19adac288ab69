//! The demo's first step: a hosted cluster from `examples/hostedcluster.yaml`
//! applied to the management cluster as it is. The manager hosts its control
//! plane (the management kubelet runs the real etcd and Kubernetes binaries
//! from the manager's manifests); the step narrates the conditions as they
//! change, shows where each pod of the control-plane namespace runs (etcd,
//! the Kubernetes control plane, the CSI controller, the CCM and the
//! snapshot controller), and talks to the hosted
//! API server through its published endpoint with the admin kubeconfig the
//! status names. Then it applies `examples/nodepool.yaml` and follows the
//! VMs joining the hosted cluster (the lab's guest agent runs their
//! `kubeadm join`): each Node as it registers and turns Ready, and the
//! CSRs the hosted kube-controller-manager approved and signed. Then a
//! claim in the hosted cluster becomes a DataVolume through the CSI
//! controller the manager runs for it, and a snapshot of it becomes ready.
//! Last, with the lab playing the nodes' data plane ([`HostedDataPlane`]),
//! an echo pod on each node behind a LoadBalancer Service answers a client
//! outside both clusters through the ingress the hosted cluster's CCM got
//! from the infra load balancer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::snapshot::VolumeSnapshot;

use super::{Demo, Timeline};
use crate::hcp::{self, hc_resource};
use crate::hosted_data_plane::HostedDataPlane;
use crate::lab::ensure_namespace;
use crate::{LabError, wait};

/// The example, as the README's quickstart applies it.
const EXAMPLE: &str = include_str!("../../../../examples/hostedcluster.yaml");
/// Its NodePool, as the README's quickstart applies it.
const POOL_EXAMPLE: &str = include_str!("../../../../examples/nodepool.yaml");
/// Bound of the wait for Available (a hang guard).
const TIMEOUT: Duration = Duration::from_secs(180);
/// The conditions narrated, in the order they come true.
const CONDITIONS: [&str; 7] = [
    "EtcdAvailable",
    "KubeAPIServerAvailable",
    "ReconciliationSucceeded",
    "CSIControllerAvailable",
    "CloudControllerManagerAvailable",
    "VolumeSnapshotsAvailable",
    "Available",
];

fn invalid(what: &str) -> impl FnOnce(String) -> LabError + '_ {
    move |e| LabError::Invalid(format!("{what}: {e}"))
}

/// Applies the example and follows its control plane up.
pub async fn hosted_cluster(demo: &Demo, t: &Timeline) -> Result<(), LabError> {
    let lab = &demo.lab;
    let management = lab.infra_client();
    let hc: DynamicObject = serde_yaml::from_str(EXAMPLE)
        .map_err(|e| invalid("examples/hostedcluster.yaml")(e.to_string()))?;
    let name = hc.name_any();
    let ns = hc.namespace().unwrap_or_else(|| hcp::NS.to_string());
    ensure_namespace(&management, &ns).await?;
    let hcs: Api<DynamicObject> = Api::namespaced_with(management.clone(), &ns, &hc_resource());
    hcs.create(&PostParams::default(), &hc).await?;
    t.event(format!(
        "management: applied examples/hostedcluster.yaml: HostedCluster {ns}/{name}, Kubernetes {}, {}",
        hc.data["spec"]["release"]["kubernetesVersion"].as_str().unwrap_or("?"),
        hc.data["spec"]["controllerAvailabilityPolicy"].as_str().unwrap_or("SingleReplica"),
    ));

    let hc = wait::within(
        TIMEOUT,
        || format!("HostedCluster {ns}/{name} Available"),
        narrate_until_available(&hcs, &name, t),
    )
    .await??;
    let endpoint = &hc.data["status"]["controlPlaneEndpoint"];
    let endpoint = format!(
        "{}:{}",
        endpoint["host"].as_str().unwrap_or_default(),
        endpoint["port"].as_u64().unwrap_or_default()
    );
    let kubeconfig_secret = hc.data["status"]["kubeconfig"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    t.event(format!(
        "management: the API server is published at https://{endpoint}; status.kubeconfig names Secret {ns}/{kubeconfig_secret}"
    ));

    let cp_ns = hc.data["status"]["controlPlaneNamespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pods: Api<Pod> = Api::namespaced(management.clone(), &cp_ns);
    let mut listed = pods.list(&ListParams::default()).await?.items;
    listed.sort_by_key(|p| p.name_any());
    // The control plane and the daemons the manager runs beside it.
    for pod in &listed {
        let spec = pod.spec.as_ref();
        t.event(format!(
            "management: {cp_ns}/{} on {} at {}",
            pod.name_any(),
            spec.and_then(|s| s.node_name.as_deref()).unwrap_or("?"),
            pod.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .unwrap_or("?"),
        ));
    }

    // The admin kubeconfig, from the host through a loopback forward to the
    // endpoint.
    let (_forward, hosted) = hcp::admin_client(lab, &hc).await?;
    let version = hosted.apiserver_version().await?;
    let namespaces: Vec<String> = Api::<Namespace>::all(hosted.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    t.event(format!(
        "hosted cluster: kube-apiserver {} answers through the endpoint; namespaces: {}",
        version.git_version,
        namespaces.join(", ")
    ));

    // Its nodes: the example NodePool's VMs join with kubeadm's protocol.
    let pool: DynamicObject = serde_yaml::from_str(POOL_EXAMPLE)
        .map_err(|e| invalid("examples/nodepool.yaml")(e.to_string()))?;
    let replicas = pool.data["spec"]["replicas"].as_u64().unwrap_or(0) as usize;
    let pools: Api<DynamicObject> =
        Api::namespaced_with(lab.infra_client(), &ns, &hcp::np_resource());
    pools.create(&PostParams::default(), &pool).await?;
    t.event(format!(
        "management: applied examples/nodepool.yaml: {replicas} VMs that boot with user data running kubeadm join"
    ));
    let nodes = wait::within(
        TIMEOUT,
        || format!("{replicas} Ready nodes in the hosted cluster"),
        narrate_joins(&hosted, replicas, t),
    )
    .await??;
    let csrs = Api::<CertificateSigningRequest>::all(hosted.clone())
        .list(&ListParams::default())
        .await?
        .items;
    for csr in csrs.iter().filter(|c| c.spec.signer_name == KUBELET_SIGNER) {
        let approved = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Approved"))
            .and_then(|c| c.reason.clone())
            .unwrap_or_default();
        t.event(format!(
            "hosted cluster: CSR {} from {}: {approved}, signed by the hosted kube-controller-manager",
            csr.name_any(),
            csr.spec.username.as_deref().unwrap_or("?"),
        ));
    }
    storage(&hosted, &management, &cp_ns, t).await?;
    load_balancer(demo, &hc, &hosted, &nodes, t).await
}

/// Traffic in the hosted cluster: the lab plays its nodes' data plane
/// ([`HostedDataPlane`]: kube-proxy's role, the kubelet's pod side); an
/// echo pod on each joined node, behind a LoadBalancer Service, answers a
/// client outside both clusters through the ingress the hosted CCM got
/// from the infra load balancer.
async fn load_balancer(
    demo: &Demo,
    hc: &DynamicObject,
    hosted: &Client,
    nodes: &[String],
    t: &Timeline,
) -> Result<(), LabError> {
    let lab = &demo.lab;
    let plane = HostedDataPlane::start(lab, hc, nodes).await?;
    let result = async {
        let web = plane.serve_echo(lab, hosted, "demo-web", TIMEOUT).await?;
        for pod in &web.pods {
            t.event(format!(
                "hosted cluster: pod {} Running and Ready on {}, address {} (the lab's kubelet stand-in)",
                pod.name, pod.node, pod.ip
            ));
        }
        let (to, node_port) = (web.ingress, web.node_port);
        t.event(format!(
            "hosted cluster: Service default/demo-web got ingress {} from the infra load balancer (its CCM runs in the management cluster)",
            to.ip()
        ));
        let client = IpAddr::V4(lab_net::OUTSIDE_CLIENT);
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let response = lab_net::client::http_get(&lab.net, to, "/", Some(client)).await?;
            let answer = response.answer()?;
            if seen.insert(answer.identity.pod.clone()) {
                t.event(format!(
                    "client {client} -> GET http://{to}/ -> {} from pod {} on {} (ingress -> virt-launcher pod = VM -> node port {node_port} -> pod)",
                    response.status, answer.identity.pod, answer.identity.node
                ));
            }
            if seen.len() == nodes.len() {
                break;
            }
        }
        web.remove(hosted, TIMEOUT).await
    }
    .await;
    plane.stop().await;
    result
}

/// Storage in the hosted cluster: a claim provisioned by the CSI controller
/// the manager runs for it (a DataVolume in the control-plane namespace),
/// bound by the hosted kube-controller-manager, and a snapshot of it made
/// ready by the snapshot controller and csi-snapshotter; both deleted again.
async fn storage(
    hosted: &Client,
    management: &Client,
    cp_ns: &str,
    t: &Timeline,
) -> Result<(), LabError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(hosted.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "demo-data"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "storageClassName": "kubevirt-csi-infra-default",
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .map_err(|e| invalid("claim")(e.to_string()))?;
    claims.create(&PostParams::default(), &claim).await?;
    let volume = wait::until(&claims, "demo-data", TIMEOUT, |c| {
        let c = c?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound"))
            .then(|| c.spec.as_ref()?.volume_name.clone())
            .flatten()
    })
    .await?;
    let handle = Api::<PersistentVolume>::all(hosted.clone())
        .get(&volume)
        .await?
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .unwrap_or_default();
    let dv = Api::<DataVolume>::namespaced(management.clone(), cp_ns)
        .get_opt(&handle)
        .await?;
    t.event(format!(
        "hosted cluster: claim default/demo-data Bound to {volume}; management: DataVolume {cp_ns}/{handle} {}",
        if dv.is_some() { "made by its CSI controller" } else { "missing" }
    ));
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(hosted.clone(), "default");
    let snapshot: VolumeSnapshot = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "demo-data-snap"},
        "spec": {"volumeSnapshotClassName": "kubevirt-csi-snapshot",
                 "source": {"persistentVolumeClaimName": "demo-data"}}
    }))
    .map_err(|e| invalid("snapshot")(e.to_string()))?;
    snapshots.create(&PostParams::default(), &snapshot).await?;
    let content = wait::until(&snapshots, "demo-data-snap", TIMEOUT, |s| {
        let status = s?.status.as_ref()?;
        status
            .ready_to_use
            .filter(|r| *r)
            .and(status.bound_volume_snapshot_content_name.clone())
    })
    .await?;
    t.event(format!(
        "hosted cluster: VolumeSnapshot default/demo-data-snap ready to use (content {content}; the manager installed the snapshot API and controller)"
    ));
    snapshots
        .delete("demo-data-snap", &DeleteParams::default())
        .await?;
    claims.delete("demo-data", &DeleteParams::default()).await?;
    Ok(())
}

const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Watches the hosted cluster's Nodes, printing each as it registers and
/// turns Ready, until `n` are Ready; their names.
async fn narrate_joins(hosted: &Client, n: usize, t: &Timeline) -> Result<Vec<String>, LabError> {
    let nodes: Api<Node> = Api::all(hosted.clone());
    let mut events = std::pin::pin!(watcher::watcher(nodes, watcher::Config::default()));
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => node,
            Ok(_) => continue,
            Err(e) => {
                return Err(LabError::Watch {
                    what: "hosted Nodes".into(),
                    message: e.to_string(),
                });
            }
        };
        let name = node.name_any();
        let is_ready = crate::wait::node_ready(&node);
        if ready.get(&name) != Some(&is_ready) {
            let address = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| format!(", address {}", a.address))
                .unwrap_or_default();
            t.event(format!(
                "hosted cluster: Node {name} {} (providerID {}{address})",
                if is_ready { "Ready" } else { "registered" },
                node.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_deref())
                    .unwrap_or("-"),
            ));
            ready.insert(name, is_ready);
        }
        if ready.values().filter(|r| **r).count() >= n {
            return Ok(ready
                .into_iter()
                .filter_map(|(name, r)| r.then_some(name))
                .collect());
        }
    }
    Err(LabError::Watch {
        what: "hosted Nodes".into(),
        message: "the watch ended".into(),
    })
}

/// Watches HostedCluster `name`, printing each narrated condition when it
/// changes, until Available.
async fn narrate_until_available(
    hcs: &Api<DynamicObject>,
    name: &str,
    t: &Timeline,
) -> Result<DynamicObject, LabError> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(hcs.clone(), config));
    let mut seen: BTreeMap<&str, (String, String)> = BTreeMap::new();
    while let Some(event) = events.next().await {
        let hc = match event {
            Ok(Event::Apply(hc) | Event::InitApply(hc)) => hc,
            Ok(_) => continue,
            Err(e) => {
                return Err(LabError::Watch {
                    what: format!("HostedCluster {name}"),
                    message: e.to_string(),
                });
            }
        };
        let conditions = hc.data["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for type_ in CONDITIONS {
            let Some(c) = conditions.iter().find(|c| c["type"] == type_) else {
                continue;
            };
            let now = (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            );
            if seen.get(type_) != Some(&now) {
                t.event(format!("management: {type_}={}: {}", now.0, now.1));
                seen.insert(type_, now);
            }
        }
        if hcp::is_true(&hc, "Available") {
            return Ok(hc);
        }
    }
    Err(LabError::Watch {
        what: format!("HostedCluster {name}"),
        message: "the watch ended".into(),
    })
}
