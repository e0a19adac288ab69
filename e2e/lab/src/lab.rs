//! [`Lab`]: the infra and guest clusters (real control planes on one etcd,
//! [`lab_cluster`]), the infra simulators and the worker VMs of one (or
//! more) guest clusters, plus the files daemons under test read:
//! `DIR/infra.kubeconfig`, `DIR/guest.kubeconfig`, `DIR/lab.env`, and each
//! guest node's device tree under `DIR/nodes/<node>/dev`.
//!
//! Who plays which cluster component (no two actors play one role):
//!
//! | role | infra cluster | guest cluster |
//! |---|---|---|
//! | API server, etcd | kube-apiserver, etcd | kube-apiserver, etcd |
//! | garbage collector, namespaces, ServiceAccounts, tokens, CSRs, EndpointSlices, Deployments, ReplicaSets, StatefulSets, DaemonSets, quotas, PVC/PV protection | kube-controller-manager | kube-controller-manager |
//! | PV binding, volume expansion | CDI simulator (`lab:cdi`) | provisioner and resizer stand-ins (`lab:csi-sidecars`) |
//! | attach/detach | (no CSI volumes) | kubelet stand-in (`lab:kubelet`) |
//! | node lifecycle | (none: simulated Nodes have no kubelet) | the cloud controller manager under test |
//! | KubeVirt, hotplug, virt-api | simulators (`lab:kubevirt`, `lab:hotplug`, `lab:virt-api`) | |
//! | snapshots | snapshot simulator (`lab:snapshot-controller`) | snapshotter stand-in (`lab:csi-sidecars`) |
//! | load balancer | LB simulator (`lab:load-balancer`) | |
//!
//! A hosted cluster (management lab) is a guest whose control plane the
//! manager runs: there its own kube-controller-manager (all controllers)
//! binds volumes and makes VolumeAttachments, and the CSI sidecars of its
//! CSI controller pod are `lab-csi-sidecar` processes the management
//! kubelet runs ([`crate::sidecar`]) with the credentials the manager gave
//! the pod: the provisioner only creates volumes, pre-bound to their claims;
//! the snapshot controller is the manager's `csi-snapshot-controller`
//! Deployment, run the same way.
//!
//! The simulators and stand-ins authenticate with static tokens of their
//! `lab:` users (groups `lab:simulators`, `lab:stand-ins`), each bound to
//! the rights of the component it plays and no more ([`crate::rbac`]);
//! every daemon under test runs as its own ServiceAccount
//! ([`crate::identity`]).
//!
//! [`Lab::shutdown`] stops everything and detaches every loop device and
//! mount the lab made; dropping a `Lab` does the same without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubevirt_infra::kubevirt::{VirtualMachineInstance, phase};
use kubevirt_infra::snapshot::VolumeSnapshotClass;
use lab_cluster::{Cluster, ClusterConfig, Etcd};
use lab_guest::kubelet::{GuestNode, KubeletConfig};
use lab_net::bridge::Bridge;
use lab_net::dns::Dns;
use lab_net::proxy::Options as ProxyOptions;
use lab_net::{Netns, ServiceProxy};
use lab_sim::cdi::{CdiConfig, DEFAULT_CLASS_ANNOTATION, PROVISIONER};
use lab_sim::devices::{DeviceConfig, Devices};
use lab_sim::hotplug::HotplugConfig;
use lab_sim::kubevirt::{InfraNode, KubevirtConfig};
use lab_sim::lb::LbConfig;
use lab_sim::snapshot::SnapshotConfig;
use lab_sim::virt_api::{self, VirtApi};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::guest::{guest_node, worker_labels, worker_name, worker_vm};
use crate::kubelet::{ImageMap, ManagementKubelet, ManagementKubeletConfig};
use crate::{LabError, mounts, rbac, wait};

