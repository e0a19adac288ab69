//! Suite versions: parsing and ordering of `MAJOR.MINOR.PATCH[-PRE]`
//! strings, the list of versions this manager supports, the skew rule
//! between a NodePool and its HostedCluster, and the `supported-versions`
//! ConfigMap the manager publishes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names;

/// A parsed suite version. Ordering follows semantic versioning (a
/// pre-release sorts before its release; build metadata is not accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
}

/// A version string that is not `MAJOR.MINOR.PATCH[-PRE]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version of the form MAJOR.MINOR.PATCH[-PRE]")]
pub struct ParseError(pub String);

impl Version {
    /// Parse `1.2.3`, `v1.2.3` or `1.2.3-rc.1`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError(s.to_string());
        let body = s.strip_prefix('v').unwrap_or(s);
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre.to_string())),
            Some(_) => return Err(err()),
            None => (body, None),
        };
        let mut parts = core.split('.');
        let mut next = || -> Result<u64, ParseError> {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let (major, minor, patch) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semver pre-release precedence: dot-separated identifiers, numeric ones
/// compared as numbers and below alphanumeric ones.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

/// The versions the manager can deploy. An entry `X.Y` admits every patch
/// release of that minor; an entry `X.Y.Z[-PRE]` admits exactly that version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Supported {
    entries: Vec<String>,
}

/// Why a version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error("version {version} is not supported; supported versions: {supported}")]
    Unsupported { version: String, supported: String },
    #[error("version {node_pool} is newer than the hosted cluster's version {hosted_cluster}")]
    NewerThanHostedCluster {
        node_pool: String,
        hosted_cluster: String,
    },
    /// A Kubernetes version the skew policy forbids.
    #[error(transparent)]
    Skew(#[from] crate::skew::Skew),
}

impl Supported {
    /// The given entries, as written (`X.Y` or full versions).
    pub fn new(entries: Vec<String>) -> Self {
        Self { entries }
    }

    /// The default: the minor release of this build (`CARGO_PKG_VERSION`).
    pub fn this_build() -> Self {
        let v = Version::parse(env!("CARGO_PKG_VERSION"));
        let entry = match v {
            Ok(v) => format!("{}.{}", v.major, v.minor),
            Err(_) => env!("CARGO_PKG_VERSION").to_string(),
        };
        Self {
            entries: vec![entry],
        }
    }

    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Parse `version` and check it against the list.
    pub fn check(&self, version: &str) -> Result<Version, Refusal> {
        let v = Version::parse(version)?;
        let admitted = self.entries.iter().any(|e| {
            let mut parts = e.strip_prefix('v').unwrap_or(e).split('.');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(ma), Some(mi), None) => {
                    ma.parse() == Ok(v.major) && mi.parse() == Ok(v.minor)
                }
                _ => Version::parse(e).is_ok_and(|s| s == v),
            }
        });
        if admitted {
            Ok(v)
        } else {
            Err(Refusal::Unsupported {
                version: version.to_string(),
                supported: self.entries.join(", "),
            })
        }
    }

    /// Check a NodePool version: supported, and not newer than its cluster's.
    pub fn check_node_pool(
        &self,
        node_pool: &str,
        hosted_cluster: &str,
    ) -> Result<Version, Refusal> {
        let np = self.check(node_pool)?;
        let hc = Version::parse(hosted_cluster)?;
        if np > hc {
            return Err(Refusal::NewerThanHostedCluster {
                node_pool: node_pool.to_string(),
                hosted_cluster: hosted_cluster.to_string(),
            });
        }
        Ok(np)
    }

    /// The `supported-versions` ConfigMap in the manager's namespace: key
    /// `supported-versions` holds `{"versions": [...]}`, key `server-version`
    /// the manager's own version.
    pub fn config_map(&self, namespace: &str) -> ConfigMap {
        let versions = serde_json::json!({ "versions": self.entries }).to_string();
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(names::SUPPORTED_VERSIONS.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    names::MANAGED_BY_LABEL.to_string(),
                    names::FIELD_MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (names::SUPPORTED_VERSIONS.to_string(), versions),
                (
                    names::SERVER_VERSION_KEY.to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
            ])),
            ..ConfigMap::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid version")
    }

    #[test]
    fn parses_and_orders() {
        assert_eq!(
            v("v1.2.3"),
            Version {
                major: 1,
                minor: 2,
                patch: 3,
                pre: None
            }
        );
        assert!(v("1.2.3") < v("1.10.0"));
        assert!(v("1.2.3-rc.1") < v("1.2.3"));
        assert!(v("1.2.3-rc.2") < v("1.2.3-rc.10"));
        assert!(v("1.2.3-1") < v("1.2.3-alpha"));
        assert_eq!(v("1.2.3-rc.1").to_string(), "1.2.3-rc.1");
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1.2.3-", "1..3", "1.2.+3"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn minor_entries_admit_patches_and_full_entries_admit_one() {
        let s = Supported::new(vec!["0.1".into(), "0.2.0".into()]);
        assert!(s.check("0.1.0").is_ok());
        assert!(s.check("0.1.7").is_ok());
        assert!(s.check("0.2.0").is_ok());
        assert!(matches!(s.check("0.2.1"), Err(Refusal::Unsupported { .. })));
        assert!(matches!(s.check("1.1.0"), Err(Refusal::Unsupported { .. })));
        assert!(matches!(s.check("x"), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn node_pool_may_not_be_newer_than_its_cluster() {
        let s = Supported::new(vec!["0.1".into(), "0.2".into()]);
        assert!(s.check_node_pool("0.1.0", "0.2.0").is_ok());
        assert!(s.check_node_pool("0.2.0", "0.2.0").is_ok());
        assert!(matches!(
            s.check_node_pool("0.2.1", "0.2.0"),
            Err(Refusal::NewerThanHostedCluster { .. })
        ));
    }

    #[test]
    fn config_map_publishes_json_versions() {
        let cm = Supported::new(vec!["0.1".into(), "0.2.0".into()]).config_map("hcp-system");
        assert_eq!(cm.metadata.name.as_deref(), Some("supported-versions"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("hcp-system"));
        let data = cm.data.expect("data");
        let parsed: serde_json::Value =
            serde_json::from_str(&data["supported-versions"]).expect("json");
        assert_eq!(parsed, serde_json::json!({"versions": ["0.1", "0.2.0"]}));
        assert_eq!(data["server-version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn this_build_supports_its_own_version() {
        assert!(
            Supported::this_build()
                .check(env!("CARGO_PKG_VERSION"))
                .is_ok()
        );
    }
}
