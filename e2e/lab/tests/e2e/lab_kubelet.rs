//! The management kubelet probes as kubelet does: a container failing its
//! liveness probe (here a Ready etcd whose liveness path does not exist) is
//! killed and started again, each time, and its restart count goes up. The
//! container is the real etcd, run for the upstream image.

use crate::manager_support::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

const NAMESPACE: &str = "probes";

fn etcd_pod(liveness_path: &str) -> anyhow::Result<Pod> {
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 2381}, "periodSeconds": 1, "failureThreshold": 2});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "etcd", "namespace": NAMESPACE},
        "spec": {
            "containers": [{
                "name": "etcd",
                "image": "registry.k8s.io/etcd:3.5.16-0",
                "command": ["etcd"],
                "args": [
                    "--name=probed",
                    "--data-dir=/var/lib/etcd/data",
                    "--listen-client-urls=http://$(POD_IP):2379",
                    "--advertise-client-urls=http://$(POD_IP):2379",
                    "--listen-peer-urls=http://$(POD_IP):2380",
                    "--initial-advertise-peer-urls=http://$(POD_IP):2380",
                    "--initial-cluster=probed=http://$(POD_IP):2380",
                    "--listen-metrics-urls=http://$(POD_IP):2381",
                ],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "metrics", "containerPort": 2381}],
                "readinessProbe": probe("/health"),
                "livenessProbe": probe(liveness_path),
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }))?)
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_failing_its_liveness_probe_is_restarted() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let result = async {
        let infra = lab.infra_client();
        ensure_namespace(&infra, NAMESPACE).await?;
        let pods: Api<Pod> = Api::namespaced(infra.clone(), NAMESPACE);
        // Ready (its /health answers), but its liveness path is a 404.
        pods.create(&PostParams::default(), &etcd_pod("/no-such-path")?)
            .await?;
        // Killed and started again, again: the restarts count up.
        until(&pods, "etcd", "etcd restarted twice", |p| {
            (restarts(p?) >= 2).then_some(())
        })
        .await?;
        Ok(())
    }
    .await;
    lab.shutdown().await?;
    result
}