/// Name of the infra StorageClass the lab creates (the default class).
pub const INFRA_STORAGE_CLASS: &str = "local";
/// Name of the infra VolumeSnapshotClass the lab creates (the default class).
pub const INFRA_SNAPSHOT_CLASS: &str = "local-snapshot";
/// How long [`Lab::start`] waits for the worker VMIs to run.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The group of the infra simulators' users.
const SIMULATORS: &str = "lab:simulators";
/// The group of the guest stand-ins' users.
const STAND_INS: &str = "lab:stand-ins";
/// The infra simulators, each with a user of its own.
const INFRA_USERS: rbac::InfraUsers = rbac::InfraUsers {
    kubevirt: "lab:kubevirt",
    hotplug: "lab:hotplug",
    virt_api: "lab:virt-api",
    cdi: "lab:cdi",
    snapshot_controller: "lab:snapshot-controller",
    load_balancer: "lab:load-balancer",
    service_proxy: SERVICE_PROXY_USER,
    cluster_dns: CLUSTER_DNS_USER,
    kubelet: MANAGEMENT_KUBELET_USER,
};
/// The management cluster's kubelet.
const MANAGEMENT_KUBELET_USER: &str = "lab:management-kubelet";
/// The guest stand-ins, each with a user of its own.
const GUEST_USERS: rbac::GuestUsers = rbac::GuestUsers {
    sidecars: SIDECARS_USER,
    kubelet: KUBELET_USER,
    service_proxy: SERVICE_PROXY_USER,
    cluster_dns: CLUSTER_DNS_USER,
};
/// The guest stand-ins: CSI sidecars, kubelets.
pub const SIDECARS_USER: &str = "lab:csi-sidecars";
pub const KUBELET_USER: &str = "lab:kubelet";
/// The service proxy of each cluster (kube-proxy's role).
const SERVICE_PROXY_USER: &str = "lab:service-proxy";
/// The DNS server of each cluster (CoreDNS's role).
const CLUSTER_DNS_USER: &str = "lab:cluster-dns";
/// kube-controller-manager controllers the infra cluster runs without: the
/// CDI simulator binds and grows claims; no CSI volume attaches to an infra
/// Node; simulated Nodes have no kubelet to heartbeat; and OpenShift's
/// service-CA publisher, which the binaries (built from OpenShift's tree of
/// Kubernetes) carry and upstream does not.
const INFRA_WITHOUT: [&str; 5] = [
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-attach-detach-controller",
    "node-lifecycle-controller",
    "service-ca-certificate-publisher-controller",
];
/// ... and a guest cluster without: the provisioner stand-in binds, the
/// resizer stand-in grows, the kubelet stand-in attaches (as the
/// attach-detach controller would), and guest Nodes have no kubelet to
/// heartbeat (the cloud controller manager under test watches them); and
/// OpenShift's service-CA publisher.
const GUEST_WITHOUT: [&str; 5] = [
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-attach-detach-controller",
    "node-lifecycle-controller",
    "service-ca-certificate-publisher-controller",
];

/// What [`Lab::start`] builds.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Lab directory; empty: a temporary directory removed with the lab.
    pub dir: PathBuf,
    /// Worker VMs (and guest Nodes) of the guest cluster.
    pub vms: usize,
    /// Emulate hotplugged disks as loop devices (needs root).
    pub devices: bool,
    /// Minimum time between two hotplug phases of a volume.
    pub hotplug_step_latency: Duration,
    /// Guest cluster name (`cluster.x-k8s.io/cluster-name`).
    pub cluster_name: String,
    /// Infra namespace holding the guest cluster's VMs and volumes.
    pub infra_namespace: String,
    /// Labels on every infra object of the guest cluster.
    pub infra_labels: BTreeMap<String, String>,
    /// Run the infra cluster as a management cluster too: kube-scheduler,
    /// and a kubelet on its Nodes running the pods whose images this map
    /// names (hosted control planes).
    pub management: Option<ImageMap>,
    /// Nodes of the infra (management) cluster, three zones round-robin.
    pub infra_nodes: usize,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            vms: 2,
            devices: true,
            hotplug_step_latency: Duration::ZERO,
            cluster_name: "demo".to_string(),
            infra_namespace: "clusters-demo".to_string(),
            infra_labels: BTreeMap::from([(
                "hypershift.openshift.io/infra-id".to_string(),
                "demo".to_string(),
            )]),
            management: None,
            infra_nodes: 3,
        }
    }
}

/// A further guest cluster sharing the infra cluster (and maybe its namespace).
#[derive(Clone)]
pub struct GuestCluster {
    pub name: String,
    pub api: Cluster,
    pub infra_namespace: String,
    pub infra_labels: BTreeMap<String, String>,
    pub nodes: Vec<String>,
    pub kubeconfig: PathBuf,
    /// Its service proxy and its DNS server.
    pub proxy: Arc<ServiceProxy>,
    _dns: Arc<Dns>,
}

