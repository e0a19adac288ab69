//! Every object name, label and annotation key the manager writes or reads,
//! in one place. Names that HyperShift fixes (and that the daemons, the
//! guest and operators rely on) keep HyperShift's spelling; the keys under
//! `hcp.kubevirt-rs.io/` are this manager's own.

/// The field manager of every server-side apply, and the value of
/// [`MANAGED_BY_LABEL`].
pub const FIELD_MANAGER: &str = "kubevirt-hcp-manager";

// === Labels and annotations ===

/// HyperShift's infra id label: on every infra object of a hosted cluster
/// (VMs, DataVolumes, load-balancer Services), and the CSI/CCM infra labels.
pub const INFRA_ID_LABEL: &str = "hypershift.openshift.io/infra-id";
/// HyperShift's node pool label, on VMs and their VMI template.
pub const NODE_POOL_LABEL: &str = "hypershift.openshift.io/nodePool";
/// `cluster.x-k8s.io/role` and `cluster.x-k8s.io/cluster-name` (the CCM's
/// Service selector), re-exported from the shared crate.
pub use kubevirt_infra::labels::{CLUSTER_NAME_LABEL, ROLE_LABEL, ROLE_WORKER};

/// Marks every object this manager creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Namespace and name of the HostedCluster an object belongs to (two labels:
/// a label value cannot hold `ns/name`).
pub const HOSTED_CLUSTER_NAMESPACE_LABEL: &str = "hcp.kubevirt-rs.io/hosted-cluster-namespace";
pub const HOSTED_CLUSTER_NAME_LABEL: &str = "hcp.kubevirt-rs.io/hosted-cluster-name";
/// Which cluster of a hosted cluster an object is on (`management`,
/// `infra` or `guest`), so that pruning one never touches another even when
/// two of them are the same cluster.
pub const SIDE_LABEL: &str = "hcp.kubevirt-rs.io/side";
/// Hash of the VM spec and version a VM was created from.
pub const TEMPLATE_HASH_LABEL: &str = "hcp.kubevirt-rs.io/template-hash";
/// Role of a DataVolume that caches a node pool's boot image.
pub const BOOT_IMAGE_CACHE_LABEL: &str = "hcp.kubevirt-rs.io/boot-image-cache";
/// Hash of the boot image source a cache DataVolume holds.
pub const BOOT_IMAGE_HASH_ANNOTATION: &str = "hcp.kubevirt-rs.io/boot-image-hash";

/// VM annotation: the suite version this VM runs, or is being updated to.
pub const VERSION_ANNOTATION: &str = "hcp.kubevirt-rs.io/version";
/// VM annotation: an in-place update to this version is under way.
pub const UPDATING_TO_ANNOTATION: &str = "hcp.kubevirt-rs.io/updating-to";
/// VM annotation: the manager decided to remove this VM; it is drained first.
pub const DELETE_REQUESTED_ANNOTATION: &str = "hcp.kubevirt-rs.io/delete-requested";
/// VM annotation: when the drain of its guest node started (RFC 3339).
pub const DRAIN_STARTED_ANNOTATION: &str = "hcp.kubevirt-rs.io/drain-started";

/// Guest Node annotation written by the manager: the version the node must
/// move to (in-place upgrades). See `nodepool::inplace`.
pub const NODE_DESIRED_VERSION_ANNOTATION: &str = "hcp.kubevirt-rs.io/desired-version";
/// Guest Node annotation written by the node's update agent: the version it runs.
pub const NODE_CURRENT_VERSION_ANNOTATION: &str = "hcp.kubevirt-rs.io/current-version";
/// Guest Node annotation: the manager cordoned this node (and will uncordon it).
pub const NODE_CORDONED_BY_ANNOTATION: &str = "hcp.kubevirt-rs.io/cordoned-by";
/// On a bootstrap token and a user data Secret: the VM it lets join.
pub const JOINING_VM_LABEL: &str = "hcp.kubevirt-rs.io/joining-vm";

// === Infra (management cluster) objects ===

