//! The CCM's cloud config: any document parses or is refused, never a panic.
#![no_main]

use kubevirt_ccm::config::CloudConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CloudConfig::parse(text);
    }
});
