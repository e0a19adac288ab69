//! The service controller end to end: a guest LoadBalancer Service becomes
//! an infra Service with the contract's name, labels, selector and ports;
//! the ingress the infra allocator assigns (and later reassigns) reaches the
//! guest status; every later change of the guest Service reaches the infra
//! Service; type changes and deletion clean up and release the finalizer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ccm_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lab_cluster::RequestCounters;
use serde_json::json;

fn lb_service(name: &str, spec: serde_json::Value) -> anyhow::Result<Service> {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"metallb.universe.tf/address-pool": "public",
                                     "example.com/not-copied": "x"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]}
    });
    if let (Some(s), Some(extra)) = (base["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(base)?)
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// (name, protocol, port, targetPort) of the infra ports.
fn infra_ports(svc: &Service) -> Vec<(String, String, i32, Option<IntOrString>)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.port,
                p.target_port.clone(),
            )
        })
        .collect()
}

/// What the infra ports must be for a guest Service: port kept, target = nodePort.
fn expected_ports(guest: &Service) -> Vec<(String, String, i32, Option<IntOrString>)> {
    guest
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.port,
                p.node_port.map(IntOrString::Int),
            )
        })
        .collect()
}

/// Writes made by `user` to Services (any verb but reads), per server.
fn service_writes(counters: &RequestCounters, user: &str, resource: &str) -> u64 {
    ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| counters.count_by(v, resource, user))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_follows_the_guest_service() -> anyhow::Result<()> {
    let lab = lab(2, "svc").await?;
    let tenant = Tenant::main(&lab);
    let mut opts = CcmOptions::default();
    opts.load_balancer
        .push_str("  infraServiceAnnotations: [\"metallb.universe.tf/*\"]\n  bogusKey: 1\n");
    let mut ccm = start_ccm(&lab, &tenant, &opts).await?;
    let result = scenario(&lab, &tenant, &mut ccm).await;
    let log = log_of(&ccm);
    ccm.terminate(Duration::from_secs(10)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("CCM log (tail):\n{log}"))?;
    ensure!(
        log.contains("loadBalancer.bogusKey"),
        "no warning about the unknown key:\n{log}"
    );
    Ok(())
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    tenant: &Tenant<'_>,
    ccm: &mut kubevirt_lab::daemon::Daemon,
) -> anyhow::Result<()> {
    let guest: Client = lab.guest_client();
    let infra: Client = lab.infra_client();
    let guest_svcs: Api<Service> = Api::namespaced(guest.clone(), "default");
    let infra_svcs: Api<Service> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let (guest_user, infra_user) = (tenant.guest_user(), tenant.infra_user());

    // A Service of another load-balancer implementation is left alone.
    let classy = guest_svcs
        .create(
            &PostParams::default(),
            &lb_service("classy", json!({"loadBalancerClass": "example.com/other"}))?,
        )
        .await?;

    // === creation ===
    let created = guest_svcs
        .create(
            &PostParams::default(),
            &lb_service("web", json!({"externalTrafficPolicy": "Cluster"}))?,
        )
        .await?;
    let uid = created.uid().context("uid")?;
    let name = infra_name(&uid);
    let infra_seen = until(&infra_svcs, &name, "infra Service ingress", |s| {
        s.filter(|s| !ingress_ips(s).is_empty())
            .map(|s| (s.clone(), Instant::now()))
    });
    let guest_seen = until(&guest_svcs, "web", "guest Service ingress", |s| {
        s.filter(|s| !ingress_ips(s).is_empty())
            .map(|s| (s.clone(), Instant::now()))
    });
    let ((infra_svc, t_infra), (guest_svc, t_guest)) = tokio::try_join!(infra_seen, guest_seen)?;
    let lag = t_guest.saturating_duration_since(t_infra);
    println!("ingress reached the guest {lag:?} after the infra cluster assigned it");
    // Watched, not polled: far below the 5 s creationPollInterval a poller
    // would need (the speed itself is the benchmark's to measure).
    ensure!(
        lag < Duration::from_secs(3),
        "ingress took {lag:?} to reach the guest"
    );
    ensure!(
        ingress_ips(&guest_svc) == ingress_ips(&infra_svc),
        "guest ingress differs"
    );

    let labels = infra_svc.labels();
    ensure!(labels.get(TENANT_SERVICE_NAME).map(String::as_str) == Some("web"));
    ensure!(labels.get(TENANT_SERVICE_NAMESPACE).map(String::as_str) == Some("default"));
    ensure!(labels.get(CLUSTER_NAME) == Some(&tenant.cluster));
    for (k, v) in &tenant.infra_labels {
        ensure!(labels.get(k) == Some(v), "infra label {k} missing");
    }
    let spec = infra_svc.spec.clone().context("infra spec")?;
    ensure!(spec.type_.as_deref() == Some("LoadBalancer"));
    ensure!(
        spec.selector
            == Some(BTreeMap::from([
                (ROLE.to_string(), "worker".to_string()),
                (CLUSTER_NAME.to_string(), tenant.cluster.clone()),
            ])),
        "selector {:?}",
        spec.selector
    );
    ensure!(spec.external_traffic_policy.as_deref() == Some("Cluster"));
    ensure!(
        infra_ports(&infra_svc) == expected_ports(&guest_svc),
        "ports {:?} vs guest {:?}",
        infra_ports(&infra_svc),
        expected_ports(&guest_svc)
    );
    let ann = infra_svc.annotations();
    ensure!(
        ann.get("metallb.universe.tf/address-pool")
            .map(String::as_str)
            == Some("public")
    );
    ensure!(
        !ann.contains_key("example.com/not-copied"),
        "annotation copied wholesale"
    );
    ensure!(
        guest_svc.finalizers().iter().any(|f| f == FINALIZER),
        "no finalizer"
    );

    // Writes for one new Service: finalizer + create, plus one status patch
    // (its audit line may land a moment after the watch showed the ingress).
    let guest_counters = lab
        .guest
        .counters_when(
            |c| service_writes(c, &guest_user, "services/status") > 0,
            Duration::from_secs(10),
        )
        .await?;
    let guest_writes = service_writes(&guest_counters, &guest_user, "services");
    let infra_writes = service_writes(&lab.infra.counters(), &infra_user, "services");
    let status_writes = service_writes(&guest_counters, &guest_user, "services/status");
    println!(
        "writes: guest services {guest_writes}, infra services {infra_writes}, status {status_writes}"
    );
    ensure!(
        guest_writes + infra_writes <= 2,
        "{guest_writes} + {infra_writes} writes for one Service"
    );
    ensure!(status_writes == 1, "{status_writes} status writes");

    // Nothing changes: nothing is written (give the controllers a moment of
    // unrelated traffic first: a label on the guest Service).
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    until(&guest_svcs, "web", "label", |s| {
        s.filter(|s| s.labels().contains_key("touched")).map(|_| ())
    })
    .await?;

    // === ports change ===
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [
                {"name": "http", "port": 8081, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}
            ]}})),
        )
        .await?;
    let guest_svc = guest_svcs.get("web").await?;
    let want = expected_ports(&guest_svc);
    ensure!(
        want.iter().all(|p| p.3.is_some()),
        "guest did not allocate node ports: {want:?}"
    );
    until(&infra_svcs, &name, "infra ports", |s| {
        s.filter(|s| infra_ports(s) == want).map(|_| ())
    })
    .await?;
    let infra_counters = lab
        .infra
        .counters_when(
            |c| service_writes(c, &infra_user, "services") > infra_writes,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        service_writes(&infra_counters, &infra_user, "services") == infra_writes + 1,
        "more than one infra write for a port change"
    );

    // === the infra cluster changes the ingress: the guest follows ===
    lab_sim::lb::reassign(&infra, &lab.infra_namespace, &name, &["192.168.200.77"]).await?;
    until(&guest_svcs, "web", "reassigned ingress", |s| {
        s.filter(|s| ingress_ips(s) == ["192.168.200.77"])
            .map(|_| ())
    })
    .await?;

    // === traffic policy, source ranges, families ===
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "externalTrafficPolicy": "Local",
                "loadBalancerSourceRanges": ["10.0.0.0/8"],
                "sessionAffinity": "ClientIP"
            }})),
        )
        .await?;
    until(&infra_svcs, &name, "Local traffic policy", |s| {
        s.and_then(|s| s.spec.as_ref())
            .filter(|s| {
                s.external_traffic_policy.as_deref() == Some("Local")
                    // The EndpointSlice controller writes the endpoints now.
                    && s.selector.as_ref().is_none_or(BTreeMap::is_empty)
                    && s.load_balancer_source_ranges.as_deref() == Some(&["10.0.0.0/8".to_string()][..])
                    && s.session_affinity.as_deref() == Some("ClientIP")
            })
            .map(|_| ())
    })
    .await?;
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}})),
        )
        .await?;
    let families = guest_svcs
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ip_families)
        .unwrap_or_default();
    until(&infra_svcs, &name, "dual-stack families", |s| {
        s.and_then(|s| s.spec.as_ref())
            .filter(|s| {
                s.ip_families.as_ref() == Some(&families)
                    && s.ip_family_policy.as_deref() == Some("PreferDualStack")
            })
            .map(|_| ())
    })
    .await?;
    if families.len() == 2 {
        until(&guest_svcs, "web", "an ingress per family", |s| {
            s.filter(|s| ingress_ips(s).len() == 2).map(|_| ())
        })
        .await?;
    }

    // === no longer a LoadBalancer: infra Service gone, finalizer and ingress too ===
    let ports = guest_svcs
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": p.target_port}))
        .collect::<Vec<_>>();
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "type": "ClusterIP", "ports": ports, "externalTrafficPolicy": null,
                "loadBalancerSourceRanges": null, "allocateLoadBalancerNodePorts": null
            }})),
        )
        .await?;
    until(&infra_svcs, &name, "infra Service removal", |s| {
        s.is_none().then_some(())
    })
    .await?;
    until(&guest_svcs, "web", "finalizer and ingress removal", |s| {
        s.filter(|s| !s.finalizers().iter().any(|f| f == FINALIZER) && ingress_ips(s).is_empty())
            .map(|_| ())
    })
    .await?;

    // === a LoadBalancer again, then deleted ===
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "LoadBalancer"}})),
        )
        .await?;
    until(&infra_svcs, &name, "infra Service again", |s| s.map(|_| ())).await?;
    until(&guest_svcs, "web", "finalizer again", |s| {
        s.filter(|s| s.finalizers().iter().any(|f| f == FINALIZER))
            .map(|_| ())
    })
    .await?;
    guest_svcs.delete("web", &DeleteParams::default()).await?;
    until(&infra_svcs, &name, "infra Service deletion", |s| {
        s.is_none().then_some(())
    })
    .await?;
    until(&guest_svcs, "web", "guest Service deletion", |s| {
        s.is_none().then_some(())
    })
    .await?;

    // === errors become events on the guest Service ===
    guest_svcs
        .create(
            &PostParams::default(),
            &lb_service(
                "no-node-ports",
                json!({"allocateLoadBalancerNodePorts": false}),
            )?,
        )
        .await?;
    let events: Api<Event> = Api::namespaced(guest.clone(), "default");
    until_list(&events, "", "a warning event on no-node-ports", |evs| {
        evs.iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("no-node-ports")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| e.reason.clone())
    })
    .await?;

    // === an infra Service left behind while the CCM was down is removed ===
    let orphan = guest_svcs
        .create(&PostParams::default(), &lb_service("orphan", json!({}))?)
        .await?;
    let orphan_name = infra_name(&orphan.uid().unwrap_or_default());
    until(&infra_svcs, &orphan_name, "orphan's infra Service", |s| {
        s.map(|_| ())
    })
    .await?;
    until(&guest_svcs, "orphan", "orphan's finalizer", |s| {
        s.filter(|s| s.finalizers().iter().any(|f| f == FINALIZER))
            .map(|_| ())
    })
    .await?;
    let status = ccm
        .terminate(Duration::from_secs(10))
        .await?
        .context("CCM was running")?;
    ensure!(status.success(), "SIGTERM: CCM exited with {status}");
    guest_svcs
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    guest_svcs
        .delete("orphan", &DeleteParams::default())
        .await?;
    until(&guest_svcs, "orphan", "orphan gone from the guest", |s| {
        s.is_none().then_some(())
    })
    .await?;
    ccm.restart()?;
    until(
        &infra_svcs,
        &orphan_name,
        "orphaned infra Service deleted",
        |s| s.is_none().then_some(()),
    )
    .await?;

    // The class-managed Service was never touched.
    let classy_now = guest_svcs.get("classy").await?;
    ensure!(
        classy_now.finalizers().is_empty(),
        "finalizer on a foreign LoadBalancer"
    );
    let classy_infra = infra_svcs
        .get_opt(&infra_name(&classy.uid().unwrap_or_default()))
        .await?;
    ensure!(
        classy_infra.is_none(),
        "infra Service for a foreign LoadBalancer"
    );
    Ok(())
}
