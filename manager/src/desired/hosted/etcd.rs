//! The cluster's etcd: a StatefulSet (1 or 3 members, a claim each), the
//! headless Service `etcd-discovery` that gives each member a stable name
//! for its peers, the Service `etcd-client` for kube-apiserver, and in HA a
//! disruption budget that keeps quorum through node drains.
//!
//! Members start together (`Parallel`: the first cannot be Ready before a
//! quorum exists) and are updated one at a time, each only after the
//! previous is Ready again, which keeps quorum through a version change.
//! Claims are deleted with the StatefulSet, so deleting the cluster deletes
//! its data.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use super::pki::{ETCD_PEER, ETCD_SERVER};
use super::{
    ETCD_CLIENT_PORT, ETCD_HEALTH_PORT, ETCD_PEER_PORT, HostedInputs, container, pod_template,
    secret_volume, typed,
};
use crate::desired::object::SerializeError;
use crate::names;

const DATA_DIR: &str = "/var/lib/etcd";
const SERVER_TLS: &str = "/etc/etcd/tls/server";
const PEER_TLS: &str = "/etc/etcd/tls/peer";

/// A member's name in the cluster: `https://<pod>.etcd-discovery.<ns>.svc`.
fn member_host(inp: &HostedInputs, pod: &str) -> String {
    format!("{pod}.{}.{}.svc", names::ETCD_DISCOVERY, inp.namespace)
}

/// `--initial-cluster`: every member by name and peer URL.
pub fn initial_cluster(inp: &HostedInputs) -> String {
    (0..inp.replicas())
        .map(|i| {
            let pod = format!("{}-{i}", names::ETCD);
            format!("{pod}=https://{}:{ETCD_PEER_PORT}", member_host(inp, &pod))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// etcd's arguments (the pod's name and address come from the env).
pub fn args(inp: &HostedInputs) -> Vec<String> {
    let me = format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc", names::ETCD_DISCOVERY);
    vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}/data"),
        format!("--initial-advertise-peer-urls=https://{me}:{ETCD_PEER_PORT}"),
        format!("--listen-peer-urls=https://$(POD_IP):{ETCD_PEER_PORT}"),
        format!("--listen-client-urls=https://$(POD_IP):{ETCD_CLIENT_PORT}"),
        format!("--advertise-client-urls=https://{me}:{ETCD_CLIENT_PORT}"),
        format!("--listen-metrics-urls=http://$(POD_IP):{ETCD_HEALTH_PORT}"),
        format!("--initial-cluster={}", initial_cluster(inp)),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token={}-etcd", inp.namespace),
        "--client-cert-auth=true".into(),
        format!("--trusted-ca-file={SERVER_TLS}/ca.crt"),
        format!("--cert-file={SERVER_TLS}/tls.crt"),
        format!("--key-file={SERVER_TLS}/tls.key"),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-trusted-ca-file={PEER_TLS}/ca.crt"),
        format!("--peer-cert-file={PEER_TLS}/tls.crt"),
        format!("--peer-key-file={PEER_TLS}/tls.key"),
        "--snapshot-count=10000".into(),
        "--quota-backend-bytes=8589934592".into(),
    ]
}

/// The StatefulSet. `config_hash` changes with the certificates, which
/// rolls the members.
pub fn statefulset(inp: &HostedInputs, config_hash: &str) -> Result<StatefulSet, SerializeError> {
    let mut claim = json!({
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": inp.etcd_size}},
        },
    });
    if let Some(class) = &inp.etcd_storage_class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    let etcd = container(
        names::ETCD,
        &inp.images.etcd,
        args(inp),
        json!({
            "ports": [
                {"name": "client", "containerPort": ETCD_CLIENT_PORT},
                {"name": "peer", "containerPort": ETCD_PEER_PORT},
                {"name": "health", "containerPort": ETCD_HEALTH_PORT},
            ],
            "readinessProbe": {
                "httpGet": {"path": "/health", "port": ETCD_HEALTH_PORT},
                "periodSeconds": 1,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "httpGet": {"path": "/health", "port": ETCD_HEALTH_PORT},
                "initialDelaySeconds": 30,
                "periodSeconds": 10,
                "failureThreshold": 8,
            },
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
            "volumeMounts": [
                {"name": "data", "mountPath": DATA_DIR},
                {"name": "server-tls", "mountPath": SERVER_TLS},
                {"name": "peer-tls", "mountPath": PEER_TLS},
            ],
        }),
    );
    let volumes = vec![
        secret_volume("server-tls", ETCD_SERVER, &[]),
        secret_volume("peer-tls", ETCD_PEER, &[]),
    ];
    typed(
        "StatefulSet",
        names::ETCD,
        json!({
            "metadata": {"name": names::ETCD, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": {
                "replicas": inp.replicas(),
                "serviceName": names::ETCD_DISCOVERY,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": HostedInputs::app_labels(names::ETCD)},
                "updateStrategy": {"type": "RollingUpdate"},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
                "template": pod_template(inp, names::ETCD, config_hash, etcd, volumes),
                "volumeClaimTemplates": [claim],
            },
        }),
    )
}

