//! One pod's life on the management kubelet: address, claims, containers
//! started and kept running, readiness and liveness probed (a container
//! failing its liveness probe is killed and restarted), status reported, and on
//! deletion the processes stopped and the pod object removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as ContainerSpec, PersistentVolumeClaim, Pod, Probe};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use super::status::{ContainerState, all_ready, pod_status};
use super::{Shared, probe, remove};
use crate::LabError;
use crate::pod::{PodNetwork, PodRun, RunningPod, remove_pod_files};

/// How often the worker looks at its processes (the kubelet's PLEG relist).
const RELIST: Duration = Duration::from_secs(1);
/// The longest a crashing container waits to be started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest grace a deleted pod's processes get here.
const MAX_GRACE: Duration = Duration::from_secs(10);

/// One container: its process and what is known of it.
struct Container {
    name: String,
    process: Option<RunningPod>,
    state: ContainerState,
    /// When to start it (again).
    start_at: Instant,
    backoff: Duration,
    readiness: ProbeState,
    liveness: ProbeState,
}

impl Container {
    /// Its process has ended (`what` ended it): restart after the back-off.
    fn stopped(&mut self, now: Instant, what: &str) {
        self.state.running = false;
        self.state.ready = false;
        self.state.restarts += 1;
        self.state.waiting = Some((
            "CrashLoopBackOff".into(),
            format!(
                "back-off {:?} restarting {what} {}",
                self.backoff, self.name
            ),
        ));
        self.start_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// When a probe is next due, and its consecutive failures.
struct ProbeState {
    next: Instant,
    failures: i32,
}

impl ProbeState {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            failures: 0,
        }
    }

    /// A container just started: the first probe after its initial delay.
    fn reset(&mut self, now: Instant, spec: Option<&Probe>) {
        let delay = spec.and_then(|p| p.initial_delay_seconds).unwrap_or(0);
        self.next = now + Duration::from_secs(delay.max(0) as u64);
        self.failures = 0;
    }

    /// Probes `spec` when due. `Some(passed)` when it probed; the failures
    /// count toward `failureThreshold`.
    async fn probe(
        &mut self,
        now: Instant,
        shared: &Shared,
        ip: IpAddr,
        container: &ContainerSpec,
        spec: &Probe,
    ) -> Option<bool> {
        if now < self.next {
            return None;
        }
        self.next = now + Duration::from_secs(spec.period_seconds.unwrap_or(10).max(1) as u64);
        let passed = probe::http(&shared.cfg.netns, ip, container, spec).await;
        self.failures = if passed { 0 } else { self.failures + 1 };
        Some(passed)
    }

    /// The failures reached `spec`'s threshold.
    fn failed(&self, spec: &Probe) -> bool {
        self.failures >= spec.failure_threshold.unwrap_or(3)
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    pod: Pod,
    deleted: CancellationToken,
    shutdown: CancellationToken,
) {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let Some(ip) = shared.allocate() else {
        tracing::warn!(pod = %name, "management pod network exhausted");
        return;
    };
    let mut containers: Vec<Container> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| Container {
            name: c.name.clone(),
            process: None,
            state: ContainerState::default(),
            start_at: Instant::now(),
            backoff: Duration::from_secs(1),
            readiness: ProbeState::new(),
            liveness: ProbeState::new(),
        })
        .collect();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let host_ip = shared.cfg.nodes.get(&node).copied().unwrap_or(ip);
    let ns = pod.namespace().unwrap_or_default();
    // A new incarnation of the pod starts with empty volumes.
    remove_pod_files(&shared.cfg.dir, &ns, &pod.name_any());
    let started = jiff::Timestamp::now().to_string();
    let mut ready = false;
    let mut ready_since = started.clone();
    let mut reported = None;
    let mut claims: Option<BTreeMap<String, PathBuf>> = None;
    // Each relist works at its tick's instant, so that a probe due every
    // `periodSeconds` runs at every period'th tick, not one tick late.
    let mut tick = tokio::time::interval(RELIST);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                stop_all(&mut containers, Duration::ZERO).await;
                forget(&shared, &name);
                return;
            }
            _ = deleted.cancelled() => {
                stop_all(&mut containers, grace(&pod)).await;
                remove_pod_files(&shared.cfg.dir, &ns, &pod.name_any());
                forget(&shared, &name);
                remove(&shared.client, &pod).await;
                return;
            }
            at = tick.tick() => at.into_std(),
        };
        // One relist, given up as soon as the pod is deleted or its node
        // goes (a status write may wait on a slow API server): the
        // processes stop at once, as a dying machine's do.
        let relist = async {
            // A claim's volume never changes once bound: looked up once.
            if claims.is_none() {
                match claims_of(&shared, &pod).await {
                    Ok(c) => claims = Some(c),
                    Err(e) => {
                        tracing::debug!(pod = %name, "claims not ready: {e}");
                        return;
                    }
                }
            }
            let Some(claims) = &claims else { return };
            for c in containers.iter_mut() {
                step(&shared, &pod, now, (ip, host_ip), &node, claims, c).await;
            }
            let states: BTreeMap<String, ContainerState> = containers
                .iter()
                .map(|c| (c.name.clone(), c.state.clone()))
                .collect();
            let pids: Vec<u32> = containers
                .iter()
                .filter_map(|c| c.process.as_ref().and_then(|p| p.daemon.pid()))
                .collect();
            shared
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), pids);
            if all_ready(&states) != ready {
                ready = !ready;
                ready_since = jiff::Timestamp::now().to_string();
            }
            if reported.as_ref() != Some(&states) {
                let body = pod_status(&pod, ip, host_ip, &started, &ready_since, &states);
                let api: Api<Pod> =
                    Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
                match api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&serde_json::json!({"status": body})),
                    )
                    .await
                {
                    Ok(_) => reported = Some(states),
                    Err(e) => tracing::debug!(pod = %name, "pod status: {e}"),
                }
            }
        };
        tokio::select! {
            () = relist => {}
            () = shutdown.cancelled() => {}
            () = deleted.cancelled() => {}
        }
    }
}

