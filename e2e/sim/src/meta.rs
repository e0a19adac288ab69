//! Small object-metadata helpers shared by the simulators: controller owner
//! references, ownership checks, generated name suffixes and timestamps.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::{Resource, ResourceExt};

/// A controller owner reference to `owner` (with `blockOwnerDeletion`), as
/// controllers set on the objects they create.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let mut r = owner.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

/// The controller owner reference of `obj` if it points at a `kind`.
pub(crate) fn controller_of<'a, K: Resource>(obj: &'a K, kind: &str) -> Option<&'a OwnerReference> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == kind)
}

/// Whether `obj` is owned (as controller) by the object with `uid`.
pub(crate) fn is_controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Alphabet of Kubernetes' generated names (no vowels, no confusable digits).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters as `generateName` would append.
pub(crate) fn random_suffix(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
        }
    }
    out
}

/// The current time as a metav1 timestamp.
pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The current time in RFC 3339 with second precision, as Go's metav1.Time marshals.
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// Whether the object is being deleted.
pub(crate) fn is_deleting<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// `namespace/name` for log lines and messages.
pub(crate) fn key<K: Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_use_the_generate_name_alphabet() {
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(random_suffix(12), random_suffix(12));
        assert!(now_rfc3339().ends_with('Z'));
    }
}
