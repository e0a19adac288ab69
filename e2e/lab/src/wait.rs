//! Waiting by watching: [`until`] follows one named object through a watch
//! and returns as soon as a predicate accepts its state (or its absence);
//! [`file_exists`] watches a directory with inotify until a file appears or
//! goes. Both are bounded by a timeout; [`pod_ready`] is the usual check
//! for a pod. Used by the lab, the demo and tests.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::de::DeserializeOwned;

use crate::LabError;

/// Whether `pod` runs and is Ready (a check for [`until`]).
pub fn pod_ready(pod: Option<&Pod>) -> Option<()> {
    pod.and_then(|p| p.status.as_ref())
        .filter(|s| s.phase.as_deref() == Some("Running"))
        .filter(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .map(|_| ())
}

/// Whether `node` reports Ready.
pub fn node_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The first load-balancer ingress IP of a Service, once it has one (for
/// [`until`]).
pub fn ingress_ip(svc: Option<&k8s_openapi::api::core::v1::Service>) -> Option<String> {
    svc?.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// Watches `name` in `api` and returns the first `Some` that `check` gives for
/// its current state (`None` while it does not exist), failing after `timeout`.
/// `check` sees every version the watch delivers, in order.
pub async fn until<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut check: impl FnMut(Option<&K>) -> Option<T>,
) -> Result<T, LabError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let what = format!("{} {name}", K::kind(&()));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = async {
        let mut events = std::pin::pin!(watcher::watcher(api.clone(), config));
        let mut seen_in_init = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| LabError::Watch {
                what: what.clone(),
                message: e.to_string(),
            })?;
            let found = match event {
                Event::Init => {
                    seen_in_init = false;
                    None
                }
                Event::InitApply(obj) => {
                    seen_in_init = true;
                    check(Some(&obj))
                }
                Event::InitDone if !seen_in_init => check(None),
                Event::InitDone => None,
                Event::Apply(obj) => check(Some(&obj)),
                Event::Delete(_) => check(None),
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        Err(LabError::Watch {
            what: what.clone(),
            message: "watch ended".to_string(),
        })
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result,
        Err(_) => Err(LabError::Timeout {
            what,
            after: timeout,
        }),
    }
}

/// Watches the objects of `api` matching `labels` and returns once `count`
/// of them satisfy `check` (their latest versions), failing after `timeout`.
pub async fn until_count<K>(
    api: &Api<K>,
    labels: &str,
    count: usize,
    timeout: Duration,
    check: impl Fn(&K) -> bool,
) -> Result<(), LabError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let what = format!("{count} {} matching {labels}", K::kind(&()));
    let config = watcher::Config::default().labels(labels);
    let watch = async {
        let mut events = std::pin::pin!(watcher::watcher(api.clone(), config));
        let mut accepted = std::collections::HashSet::new();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| LabError::Watch {
                what: what.clone(),
                message: e.to_string(),
            })?;
            match event {
                Event::Init => accepted.clear(),
                Event::InitApply(obj) | Event::Apply(obj) => {
                    let key = obj.meta().uid.clone().unwrap_or_default();
                    if check(&obj) {
                        accepted.insert(key);
                    } else {
                        accepted.remove(&key);
                    }
                }
                Event::Delete(obj) => {
                    accepted.remove(&obj.meta().uid.clone().unwrap_or_default());
                }
                Event::InitDone => {}
            }
            if accepted.len() >= count {
                return Ok(());
            }
        }
        Err(LabError::Watch {
            what: what.clone(),
            message: "watch ended".to_string(),
        })
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result,
        Err(_) => Err(LabError::Timeout {
            what,
            after: timeout,
        }),
    }
}

/// Removes a socket (or any file) a killed predecessor left at `path`, so
/// that waiting for `path` to exist then waits for the successor's bind.
pub fn remove_stale(path: &Path) -> Result<(), LabError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io("remove the stale", path)(e))
        }
        _ => Ok(()),
    }
}

/// Waits until `path` exists (`exists = true`) or is gone (`false`), watching
/// its parent directory (which must exist) with inotify, at most `timeout`.
pub async fn file_exists(path: &Path, exists: bool, timeout: Duration) -> Result<(), LabError> {
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
        .map_err(|e| LabError::io("inotify on", &dir)(e.into()))?;
    inotify
        .add_watch(
            &dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .map_err(|e| LabError::io("watch", &dir)(e.into()))?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (target, stop) = (path.to_path_buf(), cancelled.clone());
    let watcher = std::thread::spawn(move || {
        // Checked after the watch is set up, so no change slips between.
        let result = loop {
            if target.exists() == exists {
                break Ok(());
            }
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            if let Err(e) = inotify.read_events() {
                break Err(e);
            }
        };
        let _ = tx.send(result);
    });
    let outcome = tokio::time::timeout(timeout, rx).await;
    if outcome.is_err() {
        // Wake the blocked reader with an event of our own, then let it go.
        cancelled.store(true, Ordering::SeqCst);
        let nudge = dir.join(format!(".lab-wait-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::write(&nudge, b"").is_ok() {
            let _ = std::fs::remove_file(&nudge);
        }
    }
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    match outcome {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(LabError::io("read inotify events for", &dir)(e.into())),
        Ok(Err(_)) => Err(LabError::Invalid("inotify watcher vanished".into())),
        Err(_) => Err(LabError::Timeout {
            what: format!(
                "{} to {}",
                path.display(),
                if exists { "appear" } else { "go" }
            ),
            after: timeout,
        }),
    }
}

/// Awaits `future` for at most `timeout`; then fails with
/// [`LabError::Timeout`], saying what was awaited.
pub async fn within<T>(
    timeout: Duration,
    what: impl FnOnce() -> String,
    future: impl std::future::Future<Output = T>,
) -> Result<T, LabError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| LabError::Timeout {
            what: what(),
            after: timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_files_come_and_go() -> Result<(), LabError> {
        let dir = tempfile::tempdir().map_err(LabError::io("create", "/tmp"))?;
        let file = dir.path().join("ready");
        let later = file.clone();
        let writer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            std::fs::write(&later, "ok")
        });
        file_exists(&file, true, Duration::from_secs(5)).await?;
        writer
            .await
            .map_err(|e| LabError::Invalid(e.to_string()))?
            .map_err(LabError::io("write", &file))?;
        std::fs::remove_file(&file).map_err(LabError::io("remove", &file))?;
        file_exists(&file, false, Duration::from_secs(5)).await?;
        let missing = file_exists(&dir.path().join("never"), true, Duration::from_millis(50)).await;
        assert!(matches!(missing, Err(LabError::Timeout { .. })));
        Ok(())
    }
}
