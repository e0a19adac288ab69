//! The running server: [`ApiServer`], a cheap handle (an `Arc` inside) to start, reach,
//! observe and stop it, and [`Shared`], the state every request handler and control
//! loop works on.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Authorizer};
use crate::config::ApiServerConfig;
use crate::controllers;
use crate::counters::{Counters, RequestCounters};
use crate::error::Error;
use crate::faults::{FaultState, Faults};
use crate::http::discovery::AggregatedApi;
use crate::http::proxy::{self, ProxyClient};
use crate::kubeconfig;
use crate::machinery::defaults::ServiceAllocator;
use crate::ops::{self, State, Sub, Target, WriteOpts};
use crate::store::Store;

/// State shared by the HTTP handlers and the control loops.
pub struct Shared {
    pub cfg: ApiServerConfig,
    /// `host:port` the server listens on.
    pub addr: String,
    state: Mutex<State>,
    pub auth: Authenticator,
    pub authz: Authorizer,
    pub faults: Arc<FaultState>,
    pub counters: Counters,
    aggregated: RwLock<Vec<AggregatedApi>>,
    pub proxy: ProxyClient,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The store lock. A panic while holding it cannot leave a half-written object
    /// (writes are single `put`/`remove` calls), so a poisoned lock is still usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults_handle(&self) -> Faults {
        Faults {
            state: self.faults.clone(),
        }
    }

    pub fn aggregated(&self) -> Vec<AggregatedApi> {
        self.aggregated
            .read()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// The backend URL of an aggregated group/version.
    pub fn aggregated_base(&self, group: &str, version: &str) -> Option<String> {
        let agg = self.aggregated.read().ok()?;
        agg.iter()
            .find(|a| a.group == group && a.version == version)
            .map(|a| a.base_url.clone())
    }
}

/// A running lab API server. Clones share the server.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
    admin_token: String,
    ca_pem: Arc<str>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

const DEFAULT_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiServer {
    /// Binds, seeds the default namespaces and starts serving.
    pub async fn start(cfg: ApiServerConfig) -> Result<ApiServer, Error> {
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.bind,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.bind,
            source,
        })?;
        let allocator = ServiceAllocator::new(
            &cfg.service_cidr_v4,
            &cfg.service_cidr_v6,
            cfg.node_port_range.clone(),
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let store = Store::new(cfg.watch_cache_events, changes_tx);
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let shared = Arc::new(Shared {
            addr: local.to_string(),
            cfg,
            state: Mutex::new(State { store, allocator }),
            auth: Authenticator::default(),
            authz: Authorizer,
            faults: Arc::new(FaultState::default()),
            counters: Counters::default(),
            aggregated: RwLock::new(Vec::new()),
            proxy: proxy::client(),
            shutdown: CancellationToken::new(),
        });
        shared.auth.add(
            &admin_token,
            "admin",
            &["system:masters", "system:authenticated"],
        );
        seed_namespaces(&shared)?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(controllers::run(shared.clone(), changes_rx)));
        let app = axum::Router::new()
            .fallback(crate::http::handle)
            .with_state(shared.clone());
        let token = shared.shutdown.clone();
        let certs = crate::tls::Certs::generate(&shared.cfg.name)?;
        let listener =
            crate::tls::DualListener::new(listener, &certs, token.clone()).map_err(|source| {
                Error::Bind {
                    addr: local,
                    source,
                }
            })?;
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "lab apiserver stopped");
            }
        }));
        Ok(ApiServer {
            shared,
            admin_token,
            ca_pem: certs.ca_pem.into(),
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The token of user `admin` (group `system:masters`).
    pub fn admin_token(&self) -> String {
        self.admin_token.clone()
    }

    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared.auth.add(token, user, groups);
    }

    /// `https://127.0.0.1:PORT`: the same port over TLS (lab CA in the kubeconfig).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    /// The lab CA certificate (PEM) that signs the server's TLS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for `token`: the https URL with the lab CA, since client-go
    /// (kubectl) sends bearer tokens only over TLS; kube-rs accepts it too.
    pub fn kubeconfig_yaml(&self, token: &str, namespace: Option<&str>) -> String {
        kubeconfig::render(
            &self.shared.cfg.name,
            &self.https_url(),
            &self.ca_pem,
            token,
            namespace,
        )
    }

    pub fn write_kubeconfig(
        &self,
        path: &Path,
        token: &str,
        namespace: Option<&str>,
    ) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(token, namespace))
    }

    /// A kube client for `token`.
    pub fn try_client_for(&self, token: &str) -> Result<kube::Client, kube::Error> {
        let uri: http::Uri = self
            .url()
            .parse()
            .map_err(|e: http::uri::InvalidUri| kube::Error::Service(e.into()))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config)
    }

    /// An admin kube client.
    pub async fn client(&self) -> kube::Client {
        self.try_client_for(&self.admin_token)
            .expect("a plain-http client with a bearer token for our own URL always builds")
    }

    /// Serves `group/version` from another server, like an APIService: requests under
    /// `/apis/{group}/{version}/` are proxied to `base_url` + the same path and
    /// discovery lists `resources`.
    pub fn register_aggregated_api(
        &self,
        group: &str,
        version: &str,
        base_url: &str,
        resources: Vec<APIResource>,
    ) {
        let resources = resources
            .into_iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        if let Ok(mut agg) = self.shared.aggregated.write() {
            agg.retain(|a| !(a.group == group && a.version == version));
            agg.push(AggregatedApi {
                group: group.to_string(),
                version: version.to_string(),
                base_url: base_url.to_string(),
                resources,
            });
        }
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults_handle()
    }

    pub fn counters(&self) -> RequestCounters {
        self.shared.counters.snapshot()
    }

    /// Stops serving: ends watches, stops the listener and the control loops.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for mut t in tasks {
            // In-flight requests get a moment to finish; then they are cut.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

fn seed_namespaces(shared: &Shared) -> Result<(), Error> {
    let mut st = shared.lock();
    let def = st
        .store
        .registry
        .by_plural("", "namespaces")
        .ok_or_else(|| Error::Config("namespaces are not served".into()))?;
    for ns in DEFAULT_NAMESPACES {
        let t = Target {
            def: def.clone(),
            version: "v1".into(),
            ns: None,
            name: None,
            sub: Sub::Main,
            view: crate::resources::View::Native,
        };
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        let o = WriteOpts {
            manager: "kube-apiserver".into(),
            ..WriteOpts::default()
        };
        ops::create(&mut st, &t, body, &o).map_err(|e| Error::Config(e.message))?;
    }
    Ok(())
}
