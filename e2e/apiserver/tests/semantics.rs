//! Object semantics through kube-rs, against a real HTTP server: conflicts, every
//! patch type, status subresource, finalizers, garbage collection, selectors,
//! pagination, generateName, namespaces.

mod common;

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchEvent,
    WatchParams,
};
use kube::core::Status;
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.to_string());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    common::within(await_condition(api.clone(), name, |o: Option<&K>| {
        o.is_none()
    }))
    .await
    .expect("watch");
}

fn owner(name: &str, uid: &str, block: bool) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid, "blockOwnerDeletion": block})
}

async fn client() -> (lab_apiserver::ApiServer, Client) {
    let s = common::start().await;
    let c = s.client().await;
    (s, c)
}

#[tokio::test]
async fn stale_update_conflicts_and_errors_are_statuses() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .expect("create");
    let e = api_err(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("exists"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, "configmaps \"a\" already exists");

    let mut second = first.clone();
    second.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let updated = cms
        .replace("a", &PostParams::default(), &second)
        .await
        .expect("update");
    assert_ne!(updated.resource_version(), first.resource_version());
    let e = api_err(
        cms.replace("a", &PostParams::default(), &second)
            .await
            .expect_err("stale"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // No resourceVersion: unconditional.
    second.metadata.resource_version = None;
    cms.replace("a", &PostParams::default(), &second)
        .await
        .expect("unconditional");

    let e = api_err(cms.get("nope").await.expect_err("missing"));
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "configmaps \"nope\" not found")
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let e = api_err(deploys.get("nope").await.expect_err("missing"));
    assert_eq!(e.message, "deployments.apps \"nope\" not found");
    let other_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "missing-ns");
    let e = api_err(
        other_ns
            .create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("no ns"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"missing-ns\" not found")
    );
    let e = api_err(
        cms.create(&PostParams::default(), &cm("Bad_Name", &[]))
            .await
            .expect_err("invalid"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message
            .starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name"),
        "{}",
        e.message
    );

    // One cluster-wide, increasing resourceVersion.
    let a: u64 = cms
        .get("a")
        .await
        .expect("get")
        .resource_version()
        .unwrap_or_default()
        .parse()
        .expect("int");
    let b = cms
        .create(&PostParams::default(), &cm("b", &[]))
        .await
        .expect("create b");
    assert!(
        b.resource_version()
            .unwrap_or_default()
            .parse::<u64>()
            .expect("int")
            > a
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_patch_type() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("p", &[("a", "1")]))
        .await
        .expect("create");
    let pp = PatchParams::default();
    let o = cms
        .patch("p", &pp, &Patch::Merge(json!({"data": {"m": "1"}})))
        .await
        .expect("merge");
    assert_eq!(
        o.data.as_ref().and_then(|d| d.get("m")).map(String::as_str),
        Some("1")
    );
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "2"}]))
            .expect("jp");
    let o = cms
        .patch("p", &pp, &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(
        o.data.as_ref().and_then(|d| d.get("j")).map(String::as_str),
        Some("2")
    );
    let o = cms
        .patch("p", &pp, &Patch::Strategic(json!({"data": {"s": "3"}})))
        .await
        .expect("strategic");
    assert_eq!(o.data.as_ref().map(|d| d.len()), Some(4));
    // A failing JSON patch test is rejected and changes nothing.
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "nope"}]))
            .expect("jp");
    let e = api_err(
        cms.patch("p", &pp, &Patch::<()>::Json(bad))
            .await
            .expect_err("test fails"),
    );
    assert_eq!(e.code, 422);
    // Patch of a missing object is 404; apply creates it.
    let e = api_err(
        cms.patch("missing", &pp, &Patch::Merge(json!({"data": {}})))
            .await
            .expect_err("404"),
    );
    assert_eq!(e.code, 404);
    let apply = PatchParams::apply("mgr-a");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"x": "1"}});
    let o = cms
        .patch("applied", &apply, &Patch::Apply(&body))
        .await
        .expect("apply creates");
    assert_eq!(
        o.data.as_ref().and_then(|d| d.get("x")).map(String::as_str),
        Some("1")
    );
    assert!(
        o.metadata.managed_fields.is_some(),
        "managedFields recorded"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_conflicts_and_force() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let body = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": v}});
    cms.patch(
        "ssa",
        &PatchParams::apply("alice"),
        &Patch::Apply(body("1")),
    )
    .await
    .expect("alice applies");
    let e = api_err(
        cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(body("2")))
            .await
            .expect_err("bob conflicts"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"alice\""),
        "{}",
        e.message
    );
    let o = cms
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(body("2")),
        )
        .await
        .expect("bob forces");
    assert_eq!(
        o.data.as_ref().and_then(|d| d.get("x")).map(String::as_str),
        Some("2")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn status_subresource_splits_spec_and_status() {
    let (server, client) = client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"replicas": 7}
    }))
    .expect("deployment");
    let created = deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status.as_ref().and_then(|s| s.replicas),
        None,
        "status dropped on create"
    );
    let o = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3}})),
        )
        .await
        .expect("main patch");
    assert_eq!(
        o.status.as_ref().and_then(|s| s.replicas),
        None,
        "main endpoint ignores status"
    );
    assert_eq!(o.metadata.generation, Some(1));
    let o = deploys
        .patch_status(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3}, "spec": {"replicas": 5}})),
        )
        .await
        .expect("status patch");
    assert_eq!(o.status.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(
        o.spec.as_ref().and_then(|s| s.replicas),
        Some(1),
        "status endpoint ignores spec"
    );
    let o = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(o.metadata.generation, Some(2));
    let got = deploys.get_status("d").await.expect("get status");
    assert_eq!(got.status.as_ref().and_then(|s| s.replicas), Some(3));
    let scale = deploys.get_scale("d").await.expect("scale");
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(2));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .expect("pod");
    let p = pods.create(&PostParams::default(), &p).await.expect("pod");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    let mut p = pods.get_status("p").await.expect("get");
    p.status.get_or_insert_with(Default::default).phase = Some("Running".into());
    let p = pods
        .replace_status("p", &PostParams::default(), &p)
        .await
        .expect("replace status");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    server.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut c = cm("f", &[]);
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c)
        .await
        .expect("create");
    let deleted = cms
        .delete("f", &DeleteParams::default())
        .await
        .expect("delete");
    let held = deleted.left().expect("object kept while finalizers remain");
    assert!(held.metadata.deletion_timestamp.is_some());
    let e = api_err(
        cms.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}),
            ),
        )
        .await
        .expect_err("no new finalizers while deleting"),
    );
    assert_eq!(e.code, 422);
    let mut watch = cms
        .watch(
            &WatchParams::default().fields("metadata.name=f"),
            &held.resource_version().unwrap_or_default(),
        )
        .await
        .expect("watch")
        .boxed();
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    let ev = common::within(watch.try_next())
        .await
        .expect("ok")
        .expect("event");
    assert!(matches!(ev, WatchEvent::Deleted(_)), "{ev:?}");
    assert!(cms.get_opt("f").await.expect("get").is_none());
    server.shutdown().await;
}

