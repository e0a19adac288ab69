//! Pure "HostedCluster -> desired objects" functions. Nothing here does I/O:
//! every function takes the resolved [`ClusterInputs`] and returns typed
//! objects, which [`object::Object`] erases for the apply layer.
//!
//! - [`controlplane`]: the control-plane namespace, labels, kubeconfig Secrets
//! - [`csi`]: the CSI controller Deployment, `driver-config`, infra RBAC
//! - [`ccm`]: the cloud controller manager Deployment, cloud config, infra RBAC
//! - [`guest`]: what goes into the guest cluster (CSIDriver, node DaemonSet,
//!   RBAC, StorageClasses, VolumeSnapshotClasses)
//! - [`kubeconfig`]: token kubeconfigs for the daemons' external-infra accounts
//! - [`vm`]: NodePool -> VirtualMachine, template hash, boot image cache
//! - [`join`]: how NodePool VMs join a hosted control plane (kubeadm's objects,
//!   bootstrap tokens, cloud-init user data)
//! - [`sets`]: the complete object sets of one cluster, per target cluster

pub mod ccm;
pub mod controlplane;
pub mod csi;
pub mod guest;
pub mod hosted;
pub mod join;
pub mod kubeconfig;
pub mod object;
pub mod sets;
pub mod snapshots;
pub mod vm;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm, Toleration,
};

use crate::api::{
    CloudProviderOptions, HostedCluster, ManualStorageDriverConfig, StorageDriverType,
};
use crate::names;

/// Container images of one hosted cluster's components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub csi_driver: String,
    pub ccm: String,
    pub csi_provisioner: String,
    pub csi_attacher: String,
    pub csi_resizer: String,
    pub csi_snapshotter: String,
    pub csi_node_driver_registrar: String,
    pub csi_livenessprobe: String,
    pub snapshot_controller: String,
}

/// Where images come from (the manager's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    /// Registry of the suite's images: `<registry>/kubevirt-csi-driver:<version>`.
    pub registry: String,
    /// Full image of the CSI driver, used as is for every version.
    pub csi_override: Option<String>,
    /// Full image of the cloud controller manager, used as is for every version.
    pub ccm_override: Option<String>,
    /// Registry of the Kubernetes CSI sidecars.
    pub sidecar_registry: String,
    /// Registry of the hosted control planes' images (etcd, kube-apiserver, ...).
    pub control_plane_registry: String,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            registry: "quay.io/kubevirt-rs".to_string(),
            csi_override: None,
            ccm_override: None,
            sidecar_registry: "registry.k8s.io/sig-storage".to_string(),
            control_plane_registry: "registry.k8s.io".to_string(),
        }
    }
}

impl ImageConfig {
    /// The images of suite version `version`.
    pub fn images(&self, version: &str) -> Images {
        let tag = if version.starts_with('v') {
            version.to_string()
        } else {
            format!("v{version}")
        };
        let suite = |name: &str| format!("{}/{name}:{tag}", self.registry.trim_end_matches('/'));
        let sidecar = |name: &str, v: &str| {
            format!("{}/{name}:{v}", self.sidecar_registry.trim_end_matches('/'))
        };
        Images {
            csi_driver: self
                .csi_override
                .clone()
                .unwrap_or_else(|| suite("kubevirt-csi-driver")),
            ccm: self
                .ccm_override
                .clone()
                .unwrap_or_else(|| suite("kubevirt-cloud-controller-manager")),
            csi_provisioner: sidecar("csi-provisioner", "v5.2.0"),
            csi_attacher: sidecar("csi-attacher", "v4.8.1"),
            csi_resizer: sidecar("csi-resizer", "v1.13.2"),
            csi_snapshotter: sidecar("csi-snapshotter", "v8.2.1"),
            csi_node_driver_registrar: sidecar("csi-node-driver-registrar", "v2.13.0"),
            csi_livenessprobe: sidecar("livenessprobe", "v2.15.0"),
            snapshot_controller: sidecar("snapshot-controller", "v8.2.1"),
        }
    }
}

