//! Small accessors for `metadata` of schemaless JSON objects, and the clock format
//! (RFC 3339, second precision) kube-apiserver stamps on objects.

use serde_json::{Map, Value};

/// `metadata.<field>` as a string.
pub fn get_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> &str {
    get_str(obj, "name").unwrap_or("")
}

pub fn namespace(obj: &Value) -> &str {
    get_str(obj, "namespace").unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    get_str(obj, "uid").unwrap_or("")
}

pub fn resource_version(obj: &Value) -> &str {
    get_str(obj, "resourceVersion").unwrap_or("")
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// `metadata` as a mutable map, created when absent or not an object.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = match obj.as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta.as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    }
}

pub fn set(obj: &mut Value, field: &str, value: Value) {
    meta_mut(obj).insert(field.to_string(), value);
}

pub fn remove(obj: &mut Value, field: &str) -> Option<Value> {
    obj.get_mut("metadata")?.as_object_mut()?.remove(field)
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    strings(obj.pointer("/metadata/finalizers"))
}

pub fn set_finalizers(obj: &mut Value, finalizers: &[String]) {
    if finalizers.is_empty() {
        remove(obj, "finalizers");
    } else {
        set(obj, "finalizers", Value::from(finalizers.to_vec()));
    }
}

/// The `ownerReferences` entries.
pub fn owner_refs(obj: &Value) -> &[Value] {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn owner_uids(obj: &Value) -> Vec<String> {
    owner_refs(obj)
        .iter()
        .filter_map(|r| r.get("uid")?.as_str().map(str::to_string))
        .collect()
}

pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The same object with `apiVersion` and `kind` set and placed first.
pub fn with_type(obj: Value, api_version: &str, kind: &str) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from(kind));
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if k != "apiVersion" && k != "kind" {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// Now, as kube-apiserver writes timestamps: `2006-01-02T15:04:05Z`.
pub fn now() -> String {
    timestamp(jiff::Timestamp::now())
}

/// `t` as kube-apiserver writes timestamps (second precision, UTC).
pub fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn with_type_puts_type_first() {
        let v = with_type(json!({"metadata": {}, "kind": "X"}), "v1", "Pod");
        let s = serde_json::to_string(&v).expect("serialize");
        assert!(s.starts_with(r#"{"apiVersion":"v1","kind":"Pod""#), "{s}");
    }

    #[test]
    fn timestamps_are_second_precision_utc() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
    }
}
