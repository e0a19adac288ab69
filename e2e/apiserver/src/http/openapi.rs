//! A minimal OpenAPI v3 surface, enough for kubectl: the `/openapi/v3` root listing a
//! document per group/version, and per-group/version documents whose PATCH operations
//! declare `fieldValidation` (with the `x-kubernetes-group-version-kind` extension),
//! so kubectl delegates validation to the server instead of needing schemas.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::resources::Registry;

/// Every served group/version as its OpenAPI path key (`api/v1`, `apis/apps/v1`).
fn group_versions(reg: &Registry) -> Vec<(String, String, String)> {
    let mut out = vec![("api/v1".to_string(), String::new(), "v1".to_string())];
    for (g, versions) in reg.groups() {
        for v in versions {
            out.push((format!("apis/{g}/{v}"), g.clone(), v));
        }
    }
    out
}

fn doc_hash(reg: &Registry, group: &str, version: &str) -> String {
    let mut h = DefaultHasher::new();
    for d in reg.in_group_version(group, version) {
        (&d.plural, &d.kind, d.namespaced).hash(&mut h);
    }
    format!("{:016X}", h.finish())
}

pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (key, g, v) in group_versions(reg) {
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", doc_hash(reg, &g, &v))}),
        );
    }
    json!({"paths": paths})
}

/// The document for `api/v1` or `apis/{group}/{version}` (`rest` is that key).
pub fn group_version_doc(reg: &Registry, rest: &str) -> Option<Value> {
    let (_, group, version) = group_versions(reg)
        .into_iter()
        .find(|(key, _, _)| key == rest.trim_matches('/'))?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let mut paths = Map::new();
    for def in reg.in_group_version(&group, &version) {
        let path = if def.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", def.plural)
        } else {
            format!("{prefix}/{}/{{name}}", def.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": def.kind});
        let op = |action: &str, extra: Vec<Value>| {
            let mut params = vec![param("dryRun"), param("fieldManager")];
            params.extend(extra);
            json!({
                "operationId": format!("{action}{}", def.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(
            path,
            json!({
                "get": op("get", vec![]),
                "put": op("put", vec![param("fieldValidation")]),
                "patch": op("patch", vec![param("fieldValidation"), param("force")]),
                "delete": op("delete", vec![]),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_group_versions_and_docs_declare_field_validation() {
        let reg = Registry::with_builtins();
        let r = root(&reg);
        let url = r["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("url");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = group_version_doc(&reg, "apis/apps/v1").expect("doc");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(group_version_doc(&reg, "apis/nope/v1").is_none());
    }
}