/// The CSI controller Deployment, its label and its ServiceAccount/Role.
pub const CSI_CONTROLLER: &str = "kubevirt-csi-controller";
pub const CSI_APP_LABEL_VALUE: &str = "kubevirt-csi-driver";
pub const CSI_INFRA_SERVICE_ACCOUNT: &str = "kubevirt-csi";
/// The CSI controller's ConfigMap (keys below).
pub const CSI_DRIVER_CONFIG: &str = "driver-config";
pub const CSI_KEY_INFRA_NAMESPACE: &str = "infraClusterNamespace";
pub const CSI_KEY_INFRA_LABELS: &str = "infraClusterLabels";
pub const CSI_KEY_ENFORCEMENT: &str = "infraStorageClassEnforcement";
/// Secret with the guest kubeconfig the CSI controller uses.
pub const CSI_TENANT_KUBECONFIG: &str = "kubevirt-csi-controller-tenant-kubeconfig";
/// Secret with the token kubeconfig of `kubevirt-csi` on an external infra cluster.
pub const CSI_INFRA_KUBECONFIG: &str = "kubevirt-csi-infra-kubeconfig";

/// The cloud controller manager Deployment, ServiceAccount and Role.
pub const CCM: &str = "kubevirt-cloud-controller-manager";
pub const CCM_APP_LABEL_VALUE: &str = "cloud-controller-manager";
/// The snapshot controller of a hosted cluster (in its control-plane namespace).
pub const SNAPSHOT_CONTROLLER: &str = "csi-snapshot-controller";
/// Its guest kubeconfig Secret (a token of its ServiceAccount there).
pub const SNAPSHOT_CONTROLLER_KUBECONFIG: &str = "csi-snapshot-controller-kubeconfig";
/// The CCM's ConfigMap and its key.
pub const CCM_CLOUD_CONFIG: &str = "kubevirt-cloud-config";
pub const CCM_CLOUD_CONFIG_KEY: &str = "cloud-config";
/// Secret with the guest kubeconfig the CCM uses (HyperShift's name).
pub const CCM_GUEST_KUBECONFIG: &str = "service-network-admin-kubeconfig";
/// Secret with the token kubeconfig of the CCM's account on an external infra cluster.
pub const CCM_INFRA_KUBECONFIG: &str = "kubevirt-cloud-controller-manager-infra-kubeconfig";

/// Key of the kubeconfig in every kubeconfig Secret the manager writes.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// The manager's published versions: ConfigMap and key.
pub const SUPPORTED_VERSIONS: &str = "supported-versions";
pub const SERVER_VERSION_KEY: &str = "server-version";

// === Guest (tenant) objects ===

/// Namespace of the CSI node DaemonSet and the guest ServiceAccounts. Upstream
/// kubevirt/csi-driver's split-infra-tenant deployment uses this name;
/// HyperShift uses `openshift-cluster-csi-drivers`, which only makes sense on
/// OpenShift guests.
pub const GUEST_CSI_NAMESPACE: &str = "kubevirt-csi-driver";
pub const GUEST_CSI_NODE: &str = "kubevirt-csi-node";
pub const GUEST_CSI_NODE_SA: &str = "kubevirt-csi-node-sa";
pub const GUEST_CSI_NODE_CLUSTER_ROLE: &str = "kubevirt-csi-node-cr";
pub const GUEST_CSI_NODE_BINDING: &str = "kubevirt-csi-node-binding";
pub const GUEST_CSI_CONTROLLER_SA: &str = "kubevirt-csi-controller-sa";
pub const GUEST_CSI_CONTROLLER_CLUSTER_ROLE: &str = "kubevirt-csi-controller-cr";
pub const GUEST_CSI_CONTROLLER_BINDING: &str = "kubevirt-csi-controller-binding";
/// The guest StorageClass of storage driver type Default.
pub const DEFAULT_STORAGE_CLASS: &str = "kubevirt-csi-infra-default";
/// The guest VolumeSnapshotClass of storage driver type Default.
pub const DEFAULT_SNAPSHOT_CLASS: &str = "kubevirt-csi-snapshot";
pub const IS_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// The control-plane namespace of a hosted cluster: `<namespace>-<name>`, as
/// HyperShift names it.
pub fn control_plane_namespace(hc_namespace: &str, hc_name: &str) -> String {
    format!("{hc_namespace}-{hc_name}")
}

// === Hosted control plane (names as HyperShift's where it has them) ===

pub const ETCD: &str = "etcd";
/// etcd's headless Service: each member's stable name.
pub const ETCD_DISCOVERY: &str = "etcd-discovery";
/// etcd's client Service.
pub const ETCD_CLIENT: &str = "etcd-client";
pub const KUBE_APISERVER: &str = "kube-apiserver";
pub const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const KUBE_SCHEDULER: &str = "kube-scheduler";
/// The admin kubeconfig Secret in the HostedCluster's namespace.
pub fn admin_kubeconfig_secret(hc_name: &str) -> String {
    format!("{hc_name}-admin-kubeconfig")
}
