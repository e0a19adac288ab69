//! Server-side apply and managed-fields tracking, simplified from structured-merge-diff
//! but with the same outcomes: who owns which field, conflicts, and the removal of
//! fields an applier stops applying.
//!
//! Exposes [`server_side_apply`] (an `application/apply-patch+yaml` PATCH),
//! [`record_update`] / [`record_update_subresource`] (the `Update` entry every other
//! write records), [`stamp_managed_fields_time`] (entries this crate touched carry no
//! `time`; the server stamps them), [`ApplyError`] and [`FieldConflict`].
//!
//! Ownership is kept in `metadata.managedFields` in the real `FieldsV1` format.
//! Entries are identified by manager, operation and subresource.

mod fieldset;
mod walk;

use std::fmt;

use serde_json::{Map, Value};

use crate::patch::MergeKeys;
use fieldset::{FieldSet, path_string};
use walk::{Mode, diff_objects, merge, object_set, prune};

/// The manager that owns the fields of an object that had no managed fields before its
/// first apply.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// One field another manager owns and the apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldConflict {
    /// The manager owning the field.
    pub manager: String,
    /// The field, as `.spec.replicas` or `.spec.containers[name="app"].image`.
    pub field: String,
    /// The status cause message: `conflict with "kubectl" using apps/v1`.
    pub message: String,
}

/// Why an apply was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// Fields owned by other managers would change (409 unless forced). `Display` is
    /// the real `Apply failed with N conflicts: ...` message.
    Conflict { conflicts: Vec<FieldConflict> },
    /// The configuration cannot be applied (422): a list item without its key, ...
    Invalid(String),
    /// The request is malformed (400): managed fields in the configuration, ...
    BadRequest(String),
}

impl ApplyError {
    /// The HTTP status the real server answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Conflict { .. } => 409,
            Self::Invalid(_) => 422,
            Self::BadRequest(_) => 400,
        }
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::BadRequest(m) => f.write_str(m),
            Self::Conflict { conflicts } => {
                if let [c] = conflicts.as_slice() {
                    return write!(
                        f,
                        "Apply failed with 1 conflict: {}: {}",
                        c.message, c.field
                    );
                }
                write!(f, "Apply failed with {} conflicts: ", conflicts.len())?;
                let mut managers: Vec<&FieldConflict> = Vec::new();
                for c in conflicts {
                    if !managers.iter().any(|m| m.message == c.message) {
                        managers.push(c);
                    }
                }
                managers.sort_by(|a, b| a.manager.cmp(&b.manager));
                let mut lines = Vec::new();
                for m in managers {
                    let who = m
                        .message
                        .strip_prefix("conflict with ")
                        .unwrap_or(&m.message);
                    lines.push(format!("conflicts with {who}:"));
                    for c in conflicts.iter().filter(|c| c.message == m.message) {
                        lines.push(format!("- {}", c.field));
                    }
                }
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for ApplyError {}

// === Managed fields entries ===

#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    time: Option<String>,
    set: FieldSet,
    /// The stored JSON while the entry is unchanged (written back as is).
    raw: Option<Value>,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// structured-merge-diff's `printManager`.
    fn describe(&self) -> String {
        let mut s = crate::validation::go_quote(&self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(
                " with subresource {}",
                crate::validation::go_quote(&self.subresource)
            ));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
            if let Some(t) = &self.time {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    }

    fn into_json(self) -> Value {
        if let Some(raw) = self.raw {
            return raw;
        }
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager));
        m.insert("operation".into(), Value::String(self.operation));
        m.insert("apiVersion".into(), Value::String(self.api_version));
        if let Some(t) = self.time {
            m.insert("time".into(), Value::String(t));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource));
        }
        Value::Object(m)
    }
}

fn managed_fields(obj: &Value) -> Option<&Vec<Value>> {
    obj.get("metadata")?.get("managedFields")?.as_array()
}

fn parse_entries(list: &[Value]) -> Vec<Entry> {
    let s = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    list.iter()
        .filter(|e| {
            e.get("fieldsType")
                .and_then(Value::as_str)
                .unwrap_or("FieldsV1")
                == "FieldsV1"
        })
        .map(|e| Entry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            api_version: s(e, "apiVersion"),
            subresource: s(e, "subresource"),
            time: e.get("time").and_then(Value::as_str).map(str::to_string),
            set: e
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
            raw: Some(e.clone()),
        })
        .collect()
}

/// Writes entries back sorted like the real server (Apply before Update, oldest
/// first, entries without a time last), dropping empty ones.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| match (&a.time, &b.time) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.into_iter().map(Entry::into_json).collect()),
        );
    }
}