async fn family(cms: &Api<ConfigMap>) -> (ConfigMap, String) {
    let parent = cms
        .create(&PostParams::default(), &cm("parent", &[]))
        .await
        .expect("parent");
    let uid = parent.uid().expect("uid");
    for (name, block) in [("child-a", true), ("child-b", false)] {
        let mut c = cm(name, &[]);
        c.metadata.owner_references = Some(vec![
            serde_json::from_value(owner("parent", &uid, block)).expect("ref"),
        ]);
        cms.create(&PostParams::default(), &c).await.expect("child");
    }
    (parent, uid)
}

#[tokio::test]
async fn garbage_collection_background_foreground_orphan() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    family(&cms).await;
    cms.delete("parent", &DeleteParams::background())
        .await
        .expect("delete");
    gone(&cms, "child-a").await;
    gone(&cms, "child-b").await;

    family(&cms).await;
    let mut child = cms.get("child-a").await.expect("child");
    child.metadata.finalizers = Some(vec!["example.com/slow".into()]);
    cms.replace("child-a", &PostParams::default(), &child)
        .await
        .expect("hold child");
    let r = cms
        .delete("parent", &DeleteParams::foreground())
        .await
        .expect("delete");
    let p = r.left().expect("owner kept during foreground deletion");
    assert!(p.finalizers().contains(&"foregroundDeletion".to_string()));
    gone(&cms, "child-b").await;
    assert!(
        cms.get_opt("parent").await.expect("get").is_some(),
        "owner waits for blocking dependents"
    );
    cms.patch(
        "child-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release child");
    gone(&cms, "child-a").await;
    gone(&cms, "parent").await;

    family(&cms).await;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    cms.delete("parent", &dp).await.expect("delete");
    gone(&cms, "parent").await;
    let a = cms.get("child-a").await.expect("orphan kept");
    assert!(a.owner_references().is_empty(), "owner reference removed");
    server.shutdown().await;
}

