//! kube-controller-manager and kube-scheduler: a Deployment each, with
//! their own kubeconfigs (client certificates for `system:kube-controller-
//! manager` and `system:kube-scheduler`) for the API server's Service, and
//! leader election among replicas. kube-controller-manager holds the cluster
//! CA's key (it signs CSRs: kubelet client and serving certificates) and the
//! ServiceAccount signing key (token controller).

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::pki::{KCM_KUBECONFIG, ROOT_CA, SA_SIGNING_KEY, SCHEDULER_KUBECONFIG};
use super::{HostedInputs, container, pod_template, secret_volume, typed};
use crate::desired::object::SerializeError;
use crate::names;
use crate::pki::{CA_CERT, CA_KEY, SA_KEY};

const KUBECONFIG: &str = "/etc/kubernetes/kubeconfig/kubeconfig";
const KCM_PORT: i32 = 10257;
const SCHEDULER_PORT: i32 = 10259;

/// kube-controller-manager's arguments.
pub fn controller_manager_args(inp: &HostedInputs) -> Vec<String> {
    vec![
        format!("--kubeconfig={KUBECONFIG}"),
        format!("--authentication-kubeconfig={KUBECONFIG}"),
        format!("--authorization-kubeconfig={KUBECONFIG}"),
        "--bind-address=$(POD_IP)".into(),
        format!("--secure-port={KCM_PORT}"),
        format!("--client-ca-file=/etc/kubernetes/pki/ca/{CA_CERT}"),
        format!("--root-ca-file=/etc/kubernetes/pki/ca/{CA_CERT}"),
        format!("--cluster-signing-cert-file=/etc/kubernetes/pki/ca/{CA_CERT}"),
        format!("--cluster-signing-key-file=/etc/kubernetes/pki/ca/{CA_KEY}"),
        format!("--service-account-private-key-file=/etc/kubernetes/pki/sa/{SA_KEY}"),
        "--use-service-account-credentials=true".into(),
        "--controllers=*,bootstrapsigner,tokencleaner".into(),
        format!("--cluster-name={}", inp.infra_id),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={}", inp.cluster_cidr),
        format!("--service-cluster-ip-range={}", inp.service_cidr),
        "--leader-elect=true".into(),
        format!("--leader-elect-resource-namespace=kube-system"),
    ]
}

/// kube-scheduler's arguments.
pub fn scheduler_args() -> Vec<String> {
    vec![
        format!("--kubeconfig={KUBECONFIG}"),
        format!("--authentication-kubeconfig={KUBECONFIG}"),
        format!("--authorization-kubeconfig={KUBECONFIG}"),
        "--bind-address=$(POD_IP)".into(),
        format!("--secure-port={SCHEDULER_PORT}"),
        "--leader-elect=true".into(),
    ]
}

/// Replicas: one, or two leader-elected in HA.
fn replicas(inp: &HostedInputs) -> i32 {
    if inp.highly_available() { 2 } else { 1 }
}

/// One controller: what differs between the two.
struct Component<'a> {
    name: &'a str,
    image: &'a str,
    args: Vec<String>,
    port: i32,
    kubeconfig: &'a str,
    /// Mounts and volumes besides the kubeconfig's.
    mounts: Vec<Value>,
    volumes: Vec<Value>,
}

fn component(
    inp: &HostedInputs,
    c: Component<'_>,
    config_hash: &str,
) -> Result<Deployment, SerializeError> {
    let Component {
        name,
        image,
        args,
        port,
        kubeconfig,
        mut mounts,
        mut volumes,
    } = c;
    mounts.push(
        json!({"name": "kubeconfig", "mountPath": "/etc/kubernetes/kubeconfig", "readOnly": true}),
    );
    volumes.push(secret_volume("kubeconfig", kubeconfig, &[]));
    let c = container(
        name,
        image,
        args,
        json!({
            "ports": [{"name": "https", "containerPort": port}],
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTPS"},
                "initialDelaySeconds": 10,
                "periodSeconds": 10,
                "failureThreshold": 8,
            },
            "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}},
            "volumeMounts": mounts,
        }),
    );
    typed(
        "Deployment",
        name,
        json!({
            "metadata": {"name": name, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": {
                "replicas": replicas(inp),
                "selector": {"matchLabels": HostedInputs::app_labels(name)},
                "template": pod_template(inp, name, config_hash, c, volumes),
            },
        }),
    )
}

/// kube-controller-manager's Deployment.
pub fn controller_manager(
    inp: &HostedInputs,
    config_hash: &str,
) -> Result<Deployment, SerializeError> {
    component(
        inp,
        Component {
            name: names::KUBE_CONTROLLER_MANAGER,
            image: &inp.images.kube_controller_manager,
            args: controller_manager_args(inp),
            port: KCM_PORT,
            kubeconfig: KCM_KUBECONFIG,
            mounts: vec![
                json!({"name": "ca", "mountPath": "/etc/kubernetes/pki/ca", "readOnly": true}),
                json!({"name": "sa", "mountPath": "/etc/kubernetes/pki/sa", "readOnly": true}),
            ],
            volumes: vec![
                secret_volume("ca", ROOT_CA, &[]),
                secret_volume("sa", SA_SIGNING_KEY, &[SA_KEY]),
            ],
        },
        config_hash,
    )
}

/// kube-scheduler's Deployment.
pub fn scheduler(inp: &HostedInputs, config_hash: &str) -> Result<Deployment, SerializeError> {
    component(
        inp,
        Component {
            name: names::KUBE_SCHEDULER,
            image: &inp.images.kube_scheduler,
            args: scheduler_args(),
            port: SCHEDULER_PORT,
            kubeconfig: SCHEDULER_KUBECONFIG,
            mounts: vec![],
            volumes: vec![],
        },
        config_hash,
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn each_component_mounts_its_own_kubeconfig() {
        let inp = inputs(&hosted());
        for (d, secret) in [
            (controller_manager(&inp, "h").expect("kcm"), KCM_KUBECONFIG),
            (scheduler(&inp, "h").expect("sched"), SCHEDULER_KUBECONFIG),
        ] {
            let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
            let volume = pod
                .volumes
                .expect("volumes")
                .into_iter()
                .find(|v| v.name == "kubeconfig")
                .expect("kubeconfig volume");
            assert_eq!(
                volume.secret.and_then(|s| s.secret_name).as_deref(),
                Some(secret)
            );
        }
        let args = controller_manager_args(&inp);
        assert!(args.contains(&"--cluster-cidr=10.132.0.0/14".to_string()));
        assert!(args.contains(&"--cluster-name=guest1-x7k2p".to_string()));
        let ha = controller_manager(&inputs(&ha(hosted())), "h").expect("kcm");
        assert_eq!(ha.spec.and_then(|s| s.replicas), Some(2));
    }
}
