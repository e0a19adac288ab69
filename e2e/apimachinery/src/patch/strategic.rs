//! Strategic merge patch with the semantics of apimachinery's `strategicpatch`
//! (`StrategicMergeMapPatch` with `MergeParallelList` and `IgnoreUnmatchedNulls`).
//!
//! Maps merge recursively and `null` deletes; lists with a merge key merge item by item
//! and lists of scalars with the merge strategy merge as sets, both ordered the way the
//! Go code orders them (patch items in patch order, server-only items in server order,
//! interleaved by the live order); other lists are replaced. Directives: `$patch:
//! replace|delete` on maps and list items, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`. Errors carry the Go
//! messages and the status the real server gives them.

use serde_json::{Map, Value};

use super::PatchError;
use super::merge_keys::{FieldStrategy, MergeKeys};
use crate::json::{Kind, go_fmt, go_fmt_map, kind, loose_eq, opt_eq};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

const BAD_JSON_DOC: &str = "invalid JSON document";
const BAD_PRIMITIVE_LIST: &str = "invalid patch format of primitive list";
const BAD_RETAIN_KEYS: &str = "invalid patch format of retainKeys";
const BAD_SET_ELEMENT_ORDER: &str = "invalid patch format of setElementOrder list";

/// Applies a strategic merge patch to `target` using the strategies in `keys`. On
/// error `target` is left unchanged.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    keys: &MergeKeys,
) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::BadRequest(BAD_JSON_DOC.into()));
    };
    let original = match target {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(PatchError::BadRequest(BAD_JSON_DOC.into())),
    };
    let mut smp = Smp {
        keys,
        path: String::new(),
    };
    let merged = smp.merge_map(original, patch.clone())?;
    *target = Value::Object(merged);
    Ok(())
}

fn internal(msg: String) -> PatchError {
    PatchError::Internal(msg)
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    internal(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt_map(m)
    ))
}

fn bad_patch_type(t: &Value, m: &Map<String, Value>) -> PatchError {
    internal(format!(
        "unknown patch type: {} in map: {}",
        go_fmt(t),
        go_fmt_map(m)
    ))
}

fn bad_arg_type(expected: &str, actual: &Value) -> PatchError {
    let actual = match kind(actual) {
        Kind::Null => "nil",
        Kind::Bool => "bool",
        Kind::Number => "float64",
        Kind::String => "string",
        Kind::Array => "[]interface {}",
        Kind::Object => "map[string]interface {}",
    };
    internal(format!("expected a {expected}, but received a {actual}"))
}

/// `$deleteFromPrimitiveList/<field>` -> `<field>`, the way `extractKey` splits it.
fn extract_key<'a>(key: &'a str, prefix: &str, bad: &str) -> Result<&'a str, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest),
        _ => Err(PatchError::BadRequest(bad.into())),
    }
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        || k.starts_with(SET_ELEMENT_ORDER)
}

fn has_directive(v: &Value) -> bool {
    v.get(DIRECTIVE).is_some()
}

fn is_delete_item(v: &Value) -> bool {
    v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

/// A value the patch adds where the original had none: nulls dropped, maps carrying a
/// `$patch` directive dropped, other directives stripped (`None`: drop the value).
fn strip_new(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE) {
                return None;
            }
            let out = m
                .into_iter()
                .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
                .filter_map(|(k, v)| strip_new(v).map(|v| (k, v)))
                .collect();
            Some(Value::Object(out))
        }
        Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(strip_new).collect())),
        other => Some(other),
    }
}

/// The identity of a list item in ordering: its merge-key value, or the item itself.
type OrderKey = Option<Value>;

fn order_key(item: &Value, merge_key: Option<&str>) -> OrderKey {
    match merge_key {
        Some(k) => item.get(k).cloned(),
        None => Some(item.clone()),
    }
}

fn index_in(order: &[OrderKey], key: &OrderKey) -> Option<usize> {
    order.iter().position(|o| opt_eq(o.as_ref(), key.as_ref()))
}

struct Smp<'k> {
    keys: &'k MergeKeys,
    /// Dotted path of the field being merged (list items transparent).
    path: String,
}

