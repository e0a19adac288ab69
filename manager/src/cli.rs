//! Command-line flags of `kubevirt-hcp-manager` and what they become.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::context::Settings;
use crate::desired::ImageConfig;
use crate::leader::LeaseConfig;
use crate::version::Supported;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The hosted-control-plane manager for KubeVirt.
#[derive(Clone, Debug, Parser)]
#[command(name = "kubevirt-hcp-manager", version, args_override_self = true)]
pub struct Args {
    /// Kubeconfig of the management cluster; empty: in-cluster configuration
    /// (or `$KUBECONFIG`).
    #[arg(long, env = "KUBECONFIG", default_value = "")]
    pub kubeconfig: String,
    /// The manager's own namespace (supported-versions ConfigMap, leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubevirt-hcp-manager")]
    pub namespace: String,
    /// Elect a leader among replicas (Lease `--leader-election-id`).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kubevirt-hcp-manager")]
    pub leader_election_id: String,
    /// This replica's identity in the election; the pod name by default.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub identity: String,
    /// Where to serve /metrics; empty disables.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// Where to serve /healthz and /readyz; empty disables.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub health_address: String,
    /// Registry of the suite's images (`<registry>/kubevirt-csi-driver:v<version>`).
    #[arg(long, default_value = "quay.io/kubevirt-rs")]
    pub image_registry: String,
    /// Full CSI driver image for every version (overrides --image-registry).
    #[arg(long)]
    pub csi_image: Option<String>,
    /// Full cloud controller manager image for every version.
    #[arg(long)]
    pub ccm_image: Option<String>,
    /// Registry of the Kubernetes CSI sidecars.
    #[arg(long, default_value = "registry.k8s.io/sig-storage")]
    pub csi_sidecar_registry: String,
    /// Registry of the hosted control planes' images
    /// (`<registry>/kube-apiserver:v<kubernetes version>`, `<registry>/etcd:...`).
    #[arg(long, default_value = "registry.k8s.io")]
    pub control_plane_registry: String,
    /// Versions the manager deploys (`X.Y` for every patch of a minor, or
    /// `X.Y.Z`), comma-separated; the minor of this build by default.
    #[arg(long, value_delimiter = ',')]
    pub supported_versions: Vec<String>,
    /// Look at every object again at least this often, in seconds.
    #[arg(long, default_value_t = 600)]
    pub resync_seconds: u64,
    /// A NodePool reports a VM whose node has not joined this many seconds
    /// after the VM was created.
    #[arg(long, default_value_t = 600)]
    pub node_join_timeout_seconds: u64,
    /// A NodePool with `autoRepair` replaces a VM whose node has not been
    /// Ready (False or Unknown) this many seconds.
    #[arg(long, default_value_t = 480)]
    pub node_unhealthy_timeout_seconds: u64,
    /// Reconciles run at once, per controller.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A flag value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct FlagError {
    pub flag: &'static str,
    pub message: String,
}

fn address(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, FlagError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: std::net::AddrParseError| FlagError {
            flag,
            message: e.to_string(),
        })
}

impl Args {
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        (!self.kubeconfig.is_empty()).then(|| PathBuf::from(&self.kubeconfig))
    }

    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, FlagError> {
        address("metrics-address", &self.metrics_address)
    }

    pub fn health_address(&self) -> Result<Option<SocketAddr>, FlagError> {
        address("health-address", &self.health_address)
    }

    pub fn settings(&self) -> Result<Settings, FlagError> {
        let supported = if self.supported_versions.is_empty() {
            Supported::this_build()
        } else {
            for v in &self.supported_versions {
                let parts: Vec<&str> = v.trim_start_matches('v').split('.').collect();
                let minor_only = parts.len() == 2 && parts.iter().all(|p| p.parse::<u64>().is_ok());
                if !minor_only && crate::version::Version::parse(v).is_err() {
                    return Err(FlagError {
                        flag: "supported-versions",
                        message: format!("{v:?} is not X.Y or X.Y.Z"),
                    });
                }
            }
            Supported::new(self.supported_versions.clone())
        };
        Ok(Settings {
            namespace: self.namespace.clone(),
            images: ImageConfig {
                registry: self.image_registry.clone(),
                csi_override: self.csi_image.clone().filter(|s| !s.is_empty()),
                ccm_override: self.ccm_image.clone().filter(|s| !s.is_empty()),
                sidecar_registry: self.csi_sidecar_registry.clone(),
                control_plane_registry: self.control_plane_registry.clone(),
            },
            supported,
            resync: Duration::from_secs(self.resync_seconds.max(1)),
            concurrency: self.concurrency.max(1),
            node_join_timeout: Duration::from_secs(self.node_join_timeout_seconds.max(1)),
            node_unhealthy_timeout: Duration::from_secs(self.node_unhealthy_timeout_seconds.max(1)),
            ..Settings::default()
        })
    }

    /// The election, if enabled. The identity defaults to the host name.
    pub fn lease(&self) -> Option<LeaseConfig> {
        if !self.leader_elect {
            return None;
        }
        let identity = if self.identity.is_empty() {
            std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("kubevirt-hcp-manager-{}", std::process::id()))
        } else {
            self.identity.clone()
        };
        Some(LeaseConfig::new(
            &self.namespace,
            &self.leader_election_id,
            &identity,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let a = Args::try_parse_from(["m"]).expect("parses");
        assert!(a.leader_elect);
        assert!(!a.namespace.is_empty());
        assert_eq!(
            a.metrics_address().expect("addr"),
            Some("0.0.0.0:8080".parse().expect("addr"))
        );
        let s = a.settings().expect("settings");
        assert_eq!(s.images.registry, "quay.io/kubevirt-rs");

        let a = Args::try_parse_from([
            "m",
            "--leader-elect=false",
            "--kubeconfig",
            "/tmp/kc",
            "--csi-image",
            "example.com/csi:1",
            "--supported-versions",
            "0.1,0.2.0",
            "--metrics-address",
            "",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert!(a.lease().is_none());
        assert_eq!(a.kubeconfig_path(), Some(PathBuf::from("/tmp/kc")));
        assert_eq!(a.metrics_address().expect("addr"), None);
        assert_eq!(a.log_format, LogFormat::Json);
        let s = a.settings().expect("settings");
        assert_eq!(s.images.csi_override.as_deref(), Some("example.com/csi:1"));
        assert!(s.supported.check("0.1.5").is_ok());
        assert!(s.supported.check("0.2.1").is_err());

        // The last of a repeated flag wins.
        let twice = Args::try_parse_from(["m", "--leader-elect=false", "--leader-elect=true"])
            .expect("parses");
        assert!(twice.leader_elect);

        let bad = Args::try_parse_from(["m", "--supported-versions", "latest"]).expect("parses");
        assert!(bad.settings().is_err());
    }
}
