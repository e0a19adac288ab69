//! One etcd for a lab: every cluster of the lab keeps its objects under its
//! own key prefix (`--etcd-prefix=/<cluster>`). Its data lives in memory
//! (`/dev/shm` when there is one), since the lab's clusters live only as long
//! as the lab; it listens on loopback only: the lab network namespace's when
//! given one (with a bridge from the same port on host loopback), else the
//! host's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lab_net::Netns;
use lab_net::bridge::Bridge;

use crate::process::Process;
use crate::{Error, ports};

/// How long etcd gets to answer its health check.
const READY: Duration = Duration::from_secs(30);

/// A running etcd.
pub struct Etcd {
    process: Process,
    client_url: String,
    data_dir: PathBuf,
    netns: Option<Arc<Netns>>,
    _bridge: Option<Bridge>,
}

impl Etcd {
    /// Starts etcd with its log in `log_dir`, in `netns` if given, and waits
    /// until it is healthy.
    pub async fn start(
        program: &Path,
        log_dir: &Path,
        netns: Option<Arc<Netns>>,
    ) -> Result<Etcd, Error> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let data_dir = base.join(format!(
            "kubevirt-lab-etcd-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let (client, bridge) =
            ports::listen_port(netns.as_ref(), Ipv4Addr::LOCALHOST.into()).await?;
        let peer = ports::free()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = vec![
            "--name=lab".into(),
            format!("--data-dir={}", data_dir.display()).into(),
            format!("--listen-client-urls={client_url}").into(),
            format!("--advertise-client-urls={client_url}").into(),
            format!("--listen-peer-urls={peer_url}").into(),
            format!("--initial-advertise-peer-urls={peer_url}").into(),
            format!("--initial-cluster=lab={peer_url}").into(),
            // Snapshots and compaction as kube-apiserver expects them;
            // quiet logs.
            "--snapshot-count=10000".into(),
            "--log-level=warn".into(),
            "--logger=zap".into(),
        ];
        let mut process = Process::spawn(
            "etcd",
            program,
            args,
            &log_dir.join("etcd.log"),
            netns.as_deref().map(Netns::path),
        )?;
        let health = format!("{client_url}/health");
        let client = http_client();
        process
            .ready(READY, || {
                let (client, health) = (client.clone(), health.clone());
                async move { healthy(&client, &health).await }
            })
            .await?;
        Ok(Etcd {
            process,
            client_url,
            data_dir,
            netns,
            _bridge: bridge,
        })
    }

    /// The network namespace it runs in, if not the host's.
    pub fn netns(&self) -> Option<&Arc<Netns>> {
        self.netns.as_ref()
    }

    /// `http://127.0.0.1:<port>`: what kube-apiserver's `--etcd-servers` names.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Stops etcd and removes its data.
    pub async fn stop(mut self) {
        self.process.stop().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn healthy(client: &HttpClient, url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match client.get(uri).await {
        Ok(resp) if resp.status().is_success() => {
            use http_body_util::BodyExt;
            resp.into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).contains("\"health\":\"true\""))
                .unwrap_or(false)
        }
        _ => false,
    }
}
