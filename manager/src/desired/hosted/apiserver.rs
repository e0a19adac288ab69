//! kube-apiserver: its Deployment (flags as kubeadm writes them), the
//! Service that publishes it, and in HA its disruption budget.
//!
//! A rollout surges: a new pod must be Ready before an old one goes, so the
//! cluster never serves with fewer API servers than its policy says.
//!
//! The guest's `kubernetes` Service gets no endpoints from the API servers
//! (`--endpoint-reconciler-type=none`): their pod addresses mean nothing to
//! the guest's nodes, which reach the control plane at its published
//! endpoint.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;

use super::pki::{
    ETCD_CLIENT, FRONT_PROXY_CLIENT, KAS_AGGREGATOR, KAS_KUBELET_CLIENT, KAS_SERVER, SA_SIGNING_KEY,
};
use super::{
    APISERVER_PORT, ETCD_CLIENT_PORT, HostedInputs, Publishing, container, pod_template,
    secret_volume, typed,
};
use crate::desired::object::SerializeError;
use crate::names;
use crate::pki::{SA_KEY, SA_PUB};

const PKI: &str = "/etc/kubernetes/pki";

/// kube-apiserver's arguments.
pub fn args(inp: &HostedInputs) -> Vec<String> {
    let etcd = match &inp.shared_etcd {
        Some(shared) => shared.endpoints.join(","),
        None => format!(
            "https://{}:{ETCD_CLIENT_PORT}",
            inp.service_host(names::ETCD_CLIENT)
        ),
    };
    let mut args: Vec<String> = vec![
        "--advertise-address=$(POD_IP)".into(),
        "--bind-address=$(POD_IP)".into(),
        format!("--secure-port={APISERVER_PORT}"),
        "--endpoint-reconciler-type=none".into(),
        "--allow-privileged=true".into(),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--enable-bootstrap-token-auth=true".into(),
        format!("--client-ca-file={PKI}/server/ca.crt"),
        format!("--tls-cert-file={PKI}/server/tls.crt"),
        format!("--tls-private-key-file={PKI}/server/tls.key"),
        format!("--etcd-servers={etcd}"),
        format!("--etcd-cafile={PKI}/etcd/ca.crt"),
        format!("--etcd-certfile={PKI}/etcd/tls.crt"),
        format!("--etcd-keyfile={PKI}/etcd/tls.key"),
        format!("--kubelet-client-certificate={PKI}/kubelet-client/tls.crt"),
        format!("--kubelet-client-key={PKI}/kubelet-client/tls.key"),
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
        format!("--proxy-client-cert-file={PKI}/aggregator/tls.crt"),
        format!("--proxy-client-key-file={PKI}/aggregator/tls.key"),
        format!("--requestheader-client-ca-file={PKI}/aggregator/ca.crt"),
        format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={PKI}/sa/{SA_PUB}"),
        format!("--service-account-signing-key-file={PKI}/sa/{SA_KEY}"),
        format!("--service-cluster-ip-range={}", inp.service_cidr),
    ];
    if let Some(shared) = &inp.shared_etcd {
        // Its own prefix, where its etcd user may write; the shared etcd
        // compacts itself (compaction needs etcd's root).
        args.push(format!("--etcd-prefix=/{}", shared.user));
        args.push("--etcd-compaction-interval=0".into());
    }
    args
}

