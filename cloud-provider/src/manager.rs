//! Assembles what the flags and the cloud config enable: the watches (one
//! per resource, shared), the mapping of every watched change to the
//! controllers it concerns, and the controllers themselves. Runs until its
//! cancellation token fires, then lets running reconciles finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use kubevirt_infra::labels::selector_string;

use crate::cli::ControllerSet;
use crate::clients::Clusters;
use crate::config::{AnnotationAllowList, CloudConfig};
use crate::controllers::{self, Runtime, eps, lifecycle, node, service};
use crate::endpoints::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SERVICE_NAME_LABEL};
use crate::loadbalancer::{LbSettings, has_finalizer, is_managed, tenant_service_of};
use crate::watch::{Ready, Trigger, Watched, strip_meta, trigger, wait_ready};

/// Node controllers run with this many reconciles in parallel.
const NODE_CONCURRENCY: u16 = 4;

/// Everything that shapes the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    pub controllers: ControllerSet,
    pub lb: LbSettings,
    pub pending_warning_after: Duration,
    pub zone_and_region: bool,
    pub concurrency: u16,
}

impl Settings {
    /// The controllers that run: those the flags select that the cloud
    /// config does not switch off. Returns notes on what was switched off.
    pub fn new(
        requested: ControllerSet,
        config: &CloudConfig,
        cluster_name: &str,
        infra_namespace: &str,
        concurrency: u16,
    ) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        let lb = &config.load_balancer;
        let inst = &config.instances_v2;
        let mut off = |on: bool, allowed: bool, what: &str, why: &str| {
            if on && !allowed {
                notes.push(format!("{what} controller not started: {why}"));
            }
            on && allowed
        };
        let controllers = ControllerSet {
            service: off(
                requested.service,
                lb.enabled,
                "service",
                "loadBalancer.enabled is false",
            ),
            kubevirt_eps: {
                let lb_on = off(
                    requested.kubevirt_eps,
                    lb.enabled,
                    "kubevirt-eps",
                    "loadBalancer.enabled is false",
                );
                off(
                    lb_on,
                    lb.enable_eps_controller,
                    "kubevirt-eps",
                    "loadBalancer.enableEPSController is not set",
                )
            },
            cloud_node: off(
                requested.cloud_node,
                inst.enabled,
                "cloud-node",
                "instancesV2.enabled is false",
            ),
            cloud_node_lifecycle: off(
                requested.cloud_node_lifecycle,
                inst.enabled,
                "cloud-node-lifecycle",
                "instancesV2.enabled is false",
            ),
        };
        let settings = Self {
            controllers,
            lb: LbSettings {
                cluster_name: cluster_name.to_string(),
                namespace: infra_namespace.to_string(),
                infra_labels: config.infra_labels.clone(),
                selectorless: lb.selectorless,
                eps_controller: controllers.kubevirt_eps,
                annotations: lb.infra_service_annotations.clone(),
            },
            pending_warning_after: lb.creation_poll_timeout,
            zone_and_region: inst.zone_and_region_enabled,
            concurrency,
        };
        (settings, notes)
    }
}

// === what the caches keep ===

/// Keep only annotations the allow-list lets through.
fn keep_allowed_annotations(meta: &mut ObjectMeta, allow: &AnnotationAllowList) {
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| allow.allows(k));
    }
    if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
        meta.annotations = None;
    }
}

/// The fields of a Service spec that the infra Service is built from or
/// compared on.
fn strip_service_spec(spec: &mut ServiceSpec) {
    *spec = ServiceSpec {
        type_: spec.type_.take(),
        load_balancer_class: spec.load_balancer_class.take(),
        ports: spec.ports.take(),
        selector: spec.selector.take(),
        external_traffic_policy: spec.external_traffic_policy.take(),
        load_balancer_ip: spec.load_balancer_ip.take(),
        external_ips: spec.external_ips.take(),
        load_balancer_source_ranges: spec.load_balancer_source_ranges.take(),
        ip_families: spec.ip_families.take(),
        ip_family_policy: spec.ip_family_policy.take(),
        session_affinity: spec.session_affinity.take(),
        session_affinity_config: spec.session_affinity_config.take(),
        ..Default::default()
    };
    for p in spec.ports.iter_mut().flatten() {
        p.app_protocol = None;
    }
}

