//! The `bench` binary as a user runs it, with tiny parameters: it exits 0
//! and its JSON carries the machine, the parameters and a measured row for
//! every scenario, each with a unit and, where the issues set one, a target
//! judged met or not. (The numbers themselves are for `docs/performance.md`,
//! measured with a release build, never asserted here.)

use std::time::Duration;

use anyhow::{Context as _, ensure};
use kubevirt_lab::daemon;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

#[tokio::test]
async fn bench_runs_every_scenario_and_reports_json() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("bench.out");
    let mut bench = daemon::spawn(
        BENCH,
        [
            "--volumes=1",
            "--services=1",
            "--concurrency=1,3",
            "--create-burst=5",
            "--held-volumes=5",
            "--held-services=5",
            "--hosted-clusters=2",
            "--hosted-control-planes=1",
            "--shared-etcd-clusters=2",
            "--ephemeral-clusters=1",
            "--json",
        ],
        [("RUST_LOG", "error")],
        &log,
    )?;
    let status = bench.wait(Duration::from_secs(420)).await?;
    let out = bench.log();
    ensure!(status.success(), "bench failed with {status}:\n{out}");
    let json_line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .context("no JSON in the output")?;
    let report: Value = serde_json::from_str(json_line)?;
    ensure!(
        report["machine"]["cores"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    ensure!(report["parameters"]["held_services"] == 5, "{report}");
    let rows = report["results"].as_array().context("results")?;
    for (section, metric) in [
        ("storage", "claim created -> Bound"),
        ("storage", "VMI volume Ready -> ControllerPublish answered"),
        ("storage", "infra API requests per CreateVolume"),
        ("storage", "claims provisioned per second, 3 at once"),
        ("load balancer", "infra ingress -> guest Service status"),
        ("load balancer", "CCM write requests per Service creation"),
        ("load balancer", "5 Services created -> all mirrored"),
        ("network", "guest Service created -> first request answered"),
        ("network", "request through the ingress p50"),
        ("network", "request latency, ingress / direct"),
        (
            "network",
            "requests per second through the ingress, 100 at once",
        ),
        ("memory", "RSS of csi-controller"),
        ("memory", "RSS of ccm"),
        ("CSI controller", "5 concurrent CreateVolume calls"),
        // The count is what the controller listed: its cache may lag the
        // last creations by a moment.
        ("CSI controller", "controller RSS holding "),
        ("manager", "2 HostedClusters created -> all reconciled"),
        ("manager", "manager RSS holding 2 HostedClusters"),
        (
            "hosted control planes",
            "HostedCluster created -> Available, p50 of 1",
        ),
        ("hosted control planes", "memory per hosted cluster"),
        (
            "hosted control planes",
            "2 clusters on one shared etcd, created at once",
        ),
        (
            "hosted control planes",
            "shared etcd RSS holding 2 clusters",
        ),
        ("manager", "writes per reconcile with nothing changed"),
        (
            "hosted control planes",
            "HostedCluster + NodePool of 2 created -> 2 Nodes Ready, p50 of 1",
        ),
        (
            "hosted control planes",
            "... deleted -> nothing left (control-plane namespace gone), p50 of 1",
        ),
    ] {
        let row = rows
            .iter()
            .find(|r| {
                r["section"] == section
                    && r["metric"].as_str().is_some_and(|m| m.starts_with(metric))
            })
            .with_context(|| format!("no row {section}: {metric} in {report}"))?;
        ensure!(row["value"].as_f64().is_some_and(|v| v >= 0.0), "{row}");
        ensure!(!row["unit"].as_str().unwrap_or("").is_empty(), "{row}");
        if !row["target"].as_str().unwrap_or("").is_empty() {
            ensure!(row["met"].is_boolean(), "a target is judged: {row}");
        }
    }
    Ok(())
}
