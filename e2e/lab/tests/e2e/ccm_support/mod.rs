//! Shared pieces of the cloud controller manager end-to-end tests: a lab
//! without loop devices, the `kubevirt-cloud-controller-manager` binary
//! started as a real process as the ServiceAccounts and with the RBAC of
//! `manifests/cloud-provider` (infra side: one per tenant, with a name
//! suffix; guest side: `kube-system/cloud-controller-manager`), so its
//! requests can be counted and a missing rule fails, and waits that watch
//! rather than poll.
//!
//! The binary must be built first:
//! `cargo build -p kubevirt-cloud-controller-manager`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use anyhow::Context as _;
use kube::Resource;
use kube::api::Api;
use kubevirt_lab::daemon::{self, Daemon};
use kubevirt_lab::identity::{self, Overlay};
use kubevirt_lab::{Lab, LabConfig};
use lab_cluster::Cluster;
use serde::de::DeserializeOwned;

pub const BINARY: &str = "kubevirt-cloud-controller-manager";
/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub const TENANT_SERVICE_NAME: &str = "cluster.x-k8s.io/tenant-service-name";
pub const TENANT_SERVICE_NAMESPACE: &str = "cluster.x-k8s.io/tenant-service-namespace";
pub const CLUSTER_NAME: &str = "cluster.x-k8s.io/cluster-name";
pub const ROLE: &str = "cluster.x-k8s.io/role";
pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY_EPS: &str = "kubevirt-eps-controller";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A lab for the CCM: `vms` workers, no emulated disks.
pub async fn lab(vms: usize, cluster: &str) -> anyhow::Result<Lab> {
    let cfg = LabConfig {
        vms,
        devices: false,
        cluster_name: cluster.to_string(),
        infra_namespace: format!("clusters-{cluster}"),
        infra_labels: BTreeMap::from([(
            "hypershift.openshift.io/infra-id".to_string(),
            cluster.to_string(),
        )]),
        ..LabConfig::default()
    };
    crate::common::start_lab_for(BINARY, "kubevirt-cloud-controller-manager", cfg).await
}

/// The tenant one CCM serves.
pub struct Tenant<'a> {
    pub cluster: String,
    pub guest: &'a Cluster,
    pub infra_namespace: String,
    pub infra_labels: BTreeMap<String, String>,
}

impl<'a> Tenant<'a> {
    /// The lab's own guest cluster.
    pub fn main(lab: &'a Lab) -> Self {
        Self {
            cluster: lab.cluster_name.clone(),
            guest: &lab.guest,
            infra_namespace: lab.infra_namespace.clone(),
            infra_labels: lab.infra_labels.clone(),
        }
    }

    /// The infra overlay of the CCM's manifests for this tenant.
    fn infra_overlay(&self) -> Overlay {
        Overlay::namespace(&self.infra_namespace).suffixed(&format!("-{}", self.cluster))
    }

    /// The user the CCM authenticates as on the infra cluster.
    pub fn infra_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}-{}",
            self.infra_namespace,
            identity::CCM_ACCOUNT,
            self.cluster
        )
    }

    /// The user the CCM authenticates as on its guest cluster.
    pub fn guest_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            identity::CCM_GUEST_NAMESPACE,
            identity::CCM_ACCOUNT
        )
    }
}

/// How to run the CCM.
#[derive(Clone, Debug)]
pub struct CcmOptions {
    /// Extra cloud-config YAML appended under `loadBalancer:`.
    pub load_balancer: String,
    /// Extra top-level cloud-config YAML.
    pub extra_config: String,
    pub args: Vec<String>,
    /// Log file name under the lab directory.
    pub log: String,
}

impl Default for CcmOptions {
    fn default() -> Self {
        Self {
            load_balancer: "  enableEPSController: true\n".to_string(),
            extra_config: String::new(),
            args: vec!["--leader-elect=false".to_string()],
            log: "ccm.log".to_string(),
        }
    }
}

/// Writes the CCM's kubeconfigs and cloud config and starts it.
pub async fn start_ccm(
    lab: &Lab,
    tenant: &Tenant<'_>,
    opts: &CcmOptions,
) -> anyhow::Result<Daemon> {
    let infra = identity::service_account(
        &lab.infra,
        &identity::CCM_INFRA,
        &tenant.infra_overlay(),
        identity::CCM_ACCOUNT,
    )
    .await?;
    let guest = identity::service_account(
        tenant.guest,
        &identity::CCM_GUEST,
        &Overlay::default(),
        identity::CCM_ACCOUNT,
    )
    .await?;
    let dir = lab.dir.join(format!("ccm-{}", tenant.cluster));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let infra_kubeconfig = dir.join("infra.kubeconfig");
    let guest_kubeconfig = dir.join("guest.kubeconfig");
    lab.infra
        .write_kubeconfig(
            &infra_kubeconfig,
            &infra.token,
            Some(&tenant.infra_namespace),
        )
        .context("write infra kubeconfig")?;
    tenant
        .guest
        .write_kubeconfig(&guest_kubeconfig, &guest.token, Some("default"))
        .context("write guest kubeconfig")?;
    let labels: String = tenant
        .infra_labels
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect();
    let cloud_config = format!(
        "kubeconfig: {infra}\nnamespace: {ns}\ninfraLabels:\n{labels}loadBalancer:\n  enabled: true\n{lb}instancesV2:\n  enabled: true\n  zoneAndRegionEnabled: true\n{extra}",
        infra = infra_kubeconfig.display(),
        ns = tenant.infra_namespace,
        lb = opts.load_balancer,
        extra = opts.extra_config,
    );
    let config_path = dir.join("cloud-config");
    std::fs::write(&config_path, cloud_config).context("write cloud config")?;
    let mut args = vec![
        "--cloud-provider=kubevirt".to_string(),
        format!("--cloud-config={}", config_path.display()),
        format!("--kubeconfig={}", guest_kubeconfig.display()),
        format!("--cluster-name={}", tenant.cluster),
        "--secure-port=0".to_string(),
        "--v=4".to_string(),
    ];
    args.extend(opts.args.iter().cloned());
    Ok(daemon::spawn(
        BINARY,
        args,
        [("RUST_BACKTRACE", "1")],
        &lab.dir.join(&opts.log),
    )?)
}

/// The infra Service name of a guest Service UID: `"a" + uid without dashes`, 32 chars.
pub fn infra_name(uid: &str) -> String {
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    name.truncate(32);
    name
}

/// Waits until `check` accepts the named object (or its absence).
pub async fn until<K, T>(
    api: &Api<K>,
    name: &str,
    what: &str,
    check: impl FnMut(Option<&K>) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    crate::common::until_within(api, name, what, WAIT, check).await
}

/// Waits until `check` accepts the objects matching `labels` (watching).
pub async fn until_list<K, T>(
    api: &Api<K>,
    labels: &str,
    what: &str,
    check: impl FnMut(&[K]) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    until_list_within(api, labels, what, WAIT, check).await
}

pub use crate::common::until_list_within;

/// The CCM's log, for failure messages.
pub fn log_of(d: &Daemon) -> String {
    let log = d.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
