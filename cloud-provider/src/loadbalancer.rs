//! Guest LoadBalancer Service -> infra Service, as pure functions.
//!
//! [`desired_infra_service`] builds the infra Service the contract fixes
//! (name, labels, selector, ports aimed at the guest node ports, and the
//! traffic settings carried over); [`infra_patch`] compares it with what the
//! infra cluster holds and returns the merge patch that closes the gap, or
//! `None` when nothing differs, so an unchanged Service costs no write;
//! [`status_patch`] does the same for the guest's `status.loadBalancer`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubevirt_infra::labels::{
    CLUSTER_NAME_LABEL, ROLE_LABEL, ROLE_WORKER, TENANT_SERVICE_NAME_LABEL,
    TENANT_SERVICE_NAMESPACE_LABEL,
};
use serde_json::{Map, Value, json};

use crate::config::AnnotationAllowList;

/// Finalizer of the upstream service controller, kept for compatibility.
pub const LOAD_BALANCER_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

const LOAD_BALANCER: &str = "LoadBalancer";
const TCP: &str = "TCP";

/// What shapes every infra Service of this tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbSettings {
    pub cluster_name: String,
    /// Infra namespace.
    pub namespace: String,
    pub infra_labels: BTreeMap<String, String>,
    /// No selector on any infra Service.
    pub selectorless: bool,
    /// The EndpointSlice controller runs: `externalTrafficPolicy: Local`
    /// Services get no selector, the controller writes their slices.
    pub eps_controller: bool,
    pub annotations: AnnotationAllowList,
}

impl LbSettings {
    /// Labels every infra object of this tenant carries: the cluster name,
    /// then the infra labels (which win, as in Go).
    pub fn scope_labels(&self) -> BTreeMap<String, String> {
        let mut labels =
            BTreeMap::from([(CLUSTER_NAME_LABEL.to_string(), self.cluster_name.clone())]);
        labels.extend(self.infra_labels.clone());
        labels
    }
}

/// Why no infra Service can be built for a guest Service (yet).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    #[error("the Service has no UID yet")]
    NoUid,
    #[error("port {0} has no nodePort (allocateLoadBalancerNodePorts: false is not supported)")]
    NoNodePort(String),
}

/// Whether this controller owns the guest Service's load balancer.
pub fn is_managed(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some(LOAD_BALANCER) && s.load_balancer_class.is_none()
    })
}

/// Whether the guest Service carries our finalizer.
pub fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == LOAD_BALANCER_FINALIZER))
}

/// `"a" + UID without dashes`, cut to 32 characters (upstream's
/// `DefaultLoadBalancerName`).
pub fn infra_service_name(uid: &str) -> String {
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    name.truncate(32);
    name
}

/// The guest Service (namespace, name) an infra Service was made for.
pub fn tenant_service_of(meta: &ObjectMeta) -> Option<(String, String)> {
    let labels = meta.labels.as_ref()?;
    Some((
        labels.get(TENANT_SERVICE_NAMESPACE_LABEL)?.clone(),
        labels.get(TENANT_SERVICE_NAME_LABEL)?.clone(),
    ))
}

/// Whether the infra Service is selectorless, so its slices are written by
/// the EndpointSlice controller rather than the infra cluster.
pub fn is_selectorless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(BTreeMap::is_empty)
}

