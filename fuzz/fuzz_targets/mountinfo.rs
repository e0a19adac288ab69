//! `/proc/self/mountinfo` as the node plugin reads it: any bytes.
#![no_main]

use kubevirt_csi_driver::node::mountinfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mountinfo::parse(data);
});
