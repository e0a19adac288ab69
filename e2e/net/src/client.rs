//! Requests from inside the lab's namespace, as a pod or an outside client
//! would make them: an HTTP GET ([`http_get`]) and a UDP exchange
//! ([`udp_ask`]) answered by the echo workload, and whether an address can
//! be reached at all ([`refused`], [`unreachable`]).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::echo::Answer;
use crate::{Error, Netns};

/// An HTTP response: its status and body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The echo workload's answer in the body.
    pub fn answer(&self) -> Result<Answer, Error> {
        serde_json::from_str(self.body.trim())
            .map_err(|e| Error::Invalid(format!("not an echo answer ({e}): {}", self.body)))
    }
}

/// `GET path` to `to` over HTTP/1.1 from `from` (any lab address) or the
/// namespace's choice.
pub async fn http_get(
    netns: &Netns,
    to: SocketAddr,
    path: &str,
    from: Option<IpAddr>,
) -> Result<Response, Error> {
    let mut stream = netns.connect_tcp(to, from).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    let io = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = io.await.map_err(Error::socket("GET from", to))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("not an HTTP response from {to}: {head}")))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Sends one datagram to `to` and returns the echo workload's answer, or an
/// error when none comes within `wait`.
pub async fn udp_ask(netns: &Netns, to: SocketAddr, wait: Duration) -> Result<Answer, Error> {
    let socket = netns.connect_udp(to, None).await?;
    socket
        .send(b"hello\n")
        .await
        .map_err(Error::socket("send to", to))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .map_err(|_| Error::Invalid(format!("no UDP answer from {to} within {wait:?}")))?
        .map_err(Error::socket("receive from", to))?;
    serde_json::from_slice(&buf[..n])
        .map_err(|e| Error::Invalid(format!("not an echo answer from {to}: {e}")))
}

/// Whether a TCP connection to `to` is refused (nothing listens there).
pub async fn refused(netns: &Netns, to: SocketAddr) -> bool {
    matches!(
        netns.connect_tcp(to, None).await,
        Err(Error::Socket { ref source, .. }) if source.kind() == ErrorKind::ConnectionRefused
    )
}

/// Whether `to` has no route from the namespace (the kernel says so before
/// any packet is sent).
pub async fn unreachable(netns: &Netns, to: SocketAddr) -> bool {
    matches!(
        netns.connect_tcp(to, None).await,
        Err(Error::Socket { ref source, .. })
            if matches!(source.kind(), ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable)
    )
}
