//! Filesystem volumes through the real Node gRPC service on loop devices:
//! stage (format when blank) / publish (bind, flags, readonly) / unpublish /
//! unstage for ext4 and xfs, idempotency of every call, and refusals.

mod node_support;

use node_support::*;
use tonic::Code;

const SERIAL: &str = "6f1c0d2e-4b1a-4e8f-9a7b-0c1d2e3f4a5b";

async fn lifecycle(fs_type: &str, size: u64, link: Link) {
    let mut lab = Lab::start().await;
    let disk = lab.add_disk(size, &scsi_link(SERIAL), link);
    let staging = lab.path("staging/pv-1/globalmount");
    let target = lab.path("pods/p1/volumes/pv-1/mount");
    let ctx = context(SERIAL, Some("scsi"));
    let devnum = lab.disk(disk).devnum();
    let mut c = lab.client.clone();

    // Stage twice: the second call is a no-op.
    for _ in 0..2 {
        within(c.node_stage_volume(stage_req(
            "pv-1",
            &staging,
            mount_cap(fs_type, &[]),
            ctx.clone(),
        )))
        .await
        .expect("stage");
    }
    let (dev, fstype, _) = findmnt(&staging).expect("staging path is mounted");
    assert_eq!((dev.as_str(), fstype.as_str()), (devnum.as_str(), fs_type));
    assert_eq!(blkid_type(&lab.disk(disk).device).as_deref(), Some(fs_type));

    // Publish twice, with a mount flag that must show on the bind mount.
    let publish = publish_req(
        "pv-1",
        &staging,
        &target,
        mount_cap(fs_type, &["noatime"]),
        false,
        ctx.clone(),
    );
    for _ in 0..2 {
        within(c.node_publish_volume(publish.clone()))
            .await
            .expect("publish");
    }
    let (dev, _, options) = findmnt(&target).expect("target is mounted");
    assert_eq!(dev, devnum);
    assert!(options.contains(&"noatime".to_owned()), "{options:?}");
    assert!(options.contains(&"rw".to_owned()), "{options:?}");
    std::fs::write(target.join("data"), b"kept").expect("write through the target");

    // Unpublish twice: the target goes away, the staging mount stays.
    for _ in 0..2 {
        within(c.node_unpublish_volume(unpublish_req("pv-1", &target)))
            .await
            .expect("unpublish");
    }
    assert!(findmnt(&target).is_none());
    assert!(!target.exists(), "target dir removed");
    assert!(findmnt(&staging).is_some());

    for _ in 0..2 {
        within(c.node_unstage_volume(unstage_req("pv-1", &staging)))
            .await
            .expect("unstage");
    }
    assert!(findmnt(&staging).is_none());
    assert!(!staging.exists(), "staging dir removed");

    // Staging again must not reformat: the data is still there.
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap(fs_type, &[]),
        ctx.clone(),
    )))
    .await
    .expect("restage");
    assert_eq!(
        std::fs::read(staging.join("data")).expect("data survives"),
        b"kept"
    );
    within(c.node_unstage_volume(unstage_req("pv-1", &staging)))
        .await
        .expect("unstage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_lifecycle_with_absolute_links() {
    lifecycle("ext4", 64 * MIB, Link::Absolute).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_lifecycle_with_relative_links() {
    lifecycle("xfs", 320 * MIB, Link::Relative).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_fs_type_formats_ext4() {
    let mut lab = Lab::start().await;
    let disk = lab.add_disk(32 * MIB, &scsi_link(SERIAL), Link::Relative);
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("", &[]),
        context(SERIAL, None),
    )))
    .await
    .expect("stage");
    assert_eq!(blkid_type(&lab.disk(disk).device).as_deref(), Some("ext4"));
    let (_, fstype, _) = findmnt(&staging).expect("mounted");
    assert_eq!(fstype, "ext4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_publish_refuses_writes() {
    let mut lab = Lab::start().await;
    lab.add_disk(32 * MIB, &scsi_link(SERIAL), Link::Absolute);
    let staging = lab.path("staging");
    let ro = lab.path("pods/ro/mount");
    let rw = lab.path("pods/rw/mount");
    let ctx = context(SERIAL, None);
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("ext4", &[]),
        ctx.clone(),
    )))
    .await
    .expect("stage");
    within(c.node_publish_volume(publish_req(
        "pv-1",
        &staging,
        &ro,
        mount_cap("ext4", &[]),
        true,
        ctx.clone(),
    )))
    .await
    .expect("readonly publish");
    within(c.node_publish_volume(publish_req(
        "pv-1",
        &staging,
        &rw,
        mount_cap("ext4", &[]),
        false,
        ctx.clone(),
    )))
    .await
    .expect("read-write publish");

    let err = std::fs::write(ro.join("f"), b"x").expect_err("write to a readonly publish");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    std::fs::write(rw.join("f"), b"x").expect("the read-write publish stays writable");
    let (_, _, options) = findmnt(&ro).expect("mounted");
    assert!(options.contains(&"ro".to_owned()), "{options:?}");

    // Republishing the same target read-write is incompatible.
    let status = within(c.node_publish_volume(publish_req(
        "pv-1",
        &staging,
        &ro,
        mount_cap("ext4", &[]),
        false,
        ctx,
    )))
    .await
    .expect_err("readonly mismatch");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_mount_options_reach_the_kernel() {
    let mut lab = Lab::start().await;
    lab.add_disk(32 * MIB, &scsi_link(SERIAL), Link::Absolute);
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    let cap = mount_cap("ext4", &["nodev,noexec", "errors=remount-ro"]);
    within(c.node_stage_volume(stage_req("pv-1", &staging, cap, context(SERIAL, None))))
        .await
        .expect("stage");
    let (_, _, options) = findmnt(&staging).expect("mounted");
    for want in ["nodev", "noexec", "errors=remount-ro"] {
        assert!(
            options.contains(&want.to_owned()),
            "{want} missing from {options:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_path_holding_another_device_is_already_exists() {
    let mut lab = Lab::start().await;
    let other = "0a0b0c0d-1111-2222-3333-444455556666";
    lab.add_disk(32 * MIB, &scsi_link(SERIAL), Link::Absolute);
    lab.add_disk(32 * MIB, &scsi_link(other), Link::Absolute);
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("ext4", &[]),
        context(SERIAL, None),
    )))
    .await
    .expect("stage");
    let status = within(c.node_stage_volume(stage_req(
        "pv-2",
        &staging,
        mount_cap("ext4", &[]),
        context(other, None),
    )))
    .await
    .expect_err("another device at the same path");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().contains("is mounted there"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_another_filesystem_is_never_reformatted() {
    let mut lab = Lab::start().await;
    let disk = lab.add_disk(32 * MIB, &scsi_link(SERIAL), Link::Absolute);
    let device = lab.disk(disk).device.clone();
    run(
        "mkfs.ext4",
        &["-q".as_ref(), "-F".as_ref(), device.as_os_str()],
    );
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    let status = within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("xfs", &[]),
        context(SERIAL, None),
    )))
    .await
    .expect_err("fs type mismatch");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("ext4"), "{}", status.message());
    assert_eq!(blkid_type(&device).as_deref(), Some("ext4"));
    assert!(findmnt(&staging).is_none());

    // Without an explicit fs_type the existing filesystem is mounted as is.
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("", &[]),
        context(SERIAL, None),
    )))
    .await
    .expect("stage existing ext4");
    assert_eq!(findmnt(&staging).map(|m| m.1).as_deref(), Some("ext4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_before_stage_is_failed_precondition() {
    let lab = Lab::start().await;
    let mut c = lab.client.clone();
    let staging = lab.path("staging");
    std::fs::create_dir_all(&staging).expect("staging dir");
    let status = within(c.node_publish_volume(publish_req(
        "pv-1",
        &staging,
        &lab.path("target"),
        mount_cap("ext4", &[]),
        false,
        context(SERIAL, None),
    )))
    .await
    .expect_err("not staged");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}
