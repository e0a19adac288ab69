//! The list and map strategies of built-in kinds: which lists merge by key (and on which
//! key fields), which merge as sets, which maps apply treats atomically.
//!
//! Keeps static tables taken from the `patchStrategy`/`patchMergeKey` and
//! `listType`/`listMapKey`/`mapType`/`structType` markers of k8s.io/api 1.33 for the
//! kinds this suite uses, mounted at the paths where a pod template appears. Paths are
//! dotted field names with list items transparent (`spec.template.spec.containers.ports`).
//! Exposes [`MergeKeys`] (per kind, with [`MergeKeys::strategy`] lookups),
//! [`FieldStrategy`], [`ListKey`] and [`supports_strategic_merge`].

/// One key field of an associative list; `default` is the value the server fills in
/// when the item omits it (a Service port's `protocol` is `TCP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListKey {
    pub name: &'static str,
    pub default: Option<&'static str>,
}

impl ListKey {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            default: None,
        }
    }

    pub const fn with_default(name: &'static str, default: &'static str) -> Self {
        Self {
            name,
            default: Some(default),
        }
    }
}

/// How a field merges in a strategic merge patch and in server-side apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldStrategy {
    /// A list of objects merged item by item on the key fields. The first field is the
    /// strategic-merge-patch `patchMergeKey`; all of them identify an item for apply.
    Keyed(&'static [ListKey]),
    /// A list of scalars merged as a set (`metadata.finalizers`).
    Set,
    /// Replaced as a whole. Lists without a rule are atomic anyway; the rule matters for
    /// maps that apply owns as one field (`spec.selector` of a Service or Deployment).
    Atomic,
}

type Rules = &'static [(&'static str, FieldStrategy)];

const NAME: &[ListKey] = &[ListKey::new("name")];
const TYPE: &[ListKey] = &[ListKey::new("type")];
const IP: &[ListKey] = &[ListKey::new("ip")];
const UID: &[ListKey] = &[ListKey::new("uid")];
const MOUNT_PATH: &[ListKey] = &[ListKey::new("mountPath")];
const DEVICE_PATH: &[ListKey] = &[ListKey::new("devicePath")];
const CONTAINER_PORT: &[ListKey] = &[
    ListKey::new("containerPort"),
    ListKey::with_default("protocol", "TCP"),
];
const SERVICE_PORT: &[ListKey] = &[
    ListKey::new("port"),
    ListKey::with_default("protocol", "TCP"),
];
const TOPOLOGY_SPREAD: &[ListKey] = &[
    ListKey::new("topologyKey"),
    ListKey::new("whenUnsatisfiable"),
];

use FieldStrategy::{Atomic, Keyed, Set};

/// `metav1.ObjectMeta`, for every kind.
const OBJECT_META: Rules = &[
    ("metadata.finalizers", Set),
    ("metadata.ownerReferences", Keyed(UID)),
    ("metadata.managedFields", Atomic),
];

/// Rules every built-in kind shares.
const BUILTIN_COMMON: Rules = &[("status.conditions", Keyed(TYPE))];

/// `PodSpec`, relative to the spec.
const POD_SPEC: Rules = &[
    ("containers", Keyed(NAME)),
    ("containers.ports", Keyed(CONTAINER_PORT)),
    ("containers.env", Keyed(NAME)),
    ("containers.volumeMounts", Keyed(MOUNT_PATH)),
    ("containers.volumeDevices", Keyed(DEVICE_PATH)),
    ("initContainers", Keyed(NAME)),
    ("initContainers.ports", Keyed(CONTAINER_PORT)),
    ("initContainers.env", Keyed(NAME)),
    ("initContainers.volumeMounts", Keyed(MOUNT_PATH)),
    ("initContainers.volumeDevices", Keyed(DEVICE_PATH)),
    ("ephemeralContainers", Keyed(NAME)),
    ("ephemeralContainers.ports", Keyed(CONTAINER_PORT)),
    ("ephemeralContainers.env", Keyed(NAME)),
    ("ephemeralContainers.volumeMounts", Keyed(MOUNT_PATH)),
    ("ephemeralContainers.volumeDevices", Keyed(DEVICE_PATH)),
    ("volumes", Keyed(NAME)),
    ("imagePullSecrets", Keyed(NAME)),
    ("hostAliases", Keyed(IP)),
    ("topologySpreadConstraints", Keyed(TOPOLOGY_SPREAD)),
    ("schedulingGates", Keyed(NAME)),
    ("resourceClaims", Keyed(NAME)),
    ("tolerations", Atomic),
    ("nodeSelector", Atomic),
];

