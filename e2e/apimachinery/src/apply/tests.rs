//! Behaviour of server-side apply and managed-fields tracking, through the public
//! functions the API server calls.

use serde_json::{Value, json};

use super::*;

fn deploy(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": image}]}
            }
        }
    })
}

fn keys() -> MergeKeys {
    MergeKeys::for_kind("apps/v1", "Deployment")
}

fn entries(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or_default().to_string(),
                        e["operation"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fields_of(obj: &Value, manager: &str, op: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|e| e["manager"] == manager && e["operation"] == op)
                .map(|e| e["fieldsV1"].clone())
        })
        .unwrap_or(Value::Null)
}

/// Simulates the server storing the object (it stamps the time).
fn store(mut obj: Value) -> Value {
    stamp_managed_fields_time(&mut obj, "2024-01-01T00:00:00Z");
    obj
}

#[test]
fn create_by_apply_records_the_applied_fields() {
    let out = server_side_apply(None, &deploy(2, "nginx:1"), "kubectl", false, &keys())
        .expect("must succeed");
    assert_eq!(out["spec"]["replicas"], 2);
    assert_eq!(entries(&out), vec![("kubectl".into(), "Apply".into())]);
    let mf = &out["metadata"]["managedFields"][0];
    assert_eq!(mf["apiVersion"], "apps/v1");
    assert_eq!(mf["fieldsType"], "FieldsV1");
    assert!(mf.get("time").is_none(), "the server stamps the time");
    assert_eq!(
        mf["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}
                }
            }
        })
    );
}

