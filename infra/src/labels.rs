//! Well-known names: the CSI driver name, and the label and annotation keys
//! that the contract with the Go implementations fixes.

/// The CSI driver name registered in the guest cluster.
pub const CSI_DRIVER_NAME: &str = "csi.kubevirt.io";

/// Annotation on a DataVolume that keeps CDI from garbage-collecting it.
pub const CDI_DELETE_AFTER_COMPLETION: &str = "cdi.kubevirt.io/storage.deleteAfterCompletion";

/// Guest Node annotation naming the infra namespace of its VM (HyperShift, CAPK).
pub const CLUSTER_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";
/// Guest Node annotations naming its VM explicitly.
pub const INFRA_VM_NAME_ANNOTATION: &str = "csi.kubevirt.io/infra-vm-name";
pub const INFRA_VM_NAMESPACE_ANNOTATION: &str = "csi.kubevirt.io/infra-vm-namespace";

/// providerID scheme of KubeVirt nodes: `kubevirt://<vmi-name>`.
pub const PROVIDER_ID_PREFIX: &str = "kubevirt://";

/// Labels carried by worker VMs, VMIs and virt-launcher pods.
pub const ROLE_LABEL: &str = "cluster.x-k8s.io/role";
pub const ROLE_WORKER: &str = "worker";
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// Labels on infra Services mirrored from tenant Services.
pub const TENANT_SERVICE_NAME_LABEL: &str = "cluster.x-k8s.io/tenant-service-name";
pub const TENANT_SERVICE_NAMESPACE_LABEL: &str = "cluster.x-k8s.io/tenant-service-namespace";

/// Label on every virt-launcher pod.
pub const VIRT_LAUNCHER_LABEL: &str = "kubevirt.io";
pub const VIRT_LAUNCHER_VALUE: &str = "virt-launcher";
/// Label on a virt-launcher pod carrying the UID of its VMI.
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// Label on a VMI and its pod naming the VM when it was created from one.
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// VMI annotation with the instance type name.
pub const INSTANCETYPE_ANNOTATION: &str = "kubevirt.io/instancetype-name";

/// Parse `k=v,k=v` (the `--infra-cluster-labels` flag form) into a map.
///
/// Empty input yields an empty map. Every entry needs a non-empty key and an
/// `=`; keys may not repeat.
pub fn parse_label_list(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not of the form key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("label {part:?} has an empty key"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label key {k:?} is given twice"));
        }
    }
    Ok(out)
}

/// Render a label map as a label selector string (`k=v,k=v`).
pub fn selector_string(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_label_lists() {
        let m = parse_label_list("a=b, c=d").expect("valid");
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        assert_eq!(m.get("c").map(String::as_str), Some("d"));
        assert_eq!(selector_string(&m), "a=b,c=d");
        assert!(parse_label_list("").expect("empty").is_empty());
        assert!(parse_label_list("a").is_err());
        assert!(parse_label_list("=b").is_err());
        assert!(parse_label_list("a=b,a=c").is_err());
    }
}