/// Everything the desired-object functions need about one hosted cluster,
/// resolved from its spec, the manager's configuration and its Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInputs {
    pub hc_namespace: String,
    pub hc_name: String,
    pub infra_id: String,
    pub version: String,
    /// `<hc namespace>-<hc name>` on the management cluster.
    pub control_plane_namespace: String,
    /// Where VMs and volumes live: the control-plane namespace, or the
    /// external infra namespace.
    pub infra_namespace: String,
    /// The infra is another cluster (reached with `credentials`).
    pub external_infra: bool,
    pub storage_type: StorageDriverType,
    pub manual_storage: ManualStorageDriverConfig,
    pub cloud: CloudProviderOptions,
    pub images: Images,
    /// The guest kubeconfig (admin), copied for the daemons.
    pub guest_kubeconfig: Vec<u8>,
    /// The guest serves the VolumeSnapshot API: the CSI controller runs
    /// csi-snapshotter (which exits at start when the API is missing).
    pub snapshot_api: bool,
    /// The manager hosts the cluster's control plane (and so provides its
    /// VolumeSnapshot API, and identities of their own to the daemons there).
    pub hosted: bool,
    /// A hosted guest's endpoint, for the daemons' token kubeconfigs.
    pub guest_endpoint: Option<kubeconfig::ClusterEndpoint>,
    /// Where the daemons' pods run.
    pub placement: Placement,
}

impl ClusterInputs {
    /// Resolve the inputs of `hc`; `guest_kubeconfig` is the content of its
    /// kubeconfig Secret key.
    pub fn new(hc: &HostedCluster, images: &ImageConfig, guest_kubeconfig: Vec<u8>) -> Self {
        let hc_namespace = hc.metadata.namespace.clone().unwrap_or_default();
        let hc_name = hc.metadata.name.clone().unwrap_or_default();
        let control_plane_namespace = names::control_plane_namespace(&hc_namespace, &hc_name);
        let external = hc.external_infra();
        Self {
            infra_id: hc.spec.infra_id.clone(),
            version: hc.spec.release.version.clone(),
            infra_namespace: external
                .map(|c| c.infra_namespace.clone())
                .unwrap_or_else(|| control_plane_namespace.clone()),
            external_infra: external.is_some(),
            control_plane_namespace,
            storage_type: hc.storage_driver_type(),
            manual_storage: hc
                .spec
                .platform
                .kubevirt
                .storage_driver
                .as_ref()
                .and_then(|s| s.manual.clone())
                .unwrap_or_default(),
            cloud: hc.cloud_provider(),
            images: images.images(&hc.spec.release.version),
            guest_kubeconfig,
            snapshot_api: true,
            hosted: hc.is_hosted(),
            guest_endpoint: None,
            placement: Placement::of(hc),
            hc_namespace,
            hc_name,
        }
    }

    /// Labels on every object the manager makes for this cluster.
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        owner_labels_of(&self.hc_namespace, &self.hc_name)
    }

    /// Label selector matching [`Self::owner_labels`].
    pub fn owner_selector(&self) -> String {
        kubevirt_infra::labels::selector_string(&self.owner_labels())
    }

    /// The infra labels of the daemons: `hypershift.openshift.io/infra-id=<id>`.
    pub fn infra_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(names::INFRA_ID_LABEL.to_string(), self.infra_id.clone())])
    }

    /// Whether the CSI driver is deployed at all.
    pub fn csi_enabled(&self) -> bool {
        self.storage_type != StorageDriverType::None
    }
}

/// Labels of the objects of HostedCluster `namespace/name`.
pub fn owner_labels_of(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::MANAGED_BY_LABEL.to_string(),
            names::FIELD_MANAGER.to_string(),
        ),
        (
            names::HOSTED_CLUSTER_NAMESPACE_LABEL.to_string(),
            namespace.to_string(),
        ),
        (
            names::HOSTED_CLUSTER_NAME_LABEL.to_string(),
            name.to_string(),
        ),
    ])
}

