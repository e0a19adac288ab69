//! The CSI driver's storage class enforcement (`INFRA_STORAGE_CLASS_ENFORCEMENT`).
#![no_main]

use kubevirt_csi_driver::enforcement::Enforcement;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Enforcement::parse(text);
    }
});
