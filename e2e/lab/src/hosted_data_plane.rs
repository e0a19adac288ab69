//! The data plane of a hosted cluster's joined nodes, as the lab plays it:
//! what a real node runs besides the kubelet's join (which the guest agent
//! plays, [`crate::guest_agent`]).
//!
//! - **kube-proxy's role**: the lab's service proxy ([`ServiceProxy`]) for
//!   the hosted cluster, in the lab's network namespace: each joined
//!   node's address serves its Services' node ports, so the infra load
//!   balancer's path (ingress -> virt-launcher pod, which is the VM's
//!   address -> guest node port -> guest pod) is one real path.
//! - **the kubelet's pod side**: the lab's kubelet stand-in on each node,
//!   running the node's echo pods (`kubevirt-lab/echo`) on addresses of the
//!   Node's `spec.podCIDR` (which the hosted kube-controller-manager
//!   allocates from `spec.networking.clusterNetwork`, so that range must be
//!   one of the lab's: the default [`lab_net::HOSTED_POD_NET`], or a range
//!   of [`lab_net::GUEST_POD_NET`]). Pods of any other image stay Pending:
//!   nothing would run behind them.
//!
//! A node dies with its VM: when the lab loses the infra Node a VM runs
//! on ([`Lab::lose_node`]), that node's kubelet stand-in stops (its echo
//! pods with it: nothing answers on their addresses) and the proxy stops
//! serving the node's address. Its kubelet's Lease stops with the guest
//! agent, so the hosted node lifecycle controller takes its pods out of
//! the Services, as on a real cluster. When KubeVirt starts the VM again
//! on a live node (its lost launcher pod deleted), the node's stand-in
//! starts again and the proxy serves the node's new address: its pods run
//! and become ready again, and the Services take them back.
//!
//! [`HostedDataPlane::serve_echo`] deploys what a user would to see it
//! work: an echo pod on each node behind a LoadBalancer Service, ready
//! once every hop routes to every pod ([`EchoService`]).
//!
//! Each stand-in has a ServiceAccount of its own in the hosted cluster
//! (`kube-system/lab-service-proxy`, bound to `system:node-proxier`;
//! `kube-system/lab-kubelet`, bound to `system:node` and the attach-detach
//! controller's role, as the lab's own guest grants its kubelet stand-in),
//! made with the cluster's admin kubeconfig; they reach the published
//! endpoint through one loopback bridge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Client, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use lab_guest::kubelet::{self, GuestNode};
use lab_net::ServiceProxy;
use lab_net::bridge::Bridge;
use lab_net::proxy::Listen;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{Lab, LabError, hcp, wait};

/// The namespace of the stand-ins' accounts in the hosted cluster.
const NAMESPACE: &str = "kube-system";
const PROXY_ACCOUNT: &str = "lab-service-proxy";
const KUBELET_ACCOUNT: &str = "lab-kubelet";
/// The field manager of the lab's writes in the hosted cluster.
const MANAGER: &str = "lab-hosted-data-plane";

/// A hosted cluster's data plane; stopped when dropped.
pub struct HostedDataPlane {
    pub proxy: Arc<ServiceProxy>,
    /// The joined nodes it plays.
    nodes: Vec<String>,
    /// Runs the kubelet stand-ins, and stops those whose VM is lost.
    supervisor: JoinHandle<()>,
    stop: CancellationToken,
    /// The stand-ins' way to the published endpoint.
    _bridge: Bridge,
}

