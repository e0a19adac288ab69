//! Pagination of ListVolumes and ListSnapshots over name-ordered maps.
//!
//! The token handed out is the name of the last entry returned; the next
//! page starts after it. Entries created or deleted between calls therefore
//! never shift a page (the Go driver's index tokens skip or repeat entries),
//! and a token naming a since-deleted entry still works. A token that is not
//! an object name was not handed out by this driver: `Aborted`, as the spec
//! asks.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::capability::is_object_name;
use crate::error::{Error, Result};

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
    if !starting_token.is_empty() && !is_object_name(starting_token) {
        return Err(Error::InvalidToken(starting_token.to_string()));
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
        Bound::Excluded(starting_token)
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
        next_token: if more {
            last.unwrap_or_default().to_string()
        } else {
            String::new()
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
        m.remove(&p.next_token);
        let p2 = page(&m, 2, &p.next_token, |_, v| Some(*v)).expect("valid");
        assert_eq!(p2.entries, vec![2, 3]);
        let even = page(&m, 2, "", |_, v| (v % 2 == 0).then_some(*v)).expect("valid");
        assert_eq!(even.entries, vec![0, 2]);
    }

    #[test]
    fn bad_requests() {
        let m = map(2);
        assert!(matches!(
            page(&m, 1, "not a token!", |_, v| Some(*v)),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            page(&m, -1, "", |_, v| Some(*v)),
            Err(Error::InvalidArgument(_))
        ));
    }
}
