//! Kubeconfigs the manager writes for the daemons' own accounts on an
//! external infra cluster: the server and CA of the kubeconfig the user gave,
//! and a bound ServiceAccount token from the TokenRequest API.
//!
//! Tokens expire. The kubeconfig names its token by file (`tokenFile`, next
//! to the kubeconfig in the same Secret volume), so a refreshed token reaches
//! a running daemon without a restart: kubelet rewrites the mounted file and
//! the Kubernetes clients re-read it. [`TokenSecret`] records the expiry in an
//! annotation and [`needs_refresh`] says when to ask for a new token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{Kubeconfig, KubeconfigError};
use serde_json::json;

use super::ClusterInputs;
use super::controlplane::meta;
use crate::names;

/// Annotation on a token kubeconfig Secret: when its token expires (RFC 3339).
pub const TOKEN_EXPIRY_ANNOTATION: &str = "hcp.kubevirt-rs.io/token-expires";
/// Lifetime asked for each token.
pub const TOKEN_LIFETIME_SECONDS: i64 = 24 * 3600;

/// Where a cluster is and how to trust it, from a kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub server: String,
    /// Base64 PEM, as in `certificate-authority-data`.
    pub certificate_authority_data: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

/// Why a kubeconfig cannot be turned into an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("kubeconfig does not parse: {0}")]
    Parse(#[from] KubeconfigError),
    #[error("kubeconfig has no cluster for its current context")]
    NoCluster,
    #[error("kubeconfig's cluster has no server")]
    NoServer,
}

/// The endpoint of the current context of `kubeconfig` (YAML).
pub fn endpoint(kubeconfig: &str) -> Result<ClusterEndpoint, EndpointError> {
    let kc = Kubeconfig::from_yaml(kubeconfig)?;
    let context_name = kc
        .current_context
        .clone()
        .or_else(|| kc.contexts.first().map(|c| c.name.clone()));
    let cluster_name = context_name
        .and_then(|n| kc.contexts.iter().find(|c| c.name == n))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .or_else(|| kc.clusters.first().map(|c| c.name.clone()))
        .ok_or(EndpointError::NoCluster)?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or(EndpointError::NoCluster)?;
    Ok(ClusterEndpoint {
        server: cluster.server.clone().ok_or(EndpointError::NoServer)?,
        certificate_authority_data: cluster.certificate_authority_data.clone(),
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
    })
}

/// Key of the token in a token kubeconfig Secret.
pub const TOKEN_KEY: &str = "token";

/// A kubeconfig that authenticates as `user` with the token in `token_file`,
/// defaulting to `namespace`.
pub fn token_kubeconfig(
    endpoint: &ClusterEndpoint,
    user: &str,
    token_file: &str,
    namespace: &str,
) -> String {
    let mut cluster = serde_json::Map::new();
    cluster.insert("server".into(), json!(endpoint.server));
    if let Some(ca) = &endpoint.certificate_authority_data {
        cluster.insert("certificate-authority-data".into(), json!(ca));
    }
    if endpoint.insecure_skip_tls_verify {
        cluster.insert("insecure-skip-tls-verify".into(), json!(true));
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "infra", "cluster": cluster}],
        "users": [{"name": user, "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "infra", "context": {"cluster": "infra", "user": user, "namespace": namespace}}],
        "current-context": "infra",
    });
    // A JSON value of strings and bools always serializes.
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// A token kubeconfig Secret in the control-plane namespace.
pub struct TokenSecret<'a> {
    pub name: &'a str,
    pub kubeconfig: String,
    pub token: String,
    pub expires: jiff::Timestamp,
}

impl TokenSecret<'_> {
    pub fn secret(&self, inp: &ClusterInputs) -> Secret {
        let mut metadata = meta(
            self.name,
            Some(&inp.control_plane_namespace),
            inp.owner_labels(),
        );
        metadata.annotations = Some(BTreeMap::from([(
            TOKEN_EXPIRY_ANNOTATION.to_string(),
            self.expires.to_string(),
        )]));
        Secret {
            metadata,
            type_: Some("Opaque".to_string()),
            data: Some(BTreeMap::from([
                (
                    names::KUBECONFIG_KEY.to_string(),
                    ByteString(self.kubeconfig.clone().into_bytes()),
                ),
                (
                    TOKEN_KEY.to_string(),
                    ByteString(self.token.clone().into_bytes()),
                ),
            ])),
            ..Secret::default()
        }
    }
}

