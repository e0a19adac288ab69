//! The committed CRD manifests are exactly what the Rust types generate
//! (regenerate with `cargo run -p kubevirt-hcp-manager --bin crdgen -- manifests/manager/crds`).

use std::path::Path;

use kubevirt_hcp_manager::crds;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/manager/crds");
    for crd in crds::all() {
        let path = dir.join(crds::file_name(&crd));
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = crds::render_one(&crd).expect("renders");
        assert!(
            committed == generated,
            "{} is stale; regenerate it with `cargo run -p kubevirt-hcp-manager --bin crdgen -- manifests/manager/crds`",
            path.display()
        );
    }
}

#[test]
fn crds_are_in_our_group_with_status_and_scale() {
    let all = crds::all();
    let names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "hostedclusters.hcp.kubevirt-rs.io",
            "nodepools.hcp.kubevirt-rs.io"
        ]
    );
    for crd in &all {
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
    let np = &all[1].spec.versions[0];
    let scale = np
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("scale");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    // Validation reaches the schema: enums, minimums, required fields.
    let schema = serde_json::to_value(np.schema.as_ref().expect("schema")).expect("json");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["minimum"], 0.0);
    let required: Vec<&str> = spec["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(required.contains(&"clusterName") && required.contains(&"release"));
    assert_eq!(
        spec["properties"]["management"]["properties"]["upgradeType"]["enum"],
        serde_json::json!(["Replace", "InPlace"])
    );
}
