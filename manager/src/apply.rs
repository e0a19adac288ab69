//! The thin write layer: server-side apply of desired objects with one field
//! manager, skipped when the live object already holds every desired field
//! (so a reconcile that changes nothing writes nothing), and pruning of the
//! objects that carry a cluster's labels but are no longer desired.
//!
//! [`contains`] is the pure comparison; [`Applier`] does the I/O for one
//! target cluster and counts every write in the metrics. An apply gives back
//! the object as the cluster holds it ([`Outcome::live`]), status included,
//! so that what a reconcile observes of its own objects costs no request.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::desired::object::{Object, ObjectKey};
use crate::error::{Error, Result, Target, is_not_found};
use crate::metrics::Metrics;
use crate::names;

/// Whether `live` holds every field of `desired`: maps are compared key by
/// key (extra live keys are fine: defaults and other managers' fields),
/// lists element by element (same length), scalars by value. An empty or
/// null desired value matches a missing live one.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| contains(lv, dv))
        }
        (d, Value::Null) => is_empty(d),
        (d, l) => d == l,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Written,
    /// The kind is not served by the cluster and the object is optional.
    NotServed,
}

/// Kinds whose relevant fields are immutable: an apply rejected as invalid
/// is retried after deleting the object.
fn recreate_on_invalid(kind: &str) -> bool {
    matches!(kind, "StorageClass" | "VolumeSnapshotClass" | "CSIDriver")
}

/// Writes to one cluster.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub target: Target,
    pub metrics: &'a Metrics,
}

impl Applier<'_> {
    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Apply one object unless the live one already holds it.
    pub async fn apply(&self, obj: &Object) -> Result<Applied> {
        self.apply_and_read(obj).await.map(|(applied, _)| applied)
    }

    /// Apply one object unless the live one already holds it, and return
    /// the object as the cluster now holds it (none when not served), so
    /// that a caller reading its status needs no second request.
    pub async fn apply_and_read(&self, obj: &Object) -> Result<(Applied, Option<DynamicObject>)> {
        let api = self.api(&obj.resource, obj.namespace());
        let name = obj.name();
        let kind = &obj.resource.kind;
        // `get_opt` answers None for a missing object of a served kind; a
        // 404 error means the kind itself is not served (no CRD).
        let live = match api.get_opt(name).await {
            Ok(live) => live,
            Err(e) if obj.optional && is_not_found(&e) => return Ok((Applied::NotServed, None)),
            Err(e) => return Err(Error::kube(self.target, format!("get {kind} {name}"))(e)),
        };
        let existed = live.is_some();
        if let Some(live) = live
            && contains(
                &serde_json::to_value(&live).unwrap_or(Value::Null),
                &obj.body,
            )
        {
            return Ok((Applied::Unchanged, Some(live)));
        }
        match self.patch(&api, obj).await {
            Ok(written) => Ok((Applied::Written, Some(written))),
            Err(e) if obj.optional && !existed && is_not_found(&e) => {
                Ok((Applied::NotServed, None))
            }
            Err(kube::Error::Api(s)) if s.code == 422 && existed && recreate_on_invalid(kind) => {
                tracing::info!(%kind, name, "immutable fields changed; recreating");
                api.delete(name, &DeleteParams::background())
                    .await
                    .map_err(Error::kube(self.target, format!("delete {kind} {name}")))?;
                self.metrics.wrote(self.target.as_str(), kind, "delete");
                let written = self
                    .patch(&api, obj)
                    .await
                    .map_err(Error::kube(self.target, format!("apply {kind} {name}")))?;
                Ok((Applied::Written, Some(written)))
            }
            Err(e) => Err(Error::kube(self.target, format!("apply {kind} {name}"))(e)),
        }
    }

    async fn patch(
        &self,
        api: &Api<DynamicObject>,
        obj: &Object,
    ) -> std::result::Result<DynamicObject, kube::Error> {
        let params = PatchParams::apply(names::FIELD_MANAGER).force();
        self.metrics
            .wrote(self.target.as_str(), &obj.resource.kind, "apply");
        api.patch(obj.name(), &params, &Patch::Apply(&obj.body))
            .await
    }

    /// Apply objects in order.
    pub async fn apply_all(&self, objects: &[Object]) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        for obj in objects {
            match self.apply_and_read(obj).await? {
                (Applied::NotServed, _) => {
                    outcome.not_served.insert(format!(
                        "{} {}",
                        obj.resource.api_version, obj.resource.kind
                    ));
                }
                (_, Some(live)) => {
                    outcome.live.insert(obj.key(), live);
                }
                (_, None) => {}
            }
        }
        Ok(outcome)
    }

    /// Delete the objects of `kinds` matching `selector` (in `namespace`, or
    /// cluster-wide for cluster-scoped kinds) that are not in `keep`. Kinds
    /// the cluster does not serve are skipped. Returns how many were deleted.
    pub async fn prune(
        &self,
        kinds: &[(ApiResource, bool)],
        namespace: Option<&str>,
        selector: &str,
        keep: &BTreeSet<ObjectKey>,
    ) -> Result<usize> {
        let mut deleted = 0;
        for (resource, namespaced) in kinds {
            let ns = if *namespaced { namespace } else { None };
            if *namespaced && ns.is_none() {
                continue;
            }
            let api = self.api(resource, ns);
            let list = match api
                .list_metadata(&ListParams::default().labels(selector))
                .await
            {
                Ok(list) => list,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => {
                    return Err(Error::kube(self.target, format!("list {}", resource.kind))(
                        e,
                    ));
                }
            };
            for item in list.items {
                let name = item.metadata.name.clone().unwrap_or_default();
                let key = ObjectKey::of(resource, item.metadata.namespace.as_deref(), &name);
                if keep.contains(&key) || item.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if self
                    .delete(resource, item.metadata.namespace.as_deref(), &name)
                    .await?
                {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Delete one object; `false` if it was already gone.
    pub async fn delete(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool> {
        let api = self.api(resource, namespace);
        self.metrics
            .wrote(self.target.as_str(), &resource.kind, "delete");
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(target_cluster = %self.target, kind = %resource.kind, ?namespace, name, "deleted");
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::kube(
                self.target,
                format!("delete {} {name}", resource.kind),
            )(e)),
        }
    }

    /// Delete every object of `resource` in `namespace` matching `selector`
    /// (one request per object, so that each is counted and logged); kinds
    /// the cluster does not serve count as empty. Returns the names that
    /// still exist (being deleted).
    pub async fn delete_matching(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<String>> {
        let api = self.api(resource, Some(namespace));
        let list = match api
            .list_metadata(&ListParams::default().labels(selector))
            .await
        {
            Ok(list) => list,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::kube(self.target, format!("list {}", resource.kind))(
                    e,
                ));
            }
        };
        let mut remaining = Vec::new();
        for item in list.items {
            let name = item.metadata.name.clone().unwrap_or_default();
            if item.metadata.deletion_timestamp.is_none() {
                self.delete(resource, Some(namespace), &name).await?;
            }
            remaining.push(name);
        }
        Ok(remaining)
    }
}

/// What applying a set of objects found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The APIs (`<apiVersion> <kind>`) of the optional objects skipped
    /// because the cluster does not serve them.
    pub not_served: BTreeSet<String>,
    /// Each applied object as the cluster holds it, status included.
    live: BTreeMap<ObjectKey, DynamicObject>,
}

