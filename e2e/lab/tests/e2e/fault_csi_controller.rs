//! The CSI controller killed with SIGKILL at random moments while sidecars
//! drive volumes through CreateVolume, ControllerPublish,
//! ControllerUnpublish and DeleteVolume, and restarted each time (its stale
//! socket left behind): every operation still completes once retried, as a
//! sidecar retries, and afterwards no DataVolume and no hotplugged volume of
//! the tenant is left in the infra cluster. The seed of the kill schedule is
//! printed; `FAULT_SEED=<n>` replays it.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use std::time::Duration;

use crate::csi_support::*;
use crate::fault_support::*;
use anyhow::{Context as _, ensure};
use futures::StreamExt;
use tokio::sync::watch;

/// Volumes taken through the lifecycle (4 operations each).
const VOLUMES: usize = 25;
/// Volumes in flight at once.
const WORKERS: usize = 5;
/// Time between two kills, drawn uniformly: long enough for a restarted
/// driver to sync its caches and finish a call or two before the next one.
const KILL_EVERY: (Duration, Duration) = (Duration::from_millis(60), Duration::from_millis(300));
/// Kills at most; then the remaining operations finish undisturbed.
const MAX_KILLS: usize = 10;
/// Bound of the whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_a_controller_killed_at_random() -> anyhow::Result<()> {
    let lab = lab(2, "crash", Duration::from_millis(10)).await?;
    let mut d = start_driver(&lab, DriverOptions::default()).await?;
    synced(&d).await?;
    let mut rng = Rng::from_env("fault_csi_controller");
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&lab, &mut d, &mut rng))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not done within {TEST_TIMEOUT:?}")));
    let log = d.log_tail();
    let full = d.daemon.log();
    d.daemon.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    outcome.with_context(|| format!("driver log (tail):\n{log}"))?;
    ensure!(!full.contains("panicked"), "the driver panicked:\n{log}");
    Ok(())
}

async fn scenario(lab: &kubevirt_lab::Lab, d: &mut Driver, rng: &mut Rng) -> anyhow::Result<()> {
    let retries = Retries::default();
    let names: Vec<String> = (0..VOLUMES).map(|_| volume_name()).collect();
    let (done_tx, done_rx) = watch::channel(false);
    let socket = d.socket.clone();

    let sidecars = async {
        let results: Vec<anyhow::Result<()>> =
            futures::stream::iter(names.iter().enumerate())
                .map(|(i, name)| {
                    let node =
                        format!("{}/{}", lab.infra_namespace, lab.nodes[i % lab.nodes.len()]);
                    let (socket, retries) = (&socket, &retries);
                    async move {
                        volume_lifecycle(socket, retries, create_request(name, GIB), &node).await
                    }
                })
                .buffer_unordered(WORKERS)
                .collect()
                .await;
        let _ = done_tx.send(true);
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()
    };

    // kill -9, then the same command line again.
    let killer = kill_at_random(
        &mut d.daemon,
        rng,
        KILL_EVERY,
        MAX_KILLS,
        done_rx,
        Finally::LeaveRunning,
    );

    let (ops, kills) = tokio::join!(sidecars, killer);
    ops?;
    let kills = kills?;
    println!(
        "{} operations, {kills} kills, {} retried calls: {}",
        VOLUMES * 4,
        retries.total(),
        retries.summary()
    );
    ensure!(
        kills >= 3,
        "only {kills} kills happened: the run proves little"
    );
    ensure!(
        retries.total() > 0,
        "no call was interrupted by the kills: the run proves little"
    );
    assert_nothing_left(lab, &names, WAIT).await
}
