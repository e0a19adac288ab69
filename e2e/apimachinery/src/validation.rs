//! Object-name and metadata validation with the messages kube-apiserver (1.33) returns,
//! and the field error type those messages travel in.
//!
//! Keeps the hand-written equivalents of apimachinery's regular expressions (qualified
//! names, label values, RFC 1123 labels and subdomains, RFC 1035 labels) so no regex is
//! compiled anywhere. Exposes [`validate_name`], [`generate_name`], [`validate_metadata`],
//! [`FieldError`] (with the `field: Type: value: detail` rendering and the
//! `Status.details.causes[].reason` of the real server) and [`invalid_message`], the
//! `Kind "name" is invalid: ...` message of a 422 response.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// Longest label value and name part of a qualified name.
pub const QUALIFIED_NAME_MAX_LEN: usize = 63;
/// Longest RFC 1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest RFC 1123 / RFC 1035 label.
pub const DNS_LABEL_MAX_LEN: usize = 63;
/// Largest total size (keys plus values) of an object's annotations.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Length of the random suffix `generateName` adds.
pub const GENERATED_SUFFIX_LEN: usize = 5;
/// Longest prefix `generateName` keeps.
pub const MAX_GENERATED_PREFIX_LEN: usize = 63 - GENERATED_SUFFIX_LEN;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

// === Field errors ===

/// The kind of a field error; `reason()` is the `StatusCause.reason` of the real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Internal,
    TypeInvalid,
}

impl FieldErrorKind {
    /// The cause type (`FieldValueInvalid`, `FieldValueRequired`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// The words the message starts with (`Invalid value`, `Required value`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
        }
    }

    /// Kinds whose message never shows the offending value.
    fn omits_value(self) -> bool {
        matches!(
            self,
            Self::Required | Self::Forbidden | Self::TooLong | Self::Internal
        )
    }
}

/// One validation failure: `field` is the JSON path (`metadata.name`,
/// `spec.ports[0].nodePort`), `value` the offending value already rendered the way Go
/// prints it (strings quoted, numbers bare), `message` the detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub value: Option<String>,
    pub message: String,
}

