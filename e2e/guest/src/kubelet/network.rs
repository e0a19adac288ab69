//! A node's pod network: each pod gets an address from the node's
//! `spec.podCIDR` (the lowest free one, kept for the pod's life), and a pod
//! whose container runs the echo image (`kubevirt-lab/echo`) gets the echo
//! workload, listening on that address in the lab's network namespace on
//! every containerPort it declares. The workload runs before the pod is
//! reported Ready and stops when the pod goes.
//!
//! A node without a podCIDR (one the lab did not make) gives pods a stable
//! address hashed from their uid in 10.244.0.0/16, and runs no workload.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use lab_net::echo::{self, Echo, Identity};
use lab_net::{Netns, Protocol};

use super::error::Error;
use super::paths::sha256_hex;

/// The pod network of one node.
pub struct PodNetwork {
    netns: Option<Arc<Netns>>,
    cidr: Option<Ipv4Net>,
    /// kubelet's `--cluster-dns`.
    dns: Option<IpAddr>,
    node: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ips: HashMap<String, IpAddr>,
    workloads: HashMap<String, Echo>,
}

impl PodNetwork {
    pub fn new(
        netns: Option<Arc<Netns>>,
        cidr: Option<Ipv4Net>,
        dns: Option<IpAddr>,
        node: &str,
    ) -> Self {
        Self {
            netns,
            cidr,
            dns,
            node: node.to_string(),
            state: Mutex::default(),
        }
    }

    /// The address of `pod`: the one it has, else the lowest free one of
    /// the node's range (`pods` are the node's pods).
    pub fn pod_ip(&self, pod: &Pod, pods: &[Arc<Pod>]) -> Result<IpAddr, Error> {
        let uid = pod.uid().unwrap_or_default();
        let Some(cidr) = self.cidr else {
            return Ok(IpAddr::V4(hashed_ip(&uid)));
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ip) = state.ips.get(&uid) {
            return Ok(*ip);
        }
        let reported = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let ip = match reported {
            Some(ip) => ip,
            None => {
                let taken: Vec<IpAddr> = pods
                    .iter()
                    .filter(|p| p.uid() != pod.uid())
                    .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                    .chain(state.ips.values().copied())
                    .collect();
                // The first host address is the node's gateway on real CNIs.
                cidr.hosts()
                    .skip(1)
                    .map(IpAddr::V4)
                    .find(|ip| !taken.contains(ip))
                    .ok_or_else(|| {
                        Error::Invalid(format!("pod network {cidr} of node {} is full", self.node))
                    })?
            }
        };
        state.ips.insert(uid, ip);
        Ok(ip)
    }

    /// Starts the echo workload of `pod` on `ip` unless it runs (or the pod
    /// runs no echo container).
    pub async fn start_workload(&self, pod: &Pod, ip: IpAddr) -> Result<(), Error> {
        let Some(netns) = self.netns.as_ref() else {
            return Ok(());
        };
        let ports = echo_ports(pod);
        let uid = pod.uid().unwrap_or_default();
        let running = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .workloads
            .contains_key(&uid);
        if ports.is_none() || running {
            return Ok(());
        }
        let identity = Identity {
            pod: pod.name_any(),
            namespace: pod.namespace().unwrap_or_default(),
            node: self.node.clone(),
        };
        let workload = echo::start(
            netns,
            ip,
            &ports.unwrap_or_default(),
            identity,
            self.dns.map(|server| echo::Dns { server }),
        )
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "starting the echo workload of pod {}: {e}",
                pod.name_any()
            ))
        })?;
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .workloads
            .insert(uid, workload);
        Ok(())
    }

    /// Stops the workload of pod `uid` and frees its address.
    pub fn release(&self, uid: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.workloads.remove(uid);
        state.ips.remove(uid);
    }
}

/// Whether every container of `pod` runs the echo image.
pub fn runs_echo_only(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        !s.containers.is_empty()
            && s.containers
                .iter()
                .all(|c| c.image.as_deref().is_some_and(echo::is_echo_image))
    })
}

/// The ports of `pod`'s echo containers, or None if it has none.
fn echo_ports(pod: &Pod) -> Option<Vec<(Protocol, u16)>> {
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.image.as_deref().is_some_and(echo::is_echo_image))
        .collect();
    if containers.is_empty() {
        return None;
    }
    let ports = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
            Some((protocol, u16::try_from(p.container_port).ok()?))
        })
        .collect();
    Some(ports)
}

/// A stable address for pod `uid` in 10.244.0.0/16.
fn hashed_ip(uid: &str) -> Ipv4Addr {
    let hash = sha256_hex(uid.as_bytes());
    let byte = |i: usize| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap_or(0);
    Ipv4Addr::new(10, 244, byte(0), byte(1).clamp(2, 254))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, ip: Option<&str>, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": image,
                     "ports": [{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}]},
            "status": {"podIP": ip}
        }))
        .expect("pod")
    }

    #[test]
    fn addresses_come_from_the_node_range() -> Result<(), Error> {
        let net = PodNetwork::new(None, "10.192.1.0/24".parse().ok(), None, "n1");
        let a = Arc::new(pod("a", Some("10.192.1.2"), "x"));
        let b = pod("b", None, "x");
        assert_eq!(
            net.pod_ip(&a, std::slice::from_ref(&a))?.to_string(),
            "10.192.1.2"
        );
        assert_eq!(
            net.pod_ip(&b, std::slice::from_ref(&a))?.to_string(),
            "10.192.1.3"
        );
        assert_eq!(net.pod_ip(&b, &[])?.to_string(), "10.192.1.3", "kept");
        net.release("b");
        let c = pod("c", None, "x");
        assert_eq!(net.pod_ip(&c, &[a])?.to_string(), "10.192.1.3", "freed");
        let plain = PodNetwork::new(None, None, None, "n1");
        assert!(plain.pod_ip(&c, &[])?.to_string().starts_with("10.244."));
        Ok(())
    }

    #[test]
    fn echo_ports_of_echo_containers_only() {
        assert_eq!(
            echo_ports(&pod("a", None, "kubevirt-lab/echo:1")),
            Some(vec![(Protocol::Tcp, 8080), (Protocol::Udp, 5353)])
        );
        assert_eq!(echo_ports(&pod("a", None, "nginx")), None);
    }

    #[test]
    fn echo_only_pods_run_nothing_but_echo() {
        assert!(runs_echo_only(&pod("a", None, "kubevirt-lab/echo:1")));
        assert!(!runs_echo_only(&pod("a", None, "nginx")));
    }
}