impl HostedDataPlane {
    /// Starts the service proxy of hosted cluster `hc` (its status read)
    /// and a kubelet stand-in for each of its joined `nodes`.
    pub async fn start(
        lab: &Lab,
        hc: &DynamicObject,
        nodes: &[String],
    ) -> Result<HostedDataPlane, LabError> {
        let (bridge, admin) = hcp::admin_config(lab, hc).await?;
        let admin_client = Client::try_from(admin.clone())?;
        let proxy_client = account(
            &admin_client,
            &admin,
            PROXY_ACCOUNT,
            &["system:node-proxier"],
        )
        .await?;
        let kubelet_client = account(
            &admin_client,
            &admin,
            KUBELET_ACCOUNT,
            &["system:node", "system:controller:attachdetach-controller"],
        )
        .await?;
        let proxy = Arc::new(ServiceProxy::start(
            proxy_client,
            lab.net.clone(),
            Default::default(),
        ));
        // Where each VM runs: the VMIs do not move while their nodes live.
        let namespace = format!("{}-{}", hc.namespace().unwrap_or_default(), hc.name_any());
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(lab.infra_client(), &namespace);
        let mut runs_on = BTreeMap::new();
        for vmi in vmis.list(&ListParams::default()).await? {
            if let Some(node) = vmi.status.as_ref().and_then(|s| s.node_name.clone()) {
                runs_on.insert(vmi.name_any(), node);
            }
        }
        let mut kubelets = Kubelets {
            client: kubelet_client,
            net: lab.net.clone(),
            dir: nodes_dir(&lab.dir),
            running: JoinSet::new(),
        };
        let mut vms = BTreeMap::new();
        for name in nodes {
            let vm = Vm {
                kubelet: Some(kubelets.start(name)?),
                runs_on: runs_on.get(name).cloned().unwrap_or_default(),
            };
            vms.insert(name.clone(), vm);
        }
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            kubelets,
            vms,
            proxy.clone(),
            (lab.lost_nodes(), vmis),
            stop.clone(),
        ));
        Ok(HostedDataPlane {
            proxy,
            nodes: nodes.to_vec(),
            supervisor,
            stop,
            _bridge: bridge,
        })
    }

    /// Stops the kubelet stand-ins and the proxy, and waits until the
    /// stand-ins have stopped.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.supervisor).await;
        self.proxy.stop();
    }

    /// Runs an echo pod (`<name>-<node>`, label `app: <name>`, port
    /// `http` 8080) on each node of this data plane, behind LoadBalancer
    /// Service `name` (port 80) in namespace `default` of the hosted
    /// cluster behind `hosted`; returns once the pods are Ready and both
    /// hops route to all of them: the infra load balancer's ingress to
    /// every VM, and each node's port to every pod.
    pub async fn serve_echo(
        &self,
        lab: &Lab,
        hosted: &Client,
        name: &str,
        timeout: Duration,
    ) -> Result<EchoService, LabError> {
        let pods: Api<Pod> = Api::namespaced(hosted.clone(), ECHO_NAMESPACE);
        for node in &self.nodes {
            let pod = json!({
                "metadata": {"name": format!("{name}-{node}"), "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{
                    "name": "echo", "image": lab_net::echo::IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}]}]}
            });
            pods.create(&PostParams::default(), &from_json(pod)?)
                .await?;
        }
        let mut echo_pods = Vec::new();
        for node in &self.nodes {
            let pod = format!("{name}-{node}");
            let ip = wait::until(&pods, &pod, timeout, |p| {
                wait::pod_ready(p)?;
                p?.status.as_ref()?.pod_ip.clone()
            })
            .await?;
            echo_pods.push(EchoPod {
                name: pod,
                node: node.clone(),
                ip,
            });
        }
        let services: Api<Service> = Api::namespaced(hosted.clone(), ECHO_NAMESPACE);
        let svc = json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        });
        services
            .create(&PostParams::default(), &from_json(svc)?)
            .await?;
        let ip: IpAddr = wait::until(&services, name, timeout, wait::ingress_ip)
            .await?
            .parse()
            .map_err(|e| LabError::Invalid(format!("the ingress of Service {name}: {e}")))?;
        let ingress = SocketAddr::new(ip, 80);
        let node_port = services
            .get(name)
            .await?
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().and_then(|p| p.node_port))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| LabError::Invalid(format!("Service {name} has no node port")))?;
        // The Service is IPv4: its node ports are on the nodes' IPv4 addresses.
        let nodes: Api<Node> = Api::all(hosted.clone());
        let mut node_ports = BTreeMap::new();
        for node in &self.nodes {
            let addresses: Vec<SocketAddr> =
                lab_net::proxy::desired::internal_ips(&nodes.get(node).await?)
                    .into_iter()
                    .filter(IpAddr::is_ipv4)
                    .map(|a| SocketAddr::new(a, node_port))
                    .collect();
            node_ports.insert(node.clone(), addresses);
        }
        let every = self.nodes.len();
        let routed = async {
            lab.infra_proxy
                .until_forwarding(Listen::tcp(ingress), every)
                .await;
            for addr in node_ports.values().flatten() {
                self.proxy.until_forwarding(Listen::tcp(*addr), every).await;
            }
        };
        wait::within(
            timeout,
            || format!("{ingress} and the node ports {node_port} routed to {every} pods"),
            routed,
        )
        .await?;
        Ok(EchoService {
            name: name.to_string(),
            ingress,
            node_port,
            node_ports,
            pods: echo_pods,
        })
    }
}

