//! The built-in resources this server serves, with the per-kind REST strategy rules of
//! kube-apiserver that clients can observe: scope, short names, categories, status and
//! scale subresources, initial status, generation tracking, create-on-update, what a
//! DELETE answers, and the extra field selector labels.

use serde_json::json;

use super::{ResourceDef, StatusOnCreate};

const NS: bool = true;
const CLUSTER: bool = false;

/// One row of the built-in table, before its tweaks.
fn row(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
) -> ResourceDef {
    ResourceDef {
        group: group.to_string(),
        versions: vec![version.to_string()],
        storage_version: version.to_string(),
        plural: plural.to_string(),
        singular: singular.to_string(),
        kind: kind.to_string(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status: false,
        scale: false,
        custom: false,
        generation: false,
        status_on_create: StatusOnCreate::Keep,
        create_on_update: false,
        return_deleted: false,
        field_labels: Vec::new(),
        printer_columns: Vec::new(),
        view: super::View::Native,
    }
}

/// Builder-style tweaks for the table below.
trait Tweak {
    fn status(self, on_create: StatusOnCreate) -> Self;
    fn scale(self) -> Self;
    fn generation(self) -> Self;
    fn categories(self, c: &[&str]) -> Self;
    fn create_on_update(self) -> Self;
    fn return_deleted(self) -> Self;
    fn fields(self, f: &[&str]) -> Self;
    fn view(self, v: super::View) -> Self;
}

impl Tweak for ResourceDef {
    fn status(mut self, on_create: StatusOnCreate) -> Self {
        self.status = true;
        self.status_on_create = on_create;
        self
    }
    fn scale(mut self) -> Self {
        self.scale = true;
        self
    }
    fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    fn categories(mut self, c: &[&str]) -> Self {
        self.categories = c.iter().map(|s| s.to_string()).collect();
        self
    }
    fn create_on_update(mut self) -> Self {
        self.create_on_update = true;
        self
    }
    fn return_deleted(mut self) -> Self {
        self.return_deleted = true;
        self
    }
    fn view(mut self, v: super::View) -> Self {
        self.view = v;
        self
    }
    fn fields(mut self, f: &[&str]) -> Self {
        self.field_labels = f.iter().map(|s| s.to_string()).collect();
        self
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// Every built-in resource, in discovery order.
pub fn all() -> Vec<ResourceDef> {
    use StatusOnCreate::{Clear, Initial, Keep};
    vec![
        row(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            CLUSTER,
            &["ns"],
        )
        .status(Initial(json!({"phase": "Active"})))
        .return_deleted()
        .fields(&["status.phase"]),
        row("", "v1", "nodes", "node", "Node", CLUSTER, &["no"])
            .status(Keep)
            .fields(&["spec.unschedulable"]),
        row("", "v1", "pods", "pod", "Pod", NS, &["po"])
            .status(Initial(json!({"phase": "Pending"})))
            .categories(&["all"])
            .return_deleted()
            .fields(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ]),
        row("", "v1", "services", "service", "Service", NS, &["svc"])
            .status(Clear)
            .categories(&["all"])
            .return_deleted()
            .fields(&["spec.clusterIP", "spec.type"]),
        row("", "v1", "endpoints", "endpoints", "Endpoints", NS, &["ep"]).create_on_update(),
        row(
            "",
            "v1",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            "PersistentVolumeClaim",
            NS,
            &["pvc"],
        )
        .status(Initial(json!({"phase": "Pending"}))),
        row(
            "",
            "v1",
            "resourcequotas",
            "resourcequota",
            "ResourceQuota",
            NS,
            &["quota"],
        )
        .status(Clear),
        row(
            "",
            "v1",
            "persistentvolumes",
            "persistentvolume",
            "PersistentVolume",
            CLUSTER,
            &["pv"],
        )
        .status(Initial(json!({"phase": "Pending"}))),
        row("", "v1", "secrets", "secret", "Secret", NS, &[]).fields(&["type"]),
        row(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            NS,
            &["cm"],
        ),
        row(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            NS,
            &["sa"],
        ),
        row("", "v1", "events", "event", "Event", NS, &["ev"])
            .create_on_update()
            .fields(EVENT_FIELDS),
        row(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            NS,
            &["deploy"],
        )
        .status(Clear)
        .scale()
        .generation()
        .categories(&["all"]),
        row(
            "apps",
            "v1",
            "daemonsets",
            "daemonset",
            "DaemonSet",
            NS,
            &["ds"],
        )
        .status(Clear)
        .generation()
        .categories(&["all"]),
        row(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            NS,
            &["rs"],
        )
        .status(Clear)
        .scale()
        .generation()
        .categories(&["all"])
        .fields(&["status.replicas"]),
        row(
            "apps",
            "v1",
            "statefulsets",
            "statefulset",
            "StatefulSet",
            NS,
            &["sts"],
        )
        .status(Clear)
        .scale()
        .generation()
        .categories(&["all"]),
        row(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            NS,
            &["ev"],
        )
        .view(super::View::EventsV1)
        .create_on_update()
        .fields(EVENT_FIELDS),
        row(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            NS,
            &[],
        ),
        row(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "endpointslice",
            "EndpointSlice",
            NS,
            &[],
        ),
        row(
            "storage.k8s.io",
            "v1",
            "storageclasses",
            "storageclass",
            "StorageClass",
            CLUSTER,
            &["sc"],
        ),
        row(
            "storage.k8s.io",
            "v1beta1",
            "volumeattributesclasses",
            "volumeattributesclass",
            "VolumeAttributesClass",
            CLUSTER,
            &["vac"],
        ),
        row(
            "storage.k8s.io",
            "v1",
            "csidrivers",
            "csidriver",
            "CSIDriver",
            CLUSTER,
            &[],
        ),
        row(
            "storage.k8s.io",
            "v1",
            "csinodes",
            "csinode",
            "CSINode",
            CLUSTER,
            &[],
        ),
        row(
            "storage.k8s.io",
            "v1",
            "volumeattachments",
            "volumeattachment",
            "VolumeAttachment",
            CLUSTER,
            &[],
        )
        .status(Clear),
        row(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "clusterrolebinding",
            "ClusterRoleBinding",
            CLUSTER,
            &[],
        )
        .create_on_update(),
        row(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "clusterrole",
            "ClusterRole",
            CLUSTER,
            &[],
        )
        .create_on_update(),
        row(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "rolebinding",
            "RoleBinding",
            NS,
            &[],
        )
        .create_on_update(),
        row(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "role",
            "Role",
            NS,
            &[],
        )
        .create_on_update(),
        row(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            CLUSTER,
            &["crd", "crds"],
        )
        .status(Clear)
        .generation()
        .categories(&["api-extensions"]),
    ]
}
