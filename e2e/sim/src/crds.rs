//! The CustomResourceDefinitions the simulators serve (KubeVirt VM/VMI, CDI
//! DataVolume from `e2e/crds/`; the CSI snapshot API as the product
//! installs it, `infra/crds/`). The lab installs them before the infra
//! cluster's controllers start (`lab_cluster::ClusterConfig::crds`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::Error;

/// `(file name, YAML)` of every embedded CRD.
pub const CRDS: &[(&str, &str)] = &[
    (
        "kubevirt.io_virtualmachines.yaml",
        include_str!("../../crds/kubevirt.io_virtualmachines.yaml"),
    ),
    (
        "kubevirt.io_virtualmachineinstances.yaml",
        include_str!("../../crds/kubevirt.io_virtualmachineinstances.yaml"),
    ),
    (
        "cdi.kubevirt.io_datavolumes.yaml",
        include_str!("../../crds/cdi.kubevirt.io_datavolumes.yaml"),
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
        kubevirt_infra::snapshot::CRDS[0],
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
        kubevirt_infra::snapshot::CRDS[1],
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshots.yaml",
        kubevirt_infra::snapshot::CRDS[2],
    ),
];

/// The embedded CRDs, parsed.
pub fn definitions() -> Result<Vec<CustomResourceDefinition>, Error> {
    CRDS.iter()
        .map(|(file, yaml)| {
            serde_yaml::from_str(yaml).map_err(|source| Error::Crd { file, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    #[test]
    fn embedded_crds_parse_and_none_is_open() -> Result<(), Error> {
        let crds = definitions()?;
        let names: Vec<_> = crds.iter().map(|c| c.name_any()).collect();
        assert_eq!(
            names,
            [
                "virtualmachines.kubevirt.io",
                "virtualmachineinstances.kubevirt.io",
                "datavolumes.cdi.kubevirt.io",
                "volumesnapshotclasses.snapshot.storage.k8s.io",
                "volumesnapshotcontents.snapshot.storage.k8s.io",
                "volumesnapshots.snapshot.storage.k8s.io",
            ]
        );
        for crd in &crds {
            let version = &crd.spec.versions[0];
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("every CRD has a schema");
            // Every one has a schema of named fields, so that
            // kube-apiserver prunes the fields the real project's does.
            assert_ne!(
                schema.x_kubernetes_preserve_unknown_fields,
                Some(true),
                "{}",
                crd.name_any()
            );
            assert!(schema.properties.is_some(), "{}", crd.name_any());
            let has_status = version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some());
            assert_eq!(
                has_status,
                crd.spec.names.kind != "VolumeSnapshotClass",
                "{}",
                crd.name_any()
            );
        }
        let short = |kind: &str| {
            crds.iter()
                .find(|c| c.spec.names.kind == kind)
                .and_then(|c| c.spec.names.short_names.clone())
                .unwrap_or_default()
        };
        assert_eq!(short("VirtualMachine"), ["vm", "vms"]);
        assert_eq!(short("VirtualMachineInstance"), ["vmi", "vmis"]);
        assert_eq!(short("DataVolume"), ["dv", "dvs"]);
        Ok(())
    }

    /// The schema of `kind`'s first version, as JSON.
    fn schema(crds: &[CustomResourceDefinition], kind: &str) -> serde_json::Value {
        let crd = crds
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("the CRD is embedded");
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a schema");
        serde_json::to_value(schema).expect("a schema serializes")
    }

    #[test]
    fn a_vm_embeds_the_vmi_and_data_volume_schemas() -> Result<(), Error> {
        let crds = definitions()?;
        let (vm, vmi, dv) = (
            schema(&crds, "VirtualMachine"),
            schema(&crds, "VirtualMachineInstance"),
            schema(&crds, "DataVolume"),
        );
        assert_eq!(
            vm.pointer("/properties/spec/properties/template/properties/spec"),
            vmi.pointer("/properties/spec")
        );
        assert_eq!(
            vm.pointer("/properties/spec/properties/dataVolumeTemplates/items/properties/spec"),
            dv.pointer("/properties/spec")
        );
        Ok(())
    }
}