/// A running lab.
pub struct Lab {
    pub infra: Cluster,
    pub guest: Cluster,
    pub dir: PathBuf,
    pub cluster_name: String,
    pub infra_namespace: String,
    pub infra_labels: BTreeMap<String, String>,
    /// Guest node names (= worker VM names).
    pub nodes: Vec<String>,
    pub infra_kubeconfig: PathBuf,
    pub guest_kubeconfig: PathBuf,
    /// The loop-device registry, when devices are emulated.
    pub devices: Option<Arc<Devices>>,
    /// Guest clusters added with [`Lab::add_guest_cluster`].
    pub tenants: Vec<GuestCluster>,
    /// The lab's network namespace (`DIR/netns`), where every address of
    /// the clusters' objects is real ([`lab_net`]).
    pub net: Arc<Netns>,
    /// The service proxies of the infra cluster (which also serves the
    /// load balancer's ingress addresses) and of the guest cluster.
    pub infra_proxy: ServiceProxy,
    pub guest_proxy: ServiceProxy,
    /// The DNS servers of the infra and guest clusters.
    _dns: Vec<Dns>,
    /// The number of the next cluster, for its ClusterIP range.
    next_cluster: AtomicU16,
    virt_api: Option<VirtApi>,
    _virt_api_bridge: Bridge,
    /// The management cluster's kubelet ([`LabConfig::management`]).
    pub kubelet: Option<ManagementKubelet>,
    /// The infra Nodes whose machines are lost ([`Lab::lose_node`]).
    lost_nodes: watch::Sender<BTreeSet<String>>,
    /// The etcd of every cluster of the lab.
    etcd: Arc<Etcd>,
    tasks: JoinSet<()>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Lab {
    /// Starts both API servers and the simulators, creates the infra
    /// namespace, storage classes, infra Nodes and worker VMs, waits until the
    /// VMIs run, creates the guest Nodes and writes the lab files.
    pub async fn start(cfg: LabConfig) -> Result<Lab, LabError> {
        let (dir, tempdir) = if cfg.dir.as_os_str().is_empty() {
            let t = tempfile::Builder::new()
                .prefix("kubevirt-lab-")
                .tempdir()
                .map_err(LabError::io(
                    "create temporary directory in",
                    std::env::temp_dir(),
                ))?;
            (t.path().to_path_buf(), Some(t))
        } else {
            std::fs::create_dir_all(&cfg.dir).map_err(LabError::io("create", &cfg.dir))?;
            let dir = cfg
                .dir
                .canonicalize()
                .map_err(LabError::io("resolve", &cfg.dir))?;
            (dir, None)
        };
        let net = Arc::new(Netns::create(&dir.join("netns"), &lab_net::local_ranges()).await?);
        let binaries = lab_cluster::Binaries::find()?;
        let etcd =
            Arc::new(Etcd::start(&binaries.etcd, &dir.join("logs"), Some(net.clone())).await?);
        let (infra, guest) = tokio::try_join!(
            Cluster::start(
                infra_config(&dir, &net, cfg.management.is_some())?,
                etcd.clone()
            ),
            Cluster::start(
                guest_config(&dir, &cfg.cluster_name, 1, &net)?,
                etcd.clone()
            ),
        )?;
        let (infra_grants, guest_grants) = (rbac::infra(&INFRA_USERS), rbac::guest(&GUEST_USERS));
        tokio::try_join!(
            rbac::apply(&infra, &infra_grants),
            rbac::apply(&guest, &guest_grants),
        )?;
        let (infra_proxy, guest_proxy, infra_dns, guest_dns) = tokio::try_join!(
            start_proxy(&infra, &net, true),
            start_proxy(&guest, &net, false),
            start_dns(&infra, &net, 0),
            start_dns(&guest, &net, 1),
        )?;
        let dns = vec![infra_dns, guest_dns];
        let client = infra.client();

        ensure_namespace(&client, &cfg.infra_namespace).await?;
        // Made while the rest starts: kube-apiserver holds a create back 2 s
        // when the kind's CRD became Established under 2 s before (for HA
        // API servers to catch up), as the VolumeSnapshotClass CRD just did.
        let storage_classes = tokio::spawn(ensure_storage_classes(client.clone()));

        let devices = if cfg.devices {
            Some(Devices::open(&DeviceConfig {
                root: dir.join("nodes"),
            })?)
        } else {
            None
        };
        let infra_ref = &infra;
        let sim = move |user: &'static str| actor_client(infra_ref, user);
        let mut tasks = JoinSet::new();
        let infra_nodes = InfraNode::standard(cfg.infra_nodes.max(1));
        lab_sim::kubevirt::ensure_nodes(&client, &infra_nodes).await?;
        let kubelet = match &cfg.management {
            Some(images) => Some(ManagementKubelet::start(ManagementKubeletConfig {
                dir: dir.clone(),
                server: infra.clone(),
                client: actor_client(&infra, MANAGEMENT_KUBELET_USER).await?,
                netns: net.clone(),
                nodes: infra_nodes
                    .iter()
                    .filter_map(|n| Some((n.name.clone(), n.address.parse().ok()?)))
                    .collect(),
                dns: Lab::cluster_dns(&infra),
                images: images.clone(),
            })?),
            None => None,
        };
        spawn_sim(
            &mut tasks,
            "kubevirt",
            lab_sim::kubevirt::run(
                sim("lab:kubevirt").await?,
                KubevirtConfig {
                    infra_nodes,
                    ..KubevirtConfig::default()
                },
            ),
        );
        let (lost_nodes, lost) = watch::channel(BTreeSet::new());
        tasks.spawn(crate::guest_agent::run(
            sim("lab:kubevirt").await?,
            net.clone(),
            lost,
        ));
        spawn_sim(
            &mut tasks,
            "cdi",
            lab_sim::cdi::run(
                sim("lab:cdi").await?,
                CdiConfig {
                    volume_dir: dir.join("volumes"),
                },
            ),
        );
        spawn_sim(
            &mut tasks,
            "snapshot",
            lab_sim::snapshot::run(
                sim("lab:snapshot-controller").await?,
                SnapshotConfig {
                    data_dir: dir.join("snapshots"),
                    default_driver: PROVISIONER.to_string(),
                },
            ),
        );
        spawn_sim(
            &mut tasks,
            "hotplug",
            lab_sim::hotplug::run(
                sim("lab:hotplug").await?,
                HotplugConfig {
                    step_latency: cfg.hotplug_step_latency,
                    devices: devices.clone(),
                },
            ),
        );
        spawn_sim(
            &mut tasks,
            "lb",
            lab_sim::lb::run(sim("lab:load-balancer").await?, LbConfig::default()),
        );
        let front_proxy_ca = std::fs::read_to_string(&infra.pki().front_proxy_ca_cert)
            .map_err(LabError::io("read", &infra.pki().front_proxy_ca_cert))?;
        let virt_api = VirtApi::start(sim("lab:virt-api").await?, &front_proxy_ca).await?;
        // kube-apiserver, in the namespace, reaches virt-api (on host
        // loopback) at `localhost` there, as its ExternalName Service says.
        let virt_api_at = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), virt_api.port());
        let virt_api_bridge = Bridge::to_host(&net, virt_api_at, virt_api_at).await?;
        infra
            .register_api_service(
                kubevirt_infra::hotplug::GROUP,
                kubevirt_infra::hotplug::VERSION,
                virt_api::NAMESPACE,
                virt_api::SERVICE,
                virt_api.port(),
                virt_api.ca_pem(),
            )
            .await?;

