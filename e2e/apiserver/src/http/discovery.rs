//! Discovery documents: `/api` (APIVersions), `/apis` (APIGroupList), `/apis/{g}`
//! (APIGroup), `/api/v1` and `/apis/{g}/{v}` (APIResourceList), and the aggregated
//! `apidiscovery.k8s.io/v2` APIGroupDiscoveryList that kubectl and client-go prefer.
//! Aggregated APIs (registered like an APIService) appear beside the local groups.

use serde_json::{Value, json};

use crate::resources::{ALL_VERBS, Registry, ResourceDef, version_priority};

/// An API group/version served by another server and proxied.
#[derive(Clone, Debug)]
pub struct AggregatedApi {
    pub group: String,
    pub version: String,
    pub base_url: String,
    /// APIResource objects, as discovery lists them.
    pub resources: Vec<Value>,
}

pub const V2_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether `Accept` asks for the aggregated v2 discovery document.
pub fn wants_v2(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            params.contains(&"as=APIGroupDiscoveryList")
                && params.contains(&"v=v2")
                && params.contains(&"g=apidiscovery.k8s.io")
        })
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Every group with its versions, preferred first, local then aggregated.
fn all_groups(reg: &Registry, agg: &[AggregatedApi]) -> Vec<(String, Vec<String>)> {
    let mut groups = reg.groups();
    for a in agg {
        match groups.iter_mut().find(|(g, _)| g == &a.group) {
            Some((_, versions)) => {
                if !versions.contains(&a.version) {
                    versions.push(a.version.clone());
                    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                }
            }
            None => groups.push((a.group.clone(), vec![a.version.clone()])),
        }
    }
    groups
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

pub fn groups(reg: &Registry, agg: &[AggregatedApi]) -> Value {
    let groups: Vec<Value> = all_groups(reg, agg)
        .iter()
        .map(|(g, v)| group_doc(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, agg: &[AggregatedApi], name: &str) -> Option<Value> {
    let groups = all_groups(reg, agg);
    let (g, v) = groups.iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(g, v);
    if let Some(map) = doc.as_object_mut() {
        map.insert("kind".into(), json!("APIGroup"));
        map.insert("apiVersion".into(), json!("v1"));
    }
    Some(doc)
}

/// Subresources of a resource: (name, kind, group/version override, verbs).
fn subresources(def: &ResourceDef) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let own = json!({"kind": def.kind});
    if def.status {
        out.push(("status", own.clone()));
    }
    if def.scale {
        out.push((
            "scale",
            json!({"kind": "Scale", "group": "autoscaling", "version": "v1"}),
        ));
    }
    if def.group.is_empty() && def.plural == "namespaces" {
        out.push(("finalize", own));
    }
    if def.group.is_empty() && def.plural == "pods" {
        out.push(("binding", json!({"kind": "Binding"})));
        out.push((
            "eviction",
            json!({"kind": "Eviction", "group": "policy", "version": "v1"}),
        ));
    }
    out
}

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "finalize" => vec!["update"],
        "binding" | "eviction" => vec!["create"],
        _ => vec!["get", "patch", "update"],
    }
}

fn api_resources(def: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": ALL_VERBS,
    });
    if let Some(map) = main.as_object_mut() {
        if !def.short_names.is_empty() {
            map.insert("shortNames".into(), json!(def.short_names));
        }
        if !def.categories.is_empty() {
            map.insert("categories".into(), json!(def.categories));
        }
    }
    let mut out = vec![main];
    for (sub, kind) in subresources(def) {
        let mut r = json!({
            "name": format!("{}/{sub}", def.plural),
            "singularName": "",
            "namespaced": def.namespaced,
            "verbs": sub_verbs(sub),
        });
        if let (Some(map), Some(k)) = (r.as_object_mut(), kind.as_object()) {
            for (key, v) in k {
                map.insert(key.clone(), v.clone());
            }
        }
        out.push(r);
    }
    out
}

