//! What `Lab::start` leaves behind for the daemons under test: kubeconfigs,
//! `lab.env`, guest Nodes pointing at their VMs, infra Nodes with zones,
//! default storage and snapshot classes, guest device directories; and a
//! second guest cluster sharing the infra namespace under its own labels.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::labels::{CLUSTER_NAME_LABEL, CLUSTER_NAMESPACE_ANNOTATION};
use kubevirt_infra::snapshot::VolumeSnapshotClass;
use kubevirt_lab::{Lab, LabConfig};
use serde_json::json;

async fn lab(vms: usize) -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms,
        devices: false,
        ..LabConfig::default()
    })
    .await
}

fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[tokio::test]
async fn files_guest_nodes_and_infra_defaults() -> anyhow::Result<()> {
    let lab = lab(2).await?;
    ensure!(lab.nodes == ["demo-worker-0", "demo-worker-1"]);
    let env = env_map(&std::fs::read_to_string(lab.env_file())?);
    ensure!(env.get("INFRA_NAMESPACE").map(String::as_str) == Some("clusters-demo"));
    ensure!(
        env.get("INFRA_CLUSTER_LABELS").map(String::as_str)
            == Some("hypershift.openshift.io/infra-id=demo")
    );
    ensure!(env.get("CLUSTER_NAME").map(String::as_str) == Some("demo"));
    ensure!(env.get("NODES").map(String::as_str) == Some("demo-worker-0 demo-worker-1"));
    ensure!(
        env.get("INFRA_KUBECONFIG")
            .map(std::path::PathBuf::from)
            .as_ref()
            == Some(&lab.infra_kubeconfig)
    );
    ensure!(
        env.get("GUEST_KUBECONFIG")
            .map(std::path::PathBuf::from)
            .as_ref()
            == Some(&lab.guest_kubeconfig)
    );
    for kubeconfig in [&lab.infra_kubeconfig, &lab.guest_kubeconfig] {
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
        ensure!(
            doc["current-context"].as_str().is_some(),
            "{} has no context",
            kubeconfig.display()
        );
    }

    let infra = lab.infra_client();
    let guest = lab.guest_client();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let guest_nodes: Api<Node> = Api::all(guest);
    for name in &lab.nodes {
        let node = guest_nodes.get(name).await?;
        ensure!(
            node.spec.as_ref().and_then(|s| s.provider_id.as_deref())
                == Some(format!("kubevirt://{name}").as_str())
        );
        ensure!(node.annotations().get(CLUSTER_NAMESPACE_ANNOTATION) == Some(&lab.infra_namespace));
        let status = node.status.clone().context("node status")?;
        ensure!(
            status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
        let ips: Vec<String> = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        let vmi = vmis.get(name).await?;
        ensure!(
            ips == vmi.status.context("vmi status")?.interfaces[0].ip_addresses,
            "node addresses follow the VMI"
        );
        ensure!(lab.by_id_dir(name).is_dir());
    }

    let infra_nodes = Api::<Node>::all(infra.clone())
        .list(&ListParams::default())
        .await?
        .items;
    ensure!(infra_nodes.len() == 3);
    ensure!(
        infra_nodes
            .iter()
            .all(|n| n.labels().contains_key("topology.kubernetes.io/zone")
                && n.labels().contains_key("topology.kubernetes.io/region"))
    );
    let class = Api::<StorageClass>::all(infra.clone())
        .get(kubevirt_lab::lab::INFRA_STORAGE_CLASS)
        .await?;
    ensure!(class.allow_volume_expansion == Some(true));
    ensure!(
        class
            .annotations()
            .get("storageclass.kubernetes.io/is-default-class")
            .map(String::as_str)
            == Some("true")
    );
    Api::<VolumeSnapshotClass>::all(infra.clone())
        .get(kubevirt_lab::lab::INFRA_SNAPSHOT_CLASS)
        .await?;

    // Applying the CRDs again is harmless and puts back a changed one.
    let crds: Api<CustomResourceDefinition> = Api::all(infra.clone());
    let name = "datavolumes.cdi.kubevirt.io";
    let change = json!({"spec": {"names": {"shortNames": ["changed"]}}});
    crds.patch(name, &PatchParams::default(), &Patch::Merge(&change))
        .await?;
    lab_cluster::crds::apply(&infra, &lab_sim::crds::definitions()?).await?;
    let names = crds
        .get(name)
        .await?
        .spec
        .names
        .short_names
        .unwrap_or_default();
    ensure!(names == ["dv", "dvs"], "short names {names:?}");
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_second_guest_cluster_shares_the_infra_namespace() -> anyhow::Result<()> {
    let mut lab = lab(1).await?;
    let labels = BTreeMap::from([(
        "hypershift.openshift.io/infra-id".to_string(),
        "other".to_string(),
    )]);
    let tenant = lab.add_guest_cluster("other", labels, 1).await?.clone();
    ensure!(tenant.nodes == ["other-worker-0"]);
    ensure!(tenant.kubeconfig.exists());

    let infra = lab.infra_client();
    let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let mine = vms
        .list(&ListParams::default().labels("hypershift.openshift.io/infra-id=demo"))
        .await?
        .items;
    let theirs = vms
        .list(&ListParams::default().labels("hypershift.openshift.io/infra-id=other"))
        .await?
        .items;
    ensure!(mine.iter().map(|v| v.name_any()).collect::<Vec<_>>() == ["demo-worker-0"]);
    ensure!(theirs.iter().map(|v| v.name_any()).collect::<Vec<_>>() == ["other-worker-0"]);
    ensure!(
        theirs[0]
            .labels()
            .get(CLUSTER_NAME_LABEL)
            .map(String::as_str)
            == Some("other")
    );

    let their_nodes = Api::<Node>::all(tenant.api.client())
        .list(&ListParams::default())
        .await?
        .items;
    ensure!(their_nodes.iter().map(|n| n.name_any()).collect::<Vec<_>>() == ["other-worker-0"]);
    let my_nodes = Api::<Node>::all(lab.guest_client())
        .list(&ListParams::default())
        .await?
        .items;
    ensure!(my_nodes.iter().map(|n| n.name_any()).collect::<Vec<_>>() == ["demo-worker-0"]);
    lab.shutdown().await?;
    Ok(())
}
