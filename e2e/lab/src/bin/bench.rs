//! `bench`: the suite's benchmark. Starts a lab with the real daemons (a
//! release build of them when run as a release build), runs the storage,
//! load-balancer, network and CSI controller scenarios of [`kubevirt_lab::bench`],
//! then the manager's in a lab of its own,
//! and prints the machine, every parameter and one table (`--json` for
//! JSON). Exits non-zero if a scenario fails; a missed target is reported,
//! not an error.
//!
//!     cargo build --release --bins
//!     sudo target/release/bench [--volumes N] [--services N] [--concurrency 1,10,100] [--json]

use std::process::ExitCode;

use clap::Parser;
use kubevirt_lab::bench::{
    Params, Report, controller, hosted, load_balancer, manager, network, storage,
};
use kubevirt_lab::suite::{Suite, SuiteConfig};
use kubevirt_lab::{Lab, LabConfig, LabError};

#[derive(Parser, Debug)]
#[command(name = "bench", about = "Benchmark the suite in the lab")]
struct Cli {
    /// Volumes taken through their whole lifecycle, one after another.
    #[arg(long, default_value_t = 20)]
    volumes: usize,
    /// LoadBalancer Services created one after another.
    #[arg(long, default_value_t = 30)]
    services: usize,
    /// Concurrency levels of the throughput scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    concurrency: Vec<usize>,
    /// CreateVolume calls sent at once to the controller socket.
    #[arg(long, default_value_t = 200)]
    create_burst: usize,
    /// DataVolumes the controller holds for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    held_volumes: usize,
    /// LoadBalancer Services created at once and held (CCM at scale).
    #[arg(long, default_value_t = 1000)]
    held_services: usize,
    /// Worker VMs (guest nodes).
    #[arg(long, default_value_t = 2)]
    vms: usize,
    /// HostedClusters given to the manager at once (0 skips the manager);
    /// each has a guest control plane of its own (~300 MB).
    #[arg(long, default_value_t = 12)]
    hosted_clusters: usize,
    /// Hosted control planes (real etcd and Kubernetes binaries) created
    /// one after another in a management lab (0 skips them).
    #[arg(long, default_value_t = 3)]
    hosted_control_planes: usize,
    /// Hosted control planes on one shared etcd, created at once in a
    /// management lab (0 skips them).
    #[arg(long, default_value_t = 20)]
    shared_etcd_clusters: usize,
    /// Ephemeral clusters (a HostedCluster and a NodePool of 2, created,
    /// joined and deleted) one after another in a management lab (0 skips
    /// them).
    #[arg(long, default_value_t = 3)]
    ephemeral_clusters: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let params = Params {
        volumes: cli.volumes,
        services: cli.services,
        concurrency: cli.concurrency,
        create_burst: cli.create_burst,
        held_volumes: cli.held_volumes,
        held_services: cli.held_services,
        vms: cli.vms.max(1),
        hosted_clusters: cli.hosted_clusters,
        hosted_control_planes: cli.hosted_control_planes,
        shared_etcd_clusters: cli.shared_etcd_clusters,
        ephemeral_clusters: cli.ephemeral_clusters,
    };
    match run(params).await {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                println!("kubevirt suite benchmark\n");
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(params: Params) -> Result<Report, LabError> {
    let lab = Lab::start(LabConfig {
        vms: params.vms,
        devices: true,
        ..LabConfig::default()
    })
    .await?;
    let suite = match Suite::start(&lab, &SuiteConfig::default()).await {
        Ok(suite) => suite,
        Err(e) => {
            let _ = lab.shutdown().await;
            return Err(e);
        }
    };
    let mut report = Report::new(params.clone());
    let result = scenarios(&lab, &suite, &params, &mut report).await;
    if result.is_err() {
        eprintln!("daemon logs (last lines):\n{}", suite.log_tails(20));
    }
    let stopped = suite.stop().await;
    let shutdown = lab.shutdown().await;
    result.and(stopped).and(shutdown)?;
    if params.hosted_clusters > 0 {
        eprintln!(
            "bench: manager with {} HostedClusters",
            params.hosted_clusters
        );
        manager::clusters(params.hosted_clusters, &mut report).await?;
    }
    if params.hosted_control_planes > 0 {
        eprintln!(
            "bench: {} hosted control planes",
            params.hosted_control_planes
        );
        hosted::control_planes(params.hosted_control_planes, &mut report).await?;
    }
    if params.shared_etcd_clusters > 0 {
        eprintln!(
            "bench: {} hosted control planes on one shared etcd",
            params.shared_etcd_clusters
        );
        hosted::shared_etcd(params.shared_etcd_clusters, &mut report).await?;
    }
    if params.ephemeral_clusters > 0 {
        eprintln!(
            "bench: {} ephemeral clusters with 2 nodes each",
            params.ephemeral_clusters
        );
        hosted::ephemeral(params.ephemeral_clusters, &mut report).await?;
    }
    Ok(report)
}

async fn scenarios(
    lab: &Lab,
    suite: &Suite,
    p: &Params,
    report: &mut Report,
) -> Result<(), LabError> {
    eprintln!("bench: {} volume lifecycles", p.volumes);
    storage::lifecycle(lab, suite, p, report).await?;
    eprintln!("bench: {} load balancers", p.services);
    load_balancer::propagation(lab, suite, p, report).await?;
    eprintln!("bench: requests through the lab network");
    network::traffic(lab, p, report).await?;
    controller::memory(suite, "idle, after the sequential runs", report);
    for &c in &p.concurrency {
        eprintln!("bench: provisioning at concurrency {c}");
        storage::throughput(lab, c, report).await?;
    }
    for &c in &p.concurrency {
        eprintln!("bench: load balancers at concurrency {c}");
        load_balancer::throughput(lab, c, report).await?;
    }
    controller::memory(suite, "after the concurrent runs", report);
    eprintln!("bench: {} CreateVolume calls at once", p.create_burst);
    controller::create_burst(lab, p, report).await?;
    eprintln!("bench: controller holding {} volumes", p.held_volumes);
    controller::memory_holding(lab, suite, p, report).await?;
    eprintln!("bench: {} LoadBalancer Services at once", p.held_services);
    load_balancer::hold(
        lab,
        suite.ccm.as_ref().and_then(|d| d.pid()),
        p.held_services,
        report,
    )
    .await?;
    Ok(())
}