/// The selector of the objects of HostedCluster `namespace/name`.
pub fn owner_selector_of(namespace: &str, name: &str) -> String {
    kubevirt_infra::labels::selector_string(&owner_labels_of(namespace, name))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A HostedCluster and its inputs shared by the desired-object tests.

    use super::*;
    use crate::api::{
        HostedClusterSpec, KubevirtCredentials, Release, SecretKeyRef, StorageClassMapping,
        StorageDriverSpec, VolumeSnapshotClassMapping,
    };

    pub fn hosted_cluster() -> HostedCluster {
        let mut hc = HostedCluster::new(
            "guest1",
            HostedClusterSpec {
                release: Release {
                    version: "0.1.0".into(),
                    kubernetes_version: None,
                },
                infra_id: "guest1-x7k2p".into(),
                base_domain: None,
                kubeconfig: Some(SecretKeyRef {
                    name: "guest1-admin-kubeconfig".into(),
                    key: "kubeconfig".into(),
                }),
                controller_availability_policy: Default::default(),
                etcd: Default::default(),
                services: Vec::new(),
                networking: Default::default(),
                node_selector: Default::default(),
                platform: Default::default(),
            },
        );
        hc.metadata.namespace = Some("clusters".into());
        hc
    }

    pub fn external(mut hc: HostedCluster) -> HostedCluster {
        hc.spec.platform.kubevirt.credentials = Some(KubevirtCredentials {
            infra_kube_config_secret: SecretKeyRef {
                name: "infra-kubeconfig".into(),
                key: "kubeconfig".into(),
            },
            infra_namespace: "guest1-vms".into(),
        });
        hc
    }

    pub fn manual(mut hc: HostedCluster) -> HostedCluster {
        hc.spec.platform.kubevirt.storage_driver = Some(StorageDriverSpec {
            type_: StorageDriverType::Manual,
            manual: Some(ManualStorageDriverConfig {
                storage_class_mapping: vec![
                    StorageClassMapping {
                        group: "fast".into(),
                        infra_storage_class_name: "infra-ssd".into(),
                        guest_storage_class_name: "ssd".into(),
                    },
                    StorageClassMapping {
                        group: "fast".into(),
                        infra_storage_class_name: "infra-nvme".into(),
                        guest_storage_class_name: "nvme".into(),
                    },
                    StorageClassMapping {
                        group: String::new(),
                        infra_storage_class_name: "infra-hdd".into(),
                        guest_storage_class_name: "hdd".into(),
                    },
                ],
                volume_snapshot_class_mapping: vec![
                    VolumeSnapshotClassMapping {
                        group: "fast".into(),
                        infra_volume_snapshot_class_name: "infra-ssd-snap".into(),
                        guest_volume_snapshot_class_name: "ssd-snap".into(),
                    },
                    VolumeSnapshotClassMapping {
                        group: "archive".into(),
                        infra_volume_snapshot_class_name: "infra-archive-snap".into(),
                        guest_volume_snapshot_class_name: "archive-snap".into(),
                    },
                ],
            }),
        });
        hc
    }

    pub fn inputs(hc: &HostedCluster) -> ClusterInputs {
        ClusterInputs::new(
            hc,
            &ImageConfig::default(),
            b"apiVersion: v1\nkind: Config\n".to_vec(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn inputs_resolve_namespaces_and_images() {
        let inp = inputs(&hosted_cluster());
        assert_eq!(inp.control_plane_namespace, "clusters-guest1");
        assert_eq!(inp.infra_namespace, "clusters-guest1");
        assert!(!inp.external_infra);
        assert_eq!(inp.storage_type, StorageDriverType::Default);
        assert_eq!(
            inp.images.csi_driver,
            "quay.io/kubevirt-rs/kubevirt-csi-driver:v0.1.0"
        );
        assert_eq!(
            inp.images.ccm,
            "quay.io/kubevirt-rs/kubevirt-cloud-controller-manager:v0.1.0"
        );
        assert_eq!(
            inp.images.csi_provisioner,
            "registry.k8s.io/sig-storage/csi-provisioner:v5.2.0"
        );

        let ext = inputs(&external(hosted_cluster()));
        assert_eq!(ext.control_plane_namespace, "clusters-guest1");
        assert_eq!(ext.infra_namespace, "guest1-vms");
        assert!(ext.external_infra);
    }

    #[test]
    fn image_overrides_win() {
        let cfg = ImageConfig {
            registry: "registry.example.com/suite/".into(),
            csi_override: Some("example.com/csi@sha256:abc".into()),
            ccm_override: None,
            sidecar_registry: "mirror.example.com/sig-storage".into(),
            control_plane_registry: "registry.k8s.io".into(),
        };
        let images = cfg.images("v0.2.0");
        assert_eq!(images.csi_driver, "example.com/csi@sha256:abc");
        assert_eq!(
            images.ccm,
            "registry.example.com/suite/kubevirt-cloud-controller-manager:v0.2.0"
        );
        assert_eq!(
            images.csi_livenessprobe,
            "mirror.example.com/sig-storage/livenessprobe:v2.15.0"
        );
    }

    #[test]
    fn owner_selector_matches_owner_labels() {
        let inp = inputs(&hosted_cluster());
        assert_eq!(
            inp.owner_selector(),
            owner_selector_of("clusters", "guest1")
        );
        assert_eq!(
            inp.owner_selector(),
            "app.kubernetes.io/managed-by=kubevirt-hcp-manager,\
             hcp.kubevirt-rs.io/hosted-cluster-name=guest1,\
             hcp.kubevirt-rs.io/hosted-cluster-namespace=clusters"
        );
    }
}

/// How long a control-plane pod (the hosted control plane's, and the
/// daemons the manager runs for a cluster) stays bound to a node that
/// stopped reporting before it is evicted and replaced elsewhere (the
/// default is 300 s). The node lifecycle controller has already waited out
/// its grace period by then; a cluster should get its lost replicas back
/// in about a minute, not six.
pub const LOST_NODE_TOLERATION_SECONDS: i64 = 30;

/// The taint and label of management nodes dedicated to control planes
/// (value `true`), HyperShift's.
pub const CONTROL_PLANE_NODES: &str = "hypershift.openshift.io/control-plane";
/// The taint and label of management nodes dedicated to one cluster's
/// control plane (value: its control-plane namespace), HyperShift's.
pub const CLUSTER_NODES: &str = "hypershift.openshift.io/cluster";

/// Where the pods of a cluster's control-plane namespace run on the
/// management cluster, as HyperShift places them: only on the nodes
/// `spec.nodeSelector` selects; tolerating the NoSchedule taints of nodes
/// dedicated to control planes or to this one, and preferring those nodes
/// (this cluster's most); and leaving a lost node after
/// [`LOST_NODE_TOLERATION_SECONDS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The control-plane namespace.
    pub namespace: String,
    pub node_selector: BTreeMap<String, String>,
}

impl Placement {
    pub fn of(hc: &HostedCluster) -> Placement {
        Placement {
            namespace: names::control_plane_namespace(
                hc.metadata.namespace.as_deref().unwrap_or_default(),
                hc.metadata.name.as_deref().unwrap_or_default(),
            ),
            node_selector: hc.spec.node_selector.clone(),
        }
    }

    /// The pods' `nodeSelector`, if any.
    pub fn node_selector(&self) -> Option<BTreeMap<String, String>> {
        (!self.node_selector.is_empty()).then(|| self.node_selector.clone())
    }

    pub fn tolerations(&self) -> Vec<Toleration> {
        let dedicated = [
            (CONTROL_PLANE_NODES, "true"),
            (CLUSTER_NODES, self.namespace.as_str()),
        ]
        .into_iter()
        .map(|(key, value)| Toleration {
            key: Some(key.to_string()),
            operator: Some("Equal".to_string()),
            value: Some(value.to_string()),
            effect: Some("NoSchedule".to_string()),
            ..Toleration::default()
        });
        let lost = [
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/not-ready",
        ]
        .into_iter()
        .map(|key| Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            toleration_seconds: Some(LOST_NODE_TOLERATION_SECONDS),
            ..Toleration::default()
        });
        dedicated.chain(lost).collect()
    }

    /// The preference for dedicated nodes.
    pub fn node_affinity(&self) -> NodeAffinity {
        let prefer = |weight, key: &str, value: &str| PreferredSchedulingTerm {
            weight,
            preference: NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: key.to_string(),
                    operator: "In".to_string(),
                    values: Some(vec![value.to_string()]),
                }]),
                match_fields: None,
            },
        };
        NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                prefer(50, CONTROL_PLANE_NODES, "true"),
                prefer(100, CLUSTER_NODES, &self.namespace),
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }
    }
}
