//! The object walks behind server-side apply and managed-fields tracking: the field set
//! of a configuration, the comparison of two objects (changed and removed paths), the
//! merge of an applied configuration into the live object, and the removal of fields
//! an applier stopped applying.
//!
//! Lists are associative (items identified by their key fields), sets (scalar items) or
//! atomic according to [`MergeKeys`]; maps are granular unless marked atomic.

use serde_json::{Map, Value};

use super::ApplyError;
use super::fieldset::{FieldSet, path_string};
use crate::json::loose_eq;
use crate::patch::{FieldStrategy, ListKey, MergeKeys};

/// Fields never tracked in managed fields.
const STRIPPED_TOP: &[&str] = &["apiVersion", "kind"];
const STRIPPED_META: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// Whether a missing key field is an error (applied configurations) or makes the list
/// atomic (live objects, which must never fail an update).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Strict,
    Lenient,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn is_atomic_map(keys: &MergeKeys, path: &str) -> bool {
    keys.strategy(path) == Some(FieldStrategy::Atomic)
}

/// `k:{"name":"x"}` for an item of an associative list (key fields sorted by name,
/// defaults filled in); `None` when a key field is missing.
pub(crate) fn key_pe(item: &Value, keys: &[ListKey]) -> Option<String> {
    let obj = item.as_object()?;
    let mut sorted: Vec<&ListKey> = keys.iter().collect();
    sorted.sort_by_key(|k| k.name);
    let mut out = String::from("k:{");
    let mut first = true;
    for k in sorted {
        let v = match (obj.get(k.name), k.default) {
            (Some(v), _) if !v.is_null() => v.clone(),
            (_, Some(d)) => Value::String(d.to_string()),
            _ => return None,
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&Value::String(k.name.to_string()).to_string());
        out.push(':');
        out.push_str(&canonical_json(&v));
    }
    out.push('}');
    Some(out)
}

/// JSON with integral floats printed as integers (Go decodes both alike).
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn value_pe(item: &Value) -> String {
    format!("v:{}", canonical_json(item))
}

/// The path elements of an associative list's items, or `None` if an item lacks a key
/// (or two items share one).
fn item_pes(items: &[Value], keys: &[ListKey]) -> Option<Vec<String>> {
    let mut pes = Vec::with_capacity(items.len());
    for item in items {
        let pe = key_pe(item, keys)?;
        if pes.contains(&pe) {
            return None;
        }
        pes.push(pe);
    }
    Some(pes)
}

fn strict_item_pes(
    items: &[Value],
    keys: &[ListKey],
    path: &str,
) -> Result<Vec<String>, ApplyError> {
    let mut pes: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(pe) = key_pe(item, keys) else {
            let missing = keys
                .iter()
                .find(|k| k.default.is_none() && item.get(k.name).is_none_or(Value::is_null))
                .map_or("", |k| k.name);
            return Err(ApplyError::Invalid(format!(
                ".{path}: element {i}: associative list with keys has an element that omits key field \"{missing}\" (and doesn't have default value)"
            )));
        };
        if pes.contains(&pe) {
            return Err(ApplyError::Invalid(format!(
                ".{path}: duplicate entries for key {}",
                path_string(std::slice::from_ref(&pe))
            )));
        }
        pes.push(pe);
    }
    Ok(pes)
}

// === Field sets ===

/// The field set of an object (what an applier of this configuration owns), without
/// the fields managed fields never track.
pub(crate) fn object_set(
    obj: &Value,
    keys: &MergeKeys,
    mode: Mode,
) -> Result<FieldSet, ApplyError> {
    let mut set = FieldSet::default();
    collect(obj, "", &mut set, keys, mode)?;
    set.member = false;
    strip(&mut set);
    set.prune();
    Ok(set)
}

