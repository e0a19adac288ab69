//! Guest EndpointSlices -> infra EndpointSlices, as pure functions.
//!
//! A selectorless infra Service gets its endpoints from us: one endpoint per
//! VMI whose guest node runs a ready endpoint of the tenant Service, per
//! address family, aimed at the guest node ports. [`hosting_nodes`] reads the
//! guest slices, [`desired_slices`] builds the infra slices (at most
//! [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, stable names), and [`plan`]
//! compares them with the slices we already wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kubevirt_infra::kubevirt::{VirtualMachineInstance, phase};
use serde_json::{Value, json};

use crate::instances::vmi_addresses;

pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The Go controller's value, kept so slices survive a swap either way.
pub const MANAGED_BY_VALUE: &str = "kubevirt-eps-controller";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// What the infra cluster's own EndpointSlice controller (in
/// kube-controller-manager) marks its slices with.
pub const KCM_MANAGED_BY_VALUE: &str = "endpointslice-controller.k8s.io";
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Guest nodes that run at least one ready endpoint. Endpoints without a
/// node name cannot be placed and are skipped; a missing `ready` condition
/// means ready, as the EndpointSlice API defines.
pub fn hosting_nodes<'a>(
    guest_slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<String> {
    guest_slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The address families of the infra Service (`IPv4`, `IPv6`), from its
/// `ipFamilies`, else the guest's, else IPv4.
pub fn address_types(infra: &Service, guest: &Service) -> Vec<String> {
    let families = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ip_families.clone())
            .filter(|f| !f.is_empty())
    };
    families(infra)
        .or_else(|| families(guest))
        .unwrap_or_else(|| vec!["IPv4".to_string()])
        .into_iter()
        .filter(|f| f == "IPv4" || f == "IPv6")
        .collect()
}

fn family_of(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The infra endpoint of one VMI for one family, if it has such an address.
fn endpoint(vmi: &VirtualMachineInstance, family: &str) -> Option<Endpoint> {
    let ip = vmi_addresses(vmi)
        .into_iter()
        .find(|ip| family_of(ip) == family)?;
    let running = vmi.phase() == phase::RUNNING;
    let finished = matches!(vmi.phase(), phase::SUCCEEDED | phase::FAILED);
    Some(Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(running),
            serving: Some(running),
            terminating: Some(finished),
        }),
        node_name: vmi.status.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some("VirtualMachineInstance".into()),
            name: vmi.metadata.name.clone(),
            namespace: vmi.metadata.namespace.clone(),
            uid: vmi.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The ports of the infra slices: the guest Service ports, aimed at their
/// node ports. Ports without a node port are left out.
fn slice_ports(guest: &Service) -> Vec<EndpointPort> {
    guest
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                port: Some(p.node_port?),
                app_protocol: None,
            })
        })
        .collect()
}

/// The infra slices a selectorless infra Service should have, given the
/// VMIs hosting ready tenant endpoints (sorted by name for stable slices).
/// A Service with a selector gets none: the infra cluster writes its slices.
pub fn desired_slices(
    infra: &Service,
    guest: &Service,
    hosts: &[&VirtualMachineInstance],
) -> Vec<EndpointSlice> {
    if !crate::loadbalancer::is_selectorless(infra) {
        return Vec::new();
    }
    let (Some(name), Some(uid)) = (
        infra.metadata.name.as_deref(),
        infra.metadata.uid.as_deref(),
    ) else {
        return Vec::new();
    };
    let mut hosts = hosts.to_vec();
    hosts.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    hosts.dedup_by(|a, b| a.metadata.name == b.metadata.name);

    let mut labels = infra.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.to_string());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let ports = slice_ports(guest);

    let mut out = Vec::new();
    for family in address_types(infra, guest) {
        let endpoints: Vec<Endpoint> = hosts.iter().filter_map(|v| endpoint(v, &family)).collect();
        for (i, chunk) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{}-{i}", family.to_lowercase())),
                    namespace: infra.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: family.clone(),
                endpoints: chunk.to_vec(),
                ports: Some(ports.clone()),
            });
        }
    }
    out
}

/// What to write to make the infra slices match.
#[derive(Debug, Default, PartialEq)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    /// (slice name, merge patch).
    pub update: Vec<(String, Value)>,
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

