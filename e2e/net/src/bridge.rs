//! [`Bridge`]: a TCP listener inside the lab's namespace whose connections
//! are forwarded to an address on host loopback. The API servers listen on
//! host loopback (kubectl on the host reaches them as before); a bridge on
//! each one's advertise address makes the `kubernetes` Service's endpoint
//! real inside the namespace.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::{Error, Netns};

/// A running bridge; dropping it closes the listener.
#[derive(Debug)]
pub struct Bridge {
    task: JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bridge {
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // Made on a runtime thread: a socket of the host's namespace.
                    match TcpStream::connect(host).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => tracing::debug!(%host, error = %e, "bridge"),
                    }
                });
            }
        });
        Ok(Bridge { task })
    }
}
