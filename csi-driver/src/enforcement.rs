//! The infra storage class enforcement policy: which infra StorageClasses a
//! guest may provision from and which infra VolumeSnapshotClasses its
//! snapshots may use.
//!
//! It is read once at start from the `INFRA_STORAGE_CLASS_ENFORCEMENT`
//! environment variable (YAML, keys `allowAll`, `allowDefault`, `allowList`,
//! `storageSnapshotMapping`, exactly as the Go driver reads it) and exposes two
//! pure decisions: [`Enforcement::check_storage_class`] for CreateVolume and
//! [`Enforcement::snapshot_class`] for CreateSnapshot.

use serde::Deserialize;

/// Name of the environment variable holding the policy.
pub const ENV_VAR: &str = "INFRA_STORAGE_CLASS_ENFORCEMENT";

/// Keys the policy understands; anything else is reported as a warning.
const KNOWN_KEYS: &[&str] = &[
    "allowAll",
    "allowDefault",
    "allowList",
    "storageSnapshotMapping",
];

/// The parsed policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enforcement {
    /// Any infra StorageClass may be named.
    #[serde(default)]
    pub allow_all: bool,
    /// A volume may leave the class unset (the infra default class).
    #[serde(default)]
    pub allow_default: bool,
    /// The infra StorageClasses that may be named when `allowAll` is off.
    #[serde(default)]
    pub allow_list: Vec<String>,
    /// Which infra VolumeSnapshotClasses go with which infra StorageClasses.
    #[serde(default)]
    pub storage_snapshot_mapping: Vec<StorageSnapshotMapping>,
}

/// One group of infra StorageClasses and the snapshot classes that fit them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSnapshotMapping {
    #[serde(default)]
    pub storage_classes: Vec<String>,
    #[serde(default)]
    pub volume_snapshot_classes: Vec<String>,
}

/// The YAML could not be read as a policy.
#[derive(Debug, thiserror::Error)]
#[error("{ENV_VAR} is not a valid storage class enforcement policy: {0}")]
pub struct ParseError(String);

/// Why the policy refuses a request (reported to the caller as InvalidArgument).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "the infra storage class must be named (parameter infraStorageClassName): the default class is not allowed"
    )]
    DefaultNotAllowed,
    #[error("infra storage class {0:?} is not in the allowed list")]
    NotAllowed(String),
    #[error(
        "infra snapshot class {requested:?} does not fit storage class {storage_class:?}; allowed: {allowed:?}"
    )]
    SnapshotClassMismatch {
        requested: String,
        storage_class: String,
        allowed: Vec<String>,
    },
    #[error(
        "no infra snapshot class is mapped to storage class {0:?} and the default class is not allowed"
    )]
    NoSnapshotClass(String),
}

impl Enforcement {
    /// The policy used when the variable is empty: anything goes.
    pub fn permissive() -> Self {
        Self {
            allow_all: true,
            allow_default: true,
            ..Self::default()
        }
    }

