//! Three hosted clusters made by the manager, each with its own guest API
//! server and one worker VM from a NodePool: `a` and `b` on the management
//! cluster itself (their infra is their control-plane namespace), `c` on an
//! external infra cluster reached through infra credentials. The CSI
//! controller and the CCM of each run from the very Deployments the manager
//! wrote (their args, env, ConfigMaps, Secrets and ServiceAccount, through
//! the lab's kubelet stand-in), with the sidecar stand-ins in front. In each
//! guest a PVC is bound and attached (a DataVolume and a hotplug on that
//! cluster's own VM) and a LoadBalancer Service gets its address; nothing
//! crosses over: a's controller refuses to attach to b's VM. Deleting c
//! leaves nothing of it on the external infra cluster, and a and b keep
//! theirs.
//!
//! Needs root (the pods' mount namespaces). Build the binaries first:
//! `cargo build --bins`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::manager_support::*;
use anyhow::{Context as _, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachine;
use kubevirt_lab::pod::{PodRun, RunningPod};
use kubevirt_lab::{Lab, LabConfig, wait};
use lab_cluster::Cluster;
use serde_json::json;

const DRIVER: &str = "csi.kubevirt.io";
const STORAGE_CLASS: &str = "kubevirt-csi-infra-default";
const EXTERNAL_NAMESPACE: &str = "tenant-c";

/// One hosted cluster and what runs for it.
struct Tenant {
    name: String,
    guest: Cluster,
    /// Client of the cluster its VMs and volumes live in.
    infra: Client,
    infra_namespace: String,
    node: String,
    pods: Vec<RunningPod>,
    sidecars: Option<tokio::task::JoinHandle<()>>,
}

impl Tenant {
    fn infra_id(&self) -> String {
        format!("{}-id", self.name)
    }

    fn node_id(&self) -> String {
        format!("{}/{}", self.infra_namespace, self.node)
    }

    fn guest_client(&self) -> Client {
        self.guest.client()
    }

    async fn stop(&mut self) {
        if let Some(t) = self.sidecars.take() {
            t.abort();
        }
        for p in &mut self.pods {
            let _ = p.daemon.terminate(Duration::from_secs(5)).await;
        }
    }

    fn logs(&self) -> String {
        self.pods
            .iter()
            .map(|p| {
                let log = p.daemon.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {}\n{}",
                    p.daemon.log_path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Names of the objects of kind `K` in namespace `ns`.
async fn names<K>(client: &Client, ns: &str) -> anyhow::Result<Vec<String>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosted_clusters_run_from_the_managers_config_without_crosstalk() -> anyhow::Result<()>
{
    if !is_root() {
        bail!("this test runs the daemons in mount namespaces and needs root");
    }
    let lab = lab().await?;
    let external = crate::common::start_lab(LabConfig {
        vms: 0,
        devices: false,
        ..LabConfig::default()
    })
    .await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let mut tenants = Vec::new();
    let result = scenario(&lab, &external, &mut tenants).await;
    let logs: Vec<String> = tenants.iter().map(Tenant::logs).collect();
    for t in &mut tenants {
        t.stop().await;
    }
    let manager_log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    external.shutdown().await?;
    lab.shutdown().await?;
    result.with_context(|| {
        format!(
            "manager log:\n{manager_log}\ndaemon logs:\n{}",
            logs.join("\n")
        )
    })
}

async fn scenario(lab: &Lab, external: &Lab, tenants: &mut Vec<Tenant>) -> anyhow::Result<()> {
    let management = lab.infra_client();
    let ext = external.infra_client();
    ensure_namespace(&ext, EXTERNAL_NAMESPACE).await?;
    let credentials = Secret {
        metadata: ObjectMeta {
            name: Some("c-infra-kubeconfig".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(
                external
                    .infra
                    .kubeconfig_yaml(&external.infra.admin_token(), Some(EXTERNAL_NAMESPACE))
                    .into_bytes(),
            ),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(management.clone(), NS)
        .create(&PostParams::default(), &credentials)
        .await?;

    // The hosted clusters, their pools and the agents that register nodes.
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        let guest = lab.add_cluster(&format!("guest-{name}")).await?;
        let (platform, infra, infra_namespace) = if name == "c" {
            (
                json!({"credentials": {
                    "infraKubeConfigSecret": {"name": "c-infra-kubeconfig", "key": "kubeconfig"},
                    "infraNamespace": EXTERNAL_NAMESPACE}}),
                ext.clone(),
                EXTERNAL_NAMESPACE.to_string(),
            )
        } else {
            (json!({}), management.clone(), format!("clusters-{name}"))
        };
        create_hosted_cluster(lab, &guest, name, "0.1.0", platform).await?;
        node_pools(&management)
            .create(
                &PostParams::default(),
                &node_pool(&format!("{name}-pool"), name, 1, "0.1.0", json!({}))?,
            )
            .await?;
        agents.push(NodeAgent::start(
            infra.clone(),
            guest.client(),
            &infra_namespace,
            &format!("{name}-id"),
            Duration::ZERO,
            Duration::ZERO,
        ));
        tenants.push(Tenant {
            name: name.to_string(),
            guest,
            infra,
            infra_namespace,
            node: String::new(),
            pods: Vec::new(),
            sidecars: None,
        });
    }

    for t in tenants.iter_mut() {
        until_reconciled(lab, &t.name).await?;
        let nodes: Api<Node> = Api::all(t.guest_client());
        t.node = until_list(
            &nodes,
            "",
            &format!("the guest node of {}", t.name),
            |all| all.first().map(|n| n.name_any()),
        )
        .await?;
        start_daemons(lab, t).await?;
    }

    for t in tenants.iter() {
        volume_is_bound_and_attached(t).await?;
        load_balancer_gets_an_address(t).await?;
    }
    a_controller_refuses_another_clusters_vm(&tenants[0], &tenants[1]).await?;
    deleting_the_external_cluster_leaves_nothing(lab, tenants).await?;
    for a in agents {
        a.stop().await;
    }
    Ok(())
}

/// Runs the CSI controller and the CCM of `t` from the manager's
/// Deployments, and the CSI sidecar stand-ins in front of the controller.
async fn start_daemons(lab: &Lab, t: &mut Tenant) -> anyhow::Result<()> {
    let cp = format!("clusters-{}", t.name);
    let deployments: Api<Deployment> = Api::namespaced(lab.infra_client(), &cp);
    let csi = deployments.get("kubevirt-csi-controller").await?;
    let ccm = deployments.get("kubevirt-cloud-controller-manager").await?;
    let csi_pod = format!("{}-lab", csi.name_any());
    let controller = PodRun::of_deployment(
        &lab.dir,
        &lab.infra,
        &csi,
        &csi_pod,
        "csi-driver",
        "kubevirt-csi-driver",
    )?
    .start()
    .await?;
    let socket = controller.volume("socket-dir")?.join("csi.sock");
    t.pods.push(controller);
    let ccm_pod = format!("{}-lab", ccm.name_any());
    let ccm = PodRun {
        // The health port: every pod has its own; here they share a host.
        extra_args: vec!["--secure-port=0".to_string()],
        ..PodRun::of_deployment(
            &lab.dir,
            &lab.infra,
            &ccm,
            &ccm_pod,
            "cloud-controller-manager",
            "kubevirt-cloud-controller-manager",
        )?
    }
    .start()
    .await?;
    t.pods.push(ccm);

    wait::file_exists(&socket, true, WAIT).await?;
    t.sidecars = Some(tokio::spawn(lab_guest::run_all(
        lab_guest::connect_lazy(&socket),
        t.guest_client(),
        lab_guest::SidecarConfig::default(),
    )));
    // What the node plugin registers on the node (not run here).
    csi_node(&t.guest_client(), &t.node, &t.node_id()).await
}

async fn csi_node(guest: &Client, node: &str, node_id: &str) -> anyhow::Result<()> {
    let csinode: CSINode = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": {"name": node},
        "spec": {"drivers": [{"name": DRIVER, "nodeID": node_id}]}
    }))?;
    Api::<CSINode>::all(guest.clone())
        .create(&PostParams::default(), &csinode)
        .await?;
    Ok(())
}

async fn volume_is_bound_and_attached(t: &Tenant) -> anyhow::Result<()> {
    let guest = t.guest_client();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let pv_name = wait::until(&claims, "data", WAIT, |c| {
        c.and_then(|c| c.spec.as_ref()?.volume_name.clone())
            .filter(|v| !v.is_empty())
    })
    .await
    .with_context(|| format!("{}: the claim bound", t.name))?;
    let pv = Api::<PersistentVolume>::all(guest.clone())
        .get(&pv_name)
        .await?;
    let handle = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .context("the PV has no CSI volume handle")?;

    // The DataVolume is in this cluster's infra namespace, labelled for it.
    let dvs: Api<DataVolume> = Api::namespaced(t.infra.clone(), &t.infra_namespace);
    let dv = dvs.get_opt(&handle).await?.with_context(|| {
        format!(
            "{}: no DataVolume {handle} in {}",
            t.name, t.infra_namespace
        )
    })?;
    ensure!(
        dv.labels().get(INFRA_ID_LABEL) == Some(&t.infra_id()),
        "{}: DataVolume labels {:?}",
        t.name,
        dv.labels()
    );

    let attachments: Api<VolumeAttachment> = Api::all(guest);
    attachments
        .create(
            &PostParams::default(),
            &attachment("data-attach", &pv_name, &t.node)?,
        )
        .await?;
    wait::until(&attachments, "data-attach", WAIT, |va| {
        va.and_then(|va| va.status.as_ref())
            .filter(|s| s.attached)
            .map(|_| ())
    })
    .await
    .with_context(|| format!("{}: the volume attached", t.name))?;
    let vms: Api<VirtualMachine> = Api::namespaced(t.infra.clone(), &t.infra_namespace);
    let vm = vms.get(&t.node).await?;
    ensure!(
        vm.template_volumes().iter().any(|v| v.name == handle),
        "{}: VM {} does not carry {handle}",
        t.name,
        t.node
    );
    Ok(())
}

fn attachment(name: &str, pv: &str, node: &str) -> anyhow::Result<VolumeAttachment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": pv}}
    }))?)
}

