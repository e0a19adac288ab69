//! Pure REST-strategy rules: turning a request body into the object to store, for a
//! create or for an update of the main resource or of its `/status`. System fields
//! (uid, creationTimestamp, generation, deletion stamps) are owned by the server;
//! `status` belongs to `/status` when the kind has that subresource; generation moves
//! only when something outside metadata and status changed.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult, Cause};
use crate::meta;
use crate::resources::{ResourceDef, StatusOnCreate};

/// Which endpoint of a resource a write came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    Scale,
}

/// Rejects a body that is not an object or whose apiVersion/kind do not match the
/// endpoint (`version` is the requested version).
pub fn check_type(def: &ResourceDef, version: &str, body: &Value) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request was in an unknown format - expected a {} object",
            def.kind
        )));
    }
    let expected = def.api_version(version);
    if let Some(av) = body.get("apiVersion") {
        let av = av.as_str().unwrap_or("");
        if !av.is_empty() && av != expected {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({expected})"
            )));
        }
    }
    if let Some(kind) = body.get("kind") {
        let kind = kind.as_str().unwrap_or("");
        if !kind.is_empty() && kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    if let Some(m) = body.get("metadata")
        && !m.is_object()
        && !m.is_null()
    {
        return Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go struct field {}.metadata of type v1.ObjectMeta",
            json_type(m),
            def.kind
        )));
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The namespace of a request for `def`: the URL's, checked against the body's.
pub fn check_namespace(def: &ResourceDef, url_ns: Option<&str>, body: &Value) -> ApiResult<()> {
    if !def.namespaced {
        return Ok(());
    }
    let body_ns = meta::namespace(body);
    match url_ns {
        Some(ns) if !body_ns.is_empty() && body_ns != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// The object a create stores, before defaulting and validation.
pub fn new_object(
    def: &ResourceDef,
    ns: Option<&str>,
    body: Value,
    name: &str,
    uid: &str,
    now: &str,
) -> Value {
    let mut obj = meta::with_type(body, &def.storage_api_version(), &def.kind);
    {
        let m = meta::meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        match ns {
            Some(ns) if def.namespaced => {
                m.insert("namespace".into(), json!(ns));
            }
            _ => {
                m.remove("namespace");
            }
        }
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(now));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
            "generation",
        ] {
            m.remove(f);
        }
        if def.generation {
            m.insert("generation".into(), json!(1));
        }
        drop_empty(m, "labels");
        drop_empty(m, "annotations");
    }
    if let Some(map) = obj.as_object_mut() {
        match &def.status_on_create {
            StatusOnCreate::Keep => {}
            StatusOnCreate::Clear => {
                map.remove("status");
            }
            StatusOnCreate::Initial(s) => {
                map.insert("status".into(), s.clone());
            }
        }
    }
    obj
}

fn drop_empty(m: &mut Map<String, Value>, field: &str) {
    if m.get(field).is_some_and(|v| v.is_null()) {
        m.remove(field);
    }
}

