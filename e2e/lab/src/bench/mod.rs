//! The suite's benchmark: scenarios run against a lab with the real daemons
//! (see [`crate::suite`]), each adding rows to one [`Report`] that prints as
//! a table or as JSON. Every row names its unit and, where an issue sets
//! one, its target and whether it was met. Timings come from watches (the
//! moment a change is observed), request counts from the lab API servers'
//! counters, memory from `/proc/<pid>/status`.
//!
//! - [`storage`]: volume lifecycle latencies and throughput, API requests
//!   per CSI operation;
//! - [`load_balancer`]: ingress propagation, throughput, writes per Service;
//! - [`controller`]: CreateVolume bursts on the controller socket and the
//!   controller's memory holding many volumes;
//! - [`manager`]: the hosted-control-plane manager with many HostedClusters;
//! - [`hosted`]: hosted control planes that really run (etcd and the
//!   Kubernetes binaries), created to Available, and their memory;
//! - [`network`]: real requests through the lab network, from an outside
//!   client to a guest pod.

pub mod controller;
pub mod hosted;
pub mod load_balancer;
pub mod manager;
pub mod network;
pub mod report;
pub mod storage;

use std::collections::BTreeMap;
use std::time::Duration;

use lab_cluster::RequestCounters;

pub use report::{Report, Row};

/// What a run does; every field is printed with the results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Params {
    /// Volumes taken through their whole lifecycle one after another.
    pub volumes: usize,
    /// LoadBalancer Services created one after another.
    pub services: usize,
    /// Concurrency levels of the throughput scenarios.
    pub concurrency: Vec<usize>,
    /// CreateVolume calls sent at once to the controller socket.
    pub create_burst: usize,
    /// DataVolumes the controller holds for the memory measurement.
    pub held_volumes: usize,
    /// LoadBalancer Services created at once and held.
    pub held_services: usize,
    /// Worker VMs (guest nodes).
    pub vms: usize,
    /// HostedClusters the manager is given at once (0: no manager rows).
    pub hosted_clusters: usize,
    /// Hosted control planes run one after another (0: none).
    pub hosted_control_planes: usize,
    /// Hosted control planes on one shared etcd, created at once (0: none).
    pub shared_etcd_clusters: usize,
    /// Ephemeral clusters (a HostedCluster and a NodePool of 2), one after
    /// another (0: none).
    pub ephemeral_clusters: usize,
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Requests `user` made between two counter snapshots, by verb (watches
/// left out: they are long-lived streams, not per-operation requests).
pub fn requests_by_verb(
    before: &RequestCounters,
    after: &RequestCounters,
    user: &str,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((verb, resource, u), n) in &after.counts {
        if u != user || verb == "watch" || !keep(resource) {
            continue;
        }
        let was = before
            .counts
            .get(&(verb.clone(), resource.clone(), u.clone()))
            .copied()
            .unwrap_or(0);
        if *n > was {
            *out.entry(verb.clone()).or_default() += n - was;
        }
    }
    out
}

/// Latency samples.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The `p` quantile in milliseconds (0 when empty).
    pub fn quantile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
        sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_request_deltas() {
        let mut s = Samples::default();
        for ms in [5, 1, 3, 2, 4] {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile_ms(0.5), 3.0);
        assert_eq!(s.quantile_ms(1.0), 5.0);
        assert_eq!(Samples::default().quantile_ms(0.5), 0.0);

        let key = |v: &str, r: &str| (v.to_string(), r.to_string(), "ccm".to_string());
        let before = RequestCounters {
            counts: [(key("get", "services"), 2)].into(),
        };
        let after = RequestCounters {
            counts: [
                (key("get", "services"), 5),
                (key("watch", "services"), 9),
                (key("create", "services"), 1),
                (key("create", "events"), 4),
            ]
            .into(),
        };
        let by_verb = requests_by_verb(&before, &after, "ccm", |r| r != "events");
        assert_eq!(
            by_verb,
            BTreeMap::from([("create".to_string(), 1), ("get".to_string(), 3)])
        );
    }
}
