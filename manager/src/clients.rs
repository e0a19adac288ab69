//! Clients of the clusters a hosted cluster spans: its guest cluster (from
//! the kubeconfig Secret the HostedCluster names) and its infra cluster (the
//! management cluster, or the external one from `credentials`).
//!
//! [`ClusterClients`] builds each client once and keeps it while the
//! kubeconfig it came from stays the same, so reconciles and watches share
//! connections; [`ClusterClients::forget`] drops a deleted cluster's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::api::{HostedCluster, SecretKeyRef};
use crate::error::{Error, Result, Target};
use crate::hash;

/// `namespace/name` of a HostedCluster.
pub type ClusterKey = (String, String);

/// The key of a HostedCluster.
pub fn key_of(hc: &HostedCluster) -> ClusterKey {
    (
        hc.metadata.namespace.clone().unwrap_or_default(),
        hc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The clients of one hosted cluster.
#[derive(Clone)]
pub struct Handles {
    pub guest: Client,
    /// The guest kubeconfig (copied for the daemons).
    pub guest_kubeconfig: Vec<u8>,
    pub infra: Client,
    /// The external infra kubeconfig, when the infra is another cluster.
    pub infra_kubeconfig: Option<String>,
    /// Changes whenever one of the clients is rebuilt.
    pub identity: u64,
}

struct Entry {
    fingerprint: u64,
    handles: Handles,
}

/// Clients per hosted cluster.
pub struct ClusterClients {
    management: Client,
    entries: Mutex<HashMap<ClusterKey, Entry>>,
}

/// Read a kubeconfig Secret key; `target` is the cluster it reaches (a
/// missing Secret is reported against it).
pub async fn read_secret_key(
    client: &Client,
    target: Target,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(Error::kube(
            Target::Management,
            format!("get Secret {}", r.name),
        ))?
        .ok_or_else(|| Error::SecretMissing {
            target,
            namespace: namespace.to_string(),
            name: r.name.clone(),
        })?;
    secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .map(|b| b.0)
        .ok_or_else(|| Error::SecretKeyMissing {
            target,
            namespace: namespace.to_string(),
            name: r.name.clone(),
            key: r.key.clone(),
        })
}

/// A client from kubeconfig bytes.
pub async fn client_from_kubeconfig(
    bytes: &[u8],
    target: Target,
    namespace: &str,
    secret: &str,
) -> Result<Client> {
    let bad = |message: String| Error::Kubeconfig {
        target,
        namespace: namespace.to_string(),
        name: secret.to_string(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

impl ClusterClients {
    pub fn new(management: Client) -> Self {
        Self {
            management,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn management(&self) -> &Client {
        &self.management
    }

    /// The clients of `hc`, built from its Secrets (read on every call, so a
    /// rotated kubeconfig is picked up; clients are rebuilt only then).
    pub async fn handles(&self, hc: &HostedCluster) -> Result<Handles> {
        let key = key_of(hc);
        let ns = &key.0;
        let guest_ref = hc.guest_kubeconfig();
        let guest_kubeconfig =
            read_secret_key(&self.management, Target::Guest, ns, &guest_ref).await?;
        let infra_kubeconfig = match hc.external_infra() {
            Some(creds) => {
                let bytes = read_secret_key(
                    &self.management,
                    Target::Infra,
                    ns,
                    &creds.infra_kube_config_secret,
                )
                .await?;
                Some(String::from_utf8(bytes).map_err(|e| Error::Kubeconfig {
                    target: Target::Infra,
                    namespace: ns.clone(),
                    name: creds.infra_kube_config_secret.name.clone(),
                    message: e.to_string(),
                })?)
            }
            None => None,
        };
        let fingerprint = hash::fnv1a_parts([
            guest_kubeconfig.as_slice(),
            infra_kubeconfig.as_deref().unwrap_or_default().as_bytes(),
        ]);
        if let Some(entry) = self.lock().get(&key)
            && entry.fingerprint == fingerprint
        {
            return Ok(entry.handles.clone());
        }

        let guest =
            client_from_kubeconfig(&guest_kubeconfig, Target::Guest, ns, &guest_ref.name).await?;
        let infra = match (&infra_kubeconfig, hc.external_infra()) {
            (Some(text), Some(creds)) => {
                client_from_kubeconfig(
                    text.as_bytes(),
                    Target::Infra,
                    ns,
                    &creds.infra_kube_config_secret.name,
                )
                .await?
            }
            _ => self.management.clone(),
        };
        let handles = Handles {
            guest,
            guest_kubeconfig,
            infra,
            infra_kubeconfig,
            identity: fingerprint,
        };
        self.lock().insert(
            key,
            Entry {
                fingerprint,
                handles: handles.clone(),
            },
        );
        Ok(handles)
    }

    /// The cached clients of a cluster, without reading its Secrets.
    pub fn cached(&self, key: &ClusterKey) -> Option<Handles> {
        self.lock().get(key).map(|e| e.handles.clone())
    }

    /// Drop the clients of a deleted cluster.
    pub fn forget(&self, key: &ClusterKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts and removes), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shared clients.
pub type SharedClients = Arc<ClusterClients>;