/// `PodStatus`, relative to the status.
const POD_STATUS: Rules = &[
    ("podIPs", Keyed(IP)),
    ("hostIPs", Keyed(IP)),
    ("resourceClaimStatuses", Keyed(NAME)),
];

/// Controllers selecting pods with a `metav1.LabelSelector` (atomic struct).
const SELECTOR: Rules = &[("spec.selector", Atomic)];

const SERVICE: Rules = &[
    ("spec.ports", Keyed(SERVICE_PORT)),
    ("spec.selector", Atomic),
    ("spec.clusterIPs", Atomic),
    ("spec.ipFamilies", Atomic),
    ("spec.externalIPs", Atomic),
    ("status.loadBalancer.ingress", Atomic),
];

const NODE: Rules = &[
    ("spec.taints", Atomic),
    ("spec.podCIDRs", Set),
    ("status.addresses", Keyed(TYPE)),
    ("status.images", Atomic),
    ("status.volumesAttached", Atomic),
    ("status.volumesInUse", Atomic),
];

const CSI_NODE: Rules = &[("spec.drivers", Keyed(NAME))];

const NETWORK_POLICY: Rules = &[("spec.podSelector", Atomic)];

/// Strategies of one kind's fields. Built from static tables; cheap to create.
#[derive(Clone, Debug, Default)]
pub struct MergeKeys {
    mounts: Vec<(&'static str, Rules)>,
    extra: Vec<(String, FieldStrategy)>,
    builtin: bool,
}

impl MergeKeys {
    /// No rules at all: every list is atomic, every map granular.
    pub fn none() -> Self {
        Self::default()
    }