        let infra_kubeconfig = dir.join("infra.kubeconfig");
        let guest_kubeconfig = dir.join("guest.kubeconfig");
        infra
            .write_kubeconfig(
                &infra_kubeconfig,
                &infra.admin_token(),
                Some(&cfg.infra_namespace),
            )
            .map_err(LabError::io("write", &infra_kubeconfig))?;
        guest
            .write_kubeconfig(&guest_kubeconfig, &guest.admin_token(), Some("default"))
            .map_err(LabError::io("write", &guest_kubeconfig))?;

        let mut lab = Lab {
            infra,
            guest,
            dir,
            cluster_name: cfg.cluster_name.clone(),
            infra_namespace: cfg.infra_namespace.clone(),
            infra_labels: cfg.infra_labels.clone(),
            nodes: Vec::new(),
            infra_kubeconfig,
            guest_kubeconfig,
            devices,
            tenants: Vec::new(),
            net,
            infra_proxy,
            guest_proxy,
            _dns: dns,
            next_cluster: AtomicU16::new(2),
            virt_api: Some(virt_api),
            _virt_api_bridge: virt_api_bridge,
            kubelet,
            lost_nodes,
            etcd,
            tasks,
            _tempdir: tempdir,
        };
        let guest_client = lab.guest.client();
        lab.nodes = lab
            .start_workers(
                &guest_client,
                &cfg.cluster_name,
                &cfg.infra_namespace,
                &cfg.infra_labels,
                cfg.vms,
                0,
            )
            .await?;
        storage_classes
            .await
            .map_err(|e| LabError::Invalid(format!("storage classes: {e}")))??;
        lab.write_env()?;
        tracing::info!(dir = %lab.dir.display(), nodes = ?lab.nodes, "lab ready");
        Ok(lab)
    }

    /// The ClusterIP of `cluster`'s DNS (what kubelet's `--cluster-dns` names).
    pub fn cluster_dns(cluster: &Cluster) -> Option<IpAddr> {
        lab_net::dns::cluster_dns_ip(cluster.service_cidr())
    }

    /// The kubelet stand-in's settings for `node` of guest cluster
    /// `cluster`: pods' workloads in the lab network, the cluster's DNS.
    pub fn kubelet_config(&self, node: &GuestNode, cluster: &Cluster) -> KubeletConfig {
        let mut cfg = node.kubelet_config(Some(self.net.clone()));
        cfg.cluster_dns = Lab::cluster_dns(cluster);
        cfg
    }

    /// An admin client of the infra cluster.
    pub fn infra_client(&self) -> Client {
        self.infra.client()
    }

    /// An admin client of the guest cluster.
    pub fn guest_client(&self) -> Client {
        self.guest.client()
    }

    /// A client of the guest cluster for one of the lab's stand-ins
    /// ([`SIDECARS_USER`], [`KUBELET_USER`]), through the front proxy.
    pub async fn stand_in_client(&self, user: &str) -> Result<Client, LabError> {
        actor_client(&self.guest, user).await
    }

    /// `DIR/nodes/<node>/dev`: the device tree of a guest node.
    pub fn node_dev_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node).join("dev")
    }

    /// `DIR/nodes/<node>/dev/disk/by-id`.
    pub fn by_id_dir(&self, node: &str) -> PathBuf {
        self.node_dev_dir(node).join("disk/by-id")
    }

    /// The labels of the guest cluster's worker VMs, VMIs and virt-launcher
    /// pods: role worker, cluster name and the infra labels.
    pub fn worker_labels(&self) -> BTreeMap<String, String> {
        worker_labels(&self.cluster_name, &self.infra_labels)
    }

    /// `DIR/lab.env`.
    pub fn env_file(&self) -> PathBuf {
        self.dir.join("lab.env")
    }

    /// Adds a guest cluster `name` whose `vms` workers live in the lab's infra
    /// namespace, labelled with `infra_labels` (e.g. another infra-id), with
    /// its own guest API server and `DIR/<name>.kubeconfig`.
    pub async fn add_guest_cluster(
        &mut self,
        name: &str,
        infra_labels: BTreeMap<String, String>,
        vms: usize,
    ) -> Result<&GuestCluster, LabError> {
        let index = self.next_cluster.fetch_add(1, Ordering::Relaxed);
        let api = Cluster::start(
            guest_config(&self.dir, name, index, &self.net)?,
            self.etcd.clone(),
        )
        .await?;
        rbac::apply(&api, &rbac::guest(&GUEST_USERS)).await?;
        let proxy = Arc::new(start_proxy(&api, &self.net, false).await?);
        let dns = Arc::new(start_dns(&api, &self.net, index).await?);
        let pod_net = u8::try_from(self.tenants.len() + 1)
            .map_err(|_| LabError::Invalid("too many guest clusters".to_string()))?;
        let kubeconfig = self.dir.join(format!("{name}.kubeconfig"));
        api.write_kubeconfig(&kubeconfig, &api.admin_token(), Some("default"))
            .map_err(LabError::io("write", &kubeconfig))?;
        let client = api.client();
        let namespace = self.infra_namespace.clone();
        let nodes = self
            .start_workers(&client, name, &namespace, &infra_labels, vms, pod_net)
            .await?;
        self.tenants.push(GuestCluster {
            name: name.to_string(),
            api,
            infra_namespace: namespace,
            infra_labels,
            nodes,
            kubeconfig,
            proxy,
            _dns: dns,
        });
        self.tenants
            .last()
            .ok_or_else(|| LabError::Invalid("guest cluster vanished".into()))
    }

    /// Starts a further cluster `name` on the lab's etcd, configured like a
    /// guest cluster, without workers (a hosted cluster's API for the
    /// manager's tests, say). The caller shuts it down.
    pub async fn add_cluster(&self, name: &str) -> Result<Cluster, LabError> {
        let index = self.next_cluster.fetch_add(1, Ordering::Relaxed);
        let cluster = Cluster::start(
            guest_config(&self.dir, name, index, &self.net)?,
            self.etcd.clone(),
        )
        .await?;
        rbac::apply(&cluster, &rbac::guest(&GUEST_USERS)).await?;
        Ok(cluster)
    }

    /// Starts `count` such clusters named `<prefix><i>`, a few at a time.
    pub async fn add_clusters(&self, prefix: &str, count: usize) -> Result<Vec<Cluster>, LabError> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(0..count)
            .map(|i| async move { self.add_cluster(&format!("{prefix}{i}")).await })
            .buffered(4)
            .try_collect()
            .await
    }

    /// Creates `count` worker VMs of `cluster`, waits for their VMIs and
    /// creates their Nodes in the guest cluster behind `guest`, node `i`
    /// with pod range `lab_net::guest_pod_cidr(pod_net, i)`.
    async fn start_workers(
        &self,
        guest: &Client,
        cluster: &str,
        namespace: &str,
        infra_labels: &BTreeMap<String, String>,
        count: usize,
        pod_net: u8,
    ) -> Result<Vec<String>, LabError> {
        let infra = self.infra_client();
        let vms: Api<kubevirt_infra::kubevirt::VirtualMachine> =
            Api::namespaced(infra.clone(), namespace);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra, namespace);
        let labels = worker_labels(cluster, infra_labels);
        let names: Vec<String> = (0..count).map(|i| worker_name(cluster, i)).collect();
        for name in &names {
            vms.create(
                &PostParams::default(),
                &worker_vm(name, namespace, &labels)?,
            )
            .await?;
            let dev = self.by_id_dir(name);
            std::fs::create_dir_all(&dev).map_err(LabError::io("create", &dev))?;
        }
        let nodes: Api<Node> = Api::all(guest.clone());
        for (i, name) in names.iter().enumerate() {
            let node_index = u8::try_from(i)
                .map_err(|_| LabError::Invalid(format!("{count} workers are too many")))?;
            let pod_cidr = lab_net::guest_pod_cidr(pod_net, node_index)?;
            let vmi = wait::until(&vmis, name, START_TIMEOUT, |vmi| {
                vmi.filter(|v| {
                    v.phase() == phase::RUNNING && !v.status.iter().all(|s| s.interfaces.is_empty())
                })
                .cloned()
            })
            .await?;
            let node = guest_node(&vmi, namespace, &pod_cidr.to_string());
            nodes.create(&PostParams::default(), &node).await?;
            // The guest API server may drop status on create, like a real one.
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({"status": node.status})),
                )
                .await?;
        }
        Ok(names)
    }

    /// Writes `DIR/lab.env` (shell `KEY=value` lines).
    fn write_env(&self) -> Result<(), LabError> {
        let labels = self
            .infra_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let env = format!(
            "LAB_DIR={dir}\nNETNS={netns}\nINFRA_NAMESPACE={ns}\nINFRA_CLUSTER_LABELS={labels}\nCLUSTER_NAME={cluster}\nNODES=\"{nodes}\"\nINFRA_KUBECONFIG={infra}\nGUEST_KUBECONFIG={guest}\nNODE_DEVICE_ROOT={root}\n",
            dir = self.dir.display(),
            netns = self.net.path().display(),
            ns = self.infra_namespace,
            cluster = self.cluster_name,
            nodes = self.nodes.join(" "),
            infra = self.infra_kubeconfig.display(),
            guest = self.guest_kubeconfig.display(),
            root = self.dir.join("nodes").display(),
        );
        let path = self.env_file();
        std::fs::write(&path, env).map_err(LabError::io("write", &path))
    }

    /// Loses infra Node `node` as a machine that dies, with everything on
    /// it: the management kubelet's pods there (their processes killed, the
    /// node's Lease no longer renewed), the node's kube-proxy (nothing
    /// listens on its address any more), and the VMs it ran: their guests
    /// stop (no kubelet Lease renewed, nothing answers on their addresses;
    /// see [`crate::guest_agent`] and [`crate::hosted_data_plane`]).
    /// KubeVirt's view of them stays as a lost virt-handler leaves it: the
    /// VMIs still say Running, and the node lifecycle controller marks
    /// their virt-launcher pods not ready.
    pub fn lose_node(&self, node: &str) {
        if let Some(kubelet) = &self.kubelet {
            kubelet.lose_node(node);
        }
        self.infra_proxy.node_down([node]);
        self.lost_nodes
            .send_if_modified(|lost| lost.insert(node.to_string()));
    }

    /// The infra Nodes lost so far, as they are lost.
    pub fn lost_nodes(&self) -> watch::Receiver<BTreeSet<String>> {
        self.lost_nodes.subscribe()
    }

    /// Stops the simulators and servers, then detaches every loop device and
    /// unmounts everything under the lab directory.
    pub async fn shutdown(mut self) -> Result<(), LabError> {
        // The management cluster's pods first: they need the network.
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.stop().await;
        }
        // Clients first, so that none of them sees its server go.
        self.infra_proxy.stop();
        self.guest_proxy.stop();
        for tenant in &self.tenants {
            tenant.proxy.stop();
        }
        self.tasks.shutdown().await;
        if let Some(api) = self.virt_api.take() {
            api.shutdown().await;
        }
        let detached = match self.devices.take() {
            Some(devices) => {
                let d = devices.clone();
                tokio::task::spawn_blocking(move || d.detach_all())
                    .await
                    .map_err(|e| LabError::Invalid(format!("detach task: {e}")))?
            }
            None => Ok(()),
        };
        mounts::unmount_all_under(&self.dir);
        for tenant in std::mem::take(&mut self.tenants) {
            tenant.api.shutdown().await;
        }
        tokio::join!(self.infra.clone().shutdown(), self.guest.clone().shutdown());
        detached.map_err(LabError::from)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.tasks.abort_all();
        if let Some(devices) = self.devices.take()
            && let Err(e) = devices.detach_all()
        {
            tracing::warn!("detaching loop devices: {e}");
        }
        mounts::unmount_all_under(&self.dir);
    }
}

