//! Request counters by (verb, resource, user), where resource includes a subresource
//! (`pods/status`). [`RequestCounters`] is a snapshot; it also travels as JSON over
//! `GET /lab/counters`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterEntry {
    pub verb: String,
    pub resource: String,
    pub user: String,
    pub count: u64,
}

/// A snapshot of all counters: (verb, resource, user) -> count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<CounterEntry>", into = "Vec<CounterEntry>")]
pub struct RequestCounters {
    pub counts: BTreeMap<(String, String, String), u64>,
}

impl RequestCounters {
    /// Requests of `verb` on `resource` by anyone.
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, r, _), _)| v == verb && r == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` on `resource` by `user`.
    pub fn count_by(&self, verb: &str, resource: &str, user: &str) -> u64 {
        self.counts
            .get(&(verb.to_string(), resource.to_string(), user.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Writes (create, update, patch, delete, deletecollection) by `user`,
    /// on any resource and subresource.
    pub fn writes_by(&self, user: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((verb, _, u), _)| {
                u == user
                    && matches!(
                        verb.as_str(),
                        "create" | "update" | "patch" | "delete" | "deletecollection"
                    )
            })
            .map(|(_, n)| n)
            .sum()
    }
}

impl From<Vec<CounterEntry>> for RequestCounters {
    fn from(entries: Vec<CounterEntry>) -> Self {
        Self {
            counts: entries
                .into_iter()
                .map(|e| ((e.verb, e.resource, e.user), e.count))
                .collect(),
        }
    }
}

impl From<RequestCounters> for Vec<CounterEntry> {
    fn from(c: RequestCounters) -> Self {
        c.counts
            .into_iter()
            .map(|((verb, resource, user), count)| CounterEntry {
                verb,
                resource,
                user,
                count,
            })
            .collect()
    }
}

/// The live counters.
#[derive(Default)]
pub struct Counters {
    counts: Mutex<BTreeMap<(String, String, String), u64>>,
}

impl Counters {
    pub fn record(&self, verb: &str, resource: &str, user: &str) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((verb.to_string(), resource.to_string(), user.to_string()))
                .or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> RequestCounters {
        RequestCounters {
            counts: self.counts.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }

    pub fn reset(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_and_round_trip_as_json() {
        let c = Counters::default();
        c.record("get", "pods", "alice");
        c.record("get", "pods", "bob");
        c.record("get", "pods", "bob");
        c.record("update", "pods/status", "bob");
        let snap = c.snapshot();
        assert_eq!(snap.count("get", "pods"), 3);
        assert_eq!(snap.count_by("get", "pods", "bob"), 2);
        assert_eq!(snap.total(), 4);
        let json = serde_json::to_string(&snap).expect("json");
        let back: RequestCounters = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, snap);
    }
}
