//! Real traffic through the lab network (`lab_net`): a client outside both
//! clusters reaches guest pods through the infra load balancer's ingress,
//! a virt-launcher pod (= its VM), the guest node's node port and the guest
//! Service, over TCP and UDP; the route follows every change of the guest
//! Service and its pods; and nothing leaves the lab's namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubevirt_lab::Lab;
use lab_cluster::Cluster;
use lab_guest::kubelet::{self, GuestNode};
use lab_net::proxy::desired::Source;
use lab_net::proxy::{Listen, Route};
use lab_net::{Protocol, client};
use serde_json::json;

use crate::ccm_support::{self, CcmOptions, Tenant, WAIT};
use crate::net_support::{answers, served};

const IMAGE: &str = "kubevirt-lab/echo:1";

/// The kubelet stand-ins of some guest nodes, by node; dropping one stops it.
struct Kubelets(BTreeMap<String, tokio::task::JoinHandle<()>>);

impl Kubelets {
    /// Runs one for each of `nodes` of the guest cluster behind `client`.
    fn start(
        lab: &Lab,
        cluster: &Cluster,
        client: &Client,
        nodes: &[String],
    ) -> anyhow::Result<Kubelets> {
        let mut all = BTreeMap::new();
        for name in nodes {
            let node = GuestNode::new(name, &lab.dir.join("nodes").join(name));
            node.prepare()?;
            let cfg = lab.kubelet_config(&node, cluster);
            let client = client.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = kubelet::run(client, cfg).await {
                    tracing::error!("kubelet stand-in stopped: {e}");
                }
            });
            all.insert(name.clone(), task);
        }
        Ok(Kubelets(all))
    }

    /// Stops the kubelet of `node` (its pods' workloads stop with it, as
    /// when its VM goes down).
    async fn stop(&mut self, node: &str) {
        if let Some(task) = self.0.remove(node) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// Runs a kubelet stand-in for every guest node of the lab.
async fn kubelets(lab: &Lab) -> anyhow::Result<Kubelets> {
    let client = lab.stand_in_client(kubevirt_lab::lab::KUBELET_USER).await?;
    Kubelets::start(lab, &lab.guest, &client, &lab.nodes)
}

/// An echo pod on `node` with the `app: web` label.
async fn echo_pod(guest: &Client, name: &str, node: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "echo", "image": IMAGE, "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]}
    }))?;
    Api::<Pod>::namespaced(guest.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

async fn delete_pod(guest: &Client, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(guest.clone(), "default");
    pods.delete(name, &DeleteParams::default()).await?;
    ccm_support::until(&pods, name, &format!("pod {name} gone"), |p| {
        p.is_none().then_some(())
    })
    .await
}

/// A LoadBalancer Service `web` selecting the echo pods (`http` 80 -> 8080).
async fn web_service(guest: &Client, extra: serde_json::Value) -> anyhow::Result<()> {
    let mut svc = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"}]}
    });
    if let (Some(spec), Some(extra)) = (svc["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let svc: Service = serde_json::from_value(svc)?;
    Api::<Service>::namespaced(guest.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(())
}

/// The ingress address of guest Service `name` once the CCM reports it.
async fn ingress(guest: &Client, name: &str) -> anyhow::Result<IpAddr> {
    let services: Api<Service> = Api::namespaced(guest.clone(), "default");
    let ip = ccm_support::until(
        &services,
        name,
        "the guest Service's ingress",
        kubevirt_lab::wait::ingress_ip,
    )
    .await?;
    Ok(ip.parse()?)
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The InternalIP of guest node `name`.
async fn node_ip(guest: &Client, name: &str) -> anyhow::Result<IpAddr> {
    let node = Api::<Node>::all(guest.clone()).get(name).await?;
    let ip = lab_net::proxy::desired::internal_ips(&node)
        .into_iter()
        .find(IpAddr::is_ipv4)
        .with_context(|| format!("node {name} has no IPv4 InternalIP"))?;
    Ok(ip)
}

#[tokio::test]
async fn traffic_from_the_infra_ingress_to_guest_pods() -> anyhow::Result<()> {
    let lab = ccm_support::lab(2, "net").await?;
    let ccm = ccm_support::start_ccm(&lab, &Tenant::main(&lab), &CcmOptions::default()).await?;
    let _kubelets = kubelets(&lab).await?;
    let guest = lab.guest_client();
    let (w0, w1) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    echo_pod(&guest, "web-a", &w0).await?;
    echo_pod(&guest, "web-b", &w1).await?;

    let services: Api<Service> = Api::namespaced(guest.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]}
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let ip = ingress(&guest, "web")
        .await
        .with_context(|| ccm_support::log_of(&ccm))?;
    let http = SocketAddr::new(ip, 80);
    served(&lab.infra_proxy, Protocol::Tcp, http, 2).await?;
    served(&lab.infra_proxy, Protocol::Udp, SocketAddr::new(ip, 53), 2).await?;
    let ports = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default();
    let node_port = |i: usize| ports.get(i).and_then(|p| p.node_port).map(u16::try_from);
    let (Some(Ok(node_port)), Some(Ok(udp_port))) = (node_port(0), node_port(1)) else {
        bail!("the guest Service has no node ports: {ports:?}");
    };
    let (ip0, ip1) = (node_ip(&guest, &w0).await?, node_ip(&guest, &w1).await?);
    for node_ip in [ip0, ip1] {
        served(
            &lab.guest_proxy,
            Protocol::Tcp,
            SocketAddr::new(node_ip, node_port),
            2,
        )
        .await?;
        served(
            &lab.guest_proxy,
            Protocol::Udp,
            SocketAddr::new(node_ip, udp_port),
            2,
        )
        .await?;
    }

    // Both pods answer through the ingress, over TCP and UDP.
    let both = set(&[("web-a", &w0), ("web-b", &w1)]);
    assert_eq!(answers(&lab, http, 8).await?, both);
    let udp = client::udp_ask(&lab.net, SocketAddr::new(ip, 53), WAIT).await?;
    assert!(
        ["web-a", "web-b"].contains(&udp.identity.pod.as_str()),
        "{udp:?}"
    );

    // Cluster DNS, as the kubelet configures it (--cluster-dns, the pod's
    // search path), from a client and from inside a container.
    let dns = Lab::cluster_dns(&lab.guest).context("cluster DNS")?;
    served(&lab.guest_proxy, Protocol::Udp, SocketAddr::new(dns, 53), 1).await?;
    let cluster_ip = |svc: Service| -> anyhow::Result<IpAddr> {
        Ok(svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("ClusterIP")?
            .parse()?)
    };
    let web_ip = cluster_ip(services.get("web").await?)?;
    let kubernetes = cluster_ip(services.get("kubernetes").await?)?;
    for name in [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local.",
    ] {
        assert_eq!(
            lab_net::dns::resolve(&lab.net, dns, "default", name).await?,
            [web_ip],
            "{name}"
        );
    }
    assert_eq!(
        lab_net::dns::resolve(&lab.net, dns, "kube-system", "kubernetes.default.svc").await?,
        [kubernetes]
    );
    assert!(
        lab_net::dns::resolve(&lab.net, dns, "default", "nothing-here")
            .await?
            .is_empty()
    );
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(kubernetes, 443),
        1,
    )
    .await?;
    ensure!(
        !client::refused(&lab.net, SocketAddr::new(kubernetes, 443)).await,
        "the API server behind kubernetes.default.svc"
    );
    let pods: Api<Pod> = Api::namespaced(guest.clone(), "default");
    let pod_ip: IpAddr = pods
        .get("web-a")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("pod IP")?
        .parse()?;
    let inside = client::http_get(
        &lab.net,
        SocketAddr::new(pod_ip, 8080),
        "/resolve/web.default.svc",
        None,
    )
    .await?;
    ensure!(
        inside.status == 200 && inside.body.contains(&web_ip.to_string()),
        "inside web-a: {} {}",
        inside.status,
        inside.body
    );

    // externalTrafficPolicy Local: a node port reaches only its own node's
    // pod, and the pod sees the outside client's address.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await?;
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip0, node_port),
        1,
    )
    .await?;
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip1, node_port),
        1,
    )
    .await?;
    for (node_ip, node) in [(ip0, &w0), (ip1, &w1)] {
        let seen = answers(&lab, SocketAddr::new(node_ip, node_port), 4).await?;
        ensure!(
            seen.iter().all(|(_, n)| n == node),
            "{node_ip}:{node_port} reached {seen:?}"
        );
    }
    // Once the infra Service is Local too, the client's address is kept
    // end to end (the CCM carries the policy over).
    let listen = Listen::tcp(http);
    let local = lab.infra_proxy.wait_for(
        |s| matches!(s.get(&listen), Some(Route::Forward(f)) if f.source == Source::Client),
    );
    tokio::time::timeout(WAIT, local)
        .await
        .context("the infra Service turned Local")?;
    let r = client::http_get(
        &lab.net,
        http,
        "/",
        Some(IpAddr::V4(lab_net::OUTSIDE_CLIENT)),
    )
    .await?
    .answer()?;
    assert_eq!(
        r.client.ip(),
        IpAddr::V4(lab_net::OUTSIDE_CLIENT),
        "client address kept end to end"
    );

    // The backend pod moves: web-a goes, web-c starts on the other worker.
    delete_pod(&guest, "web-a").await?;
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip0, node_port),
        0,
    )
    .await?;
    assert!(
        client::refused(&lab.net, SocketAddr::new(ip0, node_port)).await,
        "no local endpoint on {w0}"
    );
    echo_pod(&guest, "web-c", &w1).await?;
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip1, node_port),
        2,
    )
    .await?;
    served(&lab.infra_proxy, Protocol::Tcp, http, 1).await?;
    assert_eq!(
        answers(&lab, http, 6).await?,
        set(&[("web-b", &w1), ("web-c", &w1)])
    );

    // A port change follows.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/ports/0/port", "value": 8081}]))?),
        )
        .await?;
    let moved = SocketAddr::new(ip, 8081);
    served(&lab.infra_proxy, Protocol::Tcp, moved, 1).await?;
    served(&lab.infra_proxy, Protocol::Tcp, http, 0).await?;
    assert!(
        client::refused(&lab.net, http).await,
        "the old port is closed"
    );
    assert_eq!(answers(&lab, moved, 2).await?.len(), 2);

    // A deleted Service refuses connections.
    services.delete("web", &DeleteParams::default()).await?;
    served(&lab.infra_proxy, Protocol::Tcp, moved, 0).await?;
    ensure!(
        client::refused(&lab.net, moved).await,
        "{moved} still answers"
    );

    // Nothing routes out of the lab's namespace.
    for to in ["192.0.2.1:80", "[2001:db8::1]:80", "8.8.8.8:53"] {
        ensure!(
            client::unreachable(&lab.net, to.parse()?).await,
            "{to} has a route"
        );
    }
    let mut ccm = ccm;
    if let Some(status) = ccm.try_wait()? {
        bail!("the CCM exited ({status}):\n{}", ccm_support::log_of(&ccm));
    }
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn two_tenants_in_selector_mode_stay_apart() -> anyhow::Result<()> {
    let mut lab = ccm_support::lab(2, "sel").await?;
    let selector_mode = CcmOptions {
        load_balancer: "  enableEPSController: false\n".to_string(),
        ..CcmOptions::default()
    };
    let _ccm = ccm_support::start_ccm(&lab, &Tenant::main(&lab), &selector_mode).await?;
    let other = lab
        .add_guest_cluster(
            "other",
            BTreeMap::from([(
                "hypershift.openshift.io/infra-id".to_string(),
                "other".to_string(),
            )]),
            1,
        )
        .await?
        .clone();
    let other_tenant = Tenant {
        cluster: other.name.clone(),
        guest: &other.api,
        infra_namespace: other.infra_namespace.clone(),
        infra_labels: other.infra_labels.clone(),
    };
    let other_opts = CcmOptions {
        log: "ccm-other.log".to_string(),
        ..selector_mode.clone()
    };
    let _other_ccm = ccm_support::start_ccm(&lab, &other_tenant, &other_opts).await?;

    let mut kubelets = kubelets(&lab).await?;
    let other_kubelet = other
        .api
        .client_for(
            &other
                .api
                .token(kubevirt_lab::lab::KUBELET_USER)
                .context("kubelet user")?,
        )
        .await?;
    let _other_kubelets = Kubelets::start(&lab, &other.api, &other_kubelet, &other.nodes)?;
    let (guest, other_guest) = (lab.guest_client(), other.api.client());
    let (w0, w1, o0) = (
        lab.nodes[0].clone(),
        lab.nodes[1].clone(),
        other.nodes[0].clone(),
    );
    echo_pod(&guest, "web-a", &w0).await?;
    echo_pod(&guest, "web-b", &w1).await?;
    echo_pod(&other_guest, "web-o", &o0).await?;
    web_service(
        &guest,
        json!({"sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local"}),
    )
    .await?;
    web_service(&other_guest, json!({})).await?;
    let (ip, other_ip) = (
        ingress(&guest, "web").await?,
        ingress(&other_guest, "web").await?,
    );
    ensure!(ip != other_ip, "both tenants got {ip}");
    let (http, other_http) = (SocketAddr::new(ip, 80), SocketAddr::new(other_ip, 80));
    // Selector mode: kube-controller-manager's slices of the virt-launcher pods.
    served(&lab.infra_proxy, Protocol::Tcp, http, 2).await?;
    served(
        &other.proxy,
        Protocol::Tcp,
        SocketAddr::new(
            node_ip(&other_guest, &o0).await?,
            node_port(&other_guest).await?,
        ),
        1,
    )
    .await?;
    served(&lab.infra_proxy, Protocol::Tcp, other_http, 1).await?;
    let port = node_port(&guest).await?;
    let (ip0, ip1) = (node_ip(&guest, &w0).await?, node_ip(&guest, &w1).await?);
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip0, port),
        1,
    )
    .await?;
    served(
        &lab.guest_proxy,
        Protocol::Tcp,
        SocketAddr::new(ip1, port),
        1,
    )
    .await?;

    // Each ingress reaches its own tenant's pods only.
    assert_eq!(answers(&lab, other_http, 4).await?, set(&[("web-o", &o0)]));
    let ours = answers(&lab, http, 6).await?;
    ensure!(
        ours.iter().all(|(pod, _)| pod != "web-o"),
        "{http} reached {ours:?}"
    );

    // Client-IP affinity on the guest ClusterIP: one client, one pod.
    let services: Api<Service> = Api::namespaced(guest.clone(), "default");
    let cluster_ip: IpAddr = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("ClusterIP")?
        .parse()?;
    let vip = SocketAddr::new(cluster_ip, 80);
    served(&lab.guest_proxy, Protocol::Tcp, vip, 2).await?;
    let pinned = answers(&lab, vip, 5).await?;
    ensure!(pinned.len() == 1, "affinity broken: {pinned:?}");

    // healthCheckNodePort answers per node: 200 with a local endpoint.
    let hc = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.health_check_node_port)
        .context("healthCheckNodePort")?;
    let hc = u16::try_from(hc)?;
    for node_ip in [ip0, ip1] {
        let r = client::http_get(&lab.net, SocketAddr::new(node_ip, hc), "/healthz", None).await?;
        ensure!(
            r.status == 200 && r.body.contains("\"localEndpoints\":1"),
            "{node_ip}:{hc}: {} {}",
            r.status,
            r.body
        );
    }

    // A worker VM stops (its kubelet and pods with it): traffic shifts to
    // the other worker.
    kubelets.stop(&w1).await;
    let vms: Api<kubevirt_infra::kubevirt::VirtualMachine> =
        Api::namespaced(lab.infra_client(), &lab.infra_namespace);
    vms.patch(
        &w1,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await?;
    served(&lab.infra_proxy, Protocol::Tcp, http, 1).await?;
    assert_eq!(answers(&lab, http, 4).await?, set(&[("web-a", &w0)]));
    drop(_other_kubelets);
    lab.shutdown().await?;
    Ok(())
}

/// The first node port of guest Service `web`.
async fn node_port(guest: &Client) -> anyhow::Result<u16> {
    let svc = Api::<Service>::namespaced(guest.clone(), "default")
        .get("web")
        .await?;
    let port = svc
        .spec
        .and_then(|s| s.ports?.first()?.node_port)
        .context("node port")?;
    Ok(u16::try_from(port)?)
}
