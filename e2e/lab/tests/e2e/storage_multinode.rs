//! Multi-node access: a ReadWriteMany block claim is attached to two nodes
//! at once and what one node's pod writes to the disk the other's reads; a
//! ReadWriteMany filesystem claim is refused (a filesystem cannot be shared
//! between VMs) with a clear ProvisioningFailed Event on the claim, and no
//! infra volume is made for it.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use lab_guest::kubelet::attachment_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_shared_by_two_nodes() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(2).await?;
        let outcome = async {
            let (a, b) = (s.lab.nodes[0].clone(), s.lab.nodes[1].clone());
            let pv = s
                .provision(&Claim::block("shared", "1Gi").access("ReadWriteMany"))
                .await?;
            let volume = pv
                .spec
                .and_then(|s| s.csi)
                .map(|c| c.volume_handle)
                .unwrap_or_default();
            let on_a = s.run_pod("on-a", &a, &["shared"]).await?;
            let on_b = s.run_pod("on-b", &b, &["shared"]).await?;

            let vmis: Api<VirtualMachineInstance> =
                Api::namespaced(s.lab.infra_client(), &s.lab.infra_namespace);
            for node in [&a, &b] {
                assert!(
                    vmis.get(node)
                        .await?
                        .volume_status(&volume)
                        .is_some_and(|v| v.is_ready()),
                    "hotplugged into {node}"
                );
            }
            write_device(&on_a.volume("shared")?, 8192, b"from node a")?;
            assert_eq!(
                read_device(&on_b.volume("shared")?, 8192, 11)?,
                b"from node a"
            );
            write_device(&on_b.volume("shared")?, 16384, b"and back from node b")?;
            assert_eq!(
                read_device(&on_a.volume("shared")?, 16384, 20)?,
                b"and back from node b"
            );

            s.delete_pod("on-a").await?;
            s.detached(&attachment_name(&volume, DRIVER, &a)).await?;
            assert_eq!(
                read_device(&on_b.volume("shared")?, 8192, 11)?,
                b"from node a",
                "node b keeps the disk when node a lets go"
            );
            s.delete_pod("on-b").await?;
            s.detached(&attachment_name(&volume, DRIVER, &b)).await?;
            s.delete_claim("shared").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_filesystem_is_refused() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let claim = s
                .create_claim(&Claim::fs("shared-fs", "1Gi").access("ReadWriteMany"))
                .await?;
            let message = s
                .event("shared-fs", "ProvisioningFailed", "InvalidArgument")
                .await?;
            assert!(
                message.contains("InvalidArgument")
                    && message.contains("multi-node access is only supported for block volumes"),
                "a clear reason: {message}"
            );
            let claim = s
                .pvcs()
                .get(&claim.metadata.name.unwrap_or_default())
                .await?;
            assert_ne!(
                claim.status.and_then(|st| st.phase).as_deref(),
                Some("Bound")
            );

            let infra = s.lab.infra_client();
            let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &s.lab.infra_namespace);
            let infra_pvcs: Api<PersistentVolumeClaim> =
                Api::namespaced(infra, &s.lab.infra_namespace);
            assert!(
                dvs.list(&ListParams::default()).await?.items.is_empty(),
                "no DataVolume made"
            );
            assert!(
                infra_pvcs
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty(),
                "no infra claim made"
            );
            s.pvcs().delete("shared-fs", &Default::default()).await?;
            Ok(())
        }
        .await;
        s.finish(outcome).await
    })
    .await
}
