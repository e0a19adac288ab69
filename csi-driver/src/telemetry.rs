//! Structured logging: a tracing subscriber writing text or JSON to stderr,
//! its level chosen by the klog-style `--v` (0-2 info, 3-4 debug, 5+ trace for
//! this driver; dependencies stay at warn) unless `RUST_LOG` says otherwise.
//!
//! Handlers log chosen request fields, never whole requests: CSI requests
//! carry secrets.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter directive for a klog verbosity.
pub fn filter_directive(verbosity: u8) -> String {
    let ours = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let deps = if verbosity >= 6 { "info" } else { "warn" };
    format!("{deps},kubevirt_csi_driver={ours},kubevirt_infra={ours}")
}

/// Install the global subscriber. `RUST_LOG`, when set, replaces the directive.
pub fn init(verbosity: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(filter_directive(verbosity)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(
            filter_directive(0),
            "warn,kubevirt_csi_driver=info,kubevirt_infra=info"
        );
        assert!(filter_directive(3).contains("kubevirt_csi_driver=debug"));
        assert!(filter_directive(5).contains("kubevirt_csi_driver=trace"));
        assert!(EnvFilter::try_new(filter_directive(7)).is_ok());
    }
}