/// The host directory of each claim the pod mounts: `DIR/pv-data/<pv>`.
async fn claims_of(shared: &Shared, pod: &Pod) -> Result<BTreeMap<String, PathBuf>, LabError> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(claim) = &v.persistent_volume_claim else {
            continue;
        };
        let pv = api
            .get(&claim.claim_name)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                LabError::Invalid(format!("claim {ns}/{} is not bound", claim.claim_name))
            })?;
        out.insert(
            claim.claim_name.clone(),
            shared.cfg.dir.join("pv-data").join(pv),
        );
    }
    Ok(out)
}

/// One relist of one container at `now`: start it when due, notice an
/// exit, probe.
async fn step(
    shared: &Shared,
    pod: &Pod,
    now: Instant,
    (ip, host_ip): (IpAddr, IpAddr),
    node: &str,
    claims: &BTreeMap<String, PathBuf>,
    c: &mut Container,
) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let Some(container) = spec.containers.iter().find(|k| k.name == c.name) else {
        return;
    };
    let ns = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();

    if let Some(p) = c.process.as_mut()
        && let Ok(Some(exit)) = p.daemon.try_wait()
    {
        tracing::warn!(pod = %pod_name, container = %c.name, %exit, log = %p.daemon.log_path().display(), "container exited; restarting after back-off");
        c.process = None;
        c.stopped(now, "failed container");
    }

    if c.process.is_none() && now >= c.start_at {
        let Some(entrypoint) = container
            .image
            .as_deref()
            .and_then(|i| shared.cfg.images.entrypoint(i))
        else {
            return;
        };
        let run = PodRun {
            dir: &shared.cfg.dir,
            server: &shared.cfg.server,
            client: shared.client.clone(),
            namespace: &ns,
            pod_name: &pod_name,
            spec,
            container: &c.name,
            program: entrypoint.program.clone(),
            entrypoint_args: entrypoint.args.clone(),
            extra_args: Vec::new(),
            network: Some(PodNetwork {
                netns: shared.cfg.netns.path(),
                pod_ip: ip,
                host_ip,
                node_name: node,
                dns: shared.cfg.dns,
            }),
            claims: claims.clone(),
        };
        match run.start().await {
            Ok(p) => {
                c.process = Some(p);
                c.state.running = true;
                c.state.waiting = None;
                c.state.ready = container.readiness_probe.is_none();
                c.readiness.reset(now, container.readiness_probe.as_ref());
                c.liveness.reset(now, container.liveness_probe.as_ref());
            }
            Err(e) => {
                c.state.waiting = Some(("CreateContainerError".into(), e.to_string()));
                c.start_at = now + c.backoff;
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            }
        }
        return;
    }

    if c.process.is_none() {
        return;
    }
    if let Some(spec) = &container.readiness_probe {
        match c.readiness.probe(now, shared, ip, container, spec).await {
            Some(true) => {
                c.state.ready = true;
                c.backoff = Duration::from_secs(1);
            }
            Some(false) if c.readiness.failed(spec) => c.state.ready = false,
            _ => {}
        }
    }
    // A container failing its liveness probe is killed and restarted.
    if let Some(spec) = &container.liveness_probe
        && c.liveness.probe(now, shared, ip, container, spec).await == Some(false)
        && c.liveness.failed(spec)
        && let Some(mut p) = c.process.take()
    {
        tracing::warn!(pod = %pod_name, container = %c.name, "liveness probe failed; restarting the container");
        let _ = p.daemon.terminate(grace(pod)).await;
        c.stopped(now, "container that failed its liveness probe");
    }
}

fn forget(shared: &Shared, pod: &str) {
    shared
        .processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(pod);
}

/// The grace a deleted pod's processes get.
fn grace(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0) as u64;
    Duration::from_secs(seconds).min(MAX_GRACE)
}

async fn stop_all(containers: &mut [Container], grace: Duration) {
    for c in containers.iter_mut() {
        if let Some(mut p) = c.process.take() {
            let _ = p.daemon.terminate(grace).await;
        }
    }
}