/// The Deployment. `config_hash` changes with the certificates.
pub fn deployment(inp: &HostedInputs, config_hash: &str) -> Result<Deployment, SerializeError> {
    let probe = |path: &str| json!({"path": path, "port": APISERVER_PORT, "scheme": "HTTPS"});
    let mount = |name: &str, dir: &str| json!({"name": name, "mountPath": format!("{PKI}/{dir}"), "readOnly": true});
    let kas = container(
        names::KUBE_APISERVER,
        &inp.images.kube_apiserver,
        args(inp),
        json!({
            "ports": [{"name": "https", "containerPort": APISERVER_PORT}],
            "readinessProbe": {"httpGet": probe("/readyz"), "periodSeconds": 1, "failureThreshold": 3},
            "livenessProbe": {
                "httpGet": probe("/livez"),
                "initialDelaySeconds": 10,
                "periodSeconds": 10,
                "failureThreshold": 8,
            },
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "volumeMounts": [
                mount("server", "server"),
                mount("etcd-client", "etcd"),
                mount("kubelet-client", "kubelet-client"),
                mount("aggregator", "aggregator"),
                mount("sa", "sa"),
            ],
        }),
    );
    let volumes = vec![
        secret_volume("server", KAS_SERVER, &[]),
        secret_volume("etcd-client", ETCD_CLIENT, &[]),
        secret_volume("kubelet-client", KAS_KUBELET_CLIENT, &[]),
        secret_volume("aggregator", KAS_AGGREGATOR, &[]),
        secret_volume("sa", SA_SIGNING_KEY, &[]),
    ];
    typed(
        "Deployment",
        names::KUBE_APISERVER,
        json!({
            "metadata": {"name": names::KUBE_APISERVER, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": {
                "replicas": inp.replicas(),
                "selector": {"matchLabels": HostedInputs::app_labels(names::KUBE_APISERVER)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": pod_template(inp, names::KUBE_APISERVER, config_hash, kas, volumes),
            },
        }),
    )
}

/// The Service that publishes the API server.
pub fn service(inp: &HostedInputs) -> Result<Service, SerializeError> {
    let mut port = json!({"name": "https", "port": APISERVER_PORT, "targetPort": APISERVER_PORT, "protocol": "TCP"});
    let type_ = match &inp.publishing {
        Publishing::LoadBalancer { .. } => "LoadBalancer",
        Publishing::NodePort {
            port: node_port, ..
        } => {
            if let Some(p) = node_port {
                port["nodePort"] = json!(p);
            }
            "NodePort"
        }
    };
    typed(
        "Service",
        names::KUBE_APISERVER,
        json!({
            "metadata": {"name": names::KUBE_APISERVER, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": {
                "type": type_,
                "selector": HostedInputs::app_labels(names::KUBE_APISERVER),
                "ports": [port],
            },
        }),
    )
}

/// In HA, at most one API server down by choice.
pub fn disruption_budget(
    inp: &HostedInputs,
) -> Result<Option<PodDisruptionBudget>, SerializeError> {
    if !inp.highly_available() {
        return Ok(None);
    }
    super::etcd::budget(inp, names::KUBE_APISERVER).map(Some)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn flags_point_at_etcd_and_the_mounted_pki() {
        let inp = inputs(&hosted());
        let args = args(&inp);
        for want in [
            "--etcd-servers=https://etcd-client.clusters-guest1.svc:2379",
            "--service-cluster-ip-range=172.31.0.0/16",
            "--client-ca-file=/etc/kubernetes/pki/server/ca.crt",
            "--service-account-signing-key-file=/etc/kubernetes/pki/sa/service-account.key",
        ] {
            assert!(args.contains(&want.to_string()), "{want}");
        }
        let d = deployment(&inp, "h").expect("deployment");
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("rolling");
        assert_eq!(
            ru.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
        );
        let pod = spec.template.spec.as_ref().expect("pod");
        let mounts = pod.containers[0].volume_mounts.as_ref().expect("mounts");
        let volumes = pod.volumes.as_ref().expect("volumes");
        assert!(
            mounts
                .iter()
                .all(|m| volumes.iter().any(|v| v.name == m.name))
        );
    }

    #[test]
    fn with_a_shared_etcd_the_api_server_keeps_to_its_prefix() {
        let args = args(&inputs(&shared(hosted())));
        for want in [
            "--etcd-servers=https://etcd.shared-etcd.svc:2379",
            "--etcd-prefix=/clusters-guest1",
            "--etcd-compaction-interval=0",
        ] {
            assert!(args.contains(&want.to_string()), "{want}");
        }
        let own = super::args(&inputs(&hosted()));
        assert!(!own.iter().any(|a| a.starts_with("--etcd-prefix")));
    }

    #[test]
    fn the_service_publishes_as_asked() {
        let inp = inputs(&hosted());
        let svc = service(&inp).expect("svc");
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(
            spec.ports.as_ref().expect("ports")[0].node_port,
            Some(30443)
        );

        let mut hc = hosted();
        hc.spec.services.clear();
        let svc = service(&inputs(&hc)).expect("svc");
        assert_eq!(
            svc.spec.and_then(|s| s.type_).as_deref(),
            Some("LoadBalancer")
        );
        assert!(
            disruption_budget(&inputs(&ha(hosted())))
                .expect("pdb")
                .is_some()
        );
    }
}
