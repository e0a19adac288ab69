//! The EndpointSlice controller of kube-controller-manager, for Services with
//! a selector: one slice per address family (and per distinct port set), named
//! `<service>-<family>[-n]`, labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`,
//! owned by the Service, listing the Running pods the selector matches (ready
//! condition, node, addresses of that family, ports resolved from numeric or
//! named target ports). Services without a selector are left alone: their
//! slices belong to someone else (the cloud provider's mirroring controller).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::error::{ignore_not_found, not_found_ok};
use crate::meta::{controller_ref, is_deleting, key};
use crate::pool::Family;
use crate::runner::{drain, error_policy};

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value (kube-controller-manager's).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Configuration of the EndpointSlice controller (nothing to configure yet).
#[derive(Clone, Debug, Default)]
pub struct EndpointsConfig {}

struct Ctx {
    client: Client,
}

/// Runs the EndpointSlice controller until the future is dropped.
pub async fn run(client: Client, _cfg: EndpointsConfig) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    // A pod change may matter to any selector Service of its namespace (its
    // old labels are not known here), so all of them look again.
    let controller = controller
        .owns(
            slices,
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        )
        .watches(pods, watcher::Config::default(), move |pod| {
            let ns = pod.namespace();
            store
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && selector(s).is_some())
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, Arc::new(Ctx { client }));
    drain("endpoints", controller).await;
    Ok(())
}

async fn reconcile(stale: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = stale.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(svc) = not_found_ok(services.get(&stale.name_any()).await)? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&svc) {
        return Ok(Action::await_change());
    }
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = format!(
        "{SERVICE_NAME_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
        svc.name_any()
    );
    let existing = slices
        .list(&ListParams::default().labels(&ours))
        .await?
        .items;

    let desired = match selector(&svc) {
        Some(sel) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let matching = pods
                .list(&ListParams::default().labels(&kubevirt_infra::labels::selector_string(&sel)))
                .await?
                .items;
            desired_slices(&svc, &matching)?
        }
        None => Vec::new(),
    };

    let pp = PostParams::default();
    for slice in &desired {
        let name = slice.name_any();
        match existing.iter().find(|e| e.name_any() == name) {
            None => {
                slices.create(&pp, slice).await?;
            }
            Some(current) if !same_slice(current, slice) => {
                let mut updated = slice.clone();
                updated.metadata.resource_version = current.resource_version();
                slices.replace(&name, &pp, &updated).await?;
            }
            Some(_) => {}
        }
    }
    for stale in existing
        .iter()
        .filter(|e| !desired.iter().any(|d| d.name_any() == e.name_any()))
    {
        ignore_not_found(
            slices
                .delete(&stale.name_any(), &DeleteParams::default())
                .await,
        )?;
    }
    tracing::debug!(service = %key(&svc), slices = desired.len(), "endpoint slices synced");
    Ok(Action::await_change())
}

/// The Service's selector, if it has a non-empty one.
pub fn selector(svc: &Service) -> Option<BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
}

fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.metadata.labels == b.metadata.labels
}

