//! [`Cluster`]: one real Kubernetes control plane of the lab, a
//! kube-apiserver and a kube-controller-manager on a key prefix of the lab's
//! etcd, behind the lab's front proxy ([`crate::proxy`]).
//!
//! Authentication is what a cluster offers: static bearer tokens for the lab
//! itself (`admin`, in `system:masters`) and for the identities a
//! [`ClusterConfig`] names (simulators, stand-ins), ServiceAccount tokens
//! from the TokenRequest API for everything that runs as a ServiceAccount
//! (our daemons), and the front-proxy client certificate for aggregated
//! APIs. Authorization is RBAC (and the Node authorizer). kube-apiserver
//! writes an audit log that [`Cluster::counters`] reads.
//!
//! kube-controller-manager runs every default controller except those the
//! [`ClusterConfig`] leaves to the lab's simulators and stand-ins, each
//! controller with its own ServiceAccount (`--use-service-account-credentials`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use lab_net::Netns;
use lab_net::bridge::Bridge;
use tokio::sync::Mutex;

use crate::audit::{self, AuditLog, RequestCounters};
use crate::binaries::Binaries;
use crate::etcd::Etcd;
use crate::process::Process;
use crate::proxy::{Faults, FrontProxy};
use crate::{Error, crds, kubeconfig, pki, ports};

/// How long kube-apiserver gets to become ready.
const APISERVER_READY: Duration = Duration::from_secs(60);
/// How long kube-controller-manager gets to create the first ServiceAccount.
const CONTROLLERS_READY: Duration = Duration::from_secs(60);
/// How often a start is retried when its port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// How long a stopped kube-apiserver gets before SIGKILL.
const APISERVER_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// The lab's administrator.
pub const ADMIN: &str = "admin";
/// Field manager of what the lab itself applies.
const MANAGER: &str = "kubevirt-lab";

/// What [`Cluster::start`] builds.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster's name: its etcd prefix, its kubeconfig names.
    pub name: String,
    /// Where its PKI, logs, audit log and token file go.
    pub dir: PathBuf,
    /// `--service-cluster-ip-range` (IPv4, or IPv4 and IPv6 for dual stack).
    pub service_cidr: String,
    /// The address kube-apiserver publishes for itself (the `kubernetes`
    /// Service's endpoint).
    pub advertise_address: String,
    /// kube-controller-manager controllers that this cluster runs without,
    /// because a simulator or stand-in of the lab plays them.
    pub without_controllers: Vec<String>,
    /// Identities with static tokens besides `admin`: user name and groups.
    pub users: Vec<(String, Vec<String>)>,
    /// Feature gates of kube-apiserver and kube-controller-manager
    /// (`Name=true`), and API versions kube-apiserver serves beyond its
    /// defaults (`--runtime-config`, `group/version=true`).
    pub feature_gates: Vec<String>,
    pub runtime_config: Vec<String>,
    /// The network namespace kube-apiserver and kube-controller-manager
    /// run in (kube-apiserver on the advertise address there, bridged from
    /// host loopback); none: the host's, on loopback.
    pub netns: Option<Arc<Netns>>,
    /// Run kube-scheduler too (a cluster whose pods something runs).
    pub scheduler: bool,
    /// CustomResourceDefinitions installed before kube-controller-manager
    /// starts, so that its garbage collector and quota controllers watch
    /// their resources from the first moment (they discover resources
    /// installed later only on their 30 s resync).
    pub crds: Vec<CustomResourceDefinition>,
}

impl ClusterConfig {
    pub fn new(name: &str, dir: &Path) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            // Dual stack, as the simulated pods and VMs are.
            service_cidr: "10.96.0.0/16,fd00:10:96::/112".to_string(),
            advertise_address: "10.0.0.1".to_string(),
            without_controllers: Vec::new(),
            users: Vec::new(),
            feature_gates: Vec::new(),
            runtime_config: Vec::new(),
            netns: None,
            scheduler: false,
            crds: Vec::new(),
        }
    }
}

