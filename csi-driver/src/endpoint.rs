//! Listen addresses: the CSI `--endpoint` (a unix socket or a TCP address,
//! in the `unix:/path`, `unix:///path` and `tcp://host:port` forms the Go
//! driver accepts) and the optional HTTP addresses for health and metrics
//! (`:10300`, `0.0.0.0:9090`, `[::1]:9090`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("unix:") {
            let rest = &s["unix:".len()..];
            // `unix:///abs` and `unix:/abs` both name `/abs`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!("endpoint {s:?} names no socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if lower.starts_with("tcp://") {
            let addr = &s["tcp://".len()..];
            let addr = addr.trim_end_matches('/');
            match addr.rsplit_once(':') {
                Some((_, port)) if !port.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Endpoint::Tcp(addr.to_string()))
                }
                _ => Err(format!("endpoint {s:?} is not of the form tcp://host:port")),
            }
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(format!(
                "endpoint {s:?} must start with unix:/ (a socket path) or tcp:// (host:port)"
            ))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Parse an HTTP listen address; `:port` means every interface. Empty = off.
pub fn parse_http_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("address {s:?} is not of the form [host]:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_endpoint_forms() {
        let unix = |p: &str| Endpoint::Unix(PathBuf::from(p));
        assert_eq!("unix:/csi/csi.sock".parse(), Ok(unix("/csi/csi.sock")));
        assert_eq!(
            "unix:///var/lib/csi/sockets/pluginproxy/csi.sock".parse(),
            Ok(unix("/var/lib/csi/sockets/pluginproxy/csi.sock"))
        );
        assert_eq!("/tmp/x.sock".parse(), Ok(unix("/tmp/x.sock")));
        assert_eq!(
            "tcp://127.0.0.1:10000".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:10000".into()))
        );
        assert!("tcp://127.0.0.1".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
        assert!("http://x:1".parse::<Endpoint>().is_err());
        assert_eq!(unix("/a").to_string(), "unix:///a");
    }

    #[test]
    fn parses_http_addresses() {
        assert_eq!(parse_http_address(""), Ok(None));
        assert_eq!(
            parse_http_address(":10300"),
            Ok(Some("0.0.0.0:10300".parse().expect("addr")))
        );
        assert!(parse_http_address("127.0.0.1:0").is_ok_and(|a| a.is_some()));
        assert!(parse_http_address("10300").is_err());
    }
}
