//! NodeExpandVolume and NodeGetVolumeStats through the real Node gRPC
//! service: online growth of ext4 and xfs, usage numbers that match the
//! kernel's, and a volume condition that turns abnormal when the disk
//! vanishes or the kernel forces the filesystem read-only.

mod node_support;

use std::path::Path;

use kubevirt_csi_proto::v1::{
    CapacityRange, NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    volume_usage::Unit,
};
use node_support::*;
use tonic::Code;

const SERIAL: &str = "c0ffee00-1234-4abc-8def-0123456789ab";

/// Stages and publishes a fresh disk; returns (disk index, target).
async fn published(
    lab: &mut Lab,
    fs_type: &str,
    size: u64,
    flags: &[&str],
) -> (usize, std::path::PathBuf) {
    let disk = lab.add_disk(size, &scsi_link(SERIAL), Link::Absolute);
    let staging = lab.path("staging");
    let target = lab.path("pods/p/mount");
    let ctx = context(SERIAL, None);
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap(fs_type, flags),
        ctx.clone(),
    )))
    .await
    .expect("stage");
    within(c.node_publish_volume(publish_req(
        "pv-1",
        &staging,
        &target,
        mount_cap(fs_type, flags),
        false,
        ctx,
    )))
    .await
    .expect("publish");
    (disk, target)
}