#[tokio::test]
async fn selectors_and_pagination() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &PostParams::default(),
            &cm(&format!("c{i:02}"), &[("tier", tier)]),
        )
        .await
        .expect("create");
    }
    let even = cms
        .list(&ListParams::default().labels("tier=even"))
        .await
        .expect("list");
    assert_eq!(even.items.len(), 13);
    let set = cms
        .list(&ListParams::default().labels("tier in (odd),tier!=even"))
        .await
        .expect("list");
    assert_eq!(set.items.len(), 12);
    let byname = cms
        .list(&ListParams::default().fields("metadata.name=c03"))
        .await
        .expect("list");
    assert_eq!(byname.items.len(), 1);
    let e = api_err(
        cms.list(&ListParams::default().fields("data.k=v"))
            .await
            .expect_err("unsupported"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "field label not supported: data.k")
    );

    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    let first = cms.list(&lp).await.expect("page 1");
    let rv = first.metadata.resource_version.clone();
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    names.extend(first.items.iter().map(|c| c.name_any()));
    // Writes between pages do not show up: every page is of the same snapshot.
    cms.create(&PostParams::default(), &cm("zz-late", &[]))
        .await
        .expect("late");
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        lp = lp.continue_token(&t);
        let page = cms.list(&lp).await.expect("page");
        assert_eq!(page.metadata.resource_version, rv);
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_;
    }
    assert_eq!(names.len(), 25);
    assert!(!names.contains(&"zz-late".to_string()));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("p1", "n1"), ("p2", "n2")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})).expect("pod");
        pods.create(&PostParams::default(), &p).await.expect("pod");
    }
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("list");
    assert_eq!(
        on_n1.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["p1"]
    );
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending,spec.nodeName!=n1"))
        .await
        .expect("list");
    assert_eq!(pending.items.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn generate_name_and_services() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut c = cm("", &[]);
    c.metadata.name = None;
    c.metadata.generate_name = Some("gen-".into());
    let a = cms.create(&PostParams::default(), &c).await.expect("a");
    let b = cms.create(&PostParams::default(), &c).await.expect("b");
    assert!(
        a.name_any().starts_with("gen-") && a.name_any().len() == 9,
        "{}",
        a.name_any()
    );
    assert_ne!(a.name_any(), b.name_any());

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let s: Service = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let s = svcs.create(&PostParams::default(), &s).await.expect("svc");
    assert!(
        s.spec
            .and_then(|s| s.cluster_ip)
            .is_some_and(|ip| !ip.is_empty())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn namespace_deletion_empties_then_removes() {
    let (server, client) = client().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "doomed"}})).expect("ns");
    nss.create(&PostParams::default(), &ns).await.expect("ns");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("held");
    cms.create(&PostParams::default(), &cm("free", &[]))
        .await
        .expect("free");
    nss.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    let terminating = nss.get("doomed").await.expect("still there");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    gone(&cms, "free").await;
    let e = api_err(
        cms.create(&PostParams::default(), &cm("new", &[]))
            .await
            .expect_err("terminating"),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release");
    gone(&nss, "doomed").await;
    let e = api_err(
        nss.delete("default", &DeleteParams::default())
            .await
            .expect_err("immortal"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            403,
            "namespaces \"default\" is forbidden: this namespace may not be deleted"
        )
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watch_selector_transitions() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut w = cms
        .watch(&WatchParams::default().labels("app=x"), "0")
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &cm("t", &[("app", "y")]))
        .await
        .expect("create");
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "x"}}})),
    )
    .await
    .expect("now matches");
    let ev = common::within(w.try_next())
        .await
        .expect("ok")
        .expect("event");
    assert!(matches!(ev, WatchEvent::Added(_)), "{ev:?}");
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})),
    )
    .await
    .expect("stops matching");
    let ev = common::within(w.try_next())
        .await
        .expect("ok")
        .expect("event");
    assert!(matches!(ev, WatchEvent::Deleted(_)), "{ev:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn events_are_one_store_under_two_apis() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = cms
        .create(&PostParams::default(), &cm("subject", &[]))
        .await
        .expect("cm");
    let recorder = Recorder::new(client.clone(), Reporter::from("lab-test"));
    recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Tested".into(),
                note: Some("hello".into()),
                action: "Test".into(),
                secondary: None,
            },
            &target.object_ref(&()),
        )
        .await
        .expect("publish");
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let listed = core
        .list(&ListParams::default().fields("involvedObject.name=subject,reason=Tested"))
        .await
        .expect("core list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].message.as_deref(), Some("hello"));
    let new: Api<NewEvent> = Api::namespaced(client.clone(), "default");
    let all = new
        .list(&ListParams::default())
        .await
        .expect("events.k8s.io list");
    assert_eq!(all.items.len(), 1);
    assert_eq!(all.items[0].note.as_deref(), Some("hello"));
    assert_eq!(
        all.items[0]
            .regarding
            .as_ref()
            .and_then(|r| r.name.as_deref()),
        Some("subject")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn services_get_and_release_addresses() {
    let (server, client) = client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "x"}}
    }))
    .expect("svc");
    let created = svcs
        .create(&PostParams::default(), &lb)
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    let ip = spec.cluster_ip.clone().expect("cluster ip");
    assert!(ip.starts_with("10."), "{ip}");
    let node_port = spec
        .ports
        .as_ref()
        .and_then(|p| p[0].node_port)
        .expect("node port");
    assert!((30000..=32767).contains(&node_port));
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));

    // The same node port cannot be taken twice.
    let clash: Service = serde_json::from_value(json!({
        "metadata": {"name": "clash"},
        "spec": {"type": "NodePort", "ports": [{"port": 81, "nodePort": node_port}]}
    }))
    .expect("svc");
    let e = api_err(
        svcs.create(&PostParams::default(), &clash)
            .await
            .expect_err("taken"),
    );
    assert_eq!(e.code, 422, "{}", e.message);

    // Status goes through /status only.
    let o = svcs
        .patch_status(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
        )
        .await
        .expect("status");
    assert_eq!(
        o.status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .map(|i| i[0].ip.clone()),
        Some(Some("192.0.2.10".to_string()))
    );
    // Deleting releases the node port for reuse.
    svcs.delete("lb", &DeleteParams::default())
        .await
        .expect("delete");
    svcs.create(&PostParams::default(), &clash)
        .await
        .expect("port free again");
    server.shutdown().await;
}