/// The time to refresh a token Secret: a third of its lifetime before it
/// expires. `None` (refresh now) when the Secret is missing, has no token or
/// no valid expiry, or holds another kubeconfig than `kubeconfig`.
pub fn refresh_at(live: Option<&Secret>, kubeconfig: &str) -> Option<jiff::Timestamp> {
    let live = live?;
    let expires: jiff::Timestamp = live
        .metadata
        .annotations
        .as_ref()?
        .get(TOKEN_EXPIRY_ANNOTATION)?
        .parse()
        .ok()?;
    let data = live.data.as_ref()?;
    if data.get(names::KUBECONFIG_KEY)?.0 != kubeconfig.as_bytes()
        || data.get(TOKEN_KEY)?.0.is_empty()
    {
        return None;
    }
    expires
        .checked_sub(jiff::SignedDuration::from_secs(TOKEN_LIFETIME_SECONDS / 3))
        .ok()
}

/// Whether a token Secret must be rewritten at `now`.
pub fn needs_refresh(live: Option<&Secret>, kubeconfig: &str, now: jiff::Timestamp) -> bool {
    refresh_at(live, kubeconfig).is_none_or(|at| now >= at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    const USER_KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://a.example:6443", certificate-authority-data: Q0E=}
- name: b
  cluster: {server: "https://b.example:6443", insecure-skip-tls-verify: true}
contexts:
- name: ca
  context: {cluster: a, user: admin}
- name: cb
  context: {cluster: b, user: admin}
current-context: cb
users:
- name: admin
  user: {token: secret}
"#;

    #[test]
    fn endpoint_follows_the_current_context() {
        let ep = endpoint(USER_KUBECONFIG).expect("endpoint");
        assert_eq!(ep.server, "https://b.example:6443");
        assert!(ep.insecure_skip_tls_verify);
        assert_eq!(ep.certificate_authority_data, None);
        assert!(matches!(
            endpoint("apiVersion: v1\nkind: Config\n"),
            Err(EndpointError::NoCluster)
        ));
    }

    #[test]
    fn token_kubeconfig_parses_back_with_the_token_only() {
        let ep = ClusterEndpoint {
            server: "https://infra.example:6443".into(),
            certificate_authority_data: Some("Q0E=".into()),
            insecure_skip_tls_verify: false,
        };
        let text = token_kubeconfig(
            &ep,
            "kubevirt-csi",
            "/var/run/secrets/infracluster/token",
            "vms",
        );
        let kc = Kubeconfig::from_yaml(&text).expect("parses");
        assert_eq!(kc.current_context.as_deref(), Some("infra"));
        let user = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(kc.auth_infos[0].name, "kubevirt-csi");
        assert_eq!(
            user.token_file.as_deref(),
            Some("/var/run/secrets/infracluster/token")
        );
        assert!(user.token.is_none());
        assert!(user.client_certificate_data.is_none());
        let ctx = kc.contexts[0].context.as_ref().expect("context");
        assert_eq!(ctx.namespace.as_deref(), Some("vms"));
        assert_eq!(endpoint(&text).expect("endpoint"), ep);
    }

    #[test]
    fn refresh_when_missing_old_or_moved() {
        let inp = inputs(&external(hosted_cluster()));
        let ep = ClusterEndpoint {
            server: "https://i:6443".into(),
            certificate_authority_data: None,
            insecure_skip_tls_verify: false,
        };
        let now = jiff::Timestamp::from_second(1_000_000).expect("ts");
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(TOKEN_LIFETIME_SECONDS))
            .expect("ts");
        let kubeconfig = token_kubeconfig(&ep, "u", "/t/token", "ns");
        let secret = TokenSecret {
            name: names::CSI_INFRA_KUBECONFIG,
            kubeconfig: kubeconfig.clone(),
            token: "t".into(),
            expires,
        }
        .secret(&inp);
        assert_eq!(
            secret.metadata.namespace.as_deref(),
            Some("clusters-guest1")
        );
        assert_eq!(secret.data.as_ref().expect("data")["token"].0, b"t");
        assert!(needs_refresh(None, &kubeconfig, now));
        assert!(!needs_refresh(Some(&secret), &kubeconfig, now));
        let late = expires
            .checked_sub(jiff::SignedDuration::from_secs(60))
            .expect("ts");
        assert!(needs_refresh(Some(&secret), &kubeconfig, late));
        let moved = token_kubeconfig(
            &ClusterEndpoint {
                server: "https://elsewhere:6443".into(),
                ..ep.clone()
            },
            "u",
            "/t/token",
            "ns",
        );
        assert!(needs_refresh(Some(&secret), &moved, now));
    }
}