fn api_version(obj: &Value) -> String {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn keys_for(obj: &Value) -> MergeKeys {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    MergeKeys::for_kind(&api_version(obj), kind)
}

// === Apply ===

/// Server-side apply of `applied` by `manager` onto `live` (`None` creates). Returns
/// the new object with `metadata.managedFields` updated; the new or changed `Apply`
/// entry has no `time` (see [`stamp_managed_fields_time`]). Fields other managers own
/// whose value would change are conflicts unless `force`, which moves them to
/// `manager`; fields `manager` applied before and no longer applies are removed when no
/// other manager owns them.
///
/// Status handling is the caller's: like the real main-resource endpoint, strip
/// `status` from `applied` (or apply it through the status subresource) first.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    keys: &MergeKeys,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::BadRequest(
            "apply patch must be a JSON or YAML object".into(),
        ));
    }
    if applied
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApplyError::BadRequest(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let new_set = object_set(applied, keys, Mode::Strict)?;

    let empty = Value::Object(Map::new());
    let live_obj = live.unwrap_or(&empty);
    let mut entries = match managed_fields(live_obj) {
        Some(list) if !list.is_empty() => parse_entries(list),
        _ if live.is_some() => {
            let set = object_set(live_obj, keys, Mode::Lenient)?;
            vec![Entry {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: "Update".into(),
                api_version: api_version(live_obj),
                subresource: String::new(),
                time: None,
                set,
                raw: None,
            }]
        }
        _ => Vec::new(),
    };

    let mine = entries.iter().position(|e| e.is(manager, "Apply", ""));
    let last_set = mine.map(|i| entries[i].set.clone()).unwrap_or_default();
    let mut others = FieldSet::default();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != mine {
            others.union_with(&e.set);
        }
    }

    let mut merged = live_obj.clone();
    if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    merge(&mut merged, applied, "", keys)?;
    prune(&mut merged, &last_set, &new_set, &others, "", keys, &[]);

    let d = diff_objects(live, &merged, keys);

    let mut conflicts = Vec::new();
    let mut lost: Vec<(usize, FieldSet)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        let clash = e.set.intersection(&d.changed);
        if clash.is_empty() {
            continue;
        }
        for pes in clash.member_paths() {
            conflicts.push(FieldConflict {
                manager: e.manager.clone(),
                field: path_string(&pes),
                message: format!("conflict with {}", e.describe()),
            });
        }
        lost.push((i, clash));
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| {
            a.manager
                .cmp(&b.manager)
                .then_with(|| a.field.cmp(&b.field))
        });
        return Err(ApplyError::Conflict { conflicts });
    }
    for (i, clash) in lost {
        if entries[i].set.subtract(&clash) {
            entries[i].raw = None;
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != mine && e.set.subtract_subtrees(&d.removed) {
            e.raw = None;
        }
    }
    let entry = Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version(applied),
        subresource: String::new(),
        time: None,
        set: new_set,
        raw: None,
    };
    match mine {
        Some(i) => {
            let unchanged =
                entries[i].set == entry.set && entries[i].api_version == entry.api_version;
            if unchanged && d.changed.is_empty() && d.removed.is_empty() {
                // A no-op apply keeps its timestamp.
            } else {
                entries[i] = entry;
            }
        }
        None => entries.push(entry),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

// === Update ===

/// Records the `Update` entry of `manager` for an ordinary create (`old` = `None`),
/// update or patch: the fields that changed become `manager`'s and leave other
/// managers. Cheap: one walk over both objects.
///
/// Like the real server: managed fields absent (or `[]`) in `new` are carried over
/// from `old`; `[{}]` resets them; a result of [`server_side_apply`] is left alone.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str) {
    record_update_subresource(old, new, manager, "");
}

/// [`record_update`] for a write through a subresource (`status`, `scale`).
pub fn record_update_subresource(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
) {
    let old_list = old.and_then(managed_fields);
    let (client_list, fresh_apply, reset) = match managed_fields(new) {
        Some(list) => {
            let differs = old_list != Some(list);
            // A result of server_side_apply: its Apply entry has no time yet and the
            // managed fields differ from the stored ones.
            let fresh_apply = differs
                && list.iter().any(|e| {
                    e.get("manager").and_then(Value::as_str) == Some(manager)
                        && e.get("operation").and_then(Value::as_str) == Some("Apply")
                        && e.get("time").is_none()
                });
            let reset = list.len() == 1 && list[0].as_object().is_some_and(Map::is_empty);
            (differs && !list.is_empty(), fresh_apply, reset)
        }
        None => (false, false, false),
    };
    if fresh_apply {
        return;
    }
    if reset {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }

    let keys = keys_for(new);
    let d = diff_objects(old, new, &keys);
    if d.changed.is_empty() && d.removed.is_empty() {
        if !client_list && managed_fields(new) != old_list {
            let carried = old_list.cloned();
            set_managed_fields(new, carried.map(Value::Array));
        }
        return;
    }
    let source = if client_list {
        managed_fields(new)
    } else {
        old_list
    };
    let mut entries = source.map(|l| parse_entries(l)).unwrap_or_default();
    for e in entries.iter_mut() {
        if !e.is(manager, "Update", subresource) {
            let lost = e.set.subtract(&d.changed) | e.set.subtract_subtrees(&d.removed);
            if lost {
                e.raw = None;
            }
        }
    }
    let idx = match entries
        .iter()
        .position(|e| e.is(manager, "Update", subresource))
    {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version(new),
                subresource: subresource.to_string(),
                time: None,
                set: FieldSet::default(),
                raw: None,
            });
            entries.len() - 1
        }
    };
    let own = &mut entries[idx];
    let before = own.set.clone();
    own.set.subtract_subtrees(&d.removed);
    own.set.union_with(&d.changed);
    own.set.prune();
    if own.set != before {
        own.time = None;
        own.api_version = api_version(new);
        own.raw = None;
    }
    write_entries(new, entries);
}

fn set_managed_fields(obj: &mut Value, list: Option<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    match list {
        Some(l) => {
            meta.insert("managedFields".into(), l);
        }
        None => {
            meta.remove("managedFields");
        }
    }
}

/// Sets `time` on every managed-fields entry that has none (the ones this crate just
/// created or changed). `now` is RFC 3339 (`2024-05-01T10:00:00Z`).
pub fn stamp_managed_fields_time(obj: &mut Value, now: &str) {
    let Some(list) = obj
        .get_mut("metadata")
        .and_then(|m| m.get_mut("managedFields"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for e in list {
        if let Some(m) = e.as_object_mut()
            && !m.contains_key("time")
        {
            m.insert("time".into(), Value::String(now.to_string()));
        }
    }
}

#[cfg(test)]
mod tests;
