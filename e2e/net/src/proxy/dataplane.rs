//! The proxy's listeners: [`Dataplane::apply`] makes the set of listeners
//! match the desired routes (binding new ones in the lab's namespace,
//! closing the ones no longer wanted, handing changed routes to the running
//! ones), and each listener forwards what it receives.
//!
//! TCP: each accepted connection goes to the next endpoint (round robin,
//! or the client's pinned one under session affinity); when that endpoint
//! refuses, the client's connection is reset, as kube-proxy's NAT path
//! leaves the client with the endpoint's refusal (no other endpoint is
//! tried). UDP: each client address is a session
//! with a socket of its own towards one endpoint; replies go back from the
//! Service's address; a session ends after [`UDP_IDLE`] without replies or
//! when its endpoint leaves the route.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::desired::{Backend, Forward, Health, Listen, Route, Source};
use crate::relay::relay;
use crate::{Netns, Protocol};

/// How long a UDP session lives without a reply (conntrack's UDP timeout).
pub const UDP_IDLE: Duration = Duration::from_secs(30);

/// The running listeners of one proxy.
pub struct Dataplane {
    netns: Arc<Netns>,
    running: HashMap<Listen, Running>,
}

struct Running {
    route: watch::Sender<Route>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the listener and waits until its socket is closed.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dataplane {
    pub fn new(netns: Arc<Netns>) -> Self {
        Self {
            netns,
            running: HashMap::new(),
        }
    }

    /// Makes the listeners match `desired`; returns what is served now
    /// (a listener that cannot bind is logged and tried again next time).
    pub async fn apply(&mut self, desired: BTreeMap<Listen, Route>) -> BTreeMap<Listen, Route> {
        let gone: Vec<Listen> = self
            .running
            .keys()
            .filter(|listen| !desired.contains_key(listen))
            .copied()
            .collect();
        for listen in gone {
            if let Some(running) = self.running.remove(&listen) {
                running.stop().await;
            }
        }
        let mut serving = BTreeMap::new();
        for (listen, route) in desired {
            let same_kind = self.running.get(&listen).is_some_and(|r| {
                std::mem::discriminant(&*r.route.borrow()) == std::mem::discriminant(&route)
            });
            if same_kind {
                if let Some(r) = self.running.get(&listen) {
                    r.route.send_if_modified(|current| {
                        let changed = *current != route;
                        if changed {
                            *current = route.clone();
                        }
                        changed
                    });
                }
                serving.insert(listen, route);
                continue;
            }
            if let Some(running) = self.running.remove(&listen) {
                running.stop().await;
            }
            match self.start(listen, route.clone()).await {
                Ok(running) => {
                    self.running.insert(listen, running);
                    serving.insert(listen, route);
                }
                Err(e) => tracing::warn!(error = %e, "service proxy listener"),
            }
        }
        serving
    }

    async fn start(&self, listen: Listen, route: Route) -> Result<Running, crate::Error> {
        let (tx, rx) = watch::channel(route);
        let netns = self.netns.clone();
        let task = match listen.protocol {
            Protocol::Tcp => {
                let listener = self.netns.bind_tcp(listen.addr).await?;
                tokio::spawn(serve_tcp(listener, rx, netns))
            }
            Protocol::Udp => {
                let socket = self.netns.bind_udp(listen.addr).await?;
                tokio::spawn(serve_udp(Arc::new(socket), rx, netns))
            }
        };
        Ok(Running { route: tx, task })
    }
}

/// Picks endpoints: round robin, or the one a client address is pinned to.
#[derive(Default)]
struct Balancer {
    next: AtomicUsize,
    pinned: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Balancer {
    /// The endpoint for a new connection of `client`: its pinned one under
    /// session affinity, else the next in turn.
    fn pick(&self, forward: &Forward, client: IpAddr) -> Option<Backend> {
        if let Some(timeout) = forward.affinity {
            let pinned = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((addr, at)) = pinned.get(&client)
                && at.elapsed() < timeout
                && let Some(b) = forward.backends.iter().find(|b| b.addr == *addr)
            {
                return Some(b.clone());
            }
        }
        let n = forward.backends.len();
        let next = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        forward.backends.get(next).cloned()
    }

    fn used(&self, forward: &Forward, client: IpAddr, backend: SocketAddr) {
        if forward.affinity.is_some() {
            self.pinned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(client, (backend, Instant::now()));
        }
    }
}

fn source_for(forward: &Forward, client: IpAddr, backend: &Backend) -> Option<IpAddr> {
    match forward.source {
        Source::Client => Some(client),
        Source::Node(ip) => Some(ip),
        Source::BackendNode => backend.node_ip,
    }
}

async fn serve_tcp(listener: TcpListener, route: watch::Receiver<Route>, netns: Arc<Netns>) {
    let balancer = Arc::new(Balancer::default());
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "proxy accept");
                continue;
            }
        };
        let current = route.borrow().clone();
        match current {
            Route::Forward(forward) => {
                tokio::spawn(forward_tcp(
                    stream,
                    client,
                    forward,
                    balancer.clone(),
                    netns.clone(),
                ));
            }
            Route::Health(health) => {
                tokio::spawn(answer_health(stream, health));
            }
        }
    }
}

