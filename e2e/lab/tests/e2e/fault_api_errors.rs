//! The infra API server answering a share of the CSI controller's writes
//! with injected 409 Conflict and 500 Internal Server Error (hotplug
//! `addvolume` 409, `removevolume` 500, DataVolumes 500; the simulators
//! meet the DataVolume faults too) while sidecars
//! drive volumes through their whole lifecycle: every operation completes
//! (the driver or the sidecar retries), the driver never answers with
//! gRPC Unknown, and once the faults are lifted nothing of the tenant is
//! left in the infra cluster.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use std::time::Duration;

use crate::csi_support::*;
use crate::fault_support::*;
use anyhow::{Context as _, ensure};
use futures::StreamExt;
use lab_cluster::RequestCounters;
use tonic::Code;

const VOLUMES: usize = 20;
const WORKERS: usize = 4;
const TEST_TIMEOUT: Duration = Duration::from_secs(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_conflicts_and_server_errors_are_retried() -> anyhow::Result<()> {
    let lab = lab(2, "flaky", Duration::ZERO).await?;
    let mut d = start_driver(&lab, DriverOptions::default()).await?;
    synced(&d).await?;
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&lab, &d))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not done within {TEST_TIMEOUT:?}")));
    let log = d.log_tail();
    d.daemon.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    outcome.with_context(|| format!("driver log (tail):\n{log}"))
}

async fn scenario(lab: &kubevirt_lab::Lab, d: &Driver) -> anyhow::Result<()> {
    let faults = lab.infra.faults();
    faults.set_error_rate("virtualmachines/addvolume", 0.4, 409);
    faults.set_error_rate("virtualmachines/removevolume", 0.4, 500);
    faults.set_error_rate("datavolumes", 0.1, 500);

    let retries = Retries::default();
    let names: Vec<String> = (0..VOLUMES).map(|_| volume_name()).collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let node = format!("{}/{}", lab.infra_namespace, lab.nodes[i % lab.nodes.len()]);
            let (socket, retries) = (&d.socket, &retries);
            async move { volume_lifecycle(socket, retries, create_request(name, GIB), &node).await }
        })
        .buffer_unordered(WORKERS)
        .collect()
        .await;
    faults.clear();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    // Injected answers never reach kube-apiserver: the proxy counts them,
    // the audit log the requests that went through.
    let injected = faults.injected("virtualmachines/addvolume");
    let addvolumes =
        |c: &RequestCounters| c.count_by("update", "virtualmachines/addvolume", &d.user);
    let passed = addvolumes(
        &lab.infra
            .counters_when(|c| addvolumes(c) >= VOLUMES as u64, Duration::from_secs(10))
            .await?,
    );
    println!(
        "{VOLUMES} volumes; driver requests: {:?}; addvolume {passed} served, {injected} failed by the proxy; sidecar retries: {}",
        requests_of(lab, &d.user),
        retries.summary()
    );
    ensure!(
        injected > 0 && passed >= VOLUMES as u64,
        "addvolume: {passed} served, {injected} injected failures for {VOLUMES} volumes"
    );
    ensure!(
        !retries.saw(Code::Unknown),
        "the driver answered Unknown: {}",
        retries.summary()
    );
    assert_nothing_left(lab, &names, WAIT).await
}
