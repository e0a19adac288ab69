//! The pieces of a guest (tenant) cluster: its worker VirtualMachines in the
//! infra cluster and the Node each worker becomes in the guest cluster
//! (providerID `kubevirt://<vm>`, the cluster-namespace annotation, Ready,
//! the VMI's addresses as InternalIPs).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_infra::labels::{
    CLUSTER_NAME_LABEL, CLUSTER_NAMESPACE_ANNOTATION, PROVIDER_ID_PREFIX, ROLE_LABEL, ROLE_WORKER,
};
use serde_json::json;

use crate::LabError;

/// Name of worker `i` of `cluster`.
pub fn worker_name(cluster: &str, i: usize) -> String {
    format!("{cluster}-worker-{i}")
}

/// The labels of a worker VM (and its VMI and virt-launcher pod): role
/// worker, the cluster name, and the tenant's infra labels.
pub fn worker_labels(
    cluster: &str,
    infra_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = infra_labels.clone();
    labels.insert(ROLE_LABEL.to_string(), ROLE_WORKER.to_string());
    labels.insert(CLUSTER_NAME_LABEL.to_string(), cluster.to_string());
    labels
}

/// A worker VM as a hosted-control-plane operator creates one: `runStrategy:
/// Always`, the worker labels on the VM and its template, a container root disk.
pub fn worker_vm(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<VirtualMachine, LabError> {
    let mut template_labels = labels.clone();
    template_labels.insert("kubevirt.io/vm".to_string(), name.to_string());
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {
                    "domain": {
                        "cpu": {"cores": 2},
                        "memory": {"guest": "4Gi"},
                        "devices": {
                            "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}]
                        }
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]
                }
            }
        }
    });
    serde_json::from_value(vm).map_err(|e| LabError::Invalid(format!("worker VM {name}: {e}")))
}

/// The guest Node of a running worker VMI, with pod range `pod_cidr`.
pub fn guest_node(vmi: &VirtualMachineInstance, infra_namespace: &str, pod_cidr: &str) -> Node {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let mut addresses: Vec<NodeAddress> = vmi
        .status
        .iter()
        .flat_map(|s| s.interfaces.iter())
        .filter(|i| i.name.as_deref() == Some("default"))
        .flat_map(|i| i.ip_addresses.iter())
        .map(|ip| NodeAddress {
            type_: "InternalIP".to_string(),
            address: ip.clone(),
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".to_string(),
        address: name.clone(),
    });
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("2".to_string())),
        ("memory".to_string(), Quantity("4Gi".to_string())),
        ("pods".to_string(), Quantity("110".to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity("30Gi".to_string()),
        ),
    ]);
    let now = Time(jiff::Timestamp::now());
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("node-role.kubernetes.io/worker".to_string(), String::new()),
            ])),
            annotations: Some(BTreeMap::from([(
                CLUSTER_NAMESPACE_ANNOTATION.to_string(),
                infra_namespace.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("{PROVIDER_ID_PREFIX}{name}")),
            pod_cidr: Some(pod_cidr.to_string()),
            pod_cidrs: Some(vec![pod_cidr.to_string()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses),
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_string(),
                status: "True".to_string(),
                reason: Some("KubeletReady".to_string()),
                message: Some("kubelet is posting ready status".to_string()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".to_string(),
                operating_system: "linux".to_string(),
                // The guest's kubelet is the control plane's version.
                kubelet_version: format!("v{}", lab_cluster::KUBERNETES_VERSION),
                kube_proxy_version: format!("v{}", lab_cluster::KUBERNETES_VERSION),
                container_runtime_version: "cri-o://1.32.0".to_string(),
                os_image: "Fedora CoreOS".to_string(),
                kernel_version: "6.12.0".to_string(),
                machine_id: String::new(),
                system_uuid: vmi.metadata.uid.clone().unwrap_or_default(),
                boot_id: String::new(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn workers_and_their_nodes() -> Result<(), LabError> {
        let infra = BTreeMap::from([(
            "hypershift.openshift.io/infra-id".to_string(),
            "demo".to_string(),
        )]);
        let labels = worker_labels("demo", &infra);
        let vm = worker_vm(&worker_name("demo", 0), "clusters-demo", &labels)?;
        assert_eq!(vm.name_any(), "demo-worker-0");
        assert_eq!(
            vm.labels().get(ROLE_LABEL).map(String::as_str),
            Some("worker")
        );
        let template = vm
            .spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        assert_eq!(
            template.get(CLUSTER_NAME_LABEL).map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            template
                .get("hypershift.openshift.io/infra-id")
                .map(String::as_str),
            Some("demo")
        );

        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "metadata": {"name": "demo-worker-0", "namespace": "clusters-demo"},
            "spec": {},
            "status": {"interfaces": [{"name": "default", "ipAddresses": ["10.128.0.1", "fd10:128::1"]}]}
        }))
        .expect("valid VMI");
        let node = guest_node(&vmi, "clusters-demo", "10.192.0.0/24");
        assert_eq!(
            node.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
            Some("kubevirt://demo-worker-0")
        );
        assert_eq!(
            node.annotations()
                .get(CLUSTER_NAMESPACE_ANNOTATION)
                .map(String::as_str),
            Some("clusters-demo")
        );
        let ips: Vec<&str> = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.as_str())
            .collect();
        assert_eq!(ips, ["10.128.0.1", "fd10:128::1"]);
        Ok(())
    }
}