impl Smp<'_> {
    fn push(&mut self, field: &str) -> usize {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(field);
        len
    }

    fn pop(&mut self, len: usize) {
        self.path.truncate(len);
    }

    /// (merge key, merge strategy?) of the list at the current path.
    fn list_strategy(&self) -> (Option<&'static str>, bool) {
        match self.keys.strategy(&self.path) {
            Some(FieldStrategy::Keyed(keys)) => (keys.first().map(|k| k.name), true),
            Some(FieldStrategy::Set) => (None, true),
            _ => (None, false),
        }
    }

    fn merge_map(
        &mut self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
    ) -> Result<Map<String, Value>, PatchError> {
        if let Some(d) = patch.get(DIRECTIVE) {
            return match d.as_str() {
                Some("replace") => {
                    patch.remove(DIRECTIVE);
                    match strip_new(Value::Object(patch)) {
                        Some(Value::Object(m)) => Ok(m),
                        _ => Ok(Map::new()),
                    }
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(bad_patch_type(d, &patch)),
            };
        }
        apply_retain_keys(&mut original, &mut patch)?;
        self.merge_set_element_order(&mut original, &mut patch)?;

        let mut deletions = Vec::new();
        for (k, pv) in patch {
            if k.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                let field = extract_key(&k, DELETE_FROM_PRIMITIVE_LIST, BAD_PRIMITIVE_LIST)?;
                deletions.push((field.to_string(), pv));
                continue;
            }
            self.merge_field(&mut original, k, pv, false)?;
        }
        for (field, pv) in deletions {
            self.merge_field(&mut original, field, pv, true)?;
        }
        Ok(original)
    }

    fn merge_field(
        &mut self,
        original: &mut Map<String, Value>,
        k: String,
        pv: Value,
        is_delete_list: bool,
    ) -> Result<(), PatchError> {
        if pv.is_null() {
            original.remove(&k);
            return Ok(());
        }
        let mark = self.push(&k);
        let result = self.merge_existing(original, &k, pv, is_delete_list);
        self.pop(mark);
        result
    }

    fn merge_existing(
        &mut self,
        original: &mut Map<String, Value>,
        k: &str,
        pv: Value,
        is_delete_list: bool,
    ) -> Result<(), PatchError> {
        let same_kind = original.get(k).map(|ov| kind(ov) == kind(&pv));
        match same_kind {
            None | Some(false) => {
                if !is_delete_list {
                    match strip_new(pv) {
                        Some(v) => {
                            original.insert(k.to_string(), v);
                        }
                        None => {
                            original.remove(k);
                        }
                    }
                }
                Ok(())
            }
            Some(true) => {
                let Some(slot) = original.get_mut(k) else {
                    return Ok(());
                };
                match (std::mem::take(slot), pv) {
                    (Value::Object(o), Value::Object(p)) => {
                        *slot = Value::Object(self.merge_map(o, p)?);
                    }
                    (Value::Array(o), Value::Array(p)) => {
                        *slot = Value::Array(self.merge_slice_handler(o, p, is_delete_list)?);
                    }
                    (_, p) => *slot = p,
                }
                Ok(())
            }
        }
    }

    fn merge_slice_handler(
        &mut self,
        original: Vec<Value>,
        patch: Vec<Value>,
        is_delete_list: bool,
    ) -> Result<Vec<Value>, PatchError> {
        let (merge_key, merge) = self.list_strategy();
        if merge || is_delete_list {
            self.merge_slice(original, patch, merge_key, is_delete_list)
        } else {
            Ok(patch)
        }
    }

    fn merge_slice(
        &mut self,
        original: Vec<Value>,
        patch: Vec<Value>,
        merge_key: Option<&str>,
        is_delete_list: bool,
    ) -> Result<Vec<Value>, PatchError> {
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let elem = element_kind(&original, &patch)?;
        if elem != Some(Kind::Object) {
            if is_delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|o| !patch.iter().any(|d| loose_eq(o, d)))
                    .collect());
            }
            let server_order: Vec<OrderKey> = original.iter().map(|v| Some(v.clone())).collect();
            let patch_order: Vec<OrderKey> = patch.iter().map(|v| Some(v.clone())).collect();
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.into_iter().chain(patch) {
                if !merged.iter().any(|m| loose_eq(m, &v)) {
                    merged.push(v);
                }
            }
            let (patch_items, server_only): (Vec<Value>, Vec<Value>) = merged
                .into_iter()
                .partition(|v| index_in(&patch_order, &Some(v.clone())).is_some());
            return normalize_element_order(
                patch_items,
                server_only,
                &patch_order,
                &server_order,
                None,
            );
        }
        let Some(key) = merge_key else {
            return Err(internal(format!(
                "cannot merge lists without merge key for {}",
                self.path
            )));
        };
        let (original, patch) = merge_special_elements(original, patch, key)?;
        let server_order: Vec<OrderKey> =
            original.iter().map(|v| order_key(v, Some(key))).collect();
        let patch_order: Vec<OrderKey> = patch.iter().map(|v| order_key(v, Some(key))).collect();
        let merged = self.merge_plain_elements(original, patch, key)?;
        let (patch_items, server_only) = partition_by_order(merged, &patch_order, Some(key))?;
        normalize_element_order(
            patch_items,
            server_only,
            &patch_order,
            &server_order,
            Some(key),
        )
    }

    /// Merges items found by key into the original, appends the others.
    fn merge_plain_elements(
        &mut self,
        mut original: Vec<Value>,
        patch: Vec<Value>,
        key: &str,
    ) -> Result<Vec<Value>, PatchError> {
        for v in patch {
            let Value::Object(pm) = v else {
                return Err(bad_arg_type("map[string]interface {}", &v));
            };
            let Some(mv) = pm.get(key) else {
                return Err(no_merge_key(&pm, key));
            };
            let found = original
                .iter()
                .position(|o| o.get(key).is_some_and(|x| loose_eq(x, mv)));
            match found {
                Some(i) => {
                    let Value::Object(om) = std::mem::take(&mut original[i]) else {
                        return Err(internal(format!("value for key {i} is not a map.")));
                    };
                    original[i] = Value::Object(self.merge_map(om, pm)?);
                }
                None => {
                    if let Some(v) = strip_new(Value::Object(pm)) {
                        original.push(v);
                    }
                }
            }
        }
        Ok(original)
    }

    /// `mergePatchIntoOriginal`: lists named by `$setElementOrder/<field>` are merged
    /// here and ordered by that list.
    fn merge_set_element_order(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Result<(), PatchError> {
        let order_keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
            .cloned()
            .collect();
        for key in order_keys {
            let Some(order) = patch.remove(&key) else {
                continue;
            };
            let Value::Array(order) = order else {
                return Err(bad_arg_type("[]interface {}", &order));
            };
            let field = extract_key(&key, SET_ELEMENT_ORDER, BAD_SET_ELEMENT_ORDER)?.to_string();
            let original_list = match original.get(&field) {
                None => None,
                Some(Value::Array(a)) => Some(a.clone()),
                Some(other) => return Err(bad_arg_type("[]interface {}", other)),
            };
            let patch_list = match patch.get(&field) {
                None => None,
                Some(Value::Array(a)) => Some(a.clone()),
                Some(other) => return Err(bad_arg_type("[]interface {}", other)),
            };
            let mark = self.push(&field);
            let (merge_key, merge) = self.list_strategy();
            validate_patch_with_set_order_list(
                patch_list.as_deref().unwrap_or_default(),
                &order,
                merge_key,
            )?;
            let mut server_order: Vec<OrderKey> = original_list
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|v| order_key(v, merge_key))
                .collect();
            let merged = match (original_list, patch_list) {
                (Some(o), None) => o,
                (None, Some(p)) => p.into_iter().filter_map(strip_new).collect(),
                (Some(o), Some(p)) => {
                    if let (Some(k), true) = (merge_key, merge)
                        && element_kind(&o, &p)? == Some(Kind::Object)
                    {
                        server_order = aliased_server_order(&o, &p, k);
                    }
                    self.merge_slice_handler(o, p, false)?
                }
                (None, None) => {
                    self.pop(mark);
                    continue;
                }
            };
            let order_keys: Vec<OrderKey> = order.iter().map(|v| order_key(v, merge_key)).collect();
            let (patch_items, server_only) = partition_by_order(merged, &order_keys, merge_key)?;
            let both = normalize_element_order(
                patch_items,
                server_only,
                &order_keys,
                &server_order,
                merge_key,
            )?;
            original.insert(field.clone(), Value::Array(both));
            patch.remove(&field);
            self.pop(mark);
        }
        Ok(())
    }
}