#[tokio::test]
async fn pods_bind_evict_and_keep_their_spec() {
    use k8s_openapi::api::core::v1::Binding;
    use kube::api::EvictParams;
    let (server, client) = client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");
    let e = api_err(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
        )
        .await
        .expect_err("spec is immutable"),
    );
    assert_eq!(e.code, 422, "{}", e.message);
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "b"}]}})),
    )
    .await
    .expect("image may change");
    let binding: Binding = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}),
    )
    .expect("binding");
    let req = http::Request::post("/api/v1/namespaces/default/pods/p/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).expect("json"))
        .expect("request");
    client.request_text(req).await.expect("bind");
    let bound = pods.get("p").await.expect("get");
    assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    pods.evict("p", &EvictParams::default())
        .await
        .expect("evict");
    assert!(pods.get_opt("p").await.expect("get").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn cluster_scoped_owner_collects_namespaced_dependents() {
    use k8s_openapi::api::core::v1::Node;
    let (server, client) = client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(
        json!({"metadata": {"name": "n1"}, "status": {"capacity": {"cpu": "4"}}}),
    )
    .expect("node");
    let n = nodes
        .create(&PostParams::default(), &n)
        .await
        .expect("node");
    assert_eq!(
        n.status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("cpu").cloned())
            .map(|q| q.0),
        Some("4".to_string()),
        "nodes keep the status they are created with"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut c = cm("node-child", &[]);
    c.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": n.metadata.uid.clone().expect("uid")}))
            .expect("ref"),
    ]);
    cms.create(&PostParams::default(), &c).await.expect("child");
    let mut dangling = cm("dangling", &[]);
    dangling.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}))
            .expect("ref"),
    ]);
    cms.create(&PostParams::default(), &dangling)
        .await
        .expect("dangling child");
    gone(&cms, "dangling").await;
    assert!(cms.get_opt("node-child").await.expect("get").is_some());
    nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete node");
    gone(&cms, "node-child").await;
    server.shutdown().await;
}
