//! Shared test helpers: start a server, bound every wait.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use lab_apiserver::{ApiServer, ApiServerConfig};

pub async fn start() -> ApiServer {
    start_with(ApiServerConfig::default()).await
}

pub async fn start_with(cfg: ApiServerConfig) -> ApiServer {
    ApiServer::start(cfg).await.expect("server starts")
}

/// Fails the test if `f` takes longer than 10 s.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// A kube client built from the server's kubeconfig (https, lab CA), without the
/// default retries on 429/503/504.
pub async fn kubeconfig_client(server: &ApiServer) -> kube::Client {
    let yaml = server.kubeconfig_yaml(&server.admin_token(), None);
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("client")
}
