//! Traffic through the lab network (`lab_net`) with the real CCM: an echo
//! pod in the guest behind a LoadBalancer Service, reached by an outside
//! client through the infra ingress, a virt-launcher pod, the guest node
//! port and the guest Service (the full path), or straight at the pod.
//!
//! - time from the guest Service's creation to the first answered request
//!   through its ingress, one Service after another;
//! - request latency (one HTTP request on a new connection) through the
//!   full path next to a direct one; their ratio is the proxies' cost;
//! - requests per second through the full path at concurrency 1, 10, 100.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use lab_net::client;
use lab_net::proxy::{Listen, Route};
use serde_json::json;

use super::{Params, Report, Samples};
use crate::{Lab, LabError, wait};

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);
const SECTION: &str = "network";
const APP: &str = "bench-echo";
/// Concurrency levels of the throughput rows (the issue's).
const CONCURRENCY: [usize; 3] = [1, 10, 100];

fn invalid(e: impl std::fmt::Display) -> LabError {
    LabError::Invalid(e.to_string())
}

/// Every network row.
pub async fn traffic(lab: &Lab, p: &Params, report: &mut Report) -> Result<(), LabError> {
    let guest = lab.guest_client();
    let node = lab.nodes.first().ok_or_else(|| invalid("no worker VM"))?;
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": APP, "namespace": NS, "labels": {"app": APP}},
        "spec": {"nodeName": node, "containers": [{"name": "echo", "image": lab_net::echo::IMAGE,
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .map_err(invalid)?;
    pods.create(&PostParams::default(), &pod).await?;
    let pod_ip: IpAddr = wait::until(&pods, APP, WAIT, |p| {
        wait::pod_ready(p)?;
        p?.status.as_ref()?.pod_ip.clone()
    })
    .await?
    .parse()
    .map_err(invalid)?;
    let direct = SocketAddr::new(pod_ip, 8080);

    let services: Api<Service> = Api::namespaced(guest, NS);
    let mut first_answer = Samples::default();
    let mut kept = None;
    for i in 0..p.services.max(1) {
        let name = format!("bench-net-{i}");
        let t0 = Instant::now();
        let ingress = expose(lab, &services, &name, direct).await?;
        client::http_get(&lab.net, ingress, "/", Some(outside())).await?;
        first_answer.push(t0.elapsed());
        match kept {
            None => kept = Some(ingress),
            Some(_) => {
                services.delete(&name, &DeleteParams::default()).await?;
            }
        }
    }
    report.add_target(
        SECTION,
        "guest Service created -> first request answered through its ingress p50",
        first_answer.quantile_ms(0.5),
        "ms",
        "<= 50",
    );
    let ingress = kept.ok_or_else(|| invalid("no Service"))?;

    let requests = (p.services * 20).clamp(20, 1000);
    let (full, straight) = (
        latency(lab, ingress, requests).await?,
        latency(lab, direct, requests).await?,
    );
    for (what, s) in [
        ("through the ingress", &full),
        ("straight to the pod", &straight),
    ] {
        report.add(
            SECTION,
            format!("request {what} p50"),
            s.quantile_ms(0.5),
            "ms",
        );
        report.add(
            SECTION,
            format!("request {what} p99"),
            s.quantile_ms(0.99),
            "ms",
        );
    }
    report.add_target(
        SECTION,
        "request latency, ingress / direct, p50",
        full.quantile_ms(0.5) / straight.quantile_ms(0.5).max(1e-3),
        "x",
        "<= 3",
    );
    for c in CONCURRENCY {
        let rate = throughput(lab, ingress, c, requests.max(c)).await?;
        report.add(
            SECTION,
            format!("requests per second through the ingress, {c} at once"),
            rate,
            "1/s",
        );
    }
    pods.delete(APP, &DeleteParams::default()).await?;
    wait::until(&pods, APP, WAIT, |p| p.is_none().then_some(())).await?;
    for i in 0..p.services.max(1) {
        let name = format!("bench-net-{i}");
        if services.get_opt(&name).await?.is_some() {
            services.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

fn outside() -> IpAddr {
    IpAddr::V4(lab_net::OUTSIDE_CLIENT)
}

/// Creates LoadBalancer Service `name` for the echo pod and waits, by
/// watching, until its ingress leads to `pod`: the guest Service shows the
/// ingress, the infra proxy serves it, the guest node ports lead to the pod.
async fn expose(
    lab: &Lab,
    services: &Api<Service>,
    name: &str,
    pod: SocketAddr,
) -> Result<SocketAddr, LabError> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "LoadBalancer", "selector": {"app": APP},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .map_err(invalid)?;
    let created = services.create(&PostParams::default(), &svc).await?;
    let node_port = created
        .spec
        .and_then(|s| s.ports?.first()?.node_port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| invalid(format!("Service {name} has no node port")))?;
    let ip: IpAddr = wait::until(services, name, WAIT, wait::ingress_ip)
        .await?
        .parse()
        .map_err(invalid)?;
    let ingress = SocketAddr::new(ip, 80);
    let at_ingress = Listen::tcp(ingress);
    let routed = async {
        lab.infra_proxy
            .wait_for(|s| matches!(s.get(&at_ingress), Some(Route::Forward(_))))
            .await;
        lab.guest_proxy
            .wait_for(|s| {
                let mut ports = s
                    .iter()
                    .filter(|(l, _)| l.addr.port() == node_port)
                    .peekable();
                ports.peek().is_some()
                    && ports.all(|(_, r)| {
                        matches!(r, Route::Forward(f) if f.backends.iter().any(|b| b.addr == pod))
                    })
            })
            .await;
    };
    wait::within(WAIT, || format!("a route from {ingress} to {pod}"), routed).await?;
    Ok(ingress)
}

/// `n` requests one after another, each on a new connection.
async fn latency(lab: &Lab, to: SocketAddr, n: usize) -> Result<Samples, LabError> {
    let mut samples = Samples::default();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = client::http_get(&lab.net, to, "/", Some(outside())).await?;
        samples.push(t0.elapsed());
        if r.status != 200 {
            return Err(invalid(format!("{to} answered {}", r.status)));
        }
    }
    Ok(samples)
}

/// `total` requests by `c` clients at once; requests per second.
async fn throughput(lab: &Lab, to: SocketAddr, c: usize, total: usize) -> Result<f64, LabError> {
    let per_client = total.div_ceil(c);
    let t0 = Instant::now();
    try_join_all((0..c).map(|_| async move {
        for _ in 0..per_client {
            client::http_get(&lab.net, to, "/", Some(outside())).await?;
        }
        Ok::<_, LabError>(())
    }))
    .await?;
    Ok((per_client * c) as f64 / t0.elapsed().as_secs_f64())
}