impl FieldError {
    /// An error with a pre-rendered value.
    pub fn new(
        field: impl Into<String>,
        kind: FieldErrorKind,
        value: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind,
            value,
            message: message.into(),
        }
    }

    /// `Invalid value: "<value>": <message>`.
    pub fn invalid(field: impl Into<String>, value: &str, message: impl Into<String>) -> Self {
        Self::new(
            field,
            FieldErrorKind::Invalid,
            Some(go_quote(value)),
            message,
        )
    }

    /// `Invalid value: <number>: <message>`.
    pub fn invalid_int(field: impl Into<String>, value: i64, message: impl Into<String>) -> Self {
        Self::new(
            field,
            FieldErrorKind::Invalid,
            Some(value.to_string()),
            message,
        )
    }

    /// `Invalid value: []string{"a", "b"}: <message>`.
    pub fn invalid_strings(
        field: impl Into<String>,
        values: &[String],
        message: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            FieldErrorKind::Invalid,
            Some(go_string_slice(values)),
            message,
        )
    }

    /// `Required value: <message>`.
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Required, None, message)
    }

    /// `Forbidden: <message>`.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Forbidden, None, message)
    }

    /// `Duplicate value: "<value>"`.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self::new(
            field,
            FieldErrorKind::Duplicate,
            Some(go_quote(value)),
            String::new(),
        )
    }

    /// `Unsupported value: "<value>": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let message = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(
            field,
            FieldErrorKind::NotSupported,
            Some(go_quote(value)),
            message,
        )
    }

    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            field,
            FieldErrorKind::TooLong,
            None,
            format!("may not be more than {max} bytes"),
        )
    }

    /// The cause type of `Status.details.causes[]`.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// The message without the field (`Invalid value: "x": detail`): what the real
    /// server puts in `Status.details.causes[].message`.
    pub fn body(&self) -> String {
        let mut s = String::from(self.kind.label());
        if !self.kind.omits_value()
            && let Some(v) = &self.value
        {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

impl std::error::Error for FieldError {}

/// The message of a 422 Invalid status: `Deployment.apps "x" is invalid: <errors>`,
/// the errors deduplicated and, when more than one, bracketed and comma-joined.
pub fn invalid_message(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let name = go_quote(name);
    if errors.is_empty() {
        return format!("{qualified} {name} is invalid");
    }
    format!("{qualified} {name} is invalid: {}", aggregate(errors))
}

/// Go's `utilerrors.Aggregate` rendering of field errors.
pub fn aggregate(errors: &[FieldError]) -> String {
    let mut seen = BTreeSet::new();
    let mut msgs = Vec::with_capacity(errors.len());
    for e in errors {
        let m = e.to_string();
        if seen.insert(m.clone()) {
            msgs.push(m);
        }
    }
    if msgs.len() == 1 {
        msgs.remove(0)
    } else {
        format!("[{}]", msgs.join(", "))
    }
}

/// Go's `strconv.Quote`: double quotes, with `"` and `\` and control characters escaped.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#v` of a `[]string`.
pub fn go_string_slice(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

// === Character-level checks (no regex) ===

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
pub(crate) fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            is_alnum(f)
                && is_alnum(l)
                && b.iter()
                    .all(|&c| is_alnum(c) || c == b'-' || c == b'_' || c == b'.')
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            is_lower_alnum(f)
                && is_lower_alnum(l)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// RFC 1123 labels joined by dots.
fn matches_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(matches_dns1123_label)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            f.is_ascii_lowercase()
                && is_lower_alnum(l)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(e);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 alphanumerics, `-`, `_`, `.`. Returns the failure messages.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LEN)
        ));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// apimachinery's `IsValidLabelValue`.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(max_len_error(QUALIFIED_NAME_MAX_LEN));
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// apimachinery's `IsDNS1123Label`.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_LABEL_MAX_LEN {
        errs.push(max_len_error(DNS_LABEL_MAX_LEN));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// apimachinery's `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LEN));
    }
    if !matches_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// apimachinery's `IsDNS1035Label`.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_LABEL_MAX_LEN {
        errs.push(max_len_error(DNS_LABEL_MAX_LEN));
    }
    if !matches_dns1035_label(value) {
        errs.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// apimachinery's `IsValidPathSegmentName` (RBAC object names).
pub fn is_valid_path_segment_name(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if value.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

// === Names ===

/// How a resource's object names are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label (namespaces).
    Dns1123Label,
    /// RFC 1035 label (services: must start with a letter).
    Dns1035Label,
    /// Anything that is a safe URL path segment (RBAC roles and bindings).
    PathSegment,
    /// RFC 1123 subdomain (everything else, custom resources included).
    Dns1123Subdomain,
}

/// The name rule of a resource, by its plural name (`pods`, `services`, ...).
pub fn name_rule(resource: &str) -> NameRule {
    match resource {
        "namespaces" => NameRule::Dns1123Label,
        "services" => NameRule::Dns1035Label,
        "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings" => NameRule::PathSegment,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// The failure messages of `name` under the rules of `resource` (empty when valid).
pub fn name_errors(resource: &str, name: &str) -> Vec<String> {
    if name.is_empty() {
        return vec!["name or generateName is required".to_string()];
    }
    match name_rule(resource) {
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::PathSegment => is_valid_path_segment_name(name),
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
    }
}

/// Validates an object name of `resource` (its plural: `namespaces`, `services`, `pods`).
/// The error is the real detail message (several are joined by `; `); use
/// [`name_field_errors`] for one `metadata.name` cause per message.
pub fn validate_name(resource: &str, name: &str) -> Result<(), String> {
    let errs = name_errors(resource, name);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// The `metadata.name` field errors of a name, as the real server reports them.
pub fn name_field_errors(resource: &str, name: &str) -> Vec<FieldError> {
    if name.is_empty() {
        return vec![FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )];
    }
    name_errors(resource, name)
        .into_iter()
        .map(|m| FieldError::invalid("metadata.name", name, m))
        .collect()
}

/// The name `generateName: <prefix>` produces with the random suffix `rand5` (five
/// lowercase alphanumerics): the prefix is cut to 58 bytes so the result fits 63.
pub fn generate_name(prefix: &str, rand5: &str) -> String {
    let mut cut = prefix.len().min(MAX_GENERATED_PREFIX_LEN);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + rand5.len());
    out.push_str(&prefix[..cut]);
    out.push_str(rand5);
    out
}

// === Metadata ===

/// Validates `metadata` of an object the way `ValidateObjectMeta` does for the parts
/// that do not depend on the resource: label keys and values, annotation keys and
/// total size, finalizer names, owner references.
pub fn validate_metadata(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
        return errs;
    };
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        errs.extend(validate_labels(labels, "metadata.labels"));
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0usize;
        for (k, v) in annotations {
            for m in is_qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k, m));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                TOTAL_ANNOTATION_SIZE_LIMIT,
            ));
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(Value::as_array) {
        let names: Vec<String> = finalizers
            .iter()
            .map(|f| f.as_str().unwrap_or_default().to_string())
            .collect();
        for f in &names {
            for m in is_qualified_name(f) {
                errs.push(FieldError::invalid("metadata.finalizers", f, m));
            }
        }
        if names.iter().any(|f| f == "orphan") && names.iter().any(|f| f == "foregroundDeletion") {
            errs.push(FieldError::invalid_strings(
                "metadata.finalizers",
                &names,
                "finalizer orphan and foregroundDeletion cannot be both set",
            ));
        }
    }
    if let Some(owners) = meta.get("ownerReferences").and_then(Value::as_array) {
        errs.extend(validate_owner_references(owners));
    }
    errs
}