/// A running cluster (cheap to clone; every clone is the same cluster).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClusterConfig,
    binaries: Binaries,
    /// Shared with the other clusters of the lab, or this cluster's own.
    etcd: Arc<Etcd>,
    pki: pki::PkiFiles,
    ca_pem: String,
    apiserver_url: String,
    apiserver: Mutex<Process>,
    /// Host loopback to kube-apiserver in the lab's namespace.
    _apiserver_bridge: Option<Bridge>,
    controller_manager: Mutex<Process>,
    scheduler: Option<Mutex<Process>>,
    /// The lab's administrator client, straight to kube-apiserver.
    admin: kube::Client,
    proxy: FrontProxy,
    audit: AuditLog,
    /// user -> static token
    tokens: BTreeMap<String, String>,
}

impl Cluster {
    /// Starts a cluster on its own etcd.
    pub async fn start_alone(cfg: ClusterConfig) -> Result<Cluster, Error> {
        let binaries = Binaries::find()?;
        let etcd = Arc::new(Etcd::start(&binaries.etcd, &cfg.dir, cfg.netns.clone()).await?);
        Cluster::start(cfg, etcd).await
    }

    /// Starts kube-apiserver on `etcd` (prefix `/<name>`), the front proxy
    /// and kube-controller-manager, and waits until the API is ready and the
    /// controllers run (the `default` ServiceAccount exists).
    pub async fn start(cfg: ClusterConfig, etcd: Arc<Etcd>) -> Result<Cluster, Error> {
        let binaries = Binaries::find()?;
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let mut sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
            cfg.advertise_address.clone(),
        ];
        if let Some(ip) = first_service_ip(&cfg.service_cidr) {
            sans.push(ip);
        }
        let pki = pki::generate(&dir.join("pki"), &sans)?;

