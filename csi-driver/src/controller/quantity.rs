//! Kubernetes resource quantities (`1Gi`, `500M`, `1073741824`, `1.5Gi`,
//! `1e9`) as byte counts, rounded up to whole bytes.

/// Parse a quantity into bytes. `None` for malformed or out-of-range input.
pub fn parse_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let (num, mult): (&str, f64) = if let Some(i) = q.find(['e', 'E']) {
        let exp: i32 = q[i + 1..].parse().ok()?;
        (&q[..i], 10f64.powi(exp))
    } else {
        let split = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(q.len());
        let mult = match &q[split..] {
            "" => 1.0,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            _ => return None,
        };
        (&q[..split], mult)
    };
    // Integers with binary/decimal suffixes are exact in i128; fractions go through f64.
    if let Ok(n) = num.parse::<i128>()
        && mult >= 1.0
        && mult.fract() == 0.0
    {
        let v = n.checked_mul(mult as i128)?;
        return i64::try_from(v).ok();
    }
    let n: f64 = num.parse().ok()?;
    let v = (n * mult).ceil();
    (v.is_finite() && v >= i64::MIN as f64 && v <= i64::MAX as f64).then_some(v as i64)
}

/// Render bytes as a quantity: the plain integer, as the Go driver writes it.
pub fn format_bytes(bytes: i64) -> String {
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_bytes("1073741824"), Some(1 << 30));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("1500m"), Some(2));
        assert_eq!(parse_bytes("8Ei"), None);
        assert_eq!(parse_bytes("1Xi"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(format_bytes(5 << 30), "5368709120");
    }
}
