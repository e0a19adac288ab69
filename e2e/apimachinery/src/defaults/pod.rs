//! Pod defaulting: `SetDefaults_PodSpec`, `SetDefaults_Container` and friends for pods
//! and pod templates, plus what admission adds to a created Pod (service account,
//! not-ready/unreachable tolerations, priority) and the initial status with its QoS
//! class.

use serde_json::{Map, Value, json};

use super::{ensure, object, objects_in, set, str_of};

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// A Pod object (`metadata`, `spec`, `status`).
pub(super) fn pod(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    pod_spec(spec);
    for list in ["containers", "initContainers"] {
        for c in objects_in(spec, list) {
            requests_from_limits(c);
        }
    }
    set(spec, "enableServiceLinks", json!(true));
    set(spec, "serviceAccountName", json!("default"));
    let sa = str_of(spec, "serviceAccountName").to_string();
    set(spec, "serviceAccount", json!(sa));
    if str_of(spec, "priorityClassName").is_empty() {
        set(spec, "priority", json!(0));
    }
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default_tolerations(spec);
    let qos = qos_class(spec);
    if let Some(status) = ensure(root, "status") {
        set(status, "phase", json!("Pending"));
        set(status, "qosClass", json!(qos));
    }
}

/// A pod template (`metadata`, `spec`) inside a workload.
pub(super) fn template(t: &mut Map<String, Value>) {
    if let Some(spec) = ensure(t, "spec") {
        pod_spec(spec);
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for list in CONTAINER_LISTS {
        for c in objects_in(spec, list) {
            container(c, host_network);
        }
    }
    for v in objects_in(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    if str_of(c, "imagePullPolicy").is_empty() {
        let policy = pull_policy(str_of(c, "image"));
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    for p in objects_in(c, "ports") {
        set(p, "protocol", json!("TCP"));
        if host_network {
            let host_port_unset = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0;
            if host_port_unset && let Some(cp) = p.get("containerPort").cloned() {
                p.insert("hostPort".into(), cp);
            }
        }
    }
    for e in objects_in(c, "env") {
        if let Some(field_ref) = object(e, "valueFrom").and_then(|vf| object(vf, "fieldRef")) {
            set(field_ref, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = object(c, probe) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(get) = object(p, "httpGet") {
                set(get, "path", json!("/"));
                set(get, "scheme", json!("HTTP"));
            }
        }
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (digests too).
pub(crate) fn pull_policy(image: &str) -> &'static str {
    if image.is_empty() || image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn volume(v: &mut Map<String, Value>) {
    if v.keys().all(|k| k == "name") {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = object(v, source) {
            set(s, "defaultMode", json!(420));
        }
    }
}

fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(resources) = object(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if let Some(requests) = ensure(resources, "requests") {
        for (k, v) in limits {
            set(requests, &k, v);
        }
    }
}

/// Adds `node.kubernetes.io/not-ready` and `unreachable` NoExecute tolerations for 300s
/// unless the pod already tolerates them (the DefaultTolerationSeconds plugin).
fn default_tolerations(spec: &mut Map<String, Value>) {
    let mut list = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tolerates = |list: &[Value], key: &str| {
        list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or_default();
            let op = t
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute")
                && (tkey == key || (tkey.is_empty() && op == "Exists"))
        })
    };
    let mut changed = false;
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(&list, key) {
            list.push(json!({
                "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300
            }));
            changed = true;
        }
    }
    if changed {
        spec.insert("tolerations".into(), Value::Array(list));
    }
}

/// `Guaranteed`, `Burstable` or `BestEffort`, from the cpu and memory requests and
/// limits of the regular and init containers (`GetPodQOS`).
fn qos_class(spec: &Map<String, Value>) -> &'static str {
    let mut requests = [0f64; 2];
    let mut limits = [0f64; 2];
    let mut any = false;
    let mut guaranteed = true;
    for list in ["containers", "initContainers"] {
        let Some(cs) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for c in cs {
            let res = c.get("resources");
            let mut found_limits = [false; 2];
            for (i, name) in ["cpu", "memory"].into_iter().enumerate() {
                let q = |kind: &str| {
                    res.and_then(|r| r.get(kind))
                        .and_then(|m| m.get(name))
                        .and_then(quantity)
                        .filter(|v| *v != 0.0)
                };
                if let Some(r) = q("requests") {
                    requests[i] += r;
                    any = true;
                }
                if let Some(l) = q("limits") {
                    limits[i] += l;
                    found_limits[i] = true;
                    any = true;
                }
            }
            if !found_limits.iter().all(|f| *f) {
                guaranteed = false;
            }
        }
    }
    if !any {
        return "BestEffort";
    }
    if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A resource quantity (`500m`, `1Gi`, `2`, `1e3`) as a number.
pub(crate) fn quantity(v: &Value) -> Option<f64> {
    if let Some(n) = v.as_f64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let base: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(base * mult)
}
