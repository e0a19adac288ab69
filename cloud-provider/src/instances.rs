//! Guest Node <-> VirtualMachineInstance, as pure functions: which VMI backs
//! a node, the node's providerID, addresses, instance-type and topology
//! labels, and the patches that initialize a node or move its taints.
//!
//! The node and node-lifecycle controllers call these with objects from their
//! watch caches; nothing here does I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, NodeAddress, Taint};
use kubevirt_infra::kubevirt::{VirtualMachineInstance, phase};
use kubevirt_infra::labels::{INSTANCETYPE_ANNOTATION, PROVIDER_ID_PREFIX};
use serde_json::{Map, Value, json};

/// Taint kubelet puts on nodes of an external cloud provider until we
/// initialize them.
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// Taint of nodes whose VM is shut down.
pub const SHUTDOWN_TAINT: &str = "node.cloudprovider.kubernetes.io/shutdown";
/// Label some installers set to name the node's VMI.
pub const INSTANCE_ID_LABEL: &str = "node.kubernetes.io/instance-id";
/// Annotation kubelet sets from `--node-ip`.
pub const PROVIDED_NODE_IP_ANNOTATION: &str = "alpha.kubernetes.io/provided-node-ip";

pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
pub const INSTANCE_TYPE_LABEL_BETA: &str = "beta.kubernetes.io/instance-type";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const ZONE_LABEL_BETA: &str = "failure-domain.beta.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const REGION_LABEL_BETA: &str = "failure-domain.beta.kubernetes.io/region";

/// The interface whose addresses are the node's.
const DEFAULT_INTERFACE: &str = "default";

/// `kubevirt://<vmi>`.
pub fn provider_id(vmi_name: &str) -> String {
    format!("{PROVIDER_ID_PREFIX}{vmi_name}")
}

/// The VMI name in a providerID of ours (names may contain dots).
pub fn vmi_of_provider_id(provider_id: &str) -> Option<&str> {
    provider_id
        .strip_prefix(PROVIDER_ID_PREFIX)
        .filter(|n| !n.is_empty())
}

fn node_provider_id(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .filter(|p| !p.is_empty())
}

/// Whether the node belongs to another provider (then we leave it alone).
pub fn is_foreign(node: &Node) -> bool {
    node_provider_id(node).is_some_and(|p| vmi_of_provider_id(p).is_none())
}

/// The VMI backing `node`: its providerID, else the instance-id label, else
/// the node name (KubeVirt names nodes after their VMs).
pub fn vmi_name_for_node(node: &Node) -> String {
    if let Some(name) = node_provider_id(node).and_then(vmi_of_provider_id) {
        return name.to_string();
    }
    if let Some(name) = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INSTANCE_ID_LABEL))
        .filter(|n| !n.is_empty())
    {
        return name.clone();
    }
    node.metadata.name.clone().unwrap_or_default()
}

/// Whether an address can be a node address (link-local, loopback and
/// unspecified ones cannot).
pub fn is_usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_link_local() || v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_unicast_link_local() || v6.is_loopback() || v6.is_unspecified()),
    }
}

/// The usable addresses of the VMI's `default` interface, both families, in
/// the order the VMI reports them, without duplicates. Entries written as
/// CIDRs count by their address.
pub fn vmi_addresses(vmi: &VirtualMachineInstance) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let interfaces = vmi.status.iter().flat_map(|s| s.interfaces.iter());
    for iface in interfaces.filter(|i| i.name.as_deref() == Some(DEFAULT_INTERFACE)) {
        let listed = iface.ip_addresses.iter().chain(iface.ip_address.iter());
        for raw in listed {
            let text = raw.split('/').next().unwrap_or(raw).trim();
            if let Ok(ip) = text.parse::<IpAddr>()
                && is_usable(&ip)
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
    }
    out
}

/// The node's addresses: every usable VMI address as InternalIP (the
/// `--node-ip` one first when kubelet was given one), then the Hostname
/// address. When the VMI reports nothing (guest agent restarting) the node
/// keeps its previous InternalIPs, as in the Go provider.
pub fn node_addresses(node: &Node, vmi: &VirtualMachineInstance) -> Vec<NodeAddress> {
    let previous = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let mut ips: Vec<String> = vmi_addresses(vmi).iter().map(IpAddr::to_string).collect();
    if ips.is_empty() {
        ips = previous
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .collect();
    }
    let provided = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVIDED_NODE_IP_ANNOTATION));
    if let Some(provided) = provided {
        // The annotation may hold one address per family, comma-separated.
        for want in provided.split(',').rev() {
            if let Some(pos) = ips.iter().position(|ip| ip == want.trim()) {
                let ip = ips.remove(pos);
                ips.insert(0, ip);
            }
        }
    }
    let hostname = previous
        .iter()
        .find(|a| a.type_ == "Hostname")
        .map(|a| a.address.clone())
        .or_else(|| node.metadata.name.clone());

    ips.into_iter()
        .map(|address| NodeAddress {
            address,
            type_: "InternalIP".into(),
        })
        .chain(hostname.map(|address| NodeAddress {
            address,
            type_: "Hostname".into(),
        }))
        .collect()
}

