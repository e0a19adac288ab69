//! The VolumeSnapshot API of a hosted cluster, which the manager provides
//! as a cluster administrator would: the API's CRDs in the guest (as
//! external-snapshotter defines them) and the snapshot controller,
//! run in the control-plane namespace with the guest kubeconfig. An
//! external guest cluster is its owner's: there the API is only looked for
//! (`VolumeSnapshotsAvailable`).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, VolumeMount};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::ClusterInputs;
use super::controlplane::rule;
use super::csi::{container, daemon_deployment, requests, secret_volume};
use crate::names;

const KUBECONFIG_DIR: &str = "/var/run/secrets/tenantcluster";
/// Its guest token, next to its kubeconfig.
pub const GUEST_TOKEN_FILE: &str = "/var/run/secrets/tenantcluster/token";

/// Rules of the snapshot controller's ClusterRole in the guest: upstream's
/// `snapshot-controller-runner` (without the group snapshot API, which is
/// off).
pub fn guest_cluster_role_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["persistentvolumes"], &["get", "list", "watch"]),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "update"],
        ),
        rule(
            &[""],
            &["events"],
            &["list", "watch", "create", "update", "patch"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshotclasses"],
            &["get", "list", "watch"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshotcontents"],
            &[
                "create", "get", "list", "watch", "update", "delete", "patch",
            ],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshotcontents/status"],
            &["patch"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots"],
            &["get", "list", "watch", "update", "patch", "delete"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots/status"],
            &["update", "patch"],
        ),
    ]
}

/// Rules of its leader-election Role in the guest CSI namespace (upstream's
/// `snapshot-controller-leaderelection`).
pub fn guest_leader_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "watch", "list", "delete", "update", "create"],
    )]
}

/// The CRDs of `snapshot.storage.k8s.io/v1`.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, serde_yaml::Error> {
    kubevirt_infra::snapshot::CRDS
        .iter()
        .map(|yaml| serde_yaml::from_str(yaml))
        .collect()
}

/// The `csi-snapshot-controller` Deployment: the snapshot controller with
/// its guest kubeconfig (a token of its ServiceAccount there). `config_hash`
/// rolls it when that kubeconfig changes.
pub fn controller_deployment(inp: &ClusterInputs, config_hash: &str) -> Deployment {
    let mut controller = container(
        "snapshot-controller",
        &inp.images.snapshot_controller,
        &[
            "--v=2",
            "--leader-election=true",
            "--leader-election-namespace=kubevirt-csi-driver",
            "--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
        ],
        vec![VolumeMount {
            name: "tenantcluster".to_string(),
            mount_path: KUBECONFIG_DIR.to_string(),
            ..VolumeMount::default()
        }],
    );
    controller.resources = Some(requests("10m", "30Mi"));
    daemon_deployment(
        inp,
        names::SNAPSHOT_CONTROLLER,
        names::SNAPSHOT_CONTROLLER,
        config_hash,
        None,
        None,
        PodSpec {
            // It talks to the guest only.
            automount_service_account_token: Some(false),
            containers: vec![controller],
            volumes: Some(vec![secret_volume(
                "tenantcluster",
                names::SNAPSHOT_CONTROLLER_KUBECONFIG,
            )]),
            ..PodSpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn the_crds_are_the_snapshot_api() {
        let crds = crds().expect("parse");
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "volumesnapshotclasses.snapshot.storage.k8s.io",
                "volumesnapshotcontents.snapshot.storage.k8s.io",
                "volumesnapshots.snapshot.storage.k8s.io"
            ]
        );
        assert!(crds.iter().all(|c| c.spec.versions[0].name == "v1"));
    }

    #[test]
    fn the_controller_runs_with_the_guest_kubeconfig_only() {
        let d = controller_deployment(&inputs(&hosted_cluster()), "h");
        assert_eq!(d.metadata.name.as_deref(), Some("csi-snapshot-controller"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("clusters-guest1"));
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.k8s.io/sig-storage/snapshot-controller:v8.2.1")
        );
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .contains(&"--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig".to_string())
        );
        assert_eq!(
            pod.volumes.expect("volumes")[0]
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("csi-snapshot-controller-kubeconfig")
        );
    }
}
