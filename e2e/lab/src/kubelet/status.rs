//! The status a kubelet reports for a pod it runs (pure): phase, addresses,
//! conditions and container states.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// What the kubelet knows of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub ready: bool,
    pub restarts: i32,
    /// Why it is not running (a reason and a message), when it is not.
    pub waiting: Option<(String, String)>,
}

/// Whether every container is ready (the pod's Ready condition).
pub fn all_ready(containers: &BTreeMap<String, ContainerState>) -> bool {
    !containers.is_empty() && containers.values().all(|c| c.ready)
}

/// The pod's status body, for a merge patch of `status`; `ready_since` is
/// when [`all_ready`] last changed.
pub fn pod_status(
    pod: &Pod,
    pod_ip: IpAddr,
    host_ip: IpAddr,
    started: &str,
    ready_since: &str,
    containers: &BTreeMap<String, ContainerState>,
) -> Value {
    let image_of = |name: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let all_ready = all_ready(containers);
    let condition = |type_: &str, ok: bool, since: &str| json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": since});
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, c)| {
            let state = match (&c.waiting, c.running) {
                (Some((reason, message)), _) => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                (None, true) => json!({"running": {"startedAt": started}}),
                (None, false) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            json!({
                "name": name,
                "image": image_of(name),
                "imageID": "",
                "ready": c.ready,
                "started": c.running,
                "restartCount": c.restarts,
                "state": state,
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": pod_ip.to_string(),
        "podIPs": [{"ip": pod_ip.to_string()}],
        "startTime": started,
        "conditions": [
            condition("PodScheduled", true, started),
            condition("Initialized", true, started),
            condition("ContainersReady", all_ready, ready_since),
            condition("Ready", all_ready, ready_since),
        ],
        "containerStatuses": statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_container_is() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "i:1"}, {"name": "b", "image": "j:1"}]}
        }))
        .expect("pod");
        let ip: IpAddr = "10.131.0.2".parse().expect("ip");
        let mut cs = BTreeMap::from([
            (
                "a".to_string(),
                ContainerState {
                    running: true,
                    ready: true,
                    ..Default::default()
                },
            ),
            (
                "b".to_string(),
                ContainerState {
                    running: true,
                    ready: false,
                    ..Default::default()
                },
            ),
        ]);
        let start = "2026-01-01T00:00:00Z";
        let s = pod_status(&pod, ip, ip, start, "2026-01-01T00:00:01Z", &cs);
        assert_eq!(
            s["conditions"][3],
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:01Z"})
        );
        assert!(!all_ready(&cs));
        assert_eq!(s["podIP"], "10.131.0.2");
        if let Some(b) = cs.get_mut("b") {
            b.ready = true;
        }
        let s = pod_status(
            &pod,
            ip,
            ip,
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:02Z",
            &cs,
        );
        assert_eq!(s["conditions"][3]["status"], "True");
        assert_eq!(s["containerStatuses"][1]["image"], "j:1");
    }
}
