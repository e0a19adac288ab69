//! [`Bridge`]: TCP forwarding between host loopback and the lab's
//! namespace. The control planes run inside the namespace; a bridge from a
//! host loopback port to each API server (and to etcd) keeps every
//! kubeconfig on host loopback, so kubectl on the host works as before
//! ([`Bridge::from_host`]). A bridge the other way lets a process inside
//! reach a server of the lab process on host loopback ([`Bridge::to_host`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::relay::relay;
use crate::{Error, Netns};

/// A running bridge; dropping it closes the listener.
#[derive(Debug)]
pub struct Bridge {
    task: JoinHandle<()>,
    /// Where it listens (the port chosen when asked for port 0).
    addr: SocketAddr,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bridge {
    /// Listens on `host` (a host loopback address) and forwards to `target`
    /// inside `netns`.
    pub async fn from_host(
        netns: Arc<Netns>,
        host: SocketAddr,
        target: SocketAddr,
    ) -> Result<Bridge, Error> {
        Self::from_host_as(netns, host, target, None).await
    }

    /// [`Bridge::from_host`], with the connections inside the namespace
    /// made from address `from` (a VM's, so that what it reaches sees it).
    pub async fn from_host_as(
        netns: Arc<Netns>,
        host: SocketAddr,
        target: SocketAddr,
        from: Option<std::net::IpAddr>,
    ) -> Result<Bridge, Error> {
        if !host.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "a bridge listens only on host loopback, not {host}"
            )));
        }
        // Made on a runtime thread: a socket of the host's namespace.
        let listener = TcpListener::bind(host)
            .await
            .map_err(Error::socket("listen on", host))?;
        let addr = listener
            .local_addr()
            .map_err(Error::socket("listen on", host))?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let netns = netns.clone();
                tokio::spawn(async move {
                    match netns.connect_tcp(target, from).await {
                        Ok(outbound) => relay(inbound, outbound).await,
                        Err(e) => tracing::debug!(%target, error = %e, "bridge"),
                    }
                });
            }
        });
        Ok(Bridge { task, addr })
    }

    /// Where the bridge listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listens on `listen` in `netns` and forwards to `host` (an address on
    /// the host's loopback).
    pub async fn to_host(
        netns: &Netns,
        listen: SocketAddr,
        host: SocketAddr,
    ) -> Result<Bridge, Error> {
        if !host.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "a bridge leads only to host loopback, not {host}"
            )));
        }
        let listener = netns.bind_tcp(listen).await?;
        let addr = listener
            .local_addr()
            .map_err(Error::socket("listen on", listen))?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // Made on a runtime thread: a socket of the host's namespace.
                    match TcpStream::connect(host).await {
                        Ok(outbound) => relay(inbound, outbound).await,
                        Err(e) => tracing::debug!(%host, error = %e, "bridge"),
                    }
                });
            }
        });
        Ok(Bridge { task, addr })
    }
}
