//! The hosted-control-plane manager in the lab, for its tests and the
//! benchmark: its CRDs (from `manifests/manager/crds` of the source tree),
//! the `kubevirt-hcp-manager` binary started as a real process as the
//! ServiceAccount and with the RBAC of `manifests/manager` (so a missing rule
//! fails, and its writes can be counted), and HostedClusters with their guest
//! kubeconfig Secrets, which carry an admin identity of the guest cluster
//! (ServiceAccount `kube-system/kubevirt-hcp-manager`, `cluster-admin`), as a
//! hosted cluster's admin kubeconfig does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use lab_cluster::Cluster;
use serde_json::{Value, json};

use crate::daemon::{self, Daemon};
use crate::identity::{self, Manifest, Overlay};
pub use crate::lab::ensure_namespace;
use crate::{Lab, LabError};

pub const BINARY: &str = "kubevirt-hcp-manager";
/// The user the manager authenticates as on the management cluster.
pub const USER: &str = "system:serviceaccount:kubevirt-hcp-manager:kubevirt-hcp-manager";
/// The user the manager authenticates as on guest clusters.
pub const GUEST_USER: &str = "system:serviceaccount:kube-system:kubevirt-hcp-manager";
/// Namespace of the manager and of its supported-versions ConfigMap.
pub const MANAGER_NAMESPACE: &str = identity::MANAGER_NAMESPACE;
/// Namespace of the HostedClusters and NodePools.
pub const NS: &str = "clusters";

/// A guest cluster's administrator for the manager.
const GUEST_ADMIN: Manifest = Manifest {
    path: "(lab) guest admin",
    yaml: "apiVersion: v1
kind: ServiceAccount
metadata:
  name: kubevirt-hcp-manager
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubevirt-hcp-manager-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: kubevirt-hcp-manager
    namespace: kube-system
",
};

/// Writes by the manager on the management cluster and `guests`.
pub fn writes<'a>(management: &Cluster, guests: impl IntoIterator<Item = &'a Cluster>) -> u64 {
    management.counters().writes_by(USER)
        + guests
            .into_iter()
            .map(|g| g.counters().writes_by(GUEST_USER))
            .sum::<u64>()
}

pub fn hc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hcp.kubevirt-rs.io", "v1alpha1", "HostedCluster"),
        "hostedclusters",
    )
}

pub fn np_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hcp.kubevirt-rs.io", "v1alpha1", "NodePool"),
        "nodepools",
    )
}

pub fn hosted_clusters(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &hc_resource())
}

pub fn node_pools(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &np_resource())
}

/// A NodePool `name` of cluster `cluster`: `replicas` VMs of 2 cores and
/// 4 GiB booting a container disk, on suite `version`, with `management`.
pub fn node_pool(
    name: &str,
    cluster: &str,
    replicas: i32,
    version: &str,
    management: Value,
) -> Result<DynamicObject, LabError> {
    serde_json::from_value(json!({
        "apiVersion": "hcp.kubevirt-rs.io/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "clusterName": cluster,
            "replicas": replicas,
            "release": {"version": version},
            "platform": {"kubevirt": {
                "compute": {"cores": 2, "memory": "4Gi"},
                "rootVolume": {"size": "10Gi"},
                "bootImage": {"containerDiskImage": "quay.io/containerdisks/fedora:41"}
            }},
            "management": management
        }
    }))
    .map_err(|e| LabError::Invalid(format!("NodePool {name}: {e}")))
}

/// The manager's CRDs, from the committed manifests.
pub async fn install_crds(client: &Client) -> Result<(), LabError> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/manager/crds");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let entries = std::fs::read_dir(&dir).map_err(LabError::io("read", &dir))?;
    for entry in entries {
        let path = entry.map_err(LabError::io("read", &dir))?.path();
        let text = std::fs::read_to_string(&path).map_err(LabError::io("read", &path))?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("lab").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    Ok(())
}

/// Starts the manager against the lab's infra cluster (the management
/// cluster here) without leader election or HTTP endpoints, with `extra`
/// flags, `RUST_LOG=rust_log` and its output in `log`.
pub async fn start_manager(
    lab: &Lab,
    extra: &[&str],
    rust_log: &str,
    log: &Path,
) -> Result<Daemon, LabError> {
    spawn_manager(lab, extra, rust_log, log, false).await
}

/// [`start_manager`] inside the lab's network namespace, where a pod of the
/// management cluster runs: it reaches the management API server at its
/// advertise address and hosted control planes at their published
/// endpoints (infra node ports, load-balancer addresses).
pub async fn start_manager_in_netns(
    lab: &Lab,
    extra: &[&str],
    rust_log: &str,
    log: &Path,
) -> Result<Daemon, LabError> {
    spawn_manager(lab, extra, rust_log, log, true).await
}