impl Outcome {
    /// The cluster's copy of the applied object `namespace/name` of type
    /// `K`: read from the apply, so that observing it costs no request.
    pub fn live<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let key = ObjectKey::of(&ApiResource::erase::<K>(&()), namespace, name);
        self.live.get(&key)?.clone().try_parse().ok()
    }
}

/// The keys of a set of objects.
pub fn keys(objects: &[Object]) -> BTreeSet<ObjectKey> {
    objects.iter().map(Object::key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_with_defaults_contains_desired() {
        let desired = json!({
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"containers": [{"name": "c", "args": ["--a", "--b"]}], "volumes": []}
        });
        let live = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "other": "y"}, "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "args": ["--a", "--b"], "terminationMessagePath": "/dev/x"}],
                     "restartPolicy": "Always"}
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn any_difference_is_seen() {
        let live = json!({"spec": {"args": ["--a", "--b"], "n": 1, "m": {"k": "v"}}});
        assert!(!contains(&live, &json!({"spec": {"args": ["--a"]}})));
        assert!(!contains(&live, &json!({"spec": {"args": ["--b", "--a"]}})));
        assert!(!contains(&live, &json!({"spec": {"n": 2}})));
        assert!(!contains(&live, &json!({"spec": {"m": {"k": "w"}}})));
        assert!(!contains(&live, &json!({"spec": {"missing": "x"}})));
        assert!(contains(&live, &json!({"spec": {"missing": {}}})));
        assert!(contains(&live, &json!({"spec": {"missing": null}})));
        assert!(!contains(&json!({"a": null}), &json!({"a": "x"})));
    }

    #[test]
    fn an_outcome_gives_back_what_was_applied_by_kind_and_name() {
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        let read: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ccm", "namespace": "cp"},
            "spec": {"selector": {}, "template": {}},
            "status": {"availableReplicas": 1},
        }))
        .expect("object");
        let key = ObjectKey::of(&ApiResource::erase::<Deployment>(&()), Some("cp"), "ccm");
        let outcome = Outcome {
            live: BTreeMap::from([(key, read)]),
            ..Outcome::default()
        };
        let d: Deployment = outcome.live(Some("cp"), "ccm").expect("applied");
        assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1));
        assert!(outcome.live::<Deployment>(Some("other"), "ccm").is_none());
        assert!(outcome.live::<StatefulSet>(Some("cp"), "ccm").is_none());
    }
}
