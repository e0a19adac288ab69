//! What the server serves: a [`ResourceDef`] per resource (group, versions, plural,
//! kind, scope, subresources and the per-kind rules of its REST strategy) and the
//! [`Registry`] that finds one by group/version/plural or by group/kind. Built-ins come
//! from [`builtin`]; custom resources are added and removed as CRDs come and go
//! ([`crd`]).

pub mod builtin;
pub mod crd;
pub mod events;

use std::sync::Arc;

/// Key of one stored collection: `plural` or `plural.group`.
pub type ResKey = Arc<str>;

/// What a create does with the `status` a client sent, per kind.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusOnCreate {
    /// Kept as sent (no status subresource, or a kind whose creator owns status, e.g. nodes).
    Keep,
    /// Dropped.
    Clear,
    /// Replaced by this initial status.
    Initial(serde_json::Value),
}

/// How a resource's objects look on the wire relative to how they are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// As stored.
    #[default]
    Native,
    /// `events.k8s.io/v1` Events: core Events with renamed fields ([`events`]).
    EventsV1,
}

/// A column of a CRD's `additionalPrinterColumns`.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
}

/// One served resource and the rules its writes follow.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    /// The version objects are stored (and emitted on watch fan-out) in.
    pub storage_version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: the main endpoint ignores `status`, `/status` ignores the rest.
    pub status: bool,
    /// Has a `/scale` subresource (`spec.replicas`).
    pub scale: bool,
    /// Served from a CustomResourceDefinition.
    pub custom: bool,
    /// Keeps `metadata.generation`.
    pub generation: bool,
    pub status_on_create: StatusOnCreate,
    /// PUT of a missing object creates it.
    pub create_on_update: bool,
    /// DELETE answers with the deleted object rather than a Success Status.
    pub return_deleted: bool,
    /// Field selector labels beyond metadata.name/metadata.namespace.
    pub field_labels: Vec<String>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether this resource is another schema over a native one's storage.
    pub view: View,
}

pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    pub fn key(&self) -> ResKey {
        match self.view {
            View::EventsV1 => Arc::from("events"),
            View::Native => Arc::from(crate::error::qualified(&self.group, &self.plural)),
        }
    }

    /// `apiVersion` for `version` of this resource's group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn storage_api_version(&self) -> String {
        self.api_version(&self.storage_version)
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Whether `field` may be used in a field selector on this resource.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace" && (self.namespaced || !self.custom))
            || self.field_labels.iter().any(|f| f == field)
    }
}

/// Every served resource, findable by group/version/plural and by group/kind.
#[derive(Debug, Default)]
pub struct Registry {
    defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        Self {
            defs: builtin::all().into_iter().map(Arc::new).collect(),
        }
    }

    /// Adds or replaces the resource with the same group and plural.
    pub fn upsert(&mut self, def: ResourceDef) -> Arc<ResourceDef> {
        let def = Arc::new(def);
        match self
            .defs
            .iter_mut()
            .find(|d| d.group == def.group && d.plural == def.plural)
        {
            Some(slot) => *slot = def.clone(),
            None => self.defs.push(def.clone()),
        }
        def
    }

    pub fn remove(&mut self, group: &str, plural: &str) {
        self.defs
            .retain(|d| !(d.group == group && d.plural == plural));
    }

    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// The resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.plural == plural && d.serves(version))
            .cloned()
    }

    pub fn by_plural(&self, group: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.plural == plural)
            .cloned()
    }

    /// The resource of `kind` in the group of `api_version`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        let (group, version) = split_api_version(api_version);
        self.defs
            .iter()
            .find(|d| d.group == group && d.kind == kind && d.serves(version))
            .cloned()
    }

    /// Groups in discovery order, each with its served versions, preferred first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for def in &self.defs {
            if def.group.is_empty() {
                continue;
            }
            let idx = match groups.iter().position(|(g, _)| g == &def.group) {
                Some(i) => i,
                None => {
                    groups.push((def.group.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            for v in &def.versions {
                if !groups[idx].1.contains(v) {
                    groups[idx].1.push(v.clone());
                }
            }
        }
        for (_, versions) in &mut groups {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }

    /// Resources served in `group/version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.defs
            .iter()
            .filter(|d| d.group == group && d.serves(version))
            .cloned()
            .collect()
    }
}

/// `(group, version)` of an `apiVersion` string (`v1` is the core group).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Kubernetes version ordering: GA above beta above alpha, higher numbers first;
/// anything else sorts last.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u32>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (stage, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match num.parse::<u32>() {
        Ok(n) => (stage, major, n),
        Err(_) => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v1", "v2beta1", "v1beta2", "v2", "foo"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }

    #[test]
    fn builtins_resolve_by_path_and_kind() {
        let r = Registry::with_builtins();
        let d = r.lookup("apps", "v1", "deployments").expect("deployments");
        assert!(d.namespaced && d.status && d.scale);
        assert_eq!(
            r.by_kind("v1", "Pod").map(|d| d.plural.clone()).as_deref(),
            Some("pods")
        );
        assert!(r.lookup("apps", "v2", "deployments").is_none());
    }
}
