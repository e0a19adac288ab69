//! Kubernetes resource quantities as byte counts: parsing `10Gi`, `500M`,
//! `1.5Gi`, `1e9` into bytes (rounded up, like storage provisioners do) and
//! writing byte counts back in the shortest exact binary form.

use crate::Error;

const BINARY: &[(&str, u32)] = &[
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: &[(&str, u32)] = &[("k", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5), ("E", 6)];

/// Bytes of a quantity, rounded up to a whole byte.
pub fn parse_bytes(q: &str) -> Result<u64, Error> {
    let bad = || Error::Quantity(q.to_string());
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(bad());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let int_part = int_part.trim_start_matches('+');
    if !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    // value = mantissa / 10^scale, then times the suffix multiplier.
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let scale = frac_part.len() as u32;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            if exp >= 0 {
                (10u128.checked_pow(exp as u32).ok_or_else(bad)?, 1)
            } else {
                (1, 10u128.checked_pow((-exp) as u32).ok_or_else(bad)?)
            }
        }
        s => {
            if let Some((_, p)) = BINARY.iter().find(|(n, _)| *n == s) {
                (1024u128.pow(*p), 1)
            } else if let Some((_, p)) = DECIMAL.iter().find(|(n, _)| *n == s) {
                (1000u128.pow(*p), 1)
            } else {
                return Err(bad());
            }
        }
    };
    let den = div * 10u128.checked_pow(scale).ok_or_else(bad)?;
    let num = mantissa.checked_mul(mul).ok_or_else(bad)?;
    let bytes = num.div_ceil(den);
    u64::try_from(bytes).map_err(|_| bad())
}

/// The shortest exact form: `1Gi`, `1536Mi`, or plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (suffix, power) in BINARY.iter().rev() {
        let unit = 1024u64.pow(*power);
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse_bytes("1Gi").ok(), Some(1 << 30));
        assert_eq!(parse_bytes("10Mi").ok(), Some(10 << 20));
        assert_eq!(parse_bytes("1G").ok(), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi").ok(), Some(3 << 29));
        assert_eq!(parse_bytes("1073741824").ok(), Some(1 << 30));
        assert_eq!(parse_bytes("1e3").ok(), Some(1000));
        assert_eq!(parse_bytes("1500m").ok(), Some(2), "milli rounds up");
        assert_eq!(parse_bytes("0.1").ok(), Some(1));
        for bad in ["", "Gi", "1Qi", "-1Gi", "1.2.3", "abc"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_exact_binary_units() {
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(parse_bytes(&format_bytes(123 << 20)).ok(), Some(123 << 20));
    }
}
