//! Two CCM replicas with leader election: only the Lease holder works; when
//! it is killed, the standby takes over within the lease duration; a clean
//! shutdown releases the Lease.

use std::time::{Duration, Instant};

use crate::ccm_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kubevirt_lab::daemon::Daemon;
use serde_json::json;

const LEASE: &str = "cloud-controller-manager";
const LEASE_DURATION: Duration = Duration::from_secs(4);

fn holder(lease: Option<&Lease>) -> Option<String> {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

fn replica(log: &str) -> CcmOptions {
    CcmOptions {
        args: vec![
            "--leader-elect=true".into(),
            format!(
                "--leader-elect-lease-duration={}s",
                LEASE_DURATION.as_secs()
            ),
            "--leader-elect-renew-deadline=3s".into(),
            "--leader-elect-retry-period=500ms".into(),
        ],
        log: log.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_within_the_lease_duration() -> anyhow::Result<()> {
    let lab = lab(1, "leader").await?;
    let guest = lab.guest_client();
    let namespaces: Api<Namespace> = Api::all(guest.clone());
    if namespaces.get_opt("kube-system").await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "kube-system"}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let tenant = Tenant::main(&lab);
    let mut a = start_ccm(&lab, &tenant, &replica("ccm-a.log")).await?;
    let mut b: Option<Daemon> = None;
    let result = scenario(&lab, &tenant, &mut a, &mut b).await;
    let logs = format!(
        "a:\n{}\nb:\n{}",
        log_of(&a),
        b.as_ref().map(log_of).unwrap_or_default()
    );
    a.terminate(Duration::from_secs(10)).await?;
    if let Some(mut b) = b {
        b.terminate(Duration::from_secs(10)).await?;
    }
    lab.shutdown().await?;
    result.with_context(|| format!("CCM logs (tail):\n{logs}"))
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    tenant: &Tenant<'_>,
    a: &mut Daemon,
    b_slot: &mut Option<Daemon>,
) -> anyhow::Result<()> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let leases: Api<Lease> = Api::namespaced(guest.clone(), "kube-system");
    let guest_svcs: Api<Service> = Api::namespaced(guest.clone(), "default");
    let infra_svcs: Api<Service> = Api::namespaced(infra.clone(), &lab.infra_namespace);

    let first = until(&leases, LEASE, "a leader", holder).await?;
    let b = b_slot.insert(start_ccm(lab, tenant, &replica("ccm-b.log")).await?);

    let lb = |name: &str| -> anyhow::Result<Service> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}
        }))?)
    };
    let one = guest_svcs
        .create(&PostParams::default(), &lb("one")?)
        .await?;
    until(
        &infra_svcs,
        &infra_name(&one.uid().unwrap_or_default()),
        "infra Service of one",
        |s| s.map(|_| ()),
    )
    .await?;
    ensure!(
        holder(leases.get_opt(LEASE).await?.as_ref()).as_ref() == Some(&first),
        "the standby took the lease from a live leader"
    );
    ensure!(
        !b.log().contains("created infra Service"),
        "the standby worked:\n{}",
        b.log()
    );

    // The leader dies without releasing: the standby waits out the lease.
    a.kill()?;
    let killed = Instant::now();
    let second = until(&leases, LEASE, "a new leader", |l| {
        holder(l).filter(|h| *h != first)
    })
    .await?;
    let handover = killed.elapsed();
    println!("handover after {handover:?} (lease duration {LEASE_DURATION:?})");
    ensure!(
        handover <= LEASE_DURATION + Duration::from_millis(1000),
        "handover took {handover:?}"
    );
    let two = guest_svcs
        .create(&PostParams::default(), &lb("two")?)
        .await?;
    until(
        &infra_svcs,
        &infra_name(&two.uid().unwrap_or_default()),
        "infra Service of two",
        |s| s.map(|_| ()),
    )
    .await?;

    // A clean shutdown releases the lease at once.
    let status = b
        .terminate(Duration::from_secs(10))
        .await?
        .context("b was running")?;
    ensure!(status.success(), "b exited with {status}");
    let lease = leases.get(LEASE).await?;
    ensure!(
        holder(Some(&lease)).is_none(),
        "lease still held by {:?}",
        holder(Some(&lease))
    );
    ensure!(second != first);
    Ok(())
}
