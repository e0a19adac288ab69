//! `lab-csi-sidecar <name> [flags]`: what the management kubelet runs for
//! the Kubernetes CSI sidecars' images (`registry.k8s.io/sig-storage/...`)
//! in a hosted cluster's CSI controller pod, with the flags those images
//! take. Each does the sidecar's job against the driver's socket and the
//! guest cluster of `--kubeconfig` through the lab's stand-ins
//! ([`lab_guest`]):
//!
//! - `csi-provisioner`: claims -> `CreateVolume` -> pre-bound volumes, and
//!   released volumes -> `DeleteVolume`; binding is the guest's
//!   kube-controller-manager's (the PV controller), as on a real cluster;
//! - `csi-attacher`: VolumeAttachments -> `ControllerPublish`/`Unpublish`;
//! - `csi-resizer`: grown claims -> `ControllerExpandVolume`;
//! - `csi-snapshotter`: exits at start, as the real one does, when the guest
//!   does not serve the VolumeSnapshot API (the real one first retries for
//!   a while; the kubelet's restarts do that here); otherwise
//!   VolumeSnapshotContents -> `CreateSnapshot`/`DeleteSnapshot`;
//! - `snapshot-controller` (the image `registry.k8s.io/sig-storage/
//!   snapshot-controller`, not a sidecar but run the same way): the same
//!   check, then VolumeSnapshots -> VolumeSnapshotContents, their status
//!   back to the snapshots; it talks to no driver;
//! - `livenessprobe`: `GET /healthz` on `--http-endpoint` (or
//!   `:--health-port`) answers 200 when the driver's `Probe` says ready.
//!
//! Flags the real sidecar has that change nothing here (`--v`,
//! `--retry-interval-max`, ...) are accepted; an unknown flag is an error,
//! as it is for the real one. Each retries a failed reconcile after
//! [`lab_guest::RETRY`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use kubevirt_csi_proto::v1::ProbeRequest;
use kubevirt_infra::duration::parse_go_duration;
use lab_guest::{Csi, Ctx, SidecarConfig};

use crate::LabError;

#[derive(Parser, Debug)]
#[command(
    name = "lab-csi-sidecar",
    about = "The lab's stand-ins for the Kubernetes CSI sidecars, with their flags"
)]
pub struct Cli {
    #[command(subcommand)]
    pub sidecar: Sidecar,
}

#[derive(Subcommand, Debug)]
pub enum Sidecar {
    /// external-provisioner.
    #[command(name = "csi-provisioner")]
    Provisioner {
        #[command(flatten)]
        common: Common,
        /// File system type of volumes whose class names none.
        #[arg(long, default_value = "")]
        default_fstype: String,
        /// Prefix of the names of created volumes.
        #[arg(long, default_value = "pvc")]
        volume_name_prefix: String,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
        extra_create_metadata: Option<bool>,
    },
    /// external-attacher.
    #[command(name = "csi-attacher")]
    Attacher {
        #[command(flatten)]
        common: Common,
    },
    /// external-resizer.
    #[command(name = "csi-resizer")]
    Resizer {
        #[command(flatten)]
        common: Common,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
        handle_volume_inuse_error: Option<bool>,
    },
    /// external-snapshotter's sidecar.
    #[command(name = "csi-snapshotter")]
    Snapshotter {
        #[command(flatten)]
        common: Common,
    },
    /// The snapshot controller.
    #[command(name = "snapshot-controller")]
    SnapshotController {
        /// The cluster whose objects are handled; none: in-cluster configuration.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long = "v", default_value_t = 0)]
        verbosity: u8,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
        leader_election: Option<bool>,
        #[arg(long)]
        leader_election_namespace: Option<String>,
        #[arg(long, value_parser = parse_go_duration)]
        resync_period: Option<Duration>,
        #[arg(long, value_parser = parse_go_duration)]
        retry_crd_interval_max: Option<Duration>,
        #[arg(long)]
        worker_threads: Option<u32>,
        #[arg(long)]
        http_endpoint: Option<String>,
    },
    /// livenessprobe.
    #[command(name = "livenessprobe")]
    Livenessprobe {
        /// Address of the driver's socket.
        #[arg(long, default_value = "/run/csi/socket")]
        csi_address: String,
        /// Deadline of each Probe call.
        #[arg(long, default_value = "1s", value_parser = parse_go_duration)]
        probe_timeout: Duration,
        /// Port of /healthz on every address (when --http-endpoint is empty).
        #[arg(long, default_value_t = 9808)]
        health_port: u16,
        /// Address of /healthz (`host:port`); replaces --health-port.
        #[arg(long, default_value = "")]
        http_endpoint: String,
        #[arg(long = "v", default_value_t = 0)]
        verbosity: u8,
    },
}

/// The flags every controller sidecar takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Address of the driver's socket (a path, or `unix://` and a path).
    #[arg(long, default_value = "/run/csi/socket")]
    csi_address: String,
    /// The cluster whose objects are handled; none: in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Deadline of each CSI call.
    #[arg(long, default_value = "15s", value_parser = parse_go_duration)]
    timeout: Duration,
    #[arg(long = "v", default_value_t = 0)]
    verbosity: u8,
    #[arg(long, value_parser = parse_go_duration)]
    retry_interval_start: Option<Duration>,
    #[arg(long, value_parser = parse_go_duration)]
    retry_interval_max: Option<Duration>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    leader_election: Option<bool>,
    #[arg(long)]
    worker_threads: Option<u32>,
}