/// `$retainKeys`: drop original keys not listed; every patched key must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(PatchError::BadRequest(BAD_RETAIN_KEYS.into()));
    };
    let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !listed(k) {
            return Err(PatchError::BadRequest(BAD_RETAIN_KEYS.into()));
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// The one JSON type of every element of both lists (`None` when both are empty).
fn element_kind(a: &[Value], b: &[Value]) -> Result<Option<Kind>, PatchError> {
    let mut seen: Option<Kind> = None;
    for v in a.iter().chain(b) {
        let k = kind(v);
        match seen {
            None => {
                if k == Kind::Array {
                    return Err(PatchError::Unprocessable(
                        "lists of lists are not supported".into(),
                    ));
                }
                seen = Some(k);
            }
            Some(s) if s != k => {
                return Err(internal(format!(
                    "list element types are not identical: [{} {}]",
                    go_fmt(&Value::Array(a.to_vec())),
                    go_fmt(&Value::Array(b.to_vec()))
                )));
            }
            Some(_) => {}
        }
    }
    Ok(seen)
}

/// Applies `$patch: delete` items and detects `$patch: replace`; returns the original
/// and the patch without directive items.
fn merge_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let Value::Object(m) = &v else {
            return Err(bad_arg_type("map[string]interface {}", &v));
        };
        let Some(d) = m.get(DIRECTIVE) else {
            plain.push(v);
            continue;
        };
        match d.as_str() {
            Some("delete") => {
                let Some(mv) = m.get(key) else {
                    return Err(no_merge_key(m, key));
                };
                original.retain(|o| !o.get(key).is_some_and(|x| loose_eq(x, mv)));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(internal(
                    "merging lists cannot yet be specified in the patch".into(),
                ));
            }
            _ => return Err(bad_patch_type(d, m)),
        }
    }
    if replace {
        Ok((plain, Vec::new()))
    } else {
        Ok((original, plain))
    }
}

