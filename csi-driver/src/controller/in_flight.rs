//! One call at a time per volume or snapshot: a second concurrent call on
//! the same id is refused with `Aborted` (the spec's "operation pending"),
//! and the caller retries with backoff.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The ids with a call in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    keys: Mutex<HashSet<String>>,
}

/// Held while a call runs; releases the id when dropped.
#[derive(Debug)]
pub struct Guard<'a> {
    owner: &'a InFlight,
    key: String,
}

impl InFlight {
    /// Claim `key`, or `Aborted` if another call holds it.
    pub fn begin(&self, key: &str) -> Result<Guard<'_>> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.insert(key.to_string()) {
            return Err(Error::Busy(key.to_string()));
        }
        Ok(Guard {
            owner: self,
            key: key.to_string(),
        })
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let mut keys = self.owner.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_call_is_aborted_until_the_first_ends() {
        let f = InFlight::default();
        let g = f.begin("pvc-1").expect("free");
        assert!(matches!(f.begin("pvc-1"), Err(Error::Busy(_))));
        assert!(f.begin("pvc-2").is_ok());
        drop(g);
        assert!(f.begin("pvc-1").is_ok());
    }
}