/// Instance-type and topology labels for a node.
pub fn instance_labels(
    vmi: &VirtualMachineInstance,
    zone: Option<&str>,
    region: Option<&str>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |keys: [&str; 2], value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            for k in keys {
                labels.insert(k.to_string(), v.to_string());
            }
        }
    };
    let instance_type = vmi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INSTANCETYPE_ANNOTATION))
        .map(String::as_str);
    put(
        [INSTANCE_TYPE_LABEL, INSTANCE_TYPE_LABEL_BETA],
        instance_type,
    );
    put([ZONE_LABEL, ZONE_LABEL_BETA], zone);
    put([REGION_LABEL, REGION_LABEL_BETA], region);
    labels
}

/// A VMI that finished counts as a shut-down instance.
pub fn is_shut_down(vmi: &VirtualMachineInstance) -> bool {
    matches!(vmi.phase(), phase::SUCCEEDED | phase::FAILED)
}

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

pub fn has_taint(node: &Node, key: &str) -> bool {
    taints(node).iter().any(|t| t.key == key)
}

/// The status patch setting the node's addresses, or `None` if they match.
/// Carries the resourceVersion: the addresses were computed from this
/// version of the node (its Hostname), so a newer one must not be overwritten.
pub fn addresses_patch(node: &Node, addresses: &[NodeAddress]) -> Option<Value> {
    let current = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or(&[]);
    (current != addresses).then(|| {
        json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "status": {"addresses": addresses}
        })
    })
}

/// The patch that initializes a node: providerID (if unset), the labels that
/// differ, and the uninitialized taint removed. Carries the resourceVersion
/// so a concurrent taint change is never overwritten.
pub fn initialize_patch(node: &Node, vmi_name: &str, labels: &BTreeMap<String, String>) -> Value {
    let mut metadata = Map::new();
    metadata.insert(
        "resourceVersion".into(),
        json!(node.metadata.resource_version),
    );
    let have = node.metadata.labels.clone().unwrap_or_default();
    let changed: Map<String, Value> = labels
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !changed.is_empty() {
        metadata.insert("labels".into(), Value::Object(changed));
    }
    let mut spec = Map::new();
    if node_provider_id(node).is_none() {
        spec.insert("providerID".into(), json!(provider_id(vmi_name)));
    }
    let remaining: Vec<&Taint> = taints(node)
        .iter()
        .filter(|t| t.key != UNINITIALIZED_TAINT)
        .collect();
    spec.insert(
        "taints".into(),
        if remaining.is_empty() {
            Value::Null
        } else {
            json!(remaining)
        },
    );
    json!({"metadata": metadata, "spec": spec})
}

