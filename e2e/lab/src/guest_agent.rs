//! What runs inside a VM that joins a hosted control plane, played for the
//! KubeVirt simulator's VMs: cloud-init reads the VM's NoCloud user data
//! (the Secret its `cloudInitNoCloud.secretRef` names), writes its
//! files, and `kubeadm join` with the JoinConfiguration it holds does what
//! kubeadm and kubelet do:
//!
//! 1. discovery from the file kubeconfig: `kube-public/cluster-info`, read
//!    anonymously over TLS verified with the given CA;
//! 2. with the bootstrap token: `kubeadm-config` and `kubelet-config` from
//!    `kube-system`, and a check that no Ready Node has its name;
//! 3. TLS bootstrap: a key of its own and a CSR for `system:node:<name>`
//!    (signer `kubernetes.io/kube-apiserver-client-kubelet`), waited on
//!    until the hosted kube-controller-manager has approved and signed it;
//! 4. as the node, with that certificate: registers its Node (providerID
//!    and kubelet flags from `kubeletExtraArgs`, addresses from the VMI),
//!    reports it Ready, and renews its Lease in `kube-node-lease` every
//!    10 s while the VMI runs.
//!
//! A VMI annotated [`RUNTIME_ANNOTATION`]`: down` is a VM whose container
//! runtime has stopped: its kubelet keeps its Lease but reports the Node
//! NotReady (`KubeletNotReady`), as a real kubelet does; without the
//! annotation it reports Ready again.
//!
//! A VM whose infra Node is lost ([`crate::Lab::lose_node`]) dies with it:
//! its agent stops, so its Lease is no longer renewed and the hosted node
//! lifecycle controller marks its Node NotReady after its grace period.
//!
//! A VM that starts again (a new VMI of the same VM, on any node) keeps its
//! root disk, and with it what its kubelet kept from the join: its client
//! certificate and the cluster's kubelet version ([`Kept`]). cloud-init
//! runs once per instance (KubeVirt's NoCloud instance-id is the VM's
//! firmware UUID, which stays), so the VM does not join again: its kubelet
//! comes back as the node, with the new VMI's address.
//!
//! Every connection leaves from the VM's address inside the lab's network
//! namespace, to the endpoint the user data names. A VM whose user data is
//! missing or bad, or whose token is refused, never joins: the failure is
//! logged, as a real VM's console would show it. So does a VM booted from
//! an image without kubeadm: the lab's image [`NO_KUBEADM_IMAGE`] (any tag)
//! is one; every other boot image is taken to carry kubeadm and kubelet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kubevirt_infra::kubevirt::{VirtualMachineInstance, phase};
use lab_net::Netns;
use lab_net::bridge::Bridge;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the node renews its Lease (kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration it announces (kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// How long kubeadm waits for its CSR to be signed.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(120);
const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const FIELD_MANAGER: &str = "kubelet";
/// A boot image without kubeadm: cloud-init's `kubeadm join` is not found.
pub const NO_KUBEADM_IMAGE: &str = "kubevirt-lab/no-kubeadm";
/// On a VMI, `down`: the VM's container runtime has stopped (see the module
/// docs).
pub const RUNTIME_ANNOTATION: &str = "lab.kubevirt.io/container-runtime";

fn runtime_down(vmi: &VirtualMachineInstance) -> bool {
    vmi.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RUNTIME_ANNOTATION))
        .is_some_and(|v| v == "down")
}

