//! The suite running in a lab, as a hosted cluster runs it: the CSI
//! driver's controller service and one node plugin per guest node
//! (`kubevirt-csi-driver` processes), the CSI sidecar and kubelet stand-ins
//! of `lab-guest` in process, and `kubevirt-cloud-controller-manager`.
//!
//! Each daemon runs as the ServiceAccounts its manifests give it, with
//! their RBAC and nothing more ([`crate::identity`]), so the API servers'
//! audit logs tell who did what, and is configured only through its flags,
//! kubeconfigs and config file, exactly as in its manifests. The stand-ins
//! use the lab's `lab:csi-sidecars` and `lab:kubelet` users. [`Suite`] is
//! what `lab up --suite` and `lab demo` run; the daemons must be built
//! (`cargo build --bins`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use kube::Client;
use kube::api::{Api, PostParams};
use kubevirt_infra::labels::CSI_DRIVER_NAME;
use kubevirt_infra::snapshot::VolumeSnapshotClass;
use lab_guest::SidecarConfig;
use lab_guest::kubelet::{self, GuestNode};
use serde_json::json;
use tokio::task::JoinSet;

use crate::daemon::{self, Daemon};
use crate::identity::{self, Identity, Overlay};
use crate::lab::{KUBELET_USER, SIDECARS_USER};
use crate::{Lab, LabError, wait};

pub const CSI_DRIVER_BINARY: &str = "kubevirt-csi-driver";
pub const CCM_BINARY: &str = "kubevirt-cloud-controller-manager";
/// The guest's default StorageClass (ext4 on a SCSI hotplug disk).
pub const STORAGE_CLASS: &str = "kubevirt";
/// The guest's xfs StorageClass.
pub const XFS_STORAGE_CLASS: &str = "kubevirt-xfs";
/// The guest's VolumeSnapshotClass.
pub const SNAPSHOT_CLASS: &str = "kubevirt-snap";
/// How long startup waits (socket, registration) may take.
const STARTUP: Duration = Duration::from_secs(60);
/// How long a daemon gets to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// Which parts of the suite to run.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// The CSI driver with its sidecars and kubelets.
    pub storage: bool,
    /// The cloud controller manager.
    pub ccm: bool,
    /// Extra `--v` verbosity of the daemons.
    pub verbosity: u8,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            storage: true,
            ccm: true,
            verbosity: 2,
        }
    }
}

/// The users the suite's daemons authenticate as.
#[derive(Debug, Default, Clone)]
pub struct Users {
    /// The CSI controller on the infra cluster.
    pub controller_infra: String,
    /// The cloud controller manager on the infra and the guest cluster.
    pub ccm_infra: String,
    pub ccm_guest: String,
}

/// One guest node's CSI node plugin.
#[derive(Debug)]
pub struct NodePlugin {
    pub node: GuestNode,
    pub plugin: Daemon,
}

/// The running suite of the lab's guest cluster.
#[derive(Debug)]
pub struct Suite {
    pub controller: Option<Daemon>,
    pub nodes: Vec<NodePlugin>,
    pub ccm: Option<Daemon>,
    /// Who each daemon is on the API servers (`system:serviceaccount:...`),
    /// for the request counts of the audit logs.
    pub users: Users,
    /// The sidecar and kubelet stand-ins.
    tasks: JoinSet<()>,
}

impl Suite {
    /// Starts the configured parts on `lab` and waits until the CSI node
    /// plugins are registered.
    pub async fn start(lab: &Lab, cfg: &SuiteConfig) -> Result<Suite, LabError> {
        let mut suite = Suite {
            controller: None,
            nodes: Vec::new(),
            ccm: None,
            users: Users::default(),
            tasks: JoinSet::new(),
        };
        // On any failure below, dropping `suite` stops what was started.
        if cfg.storage {
            suite.start_storage(lab, cfg).await?;
        }
        if cfg.ccm {
            let (ccm, infra_user, guest_user) = start_ccm(lab, cfg).await?;
            suite.ccm = Some(ccm);
            suite.users.ccm_infra = infra_user;
            suite.users.ccm_guest = guest_user;
        }
        Ok(suite)
    }

