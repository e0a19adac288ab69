//! `kubevirt-hcp-manager`: parse the flags, set up logging, connect to the
//! management cluster, and run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubevirt_hcp_manager::cli::{Args, LogFormat};
use kubevirt_hcp_manager::metrics::Metrics;
use kubevirt_hcp_manager::run::{Options, run};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn client(args: &Args) -> anyhow::Result<Client> {
    let config = match args.kubeconfig_path() {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Cancel `token` on SIGTERM or SIGINT.
fn on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let options = Options {
        settings: args.settings()?,
        leader_election: args.lease(),
        metrics_address: args.metrics_address()?,
        health_address: args.health_address()?,
        metrics: Metrics::new(),
    };
    let client = client(&args).await?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone())?;
    run(client, options, shutdown).await?;
    Ok(())
}
