//! Finding a hotplugged disk: a serial against `/dev/disk/by-id` names, a
//! serial read back from the device, and SCSI VPD page 0x80.
//! Input: bus selector byte, then serial, link name and found serial
//! separated by NUL bytes; the whole input is also tried as a VPD page.
#![no_main]

use kubevirt_csi_driver::node::device::{Bus, DiskId, vpd_pg80_serial};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vpd_pg80_serial(data);
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let bus = match selector % 4 {
        0 => None,
        1 => Some(Bus::Scsi),
        2 => Some(Bus::Virtio),
        _ => Some(Bus::Sata),
    };
    let mut parts = rest.split(|b| *b == 0).map(String::from_utf8_lossy);
    let serial = parts.next().unwrap_or_default();
    let link = parts.next().unwrap_or_default();
    let found = parts.next().unwrap_or_default();
    let id = DiskId::new(&serial, bus);
    let _ = id.matches_link(&link);
    let _ = id.matches_serial(&found);
    // A disk always matches its own serial.
    if !serial.is_empty() && serial.trim() == serial.as_ref() {
        assert!(id.matches_serial(&serial));
    }
});