fn spawn_sim(
    tasks: &mut JoinSet<()>,
    name: &'static str,
    sim: impl std::future::Future<Output = Result<(), lab_sim::Error>> + Send + 'static,
) {
    tasks.spawn(async move {
        if let Err(e) = sim.await {
            tracing::error!(simulator = name, "simulator stopped: {e}");
        }
    });
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<(), LabError> {
    Ok(lab_cluster::ensure_namespace(client, name).await?)
}

/// What both clusters enable beyond Kubernetes 1.32's defaults:
/// VolumeAttributesClasses (beta, off by default), which the CSI driver's
/// ControllerModifyVolume and the infra claims it modifies use.
/// Both run in the lab's network namespace.
fn common_config(name: &str, dir: &Path, net: &Arc<Netns>) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(name, dir);
    cfg.netns = Some(net.clone());
    cfg.feature_gates = vec!["VolumeAttributesClass=true".to_string()];
    cfg.runtime_config = vec!["storage.k8s.io/v1beta1=true".to_string()];
    cfg
}

/// The infra cluster: the `lab:` users of the simulators, the lab's first
/// ClusterIP range.
fn infra_config(dir: &Path, net: &Arc<Netns>, scheduler: bool) -> Result<ClusterConfig, LabError> {
    let mut cfg = common_config("infra", &dir.join("clusters/infra"), net);
    cfg.scheduler = scheduler;
    cfg.crds = lab_sim::crds::definitions()?;
    cfg.service_cidr = lab_net::service_cidr(0)?;
    // A management cluster's nodes have a kubelet that heartbeats: the
    // node lifecycle controller then clears their not-ready taint.
    cfg.without_controllers = INFRA_WITHOUT
        .iter()
        .filter(|c| !(scheduler && **c == "node-lifecycle-controller"))
        .map(|c| c.to_string())
        .collect();
    cfg.users = rbac::infra(&INFRA_USERS)
        .iter()
        .map(|g| (g.user.to_string(), vec![SIMULATORS.to_string()]))
        .collect();
    Ok(cfg)
}

