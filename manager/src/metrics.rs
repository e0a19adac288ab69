//! Prometheus metrics of the manager: reconciles by controller and result,
//! reconcile durations, writes by target cluster, kind and verb (the number
//! that must stay at zero when nothing changes), VMs replaced by NodePool
//! auto-repair, and leadership.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub nodepool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub target: &'static str,
    pub kind: String,
    pub verb: &'static str,
}

/// The manager's metrics and their registry.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub repairs: Family<PoolLabels, Counter>,
    pub leader: Gauge<i64, AtomicI64>,
    total_writes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubevirt_hcp_manager");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        let reconcile_seconds =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile durations",
            reconcile_seconds.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "writes",
            "Write requests by target cluster, kind and verb",
            writes.clone(),
        );
        let repairs = Family::<PoolLabels, Counter>::default();
        registry.register(
            "nodepool_repairs",
            "VMs replaced by NodePool auto-repair",
            repairs.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            writes,
            repairs,
            leader,
            total_writes: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Count a reconcile and its duration.
    pub fn reconciled(&self, controller: &'static str, result: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_seconds
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    /// Count a write request.
    pub fn wrote(&self, target: &'static str, kind: &str, verb: &'static str) {
        self.writes
            .get_or_create(&WriteLabels {
                target,
                kind: kind.to_string(),
                verb,
            })
            .inc();
        self.total_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a VM replaced by auto-repair.
    pub fn repaired(&self, namespace: &str, nodepool: &str) {
        self.repairs
            .get_or_create(&PoolLabels {
                namespace: namespace.to_string(),
                nodepool: nodepool.to_string(),
            })
            .inc();
    }

    /// Total write requests so far, all targets and kinds.
    pub fn total_writes(&self) -> u64 {
        self.total_writes.load(Ordering::Relaxed)
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_writes_and_reconciles() {
        let m = Metrics::default();
        assert_eq!(m.total_writes(), 0);
        m.wrote("guest", "StorageClass", "apply");
        m.wrote("guest", "StorageClass", "apply");
        m.wrote("infra", "VirtualMachine", "create");
        assert_eq!(m.total_writes(), 3);
        m.reconciled("hostedcluster", "ok", Duration::from_millis(3));
        let text = m.encode().expect("encodes");
        assert!(text.contains(
            "kubevirt_hcp_manager_reconciles_total{controller=\"hostedcluster\",result=\"ok\"} 1"
        ));
        assert!(text.contains("kubevirt_hcp_manager_writes_total{target=\"guest\",kind=\"StorageClass\",verb=\"apply\"} 2"));
    }
}