/// Why a VM did not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("user data: {0}")]
    UserData(String),
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("a Node with name {0} and status Ready already exists in the cluster")]
    NodeExists(String),
    #[error("the certificate signing request {0} was {1}")]
    Refused(String, String),
    #[error("timed out waiting for the certificate signing request {0} to be signed")]
    NotSigned(String),
    #[error("watching {what}: {message}")]
    Watch { what: &'static str, message: String },
    #[error("cannot build the {what}: {message}")]
    Build { what: &'static str, message: String },
    #[error("network: {0}")]
    Net(#[from] lab_net::Error),
    #[error("runcmd: kubeadm: command not found (boot image {0})")]
    NoKubeadm(String),
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
}

fn api(what: &'static str) -> impl FnOnce(kube::Error) -> JoinError {
    move |source| JoinError::Api { what, source }
}

/// What the user data tells the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPlan {
    /// `https://host:port` of the control plane.
    pub server: String,
    /// Base64 PEM of the cluster CA.
    pub ca_data: String,
    pub token: String,
    pub node_name: String,
    /// kubelet flags from `nodeRegistration.kubeletExtraArgs`.
    pub kubelet_args: BTreeMap<String, String>,
}

/// Reads cloud-config user data the way cloud-init and kubeadm would.
pub fn parse_user_data(text: &str) -> Result<JoinPlan, JoinError> {
    let bad = |m: &str| JoinError::UserData(m.to_string());
    if !text.starts_with("#cloud-config") {
        return Err(bad("not a #cloud-config document"));
    }
    let config: Value =
        serde_yaml::from_str(text).map_err(|e| JoinError::UserData(e.to_string()))?;
    let files: HashMap<&str, &str> = config["write_files"]
        .as_array()
        .ok_or_else(|| bad("no write_files"))?
        .iter()
        .filter_map(|f| Some((f["path"].as_str()?, f["content"].as_str()?)))
        .collect();
    // runcmd: kubeadm join --config PATH
    let command: Vec<&str> = config["runcmd"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_array())
        .map(|c| c.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .find(|c| c.starts_with(&["kubeadm", "join"]))
        .ok_or_else(|| bad("no kubeadm join in runcmd"))?;
    let config_path = command
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .ok_or_else(|| bad("kubeadm join has no --config"))?;
    let join: Value = serde_yaml::from_str(
        files
            .get(config_path)
            .ok_or_else(|| bad("the join configuration is not written"))?,
    )
    .map_err(|e| JoinError::UserData(format!("join configuration: {e}")))?;
    if join["kind"] != "JoinConfiguration" {
        return Err(bad("the join configuration is not a JoinConfiguration"));
    }
    let discovery_path = join["discovery"]["file"]["kubeConfigPath"]
        .as_str()
        .ok_or_else(|| bad("discovery.file.kubeConfigPath is missing"))?;
    let discovery: Value = serde_yaml::from_str(
        files
            .get(discovery_path)
            .ok_or_else(|| bad("the discovery kubeconfig is not written"))?,
    )
    .map_err(|e| JoinError::UserData(format!("discovery kubeconfig: {e}")))?;
    let cluster = &discovery["clusters"][0]["cluster"];
    let args = &join["nodeRegistration"]["kubeletExtraArgs"];
    let kubelet_args = match args {
        // v1beta4: a list of {name, value}.
        Value::Array(list) => list
            .iter()
            .filter_map(|a| {
                Some((
                    a["name"].as_str()?.to_string(),
                    a["value"].as_str()?.to_string(),
                ))
            })
            .collect(),
        // v1beta3: a map.
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(JoinPlan {
        server: cluster["server"]
            .as_str()
            .ok_or_else(|| bad("the discovery kubeconfig has no server"))?
            .to_string(),
        ca_data: cluster["certificate-authority-data"]
            .as_str()
            .ok_or_else(|| bad("the discovery kubeconfig has no CA"))?
            .to_string(),
        token: join["discovery"]["tlsBootstrapToken"]
            .as_str()
            .ok_or_else(|| bad("discovery.tlsBootstrapToken is missing"))?
            .to_string(),
        node_name: join["nodeRegistration"]["name"]
            .as_str()
            .ok_or_else(|| bad("nodeRegistration.name is missing"))?
            .to_string(),
        kubelet_args,
    })
}

/// The user data Secret a VMI boots with, if any.
fn user_data_secret(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.spec.volumes.iter().find_map(|v| {
        v.extra
            .get("cloudInitNoCloud")?
            .pointer("/secretRef/name")?
            .as_str()
            .map(str::to_string)
    })
}

/// What a VM's root disk keeps from its join: the kubelet's client
/// certificate and key (`/var/lib/kubelet/pki`) and the version it runs.
#[derive(Clone)]
struct Kept {
    cert: String,
    key: String,
    version: String,
}

/// The kept state of each VM (`namespace/name`), across its VMIs.
type Disks = Arc<Mutex<HashMap<String, Kept>>>;

/// One running VM's agent.
struct Running {
    task: JoinHandle<()>,
    /// Its runtime's state ([`RUNTIME_ANNOTATION`]).
    down: watch::Sender<bool>,
    /// The infra Node the VM runs on.
    node: String,
}

/// Runs the agents of every VM booted with user data until dropped. A VM
/// on an infra Node in `lost` (its machine died) stops with it.
pub async fn run(infra: Client, netns: Arc<Netns>, mut lost: watch::Receiver<BTreeSet<String>>) {
    let vmis: Api<VirtualMachineInstance> = Api::all(infra.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    let disks = Disks::default();
    let mut events = watcher::watcher(vmis, watcher::Config::default()).boxed();
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            changed = lost.changed() => {
                if changed.is_err() {
                    return;
                }
                let lost = lost.borrow_and_update();
                running.retain(|_, vm| {
                    let dies = lost.contains(&vm.node);
                    if dies {
                        vm.task.abort();
                    }
                    !dies
                });
                continue;
            }
        };
        let (vmi, live) = match event {
            Ok(Event::Apply(vmi) | Event::InitApply(vmi)) => (vmi, true),
            Ok(Event::Delete(vmi)) => (vmi, false),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "guest agent watch");
                continue;
            }
        };
        let Some(uid) = vmi.metadata.uid.clone() else {
            continue;
        };
        let address = kubevirt_sim_address(&vmi);
        let node = vmi
            .status
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let boots = live
            && vmi.phase() == phase::RUNNING
            && address.is_some()
            && !lost.borrow().contains(&node);
        match (boots, running.get(&uid)) {
            (true, None) => {
                let (Some(secret), Some(address)) = (user_data_secret(&vmi), address) else {
                    continue;
                };
                let (down, runtime) = watch::channel(runtime_down(&vmi));
                let agent = Agent {
                    infra: infra.clone(),
                    netns: netns.clone(),
                    vmi: vmi.clone(),
                    secret,
                    address,
                    runtime,
                    disks: disks.clone(),
                };
                running.insert(
                    uid,
                    Running {
                        task: tokio::spawn(agent.run()),
                        down,
                        node,
                    },
                );
            }
            (true, Some(vm)) => {
                vm.down
                    .send_if_modified(|d| std::mem::replace(d, runtime_down(&vmi)) != *d);
            }
            (false, Some(_)) => {
                if let Some(vm) = running.remove(&uid) {
                    vm.task.abort();
                }
            }
            (false, None) => {}
        }
    }
}

