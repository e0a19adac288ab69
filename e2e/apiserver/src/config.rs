//! The server's configuration: where it listens, how large a request body may be, how
//! many past watch events each resource keeps for resuming watches, and the Service
//! address ranges handed to the ClusterIP/NodePort allocator.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// How to start an [`crate::ApiServer`].
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// Names the cluster, context and user in generated kubeconfigs.
    pub name: String,
    /// Listening address; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Largest accepted request body (kube-apiserver: 3 MiB).
    pub max_body_bytes: usize,
    /// Past events kept per resource for watches that resume from a resourceVersion;
    /// an older resourceVersion gets `410 Gone`.
    pub watch_cache_events: usize,
    /// IPv4 Service CIDR for ClusterIP allocation.
    pub service_cidr_v4: String,
    /// IPv6 Service CIDR for ClusterIP allocation.
    pub service_cidr_v6: String,
    /// NodePort range.
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            name: "lab".to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: 3 * 1024 * 1024,
            watch_cache_events: 10_000,
            service_cidr_v4: "10.96.0.0/12".to_string(),
            service_cidr_v6: "fd00:10:96::/112".to_string(),
            node_port_range: 30000..=32767,
        }
    }
}