/// The infra Service for a managed guest Service.
pub fn desired_infra_service(guest: &Service, s: &LbSettings) -> Result<Service, DesiredError> {
    let uid = guest.metadata.uid.as_deref().ok_or(DesiredError::NoUid)?;
    let gspec = guest.spec.clone().unwrap_or_default();

    let mut labels = BTreeMap::from([
        (
            TENANT_SERVICE_NAME_LABEL.to_string(),
            guest.metadata.name.clone().unwrap_or_default(),
        ),
        (
            TENANT_SERVICE_NAMESPACE_LABEL.to_string(),
            guest.metadata.namespace.clone().unwrap_or_default(),
        ),
    ]);
    labels.extend(s.scope_labels());

    let annotations: BTreeMap<String, String> = guest
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| s.annotations.allows(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let local = gspec.external_traffic_policy.as_deref() == Some("Local");
    let selector = (!(s.selectorless || (local && s.eps_controller))).then(|| {
        BTreeMap::from([
            (ROLE_LABEL.to_string(), ROLE_WORKER.to_string()),
            (CLUSTER_NAME_LABEL.to_string(), s.cluster_name.clone()),
        ])
    });

    let ports = gspec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let node_port = p.node_port.ok_or_else(|| {
                DesiredError::NoNodePort(p.name.clone().unwrap_or_else(|| p.port.to_string()))
            })?;
            Ok(ServicePort {
                name: p.name.clone(),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| TCP.to_string())),
                port: p.port,
                target_port: Some(IntOrString::Int(node_port)),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Service {
        metadata: ObjectMeta {
            name: Some(infra_service_name(uid)),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(LOAD_BALANCER.to_string()),
            ports: Some(ports),
            selector,
            external_traffic_policy: gspec.external_traffic_policy,
            load_balancer_ip: gspec.load_balancer_ip.filter(|ip| !ip.is_empty()),
            external_ips: gspec.external_ips.filter(|v| !v.is_empty()),
            load_balancer_source_ranges: gspec
                .load_balancer_source_ranges
                .filter(|v| !v.is_empty()),
            ip_families: gspec.ip_families.filter(|v| !v.is_empty()),
            ip_family_policy: gspec.ip_family_policy,
            session_affinity: gspec.session_affinity,
            session_affinity_config: gspec.session_affinity_config,
            ..Default::default()
        }),
        status: None,
    })
}

/// A port as far as we manage it; the infra cluster adds its own nodePort.
fn port_view(p: &ServicePort) -> (&str, &str, i32, Option<&IntOrString>) {
    (
        p.name.as_deref().unwrap_or(""),
        p.protocol.as_deref().unwrap_or(TCP),
        p.port,
        p.target_port.as_ref(),
    )
}

fn empty_vec<T>(v: &Option<Vec<T>>) -> &[T] {
    v.as_deref().unwrap_or(&[])
}