/// A guest cluster, the lab's cluster number `index`: the `lab:` users of
/// the stand-ins, its own ClusterIP range.
fn guest_config(
    dir: &Path,
    name: &str,
    index: u16,
    net: &Arc<Netns>,
) -> Result<ClusterConfig, LabError> {
    let mut cfg = common_config(name, &dir.join("clusters").join(name), net);
    cfg.service_cidr = lab_net::service_cidr(index)?;
    cfg.without_controllers = GUEST_WITHOUT.iter().map(|c| c.to_string()).collect();
    cfg.users = rbac::guest(&GUEST_USERS)
        .iter()
        .map(|g| (g.user.to_string(), vec![STAND_INS.to_string()]))
        .collect();
    Ok(cfg)
}

/// The DNS server of `cluster`, the lab's cluster number `index`, behind
/// the `kube-system/kube-dns` Service at the ClusterIP kubelets name as
/// `--cluster-dns` ([`Lab::cluster_dns`]).
async fn start_dns(cluster: &Cluster, net: &Netns, index: u16) -> Result<Dns, LabError> {
    let address = IpAddr::V4(lab_net::dns_address(index)?);
    let cluster_ip = lab_net::dns::cluster_dns_ip(cluster.service_cidr()).ok_or_else(|| {
        LabError::Invalid(format!("no DNS address in {}", cluster.service_cidr()))
    })?;
    let admin = cluster.client();
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": cluster_ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))?;
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-dns-lab", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns",
                                    "endpointslice.kubernetes.io/managed-by": "kubevirt-lab"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        }))
        .map_err(|e| LabError::Invalid(e.to_string()))?;
    lab_cluster::ensure_namespace(&admin, "kube-system").await?;
    create_unless_exists(&Api::namespaced(admin.clone(), "kube-system"), &service).await?;
    create_unless_exists(&Api::namespaced(admin, "kube-system"), &slice).await?;
    let client = actor_client(cluster, CLUSTER_DNS_USER).await?;
    Ok(Dns::start(client, net, address).await?)
}