/// The slices for `svc` given the pods its selector matches.
pub fn desired_slices(svc: &Service, pods: &[Pod]) -> Result<Vec<EndpointSlice>, Error> {
    let owner =
        controller_ref(svc).ok_or_else(|| Error::missing("Service", key(svc), "metadata.uid"))?;
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut families: Vec<Family> = spec
        .ip_families
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|f| Family::parse(f))
        .collect();
    if families.is_empty() {
        families.push(Family::V4);
    }
    let mut out = Vec::new();
    for family in families {
        // Endpoints grouped by the ports their pod resolves.
        let mut groups: BTreeMap<Vec<PortKey>, Vec<Endpoint>> = BTreeMap::new();
        for pod in pods.iter().filter(|p| running(p) && !is_deleting(*p)) {
            let ready = pod_ready(pod);
            if !ready && !publish_not_ready {
                continue;
            }
            let addresses: Vec<String> = pod_ips(pod)
                .into_iter()
                .filter(|ip| {
                    ip.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| Family::of(&ip) == family)
                })
                .collect();
            let Some(address) = addresses.into_iter().next() else {
                continue;
            };
            let ports = resolve_ports(&spec.ports.clone().unwrap_or_default(), pod);
            groups.entry(ports).or_default().push(Endpoint {
                addresses: vec![address],
                conditions: Some(EndpointConditions {
                    ready: Some(ready || publish_not_ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_string()),
                    name: pod.metadata.name.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            });
        }
        if groups.is_empty() {
            groups.insert(
                resolve_ports(&spec.ports.clone().unwrap_or_default(), &Pod::default()),
                Vec::new(),
            );
        }
        for (i, (ports, mut endpoints)) in groups.into_iter().enumerate() {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let suffix = family.as_str().to_ascii_lowercase();
            let name = if i == 0 {
                format!("{}-{suffix}", svc.name_any())
            } else {
                format!("{}-{suffix}-{i}", svc.name_any())
            };
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: svc.namespace(),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), svc.name_any()),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ])),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                address_type: family.as_str().to_string(),
                endpoints,
                ports: Some(ports.into_iter().map(PortKey::into_port).collect()),
            });
        }
    }
    Ok(out)
}

/// An endpoint port in a sortable form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i32>,
    app_protocol: Option<String>,
}

impl PortKey {
    fn into_port(self) -> EndpointPort {
        EndpointPort {
            name: self.name,
            protocol: self.protocol,
            port: self.port,
            app_protocol: self.app_protocol,
        }
    }
}

/// The Service ports as the pod serves them: numeric target ports as they are,
/// named ones looked up among the pod's container ports (left unresolved when absent).
fn resolve_ports(ports: &[k8s_openapi::api::core::v1::ServicePort], pod: &Pod) -> Vec<PortKey> {
    ports
        .iter()
        .map(|p| {
            let port = match &p.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => named_port(pod, name, p.protocol.as_deref()),
                None => Some(p.port),
            };
            PortKey {
                name: Some(p.name.clone().unwrap_or_default()),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                port,
                app_protocol: p.app_protocol.clone(),
            }
        })
        .collect()
}

fn named_port(pod: &Pod, name: &str, protocol: Option<&str>) -> Option<i32> {
    let protocol = protocol.unwrap_or("TCP");
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let status = pod.status.clone().unwrap_or_default();
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip);
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, v4: &str, v6: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "n", "uid": format!("{name}-uid"), "labels": {"app": "x"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": v4}, {"ip": v6}],
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("valid pod")
    }

    #[test]
    fn slices_per_family_with_resolved_ports() -> Result<(), Error> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "n", "uid": "svc-uid"},
            "spec": {"selector": {"app": "x"}, "ipFamilies": ["IPv4", "IPv6"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                               {"name": "metrics", "port": 9000, "targetPort": 9100}]}
        }))
        .expect("valid Service");
        let pods = [
            pod("b", "10.0.0.2", "fd00::2", true),
            pod("a", "10.0.0.1", "fd00::1", true),
            pod("c", "10.0.0.3", "fd00::3", false),
        ];
        let slices = desired_slices(&svc, &pods)?;
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!(v4.name_any(), "web-ipv4");
        assert_eq!(v4.address_type, "IPv4");
        assert_eq!(
            v4.labels().get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            v4.labels().get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        let addrs: Vec<&str> = v4
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2"], "not-ready pod left out");
        assert_eq!(v4.endpoints[0].node_name.as_deref(), Some("node-1"));
        let ports: Vec<Option<i32>> = v4.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [Some(8080), Some(9100)]);
        assert_eq!(slices[1].address_type, "IPv6");
        assert_eq!(slices[1].endpoints[0].addresses, ["fd00::1"]);
        assert_eq!(
            v4.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.as_str()),
            Some("svc-uid")
        );

        let none = desired_slices(&svc, &[])?;
        assert!(
            none.iter().all(|s| s.endpoints.is_empty()),
            "empty slices still exist"
        );
        Ok(())
    }
}
