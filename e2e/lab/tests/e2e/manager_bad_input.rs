//! Custom resources the schema accepts but the manager cannot act on: each
//! gets a condition naming what is wrong (reason and message), nothing is
//! created for it, the manager never panics and keeps serving the good
//! cluster next to them.

use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kubevirt_infra::kubevirt::VirtualMachine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A NodePool of `cluster` with the fields of `platform` set over the
/// valid platform of [`node_pool`].
fn pool(
    name: &str,
    cluster: &str,
    platform: Value,
    management: Value,
) -> anyhow::Result<DynamicObject> {
    let mut np = node_pool(name, cluster, 1, "0.1.0", management)?;
    let base = np.data["spec"]["platform"]["kubevirt"]
        .as_object_mut()
        .context("node_pool has no platform")?;
    for (k, v) in platform.as_object().into_iter().flatten() {
        base.insert(k.clone(), v.clone());
    }
    Ok(np)
}

/// Waits until condition `type_` of `name` is `status` and returns its
/// (reason, message).
async fn refused(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
) -> anyhow::Result<(String, String)> {
    until_dynamic(api, name, &format!("{name}: {type_}={status}"), |o| {
        let c = o?.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_ && c["status"] == status)?
            .clone();
        Some((
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_resources_are_refused_with_a_reason() -> anyhow::Result<()> {
    let lab = lab().await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let infra = lab.infra_client();

    let result = async {
        create_hosted_cluster(&lab, &lab.guest, "guest1", "0.1.0", json!({})).await?;
        until_reconciled(&lab, "guest1").await?;
        let hcs = hosted_clusters(&infra);

        // HostedClusters.
        hcs.create(&PostParams::default(), &hosted_cluster("nokube", "0.1.0", json!({}))?)
            .await?;
        let secrets: Api<Secret> = Api::namespaced(infra.clone(), NS);
        let garbage: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "garbage-admin-kubeconfig", "namespace": NS},
            "stringData": {"kubeconfig": "clusters: [ {not yaml"}
        }))?;
        secrets.create(&PostParams::default(), &garbage).await?;
        hcs.create(&PostParams::default(), &hosted_cluster("garbage", "0.1.0", json!({}))?)
            .await?;
        guest_kubeconfig_secret(&lab, &lab.guest, "nocreds-admin-kubeconfig").await?;
        hcs.create(
            &PostParams::default(),
            &hosted_cluster(
                "nocreds",
                "0.1.0",
                json!({"credentials": {
                    "infraKubeConfigSecret": {"name": "missing", "key": "kubeconfig"},
                    "infraNamespace": "elsewhere"}}),
            )?,
        )
        .await?;
        // A version that is not one kube-apiserver refuses (the CRD's
        // pattern); one that is well formed but not deployed, the manager.
        match hcs
            .create(&PostParams::default(), &hosted_cluster("banana", "banana", json!({}))?)
            .await
        {
            Err(kube::Error::Api(e)) => ensure!(
                e.code == 422 && e.message.contains("spec.release.version"),
                "banana: {e:?}"
            ),
            other => anyhow::bail!("a HostedCluster of version banana: {other:?}"),
        }
        guest_kubeconfig_secret(&lab, &lab.guest, "future-admin-kubeconfig").await?;
        hcs.create(&PostParams::default(), &hosted_cluster("future", "9.9.0", json!({}))?)
            .await?;

        let expected_hc = BTreeMap::from([
            ("nokube", ("Degraded", "True", "GuestKubeconfigUnavailable")),
            ("garbage", ("Degraded", "True", "GuestKubeconfigUnavailable")),
            ("nocreds", ("Degraded", "True", "InfraCredentialsUnavailable")),
            ("future", ("ValidVersion", "False", "UnsupportedVersion")),
        ]);
        for (name, (type_, status, reason)) in &expected_hc {
            let (got, message) = refused(&hcs, name, type_, status).await?;
            ensure!(&got == reason, "{name}: reason {got} ({message}), expected {reason}");
            ensure!(!message.is_empty(), "{name}: no message");
        }

        // NodePools.
        let pools = node_pools(&infra);
        let bad = [
            ("zero-cores", "guest1", json!({"compute": {"cores": 0, "memory": "4Gi"}}), json!({}), "ValidPlatformConfig", "InvalidSpec"),
            ("two-images", "guest1",
             json!({"bootImage": {"containerDiskImage": "quay.io/containerdisks/fedora:41", "url": "https://example.com/disk.img"}}),
             json!({}), "ValidPlatformConfig", "InvalidSpec"),
            ("bad-network", "guest1", json!({"additionalNetworks": [{"name": "no-namespace"}]}), json!({}), "ValidPlatformConfig", "InvalidSpec"),
            ("detached", "guest1", json!({"attachDefaultNetwork": false}), json!({}), "ValidPlatformConfig", "InvalidSpec"),
            ("bad-percent", "guest1", json!({}),
             json!({"upgradeType": "Replace", "replace": {"strategy": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots%", "maxUnavailable": 1}}}),
             "ValidPlatformConfig", "InvalidSpec"),
            ("orphan", "no-such-cluster", json!({}), json!({}), "ValidHostedCluster", "HostedClusterNotFound"),
        ];
        // Each is refused by kube-apiserver (the CRD's schema) or, when the
        // schema cannot say, by the manager with a condition.
        let mut admitted = Vec::new();
        for (name, cluster, platform, management, type_, reason) in &bad {
            match pools
                .create(&PostParams::default(), &pool(name, cluster, platform.clone(), management.clone())?)
                .await
            {
                Ok(_) => admitted.push((name, type_, reason)),
                Err(kube::Error::Api(e)) if e.code == 422 => {
                    println!("{name}: refused by the schema: {}", e.message);
                }
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(admitted.len() >= 2, "the manager's own checks are exercised: {admitted:?}");
        for (name, type_, reason) in admitted {
            let (got, message) = refused(&pools, name, type_, "False").await?;
            ensure!(got == *reason, "{name}: reason {got} ({message}), expected {reason}");
            ensure!(!message.is_empty(), "{name}: no message");
        }
        let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), "clusters-guest1");
        let made = vms.list(&ListParams::default()).await?.items.len();
        ensure!(made == 0, "{made} VMs made for refused pools");

        // The good cluster is still served.
        let hc = until_reconciled(&lab, "guest1").await?;
        ensure!(is_true(&hc, "ReconciliationSucceeded"));
        ensure!(manager.try_wait()?.is_none(), "the manager exited");
        Ok(())
    }
    .await;
    let log = manager.log();
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{}", log_of_text(&log)))?;
    ensure!(!log.contains("panicked"), "the manager panicked:\n{log}");
    Ok(())
}

fn log_of_text(log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