/// Removes the untracked fields from a set computed over a whole object.
pub(crate) fn strip(set: &mut FieldSet) {
    for f in STRIPPED_TOP {
        set.children.remove(&format!("f:{f}"));
    }
    if let Some(meta) = set.children.get_mut("f:metadata") {
        for f in STRIPPED_META {
            meta.children.remove(&format!("f:{f}"));
        }
        meta.member = false;
        if meta.is_empty() {
            set.children.remove("f:metadata");
        }
    }
}

fn collect(
    v: &Value,
    path: &str,
    node: &mut FieldSet,
    keys: &MergeKeys,
    mode: Mode,
) -> Result<(), ApplyError> {
    match v {
        Value::Object(m) => {
            if m.is_empty() || is_atomic_map(keys, path) {
                node.member = true;
                return Ok(());
            }
            for (k, cv) in m {
                if cv.is_null() {
                    continue;
                }
                collect(
                    cv,
                    &join(path, k),
                    node.child_mut(&format!("f:{k}")),
                    keys,
                    mode,
                )?;
            }
        }
        Value::Array(items) => match keys.strategy(path) {
            Some(FieldStrategy::Keyed(lk)) if !items.is_empty() => {
                let pes = match mode {
                    Mode::Strict => strict_item_pes(items, lk, path)?,
                    Mode::Lenient => match item_pes(items, lk) {
                        Some(p) => p,
                        None => {
                            node.member = true;
                            return Ok(());
                        }
                    },
                };
                for (item, pe) in items.iter().zip(pes) {
                    let child = node.child_mut(&pe);
                    child.member = true;
                    if let Value::Object(m) = item {
                        for (k, cv) in m {
                            if cv.is_null() {
                                continue;
                            }
                            collect(
                                cv,
                                &join(path, k),
                                child.child_mut(&format!("f:{k}")),
                                keys,
                                mode,
                            )?;
                        }
                    }
                }
            }
            Some(FieldStrategy::Set) if !items.is_empty() => {
                for item in items {
                    node.child_mut(&value_pe(item)).member = true;
                }
            }
            _ => node.member = true,
        },
        _ => node.member = true,
    }
    Ok(())
}

// === Comparison ===

/// What changed between two versions of an object: `changed` holds added and modified
/// paths (added maps and list items as members), `removed` the paths that disappeared.
#[derive(Default)]
pub(crate) struct Diff {
    pub changed: FieldSet,
    pub removed: FieldSet,
}

/// Compares two whole objects (untracked fields left out).
pub(crate) fn diff_objects(old: Option<&Value>, new: &Value, keys: &MergeKeys) -> Diff {
    let mut d = Diff::default();
    let empty = Value::Object(Map::new());
    diff(
        Some(old.unwrap_or(&empty)),
        Some(new),
        "",
        0,
        &mut d.changed,
        &mut d.removed,
        keys,
    );
    d.changed.member = false;
    d.removed.member = false;
    strip(&mut d.changed);
    strip(&mut d.removed);
    d.changed.prune();
    d.removed.prune();
    d
}