fn service(inp: &HostedInputs, name: &str, spec: Value) -> Result<Service, SerializeError> {
    typed(
        "Service",
        name,
        json!({
            "metadata": {"name": name, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": spec,
        }),
    )
}

/// `etcd-discovery` (headless, members' names, ready or not) and
/// `etcd-client`.
pub fn services(inp: &HostedInputs) -> Result<Vec<Service>, SerializeError> {
    let selector = HostedInputs::app_labels(names::ETCD);
    Ok(vec![
        service(
            inp,
            names::ETCD_DISCOVERY,
            json!({
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": selector,
                "ports": [
                    {"name": "peer", "port": ETCD_PEER_PORT, "targetPort": ETCD_PEER_PORT},
                    {"name": "client", "port": ETCD_CLIENT_PORT, "targetPort": ETCD_CLIENT_PORT},
                ],
            }),
        )?,
        service(
            inp,
            names::ETCD_CLIENT,
            json!({
                "selector": selector,
                "ports": [{"name": "client", "port": ETCD_CLIENT_PORT, "targetPort": ETCD_CLIENT_PORT}],
            }),
        )?,
    ])
}

/// In HA, at most one member down by choice.
pub fn disruption_budget(
    inp: &HostedInputs,
) -> Result<Option<PodDisruptionBudget>, SerializeError> {
    if !inp.highly_available() {
        return Ok(None);
    }
    budget(inp, names::ETCD).map(Some)
}

/// A budget of one voluntary disruption for `app`'s pods.
pub(crate) fn budget(inp: &HostedInputs, app: &str) -> Result<PodDisruptionBudget, SerializeError> {
    typed(
        "PodDisruptionBudget",
        app,
        json!({
            "metadata": {"name": app, "namespace": inp.namespace, "labels": inp.labels()},
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": HostedInputs::app_labels(app)},
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_single_member_with_a_claim_deleted_with_it() {
        let inp = inputs(&hosted());
        let sts = statefulset(&inp, "h1").expect("sts");
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("etcd-discovery"));
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .as_ref()
                .and_then(|p| p.when_deleted.as_deref()),
            Some("Delete")
        );
        let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
        assert_eq!(
            claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone()),
            None
        );
        let pod = spec.template.spec.as_ref().expect("pod");
        // No anti-affinity for a single member: only the dedicated nodes'
        // preference.
        let affinity = pod.affinity.as_ref().expect("affinity");
        assert!(affinity.pod_anti_affinity.is_none() && affinity.node_affinity.is_some());
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.k8s.io/etcd:3.5.16-0"));
        let args = c.args.as_ref().expect("args");
        assert!(
            args.contains(
                &"--initial-cluster=etcd-0=https://etcd-0.etcd-discovery.clusters-guest1.svc:2380"
                    .to_string()
            )
        );
        assert!(args.contains(&"--listen-client-urls=https://$(POD_IP):2379".to_string()));
        assert!(disruption_budget(&inp).expect("pdb").is_none());
    }

    #[test]
    fn ha_has_three_spread_members_and_a_budget() {
        let inp = inputs(&ha(hosted()));
        assert_eq!(
            initial_cluster(&inp),
            "etcd-0=https://etcd-0.etcd-discovery.clusters-guest1.svc:2380,\
             etcd-1=https://etcd-1.etcd-discovery.clusters-guest1.svc:2380,\
             etcd-2=https://etcd-2.etcd-discovery.clusters-guest1.svc:2380"
        );
        let sts = statefulset(&inp, "h1").expect("sts");
        let pod = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod");
        let anti = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .expect("anti-affinity");
        assert_eq!(anti[0].topology_key, "kubernetes.io/hostname");
        assert!(disruption_budget(&inp).expect("pdb").is_some());
    }

    #[test]
    fn discovery_publishes_members_before_they_are_ready() {
        let svcs = services(&inputs(&hosted())).expect("services");
        let discovery = svcs[0].spec.as_ref().expect("spec");
        assert_eq!(discovery.cluster_ip.as_deref(), Some("None"));
        assert_eq!(discovery.publish_not_ready_addresses, Some(true));
        assert_eq!(svcs[1].metadata.name.as_deref(), Some("etcd-client"));
    }
}