async fn stats(lab: &Lab, path: &Path) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
    let mut c = lab.client.clone();
    within(c.node_get_volume_stats(NodeGetVolumeStatsRequest {
        volume_id: "pv-1".into(),
        volume_path: path.to_string_lossy().into_owned(),
        staging_target_path: String::new(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

fn total_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

async fn expand(lab: &mut Lab, fs_type: &str, size: u64, grown: u64) {
    let (disk, target) = published(lab, fs_type, size, &[]).await;
    let before = total_bytes(&target);
    lab.disk(disk).grow(grown);
    let mut c = lab.client.clone();
    let request = NodeExpandVolumeRequest {
        volume_id: "pv-1".into(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: i64::try_from(grown).expect("fits"),
            limit_bytes: 0,
        }),
        volume_capability: mount_cap(fs_type, &[]),
        ..Default::default()
    };
    for _ in 0..2 {
        let resp = within(c.node_expand_volume(request.clone()))
            .await
            .expect("expand")
            .into_inner();
        assert_eq!(resp.capacity_bytes, i64::try_from(grown).expect("fits"));
    }
    let after = total_bytes(&target);
    assert!(
        after > before + (grown - size) / 2,
        "{fs_type} grew from {before} to only {after}"
    );

    // Asking for more than the disk has is out of range, not a silent success.
    let too_much = NodeExpandVolumeRequest {
        capacity_range: Some(CapacityRange {
            required_bytes: i64::try_from(grown * 2).expect("fits"),
            limit_bytes: 0,
        }),
        ..request
    };
    let status = within(c.node_expand_volume(too_much))
        .await
        .expect_err("beyond the disk");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

/// Online ext4 growth (the EXT4_IOC_RESIZE_FS ioctl) needs CAP_SYS_RESOURCE.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_grows_online() {
    let mut lab = Lab::start().await;
    if has_cap_sys_resource() {
        expand(&mut lab, "ext4", 64 * MIB, 128 * MIB).await;
        return;
    }
    // Without the capability (some sandboxes) resize2fs must fail, and the
    // failure must reach the caller as Internal with the tool's stderr.
    eprintln!("CAP_SYS_RESOURCE missing: checking the resize2fs failure path instead");
    let (disk, target) = published(&mut lab, "ext4", 64 * MIB, &[]).await;
    lab.disk(disk).grow(128 * MIB);
    let mut c = lab.client.clone();
    let status = within(c.node_expand_volume(NodeExpandVolumeRequest {
        volume_id: "pv-1".into(),
        volume_path: target.to_string_lossy().into_owned(),
        ..Default::default()
    }))
    .await
    .expect_err("resize2fs cannot resize without CAP_SYS_RESOURCE");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("resize2fs"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("Permission denied"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_grows_online() {
    let mut lab = Lab::start().await;
    expand(&mut lab, "xfs", 320 * MIB, 480 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_matches_statvfs() {
    let mut lab = Lab::start().await;
    let (_, target) = published(&mut lab, "ext4", 64 * MIB, &[]).await;
    std::fs::write(target.join("blob"), vec![7u8; 4 * MIB as usize]).expect("write");
    nix::unistd::sync();
    let resp = stats(&lab, &target).await.expect("stats");
    let bytes = resp
        .usage
        .iter()
        .find(|u| u.unit() == Unit::Bytes)
        .expect("bytes");
    let inodes = resp
        .usage
        .iter()
        .find(|u| u.unit() == Unit::Inodes)
        .expect("inodes");
    let st = nix::sys::statvfs::statvfs(&target).expect("statvfs");
    let frsize = st.fragment_size();
    assert_eq!(
        bytes.total,
        i64::try_from(st.blocks() * frsize).expect("fits")
    );
    assert_eq!(
        bytes.available,
        i64::try_from(st.blocks_available() * frsize).expect("fits")
    );
    assert!(
        bytes.used >= i64::try_from(4 * MIB).expect("fits"),
        "{bytes:?}"
    );
    assert_eq!(inodes.total, i64::try_from(st.files()).expect("fits"));
    assert!(inodes.used >= 12, "{inodes:?}");
    assert_eq!(inodes.used + inodes.available, inodes.total);
    let condition = resp.volume_condition.expect("condition");
    assert!(!condition.abnormal, "{condition:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_not_found() {
    let lab = Lab::start().await;
    let status = stats(&lab, &lab.path("no/such/path"))
        .await
        .expect_err("unknown path");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let mut c = lab.client.clone();
    let status = within(c.node_expand_volume(NodeExpandVolumeRequest {
        volume_id: "pv-1".into(),
        volume_path: lab.path("no/such/path").to_string_lossy().into_owned(),
        ..Default::default()
    }))
    .await
    .expect_err("unknown path");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_turns_abnormal_when_the_disk_disappears() {
    // The fake sysfs mirrors the kernel's dev/block entries; removing one is
    // what an unplugged disk looks like to the node plugin.
    let mut lab = Lab::with(LabOptions {
        fake_sysfs: true,
        ..Default::default()
    })
    .await;
    let (disk, target) = published(&mut lab, "ext4", 32 * MIB, &[]).await;
    let entry = lab.sysfs_add(disk);
    let healthy = stats(&lab, &target)
        .await
        .expect("stats")
        .volume_condition
        .expect("condition");
    assert!(!healthy.abnormal, "{healthy:?}");

    std::fs::remove_file(&entry).expect("unplug");
    let resp = stats(&lab, &target)
        .await
        .expect("stats of a volume whose disk is gone");
    let condition = resp.volume_condition.expect("condition");
    assert!(condition.abnormal, "{condition:?}");
    assert!(condition.message.contains("gone"), "{}", condition.message);
    assert!(
        condition.message.contains(&lab.disk(disk).devnum()),
        "{}",
        condition.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_turns_abnormal_when_the_kernel_makes_the_filesystem_read_only() {
    let mut lab = Lab::start().await;
    let (disk, target) = published(&mut lab, "ext4", 32 * MIB, &["errors=remount-ro"]).await;
    let kname = lab.disk(disk).device.file_name().expect("name").to_owned();
    let trigger = Path::new("/sys/fs/ext4")
        .join(kname)
        .join("trigger_fs_error");
    assert!(
        !stats(&lab, &target)
            .await
            .expect("stats")
            .volume_condition
            .expect("condition")
            .abnormal
    );
    std::fs::write(&trigger, "1").expect("trigger an ext4 error");
    let err = std::fs::write(target.join("after-error"), b"x")
        .expect_err("the filesystem is read-only now");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    let condition = stats(&lab, &target)
        .await
        .expect("stats")
        .volume_condition
        .expect("condition");
    assert!(condition.abnormal, "{condition:?}");
    assert!(
        condition.message.contains("read-only"),
        "{}",
        condition.message
    );
}
