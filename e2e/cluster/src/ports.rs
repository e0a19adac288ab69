//! Free loopback ports for the control plane's listeners.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use lab_net::Netns;
use lab_net::bridge::Bridge;

use crate::Error;

/// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's
/// choice for port 0). Another process could take it before ours binds it;
/// the starters retry with a new port when a program reports it in use.
pub fn free() -> Result<u16, Error> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::io("bind", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("read the address of", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// A free port for a listener on host loopback, or on `ip` inside `netns`
/// with a bridge from the same port on host loopback holding it.
pub async fn listen_port(
    netns: Option<&Arc<Netns>>,
    ip: IpAddr,
) -> Result<(u16, Option<Bridge>), Error> {
    const ATTEMPTS: usize = 5;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let port = free()?;
        let Some(netns) = netns else {
            return Ok((port, None));
        };
        let host = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        match Bridge::from_host(netns.clone(), host, SocketAddr::new(ip, port)).await {
            Ok(bridge) => return Ok((port, Some(bridge))),
            // Taken between the choice and the bind: another port.
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Invalid(format!(
        "no free loopback port after {ATTEMPTS} attempts: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}
