//! The pool side of node joining (see [`crate::desired::join`]) for a
//! hosted control plane: every pool VM whose Node has not joined holds a
//! live bootstrap token of its own in the hosted cluster and user data
//! naming it; the token is revoked as soon as the Node has joined (the
//! kubelet has its own certificate by then) or the VM goes away. Tokens
//! are renewed before they expire for VMs still waiting.
//!
//! [`plan`] decides from what was seen; [`Joining::converge`] carries it out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::core::ApiResource;
use kube::{Api, Client};

use super::observe::{NodeView, VmView};
use crate::apply::Applier;
use crate::desired::join::{self, BootstrapToken, JoinNode, JoiningVm, TOKEN_SECRET_PREFIX};
use crate::desired::kubeconfig::ClusterEndpoint;
use crate::desired::object::Object;
use crate::error::{Error, Result, Target};
use crate::metrics::Metrics;
use crate::names;

/// A bootstrap token Secret of the pool, as found in the hosted cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveToken {
    /// The Secret's name.
    pub secret: String,
    /// The VM it is for.
    pub vm: String,
    pub token: BootstrapToken,
}

/// What to do about the pool's tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// VMs that need a new token.
    pub issue: Vec<String>,
    /// VMs that wait to join, with the token their user data must carry.
    pub waiting: BTreeMap<String, BootstrapToken>,
    /// Token Secrets to delete.
    pub revoke: Vec<String>,
}

/// Decide from the pool's VMs, its joined Nodes and its live tokens.
pub fn plan(
    vms: &[VmView],
    nodes: &BTreeMap<String, NodeView>,
    tokens: &[LiveToken],
    now: jiff::Timestamp,
) -> Plan {
    let mut out = Plan::default();
    for vm in vms {
        let waiting = vm.active() && !nodes.contains_key(&vm.name);
        let mut mine: Vec<&LiveToken> = tokens.iter().filter(|t| t.vm == vm.name).collect();
        // The newest usable token is kept; every other is revoked.
        mine.sort_by_key(|t| std::cmp::Reverse(t.token.expires));
        let keep = mine
            .first()
            .filter(|t| waiting && !t.token.needs_renewal(now))
            .map(|t| t.secret.clone());
        match mine.first().filter(|_| keep.is_some()) {
            Some(t) => {
                out.waiting.insert(vm.name.clone(), t.token.clone());
            }
            None if waiting => out.issue.push(vm.name.clone()),
            None => {}
        }
        out.revoke.extend(
            mine.iter()
                .filter(|t| Some(&t.secret) != keep.as_ref())
                .map(|t| t.secret.clone()),
        );
    }
    // Tokens of VMs that are gone.
    out.revoke.extend(
        tokens
            .iter()
            .filter(|t| !vms.iter().any(|v| v.name == t.vm))
            .map(|t| t.secret.clone()),
    );
    out
}

/// The earliest time a waiting VM's token needs renewing, from `now`.
pub fn next_renewal(plan: &Plan, now: jiff::Timestamp) -> Option<Duration> {
    plan.waiting
        .values()
        .map(BootstrapToken::renew_at)
        .min()
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// One pool's joining, in one hosted cluster.
pub struct Joining<'a> {
    pub guest: &'a Client,
    pub infra: &'a Client,
    pub metrics: &'a Metrics,
    /// The hosted cluster as nodes reach it.
    pub endpoint: ClusterEndpoint,
    pub kubernetes_version: &'a str,
    pub pool: &'a str,
    /// The VMs' namespace.
    pub namespace: &'a str,
    /// The HostedCluster's owner labels.
    pub labels: BTreeMap<String, String>,
}

