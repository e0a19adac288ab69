//! A quick throughput check (not a test): concurrent writes per second, watch event
//! delivery latency, and LIST latency for 10,000 objects, all against an in-process
//! server over loopback HTTP.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lab_apiserver::{ApiServer, ApiServerConfig};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"key": "value-0123456789"}}))
        .unwrap_or_default()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let server = ApiServer::start(ApiServerConfig::default()).await?;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Writes: 64 concurrent creators.
    let start = Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let cms = cms.clone();
            async move {
                cms.create(&PostParams::default(), &cm(&format!("c{i:06}")))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let el = start.elapsed();
    println!(
        "writes: {total} in {el:?} = {:.0}/s",
        total as f64 / el.as_secs_f64()
    );

    // LIST of everything, raw bytes (server + transfer, no client-side decoding).
    let mut lists = Vec::new();
    for _ in 0..10 {
        let req = http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new())?;
        let t = Instant::now();
        let body = client.request_text(req).await?;
        lists.push(t.elapsed());
        assert!(body.len() > total * 50);
    }
    lists.sort();
    println!(
        "list {total}: p50 {:?} max {:?}",
        pct(&lists, 0.5),
        pct(&lists, 1.0)
    );

    // Watch delivery: time from issuing a write to its event on an open watch.
    let rv = cms
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut w = cms.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut lat = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm(&format!("w{i:06}")))
            .await?;
        loop {
            match w.try_next().await? {
                Some(WatchEvent::Added(_)) => break,
                Some(_) => continue,
                None => return Err("watch ended".into()),
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "write+watch delivery: p50 {:?} p99 {:?} max {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    server.shutdown().await;
    Ok(())
}