/// Top-level fields that are maps in the Go types (their node is owned when added).
fn is_top_level_map(field: &str) -> bool {
    matches!(field, "data" | "binaryData" | "stringData")
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn diff(
    old: Option<&Value>,
    new: Option<&Value>,
    path: &str,
    depth: usize,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
    keys: &MergeKeys,
) {
    match (present(old), present(new)) {
        (None, None) => {}
        (None, Some(n)) => {
            match n {
                Value::Object(m) if !m.is_empty() && !is_atomic_map(keys, path) => {
                    // Walk added maps field by field so nested added maps own their node.
                    for (k, cv) in m {
                        let mut c = FieldSet::default();
                        let mut r = FieldSet::default();
                        diff(
                            None,
                            Some(cv),
                            &join(path, k),
                            depth + 1,
                            &mut c,
                            &mut r,
                            keys,
                        );
                        if !c.is_empty() {
                            changed.children.insert(format!("f:{k}"), c);
                        }
                    }
                }
                // Lenient collection never fails.
                _ => {
                    let _ = collect(n, path, changed, keys, Mode::Lenient);
                }
            }
            // An added map owns its node (list items already do; lists do not).
            let own_node = n.is_object() && (depth != 1 || is_top_level_map(path));
            if own_node {
                changed.member = true;
            }
        }
        (Some(_), None) => removed.member = true,
        // Equal subtrees (most of an object) are skipped without a walk.
        (Some(o), Some(n)) if o == n => {}
        (Some(o), Some(n)) => match (o, n) {
            (Value::Object(om), Value::Object(nm)) if !is_atomic_map(keys, path) => {
                for k in om.keys().chain(nm.keys().filter(|k| !om.contains_key(*k))) {
                    if path == "metadata" && k == "managedFields" {
                        continue;
                    }
                    let (ov, nv) = (om.get(k), nm.get(k));
                    if ov == nv {
                        continue;
                    }
                    let mut c = FieldSet::default();
                    let mut r = FieldSet::default();
                    diff(ov, nv, &join(path, k), depth + 1, &mut c, &mut r, keys);
                    if !c.is_empty() {
                        changed.children.insert(format!("f:{k}"), c);
                    }
                    if !r.is_empty() {
                        removed.children.insert(format!("f:{k}"), r);
                    }
                }
            }
            (Value::Array(oa), Value::Array(na)) => match keys.strategy(path) {
                Some(FieldStrategy::Keyed(lk)) => match (item_pes(oa, lk), item_pes(na, lk)) {
                    (Some(op), Some(np)) => {
                        for (pe, item) in np.iter().zip(na) {
                            let old_item = op.iter().position(|p| p == pe).map(|i| &oa[i]);
                            let mut c = FieldSet::default();
                            let mut r = FieldSet::default();
                            diff(old_item, Some(item), path, depth + 1, &mut c, &mut r, keys);
                            if old_item.is_none() {
                                c.member = true;
                            }
                            if !c.is_empty() {
                                changed.child_mut(pe).union_with(&c);
                            }
                            if !r.is_empty() {
                                removed.child_mut(pe).union_with(&r);
                            }
                        }
                        for pe in op.iter().filter(|p| !np.contains(p)) {
                            removed.child_mut(pe).member = true;
                        }
                    }
                    _ => {
                        if !loose_eq(o, n) {
                            changed.member = true;
                        }
                    }
                },
                Some(FieldStrategy::Set) => {
                    for item in na {
                        if !oa.iter().any(|x| loose_eq(x, item)) {
                            changed.child_mut(&value_pe(item)).member = true;
                        }
                    }
                    for item in oa {
                        if !na.iter().any(|x| loose_eq(x, item)) {
                            removed.child_mut(&value_pe(item)).member = true;
                        }
                    }
                }
                _ => {
                    if !loose_eq(o, n) {
                        changed.member = true;
                    }
                }
            },
            _ => {
                if !loose_eq(o, n) {
                    changed.member = true;
                }
            }
        },
    }
}

// === Merge ===

/// A configuration value with its nulls dropped.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

/// Merges an applied configuration into the live object.
pub(crate) fn merge(
    live: &mut Value,
    applied: &Value,
    path: &str,
    keys: &MergeKeys,
) -> Result<(), ApplyError> {
    match (live, applied) {
        (Value::Object(lm), Value::Object(am)) if !is_atomic_map(keys, path) => {
            for (k, av) in am {
                if av.is_null() {
                    continue;
                }
                match lm.get_mut(k) {
                    Some(lv) => merge(lv, av, &join(path, k), keys)?,
                    None => {
                        lm.insert(k.clone(), clean(av));
                    }
                }
            }
        }
        (Value::Array(la), Value::Array(aa)) => match keys.strategy(path) {
            Some(FieldStrategy::Keyed(lk)) => {
                let apes = strict_item_pes(aa, lk, path)?;
                let Some(lpes) = item_pes(la, lk) else {
                    *la = aa.iter().map(clean).collect();
                    return Ok(());
                };
                let live_items = std::mem::take(la);
                *la = merge_lists(live_items, &lpes, aa, &apes, |l, a| {
                    let mut l = l;
                    merge(&mut l, a, path, keys)?;
                    Ok(l)
                })?;
            }
            Some(FieldStrategy::Set) => {
                let lpes: Vec<String> = la.iter().map(value_pe).collect();
                let apes: Vec<String> = aa.iter().map(value_pe).collect();
                let live_items = std::mem::take(la);
                *la = merge_lists(live_items, &lpes, aa, &apes, |l, _| Ok(l))?;
            }
            _ => *la = aa.iter().map(clean).collect(),
        },
        (live, av) => *live = clean(av),
    }
    Ok(())
}

/// Merges two keyed lists the way structured-merge-diff orders them: live-only items
/// keep their place, applied items follow the applied order, shared items are merged.
fn merge_lists(
    live: Vec<Value>,
    lpes: &[String],
    applied: &[Value],
    apes: &[String],
    mut merge_item: impl FnMut(Value, &Value) -> Result<Value, ApplyError>,
) -> Result<Vec<Value>, ApplyError> {
    let mut live: Vec<Option<Value>> = live.into_iter().map(Some).collect();
    let shared: Vec<&String> = apes.iter().filter(|p| lpes.contains(p)).collect();
    let mut shared_i = 0;
    let mut emitted: Vec<&String> = Vec::new();
    let mut out = Vec::with_capacity(live.len() + applied.len());
    let (mut li, mut ri) = (0, 0);
    while li < lpes.len() || ri < apes.len() {
        let next_shared = shared.get(shared_i).copied();
        if li < lpes.len() && ri < apes.len() {
            if lpes[li] == apes[ri] {
                let l = live[li].take().unwrap_or(Value::Null);
                out.push(merge_item(l, &applied[ri])?);
                emitted.push(&apes[ri]);
                if next_shared == Some(&apes[ri]) {
                    shared_i += 1;
                }
                li += 1;
                ri += 1;
                continue;
            }
            if apes.contains(&lpes[li]) && next_shared.is_some_and(|n| *n != lpes[li]) {
                li += 1;
                continue;
            }
        }
        if li < lpes.len() {
            if !apes.contains(&lpes[li]) {
                if let Some(l) = live[li].take() {
                    out.push(l);
                }
                li += 1;
                continue;
            }
            if emitted.contains(&&lpes[li]) {
                li += 1;
                continue;
            }
        }
        if ri < apes.len() {
            let pe = &apes[ri];
            let item = match lpes.iter().position(|p| p == pe) {
                Some(i) => match live[i].take() {
                    Some(l) => merge_item(l, &applied[ri])?,
                    None => clean(&applied[ri]),
                },
                None => clean(&applied[ri]),
            };
            out.push(item);
            emitted.push(pe);
            if next_shared == Some(pe) {
                shared_i += 1;
            }
            ri += 1;
        }
    }
    Ok(out)
}

// === Pruning ===

/// Removes from `value` what `last` held and neither `new` nor `others` hold now.
/// `protected` are children never removed (the key fields of a list item that stays).
pub(crate) fn prune(
    value: &mut Value,
    last: &FieldSet,
    new: &FieldSet,
    others: &FieldSet,
    path: &str,
    keys: &MergeKeys,
    protected: &[String],
) {
    let empty = FieldSet::default();
    for (pe, last_child) in &last.children {
        if protected.contains(pe) {
            continue;
        }
        let new_child = new.children.get(pe).unwrap_or(&empty);
        let other_child = others.children.get(pe).unwrap_or(&empty);
        let kept = new_child.has_any() || other_child.has_any();
        if last_child.member && !kept {
            remove_element(value, pe, path, keys);
            continue;
        }
        let (child_path, protect) = match pe.strip_prefix("f:") {
            Some(f) => (join(path, f), Vec::new()),
            None => {
                let item_keys = keys
                    .list_keys(path)
                    .map(|lk| lk.iter().map(|k| format!("f:{}", k.name)).collect())
                    .unwrap_or_default();
                (path.to_string(), item_keys)
            }
        };
        let Some(element) = element_mut(value, pe, path, keys) else {
            continue;
        };
        prune(
            element,
            last_child,
            new_child,
            other_child,
            &child_path,
            keys,
            &protect,
        );
        let emptied = match element {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if emptied && !new_child.member && !other_child.member && pe.starts_with("f:") {
            remove_element(value, pe, path, keys);
        }
    }
}

fn element_mut<'v>(
    value: &'v mut Value,
    pe: &str,
    path: &str,
    keys: &MergeKeys,
) -> Option<&'v mut Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return value.as_object_mut()?.get_mut(f);
    }
    let items = value.as_array_mut()?;
    if pe.starts_with("k:") {
        let lk = keys.list_keys(path)?;
        return items
            .iter_mut()
            .find(|i| key_pe(i, lk).as_deref() == Some(pe));
    }
    if pe.starts_with("v:") {
        return items.iter_mut().find(|i| value_pe(i) == pe);
    }
    None
}