/// The object an update of `old` through `sub` stores, before defaulting and validation.
/// `body` is the full object the client sent (for patches: the patched object).
pub fn updated_object(def: &ResourceDef, sub: Sub, old: &Value, body: Value) -> ApiResult<Value> {
    let name = meta::name(old).to_string();
    let body_uid = meta::uid(&body);
    if !body_uid.is_empty() && body_uid != meta::uid(old) {
        return Err(ApiError::conflict_because(
            &def.group,
            &def.plural,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {}",
                meta::uid(old)
            ),
        ));
    }
    let mut new = match sub {
        Sub::Main | Sub::Scale => {
            let mut new = meta::with_type(body, &def.storage_api_version(), &def.kind);
            if def.status
                && let Some(map) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            new
        }
        Sub::Status => {
            let mut new = old.clone();
            if let Some(map) = new.as_object_mut() {
                match body.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
                if let Some(mf) = body.pointer("/metadata/managedFields") {
                    meta::set(&mut new, "managedFields", mf.clone());
                }
            }
            new
        }
    };
    // System fields always come from the stored object.
    {
        let old_meta = old.get("metadata").and_then(Value::as_object);
        let m = meta::meta_mut(&mut new);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            match old_meta.and_then(|om| om.get(f)) {
                Some(v) => m.insert(f.to_string(), v.clone()),
                None => m.remove(f),
            };
        }
        drop_empty(m, "labels");
        drop_empty(m, "annotations");
    }
    if meta::is_deleting(old) {
        let before = meta::finalizers(old);
        let added: Vec<String> = meta::finalizers(&new)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !added.is_empty() {
            return Err(ApiError::invalid(
                def,
                &name,
                vec![Cause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [".to_string()
                        + &added.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(" ")
                        + "]",
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
    }
    if def.generation && spec_changed(def, old, &new) {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta::set(&mut new, "generation", json!(g + 1));
    }
    Ok(new)
}

/// Whether anything outside `metadata` (and `status`, for kinds with that
/// subresource) differs.
pub fn spec_changed(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    let skip = |k: &str| {
        k == "metadata" || k == "apiVersion" || k == "kind" || (def.status && k == "status")
    };
    let empty = Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    o.iter().any(|(k, v)| !skip(k) && n.get(k) != Some(v))
        || n.iter().any(|(k, _)| !skip(k) && !o.contains_key(k))
}

/// Whether two versions of an object are the same write (ignoring managedFields and
/// resourceVersion), so an update can be skipped like kube-apiserver's no-op updates.
pub fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        meta::remove(&mut v, "managedFields");
        meta::remove(&mut v, "resourceVersion");
        v
    };
    strip(a) == strip(b)
}

/// The autoscaling/v1 Scale of an object with a scale subresource.
pub fn scale_of(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let pick = |f: &str| m.get(f).cloned().unwrap_or(Value::Null);
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|ls| {
            ls.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"),
            "namespace": pick("namespace"),
            "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"),
            "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn def(plural: &str, group: &str) -> std::sync::Arc<ResourceDef> {
        Registry::with_builtins()
            .by_plural(group, plural)
            .expect("builtin")
    }

    #[test]
    fn create_owns_system_fields_and_status() {
        let d = def("deployments", "apps");
        let body = json!({"metadata": {"name": "x", "uid": "mine", "resourceVersion": "9"}, "spec": {"replicas": 1}, "status": {"replicas": 5}});
        let o = new_object(&d, Some("ns1"), body, "x", "u1", "2024-01-01T00:00:00Z");
        assert_eq!(o["apiVersion"], "apps/v1");
        assert_eq!(o["kind"], "Deployment");
        assert_eq!(o["metadata"]["uid"], "u1");
        assert_eq!(o["metadata"]["namespace"], "ns1");
        assert_eq!(o["metadata"]["generation"], 1);
        assert!(o.get("status").is_none());
        assert!(o["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn main_update_ignores_status_and_bumps_generation_on_spec() {
        let d = def("deployments", "apps");
        let old = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "uid": "u", "generation": 1}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let body = json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
        let new = updated_object(&d, Sub::Main, &old, body).expect("ok");
        assert_eq!(new["status"]["replicas"], 1);
        assert_eq!(new["metadata"]["generation"], 1);
        let body = json!({"metadata": {"name": "x"}, "spec": {"replicas": 3}});
        let new = updated_object(&d, Sub::Main, &old, body).expect("ok");
        assert_eq!(new["metadata"]["generation"], 2);
    }

    #[test]
    fn status_update_ignores_everything_but_status() {
        let d = def("pods", "");
        let old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u", "labels": {"a": "1"}}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
        let body = json!({"metadata": {"name": "p", "labels": {"a": "2"}}, "spec": {"nodeName": "n2"}, "status": {"phase": "Running"}});
        let new = updated_object(&d, Sub::Status, &old, body).expect("ok");
        assert_eq!(new["status"]["phase"], "Running");
        assert_eq!(new["spec"]["nodeName"], "n1");
        assert_eq!(new["metadata"]["labels"]["a"], "1");
    }

    #[test]
    fn no_new_finalizers_while_deleting() {
        let d = def("configmaps", "");
        let old = json!({"metadata": {"name": "c", "uid": "u", "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["a"]}});
        let body = json!({"metadata": {"name": "c", "finalizers": ["a", "b"]}});
        let err = updated_object(&d, Sub::Main, &old, body).expect_err("forbidden");
        assert_eq!(err.code, 422);
        let body = json!({"metadata": {"name": "c", "finalizers": []}});
        assert!(updated_object(&d, Sub::Main, &old, body).is_ok());
    }

    #[test]
    fn uid_mismatch_is_a_conflict() {
        let d = def("configmaps", "");
        let old = json!({"metadata": {"name": "c", "uid": "u"}});
        let err = updated_object(&d, Sub::Main, &old, json!({"metadata": {"uid": "v"}}))
            .expect_err("conflict");
        assert_eq!(err.code, 409);
    }
}