impl Drop for HostedDataPlane {
    fn drop(&mut self) {
        self.stop.cancel();
        self.proxy.stop();
    }
}

/// A joined node of a [`HostedDataPlane`].
struct Vm {
    /// Its kubelet stand-in, while the VM runs.
    kubelet: Option<AbortHandle>,
    /// The infra Node its VM runs on.
    runs_on: String,
}

/// The kubelet stand-ins of a data plane's nodes.
struct Kubelets {
    client: Client,
    net: Arc<lab_net::Netns>,
    /// Where each node's kubelet directory is.
    dir: std::path::PathBuf,
    running: JoinSet<()>,
}

impl Kubelets {
    /// Starts the stand-in of node `name`.
    fn start(&mut self, name: &str) -> Result<AbortHandle, LabError> {
        let node = GuestNode::new(name, &self.dir.join(name));
        node.prepare().map_err(LabError::io(
            "prepare the kubelet directory of",
            &node.kubelet_dir,
        ))?;
        let mut cfg = node.kubelet_config(Some(self.net.clone()));
        cfg.echo_only = true;
        let (client, node_name) = (self.client.clone(), name.to_string());
        Ok(self.running.spawn(async move {
            if let Err(e) = kubelet::run(client, cfg).await {
                tracing::error!(node = %node_name, "kubelet stand-in stopped: {e}");
            }
        }))
    }
}

/// Keeps the kubelet stand-ins running until `stop`: stops the nodes
/// whose VMs ran on an infra Node as it is lost (and the proxy's listeners
/// on their addresses), and starts them again when their VMs run again on
/// a live node (their VMIs, watched).
async fn supervise(
    mut kubelets: Kubelets,
    mut vms: BTreeMap<String, Vm>,
    proxy: Arc<ServiceProxy>,
    (mut lost, vmis): (
        watch::Receiver<BTreeSet<String>>,
        Api<VirtualMachineInstance>,
    ),
    stop: CancellationToken,
) {
    use futures::StreamExt as _;
    use kube::runtime::watcher::{self, Event};
    lost.mark_changed();
    let mut lost_open = true;
    let mut events = watcher::watcher(vmis, watcher::Config::default()).boxed();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = lost.changed(), if lost_open => {
                if changed.is_err() {
                    lost_open = false;
                    continue;
                }
                let lost = lost.borrow_and_update().clone();
                let mut dead = Vec::new();
                for (name, vm) in &mut vms {
                    if lost.contains(&vm.runs_on)
                        && let Some(kubelet) = vm.kubelet.take()
                    {
                        tracing::info!(node = %name, infra_node = %vm.runs_on, "VM lost with its infra node");
                        kubelet.abort();
                        dead.push(name.as_str());
                    }
                }
                proxy.node_down(dead);
            }
            Some(event) = events.next() => {
                let vmi = match event {
                    Ok(Event::Apply(vmi) | Event::InitApply(vmi)) => vmi,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "hosted data plane: VMI watch");
                        continue;
                    }
                };
                let name = vmi.name_any();
                let Some(vm) = vms.get_mut(&name) else { continue };
                let Some(on) = vmi.status.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                let again = vm.kubelet.is_none()
                    && vmi.phase() == kubevirt_infra::kubevirt::phase::RUNNING
                    && !lost.borrow().contains(&on);
                if !again {
                    continue;
                }
                match kubelets.start(&name) {
                    Ok(kubelet) => {
                        tracing::info!(node = %name, infra_node = %on, "VM runs again");
                        vm.kubelet = Some(kubelet);
                        vm.runs_on = on;
                        proxy.node_up([name.as_str()]);
                    }
                    Err(e) => tracing::warn!(node = %name, "starting the kubelet stand-in again: {e}"),
                }
            }
        }
    }
    kubelets.running.shutdown().await;
}