        let mut tokens = BTreeMap::new();
        let mut lines = Vec::new();
        let mut add_user = |user: &str, groups: &[String]| {
            let token = random_token();
            lines.push(format!("{token},{user},{user},\"{}\"", groups.join(",")));
            tokens.insert(user.to_string(), token);
        };
        add_user(ADMIN, &["system:masters".to_string()]);
        add_user("system:kube-controller-manager", &[]);
        add_user("system:kube-scheduler", &[]);
        for (user, groups) in &cfg.users {
            add_user(user, groups);
        }
        let token_file = pki::write(&dir, "tokens.csv", &(lines.join("\n") + "\n"))?;
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, audit::POLICY).map_err(Error::io("write", &policy))?;
        let audit_log = dir.join("audit.log");

        let (apiserver, apiserver_url, apiserver_bridge) = start_apiserver(
            &binaries,
            &cfg,
            &etcd,
            &pki.files,
            &token_file,
            &policy,
            &audit_log,
            tokens.get(ADMIN).map(String::as_str).unwrap_or_default(),
            &pki.ca.cert_pem(),
        )
        .await?;

        let proxy_cert = pki.ca.serving(
            "kubevirt-lab-front-proxy",
            &["localhost".to_string(), "127.0.0.1".to_string()],
        )?;
        let proxy = FrontProxy::start(&proxy_cert, &pki.ca.cert_pem(), &apiserver_url).await?;

        let admin = client(&kubeconfig::render(
            &cfg.name,
            &apiserver_url,
            &pki.ca.cert_pem(),
            tokens.get(ADMIN).map(String::as_str).unwrap_or_default(),
            Some("default"),
        ))
        .await?;
        crds::apply(&admin, &cfg.crds).await?;

        // In the lab's namespace, kube-controller-manager reaches
        // kube-apiserver where the namespace has it: the advertise address.
        let in_netns_url = in_netns_url(&cfg, &apiserver_url);
        let component_kubeconfig = |file: &str, user: &str| -> Result<PathBuf, Error> {
            let path = dir.join(file);
            std::fs::write(
                &path,
                kubeconfig::render(
                    &cfg.name,
                    &in_netns_url,
                    &pki.ca.cert_pem(),
                    tokens.get(user).map(String::as_str).unwrap_or_default(),
                    None,
                ),
            )
            .map_err(Error::io("write", &path))?;
            Ok(path)
        };
        let kcm_kubeconfig = component_kubeconfig(
            "controller-manager.kubeconfig",
            "system:kube-controller-manager",
        )?;
        let controller_manager = Process::spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            controller_manager_args(&cfg, &pki.files, &kcm_kubeconfig),
            &dir.join("kube-controller-manager.log"),
            cfg.netns.as_deref().map(Netns::path),
        )?;
        let scheduler = if cfg.scheduler {
            let kubeconfig = component_kubeconfig("scheduler.kubeconfig", "system:kube-scheduler")?;
            Some(Mutex::new(Process::spawn(
                "kube-scheduler",
                &binaries.kube_scheduler,
                scheduler_args(&kubeconfig),
                &dir.join("kube-scheduler.log"),
                cfg.netns.as_deref().map(Netns::path),
            )?))
        } else {
            None
        };

        let cluster = Cluster {
            inner: Arc::new(Inner {
                admin,
                ca_pem: pki.ca.cert_pem(),
                cfg,
                binaries,
                etcd,
                pki: pki.files,
                apiserver_url,
                apiserver: Mutex::new(apiserver),
                _apiserver_bridge: apiserver_bridge,
                controller_manager: Mutex::new(controller_manager),
                scheduler,
                proxy,
                audit: AuditLog::new(&audit_log),
                tokens,
            }),
        };
        cluster.wait_for_controllers().await?;
        tracing::info!(cluster = %cluster.name(), url = %cluster.https_url(), "cluster ready");
        Ok(cluster)
    }

    /// The `default` ServiceAccount of `default` exists once
    /// kube-controller-manager's ServiceAccount controller runs.
    async fn wait_for_controllers(&self) -> Result<(), Error> {
        let client = self.client();
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let created = await_condition(accounts, "default", |sa: Option<&ServiceAccount>| {
            sa.is_some()
        });
        match tokio::time::timeout(CONTROLLERS_READY, created).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Invalid(format!(
                "watching for the default ServiceAccount: {e}"
            ))),
            Err(_) => {
                let kcm = self.inner.controller_manager.lock().await;
                Err(Error::NotReady {
                    process: "kube-controller-manager".to_string(),
                    after: CONTROLLERS_READY,
                    log: kcm.log_path().to_path_buf(),
                    tail: kcm.log_tail(20),
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// The front door every kubeconfig names: `https://127.0.0.1:<port>`.
    pub fn https_url(&self) -> String {
        self.inner.proxy.url()
    }

    /// kube-apiserver as a process inside the cluster's network namespace
    /// reaches it: its advertise address (host loopback without one).
    pub fn in_netns_url(&self) -> String {
        in_netns_url(&self.inner.cfg, &self.inner.apiserver_url)
    }

    /// A kubeconfig for `token` for a process inside the network namespace.
    pub fn in_netns_kubeconfig_yaml(&self, token: &str, namespace: Option<&str>) -> String {
        kubeconfig::render(
            self.name(),
            &self.in_netns_url(),
            &self.inner.ca_pem,
            token,
            namespace,
        )
    }

    /// kube-apiserver itself, bypassing the front proxy and its faults.
    pub fn apiserver_url(&self) -> &str {
        &self.inner.apiserver_url
    }

    /// `--service-cluster-ip-range`.
    pub fn service_cidr(&self) -> &str {
        &self.inner.cfg.service_cidr
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// The PKI files (CAs, keys) of the cluster.
    pub fn pki(&self) -> &pki::PkiFiles {
        &self.inner.pki
    }

    /// The token of `admin` (`system:masters`).
    pub fn admin_token(&self) -> String {
        self.token(ADMIN).unwrap_or_default()
    }

    /// The static token of `user` (one the config named).
    pub fn token(&self, user: &str) -> Option<String> {
        self.inner.tokens.get(user).cloned()
    }

    /// A kubeconfig for `token` through the front proxy.
    pub fn kubeconfig_yaml(&self, token: &str, namespace: Option<&str>) -> String {
        kubeconfig::render(
            self.name(),
            &self.https_url(),
            &self.inner.ca_pem,
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

    /// A client for `token`, through the front proxy.
    pub async fn client_for(&self, token: &str) -> Result<kube::Client, Error> {
        client(&self.kubeconfig_yaml(token, Some("default"))).await
    }

    /// The lab's administrator client, straight to kube-apiserver (the
    /// front proxy's faults are for the clients under test).
    pub fn client(&self) -> kube::Client {
        self.inner.admin.clone()
    }

    /// The front proxy's faults.
    pub fn faults(&self) -> Faults {
        self.inner.proxy.faults()
    }

    /// Requests counted from the audit log so far.
    pub fn counters(&self) -> RequestCounters {
        self.inner.audit.counters()
    }

    /// Requests counted from the audit log once `ready` holds for them, or
    /// as they stand after `timeout` (see [`AuditLog::counters_when`]).
    pub async fn counters_when(
        &self,
        ready: impl Fn(&RequestCounters) -> bool,
        timeout: Duration,
    ) -> Result<RequestCounters, Error> {
        self.inner.audit.counters_when(ready, timeout).await
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API
    /// (namespace and account created when missing), valid for a day.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, Error> {
        let client = self.client();
        ensure_namespace(&client, namespace).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        create_unless_present(&accounts, name, &account).await?;
        request_token(&accounts, name, 24 * 3600).await
    }

    /// Serves `group/version` from an HTTPS server on 127.0.0.1:`port` as an
    /// aggregated API, as KubeVirt registers virt-api: an APIService backed
    /// by Service `namespace/service` (`type: ExternalName` naming
    /// `localhost`), trusting `ca_pem` for the server's certificate (which
    /// must name `<service>.<namespace>.svc`). Waits until it is Available.
    pub async fn register_api_service(
        &self,
        group: &str,
        version: &str,
        namespace: &str,
        service: &str,
        port: u16,
        ca_pem: &str,
    ) -> Result<(), Error> {
        let client = self.client();
        ensure_namespace(&client, namespace).await?;
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(service.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".to_string()),
                external_name: Some("localhost".to_string()),
                ports: Some(vec![ServicePort {
                    port: i32::from(port),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let params = PatchParams::apply(MANAGER).force();
        Api::<Service>::namespaced(client.clone(), namespace)
            .patch(service, &params, &Patch::Apply(&svc))
            .await?;
        let name = format!("{version}.{group}");
        let api_service = APIService {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(group.to_string()),
                version: Some(version.to_string()),
                group_priority_minimum: 1000,
                version_priority: 15,
                ca_bundle: Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())),
                service: Some(ServiceReference {
                    name: Some(service.to_string()),
                    namespace: Some(namespace.to_string()),
                    port: Some(i32::from(port)),
                }),
                ..APIServiceSpec::default()
            }),
            ..APIService::default()
        };
        let services: Api<APIService> = Api::all(client);
        services
            .patch(&name, &params, &Patch::Apply(&api_service))
            .await?;
        let available = await_condition(services, &name, |s: Option<&APIService>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                })
        });
        match tokio::time::timeout(APISERVER_READY, available).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Invalid(format!("watching APIService {name}: {e}"))),
            Err(_) => Err(Error::Invalid(format!(
                "APIService {name} did not become Available within {APISERVER_READY:?}"
            ))),
        }
    }

    /// Kills kube-apiserver (a crash of the control plane); clients see
    /// refused connections (the front proxy answers 503) until
    /// [`Cluster::restart_apiserver`].
    pub async fn kill_apiserver(&self) {
        self.inner.proxy.set_ready(false);
        self.inner.apiserver.lock().await.kill();
    }

    /// Starts kube-apiserver again and waits until it is ready.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        let mut apiserver = self.inner.apiserver.lock().await;
        apiserver.start()?;
        ReadyProbe::new(
            &self.inner.apiserver_url,
            &self.inner.ca_pem,
            &self.admin_token(),
        )?
        .wait(&mut apiserver)
        .await?;
        self.inner.proxy.set_ready(true);
        Ok(())
    }

    /// An outage of `duration`, in the background: kube-apiserver is killed
    /// now and started again after `duration`.
    pub fn outage(&self, duration: Duration) {
        let cluster = self.clone();
        tokio::spawn(async move {
            cluster.kill_apiserver().await;
            tokio::time::sleep(duration).await;
            if let Err(e) = cluster.restart_apiserver().await {
                tracing::error!(cluster = %cluster.name(), "restarting kube-apiserver after an outage: {e}");
            }
        });
    }

    /// Stops kube-controller-manager and kube-apiserver (etcd goes with its
    /// last cluster).
    pub async fn shutdown(self) {
        if let Some(scheduler) = &self.inner.scheduler {
            scheduler.lock().await.stop().await;
        }
        self.inner.controller_manager.lock().await.stop().await;
        // kube-apiserver stops listening at once, then waits for the watches
        // still open to end, up to its request timeout (a minute). A lab
        // cluster being thrown away has nothing to drain.
        self.inner
            .apiserver
            .lock()
            .await
            .stop_within(APISERVER_SHUTDOWN_GRACE)
            .await;
    }

    /// The binaries this cluster runs.
    pub fn binaries(&self) -> &Binaries {
        &self.inner.binaries
    }

    /// The etcd this cluster's objects are in.
    pub fn etcd(&self) -> &Arc<Etcd> {
        &self.inner.etcd
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_apiserver(
    binaries: &Binaries,
    cfg: &ClusterConfig,
    etcd: &Etcd,
    pki: &pki::PkiFiles,
    token_file: &Path,
    policy: &Path,
    audit_log: &Path,
    admin_token: &str,
    ca_pem: &str,
) -> Result<(Process, String, Option<Bridge>), Error> {
    let log = cfg.dir.join("kube-apiserver.log");
    let advertise: IpAddr = cfg
        .advertise_address
        .parse()
        .map_err(|e| Error::Invalid(format!("advertise address {}: {e}", cfg.advertise_address)))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (port, bridge) = ports::listen_port(cfg.netns.as_ref(), advertise).await?;
        let url = format!("https://127.0.0.1:{port}");
        let args = apiserver_args(cfg, etcd, pki, token_file, policy, audit_log, port);
        let mut process = Process::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            args,
            &log,
            cfg.netns.as_deref().map(Netns::path),
        )?;
        let ready = ReadyProbe::new(&url, ca_pem, admin_token)?
            .wait(&mut process)
            .await;
        match ready {
            Ok(()) => return Ok((process, url, bridge)),
            Err(Error::Exited { tail, .. })
                if attempt < PORT_ATTEMPTS && tail.contains("address already in use") =>
            {
                tracing::debug!(port, "port taken meanwhile; trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

fn apiserver_args(
    cfg: &ClusterConfig,
    etcd: &Etcd,
    pki: &pki::PkiFiles,
    token_file: &Path,
    policy: &Path,
    audit_log: &Path,
    port: u16,
) -> Vec<OsString> {
    let path = |p: &Path| p.display().to_string();
    [
        format!("--etcd-servers={}", etcd.client_url()),
        format!("--etcd-prefix=/{}", cfg.name),
        // In the lab's namespace on the advertise address (the `kubernetes`
        // Service's endpoint), else on host loopback.
        format!(
            "--bind-address={}",
            if cfg.netns.is_some() {
                cfg.advertise_address.as_str()
            } else {
                "127.0.0.1"
            }
        ),
        format!("--secure-port={port}"),
        format!("--advertise-address={}", cfg.advertise_address),
        format!("--tls-cert-file={}", path(&pki.apiserver_cert)),
        format!("--tls-private-key-file={}", path(&pki.apiserver_key)),
        format!("--client-ca-file={}", path(&pki.ca_cert)),
        format!("--token-auth-file={}", path(token_file)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        format!("--service-account-key-file={}", path(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", path(&pki.sa_key)),
        format!("--service-cluster-ip-range={}", cfg.service_cidr),
        "--authorization-mode=Node,RBAC".to_string(),
        "--enable-admission-plugins=NodeRestriction".to_string(),
        "--allow-privileged=true".to_string(),
        "--enable-bootstrap-token-auth=true".to_string(),
        // Aggregation: what kube-apiserver presents to aggregated APIs, and
        // whom it believes identity headers from.
        format!(
            "--requestheader-client-ca-file={}",
            path(&pki.front_proxy_ca_cert)
        ),
        format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CLIENT),
        "--requestheader-username-headers=X-Remote-User".to_string(),
        "--requestheader-group-headers=X-Remote-Group".to_string(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
        format!(
            "--proxy-client-cert-file={}",
            path(&pki.front_proxy_client_cert)
        ),
        format!(
            "--proxy-client-key-file={}",
            path(&pki.front_proxy_client_key)
        ),
        format!("--audit-policy-file={}", path(policy)),
        format!("--audit-log-path={}", path(audit_log)),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
        "--profiling=false".to_string(),
        format!("--cert-dir={}", path(&pki.dir)),
    ]
    .into_iter()
    .chain(optional_list("--feature-gates", &cfg.feature_gates))
    .chain(optional_list("--runtime-config", &cfg.runtime_config))
    .map(OsString::from)
    .collect()
}

/// `flag=a,b` when `values` is not empty.
fn optional_list(flag: &str, values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| format!("{flag}={}", values.join(",")))
}

/// Where kube-apiserver is from inside the cluster's network namespace.
fn in_netns_url(cfg: &ClusterConfig, apiserver_url: &str) -> String {
    match (&cfg.netns, apiserver_url.rsplit_once(':')) {
        (Some(_), Some((_, port))) => format!("https://{}:{port}", cfg.advertise_address),
        _ => apiserver_url.to_string(),
    }
}

/// kube-scheduler: the default profile, no serving port or election (the
/// lab runs one per cluster, several clusters per host).
fn scheduler_args(kubeconfig: &Path) -> Vec<OsString> {
    [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--secure-port=0".to_string(),
        "--leader-elect=false".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

fn controller_manager_args(
    cfg: &ClusterConfig,
    pki: &pki::PkiFiles,
    kubeconfig: &Path,
) -> Vec<OsString> {
    let path = |p: &Path| p.display().to_string();
    let mut controllers = vec![
        "*".to_string(),
        "bootstrap-signer-controller".to_string(),
        "token-cleaner-controller".to_string(),
    ];
    controllers.extend(cfg.without_controllers.iter().map(|c| format!("-{c}")));
    [
        format!("--kubeconfig={}", path(kubeconfig)),
        // Several clusters share this host: no serving port, no election.
        "--secure-port=0".to_string(),
        "--leader-elect=false".to_string(),
        "--use-service-account-credentials=true".to_string(),
        // Each controller's ServiceAccount is set up at start; client-side
        // throttling would make that take seconds.
        "--kube-api-qps=500".to_string(),
        "--kube-api-burst=1000".to_string(),
        format!("--controllers={}", controllers.join(",")),
        format!("--cluster-name={}", cfg.name),
        format!("--cluster-signing-cert-file={}", path(&pki.ca_cert)),
        format!("--cluster-signing-key-file={}", path(&pki.ca_key)),
        format!("--root-ca-file={}", path(&pki.ca_cert)),
        format!("--service-account-private-key-file={}", path(&pki.sa_key)),
        format!("--service-cluster-ip-range={}", cfg.service_cidr),
        "--profiling=false".to_string(),
    ]
    .into_iter()
    .chain(optional_list("--feature-gates", &cfg.feature_gates))
    .map(OsString::from)
    .collect()
}

/// Probes `/readyz` of one kube-apiserver with the admin token (a plain
/// HTTPS client: a kube client would log every refused probe as an error).
#[derive(Clone)]
struct ReadyProbe {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<bytes::Bytes>,
    >,
    url: String,
    token: String,
}

impl ReadyProbe {
    fn new(url: &str, ca_pem: &str, token: &str) -> Result<ReadyProbe, Error> {
        Ok(ReadyProbe {
            client: crate::proxy::https_client(ca_pem)?,
            url: format!("{url}/readyz"),
            token: token.to_string(),
        })
    }

    /// Waits until kube-apiserver `process` is ready (or exits).
    async fn wait(&self, process: &mut Process) -> Result<(), Error> {
        process
            .ready(APISERVER_READY, || {
                let probe = self.clone();
                async move { probe.ready().await }
            })
            .await
    }

    /// Whether `/readyz` answers 200.
    async fn ready(&self) -> bool {
        let Ok(req) = http::Request::get(&self.url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(http_body_util::Empty::new())
        else {
            return false;
        };
        self.client
            .request(req)
            .await
            .is_ok_and(|resp| resp.status() == http::StatusCode::OK)
    }
}

async fn client(kubeconfig_yaml: &str) -> Result<kube::Client, Error> {
    let kc = Kubeconfig::from_yaml(kubeconfig_yaml)
        .map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))?;
    Ok(kube::Client::try_from(config)?)
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    create_unless_present(&Api::all(client.clone()), name, &ns).await
}

/// Creates `object` (named `name`) through `api` unless it exists; someone
/// creating it meanwhile is fine too.
async fn create_unless_present<K>(api: &Api<K>, name: &str, object: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first host address of an IPv4 CIDR (the `kubernetes` Service's).
fn first_service_ip(cidrs: &str) -> Option<String> {
    let cidr = cidrs.split(',').next()?;
    let (net, _) = cidr.split_once('/')?;
    let ip: std::net::Ipv4Addr = net.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string())
}

/// A token of ServiceAccount `name` of `accounts` from the TokenRequest
/// API, valid for `seconds`.
pub async fn request_token(
    accounts: &Api<ServiceAccount>,
    name: &str,
    seconds: i64,
) -> Result<String, Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no token issued for {}/{name}",
                accounts.namespace().unwrap_or_default()
            ))
        })
}
