//! The cloud config file (`--cloud-config`): the YAML document the Go
//! provider reads, parsed key by key so that every wrong value is reported
//! with its path and every unknown key is named in a warning instead of being
//! silently ignored.
//!
//! Exposes [`CloudConfig::parse`], the typed settings, and the
//! [`AnnotationAllowList`] of our `loadBalancer.infraServiceAnnotations` key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::validate;

/// Defaults of the Go provider.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a cloud config cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read cloud config {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cloud config is not valid YAML: {0}")]
    Yaml(String),
    #[error("cloud config: the document must be a mapping, found {0}")]
    NotAMapping(&'static str),
    #[error("cloud config: {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The parsed `--cloud-config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudConfig {
    /// Infra kubeconfig; `None` = the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Infra namespace; `None` = the kubeconfig context's namespace.
    pub namespace: Option<String>,
    /// Labels added to every infra object, also used to scope watches.
    pub infra_labels: BTreeMap<String, String>,
    pub load_balancer: LoadBalancerConfig,
    pub instances_v2: InstancesV2Config,
}

/// `loadBalancer.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerConfig {
    pub enabled: bool,
    /// Accepted for compatibility; ingress arrives by watch, nothing polls.
    pub creation_poll_interval: Duration,
    /// How long an infra Service may wait for an ingress before the guest
    /// Service gets a warning event.
    pub creation_poll_timeout: Duration,
    pub selectorless: bool,
    pub enable_eps_controller: bool,
    /// Guest Service annotations copied to the infra Service (our addition).
    pub infra_service_annotations: AnnotationAllowList,
}

/// `instancesV2.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancesV2Config {
    pub enabled: bool,
    pub zone_and_region_enabled: bool,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespace: None,
            infra_labels: BTreeMap::new(),
            load_balancer: LoadBalancerConfig {
                enabled: true,
                creation_poll_interval: DEFAULT_POLL_INTERVAL,
                creation_poll_timeout: DEFAULT_POLL_TIMEOUT,
                selectorless: false,
                enable_eps_controller: false,
                infra_service_annotations: AnnotationAllowList::default(),
            },
            instances_v2: InstancesV2Config {
                enabled: true,
                zone_and_region_enabled: true,
            },
        }
    }
}

/// A parsed config and the warnings it deserves (unknown keys, odd values).
#[derive(Debug)]
pub struct Parsed {
    pub config: CloudConfig,
    pub warnings: Vec<String>,
}

impl CloudConfig {
    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Parsed, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parse a cloud config document. Missing keys keep the Go defaults.
    pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
        let doc: Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let mut root = match doc {
            Value::Null => Mapping::new(),
            Value::Mapping(m) => m,
            other => return Err(ConfigError::NotAMapping(kind_of(&other))),
        };
        let mut config = CloudConfig::default();
        let mut warnings = Vec::new();

        config.kubeconfig = take::<String>(&mut root, "", "kubeconfig")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        config.namespace = take::<String>(&mut root, "", "namespace")?.filter(|s| !s.is_empty());
        if let Some(ns) = &config.namespace {
            validate::dns_label(ns).map_err(|message| invalid("namespace", message))?;
        }
        if let Some(labels) = take::<BTreeMap<String, String>>(&mut root, "", "infraLabels")? {
            for (key, value) in &labels {
                validate::label(key, value)
                    .map_err(|message| invalid(&format!("infraLabels.{key}"), message))?;
            }
            config.infra_labels = labels;
        }

        if let Some(mut lb) = take_section(&mut root, "loadBalancer")? {
            let c = &mut config.load_balancer;
            const P: &str = "loadBalancer.";
            if let Some(v) = take(&mut lb, P, "enabled")? {
                c.enabled = v;
            }
            if let Some(v) = take::<i64>(&mut lb, P, "creationPollInterval")? {
                c.creation_poll_interval = seconds_or_default(v, DEFAULT_POLL_INTERVAL);
            }
            if let Some(v) = take::<i64>(&mut lb, P, "creationPollTimeout")? {
                c.creation_poll_timeout = seconds_or_default(v, DEFAULT_POLL_TIMEOUT);
            }
            if let Some(v) = take(&mut lb, P, "selectorless")? {
                c.selectorless = v;
            }
            if let Some(v) = take(&mut lb, P, "enableEPSController")? {
                c.enable_eps_controller = v;
            }
            if let Some(v) = take::<Vec<String>>(&mut lb, P, "infraServiceAnnotations")? {
                c.infra_service_annotations = AnnotationAllowList::new(v)
                    .map_err(|m| invalid("loadBalancer.infraServiceAnnotations", m))?;
            }
            unknown_keys(&lb, P, &mut warnings);
        }

