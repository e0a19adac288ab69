//! Volumes (and workloads) of pods that are gone: kubelet's orphaned-pod cleanup. A pod
//! normally leaves only after the stand-in took its volumes down (its
//! graceful deletion), but one can vanish without it (deleted with grace
//! period 0, or while the stand-in was not running). [`run`] watches this node's
//! pods: a deleted pod, and after every (re)list any pod directory whose pod
//! is not in the store, has its recorded volumes taken down, retried with
//! backoff until done.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinSet;

use super::reconcile::{Context, teardown};
use super::records;

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Watches this node's pods and cleans up after the ones that are gone.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node_name));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // Teardowns in flight; dropped (aborted) with this future.
    let mut teardowns = JoinSet::new();
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            Some(_) = teardowns.join_next(), if !teardowns.is_empty() => continue,
        };
        match event {
            None => return,
            Some(Ok(Event::Delete(pod))) => {
                if let Some(uid) = pod.uid() {
                    ctx.network.release(&uid);
                    teardowns.spawn(teardown_until_done(ctx.clone(), uid));
                }
            }
            Some(Ok(Event::InitDone)) => {
                for uid in orphans(&ctx).await {
                    tracing::info!(node = %ctx.cfg.node_name, pod_uid = %uid, "orphaned pod directory");
                    teardowns.spawn(teardown_until_done(ctx.clone(), uid));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::warn!(node = %ctx.cfg.node_name, error = %e, "watching pods"),
        }
    }
}

/// The pod directories whose pod the controller's store does not know. A
/// pod's directory is only ever made for a pod in that store, so an absent
/// pod is a deleted one.
async fn orphans(ctx: &Context) -> Vec<String> {
    if ctx.pods.wait_until_ready().await.is_err() {
        return Vec::new();
    }
    let on_disk = match records::pods_on_disk(&ctx.cfg.kubelet_dir) {
        Ok(uids) => uids,
        Err(e) => {
            tracing::warn!(node = %ctx.cfg.node_name, error = %e, "listing pod directories");
            return Vec::new();
        }
    };
    let known: Vec<String> = ctx.pods.state().iter().filter_map(|p| p.uid()).collect();
    on_disk.into_iter().filter(|u| !known.contains(u)).collect()
}

/// Tears pod `uid` down, retrying with backoff until it is done.
async fn teardown_until_done(ctx: Arc<Context>, uid: String) {
    let mut pause = RETRY_FIRST;
    loop {
        let result = {
            let _pod = ctx.locks.lock(format!("pod/{uid}")).await;
            teardown(&ctx, &uid).await
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(node = %ctx.cfg.node_name, pod_uid = %uid, error = %e, "cleaning up a gone pod; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}
