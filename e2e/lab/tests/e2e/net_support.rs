//! What the tests of traffic through the lab network share: waiting until
//! a service proxy routes an address, and asking who answers there.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

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
    /// Attempts that failed (each retried on a new connection, if allowed).
    pub failed_attempts: usize,
    /// When the first and the last failed attempt were made.
    pub failing: Option<(Instant, Instant)>,
    /// Since when requests were sent (what [`Requested`] displays times
    /// after; [`Requested::since`] changes it).
    pub since: Instant,
    /// The requests that got no answer after every attempt, and why.
    pub failed: Vec<String>,
    /// The longest time between two answered requests.
    pub longest_gap: Duration,
}

/// A client outside both clusters sending HTTP requests to `to` at a steady
/// rate (one every [`REQUEST_EVERY`]) until stopped, each on a new
/// connection and retried up to `retries` times at once when it fails,
/// counting what failed.
pub struct Requester {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Requested>,
}

/// The pace of a [`Requester`].
pub const REQUEST_EVERY: Duration = Duration::from_millis(20);

impl Requester {
    pub fn start(lab: &Lab, to: SocketAddr, retries: usize) -> Requester {
        let stop = tokio_util::sync::CancellationToken::new();
        let net = lab.net.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut seen = Requested {
                    count: 0,
                    failed_attempts: 0,
                    failing: None,
                    since: Instant::now(),
                    failed: Vec::new(),
                    longest_gap: Duration::ZERO,
                };
                let mut last = Instant::now();
                let mut pace = tokio::time::interval(REQUEST_EVERY);
                let from = Some(IpAddr::V4(lab_net::OUTSIDE_CLIENT));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = pace.tick() => {}
                    }
                    seen.count += 1;
                    let mut error = String::new();
                    for _ in 0..=retries {
                        match client::http_get(&net, to, "/", from).await {
                            Ok(r) if r.status == 200 => {
                                error.clear();
                                break;
                            }
                            Ok(r) => error = format!("{}: {}", r.status, r.body),
                            Err(e) => error = e.to_string(),
                        }
                        seen.failed_attempts += 1;
                        let at = Instant::now();
                        let first = seen.failing.map_or(at, |(first, _)| first);
                        seen.failing = Some((first, at));
                    }
                    if error.is_empty() {
                        seen.longest_gap = seen.longest_gap.max(last.elapsed());
                        last = Instant::now();
                    } else {
                        seen.failed.push(error);
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

impl Requested {
    /// The same, its times counted from `t0` (when something was lost, say).
    pub fn since(self, t0: Instant) -> Requested {
        Requested { since: t0, ..self }
    }
}

impl std::fmt::Display for Requested {
    /// `N requests, M failed after every retry, K attempts failed (from
    /// a s to b s after <since>), longest time without an answer g s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed after every retry, {} attempts failed",
            self.count,
            self.failed.len(),
            self.failed_attempts
        )?;
        if let Some((first, last)) = self.failing {
            let after = |t: Instant| {
                let secs = |d: Duration| d.as_secs_f64();
                match t.checked_duration_since(self.since) {
                    Some(d) => secs(d),
                    None => -secs(self.since - t),
                }
            };
            write!(f, " (from {:.2} s to {:.2} s)", after(first), after(last))?;
        }
        write!(
            f,
            ", longest time without an answer {:.2} s",
            self.longest_gap.as_secs_f64()
        )
    }
}
