//! What the tests of traffic through the lab network share: waiting until
//! a service proxy routes an address, and asking who answers there.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use kubevirt_lab::Lab;
use lab_net::proxy::{Listen, Route, ServiceProxy};
use lab_net::{Protocol, client};

/// How long a proxy may take to follow a change.
const WAIT: Duration = Duration::from_secs(30);

/// Waits until `proxy` forwards `protocol` `addr` to exactly `count`
/// endpoints (`count` 0: until it does not serve `addr`).
pub async fn served(
    proxy: &ServiceProxy,
    protocol: Protocol,
    addr: SocketAddr,
    count: usize,
) -> anyhow::Result<()> {
    let listen = Listen { protocol, addr };
    let wait = proxy.wait_for(|s| match s.get(&listen) {
        Some(Route::Forward(f)) => f.backends.len() == count,
        None => count == 0,
        _ => false,
    });
    tokio::time::timeout(WAIT, wait).await.with_context(|| {
        format!(
            "{addr} ({protocol:?}) served by {count} endpoints: {:?}",
            proxy.serving().borrow().get(&listen)
        )
    })
}

/// The pods (and their nodes) answering `n` HTTP requests to `to` from a
/// client outside both clusters.
pub async fn answers(
    lab: &Lab,
    to: SocketAddr,
    n: usize,
) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r =
            client::http_get(&lab.net, to, "/", Some(IpAddr::V4(lab_net::OUTSIDE_CLIENT))).await?;
        ensure!(r.status == 200, "{to} answered {}: {}", r.status, r.body);
        let a = r.answer()?;
        seen.insert((a.identity.pod, a.identity.node));
    }
    Ok(seen)
}
