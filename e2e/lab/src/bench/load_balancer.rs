//! Load-balancer scenarios with the real CCM: a guest LoadBalancer Service
//! is created and the moments its infra Service gets an address and the
//! guest Service shows it are observed through watches on both clusters.
//!
//! - propagation, one Service after another: infra ingress -> guest
//!   status, created -> guest ingress, the CCM's write requests per Service;
//! - throughput with `c` Services created at once;
//! - many Services at once (1,000 by default): until all are mirrored
//!   with their ingress, and the CCM's memory holding them.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::{Params, Report, Samples, requests_by_verb};
use crate::suite::Suite;
use crate::{Lab, LabError, wait};

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(120);
const SECTION: &str = "load balancer";
const WRITES: [&str; 4] = ["create", "update", "patch", "delete"];

fn service(name: &str) -> Result<Service, LabError> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))
}

fn has_ingress(s: Option<&Service>) -> bool {
    s.and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// The contract's infra Service name for a guest Service uid.
pub fn infra_name(uid: &str) -> String {
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    name.truncate(32);
    name
}

/// One Service after another.
pub async fn propagation(
    lab: &Lab,
    suite: &Suite,
    p: &Params,
    report: &mut Report,
) -> Result<(), LabError> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let services: Api<Service> = Api::namespaced(guest, NS);
    let infra_services: Api<Service> = Api::namespaced(infra, &lab.infra_namespace);
    let (mut propagated, mut end_to_end) = (Samples::default(), Samples::default());
    let mut writes = 0u64;
    for i in 0..p.services {
        let name = format!("bench-lb-{i}");
        let (infra_before, guest_before) = (lab.infra.counters(), lab.guest.counters());
        let t0 = Instant::now();
        let svc = services
            .create(&PostParams::default(), &service(&name)?)
            .await?;
        let infra_svc = infra_name(&svc.uid().unwrap_or_default());
        let (infra_seen, guest_seen) = tokio::try_join!(
            wait::until(&infra_services, &infra_svc, WAIT, |s| {
                has_ingress(s).then(Instant::now)
            }),
            wait::until(&services, &name, WAIT, |s| has_ingress(s)
                .then(Instant::now)),
        )?;
        propagated.push(guest_seen.saturating_duration_since(infra_seen));
        end_to_end.push(guest_seen.saturating_duration_since(t0));
        // Writes besides status and events, on both clusters.
        let keep = |r: &str| !r.ends_with("/status") && r != "events";
        for counts in [
            requests_by_verb(
                &infra_before,
                &lab.infra.counters(),
                &suite.users.ccm_infra,
                keep,
            ),
            requests_by_verb(
                &guest_before,
                &lab.guest.counters(),
                &suite.users.ccm_guest,
                keep,
            ),
        ] {
            writes += counts
                .iter()
                .filter(|(v, _)| WRITES.contains(&v.as_str()))
                .map(|(_, n)| n)
                .sum::<u64>();
        }
    }
    report.add_target(
        SECTION,
        "infra ingress -> guest Service status p50",
        propagated.quantile_ms(0.5),
        "ms",
        "<= 50",
    );
    report.add(
        SECTION,
        "infra ingress -> guest Service status p99",
        propagated.quantile_ms(0.99),
        "ms",
    );
    report.add(
        SECTION,
        "Service created -> guest ingress p50",
        end_to_end.quantile_ms(0.5),
        "ms",
    );
    report.add_target(
        SECTION,
        "CCM write requests per Service creation, besides status",
        writes as f64 / p.services.max(1) as f64,
        "req",
        "<= 2",
    );
    delete_all(
        &services,
        &infra_services,
        (0..p.services).map(|i| format!("bench-lb-{i}")),
    )
    .await
}

/// `c` Services created at once, until every guest Service has ingress.
pub async fn throughput(lab: &Lab, c: usize, report: &mut Report) -> Result<(), LabError> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let services: Api<Service> = Api::namespaced(guest, NS);
    let infra_services: Api<Service> = Api::namespaced(infra, &lab.infra_namespace);
    let names: Vec<String> = (0..c).map(|i| format!("burst-lb-{c}-{i}")).collect();
    let t0 = Instant::now();
    try_join_all(names.iter().map(|name| {
        let services = services.clone();
        async move {
            services
                .create(&PostParams::default(), &service(name)?)
                .await?;
            wait::until(&services, name, WAIT, |s| has_ingress(s).then_some(())).await
        }
    }))
    .await?;
    report.add(
        SECTION,
        format!("Services given ingress per second, {c} at once"),
        c as f64 / t0.elapsed().as_secs_f64(),
        "1/s",
    );
    delete_all(&services, &infra_services, names.into_iter()).await
}

/// Deletes guest Services and waits until their infra Services are gone.
async fn delete_all(
    services: &Api<Service>,
    infra_services: &Api<Service>,
    names: impl Iterator<Item = String>,
) -> Result<(), LabError> {
    try_join_all(names.map(|name| async move {
        let uid = services.get(&name).await?.uid().unwrap_or_default();
        services.delete(&name, &DeleteParams::default()).await?;
        wait::until(infra_services, &infra_name(&uid), WAIT, |s| {
            s.is_none().then_some(())
        })
        .await
    }))
    .await?;
    Ok(())
}

/// `n` Services created (32 requests in flight), until every guest Service
/// shows its ingress; the CCM's memory then. They stay until the lab goes.
pub async fn hold(
    lab: &Lab,
    ccm_pid: Option<u32>,
    n: usize,
    report: &mut Report,
) -> Result<(), LabError> {
    use futures::{StreamExt, TryStreamExt};
    let guest = lab.guest_client();
    let services: Api<Service> = Api::namespaced(guest, NS);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let services = services.clone();
            async move {
                let mut svc = service(&format!("held-{i:05}"))?;
                svc.metadata.labels = Some([("bench".to_string(), "held".to_string())].into());
                services.create(&PostParams::default(), &svc).await?;
                Ok::<_, LabError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let created = t0.elapsed();
    wait::until_count(&services, "bench=held", n, WAIT, |s| has_ingress(Some(s))).await?;
    let done = t0.elapsed();
    report.add(
        SECTION,
        format!("{n} Services created (32 in flight)"),
        created.as_secs_f64(),
        "s",
    );
    report.add_target(
        SECTION,
        format!("{n} Services created -> all mirrored with guest ingress"),
        done.as_secs_f64(),
        "s",
        "<= 10",
    );
    if let Some(mib) = ccm_pid.and_then(super::rss_mib) {
        report.add_target(
            SECTION,
            format!("CCM RSS holding {n} Services"),
            mib,
            "MiB",
            "<= 24",
        );
    }
    Ok(())
}
