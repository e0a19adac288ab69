//! A load-balancer allocator (what MetalLB or a cloud does for an infra
//! cluster): every Service of type LoadBalancer without a
//! `loadBalancerClass` gets one ingress address per `ipFamilies` entry from
//! the configured IPv4/IPv6 pools (`ipMode: VIP`), `spec.loadBalancerIP` when
//! it is free. Addresses in use are read back from the Services themselves, so
//! an address is free again once its Service is deleted or changes type (the
//! stale ingress is then cleared). An address set by [`reassign`] is kept as
//! long as no other Service holds it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::meta::{is_deleting, key};
use crate::pool::{AddressPool, Family};
use crate::runner::{drain, error_policy};

/// Address pools of the allocator.
#[derive(Clone, Debug)]
pub struct LbConfig {
    pub ipv4_pool: String,
    pub ipv6_pool: String,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            ipv4_pool: "192.168.200.0/21".to_string(),
            ipv6_pool: "fd00:c0a8:c8::/112".to_string(),
        }
    }
}

struct Ctx {
    client: Client,
    v4: AddressPool,
    v6: AddressPool,
    store: Store<Service>,
    /// Addresses written but perhaps not yet seen in the store, by Service uid.
    pending: Mutex<HashMap<String, Vec<IpAddr>>>,
}

/// Runs the allocator until the future is dropped.
pub async fn run(client: Client, cfg: LbConfig) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let ctx = Arc::new(Ctx {
        v4: AddressPool::new(&cfg.ipv4_pool)?,
        v6: AddressPool::new(&cfg.ipv6_pool)?,
        store: controller.store(),
        client,
        pending: Mutex::new(HashMap::new()),
    });
    drain("lb", controller.run(reconcile, error_policy, ctx)).await;
    Ok(())
}

/// Sets a Service's ingress addresses by hand (what a provider does when it
/// moves a load balancer); the allocator keeps them while no other Service
/// holds them.
pub async fn reassign(
    client: &Client,
    namespace: &str,
    name: &str,
    ips: &[&str],
) -> Result<Service, Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let ingress: Vec<IpAddr> = ips
        .iter()
        .map(|ip| {
            ip.parse()
                .map_err(|_| Error::NotReady(format!("{ip:?} is not an IP address")))
        })
        .collect::<Result<_, _>>()?;
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress_of(&ingress)}}});
    Ok(services
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Works from the watch's copy, as an allocator does from its informer: an
/// address it wrote that the copy does not show yet is in `pending`, and
/// writing it again changes nothing.
async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let svc = svc.as_ref();
    let ns = svc.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = svc.uid().unwrap_or_default();
    let current = ingress_ips(svc);
    if !managed(svc) {
        if let Ok(mut pending) = ctx.pending.lock() {
            pending.remove(&uid);
        }
        if !current.is_empty()
            && svc
                .spec
                .as_ref()
                .and_then(|s| s.load_balancer_class.as_ref())
                .is_none()
        {
            let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
            services
                .patch_status(
                    &svc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            tracing::info!(service = %key(svc), "load balancer released");
        }
        return Ok(Action::await_change());
    }

    let desired = {
        let mut pending = ctx
            .pending
            .lock()
            .map_err(|_| Error::NotReady("allocator state poisoned".into()))?;
        let others = ctx.store.state();
        let live: HashSet<String> = others.iter().filter_map(|s| s.uid()).collect();
        pending.retain(|u, _| live.contains(u) || *u == uid);
        let mut used: HashSet<IpAddr> = others
            .iter()
            .filter(|s| s.uid().as_deref() != Some(uid.as_str()) && managed(s))
            .flat_map(|s| ingress_ips(s))
            .collect();
        used.extend(
            pending
                .iter()
                .filter(|(u, _)| **u != uid)
                .flat_map(|(_, ips)| ips.iter().copied()),
        );
        let desired = allocate(svc, &current, &used, &ctx.v4, &ctx.v6)?;
        pending.insert(uid.clone(), desired.clone());
        desired
    };
    if desired != current {
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress_of(&desired)}}});
        services
            .patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        tracing::info!(service = %key(svc), ingress = ?desired, "load balancer assigned");
    }
    Ok(Action::await_change())
}

/// Whether the allocator serves this Service.
pub fn managed(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    !is_deleting(svc)
        && spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
}

/// The ingress IPs in a Service's status.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| {
            i.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ingress_of(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".to_string()),
            ..LoadBalancerIngress::default()
        })
        .collect()
}

/// One address per IP family of the Service: its current one when still
/// free, else `spec.loadBalancerIP` when of that family and free, else the
/// pool's lowest free address.
pub fn allocate(
    svc: &Service,
    current: &[IpAddr],
    used: &HashSet<IpAddr>,
    v4: &AddressPool,
    v6: &AddressPool,
) -> Result<Vec<IpAddr>, Error> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut families: Vec<Family> = spec
        .ip_families
        .unwrap_or_default()
        .iter()
        .filter_map(|f| Family::parse(f))
        .collect();
    if families.is_empty() {
        families.push(Family::V4);
    }
    let requested: Option<IpAddr> = spec
        .load_balancer_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok());
    let mut taken = used.clone();
    let mut out = Vec::new();
    for family in families {
        let pool = if family == Family::V4 { v4 } else { v6 };
        let keep = current
            .iter()
            .find(|ip| Family::of(ip) == family && !taken.contains(ip))
            .copied();
        let wanted = requested.filter(|ip| Family::of(ip) == family && !taken.contains(ip));
        let ip = match (keep, wanted) {
            (_, Some(w)) if keep != Some(w) && !current.contains(&w) => w,
            (Some(k), _) => k,
            (None, Some(w)) => w,
            (None, None) => pool
                .first_free(&taken)
                .ok_or_else(|| Error::Exhausted(format!("load-balancer pool {}", pool.cidr())))?,
        };
        taken.insert(ip);
        out.push(ip);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "s", "namespace": "n", "uid": "u"}, "spec": spec}),
        )
        .expect("valid Service")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn one_address_per_family_honouring_requests() -> Result<(), Error> {
        let v4 = AddressPool::new("192.168.200.0/24")?;
        let v6 = AddressPool::new("fd00::/112")?;
        let dual = svc(json!({"type": "LoadBalancer", "ipFamilies": ["IPv4", "IPv6"]}));
        let used: HashSet<IpAddr> = [ip("192.168.200.1")].into();
        assert_eq!(
            allocate(&dual, &[], &used, &v4, &v6)?,
            [ip("192.168.200.2"), ip("fd00::1")]
        );

        let asked = svc(json!({"type": "LoadBalancer", "loadBalancerIP": "192.168.200.77"}));
        assert_eq!(
            allocate(&asked, &[], &used, &v4, &v6)?,
            [ip("192.168.200.77")]
        );
        let taken: HashSet<IpAddr> = [ip("192.168.200.77")].into();
        assert_eq!(
            allocate(&asked, &[], &taken, &v4, &v6)?,
            [ip("192.168.200.1")],
            "requested but taken"
        );

        let plain = svc(json!({"type": "LoadBalancer"}));
        assert_eq!(
            allocate(&plain, &[ip("10.9.9.9")], &used, &v4, &v6)?,
            [ip("10.9.9.9")],
            "reassigned address kept"
        );
        assert!(managed(&plain));
        assert!(!managed(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "other"})
        )));
        assert!(!managed(&svc(json!({"type": "ClusterIP"}))));
        Ok(())
    }
}
