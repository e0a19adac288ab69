//! The echo workload (`kubevirt-lab/echo`): what the kubelet stand-ins run
//! for a container of that image. It listens on the pod's IP on every
//! declared containerPort and tells each client who answered and whom it
//! saw: `{"pod", "namespace", "node", "client", "server"}`, as one JSON
//! line. Over TCP it speaks HTTP/1.1 to a client that sends a request
//! (answering `200` with that body, then closing) and answers every line of
//! any other client; over UDP it answers every datagram.
//!
//! `GET /resolve/<name>` looks `<name>` up as a process in the pod does,
//! through the cluster DNS with the pod's search path ([`crate::dns::resolve`]),
//! and answers `{"name", "addresses"}` (404 when nothing answers to it).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::{Error, Netns, Protocol};

/// The image repository the kubelet stand-ins run as the echo workload.
pub const IMAGE: &str = "kubevirt-lab/echo";
/// Longest request head read from a client.
const MAX_REQUEST: usize = 16 * 1024;

/// Whether `image` (any tag or digest) is the echo workload.
pub fn is_echo_image(image: &str) -> bool {
    let repository = image.split('@').next().unwrap_or(image);
    let repository = match repository.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => repository,
    };
    repository == IMAGE
}

/// Who answers: the pod and its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    pub node: String,
}

/// One answer: who answered, the client address it saw, the address it was
/// reached at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(flatten)]
    pub identity: Identity,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Answer {
    fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// How the workload resolves names: its cluster's DNS (kubelet's
/// `--cluster-dns`); the search path follows from the pod's namespace.
#[derive(Clone, Copy, Debug)]
pub struct Dns {
    pub server: IpAddr,
}

/// What every connection of one workload needs.
struct Workload {
    identity: Identity,
    netns: Arc<Netns>,
    dns: Option<Dns>,
}

/// A running echo workload; dropping it stops it.
#[derive(Debug)]
pub struct Echo {
    _tasks: JoinSet<()>,
}

/// Starts the echo workload of `identity` on `ip`, one server per port.
pub async fn start(
    netns: &Arc<Netns>,
    ip: IpAddr,
    ports: &[(Protocol, u16)],
    identity: Identity,
    dns: Option<Dns>,
) -> Result<Echo, Error> {
    let workload = Arc::new(Workload {
        identity,
        netns: netns.clone(),
        dns,
    });
    let mut tasks = JoinSet::new();
    for &(protocol, port) in ports {
        let addr = SocketAddr::new(ip, port);
        match protocol {
            Protocol::Tcp => {
                let listener = netns.bind_tcp(addr).await?;
                tasks.spawn(serve_tcp(listener, workload.clone()));
            }
            Protocol::Udp => {
                let socket = netns.bind_udp(addr).await?;
                tasks.spawn(serve_udp(socket, workload.clone()));
            }
        }
    }
    Ok(Echo { _tasks: tasks })
}

async fn serve_tcp(listener: TcpListener, workload: Arc<Workload>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    connections.spawn(answer_tcp(stream, client, workload.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "echo accept"),
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn answer_tcp(mut stream: TcpStream, client: SocketAddr, workload: Arc<Workload>) {
    let Ok(server) = stream.local_addr() else {
        return;
    };
    let answer = Answer {
        identity: workload.identity.clone(),
        client,
        server,
    }
    .line();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if is_http(&buf) {
            if find(&buf, b"\r\n\r\n").is_some() {
                let path = String::from_utf8_lossy(&buf)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let (status, body) = match path.strip_prefix("/resolve/") {
                    Some(name) => resolve(&workload, name).await,
                    None => ("200 OK", answer),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
                return;
            }
        } else {
            while let Some(end) = find(&buf, b"\n") {
                buf.drain(..=end);
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        if buf.len() > MAX_REQUEST {
            return;
        }
    }
}

async fn serve_udp(socket: UdpSocket, workload: Arc<Workload>) {
    let Ok(server) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok((_, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let answer = Answer {
            identity: workload.identity.clone(),
            client,
            server,
        }
        .line();
        let _ = socket.send_to(answer.as_bytes(), client).await;
    }
}

/// `GET /resolve/<name>`: the status line and the JSON body.
async fn resolve(workload: &Workload, name: &str) -> (&'static str, String) {
    let Some(dns) = workload.dns else {
        return (
            "503 Service Unavailable",
            "{\"error\":\"no cluster DNS\"}\n".to_string(),
        );
    };
    let namespace = &workload.identity.namespace;
    match crate::dns::resolve(&workload.netns, dns.server, namespace, name).await {
        Ok(addresses) => {
            let status = if addresses.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let body = serde_json::json!({"name": name, "addresses": addresses});
            (status, format!("{body}\n"))
        }
        Err(e) => (
            "502 Bad Gateway",
            format!("{}\n", serde_json::json!({"error": e.to_string()})),
        ),
    }
}

/// Whether a request starts like HTTP's request line.
fn is_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
    ];
    METHODS.iter().any(|m| buf.starts_with(m))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_images_by_repository() {
        assert!(is_echo_image("kubevirt-lab/echo"));
        assert!(is_echo_image("kubevirt-lab/echo:v1"));
        assert!(is_echo_image("kubevirt-lab/echo@sha256:abc"));
        assert!(!is_echo_image("kubevirt-lab/echoes:v1"));
        assert!(!is_echo_image("registry:5000/kubevirt-lab/echo"));
        assert!(!is_echo_image("nginx"));
    }

    #[test]
    fn http_requests_are_told_apart_from_lines() {
        assert!(is_http(b"GET / HTTP/1.1\r\n"));
        assert!(!is_http(b"hello\n"));
    }
}
