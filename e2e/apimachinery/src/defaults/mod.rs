//! Static defaulting: the fields kube-apiserver 1.33 fills in when it decodes or
//! admits an object (`SetDefaults_*` of k8s.io/api plus the defaults of the admission
//! plugins every cluster runs: service account, default toleration seconds, priority).
//!
//! Exposes [`apply_defaults`] and, in `service_alloc`, the stateful [`ServiceAllocator`]
//! for cluster IPs and node ports (which also defaults `ipFamilyPolicy`/`ipFamilies`,
//! as those depend on the old object and the cluster's families). Only absent fields
//! are filled; running it twice changes nothing.

mod pod;
mod service_alloc;
mod service_spec;

use serde_json::{Map, Value, json};

pub use service_alloc::{AllocError, ServiceAllocator};

/// Fills in the defaults of a `kind` of `group` (`""` for core) in place.
pub fn apply_defaults(group: &str, kind: &str, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (group, kind) {
        ("", "Pod") => pod::pod(root),
        ("", "PodTemplate") => {
            if let Some(t) = object(root, "template") {
                pod::template(t);
            }
        }
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            if let Some(spec) = ensure(root, "spec") {
                set(spec, "replicas", json!(1));
                template_of(spec);
            }
        }
        ("", "Service") => service(root),
        ("", "Namespace") => namespace(root),
        ("", "Secret") => set(root, "type", json!("Opaque")),
        ("", "PersistentVolumeClaim") => pvc(root),
        ("", "PersistentVolume") => pv(root),
        ("", "Node") => node(root),
        ("", "Endpoints") => endpoints(root),
        ("apps", "Deployment") => deployment(root),
        ("apps", "DaemonSet") => daemon_set(root),
        ("apps", "StatefulSet") => stateful_set(root),
        ("batch", "Job") => {
            if let Some(spec) = ensure(root, "spec") {
                job(spec);
            }
        }
        ("batch", "CronJob") => cron_job(root),
        ("storage.k8s.io", "StorageClass") => {
            set(root, "reclaimPolicy", json!("Delete"));
            set(root, "volumeBindingMode", json!("Immediate"));
        }
        ("storage.k8s.io", "CSIDriver") => {
            if let Some(spec) = ensure(root, "spec") {
                csi_driver(spec);
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in objects_in(root, "ports") {
                set(p, "protocol", json!("TCP"));
                set(p, "name", json!(""));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for s in objects_in(root, "subjects") {
                rbac_subject(s);
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            if let Some(spec) = ensure(root, "spec") {
                network_policy(spec);
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set(root, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if let Some(spec) = ensure(root, "spec") {
                crd(spec);
            }
        }
        _ => {}
    }
}

// === Helpers ===

/// Sets `key` unless it holds a non-null value.
pub(crate) fn set(m: &mut Map<String, Value>, key: &str, v: Value) {
    match m.get(key) {
        None | Some(Value::Null) => {
            m.insert(key.to_string(), v);
        }
        Some(_) => {}
    }
}

/// The object at `key`, created empty when absent or null; `None` when the field
/// holds something else (validation refuses that object later).
pub(crate) fn ensure<'m>(
    m: &'m mut Map<String, Value>,
    key: &str,
) -> Option<&'m mut Map<String, Value>> {
    set(m, key, Value::Object(Map::new()));
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The object at `key`, if there is one.
pub(crate) fn object<'m>(
    m: &'m mut Map<String, Value>,
    key: &str,
) -> Option<&'m mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The objects of the list at `key`.
pub(crate) fn objects_in<'m>(
    m: &'m mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'m mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flat_map(|a| a.iter_mut())
        .filter_map(Value::as_object_mut)
}

pub(crate) fn str_of<'m>(m: &'m Map<String, Value>, key: &str) -> &'m str {
    m.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn template_of(spec: &mut Map<String, Value>) {
    if let Some(t) = object(spec, "template") {
        pod::template(t);
    }
}

// === Core ===

