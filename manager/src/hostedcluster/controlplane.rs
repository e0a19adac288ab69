//! The hosted control plane of a HostedCluster without a kubeconfig: apply
//! its Services, learn the published endpoint, keep its PKI, apply etcd and
//! (once the endpoint is known, since the serving certificate names it) the
//! API server, controller manager and scheduler, then observe what runs.
//!
//! What it reports is what holds: etcd is available when its StatefulSet
//! has a quorum of Ready members, the API server when its Deployment has an
//! available replica *and* `/readyz` answers through the published endpoint
//! with the admin kubeconfig the status names.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client};

use crate::api::HostedCluster;
use crate::api::controlplane::ApiEndpoint;
use crate::apply::{Applier, keys};
use crate::clients::client_from_kubeconfig;
use crate::context::Context;
use crate::desired::controlplane::meta;
use crate::desired::hosted::{self, HostedInputs, Publishing, pki as hpki};
use crate::desired::object::{Object, ObjectKey};
use crate::desired::sets::{side, tag};
use crate::error::{Error, Result, Target};
use crate::shared_etcd::{self, EtcdError};
use crate::{hash, names, pki};

/// Ready members or replicas of a component, against those it should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub ready: i32,
    pub desired: i32,
}

impl Readiness {
    /// etcd: a quorum of members is Ready.
    pub fn has_quorum(&self) -> bool {
        self.desired > 0 && self.ready > self.desired / 2
    }
}

/// What a pass found of the cluster's etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdState {
    /// Its own members.
    Members(Readiness),
    /// Its user, role and prefix are in place in the shared etcd at
    /// `endpoints`.
    Shared { endpoints: String, prefix: String },
}

impl EtcdState {
    /// The API server can use it: a quorum of members, or its place in the
    /// shared etcd.
    pub fn is_available(&self) -> bool {
        match self {
            EtcdState::Members(r) => r.has_quorum(),
            EtcdState::Shared { .. } => true,
        }
    }

    /// In words, for the EtcdAvailable condition.
    pub fn describe(&self) -> String {
        match self {
            EtcdState::Members(r) => format!("{} of {} etcd members ready", r.ready, r.desired),
            EtcdState::Shared { endpoints, prefix } => {
                format!(
                    "the cluster's etcd user and prefix {prefix} are in place in the shared etcd at {endpoints}"
                )
            }
        }
    }
}

/// What a pass over the control plane found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// Where the API server is published, once known.
    pub endpoint: Option<ApiEndpoint>,
    pub etcd: EtcdState,
    pub apiserver: Readiness,
    /// Every component (etcd, kube-apiserver, kube-controller-manager,
    /// kube-scheduler) runs its current spec on all its replicas, none
    /// older left.
    pub rolled_out: bool,
    /// `/readyz` through the endpoint: `Ok` when it answered ok, otherwise
    /// why not (in words for the condition message).
    pub serving: std::result::Result<(), String>,
    /// The admin kubeconfig for the endpoint.
    pub admin_kubeconfig: Option<Vec<u8>>,
    /// When a certificate is due for renewal.
    pub renew_at: Option<jiff::Timestamp>,
    /// The objects applied, for pruning.
    pub keys: BTreeSet<ObjectKey>,
}

impl ControlPlane {
    /// The published API server answers.
    pub fn is_serving(&self) -> bool {
        self.serving.is_ok()
    }
}

/// A hosted cluster's control-plane objects, tagged as management objects.
fn objects<K>(items: impl IntoIterator<Item = K>) -> Result<Vec<Object>>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let mut out = items
        .into_iter()
        .map(|k| Object::new(&k))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    tag(&mut out, side::MANAGEMENT);
    Ok(out)
}

/// The endpoint the API server's Service is published at, once it has one.
pub fn published_endpoint(inp: &HostedInputs, svc: &Service) -> Option<ApiEndpoint> {
    match &inp.publishing {
        Publishing::NodePort { address, .. } => {
            let port = svc.spec.as_ref()?.ports.as_ref()?.first()?.node_port?;
            Some(ApiEndpoint {
                host: address.clone(),
                port,
            })
        }
        Publishing::LoadBalancer { hostname } => {
            let ingress = svc
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = hostname
                .clone()
                .or_else(|| ingress.hostname.clone())
                .or_else(|| ingress.ip.clone())?;
            Some(ApiEndpoint {
                host,
                port: hosted::APISERVER_PORT,
            })
        }
    }
}

/// A hash of some Secrets' data: the pods mounting them roll when it changes.
fn config_hash(material: &pki::Material, secrets: &[&str]) -> String {
    let parts: Vec<&[u8]> = secrets
        .iter()
        .filter_map(|s| material.get(s))
        .flat_map(|s| s.data.values().map(Vec::as_slice))
        .collect();
    hash::hex(hash::fnv1a_parts(parts))
}

