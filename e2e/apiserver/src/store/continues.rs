//! Snapshots behind `continue` tokens: the rest of a paginated list, held so that every
//! page of one list shows the same resourceVersion. Bounded in count and age; a token
//! whose snapshot is gone answers `410 Expired`, as after an etcd compaction.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Obj;

const MAX_SNAPSHOTS: usize = 256;
const MAX_AGE: Duration = Duration::from_secs(300);

/// The remaining items of one list.
pub struct Snapshot {
    pub items: Vec<Obj>,
}

#[derive(Default)]
pub struct Cache {
    next_id: u64,
    entries: VecDeque<(u64, Instant, std::sync::Arc<Snapshot>)>,
}

impl Cache {
    /// Keeps a snapshot and returns its id.
    pub fn insert(&mut self, snapshot: Snapshot) -> u64 {
        self.expire();
        self.next_id += 1;
        let id = self.next_id;
        self.entries
            .push_back((id, Instant::now(), std::sync::Arc::new(snapshot)));
        while self.entries.len() > MAX_SNAPSHOTS {
            self.entries.pop_front();
        }
        id
    }

    pub fn get(&mut self, id: u64) -> Option<std::sync::Arc<Snapshot>> {
        self.expire();
        self.entries
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, s)| s.clone())
    }

    fn expire(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| at.elapsed() > MAX_AGE)
        {
            self.entries.pop_front();
        }
    }
}

/// The opaque token: the snapshot id, the list RV and the offset of the next page.
pub fn encode(id: u64, rv: u64, offset: usize) -> String {
    let raw = format!("{{\"v\":\"lab/1\",\"id\":{id},\"rv\":{rv},\"start\":{offset}}}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode(token: &str) -> Option<(u64, u64, usize)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let v: serde_json::Value = serde_json::from_slice(&bytes?).ok()?;
    Some((
        v.get("id")?.as_u64()?,
        v.get("rv")?.as_u64()?,
        usize::try_from(v.get("start")?.as_u64()?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let t = encode(3, 42, 500);
        assert_eq!(decode(&t), Some((3, 42, 500)));
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("abc"), None);
    }
}
