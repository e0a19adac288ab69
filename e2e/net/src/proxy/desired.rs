//! What a cluster's service proxy serves, as a pure function of its
//! Services, EndpointSlices and Nodes ([`desired`]), following kube-proxy:
//!
//! - each ClusterIP:port forwards to the Service's ready endpoints of that
//!   address family, keeping the client's address;
//! - each node address:nodePort forwards to all ready endpoints with the
//!   client's address replaced by the node's (`externalTrafficPolicy:
//!   Cluster`), or only to the endpoints on that node, keeping the client's
//!   address (`Local`);
//! - each load-balancer ingress IP:port (`ipMode` VIP or unset; only where
//!   the proxy serves ingress, see [`Options`]) forwards like a node port:
//!   `Local` keeps the client's address, `Cluster` takes the address of the
//!   endpoint's node;
//! - a `Local` LoadBalancer Service's `healthCheckNodePort` answers on each
//!   node with the number of its endpoints there.
//!
//! An address:port with no endpoint to forward to is not listened on, so a
//! connection to it is refused. `sessionAffinity: ClientIP` pins a client
//! address to one endpoint for `timeoutSeconds` (10800 by default).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::Protocol;

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);

/// An address the proxy listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listen {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl Listen {
    /// TCP on `addr`.
    pub fn tcp(addr: SocketAddr) -> Listen {
        Listen {
            protocol: Protocol::Tcp,
            addr,
        }
    }

    /// UDP on `addr`.
    pub fn udp(addr: SocketAddr) -> Listen {
        Listen {
            protocol: Protocol::Udp,
            addr,
        }
    }
}

/// What a listener does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Forward(Forward),
    Health(Health),
}

/// Forwarding to a Service's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// `namespace/name:port`, for logs.
    pub service: String,
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub affinity: Option<Duration>,
    pub source: Source,
}

/// One endpoint address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub addr: SocketAddr,
    pub node: Option<String>,
    /// The address of the endpoint's node in the backend's family.
    pub node_ip: Option<IpAddr>,
}

/// The source address a forwarded connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client's own address.
    Client,
    /// The receiving node's address (SNAT).
    Node(IpAddr),
    /// The address of the endpoint's node (SNAT by the node the load
    /// balancer chose).
    BackendNode,
}

/// A `healthCheckNodePort` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// What a proxy serves besides ClusterIPs and node ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Serve LoadBalancer ingress addresses (the infra cluster's proxy; a
    /// guest's LoadBalancer Services are reached through the infra one).
    pub load_balancer_ingress: bool,
}

/// Everything the proxy listens on, and what each listener does.
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    nodes: &[Arc<Node>],
    opts: Options,
) -> BTreeMap<Listen, Route> {
    let node_ips: BTreeMap<String, Vec<IpAddr>> = nodes
        .iter()
        .map(|n| (n.name_any(), internal_ips(n)))
        .collect();
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(name) = slice.labels().get(SERVICE_NAME_LABEL) {
            let key = (slice.namespace().unwrap_or_default(), name.clone());
            by_service.entry(key).or_default().push(slice);
        }
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        service_routes(svc, slices, &node_ips, opts, &mut out);
    }
    out
}

fn service_routes(
    svc: &Service,
    slices: &[&EndpointSlice],
    node_ips: &BTreeMap<String, Vec<IpAddr>>,
    opts: Options,
    out: &mut BTreeMap<Listen, Route>,
) {
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return;
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_AFFINITY, Duration::from_secs)
    });
    let (namespace, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ingress: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let node_ports = kind == "NodePort" || kind == "LoadBalancer";

    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")) else {
            continue;
        };
        let backends = backends(slices, port, protocol, node_ips);
        let service = format!(
            "{namespace}/{name}:{}",
            port.name.clone().unwrap_or_else(|| port.port.to_string())
        );
        let forward = |backends: Vec<Backend>, source: Source| {
            Route::Forward(Forward {
                service: service.clone(),
                backends,
                affinity,
                source,
            })
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        for ip in &cluster_ips {
            let matching = of_family(&backends, *ip);
            if !matching.is_empty() {
                let addr = SocketAddr::new(*ip, service_port);
                out.insert(Listen { protocol, addr }, forward(matching, Source::Client));
            }
        }
        if let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
            for (node, ips) in node_ips.iter().filter(|_| node_ports) {
                for ip in ips {
                    let mut matching = of_family(&backends, *ip);
                    if local {
                        matching.retain(|b| b.node.as_deref() == Some(node.as_str()));
                    }
                    if !matching.is_empty() {
                        let source = if local {
                            Source::Client
                        } else {
                            Source::Node(*ip)
                        };
                        let addr = SocketAddr::new(*ip, node_port);
                        out.insert(Listen { protocol, addr }, forward(matching, source));
                    }
                }
            }
        }
        if opts.load_balancer_ingress && kind == "LoadBalancer" {
            for ip in &ingress {
                let matching = of_family(&backends, *ip);
                if !matching.is_empty() {
                    let source = if local {
                        Source::Client
                    } else {
                        Source::BackendNode
                    };
                    let addr = SocketAddr::new(*ip, service_port);
                    out.insert(Listen { protocol, addr }, forward(matching, source));
                }
            }
        }
    }

    let health_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|_| kind == "LoadBalancer" && local);
    if let Some(port) = health_port {
        for (node, ips) in node_ips {
            let local_endpoints = ready_endpoints_on(slices, node);
            for ip in ips {
                let listen = Listen::tcp(SocketAddr::new(*ip, port));
                let health = Health {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    local_endpoints,
                };
                out.insert(listen, Route::Health(health));
            }
        }
    }
}

