//! Command-line flags and the validated configuration built from them.
//!
//! The flags are those of the Go `kubevirt-csi-driver` (same names, same
//! defaults, Go's `--flag=value` and single-dash `-flag=value` spellings, Go
//! boolean words such as `--run-node-service=false`), plus a few of ours:
//! `--device-dir`, `--sysfs-dir`, `--health-address`, `--metrics-address`,
//! `--log-format` and `--max-volumes-per-node`. klog's logging flags are
//! accepted and ignored with a warning so that existing manifests keep working.
//!
//! [`Config::from_args`] turns argv and the environment into a [`Config`] or
//! one clear message; `main` prints it and exits with status 2.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use crate::endpoint::{Endpoint, parse_http_address};
use crate::enforcement::{self, Enforcement};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags, as parsed by clap.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kubevirt-csi-driver",
    version,
    about = "CSI driver csi.kubevirt.io: guest volumes as hotplugged KubeVirt DataVolumes",
    after_help = "Environment: INFRA_STORAGE_CLASS_ENFORCEMENT (YAML: allowAll, allowDefault, allowList, storageSnapshotMapping)."
)]
pub struct Args {
    /// CSI endpoint: unix:/path, unix:///path or tcp://host:port.
    #[arg(long, default_value = "unix:/csi/csi.sock")]
    pub endpoint: Endpoint,

    /// The guest node this pod runs on (node service).
    #[arg(long, default_value = "")]
    pub node_name: String,

    /// The infra namespace of the tenant's VMs and volumes (controller).
    /// Empty = the namespace of the infra kubeconfig context (or of the pod).
    #[arg(long, default_value = "")]
    pub infra_cluster_namespace: String,

    /// Infra cluster kubeconfig; empty = in-cluster configuration.
    #[arg(long, default_value = "")]
    pub infra_cluster_kubeconfig: String,

    /// Labels (key=value,key=value) on every infra object of this tenant (controller).
    #[arg(long, default_value = "")]
    pub infra_cluster_labels: String,

    /// Volume names must start with `<prefix>-`.
    #[arg(long, default_value = "pvc")]
    pub volume_prefix: String,

    /// Tenant (guest) cluster kubeconfig; empty = in-cluster configuration.
    #[arg(long, default_value = "")]
    pub tenant_cluster_kubeconfig: String,

    /// Serve the node service.
    #[arg(long, default_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub run_node_service: bool,

    /// Serve the controller service.
    #[arg(long, default_value = "true", value_parser = parse_go_bool, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub run_controller_service: bool,

    /// Log verbosity (klog style: 0-2 info, 3-4 debug, 5+ trace).
    #[arg(long = "v", default_value_t = 0)]
    pub verbosity: u8,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Where the node service finds block devices.
    #[arg(long, default_value = "/dev")]
    pub device_dir: PathBuf,

    /// Where the node service reads sysfs.
    #[arg(long, default_value = "/sys")]
    pub sysfs_dir: PathBuf,

    /// Serve GET /healthz on this address ([host]:port, e.g. :8080); empty = off.
    /// (The livenessprobe sidecar serves the Kubernetes probe ports 10300/10301.)
    #[arg(long, default_value = "")]
    pub health_address: String,

    /// Serve Prometheus GET /metrics on this address ([host]:port); empty = off.
    /// May equal --health-address.
    #[arg(long, default_value = "")]
    pub metrics_address: String,

    /// Volumes the node service reports it can hold (NodeGetInfo); 0 = no limit.
    #[arg(long, default_value_t = crate::node::DEFAULT_MAX_VOLUMES_PER_NODE)]
    pub max_volumes_per_node: i64,

    /// Offer the CSI spec's alpha controller RPCs (GetSnapshot). Off by
    /// default: sidecars and csi-sanity releases that predate them refuse
    /// a capability they do not know.
    #[arg(long, default_value = "false", value_parser = parse_go_bool, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_alpha_rpcs: bool,