impl Joining<'_> {
    fn tokens_api(&self) -> Api<Secret> {
        Api::namespaced(self.guest.clone(), "kube-system")
    }

    fn selector(&self) -> String {
        format!(
            "{},{}={}",
            kubevirt_infra::labels::selector_string(&self.labels),
            names::NODE_POOL_LABEL,
            self.pool
        )
    }

    /// The pool's live tokens.
    async fn tokens(&self) -> Result<Vec<LiveToken>> {
        let list = self
            .tokens_api()
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(Error::kube(Target::Guest, "list bootstrap tokens"))?;
        Ok(list
            .items
            .iter()
            .filter_map(|s| {
                Some(LiveToken {
                    secret: s.metadata.name.clone()?,
                    vm: s
                        .metadata
                        .labels
                        .as_ref()?
                        .get(names::JOINING_VM_LABEL)?
                        .clone(),
                    token: BootstrapToken::of(s)?,
                })
            })
            .collect())
    }

    fn vm<'v>(&'v self, vm: &'v VmView) -> JoiningVm<'v> {
        JoiningVm {
            name: &vm.name,
            namespace: self.namespace,
            uid: &vm.uid,
            pool: self.pool,
            labels: &self.labels,
        }
    }

    /// Carry out [`plan`]. Returns when to look again (a renewal).
    pub async fn converge(
        &self,
        vms: &[VmView],
        nodes: &BTreeMap<String, NodeView>,
    ) -> Result<Option<Duration>> {
        let now = jiff::Timestamp::now();
        let mut plan = plan(vms, nodes, &self.tokens().await?, now);
        let guest = Applier {
            client: self.guest,
            target: Target::Guest,
            metrics: self.metrics,
        };
        let infra = Applier {
            client: self.infra,
            target: Target::Infra,
            metrics: self.metrics,
        };
        for name in std::mem::take(&mut plan.issue) {
            let Some(vm) = vms.iter().find(|v| v.name == name) else {
                continue;
            };
            let token = BootstrapToken::generate(now);
            guest
                .apply(&Object::new(&join::token_secret(&self.vm(vm), &token))?)
                .await?;
            tracing::info!(vm = %name, token = %token.id, "issued bootstrap token");
            plan.waiting.insert(name, token);
        }
        for (name, token) in &plan.waiting {
            let Some(vm) = vms.iter().find(|v| &v.name == name) else {
                continue;
            };
            let user_data = join::user_data(&JoinNode {
                endpoint: &self.endpoint,
                token,
                node_name: name,
                kubernetes_version: self.kubernetes_version,
            });
            infra
                .apply(&Object::new(&join::user_data_secret(
                    &self.vm(vm),
                    user_data,
                ))?)
                .await?;
        }
        let secrets = ApiResource::erase::<Secret>(&());
        for secret in &plan.revoke {
            if guest.delete(&secrets, Some("kube-system"), secret).await? {
                tracing::info!(
                    token = %secret.trim_start_matches(TOKEN_SECRET_PREFIX),
                    "revoked bootstrap token"
                );
            }
        }
        Ok(next_renewal(&plan, now))
    }

    /// Revoke every token of the pool.
    pub async fn revoke_all(&self) -> Result<()> {
        Applier {
            client: self.guest,
            target: Target::Guest,
            metrics: self.metrics,
        }
        .delete_matching(
            &ApiResource::erase::<Secret>(&()),
            "kube-system",
            &self.selector(),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-12-07T00:00:00Z".parse().expect("time")
    }

    fn vm(name: &str) -> VmView {
        VmView::created_at(name, now())
    }

    fn token(vm: &str, secret: &str, issued: jiff::Timestamp) -> LiveToken {
        LiveToken {
            secret: secret.to_string(),
            vm: vm.to_string(),
            token: BootstrapToken::generate(issued),
        }
    }

    fn node(name: &str) -> (String, NodeView) {
        (
            name.to_string(),
            NodeView {
                name: name.to_string(),
                ..NodeView::default()
            },
        )
    }

    #[test]
    fn waiting_vms_get_one_token_and_joined_ones_none() {
        let vms = [vm("a"), vm("b"), vm("c")];
        let nodes = BTreeMap::from([node("c")]);
        let tokens = [
            token("b", "bootstrap-token-bbbbbb", now()),
            token("c", "bootstrap-token-cccccc", now()),
            token("gone", "bootstrap-token-gggggg", now()),
        ];
        let p = plan(&vms, &nodes, &tokens, now());
        assert_eq!(p.issue, ["a"]);
        assert_eq!(p.waiting.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            p.revoke,
            ["bootstrap-token-cccccc", "bootstrap-token-gggggg"]
        );
    }

    #[test]
    fn old_tokens_are_renewed_and_removed_vms_lose_theirs() {
        let mut removed = vm("r");
        removed.marked = true;
        let vms = [vm("a"), removed];
        let old = now() - jiff::SignedDuration::from_hours(20);
        let tokens = [
            token("a", "bootstrap-token-aaaaa1", old),
            token("r", "bootstrap-token-rrrrrr", now()),
        ];
        let p = plan(&vms, &BTreeMap::new(), &tokens, now());
        assert_eq!(p.issue, ["a"]);
        assert!(p.waiting.is_empty());
        assert_eq!(
            p.revoke,
            ["bootstrap-token-aaaaa1", "bootstrap-token-rrrrrr"]
        );
    }

    #[test]
    fn of_two_tokens_the_newer_is_kept() {
        let vms = [vm("a")];
        let older = now() - jiff::SignedDuration::from_hours(1);
        let tokens = [
            token("a", "bootstrap-token-older1", older),
            token("a", "bootstrap-token-newer1", now()),
        ];
        let p = plan(&vms, &BTreeMap::new(), &tokens, now());
        assert!(p.issue.is_empty());
        assert_eq!(p.waiting["a"], tokens[1].token);
        assert_eq!(p.revoke, ["bootstrap-token-older1"]);
        let next = next_renewal(&p, now()).expect("renewal");
        assert_eq!(next, Duration::from_secs(16 * 3600));
    }
}
