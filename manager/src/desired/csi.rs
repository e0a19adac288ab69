//! The CSI controller of a hosted cluster, as HyperShift generates it: the
//! `kubevirt-csi-controller` Deployment (driver + sidecars) in the
//! control-plane namespace, its `driver-config` ConfigMap (infra namespace,
//! infra labels, storage class enforcement) and the `kubevirt-csi` account's
//! Role on the infra namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::ClusterInputs;
use super::controlplane::{meta, rule};
use crate::api::{ManualStorageDriverConfig, StorageDriverType};
use crate::names;

/// Where the driver and its sidecars share the CSI socket.
const SOCKET_DIR: &str = "/var/lib/csi/sockets/pluginproxy/";
const TENANT_KUBECONFIG_DIR: &str = "/var/run/secrets/tenantcluster";
const INFRA_KUBECONFIG_DIR: &str = "/var/run/secrets/infracluster";
/// Where the driver finds its infra token (external infra).
pub const INFRA_TOKEN_FILE: &str = "/var/run/secrets/infracluster/token";
/// The guest token of a hosted cluster's CSI controller, next to its kubeconfig.
pub const TENANT_TOKEN_FILE: &str = "/var/run/secrets/tenantcluster/token";
/// Annotation with the hash of the configuration the pods read at start.
pub const CONFIG_HASH_ANNOTATION: &str = "hcp.kubevirt-rs.io/config-hash";

// === driver-config ===

/// `infraStorageClassEnforcement` as the CSI driver reads it.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Enforcement {
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_default: Option<bool>,
    allow_all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_snapshot_mapping: Option<Vec<StorageSnapshotMapping>>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct StorageSnapshotMapping {
    storage_classes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volume_snapshot_classes: Vec<String>,
}

/// The storage class enforcement YAML of a storage driver type. `Default`
/// (and `None`) allow only the infra default class; `Manual` allows the
/// mapped infra classes and groups them with their snapshot classes
/// (groups sorted by name, classes sorted within a group; snapshot classes
/// of a group without storage classes form their own entries), as
/// HyperShift does.
pub fn enforcement_yaml(type_: StorageDriverType, manual: &ManualStorageDriverConfig) -> String {
    let enforcement = match type_ {
        StorageDriverType::Default => Enforcement {
            allow_default: Some(true),
            allow_all: false,
            allow_list: None,
            storage_snapshot_mapping: None,
        },
        StorageDriverType::None => Enforcement {
            allow_default: Some(false),
            allow_all: false,
            allow_list: None,
            storage_snapshot_mapping: None,
        },
        StorageDriverType::Manual => {
            let mut storage: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            let mut snapshots: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for m in &manual.storage_class_mapping {
                storage
                    .entry(&m.group)
                    .or_default()
                    .push(m.infra_storage_class_name.clone());
            }
            for m in &manual.volume_snapshot_class_mapping {
                snapshots
                    .entry(&m.group)
                    .or_default()
                    .push(m.infra_volume_snapshot_class_name.clone());
            }
            let mut allow_list: Vec<String> = storage.values().flatten().cloned().collect();
            allow_list.sort();
            let mut mapping = Vec::new();
            for (group, mut classes) in storage {
                classes.sort();
                let mut snaps = snapshots.remove(group).unwrap_or_default();
                snaps.sort();
                mapping.push(StorageSnapshotMapping {
                    storage_classes: classes,
                    volume_snapshot_classes: snaps,
                });
            }
            for (_, mut snaps) in snapshots {
                snaps.sort();
                mapping.push(StorageSnapshotMapping {
                    storage_classes: Vec::new(),
                    volume_snapshot_classes: snaps,
                });
            }
            Enforcement {
                allow_default: None,
                allow_all: false,
                allow_list: Some(allow_list),
                storage_snapshot_mapping: Some(mapping),
            }
        }
    };
    // Serializing plain strings, bools and lists cannot fail.
    serde_yaml::to_string(&enforcement).unwrap_or_default()
}

/// The `driver-config` ConfigMap in the control-plane namespace.
pub fn driver_config(inp: &ClusterInputs) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            names::CSI_DRIVER_CONFIG,
            Some(&inp.control_plane_namespace),
            inp.owner_labels(),
        ),
        data: Some(BTreeMap::from([
            (
                names::CSI_KEY_INFRA_NAMESPACE.to_string(),
                inp.infra_namespace.clone(),
            ),
            (
                names::CSI_KEY_INFRA_LABELS.to_string(),
                kubevirt_infra::labels::selector_string(&inp.infra_labels()),
            ),
            (
                names::CSI_KEY_ENFORCEMENT.to_string(),
                enforcement_yaml(inp.storage_type, &inp.manual_storage),
            ),
        ])),
        ..ConfigMap::default()
    }
}

