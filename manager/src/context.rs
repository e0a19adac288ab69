//! [`Context`]: what every reconcile shares — the management client, the
//! manager's settings, metrics, the per-cluster clients and the NodePool
//! watch triggers.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::clients::ClusterClients;
use crate::desired::ImageConfig;
use crate::metrics::Metrics;
use crate::version::Supported;
use crate::watches::Triggers;

/// The manager's settings (from its flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The manager's own namespace (supported-versions ConfigMap, Lease).
    pub namespace: String,
    pub images: ImageConfig,
    pub supported: Supported,
    /// Every object is looked at again at least this often (drift in the
    /// guest cluster, which is not watched).
    pub resync: Duration,
    /// How long a cleanup waits, watching, for infra objects to go before it
    /// reports itself pending and retries.
    pub cleanup_wait: Duration,
    /// Reconciles run at once per controller. Bounds the memory a wave of
    /// new clusters takes (each reconcile holds its desired objects and the
    /// live ones it compares them with).
    pub concurrency: u16,
    /// A NodePool reports a VM whose node has not joined this long after
    /// the VM was created.
    pub node_join_timeout: Duration,
    /// An auto-repaired NodePool replaces a VM whose node has not been
    /// Ready this long.
    pub node_unhealthy_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "kubevirt-hcp-manager".to_string(),
            images: ImageConfig::default(),
            supported: Supported::this_build(),
            resync: Duration::from_secs(600),
            cleanup_wait: Duration::from_secs(30),
            concurrency: 8,
            node_join_timeout: Duration::from_secs(600),
            node_unhealthy_timeout: Duration::from_secs(480),
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// The management cluster.
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub clients: ClusterClients,
    /// Connections to shared etcds.
    pub etcd: crate::shared_etcd::Connections,
    pub triggers: Triggers,
}