fn kubevirt_sim_address(vmi: &VirtualMachineInstance) -> Option<IpAddr> {
    lab_sim::kubevirt::vmi_addresses(vmi).map(|a| a.v4)
}

/// One booted VM.
struct Agent {
    infra: Client,
    netns: Arc<Netns>,
    vmi: VirtualMachineInstance,
    secret: String,
    address: IpAddr,
    /// Whether its container runtime is down ([`RUNTIME_ANNOTATION`]).
    runtime: watch::Receiver<bool>,
    disks: Disks,
}

impl Agent {
    fn name(&self) -> String {
        self.vmi.metadata.name.clone().unwrap_or_default()
    }

    /// The key of its VM's disk in [`Disks`].
    fn disk(&self) -> String {
        let ns = self.vmi.metadata.namespace.as_deref().unwrap_or_default();
        format!("{ns}/{}", self.name())
    }

    fn kept(&self) -> Option<Kept> {
        self.disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.disk())
            .cloned()
    }

    async fn run(self) {
        let vm = self.name();
        match self.join().await {
            Ok(()) => {}
            Err(e) => tracing::warn!(%vm, "kubeadm join failed: {e}"),
        }
    }

    /// cloud-init: the user data, once the Secret exists (a real
    /// virt-launcher waits for it the same way).
    async fn user_data(&self) -> Result<String, JoinError> {
        let ns = self.vmi.metadata.namespace.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.infra.clone(), &ns);
        let secret =
            kube::runtime::wait::await_condition(secrets, &self.secret, |s: Option<&Secret>| {
                s.is_some()
            })
            .await
            .map_err(|e| JoinError::Watch {
                what: "the user data Secret",
                message: e.to_string(),
            })?
            .ok_or_else(|| JoinError::UserData(format!("Secret {} is gone", self.secret)))?;
        let data = secret.data.unwrap_or_default();
        let bytes = data
            .get("userdata")
            .or_else(|| data.get("userData"))
            .ok_or_else(|| {
                JoinError::UserData(format!("Secret {} has no userdata key", self.secret))
            })?;
        String::from_utf8(bytes.0.clone()).map_err(|e| JoinError::UserData(e.to_string()))
    }

    /// The container image the VM's root disk was imported from, if known.
    async fn boot_image(&self) -> Result<Option<String>, JoinError> {
        let ns = self.vmi.metadata.namespace.clone().unwrap_or_default();
        let vm =
            Api::<kubevirt_infra::kubevirt::VirtualMachine>::namespaced(self.infra.clone(), &ns)
                .get_opt(&self.name())
                .await
                .map_err(api("get VirtualMachine"))?;
        let vm = serde_json::to_value(vm).unwrap_or_default();
        Ok(vm
            .pointer("/spec/dataVolumeTemplates/0/spec/source/registry/url")
            .and_then(Value::as_str)
            .map(|u| u.trim_start_matches("docker://").to_string()))
    }

    async fn join(mut self) -> Result<(), JoinError> {
        let plan = parse_user_data(&self.user_data().await?)?;
        if let Some(image) = self.boot_image().await?
            && image.starts_with(NO_KUBEADM_IMAGE)
        {
            return Err(JoinError::NoKubeadm(image));
        }
        let target: SocketAddr =
            plan.server
                .trim_start_matches("https://")
                .parse()
                .map_err(|_| {
                    JoinError::UserData(format!("server {} is not an address", plan.server))
                })?;
        let bridge = Bridge::from_host_as(
            self.netns.clone(),
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            target,
            Some(self.address),
        )
        .await?;
        let connect = Connect {
            via: bridge.local_addr(),
            server_name: target.ip().to_string(),
            ca_data: plan.ca_data.clone(),
        };

        let kept = match self.kept() {
            Some(kept) => {
                tracing::info!(vm = %plan.node_name, "started again: the kubelet uses what it kept");
                kept
            }
            None => {
                let kept = self.kubeadm_join(&connect, &plan).await?;
                self.disks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.disk(), kept.clone());
                kept
            }
        };
        let Kept { cert, key, version } = kept;
        let node = connect
            .client(json!({
                "client-certificate-data": base64(cert.as_bytes()),
                "client-key-data": base64(key.as_bytes()),
            }))
            .await?;

        // 4. The node: registered, its Lease taken, then reported Ready.
        let leases: Api<Lease> = Api::namespaced(node.clone(), "kube-node-lease");
        self.register(&node, &plan).await?;
        renew(&leases, &plan.node_name).await?;
        let down = *self.runtime.borrow_and_update();
        self.report_status(&node, &plan, &version, !down).await?;
        tracing::info!(vm = %plan.node_name, "node joined");
        let mut tick = tokio::time::interval(LEASE_RENEW);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = renew(&leases, &plan.node_name).await {
                        tracing::debug!(vm = %plan.node_name, error = %e, "lease renewal");
                    }
                }
                changed = self.runtime.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let down = *self.runtime.borrow_and_update();
                    tracing::info!(vm = %plan.node_name, runtime_down = down, "container runtime changed");
                    if let Err(e) = self.report_status(&node, &plan, &version, !down).await {
                        tracing::warn!(vm = %plan.node_name, "node status: {e}");
                    }
                }
            }
        }
    }

    /// kubeadm join's steps 1 to 3 (see the module docs): what the kubelet
    /// keeps.
    async fn kubeadm_join(&self, connect: &Connect, plan: &JoinPlan) -> Result<Kept, JoinError> {
        // 1. Discovery.
        let anonymous = connect.client(json!({})).await?;
        Api::<ConfigMap>::namespaced(anonymous, "kube-public")
            .get("cluster-info")
            .await
            .map_err(api("discovery: read kube-public/cluster-info"))?;

        // 2. The cluster's configuration, with the bootstrap token.
        let bootstrap = connect.client(json!({"token": plan.token})).await?;
        let system: Api<ConfigMap> = Api::namespaced(bootstrap.clone(), "kube-system");
        let kubeadm = system
            .get("kubeadm-config")
            .await
            .map_err(api("read kube-system/kubeadm-config"))?;
        system
            .get("kubelet-config")
            .await
            .map_err(api("read kube-system/kubelet-config"))?;
        let version = kubeadm
            .data
            .as_ref()
            .and_then(|d| d.get("ClusterConfiguration"))
            .and_then(|c| serde_yaml::from_str::<Value>(c).ok())
            .and_then(|c| c["kubernetesVersion"].as_str().map(str::to_string))
            .unwrap_or_default();
        let existing = Api::<Node>::all(bootstrap.clone())
            .get_opt(&plan.node_name)
            .await
            .map_err(api("get Node"))?;
        if existing.as_ref().is_some_and(crate::wait::node_ready) {
            return Err(JoinError::NodeExists(plan.node_name.clone()));
        }

        // 3. TLS bootstrap.
        let (cert, key) = self.bootstrap(&bootstrap, &plan.node_name).await?;
        Ok(Kept { cert, key, version })
    }

    /// A key and a signed client certificate for `system:node:<name>`.
    async fn bootstrap(&self, client: &Client, name: &str) -> Result<(String, String), JoinError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let request = params.serialize_request(&key)?.pem()?;
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let csr: CertificateSigningRequest = serde_json::from_value(json!({
            "metadata": {"generateName": "node-csr-"},
            "spec": {
                "request": ByteString(request.into_bytes()),
                "signerName": KUBELET_SIGNER,
                "usages": ["digital signature", "client auth"],
            },
        }))
        .map_err(|e| JoinError::Build {
            what: "CertificateSigningRequest",
            message: e.to_string(),
        })?;
        let created = csrs
            .create(&PostParams::default(), &csr)
            .await
            .map_err(api("create CertificateSigningRequest"))?;
        let csr_name = created.metadata.name.clone().unwrap_or_default();
        let signed = tokio::time::timeout(
            BOOTSTRAP_TIMEOUT,
            kube::runtime::wait::await_condition(
                csrs,
                &csr_name,
                |c: Option<&CertificateSigningRequest>| {
                    c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                        s.certificate.is_some()
                            || s.conditions
                                .iter()
                                .flatten()
                                .any(|c| c.type_ == "Denied" || c.type_ == "Failed")
                    })
                },
            ),
        )
        .await
        .map_err(|_| JoinError::NotSigned(csr_name.clone()))?
        .map_err(|e| JoinError::Watch {
            what: "the CertificateSigningRequest",
            message: e.to_string(),
        })?;
        let status = signed.and_then(|c| c.status).unwrap_or_default();
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            return Err(JoinError::Refused(
                csr_name,
                format!(
                    "{}: {}",
                    c.type_.to_lowercase(),
                    c.message.clone().unwrap_or_default()
                ),
            ));
        }
        let cert = status
            .certificate
            .map(|c| String::from_utf8_lossy(&c.0).into_owned())
            .ok_or(JoinError::NotSigned(csr_name))?;
        Ok((cert, key.serialize_pem()))
    }

    /// Registers the Node, as kubelet does.
    async fn register(&self, client: &Client, plan: &JoinPlan) -> Result<(), JoinError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let external =
            plan.kubelet_args.get("cloud-provider").map(String::as_str) == Some("external");
        let mut spec = json!({});
        if let Some(id) = plan.kubelet_args.get("provider-id") {
            spec["providerID"] = json!(id);
        }
        if external {
            spec["taints"] = json!([{
                "key": "node.cloudprovider.kubernetes.io/uninitialized",
                "value": "true",
                "effect": "NoSchedule",
            }]);
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": plan.node_name,
                "labels": {
                    "kubernetes.io/hostname": plan.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": spec,
        }))
        .map_err(|e| JoinError::Build {
            what: "Node",
            message: e.to_string(),
        })?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api("register Node")(e)),
        }
        Ok(())
    }

    /// Reports the Node with its addresses, Ready or (its container
    /// runtime down) not, as kubelet does.
    async fn report_status(
        &self,
        client: &Client,
        plan: &JoinPlan,
        version: &str,
        ready: bool,
    ) -> Result<(), JoinError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let now = jiff::Timestamp::now();
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string(),
            })
        };
        let mut addresses =
            vec![json!({"type": "InternalIP", "address": self.address.to_string()})];
        addresses.push(json!({"type": "Hostname", "address": plan.node_name}));
        let status = json!({"status": {
            "addresses": addresses,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                if ready {
                    condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
                } else {
                    condition("Ready", "False", "KubeletNotReady", "container runtime is down")
                },
            ],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://2.0.0",
                "kernelVersion": "6.12.0",
                "osImage": "KubeVirt lab VM",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        }});
        nodes
            .patch_status(
                &plan.node_name,
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .map_err(api("report Node status"))?;
        Ok(())
    }
}

