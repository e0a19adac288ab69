//! A lab cluster is a real control plane: kube-apiserver answers with RBAC,
//! kube-controller-manager runs (ServiceAccounts, garbage collection), the
//! audit log counts requests by user, and the front proxy injects errors and
//! cuts watches.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use lab_cluster::{Cluster, ClusterConfig};

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("config map")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_control_plane_with_rbac_audit_and_faults() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let binaries = lab_cluster::Binaries::find()?;
    let etcd =
        std::sync::Arc::new(lab_cluster::Etcd::start(&binaries.etcd, dir.path(), None).await?);
    println!("etcd ready in {:?}", started.elapsed());
    let cluster = Cluster::start(ClusterConfig::new("t", dir.path()), etcd).await?;
    println!("cluster ready in {:?}", started.elapsed());
    let admin = cluster.client();
    let version = admin.apiserver_version().await?;
    assert_eq!(format!("{}.{}", version.major, version.minor), "1.32");

    // A ServiceAccount without RBAC may do nothing.
    let token = cluster.service_account_token("team", "robot").await?;
    let robot = cluster.client_for(&token).await?;
    let secrets: Api<Secret> = Api::namespaced(robot.clone(), "team");
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => anyhow::bail!("listing secrets without RBAC: {other:?}"),
    }
    let user = "system:serviceaccount:team:robot";
    assert_eq!(cluster.counters().count_by("list", "secrets", user), 1);

    // Injected errors come from the front proxy, then stop.
    let maps: Api<ConfigMap> =
        Api::namespaced(cluster.client_for(&cluster.admin_token()).await?, "default");
    cluster.faults().set_error_rate("configmaps", 1.0, 500);
    match maps.create(&PostParams::default(), &config_map("a")).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 500),
        other => anyhow::bail!("no injected error: {other:?}"),
    }
    cluster.faults().clear();
    maps.create(&PostParams::default(), &config_map("a"))
        .await?;

    // A watch through the proxy is cut; the watcher starts another, which
    // sees what happens next.
    let mut events = watcher(maps.clone(), watcher::Config::default()).boxed();
    let mut created = 0;
    while created < 2 {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(Ok(watcher::Event::InitDone)) => {
                maps.create(&PostParams::default(), &config_map("b"))
                    .await?;
            }
            Some(Ok(watcher::Event::Apply(cm))) if cm.metadata.name.as_deref() == Some("b") => {
                created += 1;
                cluster.faults().drop_watches();
                maps.create(&PostParams::default(), &config_map("c"))
                    .await?;
            }
            Some(Ok(watcher::Event::Apply(cm))) if cm.metadata.name.as_deref() == Some("c") => {
                created += 1;
            }
            Some(_) => {}
            None => anyhow::bail!("watch stream ended"),
        }
    }
    assert!(
        cluster.counters().count_by("watch", "configmaps", "admin") >= 1,
        "the cut watch is complete in the audit log"
    );
    cluster.shutdown().await;
    Ok(())
}
