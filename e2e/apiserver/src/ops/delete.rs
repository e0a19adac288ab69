//! DELETE and DELETE-collection: preconditions, the garbage-collector finalizers a
//! propagation policy asks for (`orphan`, `foregroundDeletion`), graceful deletion
//! while finalizers remain (deletionTimestamp set, the object kept), and the special
//! first step of namespaces (Terminating) and CRDs (instance cleanup).

use std::sync::Arc;

use serde_json::{Value, json};

use super::State;
use crate::error::{ApiError, ApiResult};
use crate::machinery::selector::{FieldSelector, LabelSelector};
use crate::meta;
use crate::resources::{ResourceDef, crd};
use crate::store::Obj;

pub const ORPHAN: &str = "orphan";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Namespaces the NamespaceLifecycle admission plugin never lets go.
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

impl Propagation {
    pub fn parse(s: &str) -> ApiResult<Self> {
        match s {
            "Orphan" => Ok(Self::Orphan),
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            other => Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            )),
        }
    }
}

/// What a DeleteOptions (body and query) asked for.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<Propagation>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOpts {
    /// Reads a DeleteOptions body (may be empty) over query-derived options.
    pub fn merge_body(mut self, body: &Value) -> ApiResult<Self> {
        if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
            self.propagation = Some(Propagation::parse(p)?);
        } else if let Some(orphan) = body.get("orphanDependents").and_then(Value::as_bool) {
            self.propagation = Some(if orphan {
                Propagation::Orphan
            } else {
                Propagation::Background
            });
        }
        if let Some(pre) = body.get("preconditions") {
            self.uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
            self.resource_version = pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"))
        {
            self.dry_run = true;
        }
        Ok(self)
    }
}

/// The outcome of a delete: the object, and whether it is gone (else it waits on finalizers).
pub struct Deleted {
    pub obj: Obj,
    pub removed: bool,
}

/// Deletes one object following kube-apiserver's rules.
pub fn delete(
    st: &mut State,
    def: &Arc<ResourceDef>,
    ns: &str,
    name: &str,
    o: &DeleteOpts,
) -> ApiResult<Deleted> {
    let key = def.key();
    let old = st
        .store
        .get(&key, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    if let Some(uid) = &o.uid
        && uid != old.uid()
    {
        return Err(ApiError::conflict_because(
            &def.group,
            &def.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old.uid()
            ),
        ));
    }
    if let Some(rv) = &o.resource_version
        && rv != meta::resource_version(&old.value)
    {
        return Err(ApiError::conflict_because(
            &def.group,
            &def.plural,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in meta: {}",
                meta::resource_version(&old.value)
            ),
        ));
    }
    if def.group.is_empty() && def.plural == "namespaces" && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    let mut obj = old.value.clone();
    let mut fins = meta::finalizers(&obj);
    match o.propagation {
        Some(Propagation::Orphan) => {
            fins.retain(|f| f != FOREGROUND);
            if !fins.iter().any(|f| f == ORPHAN) {
                fins.push(ORPHAN.to_string());
            }
        }
        Some(Propagation::Foreground) => {
            fins.retain(|f| f != ORPHAN);
            if !fins.iter().any(|f| f == FOREGROUND) {
                fins.push(FOREGROUND.to_string());
            }
        }
        Some(Propagation::Background) => fins.retain(|f| f != ORPHAN && f != FOREGROUND),
        None => {}
    }
    let is_namespace = def.group.is_empty() && def.plural == "namespaces";
    let is_crd = def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions";
    let now = meta::now();
    if is_crd && !meta::is_deleting(&obj) && !fins.iter().any(|f| f == CRD_CLEANUP) {
        fins.push(CRD_CLEANUP.to_string());
        let status = crd::terminating_status(&obj, &now);
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), status);
        }
    }
    let spec_fins = if is_namespace {
        meta::strings(obj.pointer("/spec/finalizers"))
    } else {
        Vec::new()
    };
    if fins.is_empty() && spec_fins.is_empty() {
        if o.dry_run {
            return Ok(Deleted {
                obj: old,
                removed: true,
            });
        }
        let removed = st
            .store
            .remove(&key, ns, name, None)
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        super::after_remove(st, def, &removed);
        return Ok(Deleted {
            obj: removed,
            removed: true,
        });
    }
    let already = meta::is_deleting(&obj);
    meta::set_finalizers(&mut obj, &fins);
    if !already {
        meta::set(&mut obj, "deletionTimestamp", json!(now));
        meta::set(&mut obj, "deletionGracePeriodSeconds", json!(0));
        if def.generation {
            let g = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta::set(&mut obj, "generation", json!(g + 1));
        }
        if is_namespace && let Some(map) = obj.as_object_mut() {
            let status = map.entry("status").or_insert_with(|| json!({}));
            if let Some(s) = status.as_object_mut() {
                s.insert("phase".into(), json!("Terminating"));
            }
        }
    }
    if obj == old.value || o.dry_run {
        return Ok(Deleted {
            obj: old,
            removed: false,
        });
    }
    let stored = st
        .store
        .put(&key, obj)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    Ok(Deleted {
        obj: stored,
        removed: false,
    })
}

/// DELETE on a collection: every object in `ns` (all for cluster scope) matching the
/// selectors. Returns the objects in their resulting state.
pub fn delete_collection(
    st: &mut State,
    def: &Arc<ResourceDef>,
    ns: Option<&str>,
    labels: Option<&LabelSelector>,
    fields: Option<&FieldSelector>,
    o: &DeleteOpts,
) -> ApiResult<Vec<Obj>> {
    let key = def.key();
    let targets: Vec<(String, String)> = match st.store.collection(&key) {
        Some(c) => c
            .iter_ns(ns)
            .filter(|(_, obj)| {
                labels.is_none_or(|l| l.matches_value(&obj.value))
                    && fields.is_none_or(|f| f.matches(&obj.value))
            })
            .map(|(k, _)| k.clone())
            .collect(),
        None => return Err(ApiError::resource_not_found()),
    };
    let mut out = Vec::with_capacity(targets.len());
    for (n, name) in targets {
        match delete(st, def, &n, &name, o) {
            Ok(d) => out.push(d.obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