    /// How long the node service waits for a hotplugged disk to appear (seconds).
    #[arg(long, default_value_t = crate::node::DEFAULT_DEVICE_WAIT.as_secs())]
    pub device_wait_seconds: u64,

    /// klog flags: accepted for compatibility, ignored.
    #[arg(long = "logtostderr", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub klog_logtostderr: Option<String>,
    #[arg(long = "alsologtostderr", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub klog_alsologtostderr: Option<String>,
    #[arg(long = "stderrthreshold", hide = true)]
    pub klog_stderrthreshold: Option<String>,
    #[arg(long = "log_dir", alias = "log-dir", hide = true)]
    pub klog_log_dir: Option<String>,
    #[arg(long = "log_file", alias = "log-file", hide = true)]
    pub klog_log_file: Option<String>,
    #[arg(long = "vmodule", hide = true)]
    pub klog_vmodule: Option<String>,
    #[arg(long = "skip_headers", alias = "skip-headers", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub klog_skip_headers: Option<String>,
    #[arg(long = "add_dir_header", alias = "add-dir-header", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub klog_add_dir_header: Option<String>,
}

/// Go's `strconv.ParseBool` words.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Rewrite Go's single-dash long flags (`-endpoint=x`, `-v=5`) to `--`.
fn normalize_go_flags<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(bin) = iter.next() {
        out.push(bin);
    }
    let mut rest_positional = false;
    for arg in iter {
        if rest_positional {
            out.push(arg);
            continue;
        }
        match arg.to_str() {
            Some("--") => {
                rest_positional = true;
                out.push(arg);
            }
            Some(s) if s.starts_with('-') && !s.starts_with("--") && s.len() > 2 => {
                out.push(OsString::from(format!("-{s}")));
            }
            Some("-v") => out.push(OsString::from("--v")),
            _ => out.push(arg),
        }
    }
    out
}

/// Settings of the controller service.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Infra namespace; `None` = take it from the infra client configuration.
    pub infra_namespace: Option<String>,
    pub infra_labels: BTreeMap<String, String>,
    pub volume_prefix: String,
    pub enforcement: Enforcement,
    /// Offer the alpha controller RPCs (`--enable-alpha-rpcs`).
    pub alpha_rpcs: bool,
}

/// Settings of the node service.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_name: String,
    pub device_dir: PathBuf,
    pub sysfs_dir: PathBuf,
    pub max_volumes_per_node: i64,
    pub device_wait: std::time::Duration,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoint: Endpoint,
    pub infra_kubeconfig: Option<PathBuf>,
    pub tenant_kubeconfig: Option<PathBuf>,
    pub controller: Option<ControllerConfig>,
    pub node: Option<NodeSettings>,
    pub verbosity: u8,
    pub log_format: LogFormat,
    pub health_address: Option<SocketAddr>,
    pub metrics_address: Option<SocketAddr>,
    /// Things worth a warning once logging is up (unknown policy keys, ignored flags).
    pub warnings: Vec<String>,
}

/// A configuration error: printed as one message, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own error (usage, --help, --version); it knows how to print itself.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// Print the error (or help) and exit: 0 for --help/--version, else 2.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Clap(e) => e.exit(),
            ConfigError::Invalid(msg) => {
                eprintln!("kubevirt-csi-driver: {msg}");
                std::process::exit(2)
            }
        }
    }
}