/// Converge the control plane of `hc` and report what runs.
pub async fn converge(hc: &HostedCluster, ctx: &Context) -> Result<ControlPlane> {
    let inp = HostedInputs::new(hc, &ctx.settings.images.control_plane_registry)
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let client = &ctx.client;
    let management = Applier {
        client,
        target: Target::Management,
        metrics: &ctx.metrics,
    };
    let mut applied: Vec<Object> = Vec::new();

    // Namespace and Services first: the Service gives the endpoint.
    let ns = Namespace {
        metadata: meta(&inp.namespace, None, inp.labels()),
        ..Namespace::default()
    };
    let mut first = objects([ns])?;
    let mut services = match inp.shared_etcd {
        Some(_) => Vec::new(),
        None => hosted::etcd::services(&inp)?,
    };
    services.push(hosted::apiserver::service(&inp)?);
    first.extend(objects(services)?);
    let svc: Option<Service> = management
        .apply_all(&first)
        .await?
        .live(Some(&inp.namespace), names::KUBE_APISERVER);
    applied.extend(first);
    let endpoint = svc.as_ref().and_then(|s| published_endpoint(&inp, s));

    // The PKI.
    let secrets = Api::<Secret>::namespaced(client.clone(), &inp.namespace);
    let stored: BTreeMap<String, pki::Stored> = secrets
        .list(
            &ListParams::default().labels(&crate::desired::owner_selector_of(
                &inp.hc_namespace,
                &inp.hc_name,
            )),
        )
        .await
        .map_err(Error::kube(Target::Management, "list Secrets"))?
        .items
        .into_iter()
        .map(|s| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let stored = pki::Stored {
                data: s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                annotations: s.metadata.annotations.unwrap_or_default(),
            };
            (name, stored)
        })
        .collect();
    // A shared etcd: the cluster's place in it, and its CA for the PKI.
    let shared_ca = match &inp.shared_etcd {
        Some(shared) => {
            let creds = credentials(client, &inp.hc_namespace, &shared.credentials_secret).await?;
            let writes = shared_etcd::ensure(&ctx.etcd, shared, &creds).await?;
            if writes > 0 {
                tracing::info!(user = %shared.user, writes, "placed the cluster in the shared etcd");
            }
            Some(creds.authority())
        }
        None => None,
    };
    let material = pki::ensure(
        &hpki::requests(&inp, endpoint.as_ref(), shared_ca.as_ref()),
        &stored,
        jiff::Timestamp::now(),
    )
    .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    if material.made > 0 {
        tracing::info!(issued = material.made, namespace = %inp.namespace, "control-plane PKI issued");
    }
    let mut secrets_set = hpki::secrets(&inp, &material);
    secrets_set.extend(hpki::kubeconfigs(&inp, &material, endpoint.as_ref()));
    let pki_objects = objects(secrets_set)?;
    management.apply_all(&pki_objects).await?;
    applied.extend(pki_objects);

    // etcd (unless shared); the rest once the endpoint is known.
    let mut workloads = Vec::new();
    if inp.shared_etcd.is_none() {
        let etcd_hash = config_hash(&material, &[hpki::ETCD_SERVER, hpki::ETCD_PEER]);
        workloads.extend(objects([hosted::etcd::statefulset(&inp, &etcd_hash)?])?);
        workloads.extend(objects(hosted::etcd::disruption_budget(&inp)?)?);
    }
    if endpoint.is_some() {
        let kas_hash = config_hash(
            &material,
            &[
                hpki::KAS_SERVER,
                hpki::ETCD_CLIENT,
                hpki::KAS_KUBELET_CLIENT,
                hpki::KAS_AGGREGATOR,
                hpki::SA_SIGNING_KEY,
            ],
        );
        let kcm_hash = config_hash(
            &material,
            &[hpki::KCM_CLIENT, hpki::ROOT_CA, hpki::SA_SIGNING_KEY],
        );
        let scheduler_hash = config_hash(&material, &[hpki::SCHEDULER_CLIENT, hpki::ROOT_CA]);
        workloads.extend(objects([
            hosted::apiserver::deployment(&inp, &kas_hash)?,
            hosted::controllers::controller_manager(&inp, &kcm_hash)?,
            hosted::controllers::scheduler(&inp, &scheduler_hash)?,
        ])?);
        workloads.extend(objects(hosted::apiserver::disruption_budget(&inp)?)?);
    }
    let workloads_live = management.apply_all(&workloads).await?;
    applied.extend(workloads);

    // What runs, as the applies read it back.
    let of = |ready: Option<i32>| Readiness {
        ready: ready.unwrap_or(0),
        desired: inp.replicas(),
    };
    let running: Vec<Option<Deployment>> = [
        names::KUBE_APISERVER,
        names::KUBE_CONTROLLER_MANAGER,
        names::KUBE_SCHEDULER,
    ]
    .into_iter()
    .map(|name| workloads_live.live(Some(&inp.namespace), name))
    .collect();
    let etcd_set: Option<StatefulSet> = workloads_live.live(Some(&inp.namespace), names::ETCD);
    let etcd = match &inp.shared_etcd {
        Some(shared) => EtcdState::Shared {
            endpoints: shared.endpoints.join(","),
            prefix: shared.prefix(),
        },
        None => EtcdState::Members(of(etcd_set
            .as_ref()
            .and_then(|s| s.status.as_ref()?.ready_replicas))),
    };
    let apiserver = of(running[0]
        .as_ref()
        .and_then(|d| d.status.as_ref()?.available_replicas));
    let rolled_out = running
        .iter()
        .all(|d| d.as_ref().is_some_and(deployment_rolled_out))
        && (inp.shared_etcd.is_some() || etcd_set.as_ref().is_some_and(statefulset_rolled_out));
    let admin_kubeconfig = endpoint.as_ref().map(|ep| {
        hpki::kubeconfig(
            &material,
            &inp.hc_name,
            &hosted::endpoint_url(ep),
            hpki::ADMIN_CLIENT,
        )
        .into_bytes()
    });
    let serving = match (&endpoint, &admin_kubeconfig) {
        (None, _) | (_, None) => Err(match inp.publishing {
            Publishing::LoadBalancer { .. } => {
                "waiting for the load balancer to give Service kube-apiserver an address"
                    .to_string()
            }
            Publishing::NodePort { .. } => {
                "waiting for Service kube-apiserver to get its node port".to_string()
            }
        }),
        _ if apiserver.ready == 0 => {
            Err(format!("0 of {} API servers available", apiserver.desired))
        }
        (Some(ep), Some(kc)) => readyz(kc, &inp, ep).await,
    };
    Ok(ControlPlane {
        endpoint,
        etcd,
        apiserver,
        rolled_out,
        serving,
        admin_kubeconfig,
        renew_at: material.renew_at,
        keys: keys(&applied),
    })
}

