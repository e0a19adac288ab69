//! The EndpointSlice controller end to end: an `externalTrafficPolicy:
//! Local` Service gets a selectorless infra Service whose slices list only
//! the VMIs hosting a ready endpoint, following endpoint moves and VMI
//! address changes (which also reach the guest Node addresses).

use std::time::Duration;

use crate::ccm_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use serde_json::json;

/// (addresses, nodeName) of every endpoint of the slices, sorted.
fn endpoints(slices: &[EndpointSlice]) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(Vec<String>, String)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| (e.addresses.clone(), e.node_name.clone().unwrap_or_default()))
        .collect();
    out.sort();
    out
}

fn v4_of(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.status
        .iter()
        .flat_map(|s| s.interfaces.iter())
        .filter(|i| i.name.as_deref() == Some("default"))
        .flat_map(|i| i.ip_addresses.iter())
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .cloned()
}

fn host_of(vmi: &VirtualMachineInstance) -> String {
    vmi.status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn guest_slice(nodes: &[(&str, bool)]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, (node, ready))| {
            json!({"addresses": [format!("10.244.{i}.5")], "nodeName": node,
                   "conditions": {"ready": ready}})
        })
        // An endpoint without a node must not break anything.
        .chain(std::iter::once(json!({"addresses": ["10.244.99.9"]})))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_endpoints_and_vmi_addresses() -> anyhow::Result<()> {
    let lab = lab(3, "eps").await?;
    let tenant = Tenant::main(&lab);
    let mut ccm = start_ccm(&lab, &tenant, &CcmOptions::default()).await?;
    let result = scenario(&lab).await;
    let log = log_of(&ccm);
    ccm.terminate(Duration::from_secs(10)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("CCM log (tail):\n{log}"))
}

async fn scenario(lab: &kubevirt_lab::Lab) -> anyhow::Result<()> {
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let guest_svcs: Api<Service> = Api::namespaced(guest.clone(), "default");
    let guest_slices: Api<EndpointSlice> = Api::namespaced(guest.clone(), "default");
    let infra_svcs: Api<Service> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let infra_slices: Api<EndpointSlice> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let nodes: Api<Node> = Api::all(guest.clone());
    let (n0, n1) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let (vmi0, vmi1) = (vmis.get(&n0).await?, vmis.get(&n1).await?);

    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))?;
    let svc = guest_svcs.create(&PostParams::default(), &svc).await?;
    let node_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port)
        .context("node port")?;
    let name = infra_name(&svc.uid().context("uid")?);
    let infra_svc = until(&infra_svcs, &name, "selectorless infra Service", |s| {
        s.filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|s| s.selector.as_ref().is_none_or(|m| m.is_empty()))
        })
        .cloned()
    })
    .await?;
    let ours = format!("{SERVICE_NAME}={name},{MANAGED_BY}={MANAGED_BY_EPS}");

    // Endpoints on n0 (ready) and n1 (not ready): only n0's VMI is listed.
    let slice: EndpointSlice = serde_json::from_value(guest_slice(&[(&n0, true), (&n1, false)]))?;
    guest_slices.create(&PostParams::default(), &slice).await?;
    let want = vec![(vec![v4_of(&vmi0).context("vmi0 ip")?], host_of(&vmi0))];
    let slices = until_list(&infra_slices, &ours, "slices on n0", |s| {
        (endpoints(s) == want).then(|| s.to_vec())
    })
    .await?;
    for s in &slices {
        ensure!(s.address_type == "IPv4");
        let owner = s.owner_references().first().context("owner")?;
        ensure!(owner.kind == "Service" && Some(&owner.uid) == infra_svc.metadata.uid.as_ref());
        let ports: Vec<Option<i32>> = s.ports.iter().flatten().map(|p| p.port).collect();
        ensure!(
            ports == vec![Some(node_port)],
            "slice ports {ports:?}, node port {node_port}"
        );
        ensure!(s.endpoints.len() <= 100);
        ensure!(s.labels().get(CLUSTER_NAME) == Some(&lab.cluster_name));
    }

    // The pod moves: ready on n1 only.
    let moved = guest_slice(&[(&n0, false), (&n1, true)]);
    guest_slices
        .patch(
            "web-x1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": moved["endpoints"]})),
        )
        .await?;
    let want = vec![(vec![v4_of(&vmi1).context("vmi1 ip")?], host_of(&vmi1))];
    until_list(&infra_slices, &ours, "slices on n1", |s| {
        (endpoints(s) == want).then_some(())
    })
    .await?;

    // n1's VMI gets a new address: the slice and the guest Node follow.
    let mut iface = vmi1
        .status
        .as_ref()
        .and_then(|s| s.interfaces.first().cloned())
        .context("interface")?;
    let v6 = iface
        .ip_addresses
        .iter()
        .find(|ip| ip.contains(':'))
        .cloned()
        .unwrap_or_default();
    let new_ip = "10.131.250.7".to_string();
    iface.ip_address = Some(new_ip.clone());
    iface.ip_addresses = vec![new_ip.clone(), v6];
    vmis.patch_status(
        &n1,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"interfaces": [iface]}})),
    )
    .await?;
    let want = vec![(vec![new_ip.clone()], host_of(&vmi1))];
    until_list(&infra_slices, &ours, "slices with the new address", |s| {
        (endpoints(s) == want).then_some(())
    })
    .await?;
    until(&nodes, &n1, "guest Node address", |n| {
        n.and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .filter(|a| {
                a.iter()
                    .any(|a| a.type_ == "InternalIP" && a.address == new_ip)
            })
            .map(|_| ())
    })
    .await?;

    // Back to Cluster: the infra Service selects VMs itself, our slices go.
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
        )
        .await?;
    until_list(&infra_slices, &ours, "our slices removed", |s| {
        s.is_empty().then_some(())
    })
    .await?;
    until(&infra_svcs, &name, "selector back", |s| {
        s.filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|s| s.selector.as_ref().is_some_and(|m| !m.is_empty()))
        })
        .map(|_| ())
    })
    .await?;

    // Local again, then deleted: infra Service and slices go.
    guest_svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await?;
    until_list(&infra_slices, &ours, "slices again", |s| {
        (!s.is_empty()).then_some(())
    })
    .await?;
    guest_svcs.delete("web", &DeleteParams::default()).await?;
    until(&infra_svcs, &name, "infra Service deleted", |s| {
        s.is_none().then_some(())
    })
    .await?;
    until_list(&infra_slices, &ours, "slices deleted", |s| {
        s.is_empty().then_some(())
    })
    .await?;
    Ok(())
}