async fn forward_tcp(
    inbound: TcpStream,
    client: SocketAddr,
    forward: Forward,
    balancer: Arc<Balancer>,
    netns: Arc<Netns>,
) {
    let Some(backend) = balancer.pick(&forward, client.ip()) else {
        return;
    };
    let source = source_for(&forward, client.ip(), &backend);
    match netns.connect_tcp(backend.addr, source).await {
        Ok(outbound) => {
            balancer.used(&forward, client.ip(), backend.addr);
            relay(inbound, outbound).await;
        }
        Err(e) => {
            tracing::debug!(service = %forward.service, endpoint = %backend.addr, error = %e, "endpoint refused");
            // Closed with a reset, as the refusal would reach the client.
            let _ = inbound.set_zero_linger();
        }
    }
}

/// kube-proxy's health check answer: 200 with local endpoints, else 503.
async fn answer_health(mut stream: TcpStream, health: Health) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let body = serde_json::json!({
        "service": {"namespace": health.namespace, "name": health.name},
        "localEndpoints": health.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if health.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

struct Session {
    backend: SocketAddr,
    upstream: Arc<UdpSocket>,
    replies: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, route: watch::Receiver<Route>, netns: Arc<Netns>) {
    let balancer = Balancer::default();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Route::Forward(forward) = route.borrow().clone() else {
            continue;
        };
        sessions.retain(|_, s| {
            !s.replies.is_finished() && forward.backends.iter().any(|b| b.addr == s.backend)
        });
        let session = match sessions.entry(client) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match open_session(&socket, &netns, &forward, &balancer, client).await {
                    Some(session) => e.insert(session),
                    None => continue,
                }
            }
        };
        let _ = session.upstream.send(&buf[..n]).await;
    }
}

async fn open_session(
    socket: &Arc<UdpSocket>,
    netns: &Netns,
    forward: &Forward,
    balancer: &Balancer,
    client: SocketAddr,
) -> Option<Session> {
    let backend = balancer.pick(forward, client.ip())?;
    let source = source_for(forward, client.ip(), &backend);
    let upstream = match netns.connect_udp(backend.addr, source).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::debug!(service = %forward.service, error = %e, "UDP endpoint");
            return None;
        }
    };
    balancer.used(forward, client.ip(), backend.addr);
    let (from, to, back) = (upstream.clone(), socket.clone(), client);
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, from.recv(&mut buf)).await {
            let _ = to.send_to(&buf[..n], back).await;
        }
    });
    Some(Session {
        backend: backend.addr,
        upstream,
        replies,
    })
}
