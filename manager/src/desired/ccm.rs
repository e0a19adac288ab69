//! The cloud controller manager of a hosted cluster, as HyperShift generates
//! it: the `kubevirt-cloud-controller-manager` Deployment, its
//! `kubevirt-cloud-config` ConfigMap and its account's Role on the infra
//! namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, PodSpec, Volume, VolumeMount};
use k8s_openapi::api::rbac::v1::PolicyRule;

use super::ClusterInputs;
use super::controlplane::{meta, rule};
use super::csi::{container, daemon_deployment, empty_dir, pod_ip_env, requests, secret_volume};
use crate::names;

const CLOUD_CONFIG_DIR: &str = "/etc/cloud";
const GUEST_KUBECONFIG_DIR: &str = "/etc/kubernetes/kubeconfig";
/// The guest token of a hosted cluster's CCM, next to its kubeconfig.
pub const GUEST_TOKEN_FILE: &str = "/etc/kubernetes/kubeconfig/token";
/// The CCM's ServiceAccount in a hosted guest, and its leader Lease.
pub const GUEST_ACCOUNT: &str = "cloud-controller-manager";
pub const GUEST_ACCOUNT_NAMESPACE: &str = "kube-system";
const INFRA_KUBECONFIG_DIR: &str = "/etc/kubernetes/infra-kubeconfig";
/// Where the CCM finds its infra token (external infra).
pub const INFRA_TOKEN_FILE: &str = "/etc/kubernetes/infra-kubeconfig/token";

/// The cloud config file as HyperShift writes it, plus
/// `enableEPSController` whenever infra Services are selectorless: a
/// selectorless infra Service has no endpoints until someone writes its
/// EndpointSlices, and the CCM's `kubevirt-eps` controller is what does
/// (only for the VMs hosting ready endpoints). Every value is a validated
/// DNS label or a fixed path, so no quoting is needed.
pub fn cloud_config_yaml(inp: &ClusterInputs) -> String {
    let kubeconfig = if inp.external_infra {
        format!("{INFRA_KUBECONFIG_DIR}/kubeconfig")
    } else {
        "\"\"".to_string()
    };
    format!(
        "kubeconfig: {kubeconfig}\n\
         loadBalancer:\n  \
           enabled: true\n  \
           creationPollInterval: 0\n  \
           selectorless: {selectorless}\n  \
           enableEPSController: {selectorless}\n\
         instancesV2:\n  \
           enabled: true\n  \
           zoneAndRegionEnabled: {zone}\n\
         namespace: {namespace}\n\
         infraLabels:\n  \
           {label}: {infra_id}\n",
        selectorless = inp.cloud.selectorless,
        zone = inp.cloud.zone_and_region_enabled,
        namespace = inp.infra_namespace,
        label = names::INFRA_ID_LABEL,
        infra_id = inp.infra_id,
    )
}

/// The `kubevirt-cloud-config` ConfigMap.
pub fn cloud_config(inp: &ClusterInputs) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            names::CCM_CLOUD_CONFIG,
            Some(&inp.control_plane_namespace),
            inp.owner_labels(),
        ),
        data: Some(BTreeMap::from([(
            names::CCM_CLOUD_CONFIG_KEY.to_string(),
            cloud_config_yaml(inp),
        )])),
        ..ConfigMap::default()
    }
}

/// Rules of the CCM's ClusterRole in a hosted guest (whose control plane
/// the manager runs, so it gives the CCM an identity of its own there):
/// those of `manifests/cloud-provider/guest/rbac.yaml`.
pub fn guest_cluster_role_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        rule(&[""], &["nodes/status"], &["patch"]),
        rule(&[""], &["services"], &["get", "list", "watch", "patch"]),
        rule(&[""], &["services/status"], &["patch"]),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["get", "list", "watch"],
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

/// Rules of the CCM's leader-election Role in `kube-system` of a hosted
/// guest: its own Lease only.
pub fn guest_leader_rules() -> Vec<PolicyRule> {
    let mut own = rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "list", "watch", "update"],
    );
    own.resource_names = Some(vec![GUEST_ACCOUNT.to_string()]);
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        own,
    ]
}

