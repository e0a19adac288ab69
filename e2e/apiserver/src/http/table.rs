//! `application/json;as=Table` answers for `kubectl get`: a `meta.k8s.io/v1` Table
//! with the Name column, the usual columns of common built-in kinds or a CRD's
//! additionalPrinterColumns (simple `.a.b` paths), and Age, each row carrying the
//! object's metadata as PartialObjectMetadata.

use serde_json::{Value, json};

use crate::ops::list::Page;
use crate::resources::ResourceDef;
use crate::store::Obj;

fn age(created: &str) -> String {
    let Ok(t) = created.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    match secs {
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn path_value(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

fn text(v: &Value, path: &str) -> Value {
    match path_value(v, path) {
        Value::Null => json!("<none>"),
        Value::String(s) if s.is_empty() => json!("<none>"),
        Value::String(s) => json!(s),
        other => json!(other.to_string()),
    }
}

fn count(v: &Value, path: &str) -> i64 {
    path_value(v, path).as_i64().unwrap_or(0)
}

fn joined(v: &Value, path: &str) -> Value {
    let items: Vec<String> = path_value(v, path)
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        json!("<none>")
    } else {
        json!(items.join(","))
    }
}

type Column = (&'static str, fn(&Value) -> Value);

fn pod_ready(v: &Value) -> Value {
    let total = path_value(v, "spec.containers")
        .as_array()
        .map_or(0, Vec::len);
    let ready = path_value(v, "status.containerStatuses")
        .as_array()
        .map_or(0, |a| {
            a.iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count()
        });
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(v: &Value) -> Value {
    let n: i64 = path_value(v, "status.containerStatuses")
        .as_array()
        .map_or(0, |a| {
            a.iter()
                .filter_map(|c| c.get("restartCount")?.as_i64())
                .sum()
        });
    json!(n)
}

fn service_ports(v: &Value) -> Value {
    let ports: Vec<String> = path_value(v, "spec.ports")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{port}:{np}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        json!("<none>")
    } else {
        json!(ports.join(","))
    }
}

fn external_ip(v: &Value) -> Value {
    let ingress: Vec<String> = path_value(v, "status.loadBalancer.ingress")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))?
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    if !ingress.is_empty() {
        return json!(ingress.join(","));
    }
    if path_value(v, "spec.type") == json!("LoadBalancer") {
        json!("<pending>")
    } else {
        json!("<none>")
    }
}

fn node_status(v: &Value) -> Value {
    let ready = path_value(v, "status.conditions")
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type") == Some(&json!("Ready")))
                .map(|c| c.get("status") == Some(&json!("True")))
        });
    json!(match ready {
        Some(true) => "Ready",
        Some(false) => "NotReady",
        None => "Unknown",
    })
}

/// The columns kube-apiserver prints for common built-in kinds (between Name and Age).
fn builtin_columns(def: &ResourceDef) -> &'static [Column] {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => &[("Status", |v| text(v, "status.phase"))],
        ("", "pods") => &[
            ("Ready", pod_ready),
            ("Status", |v| text(v, "status.phase")),
            ("Restarts", pod_restarts),
        ],
        ("", "services") => &[
            ("Type", |v| text(v, "spec.type")),
            ("Cluster-IP", |v| text(v, "spec.clusterIP")),
            ("External-IP", external_ip),
            ("Port(s)", service_ports),
        ],
        ("", "nodes") => &[("Status", node_status)],
        ("", "persistentvolumeclaims") => &[
            ("Status", |v| text(v, "status.phase")),
            ("Volume", |v| text(v, "spec.volumeName")),
            ("Capacity", |v| text(v, "status.capacity.storage")),
            ("Access Modes", |v| joined(v, "spec.accessModes")),
            ("StorageClass", |v| text(v, "spec.storageClassName")),
        ],
        ("", "persistentvolumes") => &[
            ("Capacity", |v| text(v, "spec.capacity.storage")),
            ("Access Modes", |v| joined(v, "spec.accessModes")),
            ("Reclaim Policy", |v| {
                text(v, "spec.persistentVolumeReclaimPolicy")
            }),
            ("Status", |v| text(v, "status.phase")),
            ("Claim", |v| {
                match (
                    path_value(v, "spec.claimRef.namespace"),
                    path_value(v, "spec.claimRef.name"),
                ) {
                    (Value::String(ns), Value::String(n)) => json!(format!("{ns}/{n}")),
                    _ => json!(""),
                }
            }),
            ("StorageClass", |v| text(v, "spec.storageClassName")),
        ],
        ("apps", "deployments") => &[
            ("Ready", |v| {
                json!(format!(
                    "{}/{}",
                    count(v, "status.readyReplicas"),
                    count(v, "spec.replicas")
                ))
            }),
            ("Up-to-date", |v| json!(count(v, "status.updatedReplicas"))),
            ("Available", |v| json!(count(v, "status.availableReplicas"))),
        ],
        ("storage.k8s.io", "storageclasses") => &[
            ("Provisioner", |v| text(v, "provisioner")),
            ("ReclaimPolicy", |v| text(v, "reclaimPolicy")),
            ("VolumeBindingMode", |v| text(v, "volumeBindingMode")),
        ],
        ("storage.k8s.io", "volumeattachments") => &[
            ("Attacher", |v| text(v, "spec.attacher")),
            ("PV", |v| text(v, "spec.source.persistentVolumeName")),
            ("Node", |v| text(v, "spec.nodeName")),
            ("Attached", |v| {
                json!(
                    path_value(v, "status.attached")
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                )
            }),
        ],
        _ => &[],
    }
}

fn row(def: &ResourceDef, obj: &Obj) -> Value {
    let v = &obj.value;
    let mut cells = vec![json!(obj.name())];
    for (_, cell) in builtin_columns(def) {
        cells.push(cell(v));
    }
    for c in &def.printer_columns {
        let cell = path_value(v, &c.json_path);
        cells.push(if c.type_ == "date" {
            cell.as_str()
                .map(age)
                .map(Value::from)
                .unwrap_or(Value::Null)
        } else {
            cell
        });
    }
    cells.push(json!(age(
        crate::meta::get_str(v, "creationTimestamp").unwrap_or("")
    )));
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": v.get("metadata").cloned().unwrap_or(json!({})),
        },
    })
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for (name, _) in builtin_columns(def) {
        cols.push(
            json!({"name": name, "type": "string", "format": "", "description": "", "priority": 0}),
        );
    }
    for c in &def.printer_columns {
        let type_ = if c.type_ == "date" {
            "string"
        } else {
            c.type_.as_str()
        };
        cols.push(json!({"name": c.name, "type": type_, "format": "", "description": "", "priority": c.priority}));
    }
    cols.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    cols
}

pub fn list_table(def: &ResourceDef, page: &Page) -> Value {
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let (Some(c), Some(m)) = (&page.continue_token, meta.as_object_mut()) {
        m.insert("continue".into(), json!(c));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(def),
        "rows": page.items.iter().map(|o| row(def, o)).collect::<Vec<_>>(),
    })
}

/// A one-row Table; watch events after the first carry no column definitions.
pub fn object_table(def: &ResourceDef, obj: &Obj, with_columns: bool) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": crate::meta::resource_version(&obj.value)},
        "columnDefinitions": if with_columns { columns(def) } else { Vec::new() },
        "rows": [row(def, obj)],
    })
}