    /// Parse the policy from YAML. Empty (or whitespace) input is the
    /// permissive policy. Returns the policy and one warning per unknown key.
    pub fn parse(yaml: &str) -> Result<(Self, Vec<String>), ParseError> {
        if yaml.trim().is_empty() {
            return Ok((Self::permissive(), Vec::new()));
        }
        let value: serde_yaml::Value =
            serde_yaml::from_str(yaml).map_err(|e| ParseError(e.to_string()))?;
        let warnings = match &value {
            serde_yaml::Value::Mapping(map) => map
                .keys()
                .filter_map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .or_else(|| Some(format!("{k:?}")))
                })
                .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
                .map(|k| format!("{ENV_VAR}: unknown key {k:?} is ignored"))
                .collect(),
            serde_yaml::Value::Null => return Ok((Self::permissive(), Vec::new())),
            _ => return Err(ParseError("expected a mapping".to_string())),
        };
        let policy: Self = serde_yaml::from_value(value).map_err(|e| ParseError(e.to_string()))?;
        Ok((policy, warnings))
    }

    /// May a volume be provisioned from `storage_class` (`None` = the infra default)?
    pub fn check_storage_class(&self, storage_class: Option<&str>) -> Result<(), Refusal> {
        if self.allow_all {
            return Ok(());
        }
        match storage_class {
            None if self.allow_default => Ok(()),
            None => Err(Refusal::DefaultNotAllowed),
            Some(sc) if self.allow_list.iter().any(|a| a == sc) => Ok(()),
            Some(sc) => Err(Refusal::NotAllowed(sc.to_string())),
        }
    }

    /// The infra snapshot classes mapped to `storage_class`, if a mapping names it.
    fn mapped_snapshot_classes(&self, storage_class: &str) -> Option<&[String]> {
        self.storage_snapshot_mapping
            .iter()
            .find(|m| m.storage_classes.iter().any(|s| s == storage_class))
            .map(|m| m.volume_snapshot_classes.as_slice())
    }

    /// The infra VolumeSnapshotClass for a snapshot of a volume of
    /// `storage_class` (`None` when the volume uses the infra default class),
    /// given the requested class (`infraSnapshotClassName`, `None` if unset).
    /// `Ok(None)` means "leave the class unset": the infra default applies.
    ///
    /// A requested class must be one the mapping lists for the volume's
    /// storage class, when a mapping names it. Without a request the first
    /// mapped class is used, unless the default class is allowed.
    pub fn snapshot_class(
        &self,
        storage_class: Option<&str>,
        requested: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        let mapped = storage_class.and_then(|sc| self.mapped_snapshot_classes(sc));
        match (requested, mapped) {
            (Some(req), Some(allowed)) => {
                if allowed.iter().any(|a| a == req) {
                    Ok(Some(req.to_string()))
                } else {
                    Err(Refusal::SnapshotClassMismatch {
                        requested: req.to_string(),
                        storage_class: storage_class.unwrap_or_default().to_string(),
                        allowed: allowed.to_vec(),
                    })
                }
            }
            (Some(req), None) => {
                if self.allow_all || self.allow_default {
                    Ok(Some(req.to_string()))
                } else {
                    Err(Refusal::NoSnapshotClass(
                        storage_class.unwrap_or_default().to_string(),
                    ))
                }
            }
            (None, _) if self.allow_default => Ok(None),
            (None, Some(allowed)) if !allowed.is_empty() => Ok(Some(allowed[0].clone())),
            (None, _) if self.allow_all => Ok(None),
            (None, _) => Err(Refusal::NoSnapshotClass(
                storage_class.unwrap_or_default().to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Enforcement {
        Enforcement::parse(yaml).expect("valid policy").0
    }

    #[test]
    fn empty_is_permissive() {
        assert_eq!(policy(""), Enforcement::permissive());
        assert_eq!(policy("  \n"), Enforcement::permissive());
        assert!(policy("").check_storage_class(Some("anything")).is_ok());
        assert!(policy("").check_storage_class(None).is_ok());
    }

    #[test]
    fn parses_the_go_format_and_warns_about_unknown_keys() {
        let (p, warnings) = Enforcement::parse(
            "allowList: [fast, slow]\nallowDefault: false\nstorageSnapshotMapping:\n- storageClasses: [fast]\n  volumeSnapshotClasses: [fast-snap]\nallowEverything: true\n",
        )
        .expect("valid");
        assert!(!p.allow_all);
        assert_eq!(p.allow_list, ["fast", "slow"]);
        assert_eq!(
            p.storage_snapshot_mapping[0].volume_snapshot_classes,
            ["fast-snap"]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("allowEverything"));
    }

    #[test]
    fn bad_yaml_is_one_error() {
        let err = Enforcement::parse("allowAll: [unclosed").expect_err("invalid");
        assert!(err.to_string().starts_with(ENV_VAR));
        assert!(Enforcement::parse("allowAll: maybe").is_err());
        assert!(Enforcement::parse("- a\n- b").is_err());
    }

    #[test]
    fn storage_class_decisions() {
        let p = policy("allowList: [fast]");
        assert_eq!(p.check_storage_class(Some("fast")), Ok(()));
        assert_eq!(
            p.check_storage_class(Some("slow")),
            Err(Refusal::NotAllowed("slow".into()))
        );
        assert_eq!(p.check_storage_class(None), Err(Refusal::DefaultNotAllowed));
        let p = policy("allowDefault: true");
        assert_eq!(p.check_storage_class(None), Ok(()));
        assert!(p.check_storage_class(Some("fast")).is_err());
        assert!(
            policy("allowAll: true")
                .check_storage_class(Some("x"))
                .is_ok()
        );
    }

    #[test]
    fn snapshot_class_decisions() {
        let p = policy(
            "allowList: [fast, plain]\nstorageSnapshotMapping:\n- storageClasses: [fast]\n  volumeSnapshotClasses: [fast-snap, fast-snap2]\n",
        );
        assert_eq!(
            p.snapshot_class(Some("fast"), None),
            Ok(Some("fast-snap".into()))
        );
        assert_eq!(
            p.snapshot_class(Some("fast"), Some("fast-snap2")),
            Ok(Some("fast-snap2".into()))
        );
        assert!(matches!(
            p.snapshot_class(Some("fast"), Some("other")),
            Err(Refusal::SnapshotClassMismatch { .. })
        ));
        assert_eq!(
            p.snapshot_class(Some("plain"), None),
            Err(Refusal::NoSnapshotClass("plain".into()))
        );
        let open = Enforcement::permissive();
        assert_eq!(open.snapshot_class(Some("fast"), None), Ok(None));
        assert_eq!(open.snapshot_class(None, Some("x")), Ok(Some("x".into())));
    }
}
