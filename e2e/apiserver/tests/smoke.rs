//! The core through kube-rs: CRUD on typed objects, watch, CRD served, status subresource.

mod common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

#[tokio::test]
async fn configmap_crud_and_watch() {
    let server = common::start().await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "a", "labels": {"app": "x"}},
        "data": {"k": "v"}
    }))
    .expect("cm");
    let created = common::within(cms.create(&PostParams::default(), &cm))
        .await
        .expect("create");
    assert_eq!(created.metadata.name.as_deref(), Some("a"));
    assert!(created.metadata.uid.is_some());
    let got = cms.get("a").await.expect("get");
    assert_eq!(
        got.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("v")
    );
    let list = cms
        .list(&ListParams::default().labels("app=x"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let first = common::within(events.try_next())
        .await
        .expect("ok")
        .expect("event");
    assert!(matches!(first, watcher::Event::Init));
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .expect("patch");
    loop {
        match common::within(events.try_next())
            .await
            .expect("ok")
            .expect("event")
        {
            watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) => {
                if cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("k"))
                    .map(String::as_str)
                    == Some("w")
                {
                    break;
                }
            }
            _ => continue,
        }
    }
    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = cms.get("a").await.expect_err("gone");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
    server.shutdown().await;
}

#[tokio::test]
async fn crd_is_served_with_status() {
    let server = common::start().await;
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                          "subresources": {"status": {}}}]
        }
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        "widgets.example.com",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    common::within(established).await.expect("established");
    let gvk = kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ar);
    let w: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 1}, "status": {"ready": true}
    }))
    .expect("widget");
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    assert!(
        created.data.get("status").is_none(),
        "status dropped on create"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let patched = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 9}})),
        )
        .await
        .expect("status patch");
    assert_eq!(patched.data["status"]["ready"], true);
    assert_eq!(patched.data["spec"]["size"], 1);
    assert_eq!(patched.metadata.generation, Some(1));
    let pods: Api<Pod> = Api::namespaced(client, "default");
    assert_eq!(
        pods.list(&ListParams::default())
            .await
            .expect("pods")
            .items
            .len(),
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn crd_versions_cluster_scope_and_deletion() {
    let server = common::start().await;
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "gizmos.example.com"},
        "spec": {
            "group": "example.com", "scope": "Cluster",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "categories": ["all"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]
        }
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    common::within(kube::runtime::wait::await_condition(
        crds.clone(),
        "gizmos.example.com",
        kube::runtime::wait::conditions::is_crd_established(),
    ))
    .await
    .expect("established");
    let api = |v: &str| {
        let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "example.com",
            v,
            "Gizmo",
        ));
        Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar)
    };
    let g: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1beta1", "kind": "Gizmo", "metadata": {"name": "g1"}, "spec": {"x": 1}
    }))
    .expect("gizmo");
    let created = api("v1beta1")
        .create(&PostParams::default(), &g)
        .await
        .expect("create via v1beta1");
    assert_eq!(
        created.types.as_ref().map(|t| t.api_version.as_str()),
        Some("example.com/v1beta1")
    );
    assert!(created.metadata.namespace.is_none());
    let as_v1 = api("v1").get("g1").await.expect("get via v1");
    assert_eq!(
        as_v1.types.as_ref().map(|t| t.api_version.as_str()),
        Some("example.com/v1")
    );
    assert_eq!(as_v1.data["spec"]["x"], 1);
    // No status subresource declared: strategic merge is refused for custom resources.
    let e = api("v1")
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"x": 2}})),
        )
        .await
        .expect_err("415");
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 415),
        "{e:?}"
    );

    crds.delete("gizmos.example.com", &DeleteParams::default())
        .await
        .expect("delete crd");
    common::within(kube::runtime::wait::await_condition(
        crds.clone(),
        "gizmos.example.com",
        |o: Option<&CustomResourceDefinition>| o.is_none(),
    ))
    .await
    .expect("crd gone");
    let e = api("v1")
        .get("g1")
        .await
        .expect_err("resource no longer served");
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 404),
        "{e:?}"
    );
    server.shutdown().await;
}