fn remove_element(value: &mut Value, pe: &str, path: &str, keys: &MergeKeys) {
    if let Some(f) = pe.strip_prefix("f:") {
        if let Some(m) = value.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    let Some(items) = value.as_array_mut() else {
        return;
    };
    if pe.starts_with("k:") {
        if let Some(lk) = keys.list_keys(path) {
            items.retain(|i| key_pe(i, lk).as_deref() != Some(pe));
        }
    } else if pe.starts_with("v:") {
        items.retain(|i| value_pe(i) != pe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy_keys() -> MergeKeys {
        MergeKeys::for_kind("apps/v1", "Deployment")
    }

    #[test]
    fn applied_set_uses_keys_and_strips_identity() {
        let cfg = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]}}
            }
        });
        let set = object_set(&cfg, &deploy_keys(), Mode::Strict).expect("must succeed");
        assert_eq!(
            set.to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }}}}
                }
            })
        );
    }

    #[test]
    fn missing_key_field_is_refused() {
        let cfg = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = object_set(&cfg, &deploy_keys(), Mode::Strict).expect_err("must fail");
        assert!(
            err.to_string().contains("omits key field \"name\""),
            "{err}"
        );
        let dup =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        let err = object_set(&dup, &deploy_keys(), Mode::Strict).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("duplicate entries for key [name=\"a\"]"),
            "{err}"
        );
        // Live objects never fail: the list is treated as atomic.
        let set = object_set(&cfg, &deploy_keys(), Mode::Lenient).expect("must succeed");
        assert!(set.children["f:spec"].children["f:template"].children["f:spec"].children["f:containers"].member);
    }

    #[test]
    fn diff_reports_changes_and_removals() {
        let old = json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1}});
        let new = json!({"metadata": {"name": "a", "labels": {"x": "1", "z": "3"}}, "spec": {"replicas": 2, "paused": true}});
        let d = diff_objects(Some(&old), &new, &deploy_keys());
        assert_eq!(
            d.changed.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:z": {}}}, "f:spec": {"f:paused": {}, "f:replicas": {}}})
        );
        assert_eq!(
            d.removed.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:y": {}}}})
        );
    }

    #[test]
    fn merge_keeps_live_items_and_orders_applied_ones() {
        let keys = deploy_keys();
        let mut live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}}}});
        let applied = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "c:1"}, {"name": "a", "image": "a:2"}
        ]}}}});
        merge(&mut live, &applied, "", &keys).expect("must succeed");
        let names: Vec<&str> = live["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("must succeed")
            .iter()
            .map(|c| c["name"].as_str().expect("must succeed"))
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"][1]["image"],
            "a:2"
        );
    }
}