    async fn start_storage(&mut self, lab: &Lab, cfg: &SuiteConfig) -> Result<(), LabError> {
        built(CSI_DRIVER_BINARY)?;
        let guest = lab.guest_client();
        lab_guest::crds::install(&guest, STARTUP).await?;
        create_guest_classes(&guest).await?;

        let (infra_identity, guest_identity) = identity::csi_controller(lab).await?;
        self.users.controller_infra = infra_identity.user.clone();
        let (infra_kubeconfig, guest_kubeconfig) =
            kubeconfigs(lab, "csi-controller", &infra_identity, &guest_identity)?;
        let socket = lab.dir.join("csi-controller").join("csi.sock");
        let labels: Vec<String> = lab
            .infra_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let controller = daemon::spawn(
            CSI_DRIVER_BINARY,
            [
                format!("--endpoint=unix://{}", socket.display()),
                format!("--infra-cluster-kubeconfig={}", infra_kubeconfig.display()),
                format!("--infra-cluster-namespace={}", lab.infra_namespace),
                format!("--infra-cluster-labels={}", labels.join(",")),
                format!("--tenant-cluster-kubeconfig={}", guest_kubeconfig.display()),
                "--run-node-service=false".to_string(),
                "--run-controller-service=true".to_string(),
                format!("--v={}", cfg.verbosity),
            ],
            [("RUST_BACKTRACE", "1")],
            &log_path(lab, "csi-controller"),
        )?;
        self.controller = Some(controller);
        // The sidecars connect lazily: the socket appears at bind(), a
        // moment before the driver serves, and they reconnect on use.
        wait::file_exists(&socket, true, STARTUP).await?;
        self.tasks.spawn(lab_guest::run_all(
            lab_guest::connect_lazy(&socket),
            lab.stand_in_client(SIDECARS_USER).await?,
            SidecarConfig::default(),
        ));
        let node_identity = identity::service_account(
            &lab.guest,
            &identity::CSI_TENANT_NODE,
            &Overlay::default(),
            identity::CSI_TENANT_NODE_ACCOUNT,
        )
        .await?;
        let kubelet_client = lab.stand_in_client(KUBELET_USER).await?;

        for name in &lab.nodes {
            let node = GuestNode::new(name, &lab.dir.join("nodes").join(name));
            node.prepare().map_err(LabError::io(
                "prepare the kubelet directory of",
                &node.kubelet_dir,
            ))?;
            let node_kubeconfig = kubeconfig(
                lab,
                &lab.guest,
                &format!("csi-node-{name}"),
                "guest.kubeconfig",
                &node_identity,
                "default",
            )?;
            let plugin = daemon::spawn(
                CSI_DRIVER_BINARY,
                node.plugin_args(&node_kubeconfig)
                    .into_iter()
                    .chain([format!("--v={}", cfg.verbosity)]),
                [("RUST_BACKTRACE", "1")],
                &log_path(lab, &format!("csi-node-{name}")),
            )?;
            let (client, kubelet_cfg) = (
                kubelet_client.clone(),
                lab.kubelet_config(&node, &lab.guest),
            );
            let node_name = name.clone();
            self.tasks.spawn(async move {
                if let Err(e) = kubelet::run(client, kubelet_cfg).await {
                    tracing::error!(node = %node_name, "kubelet stand-in stopped: {e}");
                }
            });
            self.nodes.push(NodePlugin { node, plugin });
        }

        let csinodes: Api<CSINode> = Api::all(guest);
        for n in &self.nodes {
            wait::until(&csinodes, &n.node.node_name, STARTUP, |c| {
                c.filter(|c| c.spec.drivers.iter().any(|d| d.name == CSI_DRIVER_NAME))
                    .map(|_| ())
            })
            .await?;
        }
        Ok(())
    }

    /// Every daemon: its name, pid and log file.
    pub fn daemons(&self) -> impl Iterator<Item = &Daemon> {
        self.controller
            .iter()
            .chain(self.nodes.iter().map(|n| &n.plugin))
            .chain(self.ccm.iter())
    }