/// The patch adding (`shut_down`) or removing the shutdown taint, or `None`
/// when the node already agrees. Carries the resourceVersion.
pub fn shutdown_taint_patch(node: &Node, shut_down: bool) -> Option<Value> {
    if has_taint(node, SHUTDOWN_TAINT) == shut_down {
        return None;
    }
    let mut list: Vec<Taint> = taints(node)
        .iter()
        .filter(|t| t.key != SHUTDOWN_TAINT)
        .cloned()
        .collect();
    if shut_down {
        list.push(Taint {
            key: SHUTDOWN_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    let taints = if list.is_empty() {
        Value::Null
    } else {
        json!(list)
    };
    Some(json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(ifaces: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "worker-0.pool", "namespace": "infra",
                         "annotations": {"kubevirt.io/instancetype-name": "u1.medium"}},
            "spec": {},
            "status": {"phase": "Running", "nodeName": "infra-node-1", "interfaces": ifaces}
        }))
        .expect("valid vmi")
    }

    fn node(extra: Value) -> Node {
        let mut base = json!({
            "metadata": {"name": "worker-0.pool", "resourceVersion": "5"},
            "spec": {"taints": [
                {"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
            ]},
            "status": {"addresses": [{"type": "Hostname", "address": "worker-0"}]}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).expect("valid node")
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn provider_ids_round_trip_with_dots() {
        assert_eq!(provider_id("worker-0.pool"), "kubevirt://worker-0.pool");
        assert_eq!(
            vmi_of_provider_id("kubevirt://worker-0.pool"),
            Some("worker-0.pool")
        );
        assert_eq!(vmi_of_provider_id("kubevirt://"), None);
        assert_eq!(vmi_of_provider_id("aws:///us-east-1/i-1"), None);
    }

    #[test]
    fn vmi_is_found_by_provider_id_then_label_then_name() {
        let n = node(json!({}));
        assert_eq!(vmi_name_for_node(&n), "worker-0.pool");
        let n = node(json!({"metadata": {"labels": {INSTANCE_ID_LABEL: "vm-7"}}}));
        assert_eq!(vmi_name_for_node(&n), "vm-7");
        let n = node(json!({"metadata": {"labels": {INSTANCE_ID_LABEL: "vm-7"}},
                            "spec": {"providerID": "kubevirt://vm-9"}}));
        assert_eq!(vmi_name_for_node(&n), "vm-9");
        assert!(!is_foreign(&n));
        assert!(is_foreign(&node(
            json!({"spec": {"providerID": "gce://p/z/i"}})
        )));
    }

    #[test]
    fn addresses_come_from_the_default_interface_both_families() {
        let v = vmi(json!([
            {"name": "default", "ipAddress": "10.0.0.5",
             "ipAddresses": ["10.0.0.5", "fe80::1", "fd00::5", "169.254.1.1", "fd00::6/64"]},
            {"name": "secondary", "ipAddresses": ["192.168.1.9"]}
        ]));
        let ips: Vec<String> = vmi_addresses(&v).iter().map(ToString::to_string).collect();
        assert_eq!(ips, vec!["10.0.0.5", "fd00::5", "fd00::6"]);
        let addrs = node_addresses(&node(json!({})), &v);
        let pairs: Vec<(&str, &str)> = addrs
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("InternalIP", "10.0.0.5"),
                ("InternalIP", "fd00::5"),
                ("InternalIP", "fd00::6"),
                ("Hostname", "worker-0"),
            ]
        );
    }

    #[test]
    fn provided_node_ip_goes_first_and_hostname_defaults_to_node_name() {
        let v = vmi(json!([{"name": "default", "ipAddresses": ["10.0.0.5", "fd00::5"]}]));
        let n = node(json!({
            "metadata": {"annotations": {PROVIDED_NODE_IP_ANNOTATION: "fd00::5"}},
            "status": {"addresses": []}
        }));
        let addrs = node_addresses(&n, &v);
        assert_eq!(addrs[0].address, "fd00::5");
        assert_eq!(addrs[1].address, "10.0.0.5");
        assert_eq!(addrs[2].type_, "Hostname");
        assert_eq!(addrs[2].address, "worker-0.pool");
    }

    #[test]
    fn previous_internal_ips_survive_a_silent_vmi() {
        let v = vmi(json!([]));
        let n = node(json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "Hostname", "address": "worker-0"}
        ]}}));
        let addrs = node_addresses(&n, &v);
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[0].address, "10.0.0.5");
        assert_eq!(addresses_patch(&n, &addrs), None);
        let p = addresses_patch(&node(json!({})), &addrs).expect("differs");
        assert_eq!(p["metadata"]["resourceVersion"], "5");
        assert_eq!(p["status"]["addresses"][0]["address"], "10.0.0.5");
    }

    #[test]
    fn labels_from_instancetype_and_topology() {
        let v = vmi(json!([]));
        let l = instance_labels(&v, Some("zone-a"), None);
        assert_eq!(l[INSTANCE_TYPE_LABEL], "u1.medium");
        assert_eq!(l[INSTANCE_TYPE_LABEL_BETA], "u1.medium");
        assert_eq!(l[ZONE_LABEL], "zone-a");
        assert_eq!(l[ZONE_LABEL_BETA], "zone-a");
        assert!(!l.contains_key(REGION_LABEL));
    }

    #[test]
    fn initialization_sets_provider_id_labels_and_drops_only_our_taint() {
        let n = node(json!({}));
        let labels = BTreeMap::from([(INSTANCE_TYPE_LABEL.to_string(), "u1".to_string())]);
        let p = initialize_patch(&n, "worker-0.pool", &labels);
        assert_eq!(p["metadata"]["resourceVersion"], "5");
        assert_eq!(p["metadata"]["labels"][INSTANCE_TYPE_LABEL], "u1");
        assert_eq!(p["spec"]["providerID"], "kubevirt://worker-0.pool");
        assert_eq!(
            p["spec"]["taints"],
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
        );
        let n = node(json!({"spec": {"providerID": "kubevirt://x", "taints": [
            {"key": UNINITIALIZED_TAINT, "effect": "NoSchedule"}]}}));
        let p = initialize_patch(&n, "x", &BTreeMap::new());
        assert!(p["spec"].get("providerID").is_none());
        assert_eq!(p["spec"]["taints"], Value::Null);
        assert!(p["metadata"].get("labels").is_none());
    }

    #[test]
    fn shutdown_taint_follows_the_vmi_phase() {
        let n = node(json!({}));
        let p = shutdown_taint_patch(&n, true).expect("adds");
        assert_eq!(p["spec"]["taints"].as_array().map(Vec::len), Some(3));
        assert_eq!(p["spec"]["taints"][2]["key"], SHUTDOWN_TAINT);
        assert_eq!(shutdown_taint_patch(&n, false), None);
        let tainted =
            node(json!({"spec": {"taints": [{"key": SHUTDOWN_TAINT, "effect": "NoSchedule"}]}}));
        assert_eq!(shutdown_taint_patch(&tainted, true), None);
        let p = shutdown_taint_patch(&tainted, false).expect("removes");
        assert_eq!(p["spec"]["taints"], Value::Null);

        let mut v = vmi(json!([]));
        assert!(!is_shut_down(&v));
        if let Some(s) = v.status.as_mut() {
            s.phase = Some("Failed".into());
        }
        assert!(is_shut_down(&v));
    }
}
