//! Watches that back off one by one.
//!
//! kube's `Controller` puts every watch that triggers it behind one shared
//! back-off: an error from any of them pauses all of them, the pause grows
//! with each error up to 30 s, and it resets only after two quiet minutes.
//! When the management API server restarts, every watch reports its lost
//! resource version in turn, and the controller stayed deaf for more than a
//! minute after the server was back (found by the lab's fault test of a
//! management control-plane outage). Here each watch gets client-go's
//! reflector policy of its own (0.8 s, doubling to 30 s) and the
//! controller's shared back-off pauses nothing.

use std::fmt::Debug;
use std::time::Duration;

use futures::Stream;
use kube::runtime::utils::Backoff;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// A controller of `K` whose own watch backs off by itself.
pub fn controller<K>(api: Api<K>, wc: watcher::Config) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let own = watcher(api, wc)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(own, reader).trigger_backoff(Unpaused)
}

/// A watch of `api` (objects applied or deleted) that backs off by itself,
/// for `Controller::watches_stream`.
pub fn watch<K>(
    api: Api<K>,
    wc: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, wc).default_backoff().touched_objects()
}

/// The controller's shared back-off: no pause; each watch paused itself.
#[derive(Clone, Copy, Debug, Default)]
struct Unpaused;

impl Iterator for Unpaused {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for Unpaused {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_back_off_never_pauses_nor_gives_up() {
        let mut b = Unpaused;
        for _ in 0..100 {
            assert_eq!(b.next(), Some(Duration::ZERO));
        }
        b.reset();
        assert_eq!(b.next(), Some(Duration::ZERO));
    }
}