    /// The last `lines` lines of every daemon's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.daemons()
            .map(|d| {
                let log = d.log();
                let all: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} ---\n{}\n",
                    d.log_path().display(),
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            })
            .collect()
    }

    /// Stops the stand-ins, then each daemon (SIGTERM, then SIGKILL after
    /// a grace period).
    pub async fn stop(mut self) -> Result<(), LabError> {
        self.tasks.shutdown().await;
        let mut first_error = None;
        let daemons = self
            .controller
            .take()
            .into_iter()
            .chain(self.nodes.drain(..).map(|n| n.plugin))
            .chain(self.ccm.take());
        for mut d in daemons {
            if let Err(e) = d.terminate(GRACE).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Fails with a clear message when workspace binary `name` is not built.
fn built(name: &str) -> Result<PathBuf, LabError> {
    let path = daemon::binary(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(LabError::Invalid(format!(
            "{} is not built; run `cargo build --bins` first",
            path.display()
        )))
    }
}

fn log_path(lab: &Lab, daemon: &str) -> PathBuf {
    lab.dir.join("logs").join(format!("{daemon}.log"))
}

/// The kubeconfigs of `daemon` (`DIR/<daemon>/{infra,guest}.kubeconfig`)
/// for its identities on the infra and guest clusters.
fn kubeconfigs(
    lab: &Lab,
    daemon: &str,
    infra: &Identity,
    guest: &Identity,
) -> Result<(PathBuf, PathBuf), LabError> {
    Ok((
        kubeconfig(
            lab,
            &lab.infra,
            daemon,
            "infra.kubeconfig",
            infra,
            &lab.infra_namespace,
        )?,
        kubeconfig(
            lab,
            &lab.guest,
            daemon,
            "guest.kubeconfig",
            guest,
            "default",
        )?,
    ))
}

/// `DIR/<daemon>/<file>`: a kubeconfig of `cluster` for `identity`.
fn kubeconfig(
    lab: &Lab,
    cluster: &lab_cluster::Cluster,
    daemon: &str,
    file: &str,
    identity: &Identity,
    namespace: &str,
) -> Result<PathBuf, LabError> {
    let dir = lab.dir.join(daemon);
    std::fs::create_dir_all(&dir).map_err(LabError::io("create", &dir))?;
    let path = dir.join(file);
    cluster
        .write_kubeconfig(&path, &identity.token, Some(namespace))
        .map_err(LabError::io("write", &path))?;
    Ok(path)
}

/// The cloud config the CCM reads, as the hosted-control-plane operator
/// writes it: the infra kubeconfig and namespace, the tenant's infra labels,
/// load balancers (with EndpointSlice mirroring) and InstancesV2 on.
pub fn cloud_config(
    infra_kubeconfig: &Path,
    namespace: &str,
    infra_labels: &BTreeMap<String, String>,
) -> String {
    let labels: String = infra_labels
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect();
    format!(
        "kubeconfig: {}\nnamespace: {namespace}\ninfraLabels:\n{labels}\
         loadBalancer:\n  enabled: true\n  enableEPSController: true\n\
         instancesV2:\n  enabled: true\n  zoneAndRegionEnabled: true\n",
        infra_kubeconfig.display()
    )
}

/// The CCM, and its users on the infra and the guest cluster.
async fn start_ccm(lab: &Lab, cfg: &SuiteConfig) -> Result<(Daemon, String, String), LabError> {
    built(CCM_BINARY)?;
    let infra_identity = identity::service_account(
        &lab.infra,
        &identity::CCM_INFRA,
        &Overlay::namespace(&lab.infra_namespace),
        identity::CCM_ACCOUNT,
    )
    .await?;
    let guest_identity = identity::service_account(
        &lab.guest,
        &identity::CCM_GUEST,
        &Overlay::default(),
        identity::CCM_ACCOUNT,
    )
    .await?;
    let (infra_kubeconfig, guest_kubeconfig) =
        kubeconfigs(lab, "ccm", &infra_identity, &guest_identity)?;
    let config_path = lab.dir.join("ccm").join("cloud-config");
    std::fs::write(
        &config_path,
        cloud_config(&infra_kubeconfig, &lab.infra_namespace, &lab.infra_labels),
    )
    .map_err(LabError::io("write", &config_path))?;
    let ccm = daemon::spawn(
        CCM_BINARY,
        [
            "--cloud-provider=kubevirt".to_string(),
            format!("--cloud-config={}", config_path.display()),
            format!("--kubeconfig={}", guest_kubeconfig.display()),
            format!("--cluster-name={}", lab.cluster_name),
            "--secure-port=0".to_string(),
            "--leader-elect=false".to_string(),
            format!("--v={}", cfg.verbosity),
        ],
        [("RUST_BACKTRACE", "1")],
        &log_path(lab, "ccm"),
    )?;
    Ok((ccm, infra_identity.user, guest_identity.user))
}

/// The guest StorageClasses of the driver (`kubevirt`, the default, ext4;
/// `kubevirt-xfs`) and its VolumeSnapshotClass, unless they exist.
async fn create_guest_classes(client: &Client) -> Result<(), LabError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    for (name, params, default) in [
        (STORAGE_CLASS, json!({"bus": "scsi"}), true),
        (
            XFS_STORAGE_CLASS,
            json!({"bus": "scsi", "csi.storage.k8s.io/fstype": "xfs"}),
            false,
        ),
    ] {
        if classes.get_opt(name).await?.is_some() {
            continue;
        }
        let class: StorageClass = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {
                "storageclass.kubernetes.io/is-default-class": default.to_string()}},
            "provisioner": CSI_DRIVER_NAME,
            "parameters": params,
            "allowVolumeExpansion": true,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }))
        .map_err(|e| LabError::Invalid(format!("StorageClass {name}: {e}")))?;
        classes.create(&PostParams::default(), &class).await?;
    }
    let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    if snapshot_classes.get_opt(SNAPSHOT_CLASS).await?.is_none() {
        let class = VolumeSnapshotClass::new(SNAPSHOT_CLASS, CSI_DRIVER_NAME, "Delete");
        snapshot_classes
            .create(&PostParams::default(), &class)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_is_what_the_ccm_reads() {
        let labels = BTreeMap::from([(
            "hypershift.openshift.io/infra-id".to_string(),
            "demo".to_string(),
        )]);
        let text = cloud_config(
            Path::new("/lab/ccm/infra.kubeconfig"),
            "clusters-demo",
            &labels,
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
        assert_eq!(
            yaml["kubeconfig"].as_str(),
            Some("/lab/ccm/infra.kubeconfig")
        );
        assert_eq!(yaml["namespace"].as_str(), Some("clusters-demo"));
        assert_eq!(
            yaml["infraLabels"]["hypershift.openshift.io/infra-id"].as_str(),
            Some("demo")
        );
        assert_eq!(yaml["loadBalancer"]["enabled"].as_bool(), Some(true));
        assert_eq!(yaml["instancesV2"]["enabled"].as_bool(), Some(true));
    }
}