type EndpointView = (Vec<String>, bool, bool, bool, String, String);

fn endpoint_view(e: &Endpoint) -> EndpointView {
    let c = e.conditions.clone().unwrap_or_default();
    (
        e.addresses.clone(),
        c.ready.unwrap_or(true),
        c.serving.unwrap_or(true),
        c.terminating.unwrap_or(false),
        e.node_name.clone().unwrap_or_default(),
        e.target_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_default(),
    )
}

fn port_view(p: &EndpointPort) -> (String, String, Option<i32>) {
    (
        p.name.clone().unwrap_or_default(),
        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        p.port,
    )
}

fn owned_by(slice: &EndpointSlice, owner: &OwnerReference) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner.uid && o.kind == owner.kind)
}

/// Compare our existing slices of one Service with the desired ones.
/// Address types are immutable, so a slice whose type changed is replaced.
pub fn plan(existing: &[&EndpointSlice], desired: Vec<EndpointSlice>) -> SlicePlan {
    let mut out = SlicePlan::default();
    let by_name: BTreeMap<&str, &EndpointSlice> = existing
        .iter()
        .filter_map(|s| Some((s.metadata.name.as_deref()?, *s)))
        .collect();
    let wanted: BTreeSet<String> = desired
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();

    for want in desired {
        let name = want.metadata.name.clone().unwrap_or_default();
        let Some(have) = by_name.get(name.as_str()) else {
            out.create.push(want);
            continue;
        };
        if have.address_type != want.address_type {
            out.delete.push(name);
            out.create.push(want);
            continue;
        }
        let have_labels = have.metadata.labels.clone().unwrap_or_default();
        let labels_ok = want
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| have_labels.get(k) == Some(v));
        let owner_ok = want
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| owned_by(have, o));
        let endpoints_ok = have
            .endpoints
            .iter()
            .map(endpoint_view)
            .eq(want.endpoints.iter().map(endpoint_view));
        let ports_ok = have.ports.iter().flatten().map(port_view).eq(want
            .ports
            .iter()
            .flatten()
            .map(port_view));
        if !(labels_ok && owner_ok && endpoints_ok && ports_ok) {
            out.update.push((
                name,
                json!({
                    "metadata": {
                        "labels": want.metadata.labels,
                        "ownerReferences": want.metadata.owner_references,
                    },
                    "endpoints": want.endpoints,
                    "ports": want.ports,
                }),
            ));
        }
    }
    for name in by_name.keys().filter(|n| !wanted.contains(**n)) {
        out.delete.push((*name).to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infra(selector: bool, families: &[&str]) -> Service {
        let mut s: Service = serde_json::from_value(json!({
            "metadata": {"name": "aabc", "namespace": "infra", "uid": "u-1",
                         "labels": {"cluster.x-k8s.io/cluster-name": "t1",
                                    "cluster.x-k8s.io/tenant-service-name": "web"}},
            "spec": {"type": "LoadBalancer", "ipFamilies": families,
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 30080}]}
        }))
        .expect("valid");
        if selector && let Some(spec) = s.spec.as_mut() {
            spec.selector = Some(BTreeMap::from([("a".to_string(), "b".to_string())]));
        }
        s
    }

    fn guest() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                               {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443}]}
        }))
        .expect("valid")
    }

    fn vmi(name: &str, phase: &str, ips: &[&str]) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "infra", "uid": format!("uid-{name}")},
            "spec": {},
            "status": {"phase": phase, "nodeName": format!("host-{name}"),
                       "interfaces": [{"name": "default", "ipAddresses": ips}]}
        }))
        .expect("valid")
    }

    fn guest_slice(endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": endpoints
        }))
        .expect("valid")
    }

    #[test]
    fn hosting_nodes_are_nodes_with_ready_endpoints() {
        let s = guest_slice(json!([
            {"addresses": ["10.244.1.2"], "nodeName": "w1", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.2"], "nodeName": "w2", "conditions": {"ready": false}},
            {"addresses": ["10.244.3.2"], "nodeName": "w3"},
            {"addresses": ["10.244.4.2"]},
            {"addresses": ["10.244.1.3"], "nodeName": "w1"}
        ]));
        let nodes: Vec<String> = hosting_nodes([&s]).into_iter().collect();
        assert_eq!(nodes, vec!["w1", "w3"]);
    }

    #[test]
    fn one_endpoint_per_vmi_per_family_aimed_at_node_ports() {
        let (a, b) = (
            vmi("w1", "Running", &["10.0.0.1", "fd00::1"]),
            vmi("w0", "Running", &["10.0.0.2"]),
        );
        let slices = desired_slices(&infra(false, &["IPv4", "IPv6"]), &guest(), &[&a, &b]);
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!(v4.metadata.name.as_deref(), Some("aabc-ipv4-0"));
        assert_eq!(v4.address_type, "IPv4");
        let addrs: Vec<&str> = v4
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addrs, vec!["10.0.0.2", "10.0.0.1"]);
        assert_eq!(v4.endpoints[1].node_name.as_deref(), Some("host-w1"));
        let labels = v4.metadata.labels.clone().expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels[SERVICE_NAME_LABEL], "aabc");
        assert_eq!(labels["cluster.x-k8s.io/cluster-name"], "t1");
        let owner = &v4.metadata.owner_references.clone().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "u-1")
        );
        let ports: Vec<Option<i32>> = v4.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, vec![Some(30080), Some(30443)]);
        let v6 = &slices[1];
        assert_eq!(v6.address_type, "IPv6");
        assert_eq!(v6.endpoints.len(), 1);
        assert_eq!(v6.endpoints[0].addresses, vec!["fd00::1"]);
    }

    #[test]
    fn conditions_follow_the_vmi_phase() {
        let v = vmi("w1", "Failed", &["10.0.0.1"]);
        let slices = desired_slices(&infra(false, &["IPv4"]), &guest(), &[&v]);
        let c = slices[0].endpoints[0]
            .conditions
            .clone()
            .expect("conditions");
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(false), Some(true))
        );
    }

    #[test]
    fn services_with_a_selector_get_no_slices() {
        let v = vmi("w1", "Running", &["10.0.0.1"]);
        assert!(desired_slices(&infra(true, &["IPv4"]), &guest(), &[&v]).is_empty());
    }

    #[test]
    fn large_services_are_split_into_slices_of_100() {
        let vmis: Vec<VirtualMachineInstance> = (0..250)
            .map(|i| {
                vmi(
                    &format!("w{i:03}"),
                    "Running",
                    &[&format!("10.0.{}.{}", i / 200, i % 200 + 1)],
                )
            })
            .collect();
        let refs: Vec<&VirtualMachineInstance> = vmis.iter().collect();
        let slices = desired_slices(&infra(false, &["IPv4"]), &guest(), &refs);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(slices[2].metadata.name.as_deref(), Some("aabc-ipv4-2"));
    }

    #[test]
    fn plan_creates_updates_and_deletes_only_what_differs() {
        let (a, b) = (
            vmi("w1", "Running", &["10.0.0.1"]),
            vmi("w2", "Running", &["10.0.0.2", "fd00::2"]),
        );
        let svc = infra(false, &["IPv4", "IPv6"]);
        let first = desired_slices(&svc, &guest(), &[&a]);
        // Nothing exists: create the IPv4 slice (w1 has no IPv6).
        let p = plan(&[], first.clone());
        assert_eq!(p.create.len(), 1);
        // Same again: nothing to do.
        let existing: Vec<&EndpointSlice> = first.iter().collect();
        assert!(plan(&existing, first.clone()).is_empty());
        // w1 moves to w2: update IPv4, create IPv6.
        let second = desired_slices(&svc, &guest(), &[&b]);
        let p = plan(&existing, second);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].0, "aabc-ipv4-0");
        assert_eq!(
            p.update[0].1["endpoints"][0]["addresses"],
            json!(["10.0.0.2"])
        );
        assert_eq!(p.create.len(), 1);
        assert!(p.delete.is_empty());
        // No endpoints left: delete.
        let p = plan(&existing, Vec::new());
        assert_eq!(p.delete, vec!["aabc-ipv4-0".to_string()]);
    }

    #[test]
    fn address_type_change_replaces_the_slice() {
        let a = vmi("w1", "Running", &["10.0.0.1"]);
        let desired = desired_slices(&infra(false, &["IPv4"]), &guest(), &[&a]);
        let mut stale = desired[0].clone();
        stale.address_type = "IPv6".into();
        let p = plan(&[&stale], desired);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create.len(), 1);
    }
}
