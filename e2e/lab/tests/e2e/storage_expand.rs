//! Online expansion: growing the claim of a running pod grows the infra
//! claim and the hotplugged disk, then the node grows the mounted
//! filesystem (what `df` shows in the pod), the claim reports the new
//! capacity with no resize pending, and the data is intact.
//!
//! Growing a mounted ext4 filesystem takes CAP_SYS_RESOURCE (the
//! EXT4_IOC_RESIZE_FS ioctl); xfs takes CAP_SYS_ADMIN. Where the tests run
//! without CAP_SYS_RESOURCE, the ext4 case checks the failure instead: a
//! FileSystemResizeFailed Event on the pod naming the cause, the claim still
//! waiting for the node, the data intact.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use kube::api::{Patch, PatchParams};
use kubevirt_lab::wait;
use lab_guest::objects::bytes;
use serde_json::json;

/// CAP_SYS_RESOURCE's bit in the capability sets.
const CAP_SYS_RESOURCE: u32 = 24;

fn has_cap_sys_resource() -> anyhow::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| anyhow::anyhow!("no CapEff in /proc/self/status"))?;
    Ok(u64::from_str_radix(eff.trim(), 16)? & (1 << CAP_SYS_RESOURCE) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_grows_an_xfs_filesystem() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = grows(&s, XFS_STORAGE_CLASS).await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_of_ext4() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = if has_cap_sys_resource()? {
            grows(&s, STORAGE_CLASS).await
        } else {
            refused_without_the_capability(&s).await
        };
        s.finish(outcome).await
    })
    .await
}

/// A running pod's 1Gi claim, grown to 3Gi.
async fn grown_claim(s: &Storage, class: &str) -> anyhow::Result<RunningPod> {
    let node = s.lab.nodes[0].clone();
    s.provision(&Claim::fs("data", "1Gi").class(class)).await?;
    let pod = s.run_pod("app", &node, &["data"]).await?;
    let dir = pod.volume("data")?;
    write_file(&dir.join("before"), b"written before the resize")?;
    let before = fs_size(&dir)?;
    assert!(before <= GIB, "about 1Gi before: {before}");
    s.pvcs()
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}})),
        )
        .await?;
    Ok(pod)
}

async fn grows(s: &Storage, class: &str) -> anyhow::Result<()> {
    let pod = grown_claim(s, class).await?;
    let dir = pod.volume("data")?;
    let before = fs_size(&dir)?;
    let capacity = wait::until(&s.pvcs(), "data", WAIT, |p| {
        let status = p?.status.as_ref()?;
        let capacity = status.capacity.as_ref()?.get("storage").and_then(bytes)?;
        let pending = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "FileSystemResizePending" || c.type_ == "Resizing");
        (capacity >= 3 << 30 && !pending).then_some(capacity)
    })
    .await
    .map_err(|e| anyhow::anyhow!("the claim did not report 3Gi: {e}\n{}", s.logs()))?;
    assert_eq!(capacity, 3 << 30);

    let after = fs_size(&dir)?;
    assert!(
        after > 2 * GIB && after <= 3 * GIB,
        "the mounted filesystem grew to about 3Gi: {before} -> {after}"
    );
    assert_eq!(
        read_file(&dir.join("before"))?,
        b"written before the resize"
    );
    write_file(&dir.join("after"), b"written after the resize")?;

    s.delete_pod("app").await?;
    assert!(s.mounts_on(&pod.node)?.is_empty());
    s.delete_claim("data").await
}

async fn refused_without_the_capability(s: &Storage) -> anyhow::Result<()> {
    let pod = grown_claim(s, STORAGE_CLASS).await?;
    // Until the disk has grown, NodeExpandVolume fails (and is retried)
    // for that; the refusal that stays names the missing resize2fs.
    let message = s
        .event("app", "FileSystemResizeFailed", "resize2fs")
        .await?;
    assert!(
        message.contains("NodeExpandVolume") && message.contains("resize2fs"),
        "the pod's Event names the failed step: {message}"
    );
    let pv = s.bound("data").await?;
    let pv_size = pv
        .spec
        .and_then(|s| s.capacity)
        .and_then(|c| c.get("storage").and_then(bytes));
    assert_eq!(pv_size, Some(3 << 30), "the disk itself grew");
    let claim = s.pvcs().get("data").await?;
    let status = claim.status.unwrap_or_default();
    assert_eq!(
        status
            .capacity
            .and_then(|c| c.get("storage").and_then(bytes)),
        Some(1 << 30),
        "not reported grown"
    );
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "FileSystemResizePending"),
        "the claim still waits for the node"
    );
    assert_eq!(
        read_file(&pod.volume("data")?.join("before"))?,
        b"written before the resize"
    );
    s.delete_pod("app").await?;
    assert!(s.mounts_on(&pod.node)?.is_empty());
    s.delete_claim("data").await
}