/// The JSON merge patch taking `existing` to `desired` in every field we
/// manage, or `None` when they already agree. Fields the infra cluster
/// defaults (families, policies) are only compared when the guest sets them;
/// fields a user may clear (IPs, source ranges, selector) are removed when
/// the guest no longer has them; annotations are removed when the allow-list
/// covers them and the guest dropped them. Labels are only ever added.
pub fn infra_patch(
    existing: &Service,
    desired: &Service,
    allow: &AnnotationAllowList,
) -> Option<Value> {
    let mut metadata = Map::new();

    let have = existing.metadata.labels.clone().unwrap_or_default();
    let labels: Map<String, Value> = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }

    let have = existing.metadata.annotations.clone().unwrap_or_default();
    let want = desired.metadata.annotations.clone().unwrap_or_default();
    let mut annotations: Map<String, Value> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    for key in have
        .keys()
        .filter(|k| allow.allows(k) && !want.contains_key(*k))
    {
        annotations.insert(key.clone(), Value::Null);
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }

    let e = existing.spec.clone().unwrap_or_default();
    let d = desired.spec.clone().unwrap_or_default();
    let mut spec = Map::new();

    if e.type_ != d.type_ {
        spec.insert("type".into(), json!(d.type_));
    }
    let (e_ports, d_ports) = (empty_vec(&e.ports), empty_vec(&d.ports));
    if e_ports.len() != d_ports.len()
        || e_ports
            .iter()
            .zip(d_ports)
            .any(|(a, b)| port_view(a) != port_view(b))
    {
        // Keep the node ports the infra cluster allocated for ports that stay.
        let ports: Vec<ServicePort> = d_ports
            .iter()
            .map(|p| {
                let node_port = e_ports
                    .iter()
                    .find(|x| x.port == p.port && x.protocol == p.protocol)
                    .and_then(|x| x.node_port);
                ServicePort {
                    node_port,
                    ..p.clone()
                }
            })
            .collect();
        spec.insert("ports".into(), json!(ports));
    }
    let norm = |s: &Option<BTreeMap<String, String>>| s.clone().filter(|m| !m.is_empty());
    if norm(&e.selector) != norm(&d.selector) {
        spec.insert("selector".into(), json!(norm(&d.selector)));
    }
    // Fields the infra cluster defaults: only when the guest says something.
    macro_rules! when_set {
        ($field:ident, $key:literal) => {
            if d.$field.is_some() && d.$field != e.$field {
                spec.insert($key.into(), json!(d.$field));
            }
        };
    }
    when_set!(external_traffic_policy, "externalTrafficPolicy");
    when_set!(ip_families, "ipFamilies");
    when_set!(ip_family_policy, "ipFamilyPolicy");
    when_set!(session_affinity, "sessionAffinity");
    when_set!(session_affinity_config, "sessionAffinityConfig");
    // Fields the user may clear.
    let ip = |s: &Option<String>| s.clone().filter(|x| !x.is_empty());
    if ip(&e.load_balancer_ip) != ip(&d.load_balancer_ip) {
        spec.insert("loadBalancerIP".into(), json!(ip(&d.load_balancer_ip)));
    }
    if empty_vec(&e.external_ips) != empty_vec(&d.external_ips) {
        spec.insert("externalIPs".into(), json!(d.external_ips));
    }
    if empty_vec(&e.load_balancer_source_ranges) != empty_vec(&d.load_balancer_source_ranges) {
        spec.insert(
            "loadBalancerSourceRanges".into(),
            json!(d.load_balancer_source_ranges),
        );
    }

    let mut patch = Map::new();
    if !metadata.is_empty() {
        patch.insert("metadata".into(), Value::Object(metadata));
    }
    if !spec.is_empty() {
        patch.insert("spec".into(), Value::Object(spec));
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The ingress the infra cluster assigned.
pub fn infra_ingress(infra: &Service) -> &[LoadBalancerIngress] {
    infra
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[])
}