async fn spawn_manager(
    lab: &Lab,
    extra: &[&str],
    rust_log: &str,
    log: &Path,
    in_netns: bool,
) -> Result<Daemon, LabError> {
    let me = identity::service_account(
        &lab.infra,
        &identity::MANAGER,
        &Overlay::namespace(MANAGER_NAMESPACE),
        identity::MANAGER_ACCOUNT,
    )
    .await?;
    let kubeconfig = lab.dir.join("hcp-manager.kubeconfig");
    let text = if in_netns {
        lab.infra
            .in_netns_kubeconfig_yaml(&me.token, Some(MANAGER_NAMESPACE))
    } else {
        lab.infra
            .kubeconfig_yaml(&me.token, Some(MANAGER_NAMESPACE))
    };
    std::fs::write(&kubeconfig, text).map_err(LabError::io("write", &kubeconfig))?;
    let mut args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={MANAGER_NAMESPACE}"),
        "--leader-elect=false".to_string(),
        "--metrics-address=".to_string(),
        "--health-address=".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let env = [("RUST_LOG", rust_log), ("RUST_BACKTRACE", "1")];
    if in_netns {
        // As a pod of the management cluster: its network, and the cluster
        // DNS in /etc/resolv.conf (a private mount).
        let mut nsenter = vec![
            format!("--net={}", lab.net.path().display()),
            "--".to_string(),
        ];
        if let Some(dns) = Lab::cluster_dns(&lab.infra) {
            let resolv = lab.dir.join("hcp-manager.resolv.conf");
            std::fs::write(&resolv, crate::pod::resolv_conf(MANAGER_NAMESPACE, dns))
                .map_err(LabError::io("write", &resolv))?;
            nsenter.extend([
                "/usr/bin/unshare".to_string(),
                "--mount".to_string(),
                "--propagation".to_string(),
                "private".to_string(),
                "--".to_string(),
                "/bin/sh".to_string(),
                "-c".to_string(),
                r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#.to_string(),
                resolv.display().to_string(),
            ]);
        }
        nsenter.push(daemon::binary(BINARY).display().to_string());
        nsenter.extend(args);
        daemon::spawn("/usr/bin/nsenter", nsenter, env, log)
    } else {
        daemon::spawn(BINARY, args, env, log)
    }
}

