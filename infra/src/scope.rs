//! Tenant scoping in the infra cluster.
//!
//! Several guest clusters may share one infra namespace. An infra object
//! belongs to a tenant only when it lives in the tenant's namespace and carries
//! every one of the tenant's infra labels; volumes must also be named with the
//! tenant's volume prefix. Everything a guest asks for is checked here before
//! any infra object is touched.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Why an infra object is not the tenant's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("{kind} {name:?} is in namespace {actual:?}, not the tenant's namespace {expected:?}")]
    WrongNamespace {
        kind: &'static str,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{kind} {name:?} does not carry the tenant label {key}={value}")]
    MissingLabel {
        kind: &'static str,
        name: String,
        key: String,
        value: String,
    },
    #[error("volume {name:?} does not start with the volume prefix {prefix:?}")]
    WrongPrefix { name: String, prefix: String },
}

/// The infra namespace, labels and volume prefix of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantScope {
    namespace: String,
    labels: BTreeMap<String, String>,
    volume_prefix: String,
}

impl TenantScope {
    /// `volume_prefix` is the bare prefix (`pvc`); names must start with `pvc-`.
    pub fn new(namespace: &str, labels: BTreeMap<String, String>, volume_prefix: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            labels,
            volume_prefix: format!("{volume_prefix}-"),
        }
    }

    /// The infra namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The bare volume prefix (`pvc`).
    pub fn volume_prefix(&self) -> &str {
        self.volume_prefix.trim_end_matches('-')
    }

    /// The labels every tenant object carries.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The labels as a selector string, for lists and watches.
    pub fn selector(&self) -> String {
        crate::labels::selector_string(&self.labels)
    }

    /// Whether `name` is a well-formed volume name of this tenant.
    pub fn check_volume_name(&self, name: &str) -> Result<(), ScopeError> {
        if name.len() > self.volume_prefix.len() && name.starts_with(&self.volume_prefix) {
            Ok(())
        } else {
            Err(ScopeError::WrongPrefix {
                name: name.to_string(),
                prefix: self.volume_prefix.clone(),
            })
        }
    }

    /// Check that an object is in the tenant namespace and carries every label.
    pub fn check(&self, kind: &'static str, meta: &ObjectMeta) -> Result<(), ScopeError> {
        let name = meta.name.clone().unwrap_or_default();
        let ns = meta.namespace.as_deref().unwrap_or("");
        if ns != self.namespace {
            return Err(ScopeError::WrongNamespace {
                kind,
                name,
                expected: self.namespace.clone(),
                actual: ns.to_string(),
            });
        }
        let have = meta.labels.as_ref();
        for (key, value) in &self.labels {
            if have.and_then(|l| l.get(key)) != Some(value) {
                return Err(ScopeError::MissingLabel {
                    kind,
                    name,
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// Check a volume (DataVolume, PVC, VolumeSnapshot): scope and prefix.
    pub fn check_volume(&self, kind: &'static str, meta: &ObjectMeta) -> Result<(), ScopeError> {
        self.check_volume_name(meta.name.as_deref().unwrap_or(""))?;
        self.check(kind, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn scope_requires_namespace_labels_and_prefix() {
        let scope = TenantScope::new(
            "infra",
            [("infra-id".to_string(), "a".to_string())].into(),
            "pvc",
        );
        assert_eq!(
            scope.check_volume("DataVolume", &meta("infra", "pvc-1", &[("infra-id", "a")])),
            Ok(())
        );
        assert!(matches!(
            scope.check_volume("DataVolume", &meta("infra", "pvc-1", &[("infra-id", "b")])),
            Err(ScopeError::MissingLabel { .. })
        ));
        assert!(matches!(
            scope.check_volume("DataVolume", &meta("infra", "pvc-1", &[])),
            Err(ScopeError::MissingLabel { .. })
        ));
        assert!(matches!(
            scope.check_volume("DataVolume", &meta("other", "pvc-1", &[("infra-id", "a")])),
            Err(ScopeError::WrongNamespace { .. })
        ));
        assert!(matches!(
            scope.check_volume("DataVolume", &meta("infra", "disk-1", &[("infra-id", "a")])),
            Err(ScopeError::WrongPrefix { .. })
        ));
        assert!(scope.check_volume_name("pvc-").is_err());
        assert_eq!(scope.selector(), "infra-id=a");
    }
}
