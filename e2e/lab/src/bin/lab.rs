//! `lab`: runs the KubeVirt lab.
//!
//! - `lab up --dir DIR [--vms N] [--no-devices]` starts a lab in DIR, creates
//!   `DIR/ready` once it serves, and runs until SIGTERM or SIGINT, then cleans
//!   up (loop devices, mounts) and exits 0.
//! - `lab demo` starts a lab in a temporary directory and narrates what the
//!   infra side does for a hotplugged volume and a load balancer; it exits
//!   non-zero if any step fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kubevirt_lab::demo::{self, Timeline};
use kubevirt_lab::{Lab, LabConfig, LabError};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "lab",
    about = "A KubeVirt infra cluster and its guest cluster, simulated"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a lab and keep it running until SIGTERM/SIGINT.
    Up {
        /// Lab directory (kubeconfigs, lab.env, volumes, guest device trees).
        #[arg(long)]
        dir: PathBuf,
        /// Worker VMs of the guest cluster.
        #[arg(long, default_value_t = 3)]
        vms: usize,
        /// Do not emulate hotplugged disks as loop devices.
        #[arg(long)]
        no_devices: bool,
        /// Guest cluster name.
        #[arg(long, default_value = "demo")]
        cluster_name: String,
        /// Infra namespace of the guest cluster.
        #[arg(long, default_value = "clusters-demo")]
        infra_namespace: String,
        /// Infra labels (`k=v,k=v`); default `hypershift.openshift.io/infra-id=<cluster-name>`.
        #[arg(long)]
        infra_labels: Option<String>,
        /// Minimum milliseconds between two hotplug phases of a volume.
        #[arg(long, default_value_t = 0)]
        hotplug_latency_ms: u64,
    },
    /// Narrate a hotplug and a load balancer in a throw-away lab.
    Demo {
        /// Do not emulate hotplugged disks as loop devices.
        #[arg(long)]
        no_devices: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let default_filter = match std::env::args().nth(1).as_deref() {
        Some("demo") => "warn",
        _ => "info,kube_runtime=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Up {
            dir,
            vms,
            no_devices,
            cluster_name,
            infra_namespace,
            infra_labels,
            hotplug_latency_ms,
        } => {
            let labels = match infra_labels {
                Some(list) => {
                    kubevirt_infra::labels::parse_label_list(&list).map_err(LabError::Invalid)
                }
                None => Ok([(
                    "hypershift.openshift.io/infra-id".to_string(),
                    cluster_name.clone(),
                )]
                .into()),
            };
            match labels {
                Ok(infra_labels) => {
                    up(LabConfig {
                        dir,
                        vms,
                        devices: !no_devices,
                        hotplug_step_latency: Duration::from_millis(hotplug_latency_ms),
                        cluster_name,
                        infra_namespace,
                        infra_labels,
                    })
                    .await
                }
                Err(e) => Err(e),
            }
        }
        Command::Demo { no_devices } => run_demo(no_devices).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn up(cfg: LabConfig) -> Result<(), LabError> {
    let mut term = signal(SignalKind::terminate())
        .map_err(LabError::io("install SIGTERM handler for", "lab"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(LabError::io("install SIGINT handler for", "lab"))?;
    let lab = Lab::start(cfg).await?;
    let ready = lab.dir.join("ready");
    std::fs::write(
        &ready,
        format!(
            "infra={}\nguest={}\n",
            lab.infra.https_url(),
            lab.guest.https_url()
        ),
    )
    .map_err(LabError::io("write", &ready))?;
    println!("lab serving in {}", lab.dir.display());
    println!(
        "  infra cluster: {} (kubeconfig {})",
        lab.infra.https_url(),
        lab.infra_kubeconfig.display()
    );
    println!(
        "  guest cluster: {} (kubeconfig {})",
        lab.guest.https_url(),
        lab.guest_kubeconfig.display()
    );
    println!(
        "  infra namespace: {}   nodes: {}",
        lab.infra_namespace,
        lab.nodes.join(" ")
    );
    println!("  environment: {}", lab.env_file().display());
    println!(
        "try: kubectl --kubeconfig {} get vm,vmi,pods -n {}",
        lab.infra_kubeconfig.display(),
        lab.infra_namespace
    );
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = std::fs::remove_file(&ready);
    lab.shutdown().await
}

async fn run_demo(no_devices: bool) -> Result<(), LabError> {
    let timeline = Timeline::new();
    timeline.section("starting a lab (infra + guest API servers, simulators, 2 worker VMs)");
    let lab = Lab::start(LabConfig {
        vms: 2,
        devices: !no_devices,
        ..LabConfig::default()
    })
    .await?;
    timeline.event(format!(
        "lab up in {}: infra namespace {}, workers {}",
        lab.dir.display(),
        lab.infra_namespace,
        lab.nodes.join(", ")
    ));
    let result = demo::run(&lab, &timeline, &demo::steps()).await;
    let shutdown = lab.shutdown().await;
    result.and(shutdown)
}
