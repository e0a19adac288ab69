//! Pure parsing of request paths into what they address: health and version
//! endpoints, discovery documents, the lab control API, or a resource path
//! (`/api/v1/namespaces/{ns}/pods/{name}/status`, legacy `/watch/` included).

/// A parsed resource path, before the resource is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Came through the legacy `/watch/` prefix.
    pub watch: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Version,
    OpenApiV2,
    OpenApiV3,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`
    ResourceList(String, String),
    Resource(ResourcePath),
    /// `/lab/...`, the rest of the path.
    Lab(String),
    NotFound,
}

/// Namespace subresources that would otherwise read as a resource name.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

pub fn parse(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Route::Healthz,
        ["version"] => Route::Version,
        ["openapi", "v2"] | ["swagger.json"] => Route::OpenApiV2,
        ["openapi", "v3", ..] => Route::OpenApiV3,
        ["lab", rest @ ..] => Route::Lab(rest.join("/")),
        ["api"] => Route::CoreVersions,
        ["api", version] => Route::ResourceList(String::new(), version.to_string()),
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["apis", group, version] => Route::ResourceList(group.to_string(), version.to_string()),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    if rest.iter().any(|s| s.is_empty()) {
        return Route::NotFound;
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, res, rest @ ..] if !NAMESPACE_SUBRESOURCES.contains(res) => {
            (Some(ns.to_string()), {
                let mut v = vec![*res];
                v.extend_from_slice(rest);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (res, name, sub) = match rest.as_slice() {
        [res] => (*res, None, None),
        [res, name] => (*res, Some(name.to_string()), None),
        [res, name, sub] => (*res, Some(name.to_string()), Some(sub.to_string())),
        _ => return Route::NotFound,
    };
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: res.to_string(),
        name,
        subresource: sub,
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(route: Route) -> ResourcePath {
        match route {
            Route::Resource(p) => p,
            other => panic!("not a resource path: {other:?}"),
        }
    }

    #[test]
    fn namespaced_and_cluster_paths() {
        let p = rp(parse("/api/v1/namespaces/default/pods/p1/status"));
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(
            (
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("pods", Some("p1"), Some("status"))
        );
        let p = rp(parse("/api/v1/namespaces/default"));
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref(), p.namespace),
            ("namespaces", Some("default"), None)
        );
        let p = rp(parse("/api/v1/namespaces/ns1/status"));
        assert_eq!(
            (p.name.as_deref(), p.subresource.as_deref()),
            (Some("ns1"), Some("status"))
        );
        let p = rp(parse("/apis/apps/v1/deployments"));
        assert_eq!(
            (p.group.as_str(), p.namespace, p.name),
            ("apps", None, None)
        );
    }

    #[test]
    fn legacy_watch_discovery_and_junk() {
        let p = rp(parse("/api/v1/watch/namespaces/a/configmaps"));
        assert!(p.watch);
        assert_eq!(
            parse("/apis/apps/v1"),
            Route::ResourceList("apps".into(), "v1".into())
        );
        assert_eq!(parse("/api"), Route::CoreVersions);
        assert_eq!(parse("/apis/"), Route::Groups);
        assert_eq!(parse("/api/v1/pods/a/b/c"), Route::NotFound);
        assert_eq!(parse("/nope"), Route::NotFound);
        assert_eq!(parse("/lab/counters"), Route::Lab("counters".into()));
    }
}
