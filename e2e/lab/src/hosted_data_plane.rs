//! The data plane of a hosted cluster's joined nodes, as the lab plays it:
//! what a real node runs besides the kubelet's join (which the guest agent
//! plays, [`crate::guest_agent`]).
//!
//! - **kube-proxy's role**: the lab's service proxy ([`ServiceProxy`]) for
//!   the hosted cluster, in the lab's network namespace: each joined
//!   node's address serves its Services' node ports, so the infra load
//!   balancer's path (ingress -> virt-launcher pod, which is the VM's
//!   address -> guest node port -> guest pod) is one real path.
//! - **the kubelet's pod side**: the lab's kubelet stand-in on each node,
//!   running the node's echo pods (`kubevirt-lab/echo`) on addresses of the
//!   Node's `spec.podCIDR` (which the hosted kube-controller-manager
//!   allocates from `spec.networking.clusterNetwork`, so that range must be
//!   one of the lab's: the default [`lab_net::HOSTED_POD_NET`], or a range
//!   of [`lab_net::GUEST_POD_NET`]). Pods of any other image stay Pending:
//!   nothing would run behind them.
//!
//! Each stand-in has a ServiceAccount of its own in the hosted cluster
//! (`kube-system/lab-service-proxy`, bound to `system:node-proxier`;
//! `kube-system/lab-kubelet`, bound to `system:node` and the attach-detach
//! controller's role, as the lab's own guest grants its kubelet stand-in),
//! made with the cluster's admin kubeconfig; they reach the published
//! endpoint through one loopback bridge.

use std::path::Path;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use lab_guest::kubelet::{self, GuestNode};
use lab_net::ServiceProxy;
use lab_net::bridge::Bridge;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{Lab, LabError, hcp};

/// The namespace of the stand-ins' accounts in the hosted cluster.
const NAMESPACE: &str = "kube-system";
const PROXY_ACCOUNT: &str = "lab-service-proxy";
const KUBELET_ACCOUNT: &str = "lab-kubelet";
/// The field manager of the lab's writes in the hosted cluster.
const MANAGER: &str = "lab-hosted-data-plane";

/// A hosted cluster's data plane; stopped when dropped.
pub struct HostedDataPlane {
    pub proxy: ServiceProxy,
    kubelets: JoinSet<()>,
    /// The stand-ins' way to the published endpoint.
    _bridge: Bridge,
}

impl HostedDataPlane {
    /// Starts the service proxy of hosted cluster `hc` (its status read)
    /// and a kubelet stand-in for each of its joined `nodes`.
    pub async fn start(
        lab: &Lab,
        hc: &DynamicObject,
        nodes: &[String],
    ) -> Result<HostedDataPlane, LabError> {
        let (bridge, admin) = hcp::admin_config(lab, hc).await?;
        let admin_client = Client::try_from(admin.clone())?;
        let proxy_client = account(
            &admin_client,
            &admin,
            PROXY_ACCOUNT,
            &["system:node-proxier"],
        )
        .await?;
        let kubelet_client = account(
            &admin_client,
            &admin,
            KUBELET_ACCOUNT,
            &["system:node", "system:controller:attachdetach-controller"],
        )
        .await?;
        let proxy = ServiceProxy::start(proxy_client, lab.net.clone(), Default::default());
        let mut kubelets = JoinSet::new();
        for name in nodes {
            let node = GuestNode::new(name, &nodes_dir(&lab.dir).join(name));
            node.prepare().map_err(LabError::io(
                "prepare the kubelet directory of",
                &node.kubelet_dir,
            ))?;
            let mut cfg = node.kubelet_config(Some(lab.net.clone()));
            cfg.echo_only = true;
            let (client, name) = (kubelet_client.clone(), name.clone());
            kubelets.spawn(async move {
                if let Err(e) = kubelet::run(client, cfg).await {
                    tracing::error!(node = %name, "kubelet stand-in stopped: {e}");
                }
            });
        }
        Ok(HostedDataPlane {
            proxy,
            kubelets,
            _bridge: bridge,
        })
    }

    /// Stops the kubelet stand-ins and the proxy.
    pub async fn stop(mut self) {
        self.kubelets.shutdown().await;
        self.proxy.stop();
    }
}

/// Where the joined nodes' kubelet directories go.
fn nodes_dir(lab_dir: &Path) -> std::path::PathBuf {
    lab_dir.join("hosted-nodes")
}

/// A client of ServiceAccount `kube-system/<name>` (made, and bound to
/// the ClusterRoles `roles`, when missing), with the endpoint and CA of
/// `admin`.
async fn account(
    admin: &Client,
    admin_config: &kube::Config,
    name: &str,
    roles: &[&str],
) -> Result<Client, LabError> {
    let params = PatchParams::apply(MANAGER).force();
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    accounts
        .patch(
            name,
            &params,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": NAMESPACE},
            })),
        )
        .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    for role in roles {
        let binding = format!("lab:{name}:{}", role.trim_start_matches("system:"));
        bindings
            .patch(
                &binding,
                &params,
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
                })),
            )
            .await?;
    }
    let token = lab_cluster::request_token(&accounts, name, 24 * 3600).await?;
    let mut config = admin_config.clone();
    config.auth_info = serde_json::from_value(json!({"token": token}))
        .map_err(|e| LabError::Invalid(format!("token of {NAMESPACE}/{name}: {e}")))?;
    Ok(Client::try_from(config)?)
}
