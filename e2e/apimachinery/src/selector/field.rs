//! Field selectors (`metadata.name=x,status.phase!=Running`), parsed like
//! `fields.ParseSelector` (terms split on unescaped `,`, values unescaped with `\\`,
//! `\,`, `\=`, no whitespace trimming) and matched against the object's JSON.
//!
//! A field path is resolved generically (`spec.nodeName`, `involvedObject.name`,
//! `type`); a missing field compares as `""`, booleans as `true`/`false`, with the few
//! field sets a real server computes differently (`spec.hostNetwork`,
//! `spec.unschedulable` default to `false`; an Event's `source` is `source.component`).
//! Which fields a resource supports is the caller's call: [`FieldSelector::fields`],
//! [`FieldSelector::check_supported`].

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::SelectorError;

/// `=`/`==` (both select equality) or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOp {
    Equals,
    NotEquals,
}

/// One `field op value` term; `value` is unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub op: FieldOp,
    pub value: String,
}

/// A parsed field selector; the empty one matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses the string form of `?fieldSelector=`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort_unstable();
        let mut terms = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(SelectorError::Field(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(rhs)?;
            terms.push(FieldTerm {
                field: field.to_string(),
                op,
                value,
            });
        }
        Ok(Self { terms })
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// The fields the selector uses, in term order (sorted), so the server can refuse
    /// unsupported ones.
    pub fn fields(&self) -> Vec<&str> {
        self.terms.iter().map(|t| t.field.as_str()).collect()
    }

    /// Refuses the first field not in `supported` with the real server's
    /// `field label not supported: <field>`.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .terms
            .iter()
            .find(|t| !supported.contains(&t.field.as_str()))
        {
            Some(t) => Err(SelectorError::UnsupportedField(t.field.clone())),
            None => Ok(()),
        }
    }

    /// The value an `=`/`==` term pins `field` to, if any (e.g. `metadata.name`).
    pub fn exact_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.op == FieldOp::Equals && t.field == field)
            .map(|t| t.value.as_str())
    }

    /// Whether the object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let have = field_value(obj, &t.field);
            match t.op {
                FieldOp::Equals => have == t.value,
                FieldOp::NotEquals => have != t.value,
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", t.field, escape_value(&t.value))?;
        }
        Ok(())
    }
}

/// The string a field selector compares for `path` (dotted) in `obj`.
pub fn field_value<'a>(obj: &'a Value, path: &str) -> Cow<'a, str> {
    let mut cur = Some(obj);
    for seg in path.split('.') {
        cur = cur.and_then(|v| v.get(seg));
    }
    match cur {
        Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
        Some(Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(Value::Object(o)) if path == "source" => Cow::Borrowed(
            o.get("component")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ),
        None | Some(Value::Null) if matches!(path, "spec.hostNetwork" | "spec.unschedulable") => {
            Cow::Borrowed("false")
        }
        _ => Cow::Borrowed(""),
    }
}

/// Splits on `,` not preceded by a backslash escape.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Finds the first operator (`!=`, `==`, `=`, tried in that order at each position).
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        if let Some(rhs) = rest.strip_prefix("!=") {
            return Some((&term[..i], FieldOp::NotEquals, rhs));
        }
        if let Some(rhs) = rest.strip_prefix("==") {
            return Some((&term[..i], FieldOp::Equals, rhs));
        }
        if let Some(rhs) = rest.strip_prefix('=') {
            return Some((&term[..i], FieldOp::Equals, rhs));
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(SelectorError::Field(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    )));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                // Go prints the rune with %v: its code point.
                return Err(SelectorError::Field(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )));
            }
            c => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::Field(
            "invalid field selector: invalid escape sequence: \\".to_string(),
        ));
    }
    Ok(out)
}

fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"nodeName": "node-1", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIP": "10.0.0.5"}
        })
    }

    #[test]
    fn empty_selects_everything() {
        let s = FieldSelector::parse("").expect("must succeed");
        assert!(s.is_everything());
        assert!(s.matches(&pod()));
        assert!(
            FieldSelector::parse(",")
                .expect("must succeed")
                .is_everything()
        );
    }

    #[test]
    fn equality_terms() {
        let p = pod();
        assert!(
            FieldSelector::parse("metadata.name=web-0")
                .expect("must succeed")
                .matches(&p)
        );
        assert!(
            FieldSelector::parse("metadata.name==web-0")
                .expect("must succeed")
                .matches(&p)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=web-0")
                .expect("must succeed")
                .matches(&p)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=node-1,status.phase!=Pending")
                .expect("must succeed")
                .matches(&p)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName=node-1,status.phase=Pending")
                .expect("must succeed")
                .matches(&p)
        );
    }

    #[test]
    fn missing_fields_compare_as_empty() {
        let p = pod();
        assert!(
            FieldSelector::parse("spec.nodeName!=")
                .expect("must succeed")
                .matches(&p)
        );
        let unscheduled = json!({"metadata": {"name": "x"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .expect("must succeed")
                .matches(&unscheduled)
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=false")
                .expect("must succeed")
                .matches(&unscheduled)
        );
        let node = json!({"spec": {"unschedulable": true}});
        assert!(
            FieldSelector::parse("spec.unschedulable=true")
                .expect("must succeed")
                .matches(&node)
        );
    }

    #[test]
    fn event_and_secret_fields() {
        let ev = json!({
            "involvedObject": {"kind": "Pod", "name": "web-0"},
            "reason": "Scheduled", "type": "Normal",
            "source": {"component": "default-scheduler"}
        });
        let s =
            FieldSelector::parse("involvedObject.kind=Pod,involvedObject.name=web-0,type=Normal")
                .expect("must succeed");
        assert!(s.matches(&ev));
        assert!(
            FieldSelector::parse("source=default-scheduler")
                .expect("must succeed")
                .matches(&ev)
        );
        let secret = json!({"type": "kubernetes.io/service-account-token"});
        assert!(
            FieldSelector::parse("type=kubernetes.io/service-account-token")
                .expect("must succeed")
                .matches(&secret)
        );
    }

    #[test]
    fn fields_and_support_check() {
        let s = FieldSelector::parse("status.phase=Running,metadata.name=a").expect("must succeed");
        assert_eq!(s.fields(), vec!["metadata.name", "status.phase"]);
        assert_eq!(s.exact_value("metadata.name"), Some("a"));
        assert!(
            s.check_supported(&["metadata.name", "status.phase"])
                .is_ok()
        );
        assert_eq!(
            s.check_supported(&["metadata.name"])
                .expect_err("must fail")
                .to_string(),
            "field label not supported: status.phase"
        );
    }

    #[test]
    fn malformed_selectors() {
        assert_eq!(
            FieldSelector::parse("metadata.name")
                .expect_err("must fail")
                .to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c")
                .expect_err("must fail")
                .to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse("a=b\\x")
                .expect_err("must fail")
                .to_string(),
            "invalid field selector: invalid escape sequence: \\x"
        );
        assert_eq!(
            FieldSelector::parse("a=b\\")
                .expect_err("must fail")
                .to_string(),
            "invalid field selector: invalid escape sequence: \\"
        );
        // No whitespace trimming: the field name keeps its space and matches nothing.
        let s = FieldSelector::parse("metadata.name =web-0").expect("must succeed");
        assert_eq!(s.fields(), vec!["metadata.name "]);
    }

    #[test]
    fn escapes_round_trip() {
        let s = FieldSelector::parse("metadata.name=a\\,b\\=c\\\\d").expect("must succeed");
        assert_eq!(s.terms()[0].value, "a,b=c\\d");
        assert!(s.matches(&json!({"metadata": {"name": "a,b=c\\d"}})));
        assert_eq!(s.to_string(), "metadata.name=a\\,b\\=c\\\\d");
        assert_eq!(
            FieldSelector::parse(&s.to_string()).expect("must succeed"),
            s
        );
    }

    #[test]
    fn not_equals_is_preferred_to_equals() {
        let s = FieldSelector::parse("a!=b").expect("must succeed");
        assert_eq!(s.terms()[0].op, FieldOp::NotEquals);
        assert_eq!(s.terms()[0].field, "a");
        let s = FieldSelector::parse("a==b").expect("must succeed");
        assert_eq!(
            (s.terms()[0].op, s.terms()[0].value.as_str()),
            (FieldOp::Equals, "b")
        );
    }
}
