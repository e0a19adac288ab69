//! The CCM at scale: 1,000 guest LoadBalancer Services created at once are
//! all mirrored to the infra cluster, and every ingress the infra allocator
//! hands out comes back to its guest Service. This checks behaviour, not
//! speed: the waits are only bounded so that a stuck CCM fails the test.
//! How fast and how lean it is, the `bench` binary measures; the figures of
//! this run are printed (`--nocapture`).

use std::time::{Duration, Instant};

use crate::ccm_support::*;
use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

const SERVICES: usize = 1000;

/// Bound of each wait: far above what any healthy run takes, so only a
/// CCM that stopped making progress reaches it.
const STUCK: Duration = Duration::from_secs(180);

/// Resident set size of a process in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_services_are_mirrored_with_their_ingress() -> anyhow::Result<()> {
    let lab = lab(1, "scale").await?;
    let tenant = Tenant::main(&lab);
    let opts = CcmOptions {
        load_balancer: String::new(),
        ..Default::default()
    };
    let mut ccm = start_ccm(&lab, &tenant, &opts).await?;
    let result = scenario(&lab, ccm.pid().context("ccm pid")?).await;
    for (which, server, me) in [
        ("guest", &lab.guest, tenant.guest_user()),
        ("infra", &lab.infra, tenant.infra_user()),
    ] {
        let counts: Vec<String> = server
            .counters()
            .counts
            .iter()
            .filter(|((_, _, user), _)| *user == me)
            .map(|((verb, resource, _), n)| format!("{verb} {resource}: {n}"))
            .collect();
        println!("CCM requests to the {which} cluster: {}", counts.join(", "));
    }
    let full = ccm.log();
    let warnings: Vec<&str> = full
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .collect();
    println!(
        "{} warnings in the CCM log; first: {:#?}",
        warnings.len(),
        &warnings[..warnings.len().min(5)]
    );
    let log = log_of(&ccm);
    ccm.terminate(Duration::from_secs(10)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("CCM log (tail):\n{log}"))
}

async fn scenario(lab: &kubevirt_lab::Lab, pid: u32) -> anyhow::Result<()> {
    let guest = lab.guest_client();
    let svcs: Api<Service> = Api::namespaced(guest.clone(), "default");
    let infra = lab.infra_client();
    let infra_svcs: Api<Service> = Api::namespaced(infra, &lab.infra_namespace);
    let selector = format!("{CLUSTER_NAME}={}", lab.cluster_name);
    let service = |i: usize| -> anyhow::Result<Service> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "default", "labels": {"scale": "yes"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}
        }))?)
    };
    // Baseline: the CCM running with one Service.
    svcs.create(&PostParams::default(), &service(0)?).await?;
    until_list(&infra_svcs, &selector, "the first infra Service", |all| {
        (all.len() == 1).then_some(())
    })
    .await?;
    let baseline = rss_kib(pid)?;
    let started = Instant::now();
    futures::stream::iter(1..SERVICES)
        .map(|i| {
            let (svcs, svc) = (svcs.clone(), service(i));
            async move {
                svcs.create(&PostParams::default(), &svc?).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let created = started.elapsed();
    // Mirrored: every guest Service has its infra Service.
    until_list_within(
        &infra_svcs,
        &selector,
        "1,000 infra Services",
        STUCK,
        |all| (all.len() == SERVICES).then_some(()),
    )
    .await?;
    let mirrored = started.elapsed();
    // Every infra Service gets an address (the lab's pool is a /21), and
    // every address reaches its guest Service.
    let with_ingress = |all: &[Service]| {
        all.iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty())
            })
            .count()
    };
    let assigned = until_list_within(
        &infra_svcs,
        &selector,
        "the address pool used up",
        STUCK,
        |all| {
            let n = with_ingress(all);
            (n == SERVICES).then_some(n)
        },
    )
    .await?;
    until_list_within(&svcs, "scale=yes", "guest ingress", STUCK, |all| {
        (with_ingress(all) >= assigned).then_some(())
    })
    .await?;
    let ingress_done = started.elapsed();
    let rss = rss_kib(pid)?;
    let cpu = cpu_time(pid)?;
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let detail: Vec<&str> = status
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("VmHWM") || l.starts_with("Threads"))
            .collect();
        println!("CCM memory: {}", detail.join(", "));
    }
    println!(
        "{SERVICES} Services: created in {created:?}, mirrored after {mirrored:?}, \
         {assigned} ingresses back in the guest after {ingress_done:?}; CCM RSS {rss} KiB ({baseline} KiB with one Service), CPU {cpu:?}"
    );
    Ok(())
}