    /// The rules of `kind` in `api_version` (`v1`, `apps/v1`, ...). Kinds of groups
    /// that are not built in (custom resources) get only the `metadata` rules, so their
    /// lists are replaced, like the real server's merge of custom resources.
    pub fn for_kind(api_version: &str, kind: &str) -> Self {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let mut mounts: Vec<(&'static str, Rules)> = vec![("", OBJECT_META)];
        let builtin = supports_strategic_merge(group);
        if !builtin {
            return Self {
                mounts,
                extra: Vec::new(),
                builtin,
            };
        }
        mounts.push(("", BUILTIN_COMMON));
        match (group, kind) {
            ("", "Pod") => {
                mounts.push(("spec.", POD_SPEC));
                mounts.push(("status.", POD_STATUS));
            }
            ("", "PodTemplate") => mounts.push(("template.spec.", POD_SPEC)),
            ("", "ReplicationController") => mounts.push(("spec.template.spec.", POD_SPEC)),
            ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
            | ("batch", "Job") => {
                mounts.push(("", SELECTOR));
                mounts.push(("spec.template.spec.", POD_SPEC));
            }
            ("batch", "CronJob") => mounts.push(("spec.jobTemplate.spec.template.spec.", POD_SPEC)),
            ("policy", "PodDisruptionBudget") => mounts.push(("", SELECTOR)),
            ("", "Service") => mounts.push(("", SERVICE)),
            ("", "Node") => mounts.push(("", NODE)),
            ("storage.k8s.io", "CSINode") => mounts.push(("", CSI_NODE)),
            ("networking.k8s.io", "NetworkPolicy") => mounts.push(("", NETWORK_POLICY)),
            _ => {}
        }
        Self {
            mounts,
            extra: Vec::new(),
            builtin,
        }
    }

    /// Adds (or overrides) the strategy of one path.
    pub fn with(mut self, path: impl Into<String>, strategy: FieldStrategy) -> Self {
        self.extra.push((path.into(), strategy));
        self
    }

    /// Whether the kind is a built-in one (strategic merge patch allowed).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The strategy of the field at `path` (dotted, list items transparent), if any.
    pub fn strategy(&self, path: &str) -> Option<FieldStrategy> {
        if let Some((_, s)) = self.extra.iter().rev().find(|(p, _)| p == path) {
            return Some(*s);
        }
        for (prefix, rules) in &self.mounts {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            if let Some((_, s)) = rules.iter().find(|(p, _)| *p == rest) {
                return Some(*s);
            }
        }
        None
    }

    /// The key fields of the associative list at `path`.
    pub fn list_keys(&self, path: &str) -> Option<&'static [ListKey]> {
        match self.strategy(path) {
            Some(FieldStrategy::Keyed(keys)) => Some(keys),
            _ => None,
        }
    }
}

/// Whether the API group is served by the server itself (built-in types, where a
/// strategic merge patch is accepted). Custom-resource groups get 415 for it.
pub fn supports_strategic_merge(group: &str) -> bool {
    matches!(
        group,
        "" | "apps"
            | "batch"
            | "autoscaling"
            | "policy"
            | "networking.k8s.io"
            | "rbac.authorization.k8s.io"
            | "storage.k8s.io"
            | "discovery.k8s.io"
            | "coordination.k8s.io"
            | "apiextensions.k8s.io"
            | "apiregistration.k8s.io"
            | "admissionregistration.k8s.io"
            | "scheduling.k8s.io"
            | "node.k8s.io"
            | "certificates.k8s.io"
            | "events.k8s.io"
            | "flowcontrol.apiserver.k8s.io"
            | "authentication.k8s.io"
            | "authorization.k8s.io"
            | "resource.k8s.io"
            | "storagemigration.k8s.io"
            | "internal.apiserver.k8s.io"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_template_paths_per_kind() {
        let pod = MergeKeys::for_kind("v1", "Pod");
        assert_eq!(pod.list_keys("spec.containers"), Some(NAME));
        assert_eq!(pod.list_keys("spec.containers.ports"), Some(CONTAINER_PORT));
        assert_eq!(pod.strategy("spec.tolerations"), Some(Atomic));
        let deploy = MergeKeys::for_kind("apps/v1", "Deployment");
        assert_eq!(
            deploy.list_keys("spec.template.spec.containers.env"),
            Some(NAME)
        );
        assert_eq!(deploy.list_keys("spec.template.spec.volumes"), Some(NAME));
        assert_eq!(deploy.list_keys("spec.containers"), None);
        assert_eq!(deploy.strategy("spec.selector"), Some(Atomic));
        let cron = MergeKeys::for_kind("batch/v1", "CronJob");
        assert!(
            cron.list_keys("spec.jobTemplate.spec.template.spec.initContainers")
                .is_some()
        );
    }

    #[test]
    fn service_node_meta() {
        let svc = MergeKeys::for_kind("v1", "Service");
        let keys = svc.list_keys("spec.ports").unwrap_or_default();
        assert_eq!(keys[0].name, "port");
        assert_eq!(keys[1].default, Some("TCP"));
        assert_eq!(svc.strategy("status.loadBalancer.ingress"), Some(Atomic));
        assert_eq!(svc.strategy("metadata.finalizers"), Some(Set));
        assert_eq!(svc.list_keys("metadata.ownerReferences"), Some(UID));
        let node = MergeKeys::for_kind("v1", "Node");
        assert_eq!(node.list_keys("status.conditions"), Some(TYPE));
        assert_eq!(node.list_keys("status.addresses"), Some(TYPE));
        assert_eq!(node.strategy("spec.taints"), Some(Atomic));
    }

    #[test]
    fn custom_resources_only_get_metadata_rules() {
        let vm = MergeKeys::for_kind("kubevirt.io/v1", "VirtualMachine");
        assert!(!vm.is_builtin());
        assert_eq!(vm.strategy("status.conditions"), None);
        assert_eq!(vm.strategy("metadata.finalizers"), Some(Set));
        let custom = vm.with("spec.template.spec.volumes", Keyed(NAME));
        assert_eq!(custom.list_keys("spec.template.spec.volumes"), Some(NAME));
    }

    #[test]
    fn strategic_merge_groups() {
        for g in [
            "",
            "apps",
            "storage.k8s.io",
            "discovery.k8s.io",
            "coordination.k8s.io",
            "apiextensions.k8s.io",
            "rbac.authorization.k8s.io",
            "policy",
            "batch",
        ] {
            assert!(supports_strategic_merge(g), "{g}");
        }
        for g in [
            "kubevirt.io",
            "cdi.kubevirt.io",
            "snapshot.storage.k8s.io",
            "cluster.x-k8s.io",
        ] {
            assert!(!supports_strategic_merge(g), "{g}");
        }
    }
}
