//! Command-line flags: the standard cloud-controller-manager flags that
//! deployments of the Go provider pass, parsed the way Go's pflag does
//! (`--flag=value`, `--flag value`, bare booleans, Go durations).
//!
//! Exposes [`Options::parse_from`], which returns the options plus the
//! warnings to log: flags we accept but that change nothing here, and known
//! upstream flags we skip entirely. Unknown flags are errors, as in Go.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::validate;

/// The only provider name we serve.
pub const PROVIDER_NAME: &str = "kubevirt";

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--help`, `--version` and clap's own usage errors, printed by clap.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    #[error(
        "--cloud-provider={0:?} is not supported: this binary only implements the {PROVIDER_NAME:?} provider"
    )]
    WrongProvider(String),
    #[error("--cloud-config is required: the kubevirt provider needs a cloud config file")]
    MissingCloudConfig,
    #[error("--controllers: unknown controller {name:?} (known: {known})")]
    UnknownController { name: String, known: String },
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

#[derive(Parser, Debug)]
#[command(
    name = "kubevirt-cloud-controller-manager",
    version,
    about = "Cloud controller manager for Kubernetes clusters whose nodes are KubeVirt virtual machines",
    disable_help_subcommand = true
)]
struct Flags {
    /// Cloud provider name; must be "kubevirt".
    #[arg(long, default_value = "")]
    cloud_provider: String,
    /// Path to the cloud config file.
    #[arg(long)]
    cloud_config: Option<PathBuf>,
    /// Kubeconfig of the guest (tenant) cluster; empty = in-cluster.
    #[arg(long, default_value = "")]
    kubeconfig: String,
    /// Name of the guest cluster; selects its VMs and labels its infra objects.
    #[arg(long, default_value = "kubernetes")]
    cluster_name: String,
    /// Run only while holding the leader Lease.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", action = ArgAction::Set)]
    leader_elect: bool,
    /// How long a lease is valid without renewal (Go duration).
    #[arg(long, default_value = "15s", value_parser = parse_go_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    leader_elect_renew_deadline: Duration,
    /// Interval between acquire and renew attempts.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    leader_elect_retry_period: Duration,
    /// Guest namespace of the leader Lease.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "cloud-controller-manager")]
    leader_elect_resource_name: String,
    /// Lock type; only "leases" exists in current Kubernetes.
    #[arg(long, default_value = "leases")]
    leader_elect_resource_lock: String,
    /// Controllers to run: "*", names, or "-name" to disable
    /// (service, cloud-node, cloud-node-lifecycle, kubevirt-eps, route).
    #[arg(long, default_value = "*", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Accepted for compatibility; there is no delegated authentication here.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    authentication_skip_lookup: bool,
    /// Port of the /healthz and /metrics endpoint; 0 disables it.
    #[arg(long, default_value_t = 10258)]
    secure_port: u16,
    /// Address the health and metrics endpoint binds to.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Serving certificate; with --tls-private-key-file, the endpoint uses HTTPS.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// Serving key for --tls-cert-file.
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Accepted for compatibility; every controller uses the given kubeconfig.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    use_service_account_credentials: bool,
    /// Services reconciled in parallel (upstream's default of 1 suits
    /// rate-limited cloud APIs, not an API server).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_service_syncs: u16,
    /// Log verbosity (klog levels: 0-2 info, 3-4 debug, 5+ trace).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

/// Which controllers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerSet {
    pub service: bool,
    pub cloud_node: bool,
    pub cloud_node_lifecycle: bool,
    pub kubevirt_eps: bool,
}

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    pub enabled: bool,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub namespace: String,
    pub name: String,
}

/// Health and metrics serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// `None` when `--secure-port=0`.
    pub address: Option<std::net::SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Validated command-line options.
#[derive(Clone, Debug)]
pub struct Options {
    pub cloud_config: PathBuf,
    /// Guest kubeconfig; `None` = in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub cluster_name: String,
    pub leader_election: LeaderElection,
    pub controllers: ControllerSet,
    pub serving: Serving,
    pub concurrent_service_syncs: u16,
    pub verbosity: u8,
}

impl Options {
    /// Parse `args` (program name first). Returns the options and warnings.
    pub fn parse_from<I, T>(args: I) -> Result<(Self, Vec<String>), CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let (args, mut warnings) = strip_upstream_flags(args.into_iter().map(Into::into).collect());
        let matches = Flags::command().try_get_matches_from(args)?;
        let flags = Flags::from_arg_matches(&matches)?;
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);

        if flags.cloud_provider != PROVIDER_NAME {
            return Err(CliError::WrongProvider(flags.cloud_provider));
        }
        let cloud_config = flags.cloud_config.ok_or(CliError::MissingCloudConfig)?;
        validate::label("cluster-name", &flags.cluster_name)
            .and_then(|()| {
                if flags.cluster_name.is_empty() {
                    Err("must not be empty".to_string())
                } else {
                    Ok(())
                }
            })
            .map_err(|message| CliError::Invalid {
                flag: "cluster-name",
                message,
            })?;
        validate::dns_label(&flags.leader_elect_resource_namespace).map_err(|message| {
            CliError::Invalid {
                flag: "leader-elect-resource-namespace",
                message,
            }
        })?;
        validate::dns_subdomain(&flags.leader_elect_resource_name).map_err(|message| {
            CliError::Invalid {
                flag: "leader-elect-resource-name",
                message,
            }
        })?;
        if flags.leader_elect_resource_lock != "leases" {
            return Err(CliError::Invalid {
                flag: "leader-elect-resource-lock",
                message: format!(
                    "{:?} is not supported, only \"leases\"",
                    flags.leader_elect_resource_lock
                ),
            });
        }
        let leader_election = LeaderElection {
            enabled: flags.leader_elect,
            lease_duration: flags.leader_elect_lease_duration,
            renew_deadline: flags.leader_elect_renew_deadline,
            retry_period: flags.leader_elect_retry_period,
            namespace: flags.leader_elect_resource_namespace,
            name: flags.leader_elect_resource_name,
        };
        if leader_election.enabled {
            check_leader_timing(&leader_election)?;
        }

        let (controllers, controller_warnings) = parse_controllers(&flags.controllers)?;
        warnings.extend(controller_warnings);

        let tls = match (flags.tls_cert_file, flags.tls_private_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(CliError::Invalid {
                    flag: "tls-cert-file",
                    message: "--tls-cert-file and --tls-private-key-file go together".to_string(),
                });
            }
        };
        let serving = Serving {
            address: (flags.secure_port != 0)
                .then(|| std::net::SocketAddr::new(flags.bind_address, flags.secure_port)),
            tls,
        };
        if serving.address.is_some() && serving.tls.is_none() {
            warnings.push(
                "no --tls-cert-file given: /healthz and /metrics are served over plain HTTP"
                    .to_string(),
            );
        }

        if given("authentication_skip_lookup") {
            warnings.push(
                "--authentication-skip-lookup changes nothing here: the health and metrics endpoint does no delegated authentication"
                    .to_string(),
            );
        }
        if given("use_service_account_credentials") {
            warnings.push(
                "--use-service-account-credentials changes nothing here: every controller uses the --kubeconfig credentials"
                    .to_string(),
            );
        }
        if !leader_election.enabled {
            for id in [
                "leader_elect_lease_duration",
                "leader_elect_renew_deadline",
                "leader_elect_retry_period",
                "leader_elect_resource_namespace",
                "leader_elect_resource_name",
            ] {
                if given(id) {
                    warnings.push(format!(
                        "--{} changes nothing with --leader-elect=false",
                        id.replace('_', "-")
                    ));
                }
            }
        }

        Ok((
            Self {
                cloud_config,
                kubeconfig: Some(flags.kubeconfig)
                    .filter(|k| !k.is_empty())
                    .map(PathBuf::from),
                cluster_name: flags.cluster_name,
                leader_election,
                controllers,
                serving,
                concurrent_service_syncs: flags.concurrent_service_syncs,
                verbosity: flags.verbosity,
            },
            warnings,
        ))
    }
}

/// The same sanity rules as client-go's leader election.
fn check_leader_timing(le: &LeaderElection) -> Result<(), CliError> {
    if le.lease_duration <= le.renew_deadline {
        return Err(CliError::Invalid {
            flag: "leader-elect-lease-duration",
            message: "must be greater than --leader-elect-renew-deadline".to_string(),
        });
    }
    if le.retry_period.is_zero() || le.renew_deadline <= le.retry_period.mul_f32(1.2) {
        return Err(CliError::Invalid {
            flag: "leader-elect-renew-deadline",
            message: "must be greater than 1.2 x --leader-elect-retry-period (and the retry period positive)"
                .to_string(),
        });
    }
    Ok(())
}

// === controllers ===

/// Controller names and the aliases upstream and the Go provider use.
const CONTROLLERS: &[(&str, &[&str])] = &[
    ("service", &["service", "service-lb-controller"]),
    ("cloud-node", &["cloud-node", "cloud-node-controller"]),
    (
        "cloud-node-lifecycle",
        &["cloud-node-lifecycle", "cloud-node-lifecycle-controller"],
    ),
    (
        "kubevirt-eps",
        &[
            "kubevirt-eps",
            "kubevirt_eps_controller",
            "kubevirt-eps-controller",
        ],
    ),
    ("route", &["route", "node-route-controller"]),
];

fn canonical(name: &str) -> Option<&'static str> {
    CONTROLLERS
        .iter()
        .find(|(_, aliases)| aliases.contains(&name))
        .map(|(canon, _)| *canon)
}

/// Upstream rules: an explicit `name` or `-name` wins (first one listed),
/// otherwise `*` enables every controller.
pub fn parse_controllers(items: &[String]) -> Result<(ControllerSet, Vec<String>), CliError> {
    let mut star = false;
    let mut explicit: Vec<(&'static str, bool)> = Vec::new();
    for raw in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if raw == "*" {
            star = true;
            continue;
        }
        let (name, on) = match raw.strip_prefix('-') {
            Some(n) => (n, false),
            None => (raw, true),
        };
        let canon = canonical(name).ok_or_else(|| CliError::UnknownController {
            name: name.to_string(),
            known: CONTROLLERS
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        if !explicit.iter().any(|(c, _)| *c == canon) {
            explicit.push((canon, on));
        }
    }
    let enabled = |canon: &str| {
        explicit
            .iter()
            .find(|(c, _)| *c == canon)
            .map_or(star, |(_, on)| *on)
    };
    let mut warnings = Vec::new();
    if explicit.iter().any(|(c, on)| *c == "route" && *on) {
        warnings.push(
            "--controllers: the route controller does nothing here: KubeVirt has no cloud routes"
                .to_string(),
        );
    }
    Ok((
        ControllerSet {
            service: enabled("service"),
            cloud_node: enabled("cloud-node"),
            cloud_node_lifecycle: enabled("cloud-node-lifecycle"),
            kubevirt_eps: enabled("kubevirt-eps"),
        },
        warnings,
    ))
}

// === Go durations ===

pub use kubevirt_infra::duration::parse_go_duration;

// === upstream flags we skip ===

/// Standard cloud-controller-manager flags that have no meaning here. Each is
/// accepted (so existing Deployments keep starting) and reported once.
/// `true` = the flag takes a value.
const UPSTREAM_FLAGS: &[(&str, bool)] = &[
    ("allocate-node-cidrs", false),
    ("allow-untagged-cloud", false),
    ("alsologtostderr", false),
    ("authentication-kubeconfig", true),
    ("authentication-token-webhook-cache-ttl", true),
    ("authentication-tolerate-lookup-failure", false),
    ("authorization-always-allow-paths", true),
    ("authorization-kubeconfig", true),
    ("authorization-webhook-cache-authorized-ttl", true),
    ("authorization-webhook-cache-unauthorized-ttl", true),
    ("cert-dir", true),
    ("cidr-allocator-type", true),
    ("client-ca-file", true),
    ("cluster-cidr", true),
    ("concurrent-node-syncs", true),
    ("configure-cloud-routes", false),
    ("contention-profiling", false),
    ("controller-start-interval", true),
    ("enable-leader-migration", false),
    ("external-cloud-volume-plugin", true),
    ("feature-gates", true),
    ("http2-max-streams-per-connection", true),
    ("kube-api-burst", true),
    ("kube-api-content-type", true),
    ("kube-api-qps", true),
    ("leader-migration-config", true),
    ("log-flush-frequency", true),
    ("logging-format", true),
    ("logtostderr", false),
    ("master", true),
    ("min-resync-period", true),
    ("node-cidr-mask-size", true),
    ("node-monitor-period", true),
    ("node-status-update-frequency", true),
    ("node-sync-period", true),
    ("permit-address-sharing", false),
    ("permit-port-sharing", false),
    ("profiling", false),
    ("requestheader-allowed-names", true),
    ("requestheader-client-ca-file", true),
    ("requestheader-extra-headers-prefix", true),
    ("requestheader-group-headers", true),
    ("requestheader-username-headers", true),
    ("route-reconciliation-period", true),
    ("tls-cipher-suites", true),
    ("tls-min-version", true),
    ("tls-sni-cert-key", true),
    ("vmodule", true),
    ("webhook-bind-address", true),
    ("webhook-cert-dir", true),
    ("webhook-secure-port", true),
    ("webhooks", true),
];

/// Remove the flags of [`UPSTREAM_FLAGS`] (with their values) from `args`.
fn strip_upstream_flags(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut skipped = Vec::new();
    let mut iter = args.into_iter().peekable();
    if let Some(program) = iter.next() {
        kept.push(program);
    }
    while let Some(arg) = iter.next() {
        if arg == "--" {
            kept.push(arg);
            kept.extend(iter);
            break;
        }
        let Some(body) = arg.strip_prefix("--") else {
            kept.push(arg);
            continue;
        };
        let (name, inline_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        match UPSTREAM_FLAGS.iter().find(|(n, _)| *n == name) {
            Some((n, takes_value)) => {
                if *takes_value && !inline_value {
                    iter.next_if(|next| !next.starts_with("--"));
                }
                skipped.push(format!("--{n} changes nothing here and is ignored"));
            }
            None => kept.push(arg),
        }
    }
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(Options, Vec<String>), CliError> {
        Options::parse_from(
            std::iter::once("kubevirt-cloud-controller-manager").chain(args.iter().copied()),
        )
    }

    #[test]
    fn the_go_deployment_arguments_parse() {
        let (o, warnings) = parse(&[
            "--cloud-provider=kubevirt",
            "--cloud-config=/etc/cloud/cloud-config",
            "--kubeconfig=/etc/kubernetes/kubeconfig/value",
        ])
        .expect("parses");
        assert_eq!(o.cloud_config, PathBuf::from("/etc/cloud/cloud-config"));
        assert_eq!(
            o.kubeconfig,
            Some(PathBuf::from("/etc/kubernetes/kubeconfig/value"))
        );
        assert_eq!(o.cluster_name, "kubernetes");
        assert!(o.leader_election.enabled);
        assert_eq!(o.leader_election.namespace, "kube-system");
        assert_eq!(o.leader_election.name, "cloud-controller-manager");
        assert_eq!(o.leader_election.lease_duration, Duration::from_secs(15));
        assert_eq!(
            o.controllers,
            ControllerSet {
                service: true,
                cloud_node: true,
                cloud_node_lifecycle: true,
                kubevirt_eps: true
            }
        );
        assert_eq!(
            o.serving.address,
            Some("0.0.0.0:10258".parse().expect("addr"))
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn every_standard_flag_is_accepted_and_no_ops_are_reported() {
        let (o, warnings) = parse(&[
            "--cloud-provider",
            "kubevirt",
            "--cloud-config",
            "/c",
            "--kubeconfig=",
            "--cluster-name=my-cluster",
            "--leader-elect=false",
            "--leader-elect-lease-duration=1m",
            "--leader-elect-renew-deadline=20s",
            "--leader-elect-retry-period=500ms",
            "--leader-elect-resource-namespace=other",
            "--controllers=*,-cloud-node-lifecycle",
            "--authentication-skip-lookup",
            "--secure-port=0",
            "--bind-address=127.0.0.1",
            "--tls-cert-file=/cert",
            "--tls-private-key-file=/key",
            "--use-service-account-credentials=true",
            "--concurrent-service-syncs=3",
            "--v=4",
            "--configure-cloud-routes=false",
            "--kube-api-qps",
            "50",
            "--allocate-node-cidrs",
        ])
        .expect("parses");
        assert_eq!(o.kubeconfig, None);
        assert_eq!(o.cluster_name, "my-cluster");
        assert!(!o.leader_election.enabled);
        assert_eq!(o.leader_election.retry_period, Duration::from_millis(500));
        assert!(!o.controllers.cloud_node_lifecycle);
        assert!(o.controllers.service);
        assert_eq!(o.serving.address, None);
        assert_eq!(o.concurrent_service_syncs, 3);
        assert_eq!(o.verbosity, 4);
        let all = warnings.join("\n");
        for flag in [
            "--authentication-skip-lookup",
            "--use-service-account-credentials",
            "--leader-elect-lease-duration",
            "--leader-elect-resource-namespace",
            "--configure-cloud-routes",
            "--kube-api-qps",
            "--allocate-node-cidrs",
        ] {
            assert!(all.contains(flag), "no warning for {flag}: {all}");
        }
    }

    #[test]
    fn wrong_or_missing_provider_is_a_clear_error() {
        let err = parse(&["--cloud-provider=aws", "--cloud-config=/c"]).expect_err("aws");
        assert!(
            err.to_string().contains("\"aws\" is not supported"),
            "{err}"
        );
        let err = parse(&["--cloud-config=/c"]).expect_err("empty");
        assert!(matches!(err, CliError::WrongProvider(_)));
        let err = parse(&["--cloud-provider=kubevirt"]).expect_err("no config");
        assert!(matches!(err, CliError::MissingCloudConfig));
        let err = parse(&["--cloud-provider=kubevirt", "--cloud-config=/c", "--bogus"])
            .expect_err("unknown flag");
        assert!(matches!(err, CliError::Clap(_)));
    }

    #[test]
    fn bad_values_are_rejected() {
        let base = ["--cloud-provider=kubevirt", "--cloud-config=/c"];
        for bad in [
            "--leader-elect-lease-duration=soon",
            "--leader-elect-lease-duration=5s",
            "--cluster-name=Bad Name",
            "--concurrent-service-syncs=0",
            "--tls-cert-file=/only-cert",
            "--leader-elect-resource-lock=endpoints",
            "--controllers=service,frobnicator",
        ] {
            let mut args = base.to_vec();
            args.push(bad);
            assert!(parse(&args).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn controller_selection_follows_upstream_rules() {
        let set = |items: &[&str]| {
            parse_controllers(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("valid")
                .0
        };
        assert_eq!(
            set(&["*"]),
            set(&[
                "service",
                "cloud-node",
                "cloud-node-lifecycle",
                "kubevirt-eps"
            ])
        );
        assert_eq!(
            set(&["service"]),
            ControllerSet {
                service: true,
                ..Default::default()
            }
        );
        let s = set(&["-service-lb-controller", "*", "kubevirt_eps_controller"]);
        assert!(!s.service && s.cloud_node && s.kubevirt_eps);
        // First explicit mention wins.
        assert!(!set(&["-cloud-node", "cloud-node"]).cloud_node);
        let (_, w) = parse_controllers(&["route".to_string()]).expect("valid");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn upstream_flags_are_stripped_with_their_values() {
        let (kept, skipped) = strip_upstream_flags(
            [
                "p",
                "--kube-api-burst",
                "10",
                "--profiling",
                "--v=2",
                "--cert-dir=/x",
                "--",
                "--master",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        assert_eq!(kept, vec!["p", "--v=2", "--", "--master"]);
        assert_eq!(skipped.len(), 3);
    }
}
