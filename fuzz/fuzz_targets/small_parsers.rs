//! The small parsers of request fields and flags: CSI node ids, gRPC
//! timeouts, Kubernetes quantities, Go durations.
#![no_main]

use kubevirt_ccm::cli::parse_go_duration;
use kubevirt_csi_driver::controller::capability::parse_node_id;
use kubevirt_csi_driver::controller::deadline::parse_grpc_timeout;
use kubevirt_csi_driver::controller::quantity::parse_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_node_id(s);
        let _ = parse_grpc_timeout(s);
        let _ = parse_bytes(s);
        let _ = parse_go_duration(s);
    }
});
