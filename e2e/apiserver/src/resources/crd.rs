//! CustomResourceDefinitions: validating one, turning it into the [`ResourceDef`] that
//! serves its resource, and the status the CRD controllers write (NamesAccepted,
//! Established, acceptedNames, storedVersions).

use serde_json::{Value, json};

use super::{PrinterColumn, ResourceDef, StatusOnCreate};
use crate::error::Cause;

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn invalid(field: &str, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: message.into(),
        field: field.into(),
    }
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: field.into(),
    }
}

/// The field errors kube-apiserver reports for the parts of a CRD this server relies on.
pub fn validate(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = str_at(crd, &["spec", "group"]).unwrap_or("");
    let plural = str_at(crd, &["spec", "names", "plural"]).unwrap_or("");
    if group.is_empty() {
        causes.push(required("spec.group"));
    } else if !group.contains('.') {
        causes.push(invalid(
            "spec.group",
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        causes.push(required("spec.names.plural"));
    }
    if str_at(crd, &["spec", "names", "kind"])
        .unwrap_or("")
        .is_empty()
    {
        causes.push(required("spec.names.kind"));
    }
    let name = str_at(crd, &["metadata", "name"]).unwrap_or("");
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    match str_at(crd, &["spec", "scope"]) {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => causes.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
            ),
            field: "spec.scope".into(),
        }),
        None => causes.push(required("spec.scope")),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(invalid(
            "spec.versions",
            "Invalid value: \"null\": must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            causes.push(invalid(
                "spec.versions",
                format!(
                    "Invalid value: {}: must have exactly one version marked as storage version",
                    Value::Array(versions.clone())
                ),
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if v.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                causes.push(required(&format!("spec.versions[{i}].name")));
            }
        }
    }
    causes
}

/// The resource a (valid) CRD serves.
pub fn def_from_crd(crd: &Value) -> Option<ResourceDef> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let all_versions = spec.get("versions")?.as_array()?;
    let storage = all_versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))?;
    let storage_version = storage.get("name")?.as_str()?.to_string();
    let mut served: Vec<&Value> = all_versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .collect();
    served.sort_by(|a, b| {
        let va = a.get("name").and_then(Value::as_str).unwrap_or("");
        let vb = b.get("name").and_then(Value::as_str).unwrap_or("");
        super::version_priority(vb).cmp(&super::version_priority(va))
    });
    let versions: Vec<String> = served
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let has = |sub: &str| {
        all_versions
            .iter()
            .any(|v| v.pointer(&format!("/subresources/{sub}")).is_some())
    };
    let status = has("status");
    let preferred = served.first().copied().unwrap_or(storage);
    let printer_columns = preferred
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    Some(PrinterColumn {
                        name: c.get("name")?.as_str()?.to_string(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_string(),
                        json_path: c.get("jsonPath")?.as_str()?.to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let field_labels = preferred
        .get("selectableFields")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|s| s.get("jsonPath")?.as_str())
                .map(|p| p.trim_start_matches('.').to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(ResourceDef {
        group,
        versions,
        storage_version,
        plural,
        singular,
        kind,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        status,
        scale: has("scale"),
        custom: true,
        generation: true,
        status_on_create: if status {
            StatusOnCreate::Clear
        } else {
            StatusOnCreate::Keep
        },
        create_on_update: false,
        return_deleted: false,
        field_labels,
        printer_columns,
        view: super::View::Native,
    })
}

/// The status the CRD controllers settle on for an accepted, established CRD.
pub fn established_status(crd: &Value, now: &str) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if let Some(map) = accepted.as_object_mut() {
        if !map.contains_key("singular")
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            map.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if !map.contains_key("listKind")
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            map.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    let old = crd.get("status");
    let keep_time = |ty: &str| -> String {
        old.and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter().find(|c| {
                    c.get("type").and_then(Value::as_str) == Some(ty)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
            .and_then(|c| c.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .unwrap_or(now)
            .to_string()
    };
    let mut stored = strings(old.and_then(|s| s.get("storedVersions")));
    if let Some(def) = def_from_crd(crd)
        && !stored.contains(&def.storage_version)
    {
        stored.push(def.storage_version);
    }
    json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": keep_time("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": keep_time("Established")},
        ],
        "acceptedNames": accepted,
        "storedVersions": stored,
    })
}

/// The CRD status while its objects are being removed.
pub fn terminating_status(crd: &Value, now: &str) -> Value {
    let mut status = crd.get("status").cloned().unwrap_or(json!({}));
    let cond = json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress", "message": "CustomResource deletion is in progress", "lastTransitionTime": now});
    if let Some(map) = status.as_object_mut() {
        let conds = map.entry("conditions").or_insert_with(|| json!([]));
        if let Some(arr) = conds.as_array_mut() {
            arr.retain(|c| c.get("type").and_then(Value::as_str) != Some("Terminating"));
            arr.push(cond);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "selectableFields": [{"jsonPath": ".spec.color"}]},
                ]
            }
        })
    }

    #[test]
    fn crd_becomes_a_namespaced_resource_with_status() {
        assert!(validate(&crd()).is_empty());
        let def = def_from_crd(&crd()).expect("def");
        assert_eq!(def.versions, ["v1", "v1beta1"]);
        assert_eq!(def.storage_version, "v1");
        assert_eq!(def.singular, "widget");
        assert!(def.namespaced && def.status && def.custom);
        assert!(def.supports_field("spec.color"));
        assert!(!def.supports_field("spec.size"));
    }

    #[test]
    fn crd_name_must_be_plural_dot_group() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong.example.com");
        let causes = validate(&c);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.name");
    }

    #[test]
    fn established_status_names_and_conditions() {
        let s = established_status(&crd(), "2024-01-01T00:00:00Z");
        assert_eq!(s["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(s["conditions"][1]["type"], "Established");
        assert_eq!(s["storedVersions"], json!(["v1"]));
    }
}