        if let Some(mut inst) = take_section(&mut root, "instancesV2")? {
            let c = &mut config.instances_v2;
            const P: &str = "instancesV2.";
            if let Some(v) = take(&mut inst, P, "enabled")? {
                c.enabled = v;
            }
            if let Some(v) = take(&mut inst, P, "zoneAndRegionEnabled")? {
                c.zone_and_region_enabled = v;
            }
            unknown_keys(&inst, P, &mut warnings);
        }

        unknown_keys(&root, "", &mut warnings);
        Ok(Parsed { config, warnings })
    }
}

/// The Go provider treats zero and negative poll settings as "use the default".
fn seconds_or_default(v: i64, default: Duration) -> Duration {
    u64::try_from(v)
        .ok()
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs)
}

fn invalid(path: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_string(),
        message,
    }
}

/// Remove `key` from `map` and decode it; `null` counts as absent.
fn take<T: DeserializeOwned>(
    map: &mut Mapping,
    prefix: &str,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_yaml::from_value(v)
            .map(Some)
            .map_err(|e| invalid(&format!("{prefix}{key}"), e.to_string())),
    }
}

fn take_section(map: &mut Mapping, key: &str) -> Result<Option<Mapping>, ConfigError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(other) => Err(invalid(
            key,
            format!("expected a mapping, found {}", kind_of(&other)),
        )),
    }
}