fn non_empty_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl Config {
    /// Parse argv and `INFRA_STORAGE_CLASS_ENFORCEMENT` (`enforcement_env`).
    pub fn from_args<I: IntoIterator<Item = OsString>>(
        argv: I,
        enforcement_env: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(normalize_go_flags(argv))?;
        Config::validate(args, enforcement_env)
    }

    /// Check flag combinations and parse the policy.
    pub fn validate(args: Args, enforcement_env: Option<&str>) -> Result<Config, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !args.run_controller_service && !args.run_node_service {
            return invalid(
                "nothing to run: --run-controller-service and --run-node-service are both false"
                    .into(),
            );
        }
        let mut warnings = Vec::new();
        for (flag, set) in [
            ("--logtostderr", args.klog_logtostderr.is_some()),
            ("--alsologtostderr", args.klog_alsologtostderr.is_some()),
            ("--stderrthreshold", args.klog_stderrthreshold.is_some()),
            ("--log_dir", args.klog_log_dir.is_some()),
            ("--log_file", args.klog_log_file.is_some()),
            ("--vmodule", args.klog_vmodule.is_some()),
            ("--skip_headers", args.klog_skip_headers.is_some()),
            ("--add_dir_header", args.klog_add_dir_header.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "klog flag {flag} is ignored: logs go to stderr (see --log-format)"
                ));
            }
        }

        let controller = if args.run_controller_service {
            if args.infra_cluster_labels.trim().is_empty() {
                return invalid(
                    "--infra-cluster-labels is required with the controller service (key=value,key=value)"
                        .into(),
                );
            }
            let infra_labels = kubevirt_infra::labels::parse_label_list(&args.infra_cluster_labels)
                .map_err(|e| ConfigError::Invalid(format!("--infra-cluster-labels: {e}")))?;
            if args.volume_prefix.is_empty() {
                return invalid(
                    "--volume-prefix must not be empty with the controller service".into(),
                );
            }
            if !is_dns_label_prefix(&args.volume_prefix) {
                return invalid(format!(
                    "--volume-prefix {:?} must be lower-case letters, digits and '-', starting with a letter or digit",
                    args.volume_prefix
                ));
            }
            let (enforcement, policy_warnings) = Enforcement::parse(enforcement_env.unwrap_or(""))
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            warnings.extend(policy_warnings);
            Some(ControllerConfig {
                infra_namespace: non_empty(&args.infra_cluster_namespace),
                infra_labels,
                volume_prefix: args.volume_prefix.clone(),
                enforcement,
                alpha_rpcs: args.enable_alpha_rpcs,
            })
        } else {
            None
        };

        let node = if args.run_node_service {
            if args.node_name.is_empty() {
                return invalid("--node-name is required with the node service".into());
            }
            if args.max_volumes_per_node < 0 {
                return invalid("--max-volumes-per-node must not be negative".into());
            }
            Some(NodeSettings {
                node_name: args.node_name.clone(),
                device_dir: args.device_dir.clone(),
                sysfs_dir: args.sysfs_dir.clone(),
                max_volumes_per_node: args.max_volumes_per_node,
                device_wait: std::time::Duration::from_secs(args.device_wait_seconds),
            })
        } else {
            None
        };

        let health_address = parse_http_address(&args.health_address)
            .map_err(|e| ConfigError::Invalid(format!("--health-address: {e}")))?;
        let metrics_address = parse_http_address(&args.metrics_address)
            .map_err(|e| ConfigError::Invalid(format!("--metrics-address: {e}")))?;

        Ok(Config {
            endpoint: args.endpoint,
            infra_kubeconfig: non_empty_path(&args.infra_cluster_kubeconfig),
            tenant_kubeconfig: non_empty_path(&args.tenant_cluster_kubeconfig),
            controller,
            node,
            verbosity: args.verbosity,
            log_format: args.log_format,
            health_address,
            metrics_address,
            warnings,
        })
    }

    /// Read `INFRA_STORAGE_CLASS_ENFORCEMENT` from the process environment.
    pub fn enforcement_from_env() -> Option<String> {
        std::env::var(enforcement::ENV_VAR).ok()
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn is_dns_label_prefix(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Option<&str>) -> Result<Config, ConfigError> {
        let argv = std::iter::once("kubevirt-csi-driver")
            .chain(args.iter().copied())
            .map(OsString::from);
        Config::from_args(argv, env)
    }

    fn message(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn go_controller_deployment_args() {
        let cfg = parse(
            &[
                "--endpoint=unix:///var/lib/csi/sockets/pluginproxy/csi.sock",
                "--infra-cluster-namespace=kvcluster",
                "--infra-cluster-labels=csi-driver/cluster=tenant",
                "--tenant-cluster-kubeconfig=/var/run/secrets/tenantcluster/value",
                "--run-node-service=false",
                "--run-controller-service=true",
                "--v=5",
            ],
            Some("allowAll: false\nallowList: [standard]\n"),
        )
        .expect("valid");
        let c = cfg.controller.expect("controller on");
        assert!(cfg.node.is_none());
        assert_eq!(c.infra_namespace.as_deref(), Some("kvcluster"));
        assert_eq!(
            c.infra_labels.get("csi-driver/cluster").map(String::as_str),
            Some("tenant")
        );
        assert_eq!(c.volume_prefix, "pvc");
        assert_eq!(c.enforcement.allow_list, ["standard"]);
        assert_eq!(cfg.verbosity, 5);
        assert_eq!(
            cfg.endpoint,
            Endpoint::Unix("/var/lib/csi/sockets/pluginproxy/csi.sock".into())
        );
        assert_eq!(
            cfg.tenant_kubeconfig,
            Some(PathBuf::from("/var/run/secrets/tenantcluster/value"))
        );
    }

    #[test]
    fn go_node_daemonset_args_and_single_dash_flags() {
        let cfg = parse(
            &[
                "-endpoint=unix:/csi/csi.sock",
                "--node-name=node-1",
                "--run-node-service",
                "-run-controller-service=false",
                "-v=3",
                "--logtostderr",
            ],
            None,
        )
        .expect("valid");
        assert_eq!(
            cfg.node.as_ref().map(|n| n.node_name.as_str()),
            Some("node-1")
        );
        assert!(cfg.controller.is_none());
        assert_eq!(cfg.verbosity, 3);
        assert_eq!(cfg.warnings.len(), 1);
        assert_eq!(cfg.endpoint, Endpoint::Unix("/csi/csi.sock".into()));
    }

    #[test]
    fn defaults() {
        let cfg = parse(&["--node-name=n", "--infra-cluster-labels=a=b"], None).expect("valid");
        assert_eq!(cfg.endpoint, Endpoint::Unix("/csi/csi.sock".into()));
        assert!(cfg.controller.is_some() && cfg.node.is_some());
        assert_eq!(
            cfg.controller.map(|c| c.enforcement),
            Some(Enforcement::permissive())
        );
        assert_eq!(cfg.health_address, None);
        assert_eq!(cfg.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_combinations_are_one_clear_error() {
        assert!(message(parse(&["--node-name=n"], None)).contains("--infra-cluster-labels"));
        assert!(message(parse(&["--run-controller-service=false"], None)).contains("--node-name"));
        assert!(
            message(parse(
                &["--run-controller-service=false", "--run-node-service=false"],
                None
            ))
            .contains("nothing to run")
        );
        assert!(
            message(parse(
                &["--run-node-service=false", "--infra-cluster-labels=a"],
                None
            ))
            .contains("--infra-cluster-labels")
        );
        assert!(
            message(parse(
                &["--run-node-service=false", "--infra-cluster-labels=a=b"],
                Some("allowAll: [")
            ))
            .contains("INFRA_STORAGE_CLASS_ENFORCEMENT")
        );
        assert!(matches!(
            parse(&["--run-node-service=maybe"], None),
            Err(ConfigError::Clap(_))
        ));
        assert!(matches!(
            parse(&["--endpoint=http://x"], None),
            Err(ConfigError::Clap(_))
        ));
        assert!(
            message(parse(
                &[
                    "--run-node-service=false",
                    "--infra-cluster-labels=a=b",
                    "--metrics-address=x"
                ],
                None
            ))
            .contains("--metrics-address")
        );
    }
}
