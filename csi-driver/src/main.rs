//! `kubevirt-csi-driver`: parse the flags (exit 2 with one message when they
//! do not make sense), set up logging, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use kubevirt_csi_driver::{app, config::Config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = Config::from_args(
        std::env::args_os(),
        Config::enforcement_from_env().as_deref(),
    )
    .unwrap_or_else(|e| e.exit());
    telemetry::init(cfg.verbosity, cfg.log_format);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "kubevirt-csi-driver starting"
    );
    match app::run(cfg, tokio_util::sync::CancellationToken::new()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
