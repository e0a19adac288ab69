//! Finding the hotplugged disk through the real Node gRPC service: virtio's
//! truncated serial, a disk that shows up only after the call started
//! (inotify), one that never does, the sysfs fallback, concurrent calls on
//! one volume, request validation and the info RPCs.

mod node_support;

use std::time::Duration;

use kubevirt_csi_proto::v1::{
    NodeExpandVolumeRequest, NodeGetCapabilitiesRequest, NodeGetInfoRequest,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    node_service_capability, node_service_capability::rpc::Type,
};
use node_support::*;
use tonic::Code;

/// Longer than virtio's 20 characters, as KubeVirt's DataVolume uids are.
const SERIAL: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtio_disk_is_found_by_its_twenty_character_serial() {
    let mut lab = Lab::start().await;
    let disk = lab.add_disk(32 * MIB, &virtio_link(SERIAL), Link::Relative);
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("ext4", &[]),
        context(SERIAL, Some("virtio")),
    )))
    .await
    .expect("stage a virtio disk");
    let (dev, _, _) = findmnt(&staging).expect("mounted");
    assert_eq!(dev, lab.disk(disk).devnum());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_appearing_later_is_picked_up_and_a_concurrent_call_is_aborted() {
    let mut lab = Lab::with(LabOptions {
        device_wait: Duration::from_secs(45),
        ..Default::default()
    })
    .await;
    // Not linked yet: even dev/disk/ does not exist, as in a guest whose
    // first disk with an id is still on its way.
    let disk = lab.loop_device(32 * MIB);
    let staging = lab.path("staging");
    let req = stage_req(
        "pv-1",
        &staging,
        mount_cap("ext4", &[]),
        context(SERIAL, Some("scsi")),
    );

    let (mut c1, mut c2) = (lab.client.clone(), lab.client.clone());
    let (r1, r2) = (req.clone(), req.clone());
    let mut first = tokio::spawn(async move { c1.node_stage_volume(r1).await });
    let mut second = tokio::spawn(async move { c2.node_stage_volume(r2).await });

    // Whichever call came second is refused at once; the other is waiting.
    let (aborted, waiting) = within(async {
        tokio::select! {
            r = &mut first => (r, second),
            r = &mut second => (r, first),
        }
    })
    .await;
    let status = aborted
        .expect("join")
        .expect_err("the concurrent call is refused");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(!waiting.is_finished(), "the other call waits for the disk");

    lab.link_disk(disk, &scsi_link(SERIAL), Link::Relative);
    within(waiting)
        .await
        .expect("join")
        .expect("stage completes once the disk appears");
    let (dev, fstype, _) = findmnt(&staging).expect("mounted");
    assert_eq!((dev, fstype.as_str()), (lab.disk(disk).devnum(), "ext4"));

    // The slot is free again: the same call now succeeds at once.
    let mut c = lab.client.clone();
    within(c.node_stage_volume(req))
        .await
        .expect("idempotent stage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_never_appears_is_not_found() {
    let lab = Lab::with(LabOptions {
        device_wait: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut c = lab.client.clone();
    let started = std::time::Instant::now();
    let status = within(c.node_stage_volume(stage_req(
        "pv-1",
        &lab.path("staging"),
        mount_cap("ext4", &[]),
        context(SERIAL, None),
    )))
    .await
    .expect_err("no such disk");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(SERIAL), "{}", status.message());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!lab.path("staging").exists(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysfs_serial_is_the_fallback_when_udev_made_no_link() {
    let mut lab = Lab::with(LabOptions {
        fake_sysfs: true,
        ..Default::default()
    })
    .await;
    let disk = lab.loop_device(32 * MIB);
    // sysfs: block/vdb/serial holds virtio's truncated serial; dev/vdb is the node.
    let block = lab.sys_dir.join("block/vdb");
    std::fs::create_dir_all(&block).expect("fake sysfs block dir");
    std::fs::write(block.join("serial"), &SERIAL[..20]).expect("serial");
    std::os::unix::fs::symlink(&lab.disk(disk).device, lab.dev_dir.join("vdb"))
        .expect("device node");
    let staging = lab.path("staging");
    let mut c = lab.client.clone();
    within(c.node_stage_volume(stage_req(
        "pv-1",
        &staging,
        mount_cap("ext4", &[]),
        context(SERIAL, Some("virtio")),
    )))
    .await
    .expect("stage via sysfs");
    assert_eq!(
        findmnt(&staging).map(|m| m.0),
        Some(lab.disk(disk).devnum())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_invalid_arguments() {
    let lab = Lab::start().await;
    let mut c = lab.client.clone();
    let staging = lab.path("staging");
    let target = lab.path("target");
    let ctx = context(SERIAL, None);
    let good_stage = stage_req("pv-1", &staging, mount_cap("ext4", &[]), ctx.clone());
    let good_publish = publish_req(
        "pv-1",
        &staging,
        &target,
        mount_cap("ext4", &[]),
        false,
        ctx.clone(),
    );

    let stages = [
        NodeStageVolumeRequest {
            volume_id: String::new(),
            ..good_stage.clone()
        },
        NodeStageVolumeRequest {
            staging_target_path: String::new(),
            ..good_stage.clone()
        },
        NodeStageVolumeRequest {
            volume_capability: None,
            ..good_stage.clone()
        },
        NodeStageVolumeRequest {
            volume_capability: mount_cap("ntfs", &[]),
            ..good_stage.clone()
        },
        NodeStageVolumeRequest {
            volume_context: Default::default(),
            ..good_stage.clone()
        },
    ];
    for req in stages {
        let status = within(c.node_stage_volume(req.clone()))
            .await
            .expect_err("invalid stage");
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}: {status:?}");
    }
    let publishes = [
        NodePublishVolumeRequest {
            volume_id: String::new(),
            ..good_publish.clone()
        },
        NodePublishVolumeRequest {
            target_path: String::new(),
            ..good_publish.clone()
        },
        NodePublishVolumeRequest {
            staging_target_path: String::new(),
            ..good_publish.clone()
        },
        NodePublishVolumeRequest {
            volume_capability: None,
            ..good_publish.clone()
        },
    ];
    for req in publishes {
        let status = within(c.node_publish_volume(req.clone()))
            .await
            .expect_err("invalid publish");
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}: {status:?}");
    }
    let status = within(c.node_unstage_volume(unstage_req("", &staging)))
        .await
        .expect_err("no id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = within(c.node_unstage_volume(unstage_req("pv-1", std::path::Path::new(""))))
        .await
        .expect_err("no path");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = within(c.node_unpublish_volume(unpublish_req("", &target)))
        .await
        .expect_err("no id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = within(c.node_unpublish_volume(unpublish_req("pv-1", std::path::Path::new(""))))
        .await
        .expect_err("no path");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = within(c.node_get_volume_stats(NodeGetVolumeStatsRequest {
        volume_id: "pv-1".into(),
        ..Default::default()
    }))
    .await
    .expect_err("no path");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = within(c.node_expand_volume(NodeExpandVolumeRequest {
        volume_path: target.to_string_lossy().into_owned(),
        ..Default::default()
    }))
    .await
    .expect_err("no id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        !staging.exists() && !target.exists(),
        "validation happens before any side effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_capabilities() {
    let lab = Lab::start().await;
    let mut c = lab.client.clone();
    let info = within(c.node_get_info(NodeGetInfoRequest {}))
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, "infra-ns/vm-1");
    assert_eq!(
        info.max_volumes_per_node,
        kubevirt_csi_driver::node::DEFAULT_MAX_VOLUMES_PER_NODE
    );

    let caps = within(c.node_get_capabilities(NodeGetCapabilitiesRequest {}))
        .await
        .expect("caps")
        .into_inner();
    let mut kinds: Vec<Type> = caps
        .capabilities
        .iter()
        .filter_map(|cap| {
            let node_service_capability::Type::Rpc(rpc) = cap.r#type.as_ref()?;
            Some(rpc.r#type())
        })
        .collect();
    kinds.sort_by_key(|k| *k as i32);
    assert_eq!(
        kinds,
        [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_and_unstage_of_unknown_paths_succeed() {
    let lab = Lab::start().await;
    let mut c = lab.client.clone();
    within(c.node_unpublish_volume(unpublish_req("pv-1", &lab.path("never/published"))))
        .await
        .expect("unpublish is idempotent");
    within(c.node_unstage_volume(unstage_req("pv-1", &lab.path("never/staged"))))
        .await
        .expect("unstage is idempotent");
    // A directory with foreign contents is left alone, never deleted.
    let dir = lab.path("leftover");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("keep"), b"x").expect("file");
    within(c.node_unpublish_volume(unpublish_req("pv-1", &dir)))
        .await
        .expect("unpublish");
    assert!(dir.join("keep").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_keeps_the_volume_busy_until_its_work_ends() {
    let lab = Lab::with(LabOptions {
        device_wait: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let req = stage_req(
        "pv-1",
        &lab.path("staging"),
        mount_cap("ext4", &[]),
        context(SERIAL, None),
    );
    let mut c = lab.client.clone();
    // The caller gives up while the service still waits for the disk.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), c.node_stage_volume(req.clone())).await;
    assert!(
        gave_up.is_err(),
        "the disk does not exist, the call cannot finish"
    );
    // The wait goes on server-side, so a retry must not start a second one.
    let status = within(c.node_stage_volume(req))
        .await
        .expect_err("still busy");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
}
