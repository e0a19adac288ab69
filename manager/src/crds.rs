//! The CustomResourceDefinitions of [`crate::api`], rendered from the Rust
//! types: `crdgen` prints them and a test keeps the committed manifests equal
//! to them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{HostedCluster, NodePool};

/// Both CRDs.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![HostedCluster::crd(), NodePool::crd()]
}

/// The file name of a CRD in `manifests/manager/crds/`: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML.
pub fn render_one(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// Both CRDs as one YAML stream, each document preceded by `---`.
pub fn render() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&render_one(&crd)?);
    }
    Ok(out)
}
