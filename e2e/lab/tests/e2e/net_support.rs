//! What the tests of traffic through the lab network share: waiting until
//! a service proxy routes an address, and asking who answers there.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use kubevirt_lab::Lab;
use lab_net::proxy::{Listen, ServiceProxy};
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
    let wait = proxy.until_forwarding(listen, count);
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

/// What a [`Requester`] saw.
#[derive(Debug)]
pub struct Requested {
    pub count: usize,
    /// The requests that got no answer, and why.
    pub failed: Vec<String>,
    /// The longest time between two answered requests.
    pub longest_gap: Duration,
}

/// A client outside both clusters sending HTTP requests to `to` at a steady
/// rate (one every [`REQUEST_EVERY`]) until stopped, counting what failed.
pub struct Requester {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Requested>,
}

/// The pace of a [`Requester`].
pub const REQUEST_EVERY: Duration = Duration::from_millis(20);

impl Requester {
    pub fn start(lab: &Lab, to: SocketAddr) -> Requester {
        let stop = tokio_util::sync::CancellationToken::new();
        let net = lab.net.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut seen = Requested {
                    count: 0,
                    failed: Vec::new(),
                    longest_gap: Duration::ZERO,
                };
                let mut last = std::time::Instant::now();
                let mut pace = tokio::time::interval(REQUEST_EVERY);
                let from = Some(IpAddr::V4(lab_net::OUTSIDE_CLIENT));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = pace.tick() => {}
                    }
                    seen.count += 1;
                    match client::http_get(&net, to, "/", from).await {
                        Ok(r) if r.status == 200 => {
                            seen.longest_gap = seen.longest_gap.max(last.elapsed());
                            last = std::time::Instant::now();
                        }
                        Ok(r) => seen.failed.push(format!("{}: {}", r.status, r.body)),
                        Err(e) => seen.failed.push(e.to_string()),
                    }
                }
                seen
            }
        });
        Requester { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<Requested> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}
