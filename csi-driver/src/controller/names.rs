//! CSI names to infra object names.
//!
//! A CSI `name` is an opaque string the CO chooses (up to 128 characters,
//! any case, any characters); infra objects need DNS-1123 names. What
//! Kubernetes sends (`pvc-<uuid>`, `snapshot-<uuid>`) is already a valid
//! name and is used as is, so volume id = DataVolume name = PV name, as
//! with the Go driver. Any other name maps, deterministically, to
//! `<prefix>-<digest>` (128 bits of its SHA-256), and the original name is
//! recorded on the object in [`CSI_NAME_ANNOTATION`]: a repeated call finds
//! the same object (idempotency survives restarts, nothing is kept in
//! memory), and a name that maps to an object recorded for another name is
//! told apart (`AlreadyExists`).
//!
//! Only the mapping lives here; tenant scoping is unchanged: a mapped
//! volume name starts with the volume prefix and carries the tenant labels
//! like any other.

use std::fmt::Write as _;

use kubevirt_infra::TenantScope;

use crate::error::{Error, Result};

/// Annotation on a DataVolume or VolumeSnapshot created for a CSI name that
/// is not its object name: the CSI name.
pub const CSI_NAME_ANNOTATION: &str = "csi.kubevirt.io/csi-name";

/// Prefix of a snapshot whose CSI name is not an object name (the
/// external-snapshotter's own prefix).
pub const SNAPSHOT_PREFIX: &str = "snapshot";

/// The longest CSI name accepted, in bytes: the CSI spec's size limit for
/// strings. (The name is recorded on the object, so it must stay small.)
pub const MAX_NAME_BYTES: usize = 128;

/// Refuse a name beyond [`MAX_NAME_BYTES`].
pub fn check_length(name: &str, field: &str) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; the CSI spec allows at most {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

/// Hex digits of the digest in a mapped name (128 bits).
const DIGEST_HEX: usize = 32;

/// A DNS-1123 label: lower-case alphanumerics and `-`, at most 63
/// characters, alphanumeric at both ends. Volume names become KubeVirt
/// volume and disk names, which must be labels.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `<prefix>-<digest of name>`.
fn mapped(prefix: &str, name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut out = String::with_capacity(prefix.len() + 1 + DIGEST_HEX);
    out.push_str(prefix);
    out.push('-');
    for b in &digest.as_ref()[..DIGEST_HEX / 2] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The DataVolume name for the CSI volume `name`: itself when it is a
/// label with the tenant's volume prefix, else `<volume prefix>-<digest>`.
pub fn volume_object_name(scope: &TenantScope, name: &str) -> String {
    let as_is = scope.check_volume_name(name).is_ok() && is_label(name);
    object_name(as_is, scope.volume_prefix(), name)
}

/// The VolumeSnapshot name for the CSI snapshot `name`: itself when it is
/// a label, else `snapshot-<digest>`.
pub fn snapshot_object_name(name: &str) -> String {
    object_name(is_label(name), SNAPSHOT_PREFIX, name)
}

fn object_name(as_is: bool, prefix: &str, name: &str) -> String {
    if as_is {
        name.to_string()
    } else {
        mapped(prefix, name)
    }
}

/// The annotation recording `csi_name` on the object `object_name`, when
/// the two differ.
pub fn record(object_name: &str, csi_name: &str) -> Option<(String, String)> {
    (object_name != csi_name).then(|| (CSI_NAME_ANNOTATION.to_string(), csi_name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope() -> TenantScope {
        TenantScope::new("ns", Default::default(), "pvc")
    }

    #[test]
    fn kubernetes_names_are_used_as_is() {
        let n = volume_object_name(&scope(), "pvc-0b9f5c3e-6c1d-4a8e-9d1f-2f3c4b5a6d7e");
        assert_eq!(n, "pvc-0b9f5c3e-6c1d-4a8e-9d1f-2f3c4b5a6d7e");
        assert_eq!(record(&n, &n), None);
        let s = "snapshot-0b9f5c3e-6c1d-4a8e-9d1f-2f3c4b5a6d7e";
        assert_eq!(snapshot_object_name(s), s);
    }

    #[test]
    fn other_names_map_to_the_prefix_and_a_digest() {
        for name in [
            "sanity-controller-create-twice-C3E4140A-28139DEB",
            "DeleteSnapshot-volume-1-ABC",
            "pvc-",
            "pvc",
            "pvcx-1",
            "pvc-UPPER",
            "pvc-a.b",
            &format!("pvc-{}", "a".repeat(60)),
            "",
            "名前",
        ] {
            let n = volume_object_name(&scope(), name);
            assert!(n.starts_with("pvc-"), "{n}");
            assert_eq!(n.len(), 4 + DIGEST_HEX);
            assert!(is_label(&n));
            assert_eq!(
                record(&n, name),
                Some((CSI_NAME_ANNOTATION.into(), name.into()))
            );
        }
        let s = snapshot_object_name("Snap_1");
        assert!(s.starts_with("snapshot-") && is_label(&s));
    }

    #[test]
    fn names_beyond_the_spec_limit_are_refused() {
        assert!(check_length(&"a".repeat(128), "name").is_ok());
        assert!(matches!(
            check_length(&"a".repeat(129), "name"),
            Err(Error::InvalidArgument(m)) if m.contains("129 bytes")
        ));
    }

    proptest! {
        #[test]
        fn mapping_is_deterministic_and_yields_labels(name in ".{0,128}") {
            let a = volume_object_name(&scope(), &name);
            prop_assert_eq!(&a, &volume_object_name(&scope(), &name));
            prop_assert!(is_label(&a));
            prop_assert!(a.starts_with("pvc-"));
            prop_assert!(is_label(&snapshot_object_name(&name)));
        }

        #[test]
        fn distinct_names_map_apart(a in "[A-Z]{1,20}", b in "[A-Z]{1,20}") {
            prop_assume!(a != b);
            prop_assert_ne!(volume_object_name(&scope(), &a), volume_object_name(&scope(), &b));
        }
    }
}
