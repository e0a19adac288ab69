//! The cluster DNS of one cluster (CoreDNS's role, for Services): it
//! watches the cluster's Services and EndpointSlices and answers A and AAAA
//! questions for `<service>.<namespace>.svc.<domain>` with the Service's
//! ClusterIPs (the ready endpoint addresses for a headless Service) and for
//! `<hostname>.<service>.<namespace>.svc.<domain>` with that endpoint's
//! addresses (a StatefulSet's pods), and PTR questions for endpoint and
//! ClusterIP addresses with those names (etcd checks its peers' certificates
//! by them), over UDP and TCP. Names under the cluster domain that name nothing get
//! NXDOMAIN; anything else is REFUSED (there is no upstream to forward to).
//!
//! Like CoreDNS it runs as a pod behind the `kube-system/kube-dns` Service:
//! the lab gives it an address of its own, an EndpointSlice, and the
//! Service the fixed ClusterIP kubelet's `--cluster-dns` names
//! ([`cluster_dns_ip`]). The wire format is RFC 1035's, in [`wire`].

pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::proxy::desired::SERVICE_NAME_LABEL;
use crate::{Error, Netns};
use wire::{Question, Rcode, Record};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";
/// How long answers may be cached (CoreDNS's default for the kubernetes plugin).
const TTL: u32 = 5;

/// The ClusterIP of `kube-system/kube-dns` in a service range: its tenth
/// address, as kubeadm chooses it.
pub fn cluster_dns_ip(service_cidr: &str) -> Option<IpAddr> {
    let first = service_cidr.split(',').next()?;
    let net: ipnet::IpNet = first.trim().parse().ok()?;
    net.hosts().nth(9)
}

/// A running DNS server; dropping it stops it.
pub struct Dns {
    _tasks: JoinSet<()>,
}