async fn load_balancer_gets_an_address(t: &Tenant) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(t.guest_client(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let ip = wait::until(&services, "web", WAIT, wait::ingress_ip)
        .await
        .with_context(|| format!("{}: the Service's address", t.name))?;
    // The infra Service behind it is this cluster's, in its namespace.
    let infra: Api<Service> = Api::namespaced(t.infra.clone(), &t.infra_namespace);
    let mirrored = infra
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| i.iter().any(|i| i.ip.as_deref() == Some(ip.as_str())))
        })
        .count();
    ensure!(
        mirrored == 1,
        "{}: {mirrored} infra Services in {} carry {ip}",
        t.name,
        t.infra_namespace
    );
    Ok(())
}

/// A VolumeAttachment in a's guest naming b's VM (as a forged CSINode
/// would) is refused by a's controller, and b's VM carries nothing of a.
async fn a_controller_refuses_another_clusters_vm(a: &Tenant, b: &Tenant) -> anyhow::Result<()> {
    let guest = a.guest_client();
    csi_node(&guest, "intruder", &b.node_id()).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), "default");
    let pv = claims
        .get("data")
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .context("a's claim is not bound")?;
    let attachments: Api<VolumeAttachment> = Api::all(guest);
    attachments
        .create(
            &PostParams::default(),
            &attachment("cross", &pv, "intruder")?,
        )
        .await?;
    let refused = wait::until(&attachments, "cross", WAIT, |va| {
        va.and_then(|va| va.status.as_ref())
            .and_then(|s| s.attach_error.as_ref()?.message.clone())
    })
    .await
    .context("a's controller answering the cross-cluster attach")?;
    let vm = Api::<VirtualMachine>::namespaced(b.infra.clone(), &b.infra_namespace)
        .get(&b.node)
        .await?;
    let a_volumes = names::<DataVolume>(&a.infra, &a.infra_namespace).await?;
    ensure!(
        !vm.template_volumes()
            .iter()
            .any(|v| a_volumes.contains(&v.name)),
        "b's VM carries a volume of a after: {refused}"
    );
    let status = attachments.get("cross").await?.status;
    ensure!(
        !status.is_some_and(|s| s.attached),
        "the cross-cluster attach succeeded"
    );
    Ok(())
}

