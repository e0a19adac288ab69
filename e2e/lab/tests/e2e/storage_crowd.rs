//! Fifty pods on five nodes attaching at once, each with its own claim:
//! every claim is provisioned, hotplugged into the right worker, formatted
//! and mounted; every pod writes and reads its own file; when they all go
//! at once, every volume is unmounted and unplugged, and when the claims go,
//! nothing of theirs is left in the infra cluster or on the nodes.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use anyhow::{Context as _, ensure};
use futures::future::try_join_all;
use kube::api::ListParams;
use kubevirt_infra::cdi::DataVolume;
use lab_guest::kubelet::attachment_name;

const NODES: usize = 5;
const PODS_PER_NODE: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_on_five_nodes_attach_at_once() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(NODES).await?;
        let outcome = scenario(&s).await;
        s.finish(outcome).await
    })
    .await
}

async fn scenario(s: &Storage) -> anyhow::Result<()> {
    let pods: Vec<(String, String, String)> = (0..NODES * PODS_PER_NODE)
        .map(|i| {
            (
                format!("crowd-{i}"),
                format!("claim-{i}"),
                s.lab.nodes[i % NODES].clone(),
            )
        })
        .collect();

    try_join_all(
        pods.iter()
            .map(|(_, claim, _)| async move { s.create_claim(&Claim::fs(claim, "16Mi")).await }),
    )
    .await?;
    let running =
        try_join_all(pods.iter().map(|(pod, claim, node)| async move {
            s.run_pod(pod, node, &[claim.as_str()]).await
        }))
        .await?;

    for pod in &running {
        let dir = pod.volume(&format!("claim-{}", &pod.name["crowd-".len()..]))?;
        let content = format!("written by {} on {}", pod.name, pod.node);
        write_file(&dir.join("owner"), content.as_bytes())?;
        ensure!(
            read_file(&dir.join("owner"))? == content.as_bytes(),
            "{} reads back what it wrote",
            pod.name
        );
    }
    for node in &s.lab.nodes {
        let mounts = s.mounts_on(node)?;
        ensure!(
            mounts.len() == 2 * PODS_PER_NODE,
            "{node}: every volume staged once and published once, not {mounts:?}"
        );
    }

    try_join_all(pods.iter().map(|(pod, _, _)| s.delete_pod(pod))).await?;
    let mut attachments = Vec::new();
    for (_, claim, node) in &pods {
        let pv = s.bound(claim).await?;
        let handle = pv
            .spec
            .and_then(|spec| spec.csi)
            .map(|csi| csi.volume_handle)
            .context("a CSI volume")?;
        attachments.push(attachment_name(&handle, DRIVER, node));
    }
    try_join_all(attachments.iter().map(|a| s.detached(a))).await?;
    for node in &s.lab.nodes {
        let left = s.mounts_on(node)?;
        ensure!(left.is_empty(), "{node} still has mounts: {left:?}");
    }

    try_join_all(pods.iter().map(|(_, claim, _)| s.delete_claim(claim))).await?;
    let infra = s.lab.infra_client();
    let dvs: kube::Api<DataVolume> = kube::Api::namespaced(infra, &s.lab.infra_namespace);
    let left = dvs
        .list(&ListParams::default())
        .await
        .context("list infra DataVolumes")?;
    ensure!(
        left.items.is_empty(),
        "DataVolumes left in the infra cluster: {:?}",
        left.items
            .iter()
            .map(|d| d.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    Ok(())
}