/// Takes or renews the node's Lease.
async fn renew(leases: &Api<Lease>, name: &str) -> Result<(), JoinError> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    });
    leases
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(api("renew Lease"))?;
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How the VM reaches the control plane: through a bridge from host
/// loopback that connects from the VM's address, verifying the serving
/// certificate for the endpoint's address.
struct Connect {
    via: SocketAddr,
    server_name: String,
    ca_data: String,
}

impl Connect {
    /// A client authenticating with `user` (kubeconfig user fields).
    async fn client(&self, user: Value) -> Result<Client, JoinError> {
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hosted", "cluster": {
                "server": format!("https://{}", self.via),
                "certificate-authority-data": self.ca_data,
                "tls-server-name": self.server_name,
            }}],
            "users": [{"name": "vm", "user": user}],
            "contexts": [{"name": "vm", "context": {"cluster": "hosted", "user": "vm"}}],
            "current-context": "vm",
        }))
        .map_err(|e| JoinError::Build {
            what: "kubeconfig",
            message: e.to_string(),
        })?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| JoinError::Build {
            what: "kubeconfig",
            message: e.to_string(),
        })?;
        config.connect_timeout = Some(Duration::from_secs(5));
        Client::try_from(config).map_err(api("client"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_DATA: &str = r#"#cloud-config
write_files:
- path: /etc/kubernetes/discovery.kubeconfig
  permissions: '0600'
  content: |
    apiVersion: v1
    kind: Config
    clusters:
    - name: ''
      cluster:
        server: https://192.168.200.1:6443
        certificate-authority-data: Q0E=
- path: /etc/kubernetes/kubeadm-join.yaml
  permissions: '0600'
  content: |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: JoinConfiguration
    discovery:
      file:
        kubeConfigPath: /etc/kubernetes/discovery.kubeconfig
      tlsBootstrapToken: abcdef.0123456789abcdef
    nodeRegistration:
      name: workers-abcde
      kubeletExtraArgs:
      - name: provider-id
        value: kubevirt://workers-abcde
runcmd:
- - kubeadm
  - join
  - --config
  - /etc/kubernetes/kubeadm-join.yaml
"#;

    #[test]
    fn user_data_gives_the_join() {
        let plan = parse_user_data(USER_DATA).expect("plan");
        assert_eq!(plan.server, "https://192.168.200.1:6443");
        assert_eq!(plan.ca_data, "Q0E=");
        assert_eq!(plan.token, "abcdef.0123456789abcdef");
        assert_eq!(plan.node_name, "workers-abcde");
        assert_eq!(plan.kubelet_args["provider-id"], "kubevirt://workers-abcde");
    }

    #[test]
    fn bad_user_data_says_what_is_wrong() {
        let err = parse_user_data("hello").expect_err("bad");
        assert_eq!(err.to_string(), "user data: not a #cloud-config document");
        let err =
            parse_user_data(&USER_DATA.replace("tlsBootstrapToken", "token")).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "user data: discovery.tlsBootstrapToken is missing"
        );
    }
}
