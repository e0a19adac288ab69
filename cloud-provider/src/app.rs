//! The process from parsed flags to exit: load the cloud config, connect
//! to both clusters, serve health and metrics, win the leader Lease (when
//! enabled), run the controllers, and on SIGTERM stop them, wait for running
//! reconciles and release the Lease. Losing the Lease stops the controllers
//! and ends the process with an error, as client-go's leader election does.

use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::cli::Options;
use crate::clients;
use crate::config::CloudConfig;
use crate::controllers::Runtime;
use crate::error::Fatal;
use crate::leader::{self, Elector, Ended};
use crate::manager::{self, Settings};
use crate::metrics::Metrics;
use crate::serve;

/// How long running reconciles get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Run until SIGTERM/SIGINT (`Ok`) or a fatal condition (`Err`).
pub async fn run(opts: Options) -> Result<(), Fatal> {
    let parsed = CloudConfig::load(&opts.cloud_config)?;
    for warning in &parsed.warnings {
        tracing::warn!("{warning}");
    }
    let config = parsed.config;
    let clusters = clients::connect(
        opts.kubeconfig.as_deref(),
        config.kubeconfig.as_deref(),
        config.namespace.as_deref(),
    )
    .await?;
    let (settings, notes) = Settings::new(
        opts.controllers,
        &config,
        &opts.cluster_name,
        &clusters.infra_namespace,
        opts.concurrent_service_syncs,
    );
    for note in notes {
        tracing::info!("{note}");
    }
    tracing::info!(
        cluster = %opts.cluster_name,
        infra_namespace = %clusters.infra_namespace,
        controllers = ?settings.controllers,
        "starting"
    );

    let token = CancellationToken::new();
    tokio::spawn(cancel_on_signal(token.clone()));
    let metrics = Metrics::default();
    let server = serve::start(&opts.serving, metrics.clone(), token.clone()).await?;

    let identity = leader::identity();
    let rt = Runtime {
        metrics: metrics.clone(),
        recorder: Recorder::new(
            clusters.guest.clone(),
            Reporter {
                controller: "kubevirt-cloud-controller-manager".into(),
                instance: Some(identity.clone()),
            },
        ),
        token: token.child_token(),
    };

    let result = if opts.leader_election.enabled {
        let mut elector = Elector::new(
            clusters.guest.clone(),
            opts.leader_election.clone(),
            identity,
        );
        tracing::info!(identity = %elector.identity(), "waiting for the leader lease");
        if elector.acquire(&token).await {
            metrics.set_leader(true);
            let controllers_token = rt.token.clone();
            let controllers = tokio::spawn(manager::run(clusters, settings, rt));
            let ended = elector.hold(&token).await;
            metrics.set_leader(false);
            controllers_token.cancel();
            if tokio::time::timeout(SHUTDOWN_GRACE, controllers)
                .await
                .is_err()
            {
                tracing::warn!("controllers did not stop in time");
            }
            match ended {
                Ended::Cancelled => {
                    elector.release().await;
                    Ok(())
                }
                Ended::Lost(why) => Err(Fatal::LeadershipLost(why)),
            }
        } else {
            Ok(())
        }
    } else {
        metrics.set_leader(true);
        let controllers = tokio::spawn(manager::run(clusters, settings, rt));
        token.cancelled().await;
        if tokio::time::timeout(SHUTDOWN_GRACE, controllers)
            .await
            .is_err()
        {
            tracing::warn!("controllers did not stop in time");
        }
        Ok(())
    };

    token.cancel();
    if let Some((_, task)) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    result
}

async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    token.cancel();
}