/// Splits items into those present in `order` and the rest (server-only).
fn partition_by_order(
    items: Vec<Value>,
    order: &[OrderKey],
    merge_key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut present = Vec::with_capacity(items.len());
    let mut server_only = Vec::new();
    for v in items {
        if let Some(k) = merge_key
            && let Value::Object(m) = &v
            && !m.contains_key(k)
        {
            return Err(no_merge_key(m, k));
        }
        let key = order_key(&v, merge_key);
        let found = key.is_some() && index_in(order, &key).is_some();
        if found {
            present.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((present, server_only))
}

/// Patch items sorted by the patch order, server-only items by the server order, then
/// interleaved by the server order (`normalizeElementOrder`).
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[OrderKey],
    server_order: &[OrderKey],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let patch_items = normalize_slice_order(patch_items, patch_order, merge_key)?;
    let server_only = normalize_slice_order(server_only, server_order, merge_key)?;
    Ok(merge_sorted(
        server_only,
        patch_items,
        server_order,
        merge_key,
    ))
}

fn normalize_slice_order(
    items: Vec<Value>,
    order: &[OrderKey],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    if let Some(k) = merge_key {
        for v in &items {
            if let Value::Object(m) = v
                && !m.contains_key(k)
            {
                return Err(no_merge_key(m, k));
            }
        }
    }
    let mut found: Vec<(usize, Value)> = Vec::with_capacity(items.len());
    let mut rest = Vec::new();
    for v in items {
        if merge_key.is_some() && is_delete_item(&v) {
            continue;
        }
        match index_in(order, &order_key(&v, merge_key)) {
            Some(i) => found.push((i, v)),
            None => rest.push(v),
        }
    }
    found.sort_by_key(|(i, _)| *i);
    let mut out: Vec<Value> = found.into_iter().map(|(_, v)| v).collect();
    out.extend(rest);
    Ok(out)
}

/// `mergeSortedSlice`: inserts `left` (server-only) items into `right` (patch items),
/// a left item going first only when both are in the server order and it comes earlier.
fn merge_sorted(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[OrderKey],
    merge_key: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                let li = index_in(server_order, &order_key(l, merge_key));
                let ri = index_in(server_order, &order_key(r, merge_key));
                matches!((li, ri), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        if let Some(v) = next {
            out.push(v);
        }
    }
    out
}

/// The live list as the Go code sees it after merging in place: `deleteMatchingEntries`
/// shifts the backing array left and appended items overwrite its tail, so the
/// "server order" used to interleave is that mutated view (same length).
fn aliased_server_order(original: &[Value], patch: &[Value], key: &str) -> Vec<OrderKey> {
    let n = original.len();
    let mut backing: Vec<OrderKey> = original.iter().map(|v| v.get(key).cloned()).collect();
    let mut len = n;
    let mut replace = false;
    for p in patch {
        match p.get(DIRECTIVE).and_then(Value::as_str) {
            Some("delete") => {
                let Some(mv) = p.get(key) else { continue };
                while let Some(i) = backing[..len]
                    .iter()
                    .position(|b| b.as_ref().is_some_and(|b| loose_eq(b, mv)))
                {
                    for j in i..len - 1 {
                        backing[j] = backing[j + 1].clone();
                    }
                    len -= 1;
                }
            }
            Some("replace") => replace = true,
            _ => {}
        }
    }
    if replace {
        return backing;
    }
    let mut current: Vec<OrderKey> = backing[..len].to_vec();
    let mut in_place = true;
    for p in patch.iter().filter(|p| !has_directive(p)) {
        let Some(mv) = p.get(key) else { continue };
        if current
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| loose_eq(c, mv)))
        {
            continue;
        }
        current.push(Some(mv.clone()));
        if in_place && len < n {
            backing[len] = Some(mv.clone());
            len += 1;
        } else {
            in_place = false;
        }
    }
    backing
}