#[test]
fn reapplying_the_same_config_changes_nothing() {
    let live = store(
        server_side_apply(None, &deploy(2, "nginx:1"), "kubectl", false, &keys())
            .expect("must succeed"),
    );
    let again = server_side_apply(
        Some(&live),
        &deploy(2, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    assert_eq!(again, live);
}

#[test]
fn conflicting_appliers_and_force() {
    let live = store(
        server_side_apply(None, &deploy(2, "nginx:1"), "alice", false, &keys())
            .expect("must succeed"),
    );
    let err = server_side_apply(Some(&live), &deploy(3, "nginx:1"), "bob", false, &keys())
        .expect_err("must fail");
    assert_eq!(err.status_code(), 409);
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    let ApplyError::Conflict { conflicts } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(conflicts[0].manager, "alice");
    assert_eq!(conflicts[0].field, ".spec.replicas");

    let forced = server_side_apply(Some(&live), &deploy(3, "nginx:1"), "bob", true, &keys())
        .expect("must succeed");
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(
        fields_of(&forced, "alice", "Apply")["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    assert!(
        fields_of(&forced, "bob", "Apply")["f:spec"]
            .get("f:replicas")
            .is_some()
    );
    // Both still own the image they agree on.
    assert!(fields_of(&forced, "alice", "Apply")["f:spec"]["f:template"].is_object());
}

#[test]
fn equal_values_are_shared_without_conflict() {
    let live = store(
        server_side_apply(None, &deploy(2, "nginx:1"), "alice", false, &keys())
            .expect("must succeed"),
    );
    let out = server_side_apply(Some(&live), &deploy(2, "nginx:1"), "bob", false, &keys())
        .expect("must succeed");
    assert_eq!(entries(&out).len(), 2);
    assert_eq!(
        fields_of(&out, "alice", "Apply"),
        fields_of(&out, "bob", "Apply")
    );
}

#[test]
fn several_conflicts_are_grouped_by_manager() {
    let live = store(
        server_side_apply(None, &deploy(2, "nginx:1"), "alice", false, &keys())
            .expect("must succeed"),
    );
    let err = server_side_apply(Some(&live), &deploy(3, "nginx:2"), "bob", false, &keys())
        .expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"nginx\"].image"
    );
}

#[test]
fn fields_no_longer_applied_are_removed() {
    let mut cfg = deploy(2, "nginx:1");
    cfg["metadata"]["labels"]["tier"] = json!("front");
    cfg["spec"]["paused"] = json!(true);
    let live =
        store(server_side_apply(None, &cfg, "kubectl", false, &keys()).expect("must succeed"));
    assert_eq!(live["metadata"]["labels"]["tier"], "front");
    let out = server_side_apply(
        Some(&live),
        &deploy(2, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    assert!(out["metadata"]["labels"].get("tier").is_none());
    assert!(out["spec"].get("paused").is_none());
    assert_eq!(out["metadata"]["labels"]["app"], "web");
    // Identity fields are never touched.
    assert_eq!(out["metadata"]["name"], "web");
}

#[test]
fn fields_owned_by_another_manager_survive_removal() {
    let mut cfg = deploy(2, "nginx:1");
    cfg["spec"]["paused"] = json!(true);
    let live =
        store(server_side_apply(None, &cfg, "kubectl", false, &keys()).expect("must succeed"));
    // Another applier also sets paused: shared.
    let shared = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"paused": true}});
    let live = store(
        server_side_apply(Some(&live), &shared, "ops", false, &keys()).expect("must succeed"),
    );
    let out = server_side_apply(
        Some(&live),
        &deploy(2, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    assert_eq!(out["spec"]["paused"], true);
}

#[test]
fn removed_list_items_and_kept_items_with_foreign_fields() {
    let mut two = deploy(1, "nginx:1");
    two["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "nginx", "image": "nginx:1"},
        {"name": "sidecar", "image": "side:1"},
    ]);
    let live =
        store(server_side_apply(None, &two, "kubectl", false, &keys()).expect("must succeed"));
    let out = server_side_apply(
        Some(&live),
        &deploy(1, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["nginx"]);

    // Another manager adds an env var to the sidecar: dropping the sidecar keeps it
    // with that manager's field (and its key), without the image only kubectl owned.
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][1]["env"] =
        json!([{"name": "X", "value": "1"}]);
    record_update(Some(&live), &mut edited, "editor");
    let edited = store(edited);
    let out = server_side_apply(
        Some(&edited),
        &deploy(1, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    let containers = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(containers.len(), 2);
    assert_eq!(
        containers[1],
        json!({"name": "sidecar", "env": [{"name": "X", "value": "1"}]})
    );
}

#[test]
fn update_managers_conflict_too() {
    let live = store(
        server_side_apply(None, &deploy(2, "nginx:1"), "kubectl", false, &keys())
            .expect("must succeed"),
    );
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(Some(&live), &mut scaled, "hpa");
    let scaled = store(scaled);
    assert!(
        fields_of(&scaled, "kubectl", "Apply")["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    assert_eq!(
        fields_of(&scaled, "hpa", "Update"),
        json!({"f:spec": {"f:replicas": {}}})
    );
    let err = server_side_apply(
        Some(&scaled),
        &deploy(2, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"hpa\" using apps/v1 at 2024-01-01T00:00:00Z: .spec.replicas"
    );
    // Dropping replicas from the config leaves it to the hpa.
    let mut cfg = deploy(2, "nginx:1");
    cfg["spec"].as_object_mut().map(|s| s.remove("replicas"));
    let out =
        server_side_apply(Some(&scaled), &cfg, "kubectl", false, &keys()).expect("must succeed");
    assert_eq!(out["spec"]["replicas"], 5);
}

#[test]
fn objects_without_managed_fields_belong_to_before_first_apply() {
    let mut live = deploy(2, "nginx:1");
    live["metadata"]["uid"] = json!("u1");
    let err = server_side_apply(
        Some(&live),
        &deploy(4, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect_err("must fail");
    assert!(
        err.to_string()
            .contains("conflict with \"before-first-apply\" using apps/v1"),
        "{err}"
    );
    let ok = server_side_apply(
        Some(&live),
        &deploy(2, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("must succeed");
    assert_eq!(ok["metadata"]["uid"], "u1");
}

#[test]
fn applied_config_may_not_carry_managed_fields() {
    let mut cfg = deploy(1, "x");
    cfg["metadata"]["managedFields"] = json!([]);
    let err = server_side_apply(None, &cfg, "m", false, &keys()).expect_err("must fail");
    assert_eq!(err.to_string(), "metadata.managedFields must be nil");
    assert_eq!(err.status_code(), 400);
}

#[test]
fn record_update_on_create_and_update() {
    let mut cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "d", "labels": {"a": "1"}},
        "data": {"k": "v"}
    });
    record_update(None, &mut cm, "kubectl-create");
    assert_eq!(
        fields_of(&cm, "kubectl-create", "Update"),
        json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
    );
    let cm = store(cm);
    let mut edited = cm.clone();
    edited["data"]["k"] = json!("w");
    edited["data"]["n"] = json!("new");
    edited["metadata"]["labels"]
        .as_object_mut()
        .map(|l| l.remove("a"));
    record_update(Some(&cm), &mut edited, "kubectl-edit");
    assert_eq!(
        fields_of(&edited, "kubectl-create", "Update"),
        json!({"f:data": {}, "f:metadata": {"f:labels": {}}})
    );
    assert_eq!(
        fields_of(&edited, "kubectl-edit", "Update"),
        json!({"f:data": {"f:k": {}, "f:n": {}}})
    );
    assert!(edited["metadata"]["managedFields"][1].get("time").is_none());
    assert_eq!(
        edited["metadata"]["managedFields"][0]["time"],
        "2024-01-01T00:00:00Z"
    );
}

#[test]
fn record_update_keeps_entries_when_the_client_omits_them() {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    record_update(None, &mut cm, "creator");
    let cm = store(cm);
    let mut put = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    record_update(Some(&cm), &mut put, "other");
    assert_eq!(
        put["metadata"]["managedFields"],
        cm["metadata"]["managedFields"]
    );
    // [{}] resets them.
    let mut reset = put.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    record_update(Some(&cm), &mut reset, "other");
    assert!(reset["metadata"].get("managedFields").is_none());
}

#[test]
fn record_update_leaves_a_fresh_apply_result_alone() {
    let applied = server_side_apply(None, &deploy(1, "nginx:1"), "kubectl", false, &keys())
        .expect("must succeed");
    let mut obj = applied.clone();
    record_update(None, &mut obj, "kubectl");
    assert_eq!(obj, applied);
}

#[test]
fn status_subresource_entries() {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}});
    record_update(None, &mut pod, "creator");
    let pod = store(pod);
    let mut with_status = pod.clone();
    with_status["status"] =
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    record_update_subresource(Some(&pod), &mut with_status, "kubelet", "status");
    let e = with_status["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["manager"] == "kubelet").cloned())
        .unwrap_or_default();
    assert_eq!(e["subresource"], "status");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}, "f:phase": {}}})
    );
}