/// `ExternallyAccessible`: reachable from outside through node ports or external IPs.
pub(crate) fn externally_accessible(spec: &Map<String, Value>) -> bool {
    match str_of(spec, "type") {
        "LoadBalancer" | "NodePort" => true,
        "ClusterIP" | "" => spec
            .get("externalIPs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty()),
        _ => false,
    }
}

fn service(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let has_timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !has_timeout {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    for p in objects_in(spec, "ports") {
        set(p, "protocol", json!("TCP"));
        let target_unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if target_unset && let Some(port) = p.get("port").cloned() {
            p.insert("targetPort".into(), port);
        }
    }
    if externally_accessible(spec) {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    let svc_type = str_of(spec, "type").to_string();
    if matches!(svc_type.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if svc_type == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let Some(status) = ensure(root, "status") else {
        return;
    };
    set(status, "loadBalancer", json!({}));
    if svc_type == "LoadBalancer"
        && let Some(lb) = object(status, "loadBalancer")
    {
        for ing in objects_in(lb, "ingress") {
            if !str_of(ing, "ip").is_empty() {
                set(ing, "ipMode", json!("VIP"));
            }
        }
    }
}

fn namespace(root: &mut Map<String, Value>) {
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !name.is_empty()
        && let Some(labels) = ensure(root, "metadata").and_then(|m| ensure(m, "labels"))
    {
        labels.insert("kubernetes.io/metadata.name".into(), Value::String(name));
    }
    if let Some(spec) = ensure(root, "spec") {
        set(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = ensure(root, "status") {
        set(status, "phase", json!("Active"));
    }
}

pub(crate) fn pvc(root: &mut Map<String, Value>) {
    if let Some(spec) = ensure(root, "spec") {
        set(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = ensure(root, "status") {
        set(status, "phase", json!("Pending"));
    }
}

fn pv(root: &mut Map<String, Value>) {
    if let Some(spec) = ensure(root, "spec") {
        set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        set(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = ensure(root, "status") {
        set(status, "phase", json!("Pending"));
    }
}

fn node(root: &mut Map<String, Value>) {
    let Some(status) = object(root, "status") else {
        return;
    };
    if status.get("allocatable").is_none_or(Value::is_null)
        && let Some(cap) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status.insert("allocatable".into(), cap);
    }
}

fn endpoints(root: &mut Map<String, Value>) {
    for subset in objects_in(root, "subsets") {
        for p in objects_in(subset, "ports") {
            set(p, "protocol", json!("TCP"));
        }
    }
}

// === Workloads ===

fn rolling_update(strategy: &mut Map<String, Value>, defaults: &[(&str, Value)]) {
    set(strategy, "type", json!("RollingUpdate"));
    if str_of(strategy, "type") == "RollingUpdate"
        && let Some(ru) = ensure(strategy, "rollingUpdate")
    {
        for (k, v) in defaults {
            set(ru, k, v.clone());
        }
    }
}

fn deployment(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    set(spec, "replicas", json!(1));
    if let Some(strategy) = ensure(spec, "strategy") {
        rolling_update(
            strategy,
            &[("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
        );
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    template_of(spec);
}

fn daemon_set(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    if let Some(strategy) = ensure(spec, "updateStrategy") {
        rolling_update(
            strategy,
            &[("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
        );
    }
    set(spec, "revisionHistoryLimit", json!(10));
    template_of(spec);
}

fn stateful_set(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    set(spec, "podManagementPolicy", json!("OrderedReady"));
    if let Some(strategy) = ensure(spec, "updateStrategy") {
        rolling_update(strategy, &[("partition", json!(0))]);
    }
    if let Some(retention) = ensure(spec, "persistentVolumeClaimRetentionPolicy") {
        set(retention, "whenDeleted", json!("Retain"));
        set(retention, "whenScaled", json!("Retain"));
    }
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    for claim in objects_in(spec, "volumeClaimTemplates") {
        pvc(claim);
    }
    template_of(spec);
}

fn job(spec: &mut Map<String, Value>) {
    let unset = |m: &Map<String, Value>, k: &str| m.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    if unset(spec, "backoffLimit") {
        let limit = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        spec.insert("backoffLimit".into(), json!(limit));
    }
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    if unset(spec, "podReplacementPolicy") {
        let policy = if unset(spec, "podFailurePolicy") {
            "TerminatingOrFailed"
        } else {
            "Failed"
        };
        spec.insert("podReplacementPolicy".into(), json!(policy));
    }
    template_of(spec);
}

fn cron_job(root: &mut Map<String, Value>) {
    let Some(spec) = ensure(root, "spec") else {
        return;
    };
    set(spec, "concurrencyPolicy", json!("Allow"));
    set(spec, "suspend", json!(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(job_spec) = object(spec, "jobTemplate").and_then(|jt| ensure(jt, "spec")) {
        job(job_spec);
    }
}

// === Other groups ===

fn csi_driver(spec: &mut Map<String, Value>) {
    set(spec, "attachRequired", json!(true));
    set(spec, "podInfoOnMount", json!(false));
    set(spec, "storageCapacity", json!(false));
    set(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
    let modes_empty = spec
        .get("volumeLifecycleModes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if modes_empty {
        spec.insert("volumeLifecycleModes".into(), json!(["Persistent"]));
    }
    set(spec, "requiresRepublish", json!(false));
    set(spec, "seLinuxMount", json!(false));
}

fn rbac_subject(s: &mut Map<String, Value>) {
    if !str_of(s, "apiGroup").is_empty() {
        return;
    }
    match str_of(s, "kind") {
        "ServiceAccount" => {
            s.insert("apiGroup".into(), json!(""));
        }
        "User" | "Group" => {
            s.insert("apiGroup".into(), json!("rbac.authorization.k8s.io"));
        }
        _ => {}
    }
}

fn network_policy(spec: &mut Map<String, Value>) {
    for dir in ["ingress", "egress"] {
        for rule in objects_in(spec, dir) {
            for p in objects_in(rule, "ports") {
                set(p, "protocol", json!("TCP"));
            }
        }
    }
    let types_empty = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if types_empty {
        let egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

fn crd(spec: &mut Map<String, Value>) {
    if let Some(names) = ensure(spec, "names") {
        let kind = str_of(names, "kind").to_string();
        if !kind.is_empty() {
            set(names, "singular", json!(kind.to_lowercase()));
            set(names, "listKind", json!(format!("{kind}List")));
        }
    }
    if let Some(conversion) = ensure(spec, "conversion") {
        set(conversion, "strategy", json!("None"));
    }
}

#[cfg(test)]
mod alloc_tests;
#[cfg(test)]
mod tests;