/// Rules of the CCM's Role on the infra namespace: HyperShift's, with the
/// Service verbs spelled out and the EndpointSlices the selectorless mode
/// mirrors (which the Go provider needs but does not ship).
pub fn infra_role_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["kubevirt.io"],
            &["virtualmachines"],
            &["get", "list", "watch"],
        ),
        rule(
            &["kubevirt.io"],
            &["virtualmachineinstances"],
            &["get", "list", "watch", "update"],
        ),
        rule(
            &[""],
            &["services"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &[
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
        ),
        rule(&[""], &["endpoints"], &["delete"]),
    ]
}

/// The CCM's arguments: HyperShift's, with `--cluster-name` = the infra id
/// (the `cluster.x-k8s.io/cluster-name` of the cluster's VMs), and its
/// health endpoint on the pod's address only.
pub fn args(inp: &ClusterInputs) -> Vec<String> {
    vec![
        "--cloud-provider=kubevirt".to_string(),
        format!(
            "--cloud-config={CLOUD_CONFIG_DIR}/{}",
            names::CCM_CLOUD_CONFIG_KEY
        ),
        format!("--kubeconfig={GUEST_KUBECONFIG_DIR}/kubeconfig"),
        "--authentication-skip-lookup".to_string(),
        format!("--cluster-name={}", inp.infra_id),
        "--bind-address=$(POD_IP)".to_string(),
    ]
}