/// A Deployment whose every replica runs its current template and is
/// available, with no older replica left.
fn deployment_rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want)
    })
}

/// A StatefulSet whose every member runs its current revision and is Ready.
fn statefulset_rolled_out(set: &StatefulSet) -> bool {
    let want = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    set.status.as_ref().is_some_and(|s| {
        s.observed_generation >= set.metadata.generation
            && s.update_revision.is_some()
            && s.current_revision == s.update_revision
            && s.ready_replicas == Some(want)
            && s.updated_replicas == Some(want)
    })
}

/// The shared etcd's credentials, from Secret `name` in `namespace`.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<shared_etcd::Credentials> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(Error::kube(
            Target::Management,
            format!("get Secret {name}"),
        ))?
        .ok_or_else(|| EtcdError::SecretMissing(format!("{namespace}/{name}")))?;
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(shared_etcd::Credentials::from_data(
        &format!("{namespace}/{name}"),
        &data,
    )?)
}

/// `GET /readyz` through the published endpoint.
async fn readyz(
    kubeconfig: &[u8],
    inp: &HostedInputs,
    ep: &ApiEndpoint,
) -> std::result::Result<(), String> {
    let url = hosted::endpoint_url(ep);
    let client: Client = client_from_kubeconfig(
        kubeconfig,
        Target::Guest,
        &inp.hc_namespace,
        &names::admin_kubeconfig_secret(&inp.hc_name),
    )
    .await
    .map_err(|e| e.to_string())?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.request_text(request),
    )
    .await
    {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(format!("{url}/readyz answered {:?}", body.trim())),
        Ok(Err(e)) => Err(format!("{url}/readyz: {}", crate::error::describe(&e))),
        Err(_) => Err(format!("{url}/readyz did not answer within 5 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::hosted::fixtures::{hosted, inputs};
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn quorum_is_a_majority() {
        let r = |ready, desired| Readiness { ready, desired };
        assert!(r(1, 1).has_quorum());
        assert!(r(2, 3).has_quorum());
        assert!(!r(1, 3).has_quorum());
        assert!(!r(0, 0).has_quorum());
    }

    #[test]
    fn the_endpoint_comes_from_the_node_port_or_the_load_balancer() {
        let inp = inputs(&hosted());
        let svc = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 6443,
                    node_port: Some(31000),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        assert_eq!(
            published_endpoint(&inp, &svc),
            Some(ApiEndpoint {
                host: "192.168.100.10".into(),
                port: 31000
            })
        );

        let mut hc = hosted();
        hc.spec.services.clear();
        let inp = inputs(&hc);
        assert_eq!(published_endpoint(&inp, &svc), None);
        let with_ingress = Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.168.200.7".into()),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                ..ServiceStatus::default()
            }),
            ..svc
        };
        assert_eq!(
            published_endpoint(&inp, &with_ingress),
            Some(ApiEndpoint {
                host: "192.168.200.7".into(),
                port: 6443
            })
        );
    }
}