// === infra RBAC ===

/// Rules of the `kubevirt-csi` Role on the infra namespace: HyperShift's,
/// plus `list`/`watch` where this driver waits by watching instead of
/// polling, `patch` on DataVolumes (the size a volume was expanded to) and
/// reading ResourceQuotas (GetCapacity).
pub fn infra_role_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["cdi.kubevirt.io"],
            &["datavolumes"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &["kubevirt.io"],
            &["virtualmachineinstances", "virtualmachines"],
            &["get", "list", "watch"],
        ),
        rule(
            &["subresources.kubevirt.io"],
            &[
                "virtualmachineinstances/addvolume",
                "virtualmachineinstances/removevolume",
                "virtualmachines/addvolume",
                "virtualmachines/removevolume",
            ],
            &["update"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "patch"],
        ),
        rule(&[""], &["resourcequotas"], &["get", "list"]),
    ]
}

// === Deployment ===

/// `POD_IP`: the pod's address (`status.podIP`), for listening on it.
pub(crate) fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn env_from_config(name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names::CSI_DRIVER_CONFIG.to_string(),
                key: key.to_string(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

pub(crate) fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// A control-plane container: read-only root, logs as termination message.
pub(crate) fn container(
    name: &str,
    image: &str,
    args: &[&str],
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        volume_mounts: Some(mounts),
        resources: Some(requests("10m", "50Mi")),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// A single-replica Deployment `name` of one of the cluster's daemons in
/// its control-plane namespace: labelled for the cluster, selecting its
/// pods by `app`, their template annotated with `config_hash` (which rolls
/// them) and the emptyDirs `local_volumes` a cluster autoscaler may evict,
/// its pods replaced within a minute when their node is lost.
pub(crate) fn daemon_deployment(
    inp: &ClusterInputs,
    name: &str,
    app: &str,
    config_hash: &str,
    local_volumes: Option<&str>,
    strategy: Option<DeploymentStrategy>,
    mut pod: PodSpec,
) -> Deployment {
    // Placed as the control plane is: a daemon on a lost node comes back
    // elsewhere as quickly.
    pod.node_selector = inp.placement.node_selector();
    pod.tolerations
        .get_or_insert_with(Vec::new)
        .extend(inp.placement.tolerations());
    pod.affinity
        .get_or_insert_with(Default::default)
        .node_affinity = Some(inp.placement.node_affinity());
    let selector = BTreeMap::from([("app".to_string(), app.to_string())]);
    let mut pod_labels = inp.owner_labels();
    pod_labels.extend(selector.clone());
    let mut annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string())]);
    if let Some(volumes) = local_volumes {
        annotations.insert(
            "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes".to_string(),
            volumes.to_string(),
        );
    }
    Deployment {
        metadata: meta(name, Some(&inp.control_plane_namespace), inp.owner_labels()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

pub(crate) fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            default_mode: Some(0o640),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(crate) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The arguments of the `csi-driver` container, exactly as HyperShift
/// generates them (the values come from `driver-config` through the env),
/// plus `--infra-cluster-kubeconfig` for an external infra cluster.
pub fn controller_args(external_infra: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--endpoint=$(CSI_ENDPOINT)",
        "--infra-cluster-namespace=$(INFRACLUSTER_NAMESPACE)",
        "--tenant-cluster-kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
        "--infra-cluster-labels=$(INFRACLUSTER_LABELS)",
        "--run-node-service=false",
        "--run-controller-service=true",
        "--v=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if external_infra {
        args.push(format!(
            "--infra-cluster-kubeconfig={INFRA_KUBECONFIG_DIR}/kubeconfig"
        ));
    }
    args
}

/// The `kubevirt-csi-controller` Deployment. `config_hash` changes whenever
/// something the pods read only at start changes, which rolls them.
pub fn controller_deployment(inp: &ClusterInputs, config_hash: &str) -> Deployment {
    let common_mounts = || {
        vec![
            mount("socket-dir", SOCKET_DIR),
            mount("tenantcluster", TENANT_KUBECONFIG_DIR),
            mount("tmp-dir", "/tmp"),
        ]
    };
    let sidecar_mounts = || {
        vec![
            mount("socket-dir", "/csi"),
            mount("tenantcluster", TENANT_KUBECONFIG_DIR),
            mount("tmp-dir", "/tmp"),
        ]
    };

    let mut driver_mounts = common_mounts();
    if inp.external_infra {
        driver_mounts.push(mount("infracluster", INFRA_KUBECONFIG_DIR));
    }
    let mut driver = container("csi-driver", &inp.images.csi_driver, &[], driver_mounts);
    driver.args = Some(controller_args(inp.external_infra));
    driver.env = Some(vec![
        env(
            "CSI_ENDPOINT",
            "unix:///var/lib/csi/sockets/pluginproxy/csi.sock",
        ),
        EnvVar {
            name: "KUBE_NODE_NAME".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".to_string(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        env_from_config("INFRACLUSTER_NAMESPACE", names::CSI_KEY_INFRA_NAMESPACE),
        env_from_config("INFRACLUSTER_LABELS", names::CSI_KEY_INFRA_LABELS),
        env_from_config(
            "INFRA_STORAGE_CLASS_ENFORCEMENT",
            names::CSI_KEY_ENFORCEMENT,
        ),
    ]);
    driver.ports = Some(vec![ContainerPort {
        name: Some("healthz".to_string()),
        container_port: 10301,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }]);
    driver.liveness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_string()),
            port: IntOrString::String("healthz".to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(10),
        timeout_seconds: Some(3),
        period_seconds: Some(10),
        failure_threshold: Some(5),
        ..Probe::default()
    });

    let address_env = || {
        Some(vec![env(
            "ADDRESS",
            "/var/lib/csi/sockets/pluginproxy/csi.sock",
        )])
    };
    let mut provisioner = container(
        "csi-provisioner",
        &inp.images.csi_provisioner,
        &[
            "--csi-address=$(ADDRESS)",
            "--default-fstype=ext4",
            "--v=5",
            "--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
            "--timeout=3m",
            "--retry-interval-max=1m",
        ],
        common_mounts(),
    );
    provisioner.env = address_env();
    let mut attacher = container(
        "csi-attacher",
        &inp.images.csi_attacher,
        &[
            "--csi-address=$(ADDRESS)",
            "--v=5",
            "--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
            "--timeout=3m",
            "--retry-interval-max=1m",
        ],
        common_mounts(),
    );
    attacher.env = address_env();
    // Every component listens on its pod's address, not on all of them.
    let mut liveness = container(
        "csi-liveness-probe",
        &inp.images.csi_livenessprobe,
        &[
            "--csi-address=/csi/csi.sock",
            "--probe-timeout=3s",
            "--http-endpoint=$(POD_IP):10301",
        ],
        sidecar_mounts(),
    );
    liveness.env = Some(vec![pod_ip_env()]);
    let snapshotter = container(
        "csi-snapshotter",
        &inp.images.csi_snapshotter,
        &[
            "--v=5",
            "--csi-address=/csi/csi.sock",
            "--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
            "--timeout=3m",
        ],
        sidecar_mounts(),
    );
    let resizer = container(
        "csi-resizer",
        &inp.images.csi_resizer,
        &[
            "--v=5",
            "--csi-address=/csi/csi.sock",
            "--kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
            "--timeout=3m",
            "--handle-volume-inuse-error=false",
        ],
        sidecar_mounts(),
    );

    let mut containers = vec![driver, provisioner, attacher, liveness];
    if inp.snapshot_api {
        containers.push(snapshotter);
    }
    containers.push(resizer);

    let mut volumes = vec![
        empty_dir("socket-dir"),
        secret_volume("tenantcluster", names::CSI_TENANT_KUBECONFIG),
        empty_dir("tmp-dir"),
    ];
    if inp.external_infra {
        volumes.push(secret_volume("infracluster", names::CSI_INFRA_KUBECONFIG));
    }

    daemon_deployment(
        inp,
        names::CSI_CONTROLLER,
        names::CSI_APP_LABEL_VALUE,
        config_hash,
        Some("socket-dir,tmp-dir"),
        Some(DeploymentStrategy {
            type_: Some("Recreate".to_string()),
            rolling_update: None,
        }),
        PodSpec {
            service_account_name: Some(names::CSI_INFRA_SERVICE_ACCOUNT.to_string()),
            automount_service_account_token: Some(!inp.external_infra),
            containers,
            volumes: Some(volumes),
            ..PodSpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    fn container_named<'a>(d: &'a Deployment, name: &str) -> &'a Container {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == name))
            .unwrap_or_else(|| panic!("container {name}"))
    }

    #[test]
    fn default_enforcement_is_hypershifts() {
        assert_eq!(
            enforcement_yaml(StorageDriverType::Default, &Default::default()),
            "allowDefault: true\nallowAll: false\n"
        );
        assert_eq!(
            enforcement_yaml(StorageDriverType::None, &Default::default()),
            "allowDefault: false\nallowAll: false\n"
        );
    }

    #[test]
    fn manual_enforcement_groups_sorted_classes() {
        let inp = inputs(&manual(hosted_cluster()));
        let yaml = enforcement_yaml(inp.storage_type, &inp.manual_storage);
        assert_eq!(
            yaml,
            "allowAll: false\n\
             allowList:\n\
             - infra-hdd\n\
             - infra-nvme\n\
             - infra-ssd\n\
             storageSnapshotMapping:\n\
             - storageClasses:\n  \
               - infra-hdd\n\
             - storageClasses:\n  \
               - infra-nvme\n  \
               - infra-ssd\n  \
               volumeSnapshotClasses:\n  \
               - infra-ssd-snap\n\
             - storageClasses: []\n  \
               volumeSnapshotClasses:\n  \
               - infra-archive-snap\n"
        );
        // It is what the driver's parser reads.
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
        assert_eq!(parsed["allowList"][2], "infra-ssd");
    }

    #[test]
    fn driver_config_has_the_three_keys() {
        let cm = driver_config(&inputs(&hosted_cluster()));
        assert_eq!(cm.metadata.name.as_deref(), Some("driver-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("clusters-guest1"));
        let data = cm.data.expect("data");
        assert_eq!(data.len(), 3);
        assert_eq!(data["infraClusterNamespace"], "clusters-guest1");
        assert_eq!(
            data["infraClusterLabels"],
            "hypershift.openshift.io/infra-id=guest1-x7k2p"
        );
        assert_eq!(
            data["infraStorageClassEnforcement"],
            "allowDefault: true\nallowAll: false\n"
        );

        let ext = driver_config(&inputs(&external(hosted_cluster())));
        assert_eq!(
            ext.data.expect("data")["infraClusterNamespace"],
            "guest1-vms"
        );
    }

    #[test]
    fn without_the_snapshot_api_the_controller_runs_no_snapshotter() {
        let mut inp = inputs(&hosted_cluster());
        inp.snapshot_api = false;
        let d = controller_deployment(&inp, "h");
        let names: Vec<_> = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        assert!(!names.contains(&"csi-snapshotter".to_string()), "{names:?}");
        assert!(names.contains(&"csi-resizer".to_string()));
    }

    #[test]
    fn controller_runs_the_driver_with_hypershifts_args() {
        let d = controller_deployment(&inputs(&hosted_cluster()), "h1");
        assert_eq!(d.metadata.name.as_deref(), Some("kubevirt-csi-controller"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("clusters-guest1"));
        let driver = container_named(&d, "csi-driver");
        assert_eq!(
            driver.image.as_deref(),
            Some("quay.io/kubevirt-rs/kubevirt-csi-driver:v0.1.0")
        );
        assert_eq!(
            driver.args.clone().expect("args"),
            vec![
                "--endpoint=$(CSI_ENDPOINT)",
                "--infra-cluster-namespace=$(INFRACLUSTER_NAMESPACE)",
                "--tenant-cluster-kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
                "--infra-cluster-labels=$(INFRACLUSTER_LABELS)",
                "--run-node-service=false",
                "--run-controller-service=true",
                "--v=5",
            ]
        );
        let env: BTreeMap<_, _> = driver
            .env
            .clone()
            .expect("env")
            .into_iter()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    e.value_from
                        .and_then(|f| {
                            f.config_map_key_ref
                                .map(|r| format!("cm:{}:{}", r.name, r.key))
                        })
                        .unwrap_or_else(|| "field".into())
                });
                (e.name, v)
            })
            .collect();
        assert_eq!(
            env["CSI_ENDPOINT"],
            "unix:///var/lib/csi/sockets/pluginproxy/csi.sock"
        );
        assert_eq!(
            env["INFRACLUSTER_NAMESPACE"],
            "cm:driver-config:infraClusterNamespace"
        );
        assert_eq!(
            env["INFRACLUSTER_LABELS"],
            "cm:driver-config:infraClusterLabels"
        );
        assert_eq!(
            env["INFRA_STORAGE_CLASS_ENFORCEMENT"],
            "cm:driver-config:infraStorageClassEnforcement"
        );
        assert_eq!(env["KUBE_NODE_NAME"], "field");

        let names: Vec<_> = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "csi-driver",
                "csi-provisioner",
                "csi-attacher",
                "csi-liveness-probe",
                "csi-snapshotter",
                "csi-resizer"
            ]
        );
        let provisioner = container_named(&d, "csi-provisioner");
        assert!(
            provisioner
                .args
                .as_ref()
                .expect("args")
                .contains(&"--default-fstype=ext4".to_string())
        );
        assert!(
            provisioner
                .args
                .as_ref()
                .expect("args")
                .contains(&"--timeout=3m".to_string())
        );
        let liveness = container_named(&d, "csi-liveness-probe");
        assert!(
            liveness
                .args
                .as_ref()
                .expect("args")
                .contains(&"--http-endpoint=$(POD_IP):10301".to_string())
        );
        assert_eq!(
            liveness.env.as_ref().map(|e| e[0].name.as_str()),
            Some("POD_IP")
        );

        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod");
        assert_eq!(pod.service_account_name.as_deref(), Some("kubevirt-csi"));
        let volumes = pod.volumes.expect("volumes");
        let tenant = volumes
            .iter()
            .find(|v| v.name == "tenantcluster")
            .expect("tenant volume");
        assert_eq!(
            tenant
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("kubevirt-csi-controller-tenant-kubeconfig")
        );
        assert!(!volumes.iter().any(|v| v.name == "infracluster"));
        let annotations = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .expect("annotations");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], "h1");
    }

    #[test]
    fn daemons_are_placed_as_the_control_plane_and_leave_a_lost_node_within_a_minute() {
        let mut hc = hosted_cluster();
        hc.spec.node_selector = BTreeMap::from([("pool".into(), "control-planes".into())]);
        let d = controller_deployment(&inputs(&hc), "h1");
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.node_selector, Some(hc.spec.node_selector.clone()));
        let preferred = pod
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.preferred_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        assert_eq!(preferred.len(), 2);
        let tolerations = pod.tolerations.unwrap_or_default();
        assert!(tolerations.iter().any(|t| {
            t.key.as_deref() == Some("hypershift.openshift.io/cluster")
                && t.value.as_deref() == Some("clusters-guest1")
        }));
        let keys: Vec<_> = tolerations
            .iter()
            .filter(|t| {
                t.effect.as_deref() == Some("NoExecute")
                    && t.toleration_seconds == Some(super::super::LOST_NODE_TOLERATION_SECONDS)
            })
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/unreachable",
                "node.kubernetes.io/not-ready"
            ]
        );
    }

    #[test]
    fn external_infra_adds_the_infra_kubeconfig() {
        let d = controller_deployment(&inputs(&external(hosted_cluster())), "h1");
        let driver = container_named(&d, "csi-driver");
        assert_eq!(
            driver
                .args
                .as_ref()
                .and_then(|a| a.last())
                .map(String::as_str),
            Some("--infra-cluster-kubeconfig=/var/run/secrets/infracluster/kubeconfig")
        );
        assert!(
            driver.volume_mounts.as_ref().expect("mounts").iter().any(
                |m| m.name == "infracluster" && m.mount_path == "/var/run/secrets/infracluster"
            )
        );
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        let infra = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "infracluster")
            .expect("volume");
        assert_eq!(
            infra.secret.and_then(|s| s.secret_name).as_deref(),
            Some("kubevirt-csi-infra-kubeconfig")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn infra_role_covers_hotplug_and_datavolumes() {
        let rules = infra_role_rules();
        let has = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.api_groups
                    .as_ref()
                    .is_some_and(|g| g.iter().any(|x| x == group))
                    && r.resources
                        .as_ref()
                        .is_some_and(|rs| rs.iter().any(|x| x == resource))
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        assert!(has("cdi.kubevirt.io", "datavolumes", "create"));
        assert!(has("cdi.kubevirt.io", "datavolumes", "delete"));
        assert!(has(
            "subresources.kubevirt.io",
            "virtualmachines/addvolume",
            "update"
        ));
        assert!(has(
            "subresources.kubevirt.io",
            "virtualmachineinstances/removevolume",
            "update"
        ));
        assert!(has("kubevirt.io", "virtualmachineinstances", "watch"));
        assert!(has("snapshot.storage.k8s.io", "volumesnapshots", "create"));
        assert!(has("", "persistentvolumeclaims", "patch"));
        assert!(has("cdi.kubevirt.io", "datavolumes", "patch"));
        assert!(has("", "resourcequotas", "list"));
        assert!(!has("kubevirt.io", "virtualmachines", "delete"));
    }
}