impl Dns {
    /// Serves the cluster behind `client` on `addr` (port 53, UDP and TCP).
    pub async fn start(client: Client, netns: &Netns, addr: IpAddr) -> Result<Dns, Error> {
        let at = SocketAddr::new(addr, 53);
        let udp = netns.bind_udp(at).await?;
        let tcp = netns.bind_tcp(at).await?;
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let mut tasks = JoinSet::new();
        tasks.spawn(
            reflector::reflector(
                services_writer,
                watcher(
                    Api::<Service>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
        );
        tasks.spawn(
            reflector::reflector(
                slices_writer,
                watcher(
                    Api::<EndpointSlice>::all(client),
                    watcher::Config::default(),
                ),
            )
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
        );
        let records = Arc::new(Records { services, slices });
        tasks.spawn(serve_udp(udp, records.clone()));
        tasks.spawn(serve_tcp(tcp, records));
        Ok(Dns { _tasks: tasks })
    }
}

/// What the server answers from.
struct Records {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Records {
    /// The answer to one question: rcode and records.
    fn answer(&self, q: &Question) -> (Rcode, Vec<Record>) {
        let name = q.name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = reverse_address(&name) {
            let names = self.names_of(ip);
            return match (q.kind, names.is_empty()) {
                (_, true) => (Rcode::NxDomain, Vec::new()),
                (wire::PTR, false) => (
                    Rcode::NoError,
                    names.into_iter().map(Record::Name).collect(),
                ),
                (_, false) => (Rcode::NoError, Vec::new()),
            };
        }
        let (rcode, addresses) = self.addresses(q, &name);
        (rcode, addresses.into_iter().map(Record::Address).collect())
    }

    /// The names of a cluster address, as CoreDNS answers a reverse
    /// lookup: for each endpoint with that address,
    /// `<hostname>.<service>.<namespace>.svc.<domain>` (the address dashed
    /// when it has no hostname); else the Service whose ClusterIP it is.
    fn names_of(&self, ip: IpAddr) -> Vec<String> {
        let text = ip.to_string();
        let mut names = Vec::new();
        for slice in self.slices.state() {
            let Some(service) = slice.labels().get(SERVICE_NAME_LABEL).cloned() else {
                continue;
            };
            let ns = slice.namespace().unwrap_or_default();
            for e in slice
                .endpoints
                .iter()
                .filter(|e| e.addresses.contains(&text))
            {
                let host = e
                    .hostname
                    .clone()
                    .unwrap_or_else(|| text.replace(['.', ':'], "-"));
                names.push(format!("{host}.{service}.{ns}.svc.{DOMAIN}"));
            }
        }
        if !names.is_empty() {
            names.sort();
            names.dedup();
            return names;
        }
        self.services
            .state()
            .iter()
            .filter_map(|s| {
                let spec = s.spec.as_ref()?;
                let ips = spec
                    .cluster_ips
                    .clone()
                    .or(spec.cluster_ip.clone().map(|ip| vec![ip]))?;
                ips.iter().any(|a| a == &text).then(|| {
                    format!(
                        "{}.{}.svc.{DOMAIN}",
                        s.name_any(),
                        s.namespace().unwrap_or_default()
                    )
                })
            })
            .collect()
    }

    /// The addresses a forward question asks for.
    fn addresses(&self, q: &Question, name: &str) -> (Rcode, Vec<IpAddr>) {
        let Some(local) = name.strip_suffix(&format!(".svc.{DOMAIN}")) else {
            let ours = name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"));
            return (
                if ours {
                    Rcode::NxDomain
                } else {
                    Rcode::Refused
                },
                Vec::new(),
            );
        };
        let parts: Vec<&str> = local.split('.').collect();
        let (host, service, namespace) = match parts.as_slice() {
            [service, namespace] => (None, *service, *namespace),
            [host, service, namespace] => (Some(*host), *service, *namespace),
            _ => return (Rcode::NxDomain, Vec::new()),
        };
        let found = self
            .services
            .state()
            .into_iter()
            .find(|s| s.name_any() == service && s.namespace().as_deref() == Some(namespace));
        let Some(svc) = found else {
            return (Rcode::NxDomain, Vec::new());
        };
        if let Some(host) = host {
            let addresses = self.hostname_endpoints(namespace, service, host);
            if addresses.is_empty() {
                return (Rcode::NxDomain, Vec::new());
            }
            return (Rcode::NoError, of_kind(addresses, q.kind));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .or(spec.cluster_ip.map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let addresses = if cluster_ips.is_empty() {
            self.ready_endpoints(namespace, service)
        } else {
            cluster_ips
        };
        (Rcode::NoError, of_kind(addresses, q.kind))
    }

    /// The endpoints of a Service, from its EndpointSlices.
    fn endpoints(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        self.slices
            .state()
            .iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(namespace)
                    && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
            })
            .flat_map(|s| s.endpoints.clone())
            .collect()
    }

    /// The addresses of a Service's endpoint named `host` (a StatefulSet
    /// pod: `<pod>.<service>.<namespace>.svc`), ready or not, as CoreDNS
    /// answers for a Service that publishes not-ready addresses.
    fn hostname_endpoints(&self, namespace: &str, service: &str, host: &str) -> Vec<IpAddr> {
        self.endpoints(namespace, service)
            .into_iter()
            .filter(|e| e.hostname.as_deref() == Some(host))
            .flat_map(|e| e.addresses)
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// A headless Service's ready endpoint addresses.
    fn ready_endpoints(&self, namespace: &str, service: &str) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .endpoints(namespace, service)
            .into_iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| e.addresses)
            .filter_map(|a| a.parse().ok())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn respond(&self, query: &[u8]) -> Option<Vec<u8>> {
        match wire::parse_query(query) {
            Ok(q) => {
                let (rcode, records) = self.answer(&q.question);
                Some(wire::response(&q, rcode, &records, TTL))
            }
            Err(Some(header)) => Some(wire::error_response(&header, Rcode::FormErr)),
            Err(None) => None,
        }
    }
}

/// The address a reverse-lookup name (`d.c.b.a.in-addr.arpa`, or 32
/// nibbles under `ip6.arpa`) stands for.
fn reverse_address(name: &str) -> Option<IpAddr> {
    if let Some(v4) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = v4
            .split('.')
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        let octets: [u8; 4] = octets.try_into().ok()?;
        return Some(IpAddr::from(octets));
    }
    let v6 = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = v6
        .split('.')
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        bytes[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::from(bytes))
}

/// The addresses of the question's family.
fn of_kind(addresses: Vec<IpAddr>, kind: u16) -> Vec<IpAddr> {
    addresses
        .into_iter()
        .filter(|ip| match kind {
            wire::A => ip.is_ipv4(),
            wire::AAAA => ip.is_ipv6(),
            _ => false,
        })
        .collect()
}

async fn serve_udp(socket: UdpSocket, records: Arc<Records>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = records.respond(&buf[..n]) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, records: Arc<Records>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(answer_tcp(stream, records.clone()));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client closes.
async fn answer_tcp(mut stream: TcpStream, records: Arc<Records>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = records.respond(&query) else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Resolves `name` as a pod in `namespace` does with the resolv.conf
/// kubelet writes (`search <ns>.svc.<domain> svc.<domain> <domain>`,
/// `ndots:5`): the A and AAAA addresses of the first candidate that exists.
pub async fn resolve(
    netns: &Netns,
    server: IpAddr,
    namespace: &str,
    name: &str,
) -> Result<Vec<IpAddr>, Error> {
    let absolute = name.ends_with('.') || name.matches('.').count() >= 5;
    let mut candidates: Vec<String> = [
        format!("{namespace}.svc.{DOMAIN}"),
        format!("svc.{DOMAIN}"),
        DOMAIN.to_string(),
    ]
    .iter()
    .filter(|_| !absolute)
    .map(|search| format!("{name}.{search}"))
    .collect();
    candidates.push(name.trim_end_matches('.').to_string());
    let to = SocketAddr::new(server, 53);
    for candidate in candidates {
        let mut found = Vec::new();
        let mut exists = false;
        for kind in [wire::A, wire::AAAA] {
            let socket = netns.connect_udp(to, None).await?;
            let id = rand_id(&candidate, kind);
            let query = wire::query(id, &candidate, kind);
            socket
                .send(&query)
                .await
                .map_err(Error::socket("send to", to))?;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf))
                .await
                .map_err(|_| Error::Invalid(format!("no answer from the cluster DNS at {to}")))?
                .map_err(Error::socket("receive from", to))?;
            let (rcode, addresses) = wire::parse_response(&buf[..n], id)?;
            exists |= rcode == Rcode::NoError;
            found.extend(addresses);
        }
        if exists {
            return Ok(found);
        }
    }
    Ok(Vec::new())
}

/// A query id; uniqueness per socket is all a resolver needs here.
fn rand_id(name: &str, kind: u16) -> u16 {
    let mut h: u16 = kind;
    for b in name.bytes() {
        h = h.rotate_left(5) ^ u16::from(b);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_give_their_address() {
        assert_eq!(
            reverse_address("10.0.131.10.in-addr.arpa"),
            Some(IpAddr::from([10, 131, 0, 10]))
        );
        let v6: IpAddr = "fd10:128::5".parse().expect("v6");
        let nibbles: Vec<String> = match v6 {
            IpAddr::V6(a) => a
                .octets()
                .iter()
                .rev()
                .flat_map(|b| [format!("{:x}", b & 0xf), format!("{:x}", b >> 4)])
                .collect(),
            IpAddr::V4(_) => Vec::new(),
        };
        assert_eq!(
            reverse_address(&format!("{}.ip6.arpa", nibbles.join("."))),
            Some(v6)
        );
        assert_eq!(reverse_address("1.2.3.in-addr.arpa"), None);
        assert_eq!(reverse_address("web.default.svc.cluster.local"), None);
    }
}
