//! The lab's network. Every address the lab's objects carry (pod IPs,
//! ClusterIPs, node and VM addresses, load-balancer ingress) is local to
//! one network namespace of the lab's own ([`Netns`]), which nothing
//! connects to any other namespace: traffic between them is real, and none
//! of it can leave the machine.
//!
//! | range | what |
//! |---|---|
//! | [`API_NET`] | each API server's advertise address (`kubernetes` Service endpoints), bridged to the API server on host loopback; [`OUTSIDE_CLIENT`] |
//! | [`DNS_NET`] | each cluster's DNS server, the endpoint of its `kube-system/kube-dns` Service ([`dns_address`]) |
//! | [`SERVICE_NET`], [`SERVICE_NET_V6`] | ClusterIPs: a /20 and a /112 per cluster ([`service_cidr`]) |
//! | [`INFRA_NODE_NET`] | infra Nodes |
//! | [`INFRA_POD_NET`], [`INFRA_POD_NET_V6`] | infra pods: virt-launcher pods, whose address is their VM's (masquerade binding), so also the guest Nodes' InternalIPs |
//! | [`MANAGEMENT_POD_NET`] | the top /16 of [`INFRA_POD_NET`]: the pods the management kubelet runs (hosted control planes); VM addresses are handed out from the bottom |
//! | [`GUEST_POD_NET`] | guest pods: a /16 per guest cluster, a /24 per guest node ([`guest_pod_cidr`]) |
//! | [`LB_NET`], [`LB_NET_V6`] | the infra load balancer's ingress pool |
//! | [`HOSTED_POD_NET`], [`HOSTED_SERVICE_NET`] | the pod and Service ranges of `examples/hostedcluster.yaml` (the manager's defaults), so that one hosted cluster on them has its data plane in the lab network; tests with several give each ranges of its own inside [`GUEST_POD_NET`] and [`SERVICE_NET`] |
//!
//! Modules: [`netns`] (the namespace and its sockets), [`proxy`] (the
//! service proxy), [`echo`] (the echo workload), [`bridge`] (forwarding
//! between host loopback and the namespace), [`relay`] (what both use to
//! forward a connection), [`client`] (requests from
//! inside the namespace, for tests, the demo and benchmarks).

pub mod bridge;
pub mod client;
pub mod dns;
pub mod echo;
mod error;
pub mod netns;
pub mod proxy;
pub mod relay;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use error::Error;
pub use netns::Netns;
pub use proxy::ServiceProxy;

pub const API_NET: &str = "10.0.0.0/24";
/// The address tests and the demo send from when they play a client from
/// outside both clusters.
pub const OUTSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const DNS_NET: &str = "10.0.1.0/24";
pub const SERVICE_NET: &str = "10.96.0.0/12";
pub const SERVICE_NET_V6: &str = "fd00:10:96::/48";
pub const INFRA_NODE_NET: &str = "192.168.100.0/24";
pub const INFRA_POD_NET: &str = "10.128.0.0/14";
pub const INFRA_POD_NET_V6: &str = "fd10:128::/64";
pub const MANAGEMENT_POD_NET: &str = "10.131.0.0/16";
pub const GUEST_POD_NET: &str = "10.192.0.0/10";
pub const HOSTED_POD_NET: &str = "10.132.0.0/14";
pub const HOSTED_SERVICE_NET: &str = "172.31.0.0/16";
pub const LB_NET: &str = "192.168.200.0/21";
pub const LB_NET_V6: &str = "fd00:c0a8:c8::/112";

/// Every range of the table above, as routes local to the namespace.
pub fn local_ranges() -> Vec<IpNet> {
    [
        API_NET,
        DNS_NET,
        SERVICE_NET,
        SERVICE_NET_V6,
        INFRA_NODE_NET,
        INFRA_POD_NET,
        INFRA_POD_NET_V6,
        GUEST_POD_NET,
        HOSTED_POD_NET,
        HOSTED_SERVICE_NET,
        LB_NET,
        LB_NET_V6,
    ]
    .iter()
    .filter_map(|r| r.parse().ok())
    .collect()
}

/// The dual-stack service CIDR of the lab's cluster number `index` (0 for
/// the infra cluster): the `index`th /20 of [`SERVICE_NET`] and the
/// `index`th /112 of [`SERVICE_NET_V6`].
pub fn service_cidr(index: u16) -> Result<String, Error> {
    if index >= 256 {
        return Err(Error::Invalid(format!(
            "the lab has ClusterIP ranges for 256 clusters, not {}",
            u32::from(index) + 1
        )));
    }
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + (u32::from(index) << 12));
    let v6 = Ipv6Addr::new(0xfd00, 0x10, 0x96, index, 0, 0, 0, 0);
    let v4 = Ipv4Net::new(v4, 20).map_err(|e| Error::Invalid(e.to_string()))?;
    let v6 = Ipv6Net::new(v6, 112).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(format!("{v4},{v6}"))
}

/// The address of the DNS server of the lab's cluster number `index`.
pub fn dns_address(index: u16) -> Result<Ipv4Addr, Error> {
    let host = u8::try_from(u32::from(index) + 1)
        .ok()
        .filter(|h| *h < 255)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the lab has DNS addresses for 254 clusters, not {}",
                u32::from(index) + 1
            ))
        })?;
    Ok(Ipv4Addr::new(10, 0, 1, host))
}

/// The pod CIDR of node `node` of the lab's guest cluster number `cluster`:
/// `10.(192 + cluster).(node).0/24`.
pub fn guest_pod_cidr(cluster: u8, node: u8) -> Result<Ipv4Net, Error> {
    if cluster >= 64 {
        return Err(Error::Invalid(format!(
            "the lab has guest pod networks for 64 guest clusters, not {}",
            u16::from(cluster) + 1
        )));
    }
    Ipv4Net::new(Ipv4Addr::new(10, 192 + cluster, node, 0), 24)
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// A transport protocol the lab's network carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `TCP` / `UDP` as Kubernetes spells them; SCTP is not carried.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_per_cluster() -> Result<(), Error> {
        assert_eq!(service_cidr(0)?, "10.96.0.0/20,fd00:10:96::/112");
        assert_eq!(service_cidr(1)?, "10.96.16.0/20,fd00:10:96:1::/112");
        assert_eq!(service_cidr(255)?, "10.111.240.0/20,fd00:10:96:ff::/112");
        assert!(service_cidr(256).is_err());
        assert_eq!(guest_pod_cidr(0, 1)?.to_string(), "10.192.1.0/24");
        assert!(guest_pod_cidr(64, 0).is_err());
        let ranges = local_ranges();
        assert_eq!(ranges.len(), 12);
        assert_eq!(dns_address(0)?.to_string(), "10.0.1.1");
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
        Ok(())
    }
}
