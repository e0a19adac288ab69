//! The hosted-control-plane manager at scale, in a lab of its own (the
//! management cluster is the infra cluster, no worker VMs): `n`
//! HostedClusters, each with its own guest API server, created at once;
//! the time until all are Available (watched); the manager's writes while
//! every cluster is reconciled once more with nothing changed; its memory
//! idle and holding them all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use lab_apiserver::{ApiServer, ApiServerConfig};
use serde_json::json;

use super::{Report, rss_mib};
use crate::daemon::{self, Daemon};
use crate::{Lab, LabConfig, LabError, wait};

const SECTION: &str = "manager";
const BINARY: &str = "kubevirt-hcp-manager";
const USER: &str = "hcp-manager";
const MANAGER_NAMESPACE: &str = "kubevirt-hcp-manager";
const NS: &str = "clusters";
/// Bound of every wait (a hang guard, not a target).
const WAIT: Duration = Duration::from_secs(300);
/// How long the manager is watched for writes after every cluster was
/// poked: writing nothing has no event to wait for.
pub const QUIET_WINDOW: Duration = Duration::from_secs(5);

fn hosted_clusters(client: &Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hcp.kubevirt-rs.io", "v1alpha1", "HostedCluster"),
        "hostedclusters",
    );
    Api::namespaced_with(client.clone(), NS, &resource)
}

/// The CRDs from `manifests/manager/crds` of the source tree.
async fn install_crds(client: &Client) -> Result<(), LabError> {
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
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    Ok(())
}

async fn namespace(client: &Client, name: &str) -> Result<(), LabError> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

fn start_manager(lab: &Lab) -> Result<Daemon, LabError> {
    let token = format!("{USER}-token");
    lab.infra.add_token(&token, USER, &[]);
    let kubeconfig = lab.dir.join("hcp-manager.kubeconfig");
    lab.infra
        .write_kubeconfig(&kubeconfig, &token, Some(MANAGER_NAMESPACE))
        .map_err(LabError::io("write", &kubeconfig))?;
    daemon::spawn(
        BINARY,
        [
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--namespace={MANAGER_NAMESPACE}"),
            "--leader-elect=false".to_string(),
            "--metrics-address=".to_string(),
            "--health-address=".to_string(),
            "--supported-versions=0.1".to_string(),
        ],
        [("RUST_LOG", "warn")],
        &lab.dir.join("logs").join("hcp-manager.log"),
    )
}

/// The guest kubeconfig Secret and the HostedCluster `name`.
async fn create_cluster(
    management: &Client,
    guest: &ApiServer,
    name: &str,
) -> Result<(), LabError> {
    let token = format!("{USER}-token");
    guest.add_token(&token, USER, &[]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-admin-kubeconfig")),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(guest.kubeconfig_yaml(&token, Some("default")).into_bytes()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(management.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    let hc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hcp.kubevirt-rs.io/v1alpha1",
        "kind": "HostedCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "release": {"version": "0.1.0"},
            "infraID": format!("{name}-id"),
            "kubeconfig": {"name": format!("{name}-admin-kubeconfig"), "key": "kubeconfig"},
            "platform": {"kubevirt": {}}
        }
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))?;
    hosted_clusters(management)
        .create(&PostParams::default(), &hc)
        .await?;
    Ok(())
}

fn available(hc: &DynamicObject) -> bool {
    hc.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        })
}

/// Writes (create, update, patch, delete) of the manager on `servers`.
fn writes<'a>(servers: impl Iterator<Item = &'a ApiServer>) -> u64 {
    servers
        .flat_map(|s| s.counters().counts.into_iter())
        .filter(|((verb, _, user), _)| {
            user == USER
                && matches!(
                    verb.as_str(),
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                )
        })
        .map(|(_, n)| n)
        .sum()
}

/// `n` HostedClusters at once: time to Available, quiet reconciles, memory.
pub async fn clusters(n: usize, report: &mut Report) -> Result<(), LabError> {
    let lab = Lab::start(LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    })
    .await?;
    let mut guests = Vec::with_capacity(n);
    let mut manager = None;
    let result = async {
        let management = lab.infra_client().await;
        install_crds(&management).await?;
        namespace(&management, MANAGER_NAMESPACE).await?;
        namespace(&management, NS).await?;
        for i in 0..n {
            guests.push(
                ApiServer::start(ApiServerConfig {
                    name: format!("hc{i}"),
                    ..ApiServerConfig::default()
                })
                .await?,
            );
        }
        let m = manager.insert(start_manager(&lab)?);
        let cms: Api<ConfigMap> = Api::namespaced(management.clone(), MANAGER_NAMESPACE);
        wait::until(&cms, "supported-versions", WAIT, |cm| cm.map(|_| ())).await?;
        if let Some(rss) = m.pid().and_then(rss_mib) {
            report.add(SECTION, "manager RSS idle", rss, "MiB");
        }

        let hcs = hosted_clusters(&management);
        let started = Instant::now();
        let all_available = async {
            let mut seen = std::collections::BTreeSet::new();
            let mut events =
                std::pin::pin!(watcher::watcher(hcs.clone(), watcher::Config::default()));
            while let Some(event) = events.next().await {
                if let Ok(Event::Apply(hc) | Event::InitApply(hc)) = event
                    && available(&hc)
                {
                    seen.insert(hc.name_any());
                    if seen.len() == n {
                        return Ok(started.elapsed());
                    }
                }
            }
            Err(LabError::Invalid("the HostedCluster watch ended".into()))
        };
        let create = async {
            for (i, guest) in guests.iter().enumerate() {
                create_cluster(&management, guest, &format!("hc{i}")).await?;
            }
            Ok::<_, LabError>(())
        };
        let (took, created) = tokio::join!(tokio::time::timeout(WAIT, all_available), create);
        created?;
        let took = took.map_err(|_| LabError::Timeout {
            what: format!("{n} HostedClusters Available"),
            after: WAIT,
        })??;
        report.add_target(
            SECTION,
            format!("{n} HostedClusters created -> all Available"),
            took.as_secs_f64(),
            "s",
            "<= 30",
        );
        if let Some(rss) = m.pid().and_then(rss_mib) {
            report.add_target(
                SECTION,
                format!("manager RSS holding {n} HostedClusters"),
                rss,
                "MiB",
                "<= 48",
            );
        }

        // Every cluster reconciled once more, nothing changed.
        let servers = || guests.iter().chain(std::iter::once(&lab.infra));
        let before = writes(servers());
        for i in 0..n {
            hcs.patch(
                &format!("hc{i}"),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"bench/poke": "1"}}})),
            )
            .await?;
        }
        tokio::time::sleep(QUIET_WINDOW).await;
        let after = writes(servers());
        report.add_target(
            SECTION,
            format!(
                "writes per reconcile with nothing changed ({n} clusters poked, {}s window)",
                QUIET_WINDOW.as_secs()
            ),
            (after - before) as f64 / n.max(1) as f64,
            "req",
            "<= 0",
        );
        Ok(())
    }
    .await;
    if let Some(mut m) = manager {
        let _ = m.terminate(Duration::from_secs(5)).await;
    }
    for g in guests {
        g.shutdown().await;
    }
    let shutdown = lab.shutdown().await;
    result.and(shutdown)
}