const ECHO_NAMESPACE: &str = "default";

/// Echo pods behind a LoadBalancer Service ([`HostedDataPlane::serve_echo`]).
#[derive(Clone, Debug)]
pub struct EchoService {
    pub name: String,
    /// The Service's load-balancer ingress, port 80.
    pub ingress: SocketAddr,
    pub node_port: u16,
    /// Where each node serves the node port: its IPv4 addresses.
    pub node_ports: BTreeMap<String, Vec<SocketAddr>>,
    pub pods: Vec<EchoPod>,
}

/// One pod of an [`EchoService`].
#[derive(Clone, Debug)]
pub struct EchoPod {
    pub name: String,
    pub node: String,
    pub ip: String,
}

impl EchoService {
    /// Deletes the Service and its pods, and waits until the kubelet
    /// stand-ins have removed the pods.
    pub async fn remove(self, hosted: &Client, timeout: Duration) -> Result<(), LabError> {
        let services: Api<Service> = Api::namespaced(hosted.clone(), ECHO_NAMESPACE);
        services
            .delete(&self.name, &DeleteParams::default())
            .await?;
        let pods: Api<Pod> = Api::namespaced(hosted.clone(), ECHO_NAMESPACE);
        for pod in &self.pods {
            pods.delete(&pod.name, &DeleteParams::default()).await?;
        }
        for pod in &self.pods {
            wait::until(&pods, &pod.name, timeout, |p| p.is_none().then_some(())).await?;
        }
        Ok(())
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, LabError> {
    serde_json::from_value(v).map_err(|e| LabError::Invalid(e.to_string()))
}

/// Where the joined nodes' kubelet directories go.
fn nodes_dir(lab_dir: &Path) -> std::path::PathBuf {
    lab_dir.join("hosted-nodes")
}

/// A client of ServiceAccount `kube-system/<name>` (made, and bound to
/// the ClusterRoles `roles`, when missing), with the endpoint and CA of
/// `admin`.
async fn account(
    admin: &Client,
    admin_config: &kube::Config,
    name: &str,
    roles: &[&str],
) -> Result<Client, LabError> {
    let params = PatchParams::apply(MANAGER).force();
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    accounts
        .patch(
            name,
            &params,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": NAMESPACE},
            })),
        )
        .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    for role in roles {
        let binding = format!("lab:{name}:{}", role.trim_start_matches("system:"));
        bindings
            .patch(
                &binding,
                &params,
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
                })),
            )
            .await?;
    }
    let token = lab_cluster::request_token(&accounts, name, 24 * 3600).await?;
    let mut config = admin_config.clone();
    config.auth_info = serde_json::from_value(json!({"token": token}))
        .map_err(|e| LabError::Invalid(format!("token of {NAMESPACE}/{name}: {e}")))?;
    Ok(Client::try_from(config)?)
}