fn socket(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

async fn client(kubeconfig: Option<&Path>) -> Result<Client, LabError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| LabError::Invalid(format!("--kubeconfig: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| LabError::Invalid(format!("--kubeconfig: {e}")))?
        }
        None => kube::Config::incluster()
            .map_err(|e| LabError::Invalid(format!("in-cluster configuration: {e}")))?,
    };
    Ok(Client::try_from(config)?)
}

impl Common {
    async fn context(&self, cfg: SidecarConfig) -> Result<std::sync::Arc<Ctx>, LabError> {
        let client = client(self.kubeconfig.as_deref()).await?;
        let channel = lab_guest::connect_lazy(socket(&self.csi_address));
        Ok(Ctx::new(
            channel,
            client,
            SidecarConfig {
                timeout: self.timeout,
                // A kube-controller-manager binds claims where these run.
                pv_controller: false,
                ..cfg
            },
        ))
    }
}

/// Runs the sidecar until it fails or the process is stopped.
pub async fn run(cli: Cli) -> Result<(), LabError> {
    let defaults = SidecarConfig::default();
    match cli.sidecar {
        Sidecar::Provisioner {
            common,
            default_fstype,
            volume_name_prefix,
            ..
        } => {
            let cfg = SidecarConfig {
                default_fs_type: default_fstype,
                volume_name_prefix,
                ..defaults
            };
            lab_guest::provisioner::run(common.context(cfg).await?).await;
        }
        Sidecar::Attacher { common } => {
            lab_guest::attacher::run(common.context(defaults).await?).await;
        }
        Sidecar::Resizer { common, .. } => {
            lab_guest::resizer::run(common.context(defaults).await?).await;
        }
        Sidecar::Snapshotter { common } => {
            let ctx = common.context(defaults).await?;
            snapshot_api_served(&ctx.client).await?;
            lab_guest::snapshotter::run_sidecar(ctx).await;
        }
        Sidecar::SnapshotController { kubeconfig, .. } => {
            let client = client(kubeconfig.as_deref()).await?;
            snapshot_api_served(&client).await?;
            // The controller makes no CSI call: its context's channel
            // names a socket that does not exist, and is never used.
            let ctx = Ctx::new(
                lab_guest::connect_lazy(Path::new(
                    "/nonexistent/snapshot-controller-uses-no-driver",
                )),
                client,
                defaults,
            );
            lab_guest::snapshotter::run_controller(ctx).await;
        }
        Sidecar::Livenessprobe {
            csi_address,
            probe_timeout,
            health_port,
            http_endpoint,
            ..
        } => {
            let address: SocketAddr = if http_endpoint.is_empty() {
                ([0, 0, 0, 0], health_port).into()
            } else {
                http_endpoint.parse().map_err(|e| {
                    LabError::Invalid(format!("--http-endpoint {http_endpoint:?}: {e}"))
                })?
            };
            let csi = Csi::new(lab_guest::connect_lazy(socket(&csi_address)), probe_timeout);
            serve_health(address, csi).await?;
        }
    }
    Ok(())
}

/// The snapshot sidecar and controller start only where the API is served.
async fn snapshot_api_served(client: &Client) -> Result<(), LabError> {
    if lab_guest::crds::served(client).await? {
        return Ok(());
    }
    Err(LabError::Invalid(
        "exiting: the cluster does not serve the VolumeSnapshot API (snapshot.storage.k8s.io/v1 volumesnapshots, volumesnapshotcontents, volumesnapshotclasses)".into(),
    ))
}

/// Serves `GET /healthz`: 200 when the driver's Probe says ready, 500 with
/// the reason otherwise.
async fn serve_health(address: SocketAddr, csi: Csi) -> Result<(), LabError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(LabError::io("listen on", address.to_string()))?;
    tracing::info!(%address, "serving /healthz");
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(LabError::io("accept on", address.to_string()))?;
        let csi = csi.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| healthz(req, csi.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("health connection: {e}");
            }
        });
    }
}

async fn healthz(
    req: Request<Incoming>,
    csi: Csi,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, body) = if req.uri().path() != "/healthz" {
        (StatusCode::NOT_FOUND, "not found\n".to_string())
    } else {
        match csi
            .identity
            .clone()
            .probe(csi.request(ProbeRequest {}))
            .await
        {
            Ok(r) if r.get_ref().ready.unwrap_or(true) => (StatusCode::OK, "ok".to_string()),
            Ok(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "driver responded but is not ready\n".to_string(),
            ),
            Err(s) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("health check failed: {}\n", s.message()),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_flags_parse_and_unknown_ones_do_not() {
        let cli = Cli::try_parse_from([
            "lab-csi-sidecar",
            "csi-provisioner",
            "--csi-address=/csi/csi.sock",
            "--default-fstype=ext4",
            "--v=5",
            "--kubeconfig=/k",
            "--timeout=3m",
            "--retry-interval-max=1m",
        ])
        .expect("parses");
        let Sidecar::Provisioner { common, .. } = cli.sidecar else {
            panic!("provisioner");
        };
        assert_eq!(common.timeout, Duration::from_secs(180));
        assert!(
            Cli::try_parse_from([
                "lab-csi-sidecar",
                "livenessprobe",
                "--csi-address=/csi/csi.sock",
                "--probe-timeout=3s",
                "--http-endpoint=10.0.0.1:10301",
            ])
            .is_ok()
        );
        assert!(
            Cli::try_parse_from(["lab-csi-sidecar", "csi-attacher", "--no-such-flag"]).is_err()
        );
    }
}
