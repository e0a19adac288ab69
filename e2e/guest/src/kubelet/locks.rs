//! [`Locks`]: one async mutex per key (a pod uid, a PV name), so that work on
//! one volume or pod is serialized while work on others runs in parallel.
//! Unused entries are dropped when their last guard goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// Keyed async locks.
#[derive(Clone, Debug, Default)]
pub struct Locks {
    inner: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds the lock of one key.
pub struct Guard {
    _guard: OwnedMutexGuard<()>,
    key: String,
    locks: Locks,
}

impl Locks {
    /// Waits for and takes the lock of `key`.
    pub async fn lock(&self, key: impl Into<String>) -> Guard {
        let key = key.into();
        let mutex = {
            let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            map.entry(key.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        Guard {
            _guard: guard,
            key,
            locks: self.clone(),
        }
    }

    /// Keys locked or waited for.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut map = self
            .locks
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two references: the map's and the guard's own mutex; nobody waits.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key() {
        let locks = Locks::default();
        let a = locks.lock("a").await;
        let _b = locks.lock("b").await;
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _a = locks.lock("a").await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a is held");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter gets the lock")
            .expect("no panic");
        assert_eq!(locks.len(), 1, "only b is still held");
    }
}