fn strip_status(s: &mut Service) {
    s.status = s
        .status
        .take()
        .and_then(|st| st.load_balancer)
        .map(|lb| ServiceStatus {
            load_balancer: Some(lb),
            ..Default::default()
        });
}

/// Guest Services: what the service and EndpointSlice controllers read.
/// Services that are not (or no longer) ours shrink to what tells them apart.
fn strip_guest_service(s: &mut Service, allow: &AnnotationAllowList) {
    strip_meta(&mut s.metadata);
    keep_allowed_annotations(&mut s.metadata, allow);
    s.metadata.labels = None;
    s.metadata.owner_references = None;
    if is_managed(s) || has_finalizer(&s.metadata) {
        if let Some(spec) = s.spec.as_mut() {
            strip_service_spec(spec);
            spec.selector = None;
        }
        strip_status(s);
    } else {
        s.spec = s.spec.take().map(|spec| ServiceSpec {
            type_: spec.type_,
            load_balancer_class: spec.load_balancer_class,
            ..Default::default()
        });
        s.status = None;
    }
}

/// Infra Services of ours: what is compared with the desired Service.
fn strip_infra_service(s: &mut Service, allow: &AnnotationAllowList) {
    strip_meta(&mut s.metadata);
    keep_allowed_annotations(&mut s.metadata, allow);
    if let Some(spec) = s.spec.as_mut() {
        strip_service_spec(spec);
    }
    strip_status(s);
}

