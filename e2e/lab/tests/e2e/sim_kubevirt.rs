//! The KubeVirt simulator through the infra API server: worker VMs get
//! Running VMIs spread over the infra nodes with dual-stack interfaces and a
//! virt-launcher pod carrying the template labels and the same addresses;
//! halting, restarting and deleting a VM behave like KubeVirt.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::labels::{CLUSTER_NAME_LABEL, CREATED_BY_LABEL, ROLE_LABEL};
use kubevirt_lab::{Lab, LabConfig, wait};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn lab(vms: usize) -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms,
        devices: false,
        ..LabConfig::default()
    })
    .await
}

#[tokio::test]
async fn workers_run_with_addresses_nodes_and_launcher_pods() -> anyhow::Result<()> {
    let lab = lab(3).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nodes: Api<Node> = Api::all(client.clone());
    let launchers = pods
        .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
        .await?
        .items;
    ensure!(launchers.len() == 3, "{} launcher pods", launchers.len());

    let mut node_names = BTreeSet::new();
    let mut all_ips = BTreeSet::new();
    for name in &lab.nodes {
        let vmi = vmis.get(name).await?;
        ensure!(vmi.phase() == "Running");
        let labels = vmi.labels();
        ensure!(labels.get(ROLE_LABEL).map(String::as_str) == Some("worker"));
        ensure!(labels.get(CLUSTER_NAME_LABEL) == Some(&lab.cluster_name));
        ensure!(labels.get("vm.kubevirt.io/name") == Some(name));
        let status = vmi.status.clone().context("status")?;
        let node = status.node_name.clone().context("nodeName")?;
        let zone = nodes
            .get(&node)
            .await?
            .labels()
            .get("topology.kubernetes.io/zone")
            .cloned();
        ensure!(zone.is_some(), "infra node {node} has no zone");
        node_names.insert(node.clone());
        let iface = status
            .interfaces
            .iter()
            .find(|i| i.name.as_deref() == Some("default"))
            .context("default interface")?;
        ensure!(iface.interface_name.as_deref() == Some("eth0"));
        ensure!(iface.mac.as_deref().is_some_and(|m| m.len() == 17));
        ensure!(iface.ip_addresses.len() == 2, "{:?}", iface.ip_addresses);
        ensure!(iface.ip_address.as_ref() == iface.ip_addresses.first());
        ensure!(iface.ip_addresses[0].parse::<std::net::Ipv4Addr>().is_ok());
        ensure!(iface.ip_addresses[1].parse::<std::net::Ipv6Addr>().is_ok());
        for ip in &iface.ip_addresses {
            ensure!(all_ips.insert(ip.clone()), "address {ip} handed out twice");
        }

        let uid = vmi.uid().context("uid")?;
        let pod = launchers
            .iter()
            .find(|p| p.labels().get(CREATED_BY_LABEL) == Some(&uid))
            .context("launcher pod of the VMI")?;
        ensure!(
            pod.name_any()
                .starts_with(&format!("virt-launcher-{name}-"))
        );
        ensure!(pod.name_any().len() == format!("virt-launcher-{name}-").len() + 5);
        for (k, v) in lab.worker_labels() {
            ensure!(pod.labels().get(&k) == Some(&v), "pod lacks label {k}={v}");
        }
        ensure!(pod.labels().get("kubevirt.io").map(String::as_str) == Some("virt-launcher"));
        ensure!(
            pod.owner_references()
                .iter()
                .any(|o| o.kind == "VirtualMachineInstance" && o.uid == uid)
        );
        ensure!(pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(&node));
        let pod_status = pod.status.clone().context("pod status")?;
        ensure!(pod_status.phase.as_deref() == Some("Running"));
        let pod_ips: Vec<String> = pod_status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .collect();
        ensure!(
            pod_ips == iface.ip_addresses,
            "pod IPs {pod_ips:?} vs VMI {:?}",
            iface.ip_addresses
        );
        ensure!(
            pod_status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }
    ensure!(
        node_names.len() == 3,
        "three VMIs round-robin over three nodes: {node_names:?}"
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn halting_restarting_and_deleting_a_vm() -> anyhow::Result<()> {
    let lab = lab(1).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let name = lab.nodes[0].clone();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first = vmis.get(&name).await?;
    let first_uid = first.uid().context("uid")?;

    // Template changes reach the VMI only on restart.
    let relabel =
        json!({"spec": {"template": {"metadata": {"labels": {"lab.test/generation": "2"}}}}});
    vms.patch(&name, &PatchParams::default(), &Patch::Merge(&relabel))
        .await?;
    let halt = json!({"spec": {"runStrategy": "Halted"}});
    vms.patch(&name, &PatchParams::default(), &Patch::Merge(&halt))
        .await?;
    wait::until(&vmis, &name, WAIT, |v| v.is_none().then_some(())).await?;
    let selector = format!("{CREATED_BY_LABEL}={first_uid}");
    ensure!(
        pods.list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty(),
        "launcher pod outlived its VMI"
    );
    wait::until(&vms, &name, WAIT, |vm| {
        vm.and_then(|v| v.status.as_ref())
            .filter(|s| s.printable_status.as_deref() == Some("Stopped") && s.ready == Some(false))
            .map(|_| ())
    })
    .await?;

    let start = json!({"spec": {"runStrategy": "Always"}});
    vms.patch(&name, &PatchParams::default(), &Patch::Merge(&start))
        .await?;
    let second = wait::until(&vmis, &name, WAIT, |v| {
        v.filter(|v| v.phase() == "Running").cloned()
    })
    .await?;
    ensure!(second.uid() != Some(first_uid), "a new VMI");
    ensure!(
        second
            .labels()
            .get("lab.test/generation")
            .map(String::as_str)
            == Some("2")
    );
    wait::until(&vms, &name, WAIT, |vm| {
        vm.and_then(|v| v.status.as_ref())
            .filter(|s| s.printable_status.as_deref() == Some("Running") && s.ready == Some(true))
            .map(|_| ())
    })
    .await?;

    vms.delete(&name, &DeleteParams::default()).await?;
    wait::until(&vmis, &name, WAIT, |v| v.is_none().then_some(())).await?;
    let selector = format!("{CREATED_BY_LABEL}={}", second.uid().context("uid")?);
    ensure!(
        pods.list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty()
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_launcher_pod_fails_the_vmi_and_always_restarts_it() -> anyhow::Result<()> {
    let lab = lab(1).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let name = lab.nodes[0].clone();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first = vmis.get(&name).await?;
    let uid = first.uid().context("uid")?;
    let pod = pods
        .list(&ListParams::default().labels(&format!("{CREATED_BY_LABEL}={uid}")))
        .await?
        .items
        .into_iter()
        .next()
        .context("launcher pod")?;
    pods.delete(&pod.name_any(), &DeleteParams::default())
        .await?;
    let replacement = wait::until(&vmis, &name, WAIT, |v| {
        v.filter(|v| v.uid().as_deref() != Some(uid.as_str()) && v.phase() == "Running")
            .cloned()
    })
    .await?;
    ensure!(replacement.status.is_some_and(|s| !s.interfaces.is_empty()));
    lab.shutdown().await?;
    Ok(())
}
