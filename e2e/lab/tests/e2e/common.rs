//! What every harness of these tests shares: logging, and waits that watch
//! (a named object, or the set of objects matching a label selector) and
//! say what they last saw when they give up.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Log to stderr once per test binary (visible with `--nocapture`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Waits at most `timeout` until `check` accepts the named object (or its
/// absence).
pub async fn until_within<K, T>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl FnMut(Option<&K>) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    kubevirt_lab::wait::until(api, name, timeout, check)
        .await
        .with_context(|| format!("waiting for {what}"))
}

/// Waits at most `timeout` until `check` accepts the objects matching
/// `labels`, as the watch has them after each event.
pub async fn until_list_within<K, T>(
    api: &Api<K>,
    labels: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&[K]) -> Option<T>,
) -> anyhow::Result<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().labels(labels);
    let watch = async {
        let mut events = std::pin::pin!(watcher::watcher(api.clone(), config));
        let mut current: BTreeMap<String, K> = BTreeMap::new();
        let mut listing: BTreeMap<String, K> = BTreeMap::new();
        let mut last = Vec::new();
        while let Some(event) = events.next().await {
            match event? {
                Event::Init => listing.clear(),
                Event::InitApply(obj) => {
                    listing.insert(obj.name_any(), obj);
                    continue;
                }
                Event::InitDone => current = std::mem::take(&mut listing),
                Event::Apply(obj) => {
                    current.insert(obj.name_any(), obj);
                }
                Event::Delete(obj) => {
                    current.remove(&obj.name_any());
                }
            }
            last = current.values().cloned().collect::<Vec<_>>();
            if let Some(found) = check(&last) {
                return Ok(found);
            }
        }
        bail!("watch ended; last seen: {last:#?}")
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result.with_context(|| format!("waiting for {what}")),
        Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Starts a lab of `config`, with logging set up, watched by the
/// [`watchdog`](crate::watchdog).
pub async fn start_lab(config: kubevirt_lab::LabConfig) -> anyhow::Result<kubevirt_lab::Lab> {
    init_logging();
    let lab = kubevirt_lab::Lab::start(config).await?;
    crate::watchdog::watch(&lab.dir);
    Ok(lab)
}

/// The last `lines` lines of `log`.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// [`start_lab`] for tests of the daemon `binary` (of cargo package
/// `package`), which must have been built first.
pub async fn start_lab_for(
    binary: &str,
    package: &str,
    config: kubevirt_lab::LabConfig,
) -> anyhow::Result<kubevirt_lab::Lab> {
    let path = kubevirt_lab::daemon::binary(binary);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build -p {package}` first",
            path.display()
        );
    }
    start_lab(config).await
}
