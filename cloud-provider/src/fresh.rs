//! Objects we just wrote, remembered until the watch cache catches up.
//!
//! A reconcile may run again before the watch has delivered the object its
//! previous run wrote; reading the cache then would repeat a create or a
//! finalizer patch. [`Fresh::pick`] returns whichever is newer, our write or
//! the cache, and forgets our copy once the cache has it. Resource versions
//! are compared as numbers when both parse (as every etcd-backed server's
//! do); otherwise the cache wins. Entries expire after [`TTL`] so an object
//! deleted behind our back is not remembered forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

/// How long a written object may shadow the cache.
pub const TTL: Duration = Duration::from_secs(30);
/// Expired entries are purged when a write finds at least this many.
const PURGE_ABOVE: usize = 256;

type Entries<K> = HashMap<ObjectRef<K>, (Arc<K>, Instant)>;

/// Recently written objects of one kind.
pub struct Fresh<K: Resource<DynamicType = ()>> {
    written: Mutex<Entries<K>>,
}

impl<K: Resource<DynamicType = ()>> Default for Fresh<K> {
    fn default() -> Self {
        Self {
            written: Mutex::new(HashMap::new()),
        }
    }
}

fn version<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

impl<K: Resource<DynamicType = ()>> Fresh<K> {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries<K>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remember an object the API server returned from a write. Expired
    /// entries are dropped on the way, so objects never read again do not
    /// accumulate.
    pub fn record(&self, mut obj: K) -> Arc<K> {
        crate::watch::strip_meta(obj.meta_mut());
        let obj = Arc::new(obj);
        let mut entries = self.entries();
        if entries.len() >= PURGE_ABOVE {
            entries.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        entries.insert(ObjectRef::from_obj(&*obj), (obj.clone(), Instant::now()));
        obj
    }

    /// How many objects are remembered.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget an object (deleted by us).
    pub fn forget(&self, key: &ObjectRef<K>) {
        self.entries().remove(key);
    }

    /// The newer of the cached object and the one we wrote.
    pub fn pick(&self, key: &ObjectRef<K>, cached: Option<Arc<K>>) -> Option<Arc<K>> {
        let mut entries = self.entries();
        let Some((written, at)) = entries.get(key).cloned() else {
            return cached;
        };
        let ours_is_newer = match &cached {
            None => at.elapsed() < TTL,
            Some(c) => match (version(&**c), version(&*written)) {
                (Some(cv), Some(wv)) => wv > cv && at.elapsed() < TTL,
                _ => false,
            },
        };
        if ours_is_newer {
            Some(written)
        } else {
            entries.remove(key);
            cached
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(rv: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some("a".into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn newer_of_cache_and_write_wins() {
        let fresh = Fresh::<Service>::default();
        let key = ObjectRef::from_obj(&svc("1"));
        assert_eq!(fresh.pick(&key, None), None);
        fresh.record(svc("5"));
        // Not cached yet: our write.
        let got = fresh.pick(&key, None).expect("ours");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("5"));
        // Cache is older: still ours.
        let got = fresh.pick(&key, Some(Arc::new(svc("4")))).expect("ours");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("5"));
        // Cache caught up: the cache, and our copy is dropped.
        let got = fresh.pick(&key, Some(Arc::new(svc("6")))).expect("cache");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("6"));
        assert_eq!(fresh.pick(&key, None), None);
    }

    #[test]
    fn opaque_versions_defer_to_the_cache() {
        let fresh = Fresh::<Service>::default();
        let key = ObjectRef::from_obj(&svc("x"));
        fresh.record(svc("abc"));
        let got = fresh.pick(&key, Some(Arc::new(svc("xyz")))).expect("cache");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("xyz"));
        fresh.record(svc("abc"));
        fresh.forget(&key);
        assert_eq!(fresh.pick(&key, None), None);
    }
}
