//! Watches through kube-rs: reflectors that resume after a forced 410, streaming
//! lists, bookmarks, timeouts, and watch-dropping faults.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use lab_apiserver::ApiServerConfig;
use serde_json::json;

fn cm(name: &str, app: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}})).expect("cm")
}

#[tokio::test]
async fn reflector_recovers_from_expired_resource_version() {
    let server = common::start_with(ApiServerConfig {
        watch_cache_events: 3,
        ..ApiServerConfig::default()
    })
    .await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("watched-0", "x"))
        .await
        .expect("create");

    let (reader, writer) = reflector::store();
    // No bookmarks and a selector that other writes do not match: the watcher's
    // resourceVersion stays old while the history moves on.
    let cfg = watcher::Config::default()
        .labels("app=x")
        .disable_bookmarks();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(cms.clone(), cfg)).map_err(move |e| {
        let _ = err_tx.send(e.to_string());
    });
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    common::within(reader.wait_until_ready())
        .await
        .expect("ready");
    assert_eq!(reader.state().len(), 1);

    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("noise-{i}"), "y"))
            .await
            .expect("noise");
    }
    cms.create(&PostParams::default(), &cm("watched-1", "x"))
        .await
        .expect("create");
    // Wait until the reflector saw watched-1 live, then cut its watch while the
    // history (3 events) no longer reaches back to its resourceVersion.
    common::within(async {
        while reader.state().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for i in 10..20 {
        cms.create(&PostParams::default(), &cm(&format!("noise-{i}"), "y"))
            .await
            .expect("noise");
    }
    server.faults().drop_watches();
    let msg = common::within(err_rx.recv()).await.expect("an error");
    assert!(msg.contains("410") || msg.contains("too old"), "{msg}");
    cms.create(&PostParams::default(), &cm("watched-2", "x"))
        .await
        .expect("create");
    common::within(async {
        while reader.state().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn streaming_list_ends_with_initial_events_bookmark() {
    let server = common::start().await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), "x"))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().streaming_lists()),
    );
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    common::within(reader.wait_until_ready())
        .await
        .expect("ready");
    assert_eq!(reader.state().len(), 3);
    task.abort();

    let wp = WatchParams {
        send_initial_events: true,
        bookmarks: true,
        ..WatchParams::default()
    };
    let mut w = cms.watch(&wp, "0").await.expect("watch").boxed();
    let mut added = 0;
    loop {
        match common::within(w.try_next())
            .await
            .expect("ok")
            .expect("event")
        {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn idle_watches_get_bookmarks_and_time_out() {
    let server = common::start().await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&Default::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let mut w = cms
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .expect("watch")
        .boxed();
    let ev = common::within(w.try_next())
        .await
        .expect("ok")
        .expect("event");
    assert!(matches!(ev, WatchEvent::Bookmark(_)), "{ev:?}");
    // timeoutSeconds=3 ends the stream.
    common::within(async {
        while let Some(ev) = w.try_next().await.expect("ok") {
            assert!(matches!(ev, WatchEvent::Bookmark(_)));
        }
    })
    .await;

    let mut w = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    server.faults().drop_watches();
    common::within(async { while w.try_next().await.expect("ok").is_some() {} }).await;

    let old = cms
        .watch(&WatchParams::default(), "1")
        .await
        .expect("watch")
        .boxed()
        .try_next()
        .await
        .expect("ok");
    assert!(
        old.is_none() || !matches!(old, Some(WatchEvent::Error(_))),
        "history still covers rv 1"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn outage_refuses_requests_and_error_rates_inject() {
    let server = common::start().await;
    let client = common::kubeconfig_client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    server.faults().outage(Duration::from_secs(30));
    let e = cms.list(&Default::default()).await.expect_err("outage");
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 503),
        "{e:?}"
    );
    server.faults().clear();
    cms.list(&Default::default()).await.expect("back");
    server.faults().set_error_rate("configmaps", 1.0, 429);
    let e = cms.get("x").await.expect_err("injected");
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 429),
        "{e:?}"
    );
    server.faults().set_error_rate("configmaps", 0.0, 429);
    let counters = server.counters();
    assert_eq!(counters.count("get", "configmaps"), 1);
    assert_eq!(counters.count_by("list", "configmaps", "admin"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_watcher_sees_partial_objects() {
    let server = common::start().await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("m1", "x"))
        .await
        .expect("create");
    let meta = cms.get_metadata("m1").await.expect("get metadata");
    assert_eq!(
        meta.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("x")
    );
    let (reader, writer) = reflector::store();
    let metas: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let stream = reflector(writer, watcher(metas, watcher::Config::default()));
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    common::within(reader.wait_until_ready())
        .await
        .expect("ready");
    cms.create(&PostParams::default(), &cm("m2", "x"))
        .await
        .expect("create");
    common::within(async {
        while reader.state().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn controller_reconciles_and_owns() {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::controller::{Action, Controller};
    use kube::{Resource, ResourceExt};

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Failed(#[from] kube::Error);

    async fn reconcile(cm: Arc<ConfigMap>, client: Arc<kube::Client>) -> Result<Action, Failed> {
        let ns = cm.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced((*client).clone(), &ns);
        let owner = cm.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": cm.name_any(), "ownerReferences": owner},
            "stringData": {"from": cm.name_any()}
        });
        secrets
            .patch(
                &cm.name_any(),
                &PatchParams::apply("ctl").force(),
                &Patch::Apply(secret),
            )
            .await?;
        Ok(Action::await_change())
    }

    fn error_policy(_: Arc<ConfigMap>, _: &Failed, _: Arc<kube::Client>) -> Action {
        Action::requeue(Duration::from_millis(50))
    }

    let server = common::start().await;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let ctl = Controller::new(cms.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let task = tokio::spawn(ctl);
    cms.create(&PostParams::default(), &cm("owner", "x"))
        .await
        .expect("create");
    common::within(kube::runtime::wait::await_condition(
        secrets.clone(),
        "owner",
        |s: Option<&Secret>| s.is_some(),
    ))
    .await
    .expect("secret made");
    cms.delete("owner", &Default::default())
        .await
        .expect("delete");
    common::within(kube::runtime::wait::await_condition(
        secrets.clone(),
        "owner",
        |s: Option<&Secret>| s.is_none(),
    ))
    .await
    .expect("secret collected");
    task.abort();
    server.shutdown().await;
}
