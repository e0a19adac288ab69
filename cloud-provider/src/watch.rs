//! Watch-fed caches shared by the controllers.
//!
//! One [`Watched`] per resource keeps a reflector store (objects trimmed by a
//! `strip` function to what we read, to keep memory small) and tells every
//! subscriber about each object that changed, was deleted, or vanished while
//! the watch was re-listing. Subscribers map the object to the keys of the
//! controllers that care and push them onto [`Trigger`]s; one watch per
//! resource serves every controller.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

type Subscriber<K> = Box<dyn Fn(&K) + Send + Sync>;
type Strip<K> = Box<dyn Fn(&mut K) + Send + Sync>;

/// Sends reconcile requests to one controller.
pub type Trigger<K> = mpsc::UnboundedSender<ObjectRef<K>>;

/// The receiving end of a controller's [`Trigger`]s.
pub type Requests<K> = mpsc::UnboundedReceiver<ObjectRef<K>>;

/// Make a trigger and its request queue.
pub fn trigger<K: Resource>() -> (Trigger<K>, Requests<K>) {
    mpsc::unbounded_channel()
}

/// A watched resource: its store and the subscribers to notify.
pub struct Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    strip: Strip<K>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Vec<Subscriber<K>>,
    ready: watch::Sender<bool>,
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// `name` labels logs and metrics; `strip` trims objects before caching.
    pub fn new(
        name: &'static str,
        api: Api<K>,
        config: watcher::Config,
        strip: impl Fn(&mut K) + Send + Sync + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        Self {
            name,
            api,
            config,
            strip: Box::new(strip),
            store,
            writer,
            subscribers: Vec::new(),
            ready: watch::Sender::new(false),
        }
    }

    /// Resolves once the cache holds the first full list.
    pub fn ready(&self) -> Ready {
        Ready(self.ready.subscribe())
    }

    /// A reader of the cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Call `f` with every object that changes.
    pub fn subscribe(&mut self, f: impl Fn(&K) + Send + Sync + 'static) {
        self.subscribers.push(Box::new(f));
    }

    /// Run the watch until `token` is cancelled.
    pub fn spawn(self, token: CancellationToken, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(token, metrics))
    }

    async fn run(self, token: CancellationToken, metrics: Metrics) {
        let Self {
            name,
            api,
            config,
            strip,
            store,
            writer,
            subscribers,
            ready,
        } = self;
        let notify = |obj: &K| subscribers.iter().for_each(|s| s(obj));
        let events = watcher(api, config)
            .default_backoff()
            .modify(move |obj| strip(obj))
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        // What the store held when a re-list started, to find the objects
        // that disappeared while we were not watching.
        let mut before: Vec<Arc<K>> = Vec::new();
        loop {
            let event = tokio::select! {
                () = token.cancelled() => break,
                event = events.next() => event,
            };
            match event {
                None => break,
                Some(Err(e)) => {
                    metrics.watch_failed(name);
                    tracing::warn!(resource = name, error = %e, "watch failed, retrying");
                }
                Some(Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj))) => notify(&obj),
                Some(Ok(watcher::Event::Init)) => before = store.state(),
                Some(Ok(watcher::Event::InitApply(_))) => {}
                Some(Ok(watcher::Event::InitDone)) => {
                    tracing::debug!(resource = name, objects = store.len(), "cache synced");
                    ready.send_replace(true);
                    for obj in store.state() {
                        notify(&obj);
                    }
                    for gone in before.drain(..) {
                        if store.get(&ObjectRef::from_obj(&*gone)).is_none() {
                            notify(&gone);
                        }
                    }
                }
            }
        }
    }
}

/// Drop the server-side bookkeeping no controller reads.
pub fn strip_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Resolves once a watch has delivered its first full list. Unlike
/// `Store::wait_until_ready`, any number of tasks may wait on clones of it.
#[derive(Clone)]
pub struct Ready(watch::Receiver<bool>);

impl Ready {
    /// `false` if the watch stopped before it was ever ready.
    pub async fn wait(mut self) -> bool {
        self.0.wait_for(|ready| *ready).await.is_ok()
    }
}

/// Wait until every watch has its first full list.
pub async fn wait_ready(all: Vec<Ready>) -> bool {
    for r in all {
        if !r.wait().await {
            return false;
        }
    }
    true
}
