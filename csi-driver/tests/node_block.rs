//! Raw block volumes through the real Node gRPC service: the disk's device
//! node is bind-mounted onto a file at the target path.

mod node_support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use kubevirt_csi_proto::v1::{
    CapacityRange, NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, volume_usage::Unit,
};
use node_support::*;
use tonic::Code;

const SERIAL: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_lifecycle() {
    let mut lab = Lab::start().await;
    let disk = lab.add_disk(16 * MIB, &scsi_link(SERIAL), Link::Relative);
    let staging = lab.path("staging/pv-b");
    let target = lab.path("pods/p1/volumeDevices/pv-b");
    let ctx = context(SERIAL, Some("scsi"));
    let mut c = lab.client.clone();

    for _ in 0..2 {
        within(c.node_stage_volume(stage_req("pv-b", &staging, block_cap(), ctx.clone())))
            .await
            .expect("stage block");
    }
    assert!(
        findmnt(&staging).is_none(),
        "nothing is mounted for a block stage"
    );

    for _ in 0..2 {
        within(c.node_publish_volume(publish_req(
            "pv-b",
            &staging,
            &target,
            block_cap(),
            false,
            ctx.clone(),
        )))
        .await
        .expect("publish block");
    }
    let meta = std::fs::metadata(&target).expect("target exists");
    assert!(
        meta.file_type().is_block_device(),
        "target shows the device node"
    );
    assert_eq!(meta.rdev(), lab.disk(disk).rdev());
    assert_eq!(
        blkid_type(&lab.disk(disk).device),
        None,
        "a block volume is never formatted"
    );

    // Bytes written through the target land on the disk.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .expect("open target");
    f.seek(SeekFrom::Start(4096)).expect("seek");
    f.write_all(b"through-the-target").expect("write");
    f.sync_all().expect("sync");
    let mut back = vec![0u8; 18];
    let mut d = std::fs::File::open(&lab.disk(disk).device).expect("open disk");
    d.seek(SeekFrom::Start(4096)).expect("seek");
    d.read_exact(&mut back).expect("read");
    assert_eq!(back, b"through-the-target");

    let stats = within(c.node_get_volume_stats(NodeGetVolumeStatsRequest {
        volume_id: "pv-b".into(),
        volume_path: target.to_string_lossy().into_owned(),
        staging_target_path: String::new(),
    }))
    .await
    .expect("stats")
    .into_inner();
    assert_eq!(
        stats.usage.len(),
        1,
        "block volumes report bytes only: {stats:?}"
    );
    assert_eq!(stats.usage[0].unit(), Unit::Bytes);
    assert_eq!(stats.usage[0].total, i64::try_from(16 * MIB).expect("fits"));
    assert!(!stats.volume_condition.expect("condition").abnormal);

    // Growing the disk: NodeExpandVolume reports the new size.
    lab.disk(disk).grow(24 * MIB);
    let resp = within(c.node_expand_volume(NodeExpandVolumeRequest {
        volume_id: "pv-b".into(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: i64::try_from(24 * MIB).expect("fits"),
            limit_bytes: 0,
        }),
        volume_capability: block_cap(),
        ..Default::default()
    }))
    .await
    .expect("expand block")
    .into_inner();
    assert_eq!(resp.capacity_bytes, i64::try_from(24 * MIB).expect("fits"));

    drop(f);
    for _ in 0..2 {
        within(c.node_unpublish_volume(unpublish_req("pv-b", &target)))
            .await
            .expect("unpublish");
    }
    assert!(!target.exists(), "target file removed");
    assert!(
        lab.disk(disk).device.exists(),
        "the device itself is untouched"
    );
    for _ in 0..2 {
        within(c.node_unstage_volume(unstage_req("pv-b", &staging)))
            .await
            .expect("unstage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_block_publish_is_a_read_only_mount() {
    let mut lab = Lab::start().await;
    lab.add_disk(16 * MIB, &scsi_link(SERIAL), Link::Absolute);
    let staging = lab.path("staging");
    let target = lab.path("dev-target");
    let ctx = context(SERIAL, None);
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req("pv-b", &staging, block_cap(), ctx.clone())))
        .await
        .expect("stage");
    within(c.node_publish_volume(publish_req(
        "pv-b",
        &staging,
        &target,
        block_cap(),
        true,
        ctx.clone(),
    )))
    .await
    .expect("publish");
    let (_, _, options) = findmnt(&target).expect("mounted");
    assert!(options.contains(&"ro".to_owned()), "{options:?}");
    let status = within(c.node_publish_volume(publish_req(
        "pv-b",
        &staging,
        &target,
        block_cap(),
        false,
        ctx,
    )))
    .await
    .expect_err("readonly mismatch");
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_publish_needs_the_serial() {
    let lab = Lab::start().await;
    let mut c = lab.client.clone();
    let status = within(c.node_publish_volume(publish_req(
        "pv-b",
        &lab.path("staging"),
        &lab.path("target"),
        block_cap(),
        false,
        Default::default(),
    )))
    .await
    .expect_err("no serial");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("serial"), "{}", status.message());
}