fn strip_node(n: &mut Node) {
    strip_meta(&mut n.metadata);
    if let Some(status) = n.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

fn strip_vmi(v: &mut VirtualMachineInstance) {
    strip_meta(&mut v.metadata);
    v.spec = Default::default();
    if let Some(status) = v.status.as_mut() {
        status.volume_status.clear();
        status.extra.clear();
        for iface in &mut status.interfaces {
            iface.extra.clear();
        }
    }
}

/// Guest slices: we only read which nodes host ready endpoints.
fn strip_guest_slice(s: &mut EndpointSlice) {
    strip_meta(&mut s.metadata);
    s.metadata.annotations = None;
    s.ports = None;
    for e in &mut s.endpoints {
        e.addresses.clear();
        e.target_ref = None;
        e.hints = None;
        e.zone = None;
        e.deprecated_topology = None;
    }
}

fn strip_infra_slice(s: &mut EndpointSlice) {
    strip_meta(&mut s.metadata);
}

fn send<K: kube::Resource<DynamicType = ()>>(to: &Option<Trigger<K>>, key: &ObjectRef<K>) {
    if let Some(tx) = to {
        // A closed queue means the controller stopped; nothing to do.
        let _ = tx.send(key.clone());
    }
}

/// Run the enabled controllers until `rt.token` fires.
pub async fn run(clusters: Clusters, settings: Settings, rt: Runtime) {
    let on = settings.controllers;
    let ns = clusters.infra_namespace.clone();
    let (guest, infra) = (clusters.guest.clone(), clusters.infra.clone());
    let scope = selector_string(&settings.lb.scope_labels());
    let mut ours = settings.lb.scope_labels();
    ours.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let ours = selector_string(&ours);

    let channel = |enabled: bool| enabled.then(trigger::<Service>).unzip();
    let (svc_tx, svc_rx) = channel(on.service);
    let (eps_tx, eps_rx) = channel(on.kubevirt_eps);
    let node_channel = |enabled: bool| enabled.then(trigger::<Node>).unzip();
    let (node_tx, node_rx) = node_channel(on.cloud_node);
    let (life_tx, life_rx) = node_channel(on.cloud_node_lifecycle);

    let cfg = watcher::Config::default;
    let allow = settings.lb.annotations.clone();
    let mut guest_services = Watched::new(
        "guest-services",
        Api::all(guest.clone()),
        cfg(),
        move |s: &mut Service| strip_guest_service(s, &allow),
    );
    let allow = settings.lb.annotations.clone();
    let mut infra_services = Watched::new(
        "infra-services",
        Api::namespaced(infra.clone(), &ns),
        cfg().labels(&scope),
        move |s: &mut Service| strip_infra_service(s, &allow),
    );
    let mut guest_slices = Watched::new(
        "guest-endpointslices",
        Api::all(guest.clone()),
        cfg(),
        strip_guest_slice,
    );
    let mut infra_slices = Watched::new(
        "infra-endpointslices",
        Api::namespaced(infra.clone(), &ns),
        cfg().labels(&ours),
        strip_infra_slice,
    );
    let mut vmis = Watched::new(
        "vmis",
        Api::namespaced(infra.clone(), &ns),
        cfg(),
        strip_vmi,
    );
    let mut nodes = Watched::new("guest-nodes", Api::all(guest.clone()), cfg(), strip_node);

    // Wakes the orphan sweep of the service controller.
    let sweep = Arc::new(tokio::sync::Notify::new());

    // === who hears about what ===
    {
        let (svc_tx, eps_tx) = (svc_tx.clone(), eps_tx.clone());
        let (store, sweep) = (guest_services.store(), sweep.clone());
        guest_services.subscribe(move |svc| {
            let key = ObjectRef::from_obj(svc);
            send(&svc_tx, &key);
            send(&eps_tx, &key);
            if store.get(&key).is_none() {
                // Deleted: its infra Service may be left without an owner.
                sweep.notify_one();
            }
        });
    }
    {
        let (svc_tx, eps_tx) = (svc_tx.clone(), eps_tx.clone());
        infra_services.subscribe(move |infra_svc| {
            if let Some((ns, name)) = tenant_service_of(&infra_svc.metadata) {
                let key = ObjectRef::new(&name).within(&ns);
                send(&svc_tx, &key);
                send(&eps_tx, &key);
            }
        });
    }
    {
        let eps_tx = eps_tx.clone();
        guest_slices.subscribe(move |slice| {
            if let (Some(name), Some(ns)) =
                (slice.labels().get(SERVICE_NAME_LABEL), slice.namespace())
            {
                send(&eps_tx, &ObjectRef::new(name).within(&ns));
            }
        });
    }
    {
        let eps_tx = eps_tx.clone();
        infra_slices.subscribe(move |slice| {
            if let Some((ns, name)) = tenant_service_of(&slice.metadata) {
                send(&eps_tx, &ObjectRef::new(&name).within(&ns));
            }
        });
    }
    {
        let (node_tx, life_tx, eps_tx) = (node_tx.clone(), life_tx.clone(), eps_tx.clone());
        let (node_store, slice_store) = (nodes.store(), guest_slices.store());
        vmis.subscribe(move |vmi| {
            let vmi_name = vmi.name_any();
            let mut node_names: BTreeSet<String> = node_store
                .state_filter(|n| crate::instances::vmi_name_for_node(n) == vmi_name)
                .iter()
                .map(|n| n.name_any())
                .collect();
            node_names.insert(vmi_name);
            for n in &node_names {
                let key = ObjectRef::new(n);
                send(&node_tx, &key);
                send(&life_tx, &key);
            }
            if eps_tx.is_some() {
                for slice in slice_store.state_filter(|s| {
                    s.endpoints
                        .iter()
                        .any(|e| e.node_name.as_ref().is_some_and(|n| node_names.contains(n)))
                }) {
                    if let (Some(name), Some(ns)) =
                        (slice.labels().get(SERVICE_NAME_LABEL), slice.namespace())
                    {
                        send(&eps_tx, &ObjectRef::new(name).within(&ns));
                    }
                }
            }
        });
    }
    {
        let (node_tx, life_tx) = (node_tx.clone(), life_tx.clone());
        nodes.subscribe(move |node| {
            let key = ObjectRef::from_obj(node);
            send(&node_tx, &key);
            send(&life_tx, &key);
        });
    }

    // === the controllers ===
    let mut tasks = Vec::new();
    let token = rt.token.clone();
    // Controllers start once every cache they read is filled (their own
    // included: the applier's built-in wait supports a single waiter only).
    let spawn_after = |caches: Vec<Ready>, fut: futures::future::BoxFuture<'static, ()>| {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => return,
                ready = wait_ready(caches) => if !ready { return },
            }
            fut.await;
        })
    };

    if let Some(rx) = svc_rx {
        let ctx = Arc::new(service::Context {
            guest: guest.clone(),
            infra: infra.clone(),
            settings: settings.lb.clone(),
            infra_services: infra_services.store(),
            eps_controller: on.kubevirt_eps,
            pending_warning_after: settings.pending_warning_after,
            recorder: rt.recorder.clone(),
            fresh_guest: Default::default(),
            fresh_infra: Default::default(),
            warned: Default::default(),
        });
        let fut = controllers::run(
            service::NAME,
            service::ACTION,
            guest_services.store(),
            rx,
            ctx.clone(),
            settings.concurrency,
            rt.clone(),
            service::reconcile,
        );
        tasks.push(spawn_after(
            vec![guest_services.ready(), infra_services.ready()],
            Box::pin(fut),
        ));
        let (guest_store, sweep, token) = (guest_services.store(), sweep.clone(), token.clone());
        let sweeper = async move {
            loop {
                service::sweep_orphans(&ctx, &guest_store).await;
                tokio::select! {
                    () = token.cancelled() => return,
                    () = sweep.notified() => {}
                }
            }
        };
        tasks.push(spawn_after(
            vec![guest_services.ready(), infra_services.ready()],
            Box::pin(sweeper),
        ));
    }
    if let Some(rx) = eps_rx {
        let ctx = Arc::new(eps::Context {
            infra: infra.clone(),
            namespace: ns.clone(),
            infra_services: infra_services.store(),
            infra_slices: infra_slices.store(),
            guest_slices: guest_slices.store(),
            guest_nodes: nodes.store(),
            vmis: vmis.store(),
        });
        let fut = controllers::run(
            eps::NAME,
            eps::ACTION,
            guest_services.store(),
            rx,
            ctx,
            settings.concurrency,
            rt.clone(),
            eps::reconcile,
        );
        tasks.push(spawn_after(
            vec![
                guest_services.ready(),
                infra_services.ready(),
                infra_slices.ready(),
                guest_slices.ready(),
                nodes.ready(),
                vmis.ready(),
            ],
            Box::pin(fut),
        ));
    }
    if let Some(rx) = node_rx {
        let ctx = Arc::new(node::Context {
            guest: guest.clone(),
            infra: infra.clone(),
            namespace: ns.clone(),
            vmis: vmis.store(),
            zone_and_region: settings.zone_and_region,
        });
        let fut = controllers::run(
            node::NAME,
            node::ACTION,
            nodes.store(),
            rx,
            ctx,
            NODE_CONCURRENCY,
            rt.clone(),
            node::reconcile,
        );
        tasks.push(spawn_after(
            vec![nodes.ready(), vmis.ready()],
            Box::pin(fut),
        ));
    }
    if let Some(rx) = life_rx {
        let ctx = Arc::new(lifecycle::Context {
            guest: guest.clone(),
            infra: infra.clone(),
            namespace: ns.clone(),
            vmis: vmis.store(),
            recorder: rt.recorder.clone(),
        });
        let fut = controllers::run(
            lifecycle::NAME,
            lifecycle::ACTION,
            nodes.store(),
            rx,
            ctx,
            NODE_CONCURRENCY,
            rt.clone(),
            lifecycle::reconcile,
        );
        tasks.push(spawn_after(
            vec![nodes.ready(), vmis.ready()],
            Box::pin(fut),
        ));
    }
    // The triggers live in the subscribers now; drop ours so queues close
    // when the watches stop.
    drop((svc_tx, eps_tx, node_tx, life_tx));

    // === start the watches the controllers need ===
    let services_needed = on.service || on.kubevirt_eps;
    let vmis_needed = on.cloud_node || on.cloud_node_lifecycle || on.kubevirt_eps;
    let mut watches = Vec::new();
    if services_needed {
        watches.push(guest_services.spawn(token.clone(), rt.metrics.clone()));
        watches.push(infra_services.spawn(token.clone(), rt.metrics.clone()));
    }
    if on.kubevirt_eps {
        watches.push(guest_slices.spawn(token.clone(), rt.metrics.clone()));
        watches.push(infra_slices.spawn(token.clone(), rt.metrics.clone()));
    }
    if vmis_needed {
        watches.push(vmis.spawn(token.clone(), rt.metrics.clone()));
        watches.push(nodes.spawn(token.clone(), rt.metrics.clone()));
    }

    for task in tasks.into_iter().chain(watches) {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "controller task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadbalancer::{desired_infra_service, infra_patch};
    use serde_json::json;

    fn settings() -> LbSettings {
        LbSettings {
            cluster_name: "c".into(),
            namespace: "infra".into(),
            infra_labels: BTreeMap::from([("id".to_string(), "x".to_string())]),
            selectorless: false,
            eps_controller: true,
            annotations: AnnotationAllowList::new(vec!["lb.example.com/*".into()]).expect("valid"),
        }
    }

    fn guest() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "1234-5678", "resourceVersion": "9",
                         "labels": {"app": "web"}, "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
                         "annotations": {"lb.example.com/pool": "a", "other": "b"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "clusterIP": "10.96.0.9",
                     "clusterIPs": ["10.96.0.9"], "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                                "nodePort": 30080, "appProtocol": "http"}],
                     "externalTrafficPolicy": "Local", "loadBalancerIP": "192.0.2.1",
                     "externalIPs": ["198.51.100.1"], "loadBalancerSourceRanges": ["10.0.0.0/8"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                     "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]},
                       "conditions": [{"type": "x", "status": "True", "reason": "r", "message": "m",
                                       "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
        }))
        .expect("valid")
    }

    #[test]
    fn stripped_guest_services_build_the_same_infra_service() {
        let s = settings();
        let full = guest();
        let mut stripped = full.clone();
        strip_guest_service(&mut stripped, &s.annotations);
        assert_eq!(
            desired_infra_service(&stripped, &s),
            desired_infra_service(&full, &s)
        );
        assert_eq!(
            stripped.status,
            full.status.clone().map(|st| ServiceStatus {
                conditions: None,
                ..st
            })
        );
        assert!(stripped.metadata.managed_fields.is_none());
        assert!(has_finalizer(&stripped.metadata));
        let spec = stripped.spec.expect("spec");
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.selector, None);
    }

    #[test]
    fn foreign_guest_services_shrink_to_their_type() {
        let s = settings();
        let mut svc = guest();
        svc.metadata.finalizers = None;
        if let Some(spec) = svc.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
        }
        strip_guest_service(&mut svc, &s.annotations);
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports, None);
        assert_eq!(svc.status, None);
    }

    #[test]
    fn stripped_infra_services_compare_the_same() {
        let s = settings();
        let desired = desired_infra_service(&guest(), &s).expect("desired");
        let mut stored = desired.clone();
        stored
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("foreign".into(), "x".into());
        if let Some(spec) = stored.spec.as_mut() {
            spec.cluster_ip = Some("10.0.0.1".into());
            spec.load_balancer_ip = None;
        }
        let mut stripped = stored.clone();
        strip_infra_service(&mut stripped, &s.annotations);
        let full_patch = infra_patch(&stored, &desired, &s.annotations);
        assert!(full_patch.is_some());
        assert_eq!(infra_patch(&stripped, &desired, &s.annotations), full_patch);
        assert_eq!(infra_patch(&stripped, &stripped, &s.annotations), None);
    }

    #[test]
    fn config_switches_controllers_off() {
        let all = ControllerSet {
            service: true,
            cloud_node: true,
            cloud_node_lifecycle: true,
            kubevirt_eps: true,
        };
        let (s, notes) = Settings::new(all, &CloudConfig::default(), "c", "ns", 4);
        assert!(
            s.controllers.service && s.controllers.cloud_node && s.controllers.cloud_node_lifecycle
        );
        assert!(
            !s.controllers.kubevirt_eps,
            "EPS needs loadBalancer.enableEPSController"
        );
        assert!(!s.lb.eps_controller);
        assert_eq!(notes.len(), 1);
        let mut cfg = CloudConfig::default();
        cfg.load_balancer.enable_eps_controller = true;
        cfg.instances_v2.enabled = false;
        let (s, notes) = Settings::new(all, &cfg, "c", "ns", 4);
        assert!(s.controllers.kubevirt_eps && s.lb.eps_controller);
        assert!(!s.controllers.cloud_node && !s.controllers.cloud_node_lifecycle);
        assert_eq!(notes.len(), 2);
        cfg.load_balancer.enabled = false;
        let (s, _) = Settings::new(all, &cfg, "c", "ns", 4);
        assert!(!s.controllers.service && !s.controllers.kubevirt_eps);
    }
}
