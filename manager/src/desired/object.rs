//! [`Object`]: a desired object with its type erased (API resource, scope
//! and JSON body), so that one apply layer serves every kind; and
//! [`ObjectKey`], how objects are told apart when pruning.

use kube::Resource;
use kube::core::{ApiResource, DynamicObject};
use serde::Serialize;
use serde_json::Value;

/// A desired object: what to apply and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub resource: ApiResource,
    pub namespaced: bool,
    /// The full object (`apiVersion`, `kind`, `metadata`, ...).
    pub body: Value,
    /// The cluster may not serve this kind (e.g. VolumeSnapshotClass without
    /// the snapshot CRDs); then the object is skipped instead of failing.
    pub optional: bool,
}

/// Kind, namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// A desired object that cannot be serialized (never happens for the
/// k8s-openapi and crate types; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize desired {kind} {name}: {source}")]
pub struct SerializeError {
    pub kind: String,
    pub name: String,
    #[source]
    pub source: serde_json::Error,
}

impl Object {
    /// Erase a typed object. `apiVersion` and `kind` are filled in.
    pub fn new<K>(obj: &K) -> Result<Self, SerializeError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut body = serde_json::to_value(obj).map_err(|source| SerializeError {
            kind: resource.kind.clone(),
            name: obj.meta().name.clone().unwrap_or_default(),
            source,
        })?;
        if let Value::Object(map) = &mut body {
            map.insert(
                "apiVersion".into(),
                Value::String(resource.api_version.clone()),
            );
            map.insert("kind".into(), Value::String(resource.kind.clone()));
        }
        Ok(Self {
            namespaced: obj.meta().namespace.is_some(),
            resource,
            body,
            optional: false,
        })
    }

    /// Mark the object as skippable when its kind is not served.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    pub fn name(&self) -> &str {
        self.body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.body
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.resource.group.clone(),
            kind: self.resource.kind.clone(),
            namespace: self.namespace().map(str::to_string),
            name: self.name().to_string(),
        }
    }

    /// The body as a [`DynamicObject`] (for server-side apply).
    pub fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        serde_json::from_value(self.body.clone())
    }
}

impl ObjectKey {
    /// The key of a live object of `resource`.
    pub fn of(resource: &ApiResource, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: resource.group.clone(),
            kind: resource.kind.clone(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn erases_type_and_keeps_identity() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let o = Object::new(&cm).expect("serializes");
        assert_eq!(o.body["apiVersion"], "v1");
        assert_eq!(o.body["kind"], "ConfigMap");
        assert!(o.namespaced);
        assert_eq!(o.resource.plural, "configmaps");
        assert_eq!(
            o.key(),
            ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: Some("ns".into()),
                name: "a".into()
            }
        );
        assert_eq!(
            o.to_dynamic().expect("dynamic").metadata.name.as_deref(),
            Some("a")
        );
    }
}