/// Deletes HostedCluster c (its daemons stop first, as their pods would with
/// their Deployment): its VM, DataVolume, infra Service and the daemons'
/// accounts leave the external infra namespace; a and b keep their volumes.
async fn deleting_the_external_cluster_leaves_nothing(
    lab: &Lab,
    tenants: &mut [Tenant],
) -> anyhow::Result<()> {
    let c = tenants
        .iter_mut()
        .find(|t| t.name == "c")
        .context("no tenant c")?;
    c.stop().await;
    let hcs = hosted_clusters(&lab.infra_client());
    hcs.delete("c", &Default::default()).await?;
    until_dynamic(&hcs, "c", "HostedCluster c deleted", |hc| {
        hc.is_none().then_some(())
    })
    .await?;
    let ns = &c.infra_namespace;
    let infra = &c.infra;
    let dvs = names::<DataVolume>(infra, ns).await?;
    let vms = names::<VirtualMachine>(infra, ns).await?;
    let services = names::<Service>(infra, ns).await?;
    let roles = names::<Role>(infra, ns).await?;
    let bindings = names::<RoleBinding>(infra, ns).await?;
    let mut accounts = names::<ServiceAccount>(infra, ns).await?;
    accounts.retain(|n| n != "default");
    ensure!(
        dvs.is_empty()
            && vms.is_empty()
            && services.is_empty()
            && roles.is_empty()
            && bindings.is_empty()
            && accounts.is_empty(),
        "left in {ns}: DataVolumes [{}], VMs [{}], Services [{}], Roles [{}], RoleBindings [{}], ServiceAccounts [{}]",
        dvs.join(", "),
        vms.join(", "),
        services.join(", "),
        roles.join(", "),
        bindings.join(", "),
        accounts.join(", ")
    );
    for t in tenants.iter().filter(|t| t.name != "c") {
        let dvs = names::<DataVolume>(&t.infra, &t.infra_namespace)
            .await?
            .iter()
            .filter(|n| n.starts_with("pvc-"))
            .count();
        ensure!(
            dvs == 1,
            "{} has {dvs} volume DataVolumes after c was deleted",
            t.name
        );
    }
    Ok(())
}
