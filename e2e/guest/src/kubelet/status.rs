//! Pure status bodies kubelet writes: a pod whose volumes are up becomes
//! Running with its containers ready and a pod IP ([`running_status`]); a
//! claim whose filesystem the node grew reports the new capacity and drops
//! the resize conditions ([`resize_finished_status`]).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::{Value, json};

use super::volumes::FS_RESIZE_PENDING;

/// Pod conditions kubelet sets on a running pod.
const RUNNING_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "PodScheduled",
];

/// Whether kubelet already reported `pod` Running and Ready.
pub fn is_running(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The `/status` merge-patch body of a pod kubelet started on `ip`: phase
/// Running, the running conditions True, each container running and ready.
pub fn running_status(pod: &Pod, ip: &str, host_ip: Option<&str>, now: &str) -> Value {
    let conditions: Vec<Value> = RUNNING_CONDITIONS
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    let mut status = json!({
        "phase": "Running",
        "conditions": conditions,
        "containerStatuses": containers,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
    });
    if let (Some(host), Some(map)) = (host_ip, status.as_object_mut()) {
        map.insert("hostIP".into(), json!(host));
        map.insert("hostIPs".into(), json!([{"ip": host}]));
    }
    json!({ "status": status })
}

/// The `/status` merge-patch body of a claim whose filesystem the node has
/// grown to `capacity`: the capacity, no resize conditions, no pending
/// resize status.
pub fn resize_finished_status(pvc: &PersistentVolumeClaim, capacity: &str) -> Value {
    let conditions: Vec<Value> = pvc
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.type_ != FS_RESIZE_PENDING && c.type_ != "Resizing")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    json!({"status": {
        "capacity": {"storage": capacity},
        "conditions": conditions,
        "allocatedResourceStatuses": null,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_pods() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u-1"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .expect("pod");
        assert!(!is_running(&pod));
        let body = running_status(&pod, "10.192.0.2", Some("10.0.0.5"), "2024-01-01T00:00:00Z");
        assert_eq!(body["status"]["phase"], "Running");
        assert_eq!(body["status"]["hostIP"], "10.0.0.5");
        assert_eq!(body["status"]["podIP"], "10.192.0.2");
        assert_eq!(body["status"]["containerStatuses"][0]["ready"], true);
        let mut running = pod.clone();
        running.status = serde_json::from_value(body["status"].clone()).ok();
        assert!(is_running(&running));
    }

    #[test]
    fn resize_finished_drops_the_resize_conditions() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"},
                       "conditions": [{"type": FS_RESIZE_PENDING, "status": "True"},
                                      {"type": "Other", "status": "True"}]}
        }))
        .expect("pvc");
        let body = resize_finished_status(&pvc, "2Gi");
        assert_eq!(body["status"]["capacity"]["storage"], "2Gi");
        assert_eq!(
            body["status"]["conditions"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(body["status"]["conditions"][0]["type"], "Other");
    }
}