pub fn resource_list(
    reg: &Registry,
    agg: &[AggregatedApi],
    group: &str,
    version: &str,
) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = match agg
        .iter()
        .find(|a| a.group == group && a.version == version)
    {
        Some(a) => a.resources.clone(),
        None => {
            let defs = reg.in_group_version(group, version);
            if defs.is_empty() {
                return None;
            }
            defs.iter().flat_map(|d| api_resources(d)).collect()
        }
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn v2_resource(def: &ResourceDef, group: &str, version: &str) -> Value {
    let mut r = json!({
        "resource": def.plural,
        "responseKind": {"group": group, "version": version, "kind": def.kind},
        "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": def.singular,
        "verbs": ALL_VERBS,
    });
    if let Some(map) = r.as_object_mut() {
        if !def.short_names.is_empty() {
            map.insert("shortNames".into(), json!(def.short_names));
        }
        if !def.categories.is_empty() {
            map.insert("categories".into(), json!(def.categories));
        }
        let subs: Vec<Value> = subresources(def)
            .into_iter()
            .map(|(sub, kind)| {
                json!({
                    "subresource": sub,
                    "responseKind": {
                        "group": kind.get("group").cloned().unwrap_or(json!(group)),
                        "version": kind.get("version").cloned().unwrap_or(json!(version)),
                        "kind": kind.get("kind").cloned().unwrap_or(json!(def.kind)),
                    },
                    "verbs": sub_verbs(sub),
                })
            })
            .collect();
        if !subs.is_empty() {
            map.insert("subresources".into(), Value::Array(subs));
        }
    }
    r
}

/// An aggregated API's APIResource list in v2 form (subresources folded in).
fn v2_from_api_resources(group: &str, version: &str, resources: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for r in resources {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let kind = r.get("kind").cloned().unwrap_or(json!(""));
        let verbs = r.get("verbs").cloned().unwrap_or(json!([]));
        match name.split_once('/') {
            None => out.push(json!({
                "resource": name,
                "responseKind": {"group": group, "version": version, "kind": kind},
                "scope": if r.get("namespaced").and_then(Value::as_bool).unwrap_or(false) { "Namespaced" } else { "Cluster" },
                "singularResource": r.get("singularName").cloned().unwrap_or(json!("")),
                "verbs": verbs,
            })),
            Some((parent, sub)) => {
                let entry = json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs});
                match out
                    .iter_mut()
                    .find(|o| o.get("resource").and_then(Value::as_str) == Some(parent))
                {
                    Some(p) => {
                        if let Some(map) = p.as_object_mut() {
                            let subs = map.entry("subresources").or_insert_with(|| json!([]));
                            if let Some(a) = subs.as_array_mut() {
                                a.push(entry);
                            }
                        }
                    }
                    None => out.push(json!({
                        "resource": parent,
                        "responseKind": {"group": group, "version": version, "kind": kind},
                        "scope": if r.get("namespaced").and_then(Value::as_bool).unwrap_or(false) { "Namespaced" } else { "Cluster" },
                        "verbs": [],
                        "subresources": [entry],
                    })),
                }
            }
        }
    }
    out
}

/// The aggregated discovery document for `/api` (`core`) or `/apis`.
pub fn v2(reg: &Registry, agg: &[AggregatedApi], core: bool) -> Value {
    let items: Vec<Value> = if core {
        let resources: Vec<Value> = reg
            .in_group_version("", "v1")
            .iter()
            .map(|d| v2_resource(d, "", "v1"))
            .collect();
        vec![
            json!({"metadata": {"creationTimestamp": null}, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]}),
        ]
    } else {
        all_groups(reg, agg)
            .iter()
            .map(|(g, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        let resources = match agg.iter().find(|a| &a.group == g && &a.version == v)
                        {
                            Some(a) => v2_from_api_resources(g, v, &a.resources),
                            None => reg
                                .in_group_version(g, v)
                                .iter()
                                .map(|d| v2_resource(d, g, v))
                                .collect(),
                        };
                        json!({"version": v, "resources": resources, "freshness": "Current"})
                    })
                    .collect();
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
            })
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a68eab88b2096f4d708f4f",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:52Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_carry_subresources_and_short_names() {
        let reg = Registry::with_builtins();
        let doc = resource_list(&reg, &[], "apps", "v1").expect("apps/v1");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"deployments/status"));
        assert!(names.contains(&"deployments/scale"));
        let deploy = doc["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "deployments"))
            .expect("deployments");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert!(resource_list(&reg, &[], "apps", "v9").is_none());
    }

    #[test]
    fn groups_include_aggregated_apis() {
        let reg = Registry::with_builtins();
        let agg = vec![AggregatedApi {
            group: "subresources.kubevirt.io".into(),
            version: "v1".into(),
            base_url: "http://127.0.0.1:1".into(),
            resources: vec![
                json!({"name": "virtualmachines/addvolume", "namespaced": true, "kind": "VirtualMachine", "verbs": ["update"]}),
            ],
        }];
        let doc = groups(&reg, &agg);
        assert!(
            doc["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .any(|g| g["name"] == "subresources.kubevirt.io")
        );
        let v2doc = v2(&reg, &agg, false);
        let item = v2doc["items"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|i| i["metadata"]["name"] == "subresources.kubevirt.io")
            })
            .expect("agg item");
        assert_eq!(
            item["versions"][0]["resources"][0]["subresources"][0]["subresource"],
            "addvolume"
        );
        assert!(wants_v2(Some(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        )));
        assert!(!wants_v2(Some("application/json")));
    }
}
