//! The action subresources: `pods/binding` (assign a node), `pods/eviction` (delete
//! through the eviction API) and `namespaces/finalize` (edit `spec.finalizers`), plus
//! the update rule that keeps a pod's spec immutable apart from the fields
//! kube-apiserver lets change.

use std::sync::Arc;

use serde_json::{Value, json};

use super::State;
use super::delete::{self, DeleteOpts};
use crate::error::{ApiError, ApiResult, Cause};
use crate::meta;
use crate::resources::ResourceDef;
use crate::store::Obj;

/// POST `pods/{name}/binding`: sets `spec.nodeName` once and marks the pod scheduled.
pub fn bind(
    st: &mut State,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    binding: &Value,
) -> ApiResult<Obj> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                def,
                name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "target.name".into(),
                }],
            )
        })?;
    let pod = st
        .store
        .get(&def.key(), ns, name)
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    if meta::is_deleting(&pod.value) {
        return Err(ApiError::conflict_because(
            "",
            "pods/binding",
            name,
            "pod is being deleted",
        ));
    }
    if let Some(current) = pod
        .value
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::conflict_because(
            "",
            "pods/binding",
            name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    let mut v = pod.value.clone();
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("nodeName".into(), json!(node));
    }
    if let Some(map) = v.as_object_mut() {
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(s) = status.as_object_mut() {
            let conds = s.entry("conditions").or_insert_with(|| json!([]));
            if let Some(arr) = conds.as_array_mut() {
                arr.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                arr.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
            }
        }
    }
    st.store
        .put(&def.key(), v)
        .ok_or_else(|| ApiError::not_found("", "pods", name))
}

/// POST `pods/{name}/eviction`: deletes the pod with the eviction's DeleteOptions
/// (there are no PodDisruptionBudgets to honour here).
pub fn evict(
    st: &mut State,
    def: &Arc<ResourceDef>,
    ns: &str,
    name: &str,
    eviction: &Value,
) -> ApiResult<()> {
    let opts = match eviction.get("deleteOptions") {
        Some(o) => DeleteOpts::default().merge_body(o)?,
        None => DeleteOpts::default(),
    };
    delete::delete(st, def, ns, name, &opts).map(|_| ())
}

/// PUT `namespaces/{name}/finalize`: replaces `spec.finalizers`; a Terminating
/// namespace with no finalizers left is removed.
pub fn finalize(st: &mut State, def: &ResourceDef, name: &str, body: &Value) -> ApiResult<Obj> {
    let ns = st
        .store
        .get(&def.key(), "", name)
        .ok_or_else(|| ApiError::not_found("", "namespaces", name))?;
    let fins = body
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or_else(|| json!([]));
    let mut v = ns.value.clone();
    if let Some(map) = v.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(s) = spec.as_object_mut() {
            s.insert("finalizers".into(), fins.clone());
        }
    }
    let empty = fins.as_array().is_none_or(Vec::is_empty);
    if meta::is_deleting(&v) && empty && meta::finalizers(&v).is_empty() {
        return st
            .store
            .remove(&def.key(), "", name, Some(v))
            .ok_or_else(|| ApiError::not_found("", "namespaces", name));
    }
    st.store
        .put(&def.key(), v)
        .ok_or_else(|| ApiError::not_found("", "namespaces", name))
}

/// Pod spec fields an update may change (images, deadlines, added tolerations, ...).
fn pod_spec_mutable_blanked(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(map) = s.as_object_mut() {
        for f in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "schedulingGates",
        ] {
            map.remove(f);
        }
        for list in ["containers", "initContainers"] {
            if let Some(cs) = map.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
    }
    s
}

/// Update rules that depend on the stored object.
pub fn validate_update(def: &ResourceDef, old: &Value, new: &Value) -> Vec<Cause> {
    if def.group.is_empty() && def.plural == "pods" {
        let null = Value::Null;
        let o = old.get("spec").unwrap_or(&null);
        let n = new.get("spec").unwrap_or(&null);
        if pod_spec_mutable_blanked(o) != pod_spec_mutable_blanked(n) {
            return vec![Cause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                field: "spec".into(),
            }];
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn pod_spec_is_immutable_but_images_may_change() {
        let def = Registry::with_builtins()
            .by_plural("", "pods")
            .expect("pods");
        let old = json!({"spec": {"nodeName": "", "containers": [{"name": "c", "image": "a"}]}});
        let image = json!({"spec": {"nodeName": "", "containers": [{"name": "c", "image": "b"}]}});
        assert!(validate_update(&def, &old, &image).is_empty());
        let node = json!({"spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "a"}]}});
        assert_eq!(validate_update(&def, &old, &node).len(), 1);
    }
}