/// The ready endpoints of `slices` for the Service port `port`.
fn backends(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    protocol: Protocol,
    node_ips: &BTreeMap<String, Vec<IpAddr>>,
) -> Vec<Backend> {
    let wanted = port.name.clone().unwrap_or_default();
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.clone().unwrap_or_default() == wanted
                    && Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) == Some(protocol)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| is_ready(e)) {
            for ip in endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
            {
                let node = endpoint.node_name.clone();
                let node_ip = node
                    .as_ref()
                    .and_then(|n| node_ips.get(n))
                    .and_then(|ips| ips.iter().find(|n| n.is_ipv4() == ip.is_ipv4()))
                    .copied();
                out.insert(Backend {
                    addr: SocketAddr::new(ip, number),
                    node,
                    node_ip,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// Distinct ready endpoint addresses on `node`, over all of the Service's slices.
fn ready_endpoints_on(slices: &[&EndpointSlice], node: &str) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| is_ready(e) && e.node_name.as_deref() == Some(node))
        .flat_map(|e| e.addresses.iter())
        .collect::<BTreeSet<_>>()
        .len()
}

/// An endpoint is ready unless its `ready` condition says otherwise.
fn is_ready(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

fn of_family(backends: &[Backend], ip: IpAddr) -> Vec<Backend> {
    backends
        .iter()
        .filter(|b| b.addr.is_ipv4() == ip.is_ipv4())
        .cloned()
        .collect()
}

/// A Node's InternalIPs.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
            }))
            .expect("node"),
        )
    }

    fn slice(service: &str, endpoints: &[(&str, &str, bool)], port: i32) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{service}-x"), "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
            }))
            .expect("slice"),
        )
    }

    fn service(spec: serde_json::Value, ingress: &[&str]) -> Arc<Service> {
        let ingress: Vec<_> = ingress
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": spec,
                "status": {"loadBalancer": {"ingress": ingress}}
            }))
            .expect("service"),
        )
    }

    fn listen(addr: &str) -> Listen {
        Listen::tcp(addr.parse().expect("addr"))
    }

    fn backends_of(routes: &BTreeMap<Listen, Route>, addr: &str) -> Vec<String> {
        match routes.get(&listen(addr)) {
            Some(Route::Forward(f)) => f.backends.iter().map(|b| b.addr.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn cluster_ip_node_ports_and_ingress() {
        let nodes = [node("n0", "10.128.0.1"), node("n1", "10.128.0.2")];
        let slices = [slice(
            "web",
            &[
                ("10.192.0.2", "n0", true),
                ("10.192.1.2", "n1", true),
                ("10.192.1.3", "n1", false),
            ],
            8080,
        )];
        let svc = service(
            json!({"type": "LoadBalancer", "clusterIP": "10.96.16.10", "clusterIPs": ["10.96.16.10"],
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
            &["192.168.200.1"],
        );
        let opts = Options {
            load_balancer_ingress: true,
        };
        let routes = desired(&[svc], &slices, &nodes, opts);
        let all = vec!["10.192.0.2:8080".to_string(), "10.192.1.2:8080".to_string()];
        assert_eq!(backends_of(&routes, "10.96.16.10:80"), all);
        assert_eq!(backends_of(&routes, "10.128.0.1:30080"), all);
        assert_eq!(backends_of(&routes, "10.128.0.2:30080"), all);
        assert_eq!(backends_of(&routes, "192.168.200.1:80"), all);
        match routes.get(&listen("10.128.0.2:30080")) {
            Some(Route::Forward(f)) => {
                assert_eq!(f.source, Source::Node("10.128.0.2".parse().expect("ip")))
            }
            other => panic!("{other:?}"),
        }
        let guest = desired(
            &[service(
                json!({"type": "LoadBalancer", "clusterIP": "10.96.16.10",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                &["192.168.200.1"],
            )],
            &slices,
            &nodes,
            Options::default(),
        );
        assert!(
            !guest.contains_key(&listen("192.168.200.1:80")),
            "no ingress on a guest proxy"
        );
    }

    #[test]
    fn local_policy_keeps_to_the_node_and_answers_health_checks() {
        let nodes = [node("n0", "10.128.0.1"), node("n1", "10.128.0.2")];
        let slices = [slice("web", &[("10.192.0.2", "n0", true)], 8080)];
        let svc = service(
            json!({"type": "LoadBalancer", "clusterIP": "10.96.16.10", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 32000,
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            &[],
        );
        let routes = desired(&[svc], &slices, &nodes, Options::default());
        assert_eq!(
            backends_of(&routes, "10.128.0.1:30080"),
            ["10.192.0.2:8080"]
        );
        assert!(
            !routes.contains_key(&listen("10.128.0.2:30080")),
            "no local endpoint: refused"
        );
        let health = |addr| match routes.get(&listen(addr)) {
            Some(Route::Health(h)) => h.local_endpoints,
            other => panic!("{other:?}"),
        };
        assert_eq!(health("10.128.0.1:32000"), 1);
        assert_eq!(health("10.128.0.2:32000"), 0);
    }

    #[test]
    fn no_endpoints_no_listener_and_affinity() {
        let svc = service(
            json!({"clusterIP": "10.96.16.11", "sessionAffinity": "ClientIP",
                   "ports": [{"name": "http", "port": 80}]}),
            &[],
        );
        assert!(desired(std::slice::from_ref(&svc), &[], &[], Options::default()).is_empty());
        let slices = [slice("web", &[("10.192.0.2", "n0", true)], 8080)];
        let routes = desired(&[svc], &slices, &[], Options::default());
        match routes.get(&listen("10.96.16.11:80")) {
            Some(Route::Forward(f)) => assert_eq!(f.affinity, Some(DEFAULT_AFFINITY)),
            other => panic!("{other:?}"),
        }
    }
}