/// The status merge patch that gives the guest Service `ingress`, or `None`
/// when it already has exactly that.
pub fn status_patch(guest: &Service, ingress: &[LoadBalancerIngress]) -> Option<Value> {
    let current = infra_ingress(guest);
    if current == ingress {
        return None;
    }
    let value = if ingress.is_empty() {
        Value::Null
    } else {
        json!(ingress)
    };
    Some(json!({"status": {"loadBalancer": {"ingress": value}}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, ServiceStatus};

    fn settings() -> LbSettings {
        LbSettings {
            cluster_name: "tenant-a".into(),
            namespace: "infra-ns".into(),
            infra_labels: BTreeMap::from([("infra-id".to_string(), "abc".to_string())]),
            selectorless: false,
            eps_controller: true,
            annotations: AnnotationAllowList::new(vec!["metallb.universe.tf/*".into()])
                .expect("valid"),
        }
    }

    fn guest() -> Service {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop",
                "uid": "3f2a1b4c-5d6e-7f80-9a1b-2c3d4e5f6a7b",
                "annotations": {
                    "metallb.universe.tf/address-pool": "public",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                }
            },
            "spec": {
                "type": "LoadBalancer",
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53, "nodePort": 30053}
                ],
                "externalTrafficPolicy": "Cluster",
                "loadBalancerIP": "192.0.2.10",
                "externalIPs": ["198.51.100.7"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "PreferDualStack",
                "sessionAffinity": "ClientIP",
                "loadBalancerSourceRanges": ["10.0.0.0/8"]
            }
        }))
        .expect("valid service")
    }

    #[test]
    fn name_is_a_plus_uid_without_dashes_cut_to_32() {
        assert_eq!(
            infra_service_name("3f2a1b4c-5d6e-7f80-9a1b-2c3d4e5f6a7b"),
            "a3f2a1b4c5d6e7f809a1b2c3d4e5f6a7"
        );
        assert_eq!(infra_service_name("ab-c"), "aabc");
    }

    #[test]
    fn desired_service_follows_the_contract() {
        let d = desired_infra_service(&guest(), &settings()).expect("desired");
        assert_eq!(
            d.metadata.name.as_deref(),
            Some("a3f2a1b4c5d6e7f809a1b2c3d4e5f6a7")
        );
        assert_eq!(d.metadata.namespace.as_deref(), Some("infra-ns"));
        let labels = d.metadata.labels.clone().expect("labels");
        assert_eq!(labels[TENANT_SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[TENANT_SERVICE_NAMESPACE_LABEL], "shop");
        assert_eq!(labels[CLUSTER_NAME_LABEL], "tenant-a");
        assert_eq!(labels["infra-id"], "abc");
        // Only allow-listed annotations travel.
        let ann = d.metadata.annotations.clone().expect("annotations");
        assert_eq!(ann.len(), 1);
        assert_eq!(ann["metallb.universe.tf/address-pool"], "public");

        let spec = d.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([
                (ROLE_LABEL.to_string(), "worker".to_string()),
                (CLUSTER_NAME_LABEL.to_string(), "tenant-a".to_string()),
            ]))
        );
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[0].port, 80);
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(30080)));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(ports[1].target_port, Some(IntOrString::Int(30053)));
        assert_eq!(ports[0].node_port, None);
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.load_balancer_ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(spec.external_ips, Some(vec!["198.51.100.7".to_string()]));
        assert_eq!(
            spec.ip_families,
            Some(vec!["IPv4".to_string(), "IPv6".to_string()])
        );
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["10.0.0.0/8".to_string()])
        );
    }

    #[test]
    fn selector_is_dropped_when_selectorless_or_local_with_eps() {
        let mut g = guest();
        let spec = g.spec.as_mut().expect("spec");
        spec.external_traffic_policy = Some("Local".into());
        let d = desired_infra_service(&g, &settings()).expect("desired");
        assert!(is_selectorless(&d));

        let no_eps = LbSettings {
            eps_controller: false,
            ..settings()
        };
        let d = desired_infra_service(&g, &no_eps).expect("desired");
        assert!(!is_selectorless(&d));

        let selectorless = LbSettings {
            selectorless: true,
            eps_controller: false,
            ..settings()
        };
        let d = desired_infra_service(&guest(), &selectorless).expect("desired");
        assert!(is_selectorless(&d));
    }

    #[test]
    fn ports_without_node_port_or_missing_uid_are_errors() {
        let mut g = guest();
        if let Some(p) = g.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[1].node_port = None;
        }
        assert_eq!(
            desired_infra_service(&g, &settings()),
            Err(DesiredError::NoNodePort("dns".into()))
        );
        let mut g = guest();
        g.metadata.uid = None;
        assert_eq!(
            desired_infra_service(&g, &settings()),
            Err(DesiredError::NoUid)
        );
    }

    #[test]
    fn managed_only_for_load_balancers_without_class() {
        let mut g = guest();
        assert!(is_managed(&g));
        g.spec.as_mut().expect("spec").load_balancer_class = Some("other.io/lb".into());
        assert!(!is_managed(&g));
        let mut g = guest();
        g.spec.as_mut().expect("spec").type_ = Some("NodePort".into());
        assert!(!is_managed(&g));
    }

    /// The infra object as the infra server would return it: defaults filled
    /// in, node ports allocated, foreign labels and annotations present.
    fn as_stored(desired: &Service) -> Service {
        let mut s = desired.clone();
        s.metadata.resource_version = Some("7".into());
        s.metadata
            .labels
            .get_or_insert_default()
            .insert("someone-else".into(), "x".into());
        s.metadata
            .annotations
            .get_or_insert_default()
            .insert("other.io/note".into(), "keep".into());
        let spec = s.spec.get_or_insert_default();
        spec.cluster_ip = Some("10.96.0.10".into());
        spec.internal_traffic_policy = Some("Cluster".into());
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            p.node_port = Some(31000 + i32::try_from(i).unwrap_or(0));
        }
        s
    }

    #[test]
    fn no_patch_when_nothing_changed() {
        let s = settings();
        let d = desired_infra_service(&guest(), &s).expect("desired");
        assert_eq!(infra_patch(&as_stored(&d), &d, &s.annotations), None);
    }

    #[test]
    fn every_managed_field_is_patched_when_it_changes() {
        let s = settings();
        let before = as_stored(&desired_infra_service(&guest(), &s).expect("desired"));

        let mut g = guest();
        let spec = g.spec.as_mut().expect("spec");
        if let Some(p) = spec.ports.as_mut() {
            p[0].port = 8080;
            p.pop();
        }
        spec.external_traffic_policy = Some("Local".into());
        spec.load_balancer_ip = None;
        spec.external_ips = None;
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy = Some("SingleStack".into());
        spec.session_affinity = Some("None".into());
        spec.load_balancer_source_ranges = Some(vec!["192.168.0.0/16".into()]);
        g.metadata.annotations = None;
        let after = desired_infra_service(&g, &s).expect("desired");

        let patch = infra_patch(&before, &after, &s.annotations).expect("a patch");
        let spec = &patch["spec"];
        assert_eq!(
            spec["ports"],
            json!([{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 30080}])
        );
        assert_eq!(spec["selector"], Value::Null);
        assert!(spec.as_object().is_some_and(|m| m.contains_key("selector")));
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["loadBalancerIP"], Value::Null);
        assert_eq!(spec["externalIPs"], Value::Null);
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["loadBalancerSourceRanges"], json!(["192.168.0.0/16"]));
        // The dropped allow-listed annotation goes; foreign ones stay.
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({"metallb.universe.tf/address-pool": null})
        );
        assert!(patch["metadata"].get("labels").is_none());
    }

    #[test]
    fn changed_ports_keep_allocated_node_ports() {
        let s = settings();
        let before = as_stored(&desired_infra_service(&guest(), &s).expect("desired"));
        let mut g = guest();
        if let Some(p) = g.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[1].node_port = Some(30054);
        }
        let after = desired_infra_service(&g, &s).expect("desired");
        let patch = infra_patch(&before, &after, &s.annotations).expect("a patch");
        assert_eq!(patch["spec"]["ports"][0]["nodePort"], 31000);
        assert_eq!(patch["spec"]["ports"][1]["nodePort"], 31001);
        assert_eq!(patch["spec"]["ports"][1]["targetPort"], 30054);
    }

    #[test]
    fn lost_labels_are_restored() {
        let s = settings();
        let d = desired_infra_service(&guest(), &s).expect("desired");
        let mut stored = as_stored(&d);
        stored
            .metadata
            .labels
            .get_or_insert_default()
            .remove("infra-id");
        let patch = infra_patch(&stored, &d, &s.annotations).expect("a patch");
        assert_eq!(patch, json!({"metadata": {"labels": {"infra-id": "abc"}}}));
    }

    #[test]
    fn tenant_service_is_read_back_from_labels() {
        let d = desired_infra_service(&guest(), &settings()).expect("desired");
        assert_eq!(
            tenant_service_of(&d.metadata),
            Some(("shop".to_string(), "web".to_string()))
        );
        assert_eq!(tenant_service_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn status_patch_only_when_ingress_differs() {
        let ingress = vec![LoadBalancerIngress {
            ip: Some("192.0.2.1".into()),
            ..Default::default()
        }];
        let mut g = guest();
        assert_eq!(
            status_patch(&g, &ingress),
            Some(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}))
        );
        g.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress.clone()),
            }),
            ..Default::default()
        });
        assert_eq!(status_patch(&g, &ingress), None);
        assert_eq!(
            status_patch(&g, &[]),
            Some(json!({"status": {"loadBalancer": {"ingress": null}}}))
        );
        assert_eq!(status_patch(&guest(), &[]), None);
    }
}
