//! Small helpers over `serde_json::Value` shared by the modules: equality that treats
//! `80` and `80.0` alike (Go decodes both to the same number), the JSON type of a
//! value, Go's `%v` rendering for error messages, and path lookups.

use serde_json::{Map, Value};

/// The JSON type of a value, for "same type" checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub(crate) fn kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    }
}

/// Deep equality with numbers compared by value.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| loose_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| loose_eq(v, w)))
        }
        _ => a == b,
    }
}

/// [`loose_eq`] over optional values (two absent values are equal, as Go's `nil == nil`).
pub(crate) fn opt_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => loose_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Go's `%v` of a decoded JSON value: `map[k:v ...]`, `[a b]`, `<nil>`.
pub(crate) fn go_fmt(v: &Value) -> String {
    let mut out = String::new();
    write_go(v, &mut out);
    out
}

pub(crate) fn go_fmt_map(m: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_go_map(m, &mut out);
    out
}

fn write_go(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_go(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => write_go_map(m, out),
    }
}

fn write_go_map(m: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    out.push_str("map[");
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push(':');
        if let Some(v) = m.get(k) {
            write_go(v, out);
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value() {
        assert!(loose_eq(&json!(80), &json!(80.0)));
        assert!(loose_eq(&json!({"a": [1, 2]}), &json!({"a": [1.0, 2]})));
        assert!(!loose_eq(&json!(1), &json!("1")));
        assert!(opt_eq(None, None));
    }

    #[test]
    fn go_formatting() {
        assert_eq!(
            go_fmt(&json!({"name": "a", "b": [1, null, true]})),
            "map[b:[1 <nil> true] name:a]"
        );
    }
}