/// The Secret `name` in [`NS`] on `management` holding a kubeconfig of
/// `guest` for the manager (its admin ServiceAccount there).
pub async fn guest_kubeconfig_secret(
    management: &Client,
    guest: &Cluster,
    name: &str,
) -> Result<(), LabError> {
    let admin = identity::service_account(
        guest,
        &[GUEST_ADMIN],
        &Overlay::default(),
        identity::MANAGER_ACCOUNT,
    )
    .await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(
                guest
                    .kubeconfig_yaml(&admin.token, Some("default"))
                    .into_bytes(),
            ),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(management.clone(), NS)
        .patch(
            name,
            &PatchParams::apply("lab").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// A HostedCluster `name` (infra id `<name>-id`) with `platform`.
pub fn hosted_cluster(
    name: &str,
    version: &str,
    platform: Value,
) -> Result<DynamicObject, LabError> {
    serde_json::from_value(json!({
        "apiVersion": "hcp.kubevirt-rs.io/v1alpha1",
        "kind": "HostedCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "release": {"version": version},
            "infraID": format!("{name}-id"),
            "kubeconfig": {"name": format!("{name}-admin-kubeconfig"), "key": "kubeconfig"},
            "platform": {"kubevirt": platform}
        }
    }))
    .map_err(|e| LabError::Invalid(format!("HostedCluster {name}: {e}")))
}

/// Creates the guest kubeconfig Secret and the HostedCluster.
pub async fn create_hosted_cluster(
    management: &Client,
    guest: &Cluster,
    name: &str,
    version: &str,
    platform: Value,
) -> Result<(), LabError> {
    guest_kubeconfig_secret(management, guest, &format!("{name}-admin-kubeconfig")).await?;
    hosted_clusters(management)
        .create(
            &PostParams::default(),
            &hosted_cluster(name, version, platform)?,
        )
        .await?;
    Ok(())
}

/// Whether condition `type_` of a dynamic object is True.
pub fn is_true(obj: &DynamicObject, type_: &str) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// Whether `image` is a hosted control plane's upstream image (etcd or a
/// kube-* binary), not the CSI controller's or the CCM's.
pub fn is_control_plane_image(image: &str) -> bool {
    image.starts_with("registry.k8s.io/etcd:") || image.starts_with("registry.k8s.io/kube-")
}

/// A client of hosted cluster `hc` (its status read): the admin kubeconfig
/// its `status.kubeconfig` names, reaching the published endpoint from the
/// host through the returned loopback bridge (the serving certificate
/// names 127.0.0.1 too).
pub async fn admin_client(
    lab: &Lab,
    hc: &DynamicObject,
) -> Result<(lab_net::bridge::Bridge, Client), LabError> {
    let (forward, config) = admin_config(lab, hc).await?;
    Ok((forward, Client::try_from(config)?))
}

/// The client configuration of [`admin_client`], with its bridge.
pub async fn admin_config(
    lab: &Lab,
    hc: &DynamicObject,
) -> Result<(lab_net::bridge::Bridge, kube::Config), LabError> {
    let invalid = |what: &str, e: String| LabError::Invalid(format!("{what}: {e}"));
    let status = &hc.data["status"];
    let endpoint = format!(
        "{}:{}",
        status["controlPlaneEndpoint"]["host"]
            .as_str()
            .unwrap_or_default(),
        status["controlPlaneEndpoint"]["port"]
            .as_u64()
            .unwrap_or_default()
    );
    let target: std::net::SocketAddr = endpoint
        .parse()
        .map_err(|e: std::net::AddrParseError| invalid("endpoint", e.to_string()))?;
    let forward =
        lab_net::bridge::Bridge::from_host(lab.net.clone(), ([127, 0, 0, 1], 0).into(), target)
            .await?;
    let ns = hc.namespace().unwrap_or_else(|| NS.to_string());
    let secret = Api::<Secret>::namespaced(lab.infra_client(), &ns)
        .get(status["kubeconfig"]["name"].as_str().unwrap_or_default())
        .await?;
    let text = secret
        .data
        .and_then(|mut d| d.remove("kubeconfig"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| invalid("admin kubeconfig", "no key kubeconfig".into()))?
        .replace(
            &format!("https://{endpoint}"),
            &format!("https://{}", forward.local_addr()),
        );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|e| invalid("admin kubeconfig", e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| invalid("admin kubeconfig", e.to_string()))?;
    Ok((forward, config))
}

/// Watches until `n` HostedClusters report Available (their components
/// run); returns when each was first seen Available.
pub async fn all_available(
    hcs: &Api<DynamicObject>,
    n: usize,
) -> Result<BTreeMap<String, std::time::Instant>, LabError> {
    all_where(hcs, n, |hc| is_true(hc, "Available")).await
}

/// Watches until `n` HostedClusters have settled: Available, their release
/// rolled out everywhere (`status.version.history[0]` Completed: the
/// controller manager and scheduler too, which come up after the API
/// server), VolumeSnapshotsAvailable. Then a reconcile has nothing left to
/// report.
pub async fn all_settled(
    hcs: &Api<DynamicObject>,
    n: usize,
) -> Result<BTreeMap<String, std::time::Instant>, LabError> {
    all_where(hcs, n, |hc| {
        is_true(hc, "Available")
            && is_true(hc, "VolumeSnapshotsAvailable")
            && hc.data["status"]["version"]["history"][0]["state"] == "Completed"
    })
    .await
}

/// Watches until `n` HostedClusters report ReconciliationSucceeded (every
/// object in place; in a lab without a management kubelet, nothing runs
/// the CSI controller and the CCM, so they are never Available).
pub async fn all_reconciled(
    hcs: &Api<DynamicObject>,
    n: usize,
) -> Result<BTreeMap<String, std::time::Instant>, LabError> {
    all_where(hcs, n, |hc| is_true(hc, "ReconciliationSucceeded")).await
}

/// Watches until `n` HostedClusters are as `settled` says; returns when
/// each was first seen so.
async fn all_where(
    hcs: &Api<DynamicObject>,
    n: usize,
    settled: impl Fn(&DynamicObject) -> bool,
) -> Result<BTreeMap<String, std::time::Instant>, LabError> {
    let mut available = BTreeMap::new();
    let mut events = std::pin::pin!(watcher::watcher(hcs.clone(), watcher::Config::default()));
    while let Some(event) = events.next().await {
        if let Ok(Event::Apply(hc) | Event::InitApply(hc)) = event
            && settled(&hc)
        {
            available
                .entry(hc.name_any())
                .or_insert_with(std::time::Instant::now);
            if available.len() == n {
                return Ok(available);
            }
        }
    }
    Err(LabError::Watch {
        what: "HostedClusters".into(),
        message: "the watch ended".into(),
    })
}
