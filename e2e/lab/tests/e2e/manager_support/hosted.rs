//! Helpers of the hosted-control-plane tests: a HostedCluster published on
//! an infra node's port, its conditions, kubectl and a Rust client through
//! its endpoint (from the host, over a loopback forward), and a client that
//! writes throughout a disruption and says what it lost.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kubevirt_lab::hcp;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{NS, condition_message};

/// The first infra node's address.
pub const NODE_ADDRESS: &str = "192.168.100.10";

pub fn hosted(name: &str, kubernetes_version: Option<&str>) -> anyhow::Result<DynamicObject> {
    let mut release = json!({"version": "0.1.0"});
    if let Some(v) = kubernetes_version {
        release["kubernetesVersion"] = json!(v);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "hcp.kubevirt-rs.io/v1alpha1",
        "kind": "HostedCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "release": release,
            "infraID": format!("{name}-id"),
            "services": [{"service": "APIServer", "servicePublishingStrategy": {
                "type": "NodePort", "nodePort": {"address": NODE_ADDRESS}
            }}],
        }
    }))?)
}

/// The admin kubeconfig of hosted cluster `name` (from its status), written
/// for the host: it reaches `endpoint` through the returned loopback
/// forward (the serving certificate names 127.0.0.1 too).
pub async fn admin_kubeconfig(
    lab: &kubevirt_lab::Lab,
    name: &str,
    endpoint: &str,
) -> anyhow::Result<(lab_net::bridge::Bridge, std::path::PathBuf)> {
    let forward = lab_net::bridge::Bridge::from_host(
        lab.net.clone(),
        "127.0.0.1:0".parse()?,
        endpoint.parse()?,
    )
    .await?;
    let admin = Api::<Secret>::namespaced(lab.infra_client(), NS)
        .get(&format!("{name}-admin-kubeconfig"))
        .await?;
    let text = String::from_utf8(admin.data.context("data")?["kubeconfig"].0.clone())?;
    let kubeconfig = lab.dir.join(format!("{name}.kubeconfig"));
    let via = forward.local_addr();
    std::fs::write(
        &kubeconfig,
        text.replace(&format!("https://{endpoint}"), &format!("https://{via}")),
    )?;
    Ok((forward, kubeconfig))
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .context("run kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until HostedCluster `name` is Available, for a control plane that
/// starts several members (longer than [`WAIT`]).
pub async fn until_available_within(
    hcs: &Api<DynamicObject>,
    name: &str,
    within: Duration,
) -> anyhow::Result<DynamicObject> {
    let watch = hcp::all_available(hcs, 1);
    tokio::time::timeout(within, watch)
        .await
        .with_context(|| format!("HostedCluster {name} not Available within {within:?}"))??;
    Ok(hcs.get(name).await?)
}

/// A hosted cluster's endpoint (`host:port`) from its status.
pub fn endpoint_of(hc: &DynamicObject) -> anyhow::Result<String> {
    let ep = &hc.data["status"]["controlPlaneEndpoint"];
    Ok(format!(
        "{}:{}",
        ep["host"].as_str().context("host")?,
        ep["port"].as_u64().context("port")?
    ))
}

/// The client configuration of hosted cluster `kubeconfig` (from the
/// host) with short timeouts: a request to a stopped API server fails fast.
pub async fn guest_config(kubeconfig: &Path) -> anyhow::Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.read_timeout = Some(Duration::from_secs(5));
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(config)
}

/// A client of hosted cluster `kubeconfig` ([`guest_config`]).
pub async fn guest_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(guest_config(kubeconfig).await?)?)
}

/// How a [`Writer`] retries a failed write: after a client's back-off
/// (500 ms), on a new connection (the one that failed may lead to an API
/// server that is gone).
#[derive(Clone, Copy, Debug)]
pub enum Retries {
    /// Once: the hosted API must never fail twice in a row.
    Once,
    /// Until it succeeds, for up to this long: the hosted API may be
    /// interrupted, and must be back within it.
    Within(Duration),
}

/// What a [`Writer`] saw.
pub struct Written {
    pub count: usize,
    /// Writes that failed after their retries.
    pub failed: Vec<String>,
    /// Writes that needed a retry.
    pub retried: usize,
    /// The longest time between two successful writes.
    pub longest_gap: Duration,
}

