//! Runs a lab API server until Ctrl-C, printing its URL and writing a kubeconfig
//! (`LAB_KUBECONFIG`, default `./lab.kubeconfig`).

use lab_apiserver::{ApiServer, ApiServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = ApiServerConfig::default();
    if let Ok(bind) = std::env::var("LAB_BIND") {
        cfg.bind = bind.parse()?;
    }
    let server = ApiServer::start(cfg).await?;
    let path = std::env::var("LAB_KUBECONFIG").unwrap_or_else(|_| "lab.kubeconfig".into());
    server.write_kubeconfig(std::path::Path::new(&path), &server.admin_token(), None)?;
    println!(
        "{} token={} kubeconfig={path}",
        server.url(),
        server.admin_token()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
