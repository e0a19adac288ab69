//! What the manager puts into a guest cluster (through its kubeconfig) when
//! the CSI driver is deployed: the `kubevirt-csi-driver` namespace, the
//! node and controller ServiceAccounts and ClusterRoles, the
//! `kubevirt-csi-node` DaemonSet, the `csi.kubevirt.io` CSIDriver, and the
//! StorageClasses and VolumeSnapshotClasses of the storage driver type.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    HostPathVolumeSource, Lifecycle, LifecycleHandler, Namespace, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubevirt_infra::labels::CSI_DRIVER_NAME;
use kubevirt_infra::snapshot::VolumeSnapshotClass;

use super::ClusterInputs;
use super::controlplane::{meta, rule};
use super::csi::requests;
use crate::api::StorageDriverType;
use crate::names;

/// The guest namespace of the CSI node plugin.
pub fn namespace(inp: &ClusterInputs) -> Namespace {
    Namespace {
        metadata: meta(names::GUEST_CSI_NAMESPACE, None, inp.owner_labels()),
        ..Namespace::default()
    }
}

/// Rules of `kubevirt-csi-node-cr` (HyperShift's, without OpenShift's SCC
/// rule when the guest is not OpenShift: the rule is harmless, so it stays).
pub fn node_cluster_role_rules() -> Vec<PolicyRule> {
    let mut scc = rule(
        &["security.openshift.io"],
        &["securitycontextconstraints"],
        &["use"],
    );
    scc.resource_names = Some(vec!["privileged".to_string()]);
    vec![
        rule(
            &[""],
            &["persistentvolumes"],
            &[
                "get", "list", "watch", "update", "create", "delete", "patch",
            ],
        ),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["storageclasses"],
            &["get", "list", "watch"],
        ),
        rule(
            &[""],
            &["nodes"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["csi.storage.k8s.io"],
            &["csinodeinfos"],
            &["get", "list", "watch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["csinodes"],
            &["get", "list", "watch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments/status"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &[""],
            &["events"],
            &["list", "watch", "create", "update", "patch"],
        ),
        scc,
    ]
}

/// Rules of `kubevirt-csi-controller-cr`: what the controller's sidecars do
/// in the guest.
pub fn controller_cluster_role_rules() -> Vec<PolicyRule> {
    let mut scc = rule(
        &["security.openshift.io"],
        &["securitycontextconstraints"],
        &["use"],
    );
    scc.resource_names = Some(vec!["privileged".to_string()]);
    vec![
        rule(
            &[""],
            &["persistentvolumes"],
            &[
                "create", "delete", "get", "list", "watch", "update", "patch",
            ],
        ),
        rule(&[""], &["secrets"], &["get", "list"]),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &[""],
            &["persistentvolumeclaims/status"],
            &["update", "patch"],
        ),
        rule(&[""], &["nodes"], &["get", "list", "watch"]),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["storageclasses"],
            &["get", "list", "watch"],
        ),
        rule(
            &["csi.storage.k8s.io"],
            &["csidrivers"],
            &["get", "list", "watch", "update", "create", "patch"],
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
            &["update", "patch"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots/status"],
            &["update"],
        ),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments/status"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["csinodes"],
            &["get", "list", "watch"],
        ),
        scc,
    ]
}

/// A ClusterRole.
pub fn cluster_role(inp: &ClusterInputs, name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, None, inp.owner_labels()),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// A ClusterRoleBinding of ClusterRole `role` to ServiceAccount
/// `account_namespace/account`.
pub fn cluster_role_binding(
    inp: &ClusterInputs,
    name: &str,
    role: &str,
    account: &str,
    account_namespace: &str,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None, inp.owner_labels()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: role.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: account.to_string(),
            namespace: Some(account_namespace.to_string()),
            ..Subject::default()
        }]),
    }
}

