//! How long a call may wait: the caller's gRPC deadline (`grpc-timeout`
//! header, as the sidecars' `--timeout` sets it), less a margin so that the
//! driver answers `DeadlineExceeded` itself before the caller gives up;
//! two minutes when the caller sets none.

use std::time::Duration;

use tokio::time::Instant;

/// Wait budget when the caller gives no deadline.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(120);

/// Parse a `grpc-timeout` value (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The budget for a call with these metadata.
pub fn budget(metadata: &tonic::metadata::MetadataMap) -> Duration {
    let Some(timeout) = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    else {
        return DEFAULT_BUDGET;
    };
    let margin = (timeout / 10).min(Duration::from_secs(2));
    timeout.saturating_sub(margin)
}

/// The instant a call must answer by.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Instant {
    Instant::now() + budget(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts_and_keeps_a_margin() {
        assert_eq!(parse_grpc_timeout("180S"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(budget(&md), DEFAULT_BUDGET);
        md.insert("grpc-timeout", "180S".parse().expect("ascii"));
        assert_eq!(budget(&md), Duration::from_secs(178));
        md.insert("grpc-timeout", "1000m".parse().expect("ascii"));
        assert_eq!(budget(&md), Duration::from_millis(900));
    }
}