/// `validatePatchWithSetOrderList`: the patch list must follow the order list.
fn validate_patch_with_set_order_list(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = if merge_key.is_some() {
        patch_list.iter().filter(|v| !is_delete_item(v)).collect()
    } else {
        patch_list.iter().collect()
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        if has_directive(non_delete[pi]) {
            pi += 1;
            continue;
        }
        let equal = match merge_key {
            None => loose_eq(non_delete[pi], &order[si]),
            Some(k) => {
                let (Value::Object(l), Value::Object(r)) = (non_delete[pi], &order[si]) else {
                    return Err(bad_arg_type("map[string]interface {}", &order[si]));
                };
                let Some(lv) = l.get(k) else {
                    return Err(no_merge_key(l, k));
                };
                let Some(rv) = r.get(k) else {
                    return Err(no_merge_key(r, k));
                };
                loose_eq(lv, rv)
            }
        };
        if equal {
            pi += 1;
        }
        si += 1;
    }
    if pi < non_delete.len() && si >= order.len() {
        return Err(internal(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}\n",
            go_fmt(&Value::Array(patch_list.to_vec())),
            go_fmt(&Value::Array(order.to_vec()))
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value, keys: &MergeKeys) -> Value {
        let mut t = target;
        strategic_merge_patch(&mut t, &patch, keys).unwrap_or_else(|e| panic!("{e}"));
        t
    }

    fn pod_keys() -> MergeKeys {
        MergeKeys::for_kind("v1", "Pod")
    }

    fn test_keys() -> MergeKeys {
        const NAME: &[super::super::ListKey] = &[super::super::ListKey::new("name")];
        MergeKeys::none()
            .with("mergingList", FieldStrategy::Keyed(NAME))
            .with("mergingIntList", FieldStrategy::Set)
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let out = smp(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}}),
            json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"y": {"z": null, "w": 2}}}),
            &pod_keys(),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"x": 1, "y": {"w": 2}}})
        );
    }

    #[test]
    fn containers_merge_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"},
        ]}});
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]}]}}),
            &pod_keys(),
        );
        let c = &out["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(2));
        assert_eq!(c[0]["image"], "app:2");
        assert_eq!(c[1]["name"], "side");
        // New env items go first (patch items lead, then server-only ones).
        assert_eq!(
            c[0]["env"],
            json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
        );
    }

    #[test]
    fn new_items_precede_server_only_items() {
        let out = smp(
            json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
            json!({"mergingList": [{"name": "3"}]}),
            &test_keys(),
        );
        assert_eq!(
            out,
            json!({"mergingList": [{"name": "3"}, {"name": "1"}, {"name": "2"}]})
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let out = smp(
            json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "args": ["x", "y"]}]}}),
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "args": ["z"]}]}}),
            &pod_keys(),
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["z"]));
    }

    #[test]
    fn delete_and_replace_directives_in_lists() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let out = smp(
            pod.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
            &pod_keys(),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a"}, {"name": "c"}])
        );
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"name": "z", "image": "i"}, {"$patch": "replace"}]}}),
            &pod_keys(),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "z", "image": "i"}])
        );
    }

    #[test]
    fn map_directives() {
        let obj = json!({"spec": {"a": 1, "b": {"c": 2}}, "metadata": {"labels": {"x": "1"}}});
        let out = smp(
            obj.clone(),
            json!({"spec": {"$patch": "replace", "z": 9, "n": null}}),
            &pod_keys(),
        );
        assert_eq!(out["spec"], json!({"z": 9}));
        let out = smp(
            obj.clone(),
            json!({"spec": {"b": {"$patch": "delete"}}}),
            &pod_keys(),
        );
        assert_eq!(out["spec"], json!({"a": 1, "b": {}}));
        let mut t = obj;
        let err = strategic_merge_patch(&mut t, &json!({"spec": {"$patch": "merge"}}), &pod_keys())
            .expect_err("must fail");
        assert_eq!(err.status_code(), 500);
        assert!(
            err.to_string()
                .starts_with("unknown patch type: merge in map:"),
            "{err}"
        );
        let err = strategic_merge_patch(
            &mut t,
            &json!({"spec": {"containers": [{"$patch": "merge"}]}}),
            &pod_keys(),
        );
        // The live object has no containers: the directive item is dropped, no error.
        assert!(err.is_ok());
    }

    #[test]
    fn merge_directive_in_list_is_refused() {
        let mut t = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = strategic_merge_patch(
            &mut t,
            &json!({"spec": {"containers": [{"$patch": "merge"}]}}),
            &pod_keys(),
        )
        .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "merging lists cannot yet be specified in the patch"
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "a"}]}}),
            "unchanged on error"
        );
    }

    #[test]
    fn finalizers_union_and_delete_from_primitive_list() {
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            obj.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            &pod_keys(),
        );
        // Server-only "a" keeps its place before the patch's "b"; "c" follows.
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            obj.clone(),
            json!({"metadata": {"finalizers": ["c"]}}),
            &pod_keys(),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        let out = smp(
            obj.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zz"]}}),
            &pod_keys(),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        // Deleting from a list the object does not have adds nothing.
        let out = smp(
            json!({"metadata": {}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            &pod_keys(),
        );
        assert_eq!(out, json!({"metadata": {}}));
        let mut t = obj;
        let err = strategic_merge_patch(
            &mut t,
            &json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}}),
            &pod_keys(),
        )
        .expect_err("must fail");
        assert_eq!(err.to_string(), "invalid patch format of primitive list");
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn set_element_order_with_server_only_items() {
        // apimachinery test "add map and delete map from merging list".
        let out = smp(
            json!({"mergingList": [{"name": "1"}, {"name": "2", "other": "b"}, {"name": "4", "other": "c"}]}),
            json!({
                "$setElementOrder/mergingList": [{"name": "2"}, {"name": "3"}],
                "mergingList": [{"name": "3"}, {"name": "1", "$patch": "delete"}],
            }),
            &test_keys(),
        );
        assert_eq!(
            out,
            json!({"mergingList": [{"name": "2", "other": "b"}, {"name": "4", "other": "c"}, {"name": "3"}]})
        );
    }

    #[test]
    fn set_element_order_adds_in_place() {
        // apimachinery test "add an item in a list and preserve order".
        let out = smp(
            json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2", "other": "b"}]}),
            json!({
                "$setElementOrder/mergingList": [{"name": "3"}, {"name": "1"}, {"name": "2"}],
                "mergingList": [{"name": "3", "value": "3"}],
            }),
            &test_keys(),
        );
        assert_eq!(
            out,
            json!({"mergingList": [
                {"name": "3", "value": "3"},
                {"name": "1", "other": "a"},
                {"name": "2", "value": "2", "other": "b"},
            ]})
        );
        // "add an item in a list of primitives and preserve order".
        let out = smp(
            json!({"mergingIntList": [1, 4, 2]}),
            json!({"$setElementOrder/mergingIntList": [3, 1, 2], "mergingIntList": [3]}),
            &test_keys(),
        );
        assert_eq!(out, json!({"mergingIntList": [3, 1, 4, 2]}));
    }

    #[test]
    fn set_element_order_reorders_only() {
        let out = smp(
            json!({"mergingList": [{"name": "a", "v": 1}, {"name": "b", "v": 2}]}),
            json!({"$setElementOrder/mergingList": [{"name": "b"}, {"name": "a"}]}),
            &test_keys(),
        );
        assert_eq!(
            out,
            json!({"mergingList": [{"name": "b", "v": 2}, {"name": "a", "v": 1}]})
        );
    }

    #[test]
    fn set_element_order_mismatch_is_an_error() {
        let mut t = json!({"mergingList": [{"name": "a"}]});
        let err = strategic_merge_patch(
            &mut t,
            &json!({
                "$setElementOrder/mergingList": [{"name": "a"}],
                "mergingList": [{"name": "b"}],
            }),
            &test_keys(),
        )
        .expect_err("must fail");
        assert!(
            err.to_string().starts_with("The order in patch list:"),
            "{err}"
        );
    }

    #[test]
    fn retain_keys() {
        let obj = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            obj.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            &MergeKeys::for_kind("apps/v1", "Deployment"),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut t = obj;
        let err = strategic_merge_patch(
            &mut t,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
            &MergeKeys::none(),
        )
        .expect_err("must fail");
        assert_eq!(err.to_string(), "invalid patch format of retainKeys");
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn missing_merge_key_is_an_internal_error() {
        let mut t = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = strategic_merge_patch(
            &mut t,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            &pod_keys(),
        )
        .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "map: map[image:x] does not contain declared merge key: name"
        );
        assert_eq!(err.status_code(), 500);
    }

    #[test]
    fn new_values_lose_nulls_and_directives() {
        let out = smp(
            json!({"spec": {}}),
            json!({"spec": {"containers": [
                {"name": "a", "env": null, "resources": {"limits": null}},
                {"name": "gone", "$patch": "delete"},
            ]}}),
            &pod_keys(),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "resources": {}}])
        );
    }

    #[test]
    fn service_ports_merge_by_port_number() {
        let keys = MergeKeys::for_kind("v1", "Service");
        let out = smp(
            json!({"spec": {"ports": [{"port": 80, "name": "http", "protocol": "TCP"}, {"port": 443, "name": "https"}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
            &keys,
        );
        assert_eq!(
            out["spec"]["ports"][0],
            json!({"port": 80, "name": "http", "protocol": "TCP", "targetPort": 8080})
        );
        assert_eq!(out["spec"]["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn type_changes_replace() {
        let out = smp(
            json!({"a": "x", "b": {"c": 1}}),
            json!({"a": {"y": null, "z": 1}, "b": "s"}),
            &MergeKeys::none(),
        );
        assert_eq!(out, json!({"a": {"z": 1}, "b": "s"}));
    }

    #[test]
    fn kubectl_client_side_apply_patch() {
        let keys = MergeKeys::for_kind("apps/v1", "Deployment");
        let live = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent"},
            {"name": "sidecar", "image": "side:1"},
        ]}}}});
        let out = smp(
            live,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}],
                "containers": [{"image": "nginx:1.26", "name": "nginx"}, {"$patch": "delete", "name": "sidecar"}],
            }}}}),
            &keys,
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "nginx", "image": "nginx:1.26", "imagePullPolicy": "IfNotPresent"}])
        );
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn rollout_restart_patch() {
        let keys = MergeKeys::for_kind("apps/v1", "Deployment");
        let out = smp(
            json!({"spec": {"template": {"metadata": {"labels": {"app": "x"}}}}}),
            json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}}),
            &keys,
        );
        assert_eq!(
            out["spec"]["template"]["metadata"],
            json!({"labels": {"app": "x"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}})
        );
    }

    #[test]
    fn conditions_merge_by_type() {
        let keys = MergeKeys::for_kind("v1", "Node");
        let out = smp(
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}]}}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &keys,
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}])
        );
    }

    #[test]
    fn bad_documents() {
        let mut t = json!({});
        assert_eq!(
            strategic_merge_patch(&mut t, &json!([1]), &MergeKeys::none())
                .expect_err("must fail")
                .status_code(),
            400
        );
        let mut t = json!({"spec": {"containers": [[1]]}});
        let err =
            strategic_merge_patch(&mut t, &json!({"spec": {"containers": [[2]]}}), &pod_keys())
                .expect_err("must fail");
        assert_eq!(err.to_string(), "lists of lists are not supported");
        assert_eq!(err.status_code(), 422);
    }
}