/// The `csi.kubevirt.io` CSIDriver object.
pub fn csi_driver(inp: &ClusterInputs) -> CSIDriver {
    CSIDriver {
        metadata: meta(CSI_DRIVER_NAME, None, inp.owner_labels()),
        spec: CSIDriverSpec {
            attach_required: Some(true),
            pod_info_on_mount: Some(true),
            fs_group_policy: Some("ReadWriteOnceWithFSType".to_string()),
            ..CSIDriverSpec::default()
        },
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(type_.to_string()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

fn node_container(name: &str, image: &str, args: &[&str], mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        volume_mounts: Some(mounts),
        resources: Some(requests("10m", "50Mi")),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// The `kubevirt-csi-node` DaemonSet (HyperShift's, with our images).
pub fn node_daemonset(inp: &ClusterInputs) -> DaemonSet {
    let app = BTreeMap::from([("app".to_string(), names::CSI_APP_LABEL_VALUE.to_string())]);
    let mut pod_labels = inp.owner_labels();
    pod_labels.extend(app.clone());

    let mut mount_kubelet = mount("kubelet-dir", "/var/lib/kubelet");
    mount_kubelet.mount_propagation = Some("Bidirectional".to_string());
    let mut driver = node_container(
        "csi-driver",
        &inp.images.csi_driver,
        &[
            "--endpoint=unix:/csi/csi.sock",
            "--node-name=$(KUBE_NODE_NAME)",
            "--run-node-service=true",
            "--run-controller-service=false",
            "--v=5",
        ],
        vec![
            mount_kubelet,
            mount("plugin-dir", "/csi"),
            mount("device-dir", "/dev"),
            mount("udev", "/run/udev"),
        ],
    );
    driver.security_context = Some(SecurityContext {
        privileged: Some(true),
        allow_privilege_escalation: Some(true),
        ..Default::default()
    });
    driver.env = Some(vec![EnvVar {
        name: "KUBE_NODE_NAME".to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }]);
    driver.ports = Some(vec![ContainerPort {
        name: Some("healthz".to_string()),
        container_port: 10300,
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
        success_threshold: Some(1),
        ..Probe::default()
    });

    let mut registrar = node_container(
        "csi-node-driver-registrar",
        &inp.images.csi_node_driver_registrar,
        &[
            "--csi-address=$(ADDRESS)",
            "--kubelet-registration-path=$(DRIVER_REG_SOCK_PATH)",
            "--v=5",
        ],
        vec![
            mount("plugin-dir", "/csi"),
            mount("registration-dir", "/registration"),
        ],
    );
    registrar.security_context = Some(SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    registrar.resources = Some(requests("5m", "20Mi"));
    registrar.env = Some(vec![
        EnvVar {
            name: "ADDRESS".into(),
            value: Some("/csi/csi.sock".into()),
            value_from: None,
        },
        EnvVar {
            name: "DRIVER_REG_SOCK_PATH".into(),
            value: Some(format!(
                "/var/lib/kubelet/plugins/{CSI_DRIVER_NAME}/csi.sock"
            )),
            value_from: None,
        },
    ]);
    registrar.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("rm -rf /registration/{CSI_DRIVER_NAME}-reg.sock /csi/csi.sock"),
                ]),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });

    let mut liveness = node_container(
        "csi-liveness-probe",
        &inp.images.csi_livenessprobe,
        &[
            "--csi-address=/csi/csi.sock",
            "--probe-timeout=3s",
            "--health-port=10300",
        ],
        vec![mount("plugin-dir", "/csi")],
    );
    liveness.resources = Some(requests("5m", "20Mi"));

    DaemonSet {
        metadata: meta(
            names::GUEST_CSI_NODE,
            Some(names::GUEST_CSI_NAMESPACE),
            inp.owner_labels(),
        ),
        spec: Some(DaemonSetSpec {
            revision_history_limit: Some(10),
            selector: LabelSelector {
                match_labels: Some(app),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::String("10%".to_string())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        "openshift.io/required-scc".to_string(),
                        "privileged".to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    priority_class_name: Some("system-node-critical".to_string()),
                    service_account_name: Some(names::GUEST_CSI_NODE_SA.to_string()),
                    termination_grace_period_seconds: Some(30),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_string()),
                        ..Toleration::default()
                    }]),
                    containers: vec![driver, registrar, liveness],
                    volumes: Some(vec![
                        host_path("kubelet-dir", "/var/lib/kubelet", "Directory"),
                        host_path(
                            "plugin-dir",
                            &format!("/var/lib/kubelet/plugins/{CSI_DRIVER_NAME}/"),
                            "DirectoryOrCreate",
                        ),
                        host_path(
                            "registration-dir",
                            "/var/lib/kubelet/plugins_registry/",
                            "Directory",
                        ),
                        host_path("device-dir", "/dev", "Directory"),
                        host_path("udev", "/run/udev", ""),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

/// A guest StorageClass of this driver; `infra_class` is the
/// `infraStorageClassName` parameter (absent for the Default class).
/// `live_default_annotation` is the live class's `is-default-class`
/// annotation: a user's choice other than ours is left alone, as HyperShift does.
pub fn storage_class(
    inp: &ClusterInputs,
    name: &str,
    infra_class: Option<&str>,
    default_class: bool,
    live_default_annotation: Option<&str>,
) -> StorageClass {
    let mut metadata = meta(name, None, inp.owner_labels());
    if default_class && live_default_annotation.is_none_or(|v| v == "true") {
        metadata.annotations = Some(BTreeMap::from([(
            names::IS_DEFAULT_CLASS_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
    }
    let mut parameters = BTreeMap::from([("bus".to_string(), "scsi".to_string())]);
    if let Some(infra) = infra_class {
        parameters.insert("infraStorageClassName".to_string(), infra.to_string());
    }
    StorageClass {
        metadata,
        provisioner: CSI_DRIVER_NAME.to_string(),
        parameters: Some(parameters),
        allow_volume_expansion: Some(true),
        reclaim_policy: Some("Delete".to_string()),
        volume_binding_mode: Some("Immediate".to_string()),
        ..StorageClass::default()
    }
}

/// The guest StorageClasses of the storage driver type.
pub fn storage_classes(
    inp: &ClusterInputs,
    live_default_annotation: Option<&str>,
) -> Vec<StorageClass> {
    match inp.storage_type {
        StorageDriverType::None => Vec::new(),
        StorageDriverType::Default => {
            vec![storage_class(
                inp,
                names::DEFAULT_STORAGE_CLASS,
                None,
                true,
                live_default_annotation,
            )]
        }
        StorageDriverType::Manual => inp
            .manual_storage
            .storage_class_mapping
            .iter()
            .map(|m| {
                storage_class(
                    inp,
                    &m.guest_storage_class_name,
                    Some(&m.infra_storage_class_name),
                    false,
                    None,
                )
            })
            .collect(),
    }
}

/// A guest VolumeSnapshotClass of this driver.
pub fn snapshot_class(
    inp: &ClusterInputs,
    name: &str,
    infra_class: Option<&str>,
) -> VolumeSnapshotClass {
    let mut vsc = VolumeSnapshotClass::new(name, CSI_DRIVER_NAME, "Delete");
    vsc.metadata.labels = Some(inp.owner_labels());
    if let Some(infra) = infra_class {
        vsc.parameters
            .insert("infraSnapshotClassName".to_string(), infra.to_string());
    }
    vsc
}

/// The guest VolumeSnapshotClasses of the storage driver type.
pub fn snapshot_classes(inp: &ClusterInputs) -> Vec<VolumeSnapshotClass> {
    match inp.storage_type {
        StorageDriverType::None => Vec::new(),
        StorageDriverType::Default => {
            vec![snapshot_class(inp, names::DEFAULT_SNAPSHOT_CLASS, None)]
        }
        StorageDriverType::Manual => inp
            .manual_storage
            .volume_snapshot_class_mapping
            .iter()
            .map(|m| {
                snapshot_class(
                    inp,
                    &m.guest_volume_snapshot_class_name,
                    Some(&m.infra_volume_snapshot_class_name),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn csi_driver_object_matches_the_contract() {
        let d = csi_driver(&inputs(&hosted_cluster()));
        assert_eq!(d.metadata.name.as_deref(), Some("csi.kubevirt.io"));
        assert_eq!(d.spec.attach_required, Some(true));
        assert_eq!(d.spec.pod_info_on_mount, Some(true));
        assert_eq!(
            d.spec.fs_group_policy.as_deref(),
            Some("ReadWriteOnceWithFSType")
        );
    }

    #[test]
    fn default_storage_class_is_the_default_class() {
        let inp = inputs(&hosted_cluster());
        let classes = storage_classes(&inp, None);
        assert_eq!(classes.len(), 1);
        let sc = &classes[0];
        assert_eq!(
            sc.metadata.name.as_deref(),
            Some("kubevirt-csi-infra-default")
        );
        assert_eq!(sc.provisioner, "csi.kubevirt.io");
        assert_eq!(sc.allow_volume_expansion, Some(true));
        let params = sc.parameters.clone().expect("parameters");
        assert_eq!(
            params,
            BTreeMap::from([("bus".to_string(), "scsi".to_string())])
        );
        assert_eq!(
            sc.metadata.annotations.as_ref().expect("annotations")["storageclass.kubernetes.io/is-default-class"],
            "true"
        );
        // A user who set it to "false" keeps that choice.
        let kept = storage_classes(&inp, Some("false"));
        assert!(kept[0].metadata.annotations.is_none());

        let snaps = snapshot_classes(&inp);
        assert_eq!(snaps.len(), 1);
        assert_eq!(
            snaps[0].metadata.name.as_deref(),
            Some("kubevirt-csi-snapshot")
        );
        assert_eq!(snaps[0].driver, "csi.kubevirt.io");
        assert_eq!(snaps[0].deletion_policy, "Delete");
        assert!(snaps[0].parameters.is_empty());
    }

    #[test]
    fn manual_mapping_makes_one_class_per_mapping() {
        let inp = inputs(&manual(hosted_cluster()));
        let classes = storage_classes(&inp, None);
        let got: Vec<_> = classes
            .iter()
            .map(|sc| {
                let p = sc.parameters.clone().expect("parameters");
                (
                    sc.metadata.name.clone().expect("name"),
                    p["infraStorageClassName"].clone(),
                    p["bus"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "ssd".to_string(),
                    "infra-ssd".to_string(),
                    "scsi".to_string()
                ),
                (
                    "nvme".to_string(),
                    "infra-nvme".to_string(),
                    "scsi".to_string()
                ),
                (
                    "hdd".to_string(),
                    "infra-hdd".to_string(),
                    "scsi".to_string()
                ),
            ]
        );
        assert!(classes.iter().all(|sc| sc.metadata.annotations.is_none()));
        let snaps = snapshot_classes(&inp);
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].metadata.name.as_deref(), Some("ssd-snap"));
        assert_eq!(
            snaps[0].parameters["infraSnapshotClassName"],
            "infra-ssd-snap"
        );
    }

    #[test]
    fn none_makes_no_classes() {
        let mut hc = hosted_cluster();
        hc.spec.platform.kubevirt.storage_driver = Some(crate::api::StorageDriverSpec {
            type_: StorageDriverType::None,
            manual: None,
        });
        let inp = inputs(&hc);
        assert!(storage_classes(&inp, None).is_empty());
        assert!(snapshot_classes(&inp).is_empty());
    }

    #[test]
    fn node_daemonset_runs_the_node_plugin() {
        let ds = node_daemonset(&inputs(&hosted_cluster()));
        assert_eq!(ds.metadata.name.as_deref(), Some("kubevirt-csi-node"));
        assert_eq!(
            ds.metadata.namespace.as_deref(),
            Some("kubevirt-csi-driver")
        );
        let pod = ds.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("kubevirt-csi-node-sa")
        );
        let driver = &pod.containers[0];
        assert_eq!(
            driver.image.as_deref(),
            Some("quay.io/kubevirt-rs/kubevirt-csi-driver:v0.1.0")
        );
        assert_eq!(
            driver.args.clone().expect("args"),
            vec![
                "--endpoint=unix:/csi/csi.sock",
                "--node-name=$(KUBE_NODE_NAME)",
                "--run-node-service=true",
                "--run-controller-service=false",
                "--v=5",
            ]
        );
        assert_eq!(
            driver.security_context.as_ref().and_then(|s| s.privileged),
            Some(true)
        );
        let kubelet = driver
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.name == "kubelet-dir")
            .expect("kubelet");
        assert_eq!(kubelet.mount_propagation.as_deref(), Some("Bidirectional"));
        let registrar = &pod.containers[1];
        let reg_env = registrar.env.clone().expect("env");
        assert!(reg_env.iter().any(|e| e.name == "DRIVER_REG_SOCK_PATH"
            && e.value.as_deref() == Some("/var/lib/kubelet/plugins/csi.kubevirt.io/csi.sock")));
        let liveness = &pod.containers[2];
        assert!(
            liveness
                .args
                .as_ref()
                .expect("args")
                .contains(&"--health-port=10300".to_string())
        );
    }

    #[test]
    fn bindings_name_accounts_in_the_guest_namespace() {
        let inp = inputs(&hosted_cluster());
        let b = cluster_role_binding(
            &inp,
            names::GUEST_CSI_NODE_BINDING,
            names::GUEST_CSI_NODE_CLUSTER_ROLE,
            names::GUEST_CSI_NODE_SA,
            names::GUEST_CSI_NAMESPACE,
        );
        assert_eq!(
            b.metadata.name.as_deref(),
            Some("kubevirt-csi-node-binding")
        );
        assert_eq!(b.role_ref.name, "kubevirt-csi-node-cr");
        let s = &b.subjects.expect("subjects")[0];
        assert_eq!(
            (s.name.as_str(), s.namespace.as_deref()),
            ("kubevirt-csi-node-sa", Some("kubevirt-csi-driver"))
        );
        assert!(node_cluster_role_rules().iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"nodes".into()))
        }));
        assert!(controller_cluster_role_rules().iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"volumesnapshotcontents".into()))
        }));
    }
}
