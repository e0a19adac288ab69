//! The daemons' token kubeconfigs, for an external infra cluster and in a
//! hosted guest: a bound token of each daemon's ServiceAccount there
//! (TokenRequest API), written with its kubeconfig into the control-plane
//! namespace, and asked for again a third of its lifetime before it
//! expires. Untouched otherwise, so a reconcile that changes nothing writes
//! nothing.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::apply::Applier;
use crate::context::Context;
use crate::desired::ClusterInputs;
use crate::desired::kubeconfig::{TOKEN_LIFETIME_SECONDS, TokenSecret, needs_refresh, refresh_at};
use crate::desired::object::{Object, ObjectKey};
use crate::desired::sets::{self, TokenKubeconfig, side};
use crate::error::{Error, Result, Target};

/// Make sure every token Secret of `kubeconfigs` (accounts on the cluster
/// of `client`, which is `target`) is fresh. Returns the keys of the
/// Secrets (to keep when pruning) and the earliest time one needs
/// refreshing.
pub async fn ensure(
    ctx: &Context,
    inp: &ClusterInputs,
    client: &Client,
    target: Target,
    kubeconfigs: Vec<TokenKubeconfig>,
) -> Result<(Vec<ObjectKey>, Option<jiff::Timestamp>)> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &inp.control_plane_namespace);
    let mut keys = Vec::new();
    let mut next: Option<jiff::Timestamp> = None;
    for k in kubeconfigs {
        let live = secrets.get_opt(k.secret).await.map_err(Error::kube(
            Target::Management,
            format!("get Secret {}", k.secret),
        ))?;
        let at = if needs_refresh(live.as_ref(), &k.kubeconfig, jiff::Timestamp::now()) {
            let secret = issue(inp, client, target, &k).await?;
            let mut obj = vec![Object::new(&secret)?];
            sets::tag(&mut obj, side::MANAGEMENT);
            Applier {
                client: &ctx.client,
                target: Target::Management,
                metrics: &ctx.metrics,
            }
            .apply(&obj[0])
            .await?;
            tracing::info!(secret = k.secret, namespace = %inp.control_plane_namespace, cluster = target.as_str(), "issued token");
            refresh_at(Some(&secret), &k.kubeconfig)
        } else {
            refresh_at(live.as_ref(), &k.kubeconfig)
        };
        if let Some(at) = at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        keys.push(ObjectKey {
            group: String::new(),
            kind: "Secret".to_string(),
            namespace: Some(inp.control_plane_namespace.clone()),
            name: k.secret.to_string(),
        });
    }
    Ok((keys, next))
}

/// Ask the daemon's cluster for a token of its account.
async fn issue(
    inp: &ClusterInputs,
    client: &Client,
    target: Target,
    k: &TokenKubeconfig,
) -> Result<Secret> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &k.account_namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(k.account, &PostParams::default(), &request)
        .await
        .map_err(Error::kube(
            target,
            format!("request token of ServiceAccount {}", k.account),
        ))?;
    let status = issued.status.filter(|s| !s.token.is_empty());
    let Some(status) = status else {
        return Err(Error::Kube {
            target,
            action: format!("request token of ServiceAccount {}", k.account),
            source: kube::Error::Api(Box::new(kube::core::Status {
                code: 500,
                message: "TokenRequest returned no token".to_string(),
                ..Default::default()
            })),
        });
    };
    Ok(TokenSecret {
        name: k.secret,
        kubeconfig: k.kubeconfig.clone(),
        token: status.token,
        expires: status.expiration_timestamp.0,
    }
    .secret(inp))
}
