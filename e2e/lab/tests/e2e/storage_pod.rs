//! A claim used by a pod, end to end: the guest claim is provisioned as an
//! infra DataVolume, the kubelet stand-in attaches it (VolumeAttachment →
//! hotplug), the node plugin stages and publishes it, and what the pod
//! writes through its volume reads back. Deleting the pod takes the volume
//! down on the node (no mounts, no attachment); for a filesystem claim and
//! for a raw block claim. A pod that vanished while its node's kubelet was
//! down has its volumes taken down when the kubelet comes back.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use kube::api::DeleteParams;
use kubevirt_lab::wait;
use lab_guest::kubelet::attachment_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_claim_used_by_a_pod() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = filesystem_scenario(&s).await;
        s.finish(outcome).await
    })
    .await
}

async fn filesystem_scenario(s: &Storage) -> anyhow::Result<()> {
    let node = s.lab.nodes[0].clone();
    let pv = s.provision(&Claim::fs("data", "1Gi")).await?;
    let pod = s.run_pod("writer", &node, &["data"]).await?;
    let dir = pod.volume("data")?;
    write_file(&dir.join("hello.txt"), b"hello from the guest")?;
    assert_eq!(read_file(&dir.join("hello.txt"))?, b"hello from the guest");
    let mounts = s.mounts_on(&node)?;
    assert!(
        mounts.contains(&dir),
        "the pod's volume is a mount: {mounts:?}"
    );
    assert_eq!(
        mounts.len(),
        2,
        "staged once and published once: {mounts:?}"
    );
    let size = fs_size(&dir)?;
    assert!(
        size > GIB / 2 && size <= GIB,
        "an ext4 filesystem of about 1Gi, not {size}"
    );

    let attachment = attachment_name(
        &pv.spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.volume_handle.clone())
            .unwrap_or_default(),
        DRIVER,
        &node,
    );
    let va = s.attachments().get(&attachment).await?;
    assert!(
        va.status.as_ref().is_some_and(|st| st.attached),
        "the kubelet's VolumeAttachment is attached"
    );

    s.delete_pod("writer").await?;
    s.detached(&attachment).await?;
    assert!(s.mounts_on(&node)?.is_empty(), "unpublished and unstaged");
    assert!(!dir.exists(), "the pod's volume directory is gone");
    s.delete_claim("data").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_claim_used_by_a_pod() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = block_scenario(&s).await;
        s.finish(outcome).await
    })
    .await
}

async fn block_scenario(s: &Storage) -> anyhow::Result<()> {
    let node = s.lab.nodes[0].clone();
    s.provision(&Claim::block("raw", "1Gi")).await?;
    let pod = s.run_pod("raw-user", &node, &["raw"]).await?;
    let device = pod.volume("raw")?;
    let meta = std::fs::metadata(&device)?;
    assert!(
        std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()),
        "{} is a block device",
        device.display()
    );
    write_device(&device, 4096, b"raw bytes on a hotplugged disk")?;
    assert_eq!(
        read_device(&device, 4096, 30)?,
        b"raw bytes on a hotplugged disk"
    );

    s.delete_pod("raw-user").await?;
    assert!(s.mounts_on(&node)?.is_empty(), "the device is unpublished");
    assert!(!device.exists());
    s.delete_claim("raw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_of_a_pod_that_vanished_are_cleaned_up() -> anyhow::Result<()> {
    bounded(async {
        let mut s = Storage::start(1).await?;
        let outcome = vanished_pod_scenario(&mut s).await;
        s.finish(outcome).await
    })
    .await
}

async fn vanished_pod_scenario(s: &mut Storage) -> anyhow::Result<()> {
    let node = s.lab.nodes[0].clone();
    let pv = s.provision(&Claim::fs("data", "1Gi")).await?;
    let handle = pv
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .unwrap_or_default();
    let pod = s.run_pod("lost", &node, &["data"]).await?;
    write_file(&pod.volume("data")?.join("f"), b"x")?;

    // The pod goes while the node's kubelet is down: force-deleted by hand
    // (`kubectl delete --force --grace-period=0`), since no kubelet
    // confirms its deletion.
    s.stop_kubelet(&node).await?;
    s.pods()
        .delete("lost", &DeleteParams::default().grace_period(0))
        .await?;
    wait::until(&s.pods(), "lost", WAIT, |p| p.is_none().then_some(())).await?;
    assert_eq!(
        s.mounts_on(&node)?.len(),
        2,
        "nobody took the volume down yet"
    );

    s.start_kubelet(&node)?;
    s.detached(&attachment_name(&handle, DRIVER, &node)).await?;
    assert!(
        s.mounts_on(&node)?.is_empty(),
        "unpublished and unstaged by the restarted kubelet"
    );
    assert!(!pod.volume("data")?.exists());
    s.delete_claim("data").await
}
