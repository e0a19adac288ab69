//! The node controllers end to end: a guest node registered with the
//! uninitialized taint gets its providerID (the VMI name, dots included),
//! addresses, instance type and topology, then loses the taint; its
//! addresses follow the VMI; a finished VMI taints the node as shut down;
//! a deleted VM takes its node with it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ccm_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
const SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";

/// The node's taints but the node-condition ones (`node.kubernetes.io/*`):
/// kube-apiserver taints a new Node `not-ready` until node lifecycle sees
/// its kubelet Ready, which no lab node heartbeats for; they are not the
/// CCM's to touch.
fn taint_keys(node: &Node) -> Vec<String> {
    node.spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .map(|t| t.key.clone())
        .filter(|k| !k.starts_with("node.kubernetes.io/"))
        .collect()
}

fn internal_ips(node: &Node) -> Vec<String> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_initialized_and_follow_their_vmis() -> anyhow::Result<()> {
    let lab = lab(1, "nodes").await?;
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
    let ns = &lab.infra_namespace;
    let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), ns);
    let infra_nodes: Api<Node> = Api::all(infra.clone());
    let nodes: Api<Node> = Api::all(guest.clone());

    // A new worker whose name has dots, with an instance type.
    let name = "pool-a.worker-9";
    let mut vm = kubevirt_lab::guest::worker_vm(name, ns, &lab.worker_labels())?;
    if let Some(meta) = vm.spec.template.as_mut().and_then(|t| t.metadata.as_mut()) {
        meta.annotations = Some(BTreeMap::from([(
            "kubevirt.io/instancetype-name".to_string(),
            "u1.medium".to_string(),
        )]));
    }
    vms.create(&PostParams::default(), &vm).await?;
    let vmi = until(&vmis, name, "running VMI", |v| {
        v.filter(|v| v.phase() == "Running" && v.status.iter().any(|s| !s.interfaces.is_empty()))
            .cloned()
    })
    .await?;
    let host = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("host")?;
    let host_labels = infra_nodes.get(&host).await?.labels().clone();

    // kubelet registers the node: no providerID, uninitialized.
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": "worker-9"}},
        "spec": {"taints": [
            {"key": UNINITIALIZED, "value": "true", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
        ]}
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"addresses": [{"type": "Hostname", "address": "worker-9"}]}}),
            ),
        )
        .await?;

    // Initialized, with kubelet's Hostname address kept (kubelet may have
    // posted it before or after the CCM first saw the node).
    let node = until(&nodes, name, "initialized node", |n| {
        n.filter(|n| {
            !taint_keys(n).iter().any(|k| k == UNINITIALIZED)
                && n.status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .any(|a| a.address == "worker-9")
        })
        .cloned()
    })
    .await?;
    ensure!(
        node.spec.as_ref().and_then(|s| s.provider_id.as_deref())
            == Some("kubevirt://pool-a.worker-9"),
        "providerID {:?}",
        node.spec.as_ref().and_then(|s| s.provider_id.clone())
    );
    ensure!(
        taint_keys(&node) == ["dedicated"],
        "taints {:?}",
        taint_keys(&node)
    );
    let labels = node.labels();
    ensure!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str)
            == Some("u1.medium")
    );
    ensure!(
        labels
            .get("beta.kubernetes.io/instance-type")
            .map(String::as_str)
            == Some("u1.medium")
    );
    for key in [
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    ] {
        ensure!(
            labels.get(key) == host_labels.get(key),
            "{key}: {:?} vs infra {:?}",
            labels.get(key),
            host_labels.get(key)
        );
        ensure!(labels.contains_key(key), "{key} missing");
    }
    let vmi_ips: Vec<String> = vmi
        .status
        .iter()
        .flat_map(|s| s.interfaces.iter())
        .filter(|i| i.name.as_deref() == Some("default"))
        .flat_map(|i| i.ip_addresses.clone())
        .collect();
    ensure!(
        internal_ips(&node) == vmi_ips,
        "addresses {:?} vs VMI {vmi_ips:?}",
        internal_ips(&node)
    );
    let hostname: Vec<String> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "Hostname")
        .map(|a| a.address.clone())
        .collect();
    ensure!(hostname == ["worker-9"], "hostname address {hostname:?}");

    // The VMI's address changes: the node follows.
    let mut iface = vmi
        .status
        .as_ref()
        .and_then(|s| s.interfaces.first().cloned())
        .context("interface")?;
    iface.ip_address = Some("10.131.251.9".into());
    iface.ip_addresses = vec!["10.131.251.9".into(), "fd10:128::f9".into()];
    vmis.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"interfaces": [iface]}})),
    )
    .await?;
    until(&nodes, name, "new node addresses", |n| {
        n.filter(|n| internal_ips(n) == ["10.131.251.9", "fd10:128::f9"])
            .map(|_| ())
    })
    .await?;

    // The VMI finishes (a Manual VM, so nothing restarts it): shutdown
    // taint; running again: gone.
    vms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Manual"}})),
    )
    .await?;
    // Only once KubeVirt has seen the new strategy may the VMI finish, or
    // it is restarted under the old one.
    until(&vms, name, "runStrategy Manual observed", |vm| {
        vm.filter(|vm| {
            vm.metadata.generation.is_some()
                && vm.status.as_ref().and_then(|s| s.observed_generation) == vm.metadata.generation
        })
        .map(|_| ())
    })
    .await?;
    vmis.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await?;
    until(&nodes, name, "shutdown taint", |n| {
        n.filter(|n| taint_keys(n).iter().any(|k| k == SHUTDOWN))
            .map(|_| ())
    })
    .await?;
    vmis.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await?;
    until(&nodes, name, "shutdown taint removed", |n| {
        n.filter(|n| !taint_keys(n).iter().any(|k| k == SHUTDOWN))
            .map(|_| ())
    })
    .await?;

    // The VM is deleted: its VMI goes, and the node with it. Other nodes stay.
    vms.delete(name, &DeleteParams::default()).await?;
    until(&nodes, name, "node deletion", |n| n.is_none().then_some(())).await?;
    ensure!(
        nodes.get_opt(&lab.nodes[0]).await?.is_some(),
        "an unrelated node was deleted"
    );
    Ok(())
}
