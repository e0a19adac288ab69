//! The cloud controller manager killed with SIGKILL at random moments while
//! guest LoadBalancer Services are created and deleted, and restarted each
//! time: afterwards every remaining guest Service has its infra Service and
//! its ingress, every deleted one is gone (its finalizer released), and no
//! infra Service or EndpointSlice is left without its guest Service. The
//! seed of the kill schedule is printed; `FAULT_SEED=<n>` replays it.
//!
//! Build the CCM first: `cargo build -p kubevirt-cloud-controller-manager`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ccm_support::*;
use crate::fault_support::{Finally, Rng, kill_at_random};
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// Guest Services created; every other one is deleted again: about 100
/// operations (68 creations, 34 deletions). Even, so that the pairs close.
const SERVICES: usize = 68;
const KILL_EVERY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(300));
/// Kills are bounded: on a loaded machine a CCM killed every few hundred
/// milliseconds without end may never get its caches filled, and the run
/// would prove only that.
const MAX_KILLS: usize = 10;
const TEST_TIMEOUT: Duration = Duration::from_secs(50);

fn service(i: usize) -> anyhow::Result<Service> {
    let policy = if i.is_multiple_of(3) {
        "Local"
    } else {
        "Cluster"
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default", "labels": {"fault": "yes"}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                 "selector": {"app": format!("a{i}")},
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))?)
}

fn has_ingress(s: &Service) -> bool {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_converge_after_the_ccm_is_killed_at_random() -> anyhow::Result<()> {
    let lab = lab(2, "ccmcrash").await?;
    let tenant = Tenant::main(&lab);
    let mut ccm = start_ccm(&lab, &tenant, &CcmOptions::default()).await?;
    let mut rng = Rng::from_env("fault_ccm");
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&lab, &mut ccm, &mut rng))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not done within {TEST_TIMEOUT:?}")));
    let log = log_of(&ccm);
    let full = ccm.log();
    ccm.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    outcome.with_context(|| format!("CCM log (tail):\n{log}"))?;
    ensure!(!full.contains("panicked"), "the CCM panicked:\n{log}");
    Ok(())
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    ccm: &mut kubevirt_lab::daemon::Daemon,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let guest: Api<Service> = Api::namespaced(lab.guest_client(), "default");
    let infra_client = lab.infra_client();
    let infra: Api<Service> = Api::namespaced(infra_client.clone(), &lab.infra_namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(infra_client, &lab.infra_namespace);
    let (done_tx, done_rx) = watch::channel(false);

    let changes = async {
        for i in 0..SERVICES {
            guest.create(&PostParams::default(), &service(i)?).await?;
            // Paced by the CCM: the next change waits for this one's
            // ingress, so kills land between and inside reconciles.
            let name = format!("svc-{i}");
            until(&guest, &name, "its ingress", |s| {
                s.filter(|s| has_ingress(s)).map(|_| ())
            })
            .await?;
            if i % 2 == 1 {
                guest
                    .delete(&format!("svc-{}", i - 1), &DeleteParams::default())
                    .await?;
            }
        }
        let _ = done_tx.send(true);
        anyhow::Ok(())
    };
    let killer = kill_at_random(
        ccm,
        rng,
        KILL_EVERY,
        MAX_KILLS,
        done_rx,
        Finally::KillOnceMore,
    );
    let (changed, kills) = tokio::join!(changes, killer);
    changed?;
    let kills = kills?;

    let kept: BTreeSet<String> = (0..SERVICES)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("svc-{i}"))
        .collect();
    // The guest: exactly the kept Services, each with an ingress.
    until_list(
        &guest,
        "fault=yes",
        "the kept guest Services with ingress",
        |all| {
            let names: BTreeSet<String> = all.iter().map(|s| s.name_any()).collect();
            (names == kept && all.iter().all(has_ingress)).then_some(())
        },
    )
    .await?;
    // The infra: exactly one Service per kept guest Service, with an ingress.
    let selector = format!("{CLUSTER_NAME}={}", lab.cluster_name);
    until_list(
        &infra,
        &selector,
        "one infra Service per kept guest Service",
        |all| {
            let names: BTreeSet<String> = all
                .iter()
                .filter_map(|s| s.labels().get(TENANT_SERVICE_NAME).cloned())
                .collect();
            (all.len() == kept.len() && names == kept && all.iter().all(has_ingress)).then_some(())
        },
    )
    .await?;
    let live: BTreeSet<String> = infra
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    let orphans: Vec<String> = slices
        .list(&ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_EPS}")))
        .await?
        .items
        .iter()
        .filter(|s| {
            s.labels()
                .get(SERVICE_NAME)
                .is_none_or(|svc| !live.contains(svc))
        })
        .map(|s| s.name_any())
        .collect();
    println!(
        "{SERVICES} Services created, {} deleted, {kills} kills",
        SERVICES - kept.len()
    );
    ensure!(
        orphans.is_empty(),
        "EndpointSlices without their infra Service: {orphans:?}"
    );
    ensure!(
        kills >= 3,
        "only {kills} kills happened: the run proves little"
    );
    Ok(())
}
