//! `lab`: runs the KubeVirt lab.
//!
//! - `lab up --dir DIR [--vms N] [--no-devices] [--suite]` starts a lab in
//!   DIR (with `--suite`, also the CSI driver, the cloud controller manager
//!   and the guest stand-ins), creates `DIR/ready` once it serves, and runs
//!   until SIGTERM or SIGINT, then cleans up (daemons, loop devices, mounts)
//!   and exits 0.
//! - `lab up --management --dir DIR [--image-map FILE]` makes the infra
//!   cluster a management cluster too: kube-scheduler, the management
//!   kubelet (running the hosted control planes' images, see
//!   `kubevirt_lab::kubelet`), the hosted-control-plane manager with its
//!   CRDs, and `DIR/management.kubeconfig`; `kubectl apply -f
//!   examples/hostedcluster.yaml` there brings up a hosted cluster.
//! - `lab demo` starts a lab with the suite in a temporary directory and
//!   narrates a guest volume and a guest load balancer end to end; it exits
//!   non-zero if any step fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kubevirt_lab::daemon::Daemon;
use kubevirt_lab::demo::{self, Demo, Timeline};
use kubevirt_lab::hcp;
use kubevirt_lab::kubelet::ImageMap;
use kubevirt_lab::suite::{Suite, SuiteConfig};
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
        /// Also run the suite: the CSI driver (controller and one node
        /// plugin per worker), the cloud controller manager, and the CSI
        /// sidecar and kubelet stand-ins (binaries built with `cargo build --bins`).
        #[arg(long)]
        suite: bool,
        /// Make the infra cluster a management cluster: kube-scheduler, a
        /// kubelet running hosted control planes, and the manager.
        #[arg(long)]
        management: bool,
        /// With --management: more `image repository: program` entries for
        /// the management kubelet (YAML).
        #[arg(long, requires = "management")]
        image_map: Option<PathBuf>,
    },
    /// Narrate a guest volume and a guest load balancer in a throw-away lab.
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
            suite,
            management,
            image_map,
        } => {
            let management = match (management, image_map) {
                (false, _) => Ok(None),
                (true, file) => image_map_of(file.as_deref()).map(Some),
            };
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
            match labels.and_then(|l| Ok((l, management?))) {
                Ok((infra_labels, management)) => {
                    up(
                        LabConfig {
                            dir,
                            vms,
                            devices: !no_devices,
                            hotplug_step_latency: Duration::from_millis(hotplug_latency_ms),
                            cluster_name,
                            infra_namespace,
                            infra_labels,
                            management,
                            ..LabConfig::default()
                        },
                        suite,
                    )
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

/// The management kubelet's image map: the lab's, plus `file`'s entries.
fn image_map_of(file: Option<&std::path::Path>) -> Result<ImageMap, LabError> {
    let binaries = lab_cluster::Binaries::find()?;
    let map = ImageMap::standard(&binaries);
    match file {
        None => Ok(map),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(LabError::io("read", path))?;
            map.with_yaml(&text, &binaries)
        }
    }
}

/// The manager, its CRDs and namespaces, and `DIR/management.kubeconfig`.
async fn start_management(lab: &Lab) -> Result<Daemon, LabError> {
    let client = lab.infra_client();
    hcp::install_crds(&client).await?;
    hcp::ensure_namespace(&client, hcp::MANAGER_NAMESPACE).await?;
    hcp::ensure_namespace(&client, hcp::NS).await?;
    let kubeconfig = lab.dir.join("management.kubeconfig");
    std::fs::copy(&lab.infra_kubeconfig, &kubeconfig)
        .map_err(LabError::io("write", &kubeconfig))?;
    hcp::start_manager_in_netns(lab, &[], "info,kube=warn", &lab.dir.join("hcp-manager.log")).await
}

async fn up(cfg: LabConfig, with_suite: bool) -> Result<(), LabError> {
    let mut term = signal(SignalKind::terminate())
        .map_err(LabError::io("install SIGTERM handler for", "lab"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(LabError::io("install SIGINT handler for", "lab"))?;
    let management = cfg.management.is_some();
    let lab = Lab::start(cfg).await?;
    let manager = if management {
        match start_management(&lab).await {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = lab.shutdown().await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let suite = if with_suite {
        match Suite::start(&lab, &SuiteConfig::default()).await {
            Ok(suite) => Some(suite),
            Err(e) => {
                let _ = lab.shutdown().await;
                return Err(e);
            }
        }
    } else {
        None
    };
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
        "  network namespace: {} (every pod, Service, node and ingress address is real there)",
        lab.net.path().display()
    );
    if let Some(m) = &manager {
        println!(
            "  management: kube-scheduler, the management kubelet and {} (pid {}, log {})",
            m.name(),
            m.pid().unwrap_or_default(),
            m.log_path().display()
        );
        println!(
            "try: kubectl --kubeconfig {}/management.kubeconfig apply -f examples/hostedcluster.yaml",
            lab.dir.display()
        );
    }
    for daemon in suite.iter().flat_map(Suite::daemons) {
        println!(
            "  {} (pid {}) logs to {}",
            daemon.name(),
            daemon.pid().unwrap_or_default(),
            daemon.log_path().display()
        );
    }
    println!(
        "try: kubectl --kubeconfig {} get vm,vmi,pods -n {}",
        lab.infra_kubeconfig.display(),
        lab.infra_namespace
    );
    if suite.is_some() {
        println!(
            "reach a guest LoadBalancer Service (pods of image {}): nsenter --net={} curl http://<its EXTERNAL-IP>:<port>/",
            lab_net::echo::IMAGE,
            lab.net.path().display()
        );
    }
    // Last, so that whoever waits for it finds everything above printed.
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
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = std::fs::remove_file(&ready);
    if let Some(mut m) = manager {
        let _ = m.terminate(Duration::from_secs(5)).await;
    }
    let stopped = match suite {
        Some(suite) => suite.stop().await,
        None => Ok(()),
    };
    let shutdown = lab.shutdown().await;
    stopped.and(shutdown)
}

async fn run_demo(no_devices: bool) -> Result<(), LabError> {
    let timeline = Timeline::new();
    timeline.section(
        "starting a lab (a management and infra cluster, a guest cluster, simulators, 2 worker VMs), the suite and the manager",
    );
    let lab = Lab::start(LabConfig {
        vms: 2,
        devices: !no_devices,
        management: Some(image_map_of(None)?),
        ..LabConfig::default()
    })
    .await?;
    timeline.event(format!(
        "lab up in {}: infra namespace {}, workers {}",
        lab.dir.display(),
        lab.infra_namespace,
        lab.nodes.join(", ")
    ));
    let suite = match Suite::start(&lab, &SuiteConfig::default()).await {
        Ok(suite) => suite,
        Err(e) => {
            let _ = lab.shutdown().await;
            return Err(e);
        }
    };
    let mut manager = match start_management(&lab).await {
        Ok(manager) => manager,
        Err(e) => {
            let _ = suite.stop().await;
            let _ = lab.shutdown().await;
            return Err(e);
        }
    };
    for daemon in suite.daemons() {
        timeline.event(format!(
            "started {} (pid {}), log {}",
            daemon.name(),
            daemon.pid().unwrap_or_default(),
            daemon.log_path().display()
        ));
    }
    timeline.event(format!(
        "started kubevirt-hcp-manager in the lab network (pid {} of nsenter), log {}",
        manager.pid().unwrap_or_default(),
        manager.log_path().display()
    ));
    let demo = Demo { lab, suite };
    let result = demo::run(&demo, &timeline, &demo::steps()).await;
    if result.is_err() {
        eprintln!("daemon logs (last lines):\n{}", demo.suite.log_tails(30));
        let log = manager.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "manager log (last lines):\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    let Demo { lab, suite } = demo;
    let _ = manager.terminate(Duration::from_secs(5)).await;
    let stopped = suite.stop().await;
    let shutdown = lab.shutdown().await;
    result.and(stopped).and(shutdown)
}
