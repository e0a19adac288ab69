//! The lab API server's benchmark against the targets of its issue: write
//! throughput with concurrent clients, watch event delivery latency and the
//! latency of listing 10,000 objects, all through kube-rs over loopback
//! HTTPS, as the daemons see it. Prints the machine, the parameters and one
//! table (or JSON with `--json`).
//!
//!     cargo run --release -p lab-apiserver --example bench [-- --objects N --concurrency C --json]

use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lab_apiserver::{ApiServer, ApiServerConfig};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the lab API server")]
struct Args {
    /// Objects written (and then listed in one LIST).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Writes whose watch delivery is timed.
    #[arg(long, default_value_t = 1_000)]
    watch_events: usize,
    /// LISTs of all objects timed.
    #[arg(long, default_value_t = 20)]
    lists: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

struct Row {
    metric: &'static str,
    value: f64,
    unit: &'static str,
    target: &'static str,
    met: bool,
}

fn config_map(name: &str) -> Result<ConfigMap, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "yes"}},
        "data": {"key": "value-0123456789"}
    }))
}

/// The `p` quantile of sorted samples, in milliseconds.
fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let server = ApiServer::start(ApiServerConfig::default()).await?;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Writes: `concurrency` clients creating `objects` ConfigMaps.
    let start = Instant::now();
    futures::stream::iter(0..args.objects)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let cm = config_map(&format!("c{i:06}"))?;
                cms.create(&PostParams::default(), &cm).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let writes_per_s = args.objects as f64 / start.elapsed().as_secs_f64();

    // LIST of every object: the request until the whole body arrived (no
    // client-side decoding, which is the client's cost, not the server's).
    let mut lists = Vec::new();
    for _ in 0..args.lists {
        let req = http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new())?;
        let t = Instant::now();
        let body = client.request_text(req).await?;
        lists.push(t.elapsed());
        if body.len() < args.objects * 50 {
            return Err(format!("LIST returned only {} bytes", body.len()).into());
        }
    }
    lists.sort();

    // Watch delivery: from sending a write to receiving its event on an
    // open watch (an upper bound: it includes the write itself).
    let rv = cms
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = cms.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut delivery = Vec::new();
    for i in 0..args.watch_events {
        let cm = config_map(&format!("w{i:06}"))?;
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm).await?;
        loop {
            match watch.try_next().await? {
                Some(WatchEvent::Added(_)) => break,
                Some(_) => continue,
                None => return Err("the watch ended".into()),
            }
        }
        delivery.push(t.elapsed());
    }
    delivery.sort();
    server.shutdown().await;

    let list_p50 = quantile_ms(&lists, 0.5);
    let delivery_p99 = quantile_ms(&delivery, 0.99);
    let rows = [
        Row {
            metric: "writes/s (create ConfigMap)",
            value: writes_per_s,
            unit: "1/s",
            target: ">= 5000",
            met: writes_per_s >= 5000.0,
        },
        Row {
            metric: "watch delivery p50 (write sent -> event)",
            value: quantile_ms(&delivery, 0.5),
            unit: "ms",
            target: "",
            met: true,
        },
        Row {
            metric: "watch delivery p99 (write sent -> event)",
            value: delivery_p99,
            unit: "ms",
            target: "<= 5",
            met: delivery_p99 <= 5.0,
        },
        Row {
            metric: "LIST of all objects p50",
            value: list_p50,
            unit: "ms",
            target: "<= 50",
            met: list_p50 <= 50.0,
        },
        Row {
            metric: "LIST of all objects max",
            value: quantile_ms(&lists, 1.0),
            unit: "ms",
            target: "",
            met: true,
        },
    ];
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| json!({"metric": r.metric, "value": r.value, "unit": r.unit, "target": r.target, "met": r.met}))
            .collect();
        println!(
            "{}",
            json!({
                "machine": {"cores": cores},
                "parameters": {"objects": args.objects, "concurrency": args.concurrency,
                               "watch_events": args.watch_events, "lists": args.lists},
                "results": rows,
            })
        );
        return Ok(());
    }
    println!("lab API server benchmark");
    println!("machine: {cores} cores");
    println!(
        "parameters: objects={} concurrency={} watch_events={} lists={}",
        args.objects, args.concurrency, args.watch_events, args.lists
    );
    println!();
    println!(
        "| {:<42} | {:>10} | {:<4} | {:<8} | {:<4} |",
        "metric", "value", "unit", "target", "met"
    );
    println!(
        "|{:-<44}|{:->12}|{:-<6}|{:-<10}|{:-<6}|",
        "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<42} | {:>10.2} | {:<4} | {:<8} | {:<4} |",
            r.metric,
            r.value,
            r.unit,
            r.target,
            if r.target.is_empty() {
                ""
            } else if r.met {
                "yes"
            } else {
                "no"
            }
        );
    }
    Ok(())
}