/// Creates `object` unless one of its name exists.
async fn create_unless_exists<K>(api: &Api<K>, object: &K) -> Result<(), LabError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The service proxy of `cluster`; the infra one serves load-balancer ingress.
async fn start_proxy(
    cluster: &Cluster,
    net: &Arc<Netns>,
    load_balancer_ingress: bool,
) -> Result<ServiceProxy, LabError> {
    let client = actor_client(cluster, SERVICE_PROXY_USER).await?;
    let opts = ProxyOptions {
        load_balancer_ingress,
    };
    Ok(ServiceProxy::start(client, net.clone(), opts))
}

/// A client of `cluster` for the lab's actor `user`, through the front proxy.
async fn actor_client(cluster: &Cluster, user: &str) -> Result<Client, LabError> {
    let token = cluster.token(user).ok_or_else(|| {
        LabError::Invalid(format!("cluster {} has no user {user}", cluster.name()))
    })?;
    Ok(cluster.client_for(&token).await?)
}

/// The infra cluster's default StorageClass (expandable, provisioned by the
/// CDI simulator) and default VolumeSnapshotClass.
async fn ensure_storage_classes(client: Client) -> Result<(), LabError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    if classes.get_opt(INFRA_STORAGE_CLASS).await?.is_none() {
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some(INFRA_STORAGE_CLASS.to_string()),
                annotations: Some(BTreeMap::from([(
                    DEFAULT_CLASS_ANNOTATION.to_string(),
                    "true".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            provisioner: PROVISIONER.to_string(),
            allow_volume_expansion: Some(true),
            reclaim_policy: Some("Delete".to_string()),
            volume_binding_mode: Some("Immediate".to_string()),
            ..StorageClass::default()
        };
        classes.create(&PostParams::default(), &class).await?;
    }
    let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    if snapshot_classes
        .get_opt(INFRA_SNAPSHOT_CLASS)
        .await?
        .is_none()
    {
        let mut class = VolumeSnapshotClass::new(INFRA_SNAPSHOT_CLASS, PROVISIONER, "Delete");
        class.metadata.annotations = Some(BTreeMap::from([(
            lab_sim::snapshot::DEFAULT_CLASS_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
        snapshot_classes
            .create(&PostParams::default(), &class)
            .await?;
    }
    Ok(())
}
