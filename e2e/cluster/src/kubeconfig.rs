//! Kubeconfig documents for clients of a lab cluster: one cluster, context and
//! user, all named after the cluster, with the server URL, the cluster CA and
//! a bearer token.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::json;

/// A kubeconfig for `server` (URL) with `token`, everything named `name`.
pub fn render(
    name: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
    namespace: Option<&str>,
) -> String {
    let mut context = json!({"cluster": name, "user": name});
    if let (Some(ns), Some(map)) = (namespace, context.as_object_mut()) {
        map.insert("namespace".into(), json!(ns));
    }
    let mut cluster = json!({"server": server});
    if server.starts_with("https://")
        && let Some(map) = cluster.as_object_mut()
    {
        map.insert(
            "certificate-authority-data".into(),
            json!(BASE64_STANDARD.encode(ca_pem)),
        );
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "users": [{"name": name, "user": {"token": token}}],
        "preferences": {},
    });
    // A JSON value always renders as YAML.
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses_with_kube() {
        let yaml = render("lab", "https://127.0.0.1:1234", "ca", "tok", Some("ns1"));
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("parses");
        assert_eq!(kc.current_context.as_deref(), Some("lab"));
        let ctx = kc.contexts[0].context.as_ref().expect("context");
        assert_eq!(ctx.namespace.as_deref(), Some("ns1"));
        assert_eq!(
            kc.clusters[0]
                .cluster
                .as_ref()
                .and_then(|c| c.server.as_deref()),
            Some("https://127.0.0.1:1234")
        );
    }
}