#[test]
fn finalizers_are_a_set() {
    let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["a"]}});
    let keys = MergeKeys::for_kind("v1", "ConfigMap");
    let live = store(server_side_apply(None, &base, "one", false, &keys).expect("must succeed"));
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["b"]}});
    let out =
        store(server_side_apply(Some(&live), &other, "two", false, &keys).expect("must succeed"));
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
    assert_eq!(
        fields_of(&out, "two", "Apply"),
        json!({"f:metadata": {"f:finalizers": {"v:\"b\"": {}}}})
    );
    // "one" stops applying its finalizer: it goes, "b" stays.
    let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let out = server_side_apply(Some(&out), &none, "one", false, &keys).expect("must succeed");
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
}

#[test]
fn service_ports_are_keyed_by_port_and_protocol() {
    let keys = MergeKeys::for_kind("v1", "Service");
    let svc = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}
    });
    let out = server_side_apply(None, &svc, "m", false, &keys).expect("must succeed");
    let f = fields_of(&out, "m", "Apply");
    let ports = f["f:spec"]["f:ports"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        ports.contains_key("k:{\"port\":53,\"protocol\":\"TCP\"}"),
        "{ports:?}"
    );
    assert!(
        ports.contains_key("k:{\"port\":53,\"protocol\":\"UDP\"}"),
        "{ports:?}"
    );
}

#[test]
fn emptied_maps_disappear_with_their_last_field() {
    let mut cfg = deploy(1, "nginx:1");
    cfg["metadata"]["annotations"] = json!({"team": "storage"});
    let live = store(server_side_apply(None, &cfg, "kubectl", false, &keys()).expect("apply"));
    let out = server_side_apply(
        Some(&live),
        &deploy(1, "nginx:1"),
        "kubectl",
        false,
        &keys(),
    )
    .expect("apply");
    assert!(out["metadata"].get("annotations").is_none(), "{out}");
}

#[test]
fn a_stamped_apply_entry_does_not_hide_later_updates() {
    let live = store(
        server_side_apply(None, &deploy(1, "nginx:1"), "ctl", false, &keys()).expect("apply"),
    );
    let mut edited = live.clone();
    edited["spec"]["paused"] = json!(true);
    record_update(Some(&live), &mut edited, "ctl");
    assert_eq!(
        fields_of(&edited, "ctl", "Update"),
        json!({"f:spec": {"f:paused": {}}})
    );
    assert_eq!(entries(&edited).len(), 2);
}
