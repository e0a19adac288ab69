//! Snapshots and clones carry data: a VolumeSnapshot of a claim restores to
//! a new claim holding what was written before the snapshot (and not what
//! was written after); a claim cloned from another holds its data, and the
//! two then diverge. Each new volume is used by a pod like any other.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use kube::api::{Api, DeleteParams, PostParams};
use kubevirt_infra::snapshot::VolumeSnapshot;
use kubevirt_lab::wait;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_to_a_new_claim() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let node = s.lab.nodes[0].clone();
            s.provision(&Claim::fs("data", "1Gi")).await?;
            let writer = s.run_pod("writer", &node, &["data"]).await?;
            write_file(&writer.volume("data")?.join("before"), b"in the snapshot")?;
            // Quiesced: the source is not in use while the snapshot is cut.
            s.delete_pod("writer").await?;

            let snaps: Api<VolumeSnapshot> = Api::namespaced(s.client.clone(), NS);
            let vs: VolumeSnapshot = from_json(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "snap", "namespace": NS},
                "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": SNAPSHOT_CLASS},
            }))?;
            snaps.create(&PostParams::default(), &vs).await?;
            wait::until(&snaps, "snap", WAIT, |v| v.filter(|v| v.ready_to_use()).map(|_| ()))
                .await
                .map_err(|e| anyhow::anyhow!("snapshot not ready: {e}\n{}", s.logs()))?;

            let later = s.run_pod("later", &node, &["data"]).await?;
            write_file(&later.volume("data")?.join("after"), b"not in the snapshot")?;
            s.delete_pod("later").await?;

            s.provision(&Claim::fs("restored", "1Gi").restored_from("snap")).await?;
            let reader = s.run_pod("reader", &node, &["restored"]).await?;
            let restored = reader.volume("restored")?;
            assert_eq!(read_file(&restored.join("before"))?, b"in the snapshot");
            assert!(!restored.join("after").exists(), "the restore is the snapshot's point in time");
            s.delete_pod("reader").await?;

            snaps.delete("snap", &DeleteParams::default()).await?;
            wait::until(&snaps, "snap", WAIT, |v| v.is_none().then_some(())).await?;
            s.delete_claim("restored").await?;
            s.delete_claim("data").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_carries_the_data() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let node = s.lab.nodes[0].clone();
            s.provision(&Claim::fs("source", "1Gi")).await?;
            let writer = s.run_pod("writer", &node, &["source"]).await?;
            write_file(&writer.volume("source")?.join("original"), b"cloned along")?;
            s.delete_pod("writer").await?;

            s.provision(&Claim::fs("copy", "1Gi").cloned_from("source"))
                .await?;
            let both = s.run_pod("both", &node, &["source", "copy"]).await?;
            assert_eq!(
                read_file(&both.volume("copy")?.join("original"))?,
                b"cloned along"
            );
            write_file(&both.volume("copy")?.join("only-in-copy"), b"diverged")?;
            assert!(
                !both.volume("source")?.join("only-in-copy").exists(),
                "a clone is its own disk"
            );
            s.delete_pod("both").await?;
            s.delete_claim("copy").await?;
            s.delete_claim("source").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}
