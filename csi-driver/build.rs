//! Release builds on x86_64 Linux link the binary's functions in the order
//! of `link/node.order` (lld's `--symbol-ordering-file`, Rust's default
//! linker there): the node plugin's code side by side, so that the few
//! blocks of it the plugin runs are all the kernel maps into its memory.
//! `scripts/node-link-order.sh` regenerates the file and explains why.
//! Names it lists that the binary lacks are skipped (no warning): a stale
//! order costs memory, never a failed build.
//!
//! `KUBEVIRT_CSI_LINK_ORDER=off` links in the compiler's order, for a
//! linker other than lld.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=link/node.order");
    println!("cargo::rerun-if-env-changed=KUBEVIRT_CSI_LINK_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let disabled = std::env::var("KUBEVIRT_CSI_LINK_ORDER").is_ok_and(|v| v == "off");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/node.order");
    if !release || disabled || target != "x86_64-unknown-linux-gnu" || !order.exists() {
        return;
    }
    for arg in [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ] {
        println!("cargo::rustc-link-arg-bin=kubevirt-csi-driver={arg}");
    }
}
