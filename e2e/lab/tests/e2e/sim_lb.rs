//! The load-balancer allocator through the infra API server: LoadBalancer
//! Services get one address per IP family (the requested one when free),
//! keep a reassigned address, release addresses on type change and
//! deletion, and leave other classes alone. And the virt-launcher pods as
//! kube-controller-manager's EndpointSlice controller sees them: Services
//! selecting workers get slices of their Running, Ready launcher pods.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::common::until_list_within;
use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::{Lab, LabConfig, wait};
use lab_sim::lb::ingress_ips;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn lab(vms: usize) -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms,
        devices: false,
        ..LabConfig::default()
    })
    .await
}

fn service(name: &str, ns: &str, spec: Value) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )?)
}

async fn ingress(api: &Api<Service>, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    Ok(wait::until(api, name, WAIT, |s| {
        let ips = s.map(ingress_ips).unwrap_or_default();
        (!ips.is_empty()).then_some(ips)
    })
    .await?)
}

#[tokio::test]
async fn load_balancers_get_keep_and_release_addresses() -> anyhow::Result<()> {
    let lab = lab(0).await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    let port = json!([{"port": 443, "targetPort": 30443, "protocol": "TCP"}]);

    services
        .create(
            &pp,
            &service(
                "dual",
                &ns,
                json!({"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
                                                   "ipFamilies": ["IPv4", "IPv6"], "ports": port}),
            )?,
        )
        .await?;
    let dual = ingress(&services, "dual").await?;
    ensure!(
        dual.len() == 2 && dual[0].is_ipv4() && dual[1].is_ipv6(),
        "{dual:?}"
    );
    let svc = services.get("dual").await?;
    let entries = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default();
    ensure!(entries.iter().all(|i| i.ip_mode.as_deref() == Some("VIP")));

    services
        .create(
            &pp,
            &service(
                "asked",
                &ns,
                json!({"type": "LoadBalancer", "loadBalancerIP": "192.168.200.77", "ports": port}),
            )?,
        )
        .await?;
    ensure!(ingress(&services, "asked").await? == ["192.168.200.77".parse::<IpAddr>()?]);

    services
        .create(&pp, &service("other-class", &ns, json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/other", "ports": port}))?)
        .await?;

    // Changing the type releases the address; the next Service gets it.
    let v4 = dual[0];
    let to_cluster_ip = json!({"spec": {"type": "ClusterIP"}});
    services
        .patch(
            "dual",
            &PatchParams::default(),
            &Patch::Merge(&to_cluster_ip),
        )
        .await?;
    wait::until(&services, "dual", WAIT, |s| {
        s.filter(|s| ingress_ips(s).is_empty()).map(|_| ())
    })
    .await?;
    services
        .create(
            &pp,
            &service("next", &ns, json!({"type": "LoadBalancer", "ports": port}))?,
        )
        .await?;
    ensure!(
        ingress(&services, "next").await? == [v4],
        "freed address is reused"
    );
    ensure!(
        ingress_ips(&services.get("other-class").await?).is_empty(),
        "a Service of another class was given an address"
    );

    // A reassigned address is kept.
    lab_sim::lb::reassign(&client, &ns, "next", &["192.168.200.99"]).await?;
    services
        .patch(
            "next",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    wait::until(&services, "next", WAIT, |s| {
        s.filter(|s| s.labels().contains_key("touched")).map(|_| ())
    })
    .await?;
    ensure!(ingress_ips(&services.get("next").await?) == ["192.168.200.99".parse::<IpAddr>()?]);

    // Deleting frees the requested address for someone else.
    services.delete("asked", &DeleteParams::default()).await?;
    wait::until(&services, "asked", WAIT, |s| s.is_none().then_some(())).await?;
    services
        .create(
            &pp,
            &service(
                "again",
                &ns,
                json!({"type": "LoadBalancer", "loadBalancerIP": "192.168.200.77", "ports": port}),
            )?,
        )
        .await?;
    ensure!(ingress(&services, "again").await? == ["192.168.200.77".parse::<IpAddr>()?]);
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn endpoint_slices_follow_the_selected_pods() -> anyhow::Result<()> {
    let lab = lab(2).await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let selector: BTreeMap<String, String> = lab.worker_labels();
    services
        .create(
            &PostParams::default(),
            &service("workers", &ns, json!({"selector": selector, "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                                             "ports": [{"name": "https", "port": 443, "targetPort": 30443, "protocol": "TCP"}]}))?,
        )
        .await?;
    services
        .create(
            &PostParams::default(),
            &service(
                "manual",
                &ns,
                json!({"ports": [{"port": 80, "protocol": "TCP"}]}),
            )?,
        )
        .await?;

    // kube-controller-manager names slices `<service>-<random>`: they are
    // found by their Service label and address type.
    let of_workers = "kubernetes.io/service-name=workers";
    let family = |family: &'static str, n: usize| {
        move |all: &[EndpointSlice]| {
            all.iter()
                .find(|s| s.address_type == family && s.endpoints.len() == n)
                .cloned()
        }
    };
    let v4 = until_list_within(&slices, of_workers, "IPv4 slice", WAIT, family("IPv4", 2)).await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let mut want = Vec::new();
    for node in &lab.nodes {
        let vmi = vmis.get(node).await?;
        let status = vmi.status.context("status")?;
        want.push((
            status.interfaces[0].ip_addresses[0].clone(),
            status.node_name.context("node")?,
        ));
    }
    want.sort();
    let mut got: Vec<(String, String)> = v4
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.node_name.clone().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    ensure!(got == want, "endpoints {got:?} vs VMIs {want:?}");
    ensure!(
        v4.endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
    );
    ensure!(
        v4.ports
            .iter()
            .flatten()
            .map(|p| p.port)
            .collect::<Vec<_>>()
            == [Some(30443)]
    );
    ensure!(
        v4.labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str)
            == Some("workers")
    );
    ensure!(
        v4.labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("endpointslice-controller.k8s.io")
    );
    ensure!(
        v4.owner_references()
            .iter()
            .any(|o| o.kind == "Service" && o.name == "workers")
    );
    until_list_within(&slices, of_workers, "IPv6 slice", WAIT, family("IPv6", 2)).await?;

    // A stopped worker leaves the slice.
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    vms.patch(
        &lab.nodes[0],
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await?;
    until_list_within(
        &slices,
        of_workers,
        "IPv4 slice of one",
        WAIT,
        family("IPv4", 1),
    )
    .await?;

    let manual = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=manual"))
        .await?;
    ensure!(manual.items.is_empty(), "a selectorless Service got slices");
    lab.shutdown().await?;
    Ok(())
}
