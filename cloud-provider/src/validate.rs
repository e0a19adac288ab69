//! Syntax checks for the Kubernetes names and labels that reach us through
//! configuration, so a typo fails at start-up with its location instead of
//! as a rejected write much later.

/// A DNS-1123 label: lower-case alphanumerics and `-`, at most 63 characters.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
        ))
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|part| dns_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid DNS-1123 subdomain"))
    }
}

/// Alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn name_part(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            s.len() <= max
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A label (or annotation) key: `[prefix/]name`.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|e| format!("key {key:?}: prefix {e}"))?;
    }
    if name_part(name, 63) {
        Ok(())
    } else {
        Err(format!(
            "key {key:?}: name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ))
    }
}

/// A label key and value.
pub fn label(key: &str, value: &str) -> Result<(), String> {
    qualified_name(key)?;
    if value.is_empty() || name_part(value, 63) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_names_and_labels() {
        assert!(dns_label("kube-system").is_ok());
        assert!(dns_label("Kube").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("a.b-c.d").is_ok());
        assert!(dns_subdomain("a..b").is_err());
        assert!(label("cluster.x-k8s.io/cluster-name", "my_cluster.1").is_ok());
        assert!(label("plain", "").is_ok());
        assert!(label("a/b/c", "x").is_err());
        assert!(label("Upper.Case/x", "x").is_err());
        assert!(label("x", "-bad").is_err());
        assert!(label("", "x").is_err());
        assert!(label("x", &"v".repeat(64)).is_err());
    }
}
