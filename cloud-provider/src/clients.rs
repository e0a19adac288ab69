//! Clients for the two clusters: the guest (tenant) cluster from
//! `--kubeconfig`, the infra cluster from the cloud config's `kubeconfig`,
//! each falling back to the in-cluster service account when unset, and the
//! infra namespace (the cloud config's, else the infra kubeconfig context's).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::Fatal;

/// Connected clients.
#[derive(Clone)]
pub struct Clusters {
    pub guest: Client,
    pub infra: Client,
    pub infra_namespace: String,
}

async fn load(which: &'static str, path: Option<&Path>) -> Result<Config, Fatal> {
    match path {
        Some(path) => {
            let fatal = |message: String| Fatal::Kubeconfig {
                which,
                path: path.display().to_string(),
                message,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fatal(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| fatal(e.to_string()))
        }
        None => Config::incluster().map_err(|e| Fatal::Client {
            which,
            message: format!("no kubeconfig given and not running in a cluster: {e}"),
        }),
    }
}

fn client(which: &'static str, config: Config) -> Result<Client, Fatal> {
    Client::try_from(config).map_err(|e| Fatal::Client {
        which,
        message: e.to_string(),
    })
}

/// Build both clients. Nothing is contacted yet.
pub async fn connect(
    guest_kubeconfig: Option<&Path>,
    infra_kubeconfig: Option<&Path>,
    infra_namespace: Option<&str>,
) -> Result<Clusters, Fatal> {
    let guest = client("guest", load("guest", guest_kubeconfig).await?)?;
    let infra_config = load("infra", infra_kubeconfig).await?;
    let infra_namespace = infra_namespace
        .map(str::to_string)
        .unwrap_or_else(|| infra_config.default_namespace.clone());
    Ok(Clusters {
        guest,
        infra: client("infra", infra_config)?,
        infra_namespace,
    })
}
