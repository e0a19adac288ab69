//! Pagination of ListVolumes and ListSnapshots over name-ordered maps.
//!
//! The token handed out names the last entry returned, with a check digest
//! (`<name>/<8 hex digits>`); the next page starts after that name. Entries
//! created or deleted between calls therefore never shift a page (the Go
//! driver's index tokens skip or repeat entries), and a token naming a
//! since-deleted entry still works. A token whose digest does not match was
//! not handed out by this driver: `Aborted`, as the spec asks.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::{Error, Result};

/// The token for a page that ends at `name`.
fn token(name: &str) -> String {
    format!("{name}/{}", check(name))
}

/// The check digest of a token: 32 bits of the name's SHA-256, in hex.
fn check(name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a token handed out by [`page`] resumes after.
fn resume_after(token: &str) -> Result<&str> {
    match token.rsplit_once('/') {
        Some((name, digest)) if !name.is_empty() && digest == check(name) => Ok(name),
        _ => Err(Error::InvalidToken(token.to_string())),
    }
}

/// One page of results.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub entries: Vec<T>,
    /// Empty when this is the last page.
    pub next_token: String,
}

/// Check `max_entries` and `starting_token` before any work.
pub fn check_request(max_entries: i32, starting_token: &str) -> Result<()> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    if !starting_token.is_empty() {
        resume_after(starting_token)?;
    }
    Ok(())
}

/// The page of `map` after `starting_token`, keeping the entries `select`
/// maps to `Some`, at most `max_entries` of them (0 = all).
pub fn page<V, T>(
    map: &BTreeMap<String, V>,
    max_entries: i32,
    starting_token: &str,
    mut select: impl FnMut(&str, &V) -> Option<T>,
) -> Result<Page<T>> {
    check_request(max_entries, starting_token)?;
    let start = if starting_token.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(resume_after(starting_token)?)
    };
    let limit = usize::try_from(max_entries).unwrap_or(0);
    let mut entries = Vec::new();
    let mut last: Option<&str> = None;
    let mut more = false;
    for (name, value) in map.range::<str, _>((start, Bound::Unbounded)) {
        let Some(item) = select(name, value) else {
            continue;
        };
        if limit > 0 && entries.len() == limit {
            more = true;
            break;
        }
        entries.push(item);
        last = Some(name);
    }
    Ok(Page {
        entries,
        next_token: match (more, last) {
            (true, Some(name)) => token(name),
            _ => String::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: usize) -> BTreeMap<String, usize> {
        (0..n).map(|i| (format!("pvc-{i:02}"), i)).collect()
    }

    fn all_pages(m: &BTreeMap<String, usize>, max: i32) -> Vec<Vec<usize>> {
        let mut token = String::new();
        let mut pages = Vec::new();
        loop {
            let p = page(m, max, &token, |_, v| Some(*v)).expect("valid");
            pages.push(p.entries);
            if p.next_token.is_empty() {
                return pages;
            }
            token = p.next_token;
        }
    }

    #[test]
    fn pages_cover_every_entry_exactly_once() {
        let m = map(7);
        assert_eq!(
            all_pages(&m, 3),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
        assert_eq!(all_pages(&m, 7), vec![(0..7).collect::<Vec<_>>()]);
        assert_eq!(all_pages(&m, 0), vec![(0..7).collect::<Vec<_>>()]);
        assert_eq!(all_pages(&map(0), 2), vec![Vec::<usize>::new()]);
        // exactly full pages: no empty trailing page
        assert_eq!(all_pages(&map(4), 2), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn deleted_token_entry_still_works_and_filters_apply_before_counting() {
        let mut m = map(6);
        let p = page(&m, 2, "", |_, v| Some(*v)).expect("valid");
        m.remove("pvc-01");
        let p2 = page(&m, 2, &p.next_token, |_, v| Some(*v)).expect("valid");
        assert_eq!(p2.entries, vec![2, 3]);
        let even = page(&m, 2, "", |_, v| (v % 2 == 0).then_some(*v)).expect("valid");
        assert_eq!(even.entries, vec![0, 2]);
    }

    #[test]
    fn bad_requests() {
        let m = map(2);
        for bad in [
            "not a token!",
            "invalid-token",
            "pvc-00",
            "pvc-00/00000000",
            "/",
        ] {
            assert!(
                matches!(
                    page(&m, 1, bad, |_, v| Some(*v)),
                    Err(Error::InvalidToken(_))
                ),
                "{bad}"
            );
        }
        assert!(check_request(1, &token("pvc-00")).is_ok());
        assert!(matches!(
            page(&m, -1, "", |_, v| Some(*v)),
            Err(Error::InvalidArgument(_))
        ));
    }
}