/// The `kubevirt-cloud-controller-manager` Deployment.
pub fn deployment(inp: &ClusterInputs, config_hash: &str) -> Deployment {
    let mut mounts = vec![
        VolumeMount {
            name: "cloud-config".into(),
            mount_path: CLOUD_CONFIG_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "kubeconfig".into(),
            mount_path: GUEST_KUBECONFIG_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp-dir".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        secret_volume("kubeconfig", names::CCM_GUEST_KUBECONFIG),
        Volume {
            name: "cloud-config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::CCM_CLOUD_CONFIG.to_string(),
                default_mode: Some(0o644),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("tmp-dir"),
    ];
    if inp.external_infra {
        mounts.push(VolumeMount {
            name: "infra-kubeconfig".into(),
            mount_path: INFRA_KUBECONFIG_DIR.into(),
            ..Default::default()
        });
        volumes.push(secret_volume(
            "infra-kubeconfig",
            names::CCM_INFRA_KUBECONFIG,
        ));
    }
    let mut ccm = container("cloud-controller-manager", &inp.images.ccm, &[], mounts);
    ccm.args = Some(args(inp));
    ccm.env = Some(vec![pod_ip_env()]);
    ccm.resources = Some(requests("75m", "60Mi"));

    daemon_deployment(
        inp,
        names::CCM,
        names::CCM_APP_LABEL_VALUE,
        config_hash,
        Some("tmp-dir"),
        None,
        PodSpec {
            service_account_name: Some(names::CCM.to_string()),
            automount_service_account_token: Some(!inp.external_infra),
            containers: vec![ccm],
            volumes: Some(volumes),
            ..PodSpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CloudProviderOptions;
    use crate::desired::fixtures::*;

    #[test]
    fn cloud_config_is_hypershifts_with_the_endpoint_slice_controller() {
        assert_eq!(
            cloud_config_yaml(&inputs(&hosted_cluster())),
            "kubeconfig: \"\"\n\
             loadBalancer:\n  enabled: true\n  creationPollInterval: 0\n  selectorless: true\n  enableEPSController: true\n\
             instancesV2:\n  enabled: true\n  zoneAndRegionEnabled: false\n\
             namespace: clusters-guest1\n\
             infraLabels:\n  hypershift.openshift.io/infra-id: guest1-x7k2p\n"
        );
        assert_eq!(
            cloud_config_yaml(&inputs(&external(hosted_cluster()))),
            "kubeconfig: /etc/kubernetes/infra-kubeconfig/kubeconfig\n\
             loadBalancer:\n  enabled: true\n  creationPollInterval: 0\n  selectorless: true\n  enableEPSController: true\n\
             instancesV2:\n  enabled: true\n  zoneAndRegionEnabled: false\n\
             namespace: guest1-vms\n\
             infraLabels:\n  hypershift.openshift.io/infra-id: guest1-x7k2p\n"
        );
    }

    #[test]
    fn cloud_provider_options_reach_the_config() {
        let mut hc = hosted_cluster();
        hc.spec.platform.kubevirt.cloud_provider = Some(CloudProviderOptions {
            selectorless: false,
            zone_and_region_enabled: true,
        });
        let yaml = cloud_config_yaml(&inputs(&hc));
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
        assert_eq!(parsed["loadBalancer"]["selectorless"], false);
        assert_eq!(parsed["loadBalancer"]["enableEPSController"], false);
        assert_eq!(parsed["instancesV2"]["zoneAndRegionEnabled"], true);
        assert_eq!(parsed["kubeconfig"], "");
    }

    #[test]
    fn cloud_config_map_is_named_like_hypershifts() {
        let cm = cloud_config(&inputs(&hosted_cluster()));
        assert_eq!(cm.metadata.name.as_deref(), Some("kubevirt-cloud-config"));
        assert!(cm.data.expect("data").contains_key("cloud-config"));
    }

    #[test]
    fn a_hosted_guest_gives_the_ccm_the_rules_of_the_shipped_manifest() {
        let text = include_str!("../../../manifests/cloud-provider/guest/rbac.yaml");
        let mut roles = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml");
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            if kind == "ClusterRole" || kind == "Role" {
                let rules: Vec<PolicyRule> =
                    serde_yaml::from_value(value["rules"].clone()).expect("rules");
                roles.push((kind, rules));
            }
        }
        assert_eq!(
            roles,
            [
                ("ClusterRole".to_string(), guest_cluster_role_rules()),
                ("Role".to_string(), guest_leader_rules()),
            ]
        );
    }

    #[test]
    fn deployment_runs_the_ccm_with_hypershifts_args() {
        let d = deployment(&inputs(&hosted_cluster()), "h");
        assert_eq!(
            d.metadata.name.as_deref(),
            Some("kubevirt-cloud-controller-manager")
        );
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("kubevirt-cloud-controller-manager")
        );
        let c = &pod.containers[0];
        assert_eq!(c.name, "cloud-controller-manager");
        assert_eq!(
            c.image.as_deref(),
            Some("quay.io/kubevirt-rs/kubevirt-cloud-controller-manager:v0.1.0")
        );
        assert_eq!(
            c.args.clone().expect("args"),
            vec![
                "--cloud-provider=kubevirt",
                "--cloud-config=/etc/cloud/cloud-config",
                "--kubeconfig=/etc/kubernetes/kubeconfig/kubeconfig",
                "--authentication-skip-lookup",
                "--cluster-name=guest1-x7k2p",
                "--bind-address=$(POD_IP)",
            ]
        );
        let volumes = pod.volumes.expect("volumes");
        let secret = |name: &str| {
            volumes
                .iter()
                .find(|v| v.name == name)
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.clone())
        };
        assert_eq!(
            secret("kubeconfig").as_deref(),
            Some("service-network-admin-kubeconfig")
        );
        assert_eq!(secret("infra-kubeconfig"), None);
        let cm = volumes
            .iter()
            .find(|v| v.name == "cloud-config")
            .and_then(|v| v.config_map.clone())
            .expect("cm");
        assert_eq!(cm.name, "kubevirt-cloud-config");

        let ext = deployment(&inputs(&external(hosted_cluster())), "h");
        let pod = ext.spec.and_then(|s| s.template.spec).expect("pod");
        assert!(
            pod.containers[0]
                .volume_mounts
                .as_ref()
                .expect("mounts")
                .iter()
                .any(|m| m.name == "infra-kubeconfig"
                    && m.mount_path == "/etc/kubernetes/infra-kubeconfig")
        );
        assert!(
            pod.volumes
                .expect("volumes")
                .iter()
                .any(|v| v.name == "infra-kubeconfig"
                    && v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                        == Some("kubevirt-cloud-controller-manager-infra-kubeconfig"))
        );
    }

    #[test]
    fn role_allows_services_and_endpointslices_only_in_infra() {
        let rules = infra_role_rules();
        assert!(rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"services".to_string()))
                && r.verbs.contains(&"create".to_string())
        }));
        assert!(rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"endpointslices".to_string()))
        }));
        assert!(rules.iter().all(|r| !r.verbs.contains(&"*".to_string())));
    }
}