fn unknown_keys(map: &Mapping, prefix: &str, warnings: &mut Vec<String>) {
    for key in map.keys() {
        let name = match key {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        warnings.push(format!(
            "cloud config: unknown key {prefix}{name} is ignored"
        ));
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

// === impl AnnotationAllowList ===

/// Which guest Service annotations reach the infra Service: exact keys, or
/// prefixes written with a trailing `*` (`metallb.universe.tf/*`). Empty by
/// default: unlike the Go provider, nothing is copied unless listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnotationAllowList {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl AnnotationAllowList {
    pub fn new(entries: Vec<String>) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in entries {
            match entry.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => {
                    return Err(format!("{entry:?}: '*' is only allowed at the end"));
                }
                Some(prefix) => list.prefixes.push(prefix.to_string()),
                None if entry.contains('*') => {
                    return Err(format!("{entry:?}: '*' is only allowed at the end"));
                }
                None if entry.is_empty() => return Err("empty annotation key".to_string()),
                None => list.exact.push(entry),
            }
        }
        Ok(list)
    }

    pub fn allows(&self, key: &str) -> bool {
        self.exact.iter().any(|k| k == key) || self.prefixes.iter().any(|p| key.starts_with(p))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_go_defaults() {
        let p = CloudConfig::parse("").expect("parses");
        assert_eq!(p.config, CloudConfig::default());
        assert!(p.warnings.is_empty());
        assert!(p.config.load_balancer.enabled);
        assert!(p.config.instances_v2.enabled);
        assert!(p.config.instances_v2.zone_and_region_enabled);
        assert_eq!(
            p.config.load_balancer.creation_poll_timeout,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn parses_every_contract_key() {
        let text = r#"
kubeconfig: /etc/infra/kubeconfig
namespace: kvcluster
infraLabels:
  hypershift.openshift.io/infra-id: abc-123
loadBalancer:
  enabled: false
  creationPollInterval: 0
  creationPollTimeout: 60
  selectorless: true
  enableEPSController: true
  infraServiceAnnotations: ["metallb.universe.tf/*", "example.com/exact"]
instancesV2:
  enabled: true
  zoneAndRegionEnabled: false
"#;
        let p = CloudConfig::parse(text).expect("parses");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = p.config;
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/infra/kubeconfig")));
        assert_eq!(c.namespace.as_deref(), Some("kvcluster"));
        assert_eq!(
            c.infra_labels
                .get("hypershift.openshift.io/infra-id")
                .map(String::as_str),
            Some("abc-123")
        );
        assert!(!c.load_balancer.enabled);
        assert_eq!(
            c.load_balancer.creation_poll_interval,
            Duration::from_secs(5)
        );
        assert_eq!(
            c.load_balancer.creation_poll_timeout,
            Duration::from_secs(60)
        );
        assert!(c.load_balancer.selectorless);
        assert!(c.load_balancer.enable_eps_controller);
        let allow = &c.load_balancer.infra_service_annotations;
        assert!(allow.allows("metallb.universe.tf/address-pool"));
        assert!(allow.allows("example.com/exact"));
        assert!(!allow.allows("example.com/exactly"));
        assert!(!c.instances_v2.zone_and_region_enabled);
    }

    #[test]
    fn partial_sections_keep_defaults() {
        let p = CloudConfig::parse("loadBalancer:\n  creationPollInterval: 5\ninstancesV2: {}\n")
            .expect("parses");
        assert!(p.config.load_balancer.enabled);
        assert!(p.config.instances_v2.zone_and_region_enabled);
        // Empty strings mean "not set", as in Go.
        let p = CloudConfig::parse("kubeconfig: \"\"\nnamespace: \"\"\n").expect("parses");
        assert_eq!(p.config.kubeconfig, None);
        assert_eq!(p.config.namespace, None);
    }

    #[test]
    fn unknown_keys_are_named() {
        let p = CloudConfig::parse(
            "namespce: x\nloadBalancer:\n  enable: true\ninstancesV2:\n  zone: a\n",
        )
        .expect("parses");
        assert_eq!(
            p.warnings,
            vec![
                "cloud config: unknown key loadBalancer.enable is ignored",
                "cloud config: unknown key instancesV2.zone is ignored",
                "cloud config: unknown key namespce is ignored",
            ]
        );
    }

    #[test]
    fn invalid_values_are_errors_with_their_path() {
        let err = CloudConfig::parse("loadBalancer:\n  enabled: maybe\n").expect_err("bad bool");
        assert!(
            matches!(&err, ConfigError::Invalid { path, .. } if path == "loadBalancer.enabled"),
            "{err}"
        );
        let err = CloudConfig::parse("loadBalancer:\n  creationPollTimeout: soon\n")
            .expect_err("bad int");
        assert!(
            err.to_string().contains("loadBalancer.creationPollTimeout"),
            "{err}"
        );
        let err = CloudConfig::parse("infraLabels: [a, b]\n").expect_err("bad map");
        assert!(err.to_string().contains("infraLabels"), "{err}");
        let err = CloudConfig::parse("infraLabels:\n  'bad key!': x\n").expect_err("bad label");
        assert!(err.to_string().contains("infraLabels.bad key!"), "{err}");
        let err = CloudConfig::parse("namespace: Not_A_Namespace\n").expect_err("bad ns");
        assert!(err.to_string().contains("namespace"), "{err}");
        let err = CloudConfig::parse("loadBalancer: true\n").expect_err("bad section");
        assert!(err.to_string().contains("loadBalancer"), "{err}");
        let err = CloudConfig::parse("- a\n").expect_err("not a mapping");
        assert_eq!(err, ConfigError::NotAMapping("a sequence"));
        let err = CloudConfig::parse("a: [\n").expect_err("not yaml");
        assert!(matches!(err, ConfigError::Yaml(_)));
        let err = CloudConfig::parse("loadBalancer:\n  infraServiceAnnotations: ['a*b']\n")
            .expect_err("bad pattern");
        assert!(err.to_string().contains("infraServiceAnnotations"), "{err}");
    }

    #[test]
    fn the_shipped_cloud_config_parses_cleanly() {
        let text = include_str!("../../manifests/cloud-provider/cloud-config");
        let p = CloudConfig::parse(text).expect("parses");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.config, CloudConfig::default());
    }

    #[test]
    fn negative_poll_values_fall_back_to_defaults() {
        let p = CloudConfig::parse("loadBalancer:\n  creationPollTimeout: -3\n").expect("parses");
        assert_eq!(
            p.config.load_balancer.creation_poll_timeout,
            DEFAULT_POLL_TIMEOUT
        );
    }
}