/// A client creating ConfigMaps `w-<n>` in `default`, one after another,
/// until stopped, retrying a failed write as `retries` says.
pub struct Writer {
    stop: CancellationToken,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<Written>,
}

impl Writer {
    pub fn start(config: kube::Config, retries: Retries) -> Writer {
        let stop = CancellationToken::new();
        let (tx, count) = watch::channel(0);
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let api = |config: &kube::Config| {
                    kube::Client::try_from(config.clone())
                        .map(|c| Api::<ConfigMap>::namespaced(c, "default"))
                };
                let mut maps = match api(&config) {
                    Ok(maps) => maps,
                    Err(e) => {
                        return Written {
                            count: 0,
                            failed: vec![format!("client: {e}")],
                            retried: 0,
                            longest_gap: Duration::ZERO,
                        };
                    }
                };
                let mut w = Written {
                    count: 0,
                    failed: Vec::new(),
                    retried: 0,
                    longest_gap: Duration::ZERO,
                };
                let mut last_ok = Instant::now();
                while !stop.is_cancelled() {
                    let name = format!("w-{}", w.count);
                    let cm: ConfigMap = match serde_json::from_value(json!({
                        "metadata": {"name": name},
                        "data": {"n": w.count.to_string()},
                    })) {
                        Ok(cm) => cm,
                        Err(e) => {
                            w.failed.push(format!("{name}: {e}"));
                            break;
                        }
                    };
                    let mut ok = maps.create(&PostParams::default(), &cm).await.is_ok();
                    let failed_at = Instant::now();
                    if !ok {
                        w.retried += 1;
                    }
                    while !ok {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if let Ok(fresh) = api(&config) {
                            maps = fresh;
                        }
                        match maps.create(&PostParams::default(), &cm).await {
                            Ok(_) => ok = true,
                            // An earlier attempt landed; its answer was lost.
                            Err(kube::Error::Api(s)) if s.code == 409 => ok = true,
                            Err(e) => {
                                let again = match retries {
                                    Retries::Once => false,
                                    Retries::Within(d) => failed_at.elapsed() < d,
                                };
                                if !again {
                                    w.failed.push(format!("{name}: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                    if ok {
                        w.longest_gap = w.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    w.count += 1;
                    tx.send_replace(w.count);
                }
                w
            }
        });
        Writer { stop, count, task }
    }

    /// Waits until `n` more writes are done (watching the count).
    pub async fn more(&mut self, n: usize) -> anyhow::Result<()> {
        let target = *self.count.borrow() + n;
        tokio::time::timeout(WRITE_WAIT, self.count.wait_for(|c| *c >= target))
            .await
            .with_context(|| format!("{n} more writes did not happen within {WRITE_WAIT:?}"))??;
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<Written> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// Bound of [`Writer::more`].
const WRITE_WAIT: Duration = Duration::from_secs(60);

/// Creates HighlyAvailable hosted cluster `name` and waits until all three
/// etcd members and API servers are ready. It publishes its API server
/// through the infra load balancer, as an HA cluster should: a NodePort on
/// one node's address dies with that node.
pub async fn highly_available(
    hcs: &Api<DynamicObject>,
    name: &str,
) -> anyhow::Result<DynamicObject> {
    let mut hc = hosted(name, Some("1.32.13"))?;
    hc.data["spec"]["controllerAvailabilityPolicy"] = json!("HighlyAvailable");
    hc.data["spec"]["services"] = json!([{"service": "APIServer",
        "servicePublishingStrategy": {"type": "LoadBalancer"}}]);
    hcs.create(&PostParams::default(), &hc).await?;
    until_available_within(hcs, name, Duration::from_secs(240)).await?;
    // Available with the first API server; the others follow.
    super::until_dynamic(hcs, name, "every member and API server", |hc| {
        hc.filter(|hc| {
            condition_message(hc, "EtcdAvailable") == "3 of 3 etcd members ready"
                && condition_message(hc, "KubeAPIServerAvailable")
                    .starts_with("3 of 3 API servers available")
        })
        .cloned()
    })
    .await
}
