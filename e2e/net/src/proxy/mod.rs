//! The service proxy of one cluster (kube-proxy's role in the lab): it
//! watches the cluster's Services, EndpointSlices and Nodes, computes what
//! to serve ([`desired`]) whenever one of them changes, and makes the
//! listeners in the lab's network namespace match ([`dataplane`]).
//!
//! [`ServiceProxy::serving`] tells what is served at any moment, so tests
//! and benchmarks wait for a route by watching it, never by polling.

pub mod dataplane;
pub mod desired;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use desired::{Backend, Forward, Listen, Options, Route};

use crate::Netns;
use dataplane::Dataplane;

/// What a proxy serves: each listener and its route.
pub type Serving = BTreeMap<Listen, Route>;

/// A running service proxy; dropping it closes every listener.
pub struct ServiceProxy {
    serving: watch::Receiver<Serving>,
    /// The nodes whose machines are gone: nothing listens on their
    /// addresses any more (their kube-proxy died with them).
    down: watch::Sender<BTreeSet<String>>,
    task: JoinHandle<()>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceProxy {
    /// Starts the proxy of the cluster behind `client`.
    pub fn start(client: Client, netns: Arc<Netns>, opts: Options) -> ServiceProxy {
        let (tx, serving) = watch::channel(Serving::new());
        let (down, down_rx) = watch::channel(BTreeSet::new());
        let task = tokio::spawn(run(client, netns, opts, down_rx, tx));
        ServiceProxy {
            serving,
            down,
            task,
        }
    }

    /// Stops serving on the addresses of `nodes`, as when their machines
    /// die (the proxy serving several nodes at once plays each node's
    /// kube-proxy). Their endpoints stay until the Services drop them.
    pub fn node_down<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        self.down.send_if_modified(|down| {
            let before = down.len();
            down.extend(nodes.into_iter().map(str::to_string));
            down.len() != before
        });
    }

    /// Serves on the addresses of `nodes` again, as when their machines
    /// start again (at whatever address their Nodes then report).
    pub fn node_up<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        self.down.send_if_modified(|down| {
            let before = down.len();
            for node in nodes {
                down.remove(node);
            }
            down.len() != before
        });
    }

    /// Stops watching and closes every listener (as dropping it does).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// What is served now, updated after every change.
    pub fn serving(&self) -> watch::Receiver<Serving> {
        self.serving.clone()
    }

    /// Waits until `accept` holds for what is served.
    pub async fn wait_for(&self, accept: impl FnMut(&Serving) -> bool) {
        let mut rx = self.serving.clone();
        let _ = rx.wait_for(accept).await;
    }

    /// Waits until `listen` forwards to exactly `endpoints` endpoints
    /// (`endpoints` 0: until nothing is served there).
    pub async fn until_forwarding(&self, listen: Listen, endpoints: usize) {
        self.wait_for(|s| match s.get(&listen) {
            Some(Route::Forward(f)) => f.backends.len() == endpoints,
            None => endpoints == 0,
            Some(Route::Health(_)) => false,
        })
        .await;
    }
}

async fn run(
    client: Client,
    netns: Arc<Netns>,
    opts: Options,
    mut down: watch::Receiver<BTreeSet<String>>,
    serving: watch::Sender<Serving>,
) {
    let changed = Arc::new(Notify::new());
    let (services, services_task) = mirror::<Service>(&client, changed.clone());
    let (slices, slices_task) = mirror::<EndpointSlice>(&client, changed.clone());
    let (nodes, nodes_task) = mirror::<Node>(&client, changed.clone());
    let _tasks = (
        AbortOnDrop(services_task),
        AbortOnDrop(slices_task),
        AbortOnDrop(nodes_task),
    );
    let ready = future::join3(
        services.wait_until_ready(),
        slices.wait_until_ready(),
        nodes.wait_until_ready(),
    )
    .await;
    if ready.0.is_err() || ready.1.is_err() || ready.2.is_err() {
        return;
    }
    let mut dataplane = Dataplane::new(netns);
    loop {
        let notified = changed.notified();
        let up: Vec<Arc<Node>> = {
            let down = down.borrow_and_update();
            nodes
                .state()
                .into_iter()
                .filter(|n| !down.contains(&n.name_any()))
                .collect()
        };
        let want = desired::desired(&services.state(), &slices.state(), &up, opts);
        let now = dataplane.apply(want).await;
        serving.send_if_modified(|current| {
            let differs = *current != now;
            if differs {
                *current = now;
            }
            differs
        });
        tokio::select! {
            () = notified => {}
            changed = down.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// A watch-fed store of every `K` of the cluster; `changed` is notified on
/// each event.
fn mirror<K>(client: &Client, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |_| {
            changed.notify_one();
            future::ready(())
        });
    (store, tokio::spawn(stream))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
