//! Stable, dependency-free hashing for names and change detection: 64-bit
//! FNV-1a over bytes, rendered in hex or in the consonant-and-digit alphabet
//! Kubernetes uses for generated name suffixes. The values end up in object
//! names and labels, so they must never change between releases.

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a of several parts, each length-prefixed so that `("ab","c")` and
/// `("a","bc")` differ.
pub fn fnv1a_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
        buf.extend_from_slice(p);
    }
    fnv1a(&buf)
}

/// The hash in 16 lowercase hex digits.
pub fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// The alphabet of Kubernetes' generated name suffixes (no vowels, no
/// look-alike characters), so generated names never spell words.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `len` characters of [`ALPHANUMS`] drawn from the hash.
pub fn safe_suffix(mut h: u64, len: usize) -> String {
    let base = ALPHANUMS.len() as u64;
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        out.push(char::from(ALPHANUMS[(h % base) as usize]));
        h /= base;
    }
    out
}

/// Whether `s` could be a [`safe_suffix`].
pub fn is_safe_suffix(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHANUMS.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hex(fnv1a(b"a")), "af63dc4c8601ec8c");
        assert_ne!(
            fnv1a_parts([b"ab".as_slice(), b"c"]),
            fnv1a_parts([b"a".as_slice(), b"bc"])
        );
        let s = safe_suffix(fnv1a(b"pool"), 5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHANUMS.contains(&b)));
        assert_eq!(s, safe_suffix(fnv1a(b"pool"), 5));
        assert!(is_safe_suffix(&s, 5));
        assert!(!is_safe_suffix("plane", 5));
    }
}
