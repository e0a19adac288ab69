//! Sets of field paths in the `FieldsV1` notation of `metadata.managedFields`:
//! `f:<field>` for a field, `k:{"name":"x"}` for an associative-list item,
//! `v:<json>` for a set element, `i:<n>` for a list index, `.` for "the node itself".
//!
//! Keeps a tree keyed by those path elements; a node is a *member* when the path itself
//! is owned (a leaf, a list item, or an atomic value). Exposes parsing and rendering of
//! `fieldsV1`, the set algebra apply needs, and the `.spec.containers[name="x"].image`
//! rendering of paths used in conflict messages.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A set of field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    /// The path of this node is in the set.
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn child_mut(&mut self, pe: &str) -> &mut FieldSet {
        self.children.entry(pe.to_string()).or_default()
    }

    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Value::Object(m) = v {
            for (k, cv) in m {
                if k == "." {
                    set.member = true;
                    continue;
                }
                let mut child = FieldSet::from_fields_v1(cv);
                if cv.as_object().is_some_and(Map::is_empty) {
                    child.member = true;
                }
                if !child.is_empty() {
                    set.children.insert(k.clone(), child);
                }
            }
        }
        set
    }

    /// Renders the set (the root's own membership is not representable and ignored).
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.node_to_json());
            }
        }
        Value::Object(m)
    }

    fn node_to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.node_to_json());
            }
        }
        Value::Object(m)
    }

    /// Drops nodes that hold no member.
    pub fn prune(&mut self) {
        for c in self.children.values_mut() {
            c.prune();
        }
        self.children.retain(|_, c| !c.is_empty());
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.child_mut(k).union_with(c);
        }
    }

    /// Removes the members of `other` (exact paths only); true if any was here.
    pub fn subtract(&mut self, other: &FieldSet) -> bool {
        let mut removed = false;
        if other.member && self.member {
            self.member = false;
            removed = true;
        }
        for (k, oc) in &other.children {
            if let Some(c) = self.children.get_mut(k) {
                removed |= c.subtract(oc);
                if c.is_empty() {
                    self.children.remove(k);
                }
            }
        }
        removed
    }

    /// Removes every path at or below a member of `removed`; true if any was here.
    pub fn subtract_subtrees(&mut self, removed: &FieldSet) -> bool {
        let mut any = false;
        for (k, rc) in &removed.children {
            if rc.member {
                any |= self.children.remove(k).is_some();
            } else if let Some(c) = self.children.get_mut(k) {
                any |= c.subtract_subtrees(rc);
                if c.is_empty() {
                    self.children.remove(k);
                }
            }
        }
        any
    }

    /// The members present in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(oc) = other.children.get(k) {
                let i = c.intersection(oc);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Whether the set holds any member at or below this node.
    pub fn has_any(&self) -> bool {
        self.member || self.children.values().any(FieldSet::has_any)
    }

    /// The member paths, each as its path elements.
    pub fn member_paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        self.collect_paths(&mut cur, &mut out);
        out
    }

    fn collect_paths(&self, cur: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !cur.is_empty() {
            out.push(cur.clone());
        }
        for (k, c) in &self.children {
            cur.push(k.clone());
            c.collect_paths(cur, out);
            cur.pop();
        }
    }
}

/// `.spec.containers[name="nginx"].image` for a list of path elements.
pub(crate) fn path_string(pes: &[String]) -> String {
    let mut out = String::new();
    for pe in pes {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            out.push('[');
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(k) {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|name| {
                        let v = m.get(name).map(Value::to_string).unwrap_or_default();
                        format!("{name}={v}")
                    })
                    .collect();
                out.push_str(&parts.join(","));
            } else {
                out.push_str(k);
            }
            out.push(']');
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str("[=");
            out.push_str(v);
            out.push(']');
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push('[');
            out.push_str(i);
            out.push(']');
        } else {
            out.push_str(pe);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}},
            "f:metadata2": {}
        });
        let set = FieldSet::from_fields_v1(&v);
        assert!(set.children["f:metadata"].children["f:labels"].member);
        assert!(set.children["f:metadata2"].member);
        assert_eq!(set.to_fields_v1(), v);
    }

    #[test]
    fn algebra() {
        let a = FieldSet::from_fields_v1(
            &json!({"f:spec": {"f:a": {}, "f:b": {}, "f:c": {"f:d": {}}}}),
        );
        let b = FieldSet::from_fields_v1(&json!({"f:spec": {"f:b": {}, "f:c": {}}}));
        let i = a.intersection(&b);
        assert_eq!(i.to_fields_v1(), json!({"f:spec": {"f:b": {}}}));
        let mut s = a.clone();
        s.subtract(&b);
        assert_eq!(
            s.to_fields_v1(),
            json!({"f:spec": {"f:a": {}, "f:c": {"f:d": {}}}})
        );
        let mut t = a.clone();
        t.subtract_subtrees(&b);
        assert_eq!(t.to_fields_v1(), json!({"f:spec": {"f:a": {}}}));
        let mut u = b.clone();
        u.union_with(&a);
        assert_eq!(
            u.to_fields_v1(),
            json!({"f:spec": {"f:a": {}, "f:b": {}, "f:c": {".": {}, "f:d": {}}}})
        );
    }

    #[test]
    fn paths_render_like_structured_merge_diff() {
        let pes: Vec<String> = [
            "f:spec",
            "f:containers",
            "k:{\"name\":\"nginx\"}",
            "f:image",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(path_string(&pes), ".spec.containers[name=\"nginx\"].image");
        let pes: Vec<String> = ["f:spec", "f:ports", "k:{\"port\":80,\"protocol\":\"TCP\"}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(path_string(&pes), ".spec.ports[port=80,protocol=\"TCP\"]");
        let pes = vec![
            "f:metadata".to_string(),
            "f:finalizers".to_string(),
            "v:\"a\"".to_string(),
        ];
        assert_eq!(path_string(&pes), ".metadata.finalizers[=\"a\"]");
    }
}