/// Label keys (qualified names) and values, reported against `field`.
pub fn validate_labels(labels: &serde_json::Map<String, Value>, field: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        for m in is_qualified_name(k) {
            errs.push(FieldError::invalid(field, k, m));
        }
        let v = v.as_str().unwrap_or_default();
        for m in is_valid_label_value(v) {
            errs.push(FieldError::invalid(field, v, m));
        }
    }
    errs
}

fn validate_owner_references(owners: &[Value]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut controllers = Vec::new();
    for (i, o) in owners.iter().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        let get = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default();
        let api_version = get("apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or_default();
        if version.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for (k, what) in [("kind", "kind"), ("name", "name"), ("uid", "uid")] {
            if get(k).is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.{k}"),
                    "",
                    format!("{what} must not be empty"),
                ));
            }
        }
        if o.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers.push(format!("{}/{}", get("kind"), get("name")));
        }
    }
    if controllers.len() > 1 {
        errs.push(FieldError::new(
            "metadata.ownerReferences",
            FieldErrorKind::Invalid,
            None,
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subdomain_names() {
        assert!(validate_name("pods", "web-0.example").is_ok());
        let err = validate_name("pods", "Foo_bar").expect_err("must fail");
        assert_eq!(
            err,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        for bad in ["-a", "a-", "a..b", "a.-b", ".a", "a.", "A"] {
            assert!(validate_name("configmaps", bad).is_err(), "{bad}");
        }
        assert!(validate_name("pods", &"a".repeat(253)).is_ok());
        let long = validate_name("pods", &"a".repeat(254)).expect_err("must fail");
        assert_eq!(long, "must be no more than 253 characters");
    }

    #[test]
    fn label_rules_for_namespaces_and_services() {
        assert!(validate_name("namespaces", "kube-system").is_ok());
        assert_eq!(
            validate_name("namespaces", "a.b").expect_err("must fail"),
            "must not contain dots"
        );
        assert!(validate_name("namespaces", &"a".repeat(64)).is_err());
        // Services are RFC 1035: a leading digit is refused, unlike namespaces.
        assert!(validate_name("namespaces", "1abc").is_ok());
        let err = validate_name("services", "1abc").expect_err("must fail");
        assert!(err.starts_with("a DNS-1035 label must consist"), "{err}");
        assert!(
            err.contains("(e.g. 'my-name',  or 'abc-123', regex"),
            "{err}"
        );
        assert!(validate_name("services", "kubernetes").is_ok());
    }

    #[test]
    fn path_segment_names_for_rbac() {
        assert!(validate_name("clusterroles", "system:controller:attachdetach").is_ok());
        assert_eq!(
            validate_name("roles", "..").expect_err("must fail"),
            "may not be '..'"
        );
        assert_eq!(
            validate_name("rolebindings", "a/b%c").expect_err("must fail"),
            "may not contain '/'; may not contain '%'"
        );
    }

    #[test]
    fn empty_name_is_required() {
        let errs = name_field_errors("pods", "");
        assert_eq!(
            errs[0].to_string(),
            "metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(errs[0].reason(), "FieldValueRequired");
    }

    #[test]
    fn field_error_rendering() {
        let e = name_field_errors("pods", "Foo_bar").remove(0);
        assert!(e.to_string().starts_with(
            "metadata.name: Invalid value: \"Foo_bar\": a lowercase RFC 1123 subdomain"
        ));
        assert_eq!(e.reason(), "FieldValueInvalid");
        let e = FieldError::invalid_int(
            "spec.ports[0].nodePort",
            8080,
            "provided port is not in the valid range. The range of valid ports is 30000-32767",
        );
        assert_eq!(
            e.to_string(),
            "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        let e = FieldError::not_supported("spec.type", "Foo", &["ClusterIP", "NodePort"]);
        assert_eq!(
            e.body(),
            "Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"NodePort\""
        );
        assert_eq!(
            FieldError::forbidden("spec.x", "may not be set").to_string(),
            "spec.x: Forbidden: may not be set"
        );
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn invalid_message_aggregates() {
        let a = FieldError::invalid("metadata.name", "X", "bad");
        let b = FieldError::required("spec.x", "");
        assert_eq!(
            invalid_message("apps", "Deployment", "d", std::slice::from_ref(&a)),
            "Deployment.apps \"d\" is invalid: metadata.name: Invalid value: \"X\": bad"
        );
        assert_eq!(
            invalid_message("", "Pod", "p", &[a.clone(), b, a]),
            "Pod \"p\" is invalid: [metadata.name: Invalid value: \"X\": bad, spec.x: Required value]"
        );
    }

    #[test]
    fn generated_names_fit() {
        assert_eq!(generate_name("web-", "abcde"), "web-abcde");
        let long = "x".repeat(80);
        let name = generate_name(&long, "abcde");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("xabcde"));
        // A multi-byte character straddling the cut is dropped, not split.
        let tricky = format!("{}é", "a".repeat(57));
        assert_eq!(
            generate_name(&tricky, "zzzzz"),
            format!("{}zzzzz", "a".repeat(57))
        );
    }

    #[test]
    fn qualified_names() {
        assert!(is_qualified_name("app.kubernetes.io/name").is_empty());
        assert!(is_qualified_name("a").is_empty());
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty"]
        );
        assert_eq!(is_qualified_name("a/b/c").len(), 1);
        assert!(is_qualified_name("a/b/c")[0].starts_with("a qualified name must consist"));
        let errs = is_qualified_name(&"a".repeat(64));
        assert_eq!(errs, vec!["name part must be no more than 63 characters"]);
        let errs = is_qualified_name("Example.com/x");
        assert!(errs[0].starts_with("prefix part a lowercase RFC 1123 subdomain"));
        let errs = is_qualified_name("x/");
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0], "name part must be non-empty");
    }

    #[test]
    fn metadata_labels_annotations_finalizers() {
        let obj = json!({"metadata": {
            "labels": {"app": "web", "bad key": "v", "ok": "-bad"},
            "annotations": {"Example.COM/Thing": "fine", "no//": "x"},
            "finalizers": ["kubernetes.io/pvc-protection", "plain", "bad/fin/x"],
        }});
        let errs = validate_metadata(&obj);
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "metadata.labels: Invalid value: \"bad key\": name part must consist"
            )),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string"
            )),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("metadata.annotations: Invalid value: \"no//\"")),
            "{msgs:?}"
        );
        assert!(
            !msgs.iter().any(|m| m.contains("Example.COM")),
            "annotation keys are case-insensitive: {msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("metadata.finalizers: Invalid value: \"bad/fin/x\"")),
            "{msgs:?}"
        );
        assert_eq!(errs.len(), 4, "{msgs:?}");
    }

    #[test]
    fn annotation_size_limit() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let obj = json!({"metadata": {"annotations": {"a": big}}});
        let errs = validate_metadata(&obj);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
        assert_eq!(errs[0].reason(), "FieldValueTooLong");
        let ok = json!({"metadata": {"annotations": {"a": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1)}}});
        assert!(validate_metadata(&ok).is_empty());
    }

    #[test]
    fn owner_references() {
        let obj = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "uid": "1", "controller": true},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "uid": "2", "controller": true},
            {"apiVersion": "v1", "kind": "", "name": "c", "uid": "3"},
        ]}});
        let msgs: Vec<String> = validate_metadata(&obj)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            msgs.contains(
                &"metadata.ownerReferences[2].kind: Invalid value: \"\": kind must not be empty"
                    .to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("Only one reference can have Controller set to true")),
            "{msgs:?}"
        );
    }
}
