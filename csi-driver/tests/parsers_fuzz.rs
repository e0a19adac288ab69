//! Property tests of everything the driver parses from outside: its flags,
//! the storage class enforcement YAML, `/proc/self/mountinfo`, SCSI VPD
//! pages, by-id link names and serials, node ids, gRPC timeouts and
//! quantities. Arbitrary input must give a value or an error, never a
//! panic; and the disk matching must find exactly the disk it was given.
//! (They stand in for fuzz targets: libFuzzer needs a nightly toolchain.)

use std::ffi::OsString;

use kubevirt_csi_driver::config::Config;
use kubevirt_csi_driver::controller::capability::parse_node_id;
use kubevirt_csi_driver::controller::deadline::parse_grpc_timeout;
use kubevirt_csi_driver::controller::quantity::parse_bytes;
use kubevirt_csi_driver::enforcement::Enforcement;
use kubevirt_csi_driver::node::device::{Bus, DiskId, vpd_pg80_serial};
use kubevirt_csi_driver::node::mountinfo;
use proptest::prelude::*;

/// Serials as KubeVirt hands them out (DataVolume UIDs) and a few odd ones.
fn serial() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,40}",
    ]
}

/// The by-id name udev gives a disk with `serial` on `bus`.
fn link_for(bus: Bus, serial: &str) -> String {
    match bus {
        Bus::Scsi => format!("scsi-0QEMU_QEMU_HARDDISK_{serial}"),
        Bus::Virtio => format!("virtio-{}", serial.chars().take(20).collect::<String>()),
        Bus::Sata => format!(
            "ata-QEMU_HARDDISK_{}",
            serial.chars().take(20).collect::<String>()
        ),
    }
}

fn bus() -> impl Strategy<Value = Bus> {
    prop_oneof![Just(Bus::Scsi), Just(Bus::Virtio), Just(Bus::Sata)]
}

proptest! {
    // Failures print their minimal input; nothing is written to the tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_disk_matches_its_own_link_and_serial(serial in serial(), bus in bus()) {
        let id = DiskId::new(&serial, Some(bus));
        prop_assert!(id.matches_link(&link_for(bus, &serial)));
        prop_assert!(id.matches_serial(&serial));
        let padded = format!(" {serial}\0\n");
        prop_assert!(id.matches_serial(&padded));
        // A partition of the disk is not the disk.
        let partition = format!("{}-part1", link_for(bus, &serial));
        prop_assert!(!id.matches_link(&partition));
    }

    #[test]
    fn distinct_uuids_never_match_each_other(
        a in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        b in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        bus in bus(),
    ) {
        // Virtio and SATA keep 20 characters: UUIDs that share them are
        // indistinguishable there, as on a real VM.
        prop_assume!(a[..20] != b[..20]);
        let id = DiskId::new(&a, Some(bus));
        prop_assert!(!id.matches_link(&link_for(bus, &b)));
        prop_assert!(!id.matches_serial(&b));
    }

    #[test]
    fn link_and_serial_matching_never_panic(serial in ".{0,64}", name in ".{0,128}", found in ".{0,64}") {
        for bus in [None, Some(Bus::Scsi), Some(Bus::Virtio), Some(Bus::Sata)] {
            let id = DiskId::new(&serial, bus);
            let _ = id.matches_link(&name);
            let _ = id.matches_serial(&found);
        }
    }

    #[test]
    fn vpd_pages_never_panic_and_round_trip(page in proptest::collection::vec(any::<u8>(), 0..300), serial in "[A-Za-z0-9-]{1,60}") {
        let _ = vpd_pg80_serial(&page);
        let mut built = vec![0, 0x80, 0, serial.len() as u8];
        built.extend_from_slice(serial.as_bytes());
        prop_assert_eq!(vpd_pg80_serial(&built), Some(serial));
    }

    #[test]
    fn mountinfo_never_panics(text in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = mountinfo::parse(&text);
    }

    #[test]
    fn mountinfo_lines_with_garbage_never_panic(line in "[0-9]{1,3} [0-9]{1,3} [0-9]{1,3}:[0-9]{1,3} .{0,40} .{0,40} .{0,30}( .{0,20}){0,4}") {
        let _ = mountinfo::parse(line.as_bytes());
    }

    #[test]
    fn enforcement_yaml_never_panics(yaml in ".{0,400}") {
        let _ = Enforcement::parse(&yaml);
    }

    #[test]
    fn enforcement_mutations_never_panic(cut in 0usize..200, insert in ".{0,8}") {
        let good = "allowAll: false\nallowDefault: true\nallowList: [fast, slow]\nstorageSnapshotMapping:\n- storageClasses: [fast]\n  volumeSnapshotClasses: [snap]\n";
        let mut text: String = good.chars().take(cut).collect();
        text.push_str(&insert);
        text.extend(good.chars().skip(cut));
        let _ = Enforcement::parse(&text);
    }

    #[test]
    fn small_parsers_never_panic(s in ".{0,80}") {
        let _ = parse_node_id(&s);
        let _ = parse_grpc_timeout(&s);
        let _ = parse_bytes(&s);
    }

    #[test]
    fn flags_give_a_config_or_an_error(args in proptest::collection::vec(prop_oneof![
        Just("--endpoint=unix:///tmp/x.sock".to_string()),
        Just("--run-node-service=false".to_string()),
        Just("--run-controller-service".to_string()),
        Just("-v=5".to_string()),
        Just("--infra-cluster-labels=a=b,c".to_string()),
        Just("--max-volumes-per-node=-3".to_string()),
        Just("--health-address=:99999".to_string()),
        Just("--endpoint=tcp://[::1".to_string()),
        "--[a-z-]{1,20}(=.{0,10})?",
        ".{0,20}",
    ], 0..6), env in proptest::option::of(".{0,60}")) {
        let argv = std::iter::once(OsString::from("kubevirt-csi-driver"))
            .chain(args.into_iter().map(OsString::from));
        let _ = Config::from_args(argv, env.as_deref());
    }
}
