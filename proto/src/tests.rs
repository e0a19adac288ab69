//! Wire checks: messages round-trip through prost, well-known fields sit on
//! the field numbers the CSI spec assigns, and the exported descriptor set
//! describes the whole `csi.v1` package.

use std::collections::HashMap;

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::FILE_DESCRIPTOR_SET;
use crate::v1::{
    CreateVolumeRequest, NodeStageVolumeRequest, TopologyRequirement, VolumeCapability,
    VolumeContentSource, volume_capability, volume_content_source,
};

fn csi_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    set.file
        .into_iter()
        .find(|f| f.name() == "csi.proto")
        .expect("csi.proto is in the set")
}

fn field_numbers(file: &FileDescriptorProto, message: &str) -> HashMap<String, i32> {
    let msg = file
        .message_type
        .iter()
        .find(|m| m.name() == message)
        .unwrap_or_else(|| panic!("message {message} missing"));
    msg.field
        .iter()
        .map(|f| (f.name().to_owned(), f.number()))
        .collect()
}

#[test]
fn create_volume_request_field_numbers_match_the_spec() {
    let numbers = field_numbers(&csi_file(), "CreateVolumeRequest");
    for (name, number) in [
        ("name", 1),
        ("capacity_range", 2),
        ("volume_capabilities", 3),
        ("parameters", 4),
        ("secrets", 5),
        ("volume_content_source", 6),
        ("accessibility_requirements", 7),
        ("mutable_parameters", 8),
    ] {
        assert_eq!(
            numbers.get(name),
            Some(&number),
            "CreateVolumeRequest.{name}"
        );
    }
    let stage = field_numbers(&csi_file(), "NodeStageVolumeRequest");
    assert_eq!(stage.get("staging_target_path"), Some(&3));
    assert_eq!(stage.get("volume_context"), Some(&6));
}

#[test]
fn fields_land_on_their_wire_tags() {
    // Each populated field alone: the first byte is the key (number << 3 | wire type 2).
    let cases: [(CreateVolumeRequest, u8); 4] = [
        (
            CreateVolumeRequest {
                name: "pvc-1".into(),
                ..Default::default()
            },
            1,
        ),
        (
            CreateVolumeRequest {
                parameters: HashMap::from([("bus".into(), "scsi".into())]),
                ..Default::default()
            },
            4,
        ),
        (
            CreateVolumeRequest {
                volume_content_source: Some(VolumeContentSource::default()),
                ..Default::default()
            },
            6,
        ),
        (
            CreateVolumeRequest {
                accessibility_requirements: Some(TopologyRequirement::default()),
                ..Default::default()
            },
            7,
        ),
    ];
    for (msg, number) in cases {
        let bytes = msg.encode_to_vec();
        assert_eq!(
            bytes.first(),
            Some(&((number << 3) | 2)),
            "field {number}: {bytes:?}"
        );
    }
    let mutable = CreateVolumeRequest {
        mutable_parameters: HashMap::from([("iops".into(), "100".into())]),
        ..Default::default()
    };
    assert_eq!(mutable.encode_to_vec().first(), Some(&((8 << 3) | 2)));
}

#[test]
fn messages_round_trip() {
    let req = CreateVolumeRequest {
        name: "pvc-0b1c".into(),
        parameters: HashMap::from([("infraStorageClassName".into(), "fast".into())]),
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: "snap-1".into(),
                },
            )),
        }),
        ..Default::default()
    };
    let back = CreateVolumeRequest::decode(req.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, req);

    let stage = NodeStageVolumeRequest {
        volume_id: "pvc-1".into(),
        staging_target_path: "/var/lib/kubelet/staging".into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    fs_type: "xfs".into(),
                    mount_flags: vec!["noatime".into()],
                    volume_mount_group: String::new(),
                },
            )),
            access_mode: None,
        }),
        volume_context: HashMap::from([("serial".into(), "abc".into())]),
        ..Default::default()
    };
    let back = NodeStageVolumeRequest::decode(stage.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, stage);
}

#[test]
fn descriptor_set_covers_services_options_and_imports() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for import in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    ] {
        assert!(names.contains(&import), "{import} missing from {names:?}");
    }
    let csi = csi_file();
    assert_eq!(csi.package(), "csi.v1");
    let services: Vec<&str> = csi.service.iter().map(|s| s.name()).collect();
    assert_eq!(
        services,
        [
            "Identity",
            "Controller",
            "GroupController",
            "SnapshotMetadata",
            "Node"
        ]
    );
    let secret = csi
        .extension
        .iter()
        .find(|e| e.name() == "csi_secret")
        .expect("csi_secret extension");
    assert_eq!(secret.number(), 1059);
    assert_eq!(secret.extendee(), ".google.protobuf.FieldOptions");
}

#[test]
fn etcd_prefix_ends_are_etcdctls() {
    use crate::etcd::prefix_end;
    assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff"), vec![0]);
}
