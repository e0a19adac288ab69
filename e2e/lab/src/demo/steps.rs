//! The demo's steps. Each acts as a guest user does (claims, pods,
//! Services through the guest API server), lets the suite's daemons do
//! their work, follows the result on both clusters through watches,
//! narrates every change, and cleans up after itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use kubevirt_infra::labels::CSI_DRIVER_NAME;
use lab_guest::kubelet;
use serde_json::json;

use super::{Demo, Timeline};
use crate::suite::STORAGE_CLASS;
use crate::{LabError, mounts, wait};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The guest namespace of the demo's objects.
const NS: &str = "default";
const CLAIM: &str = "demo-data";
const FILE: &str = "hello.txt";

/// A guest claim used by a pod on one worker, then by a pod on the other.
pub async fn volume(demo: &Demo, t: &Timeline) -> Result<(), LabError> {
    let lab = &demo.lab;
    let (writer_node, reader_node) = match lab.nodes.as_slice() {
        [] => {
            return Err(LabError::Invalid(
                "the demo needs at least one worker VM".into(),
            ));
        }
        [only] => (only.clone(), only.clone()),
        [first, second, ..] => (first.clone(), second.clone()),
    };
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(guest.clone(), NS);

    let claim: PersistentVolumeClaim = from_json(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                 "volumeMode": "Filesystem", "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    pvcs.create(&PostParams::default(), &claim).await?;
    t.event(format!(
        "guest: created PersistentVolumeClaim {NS}/{CLAIM} (1Gi, StorageClass {STORAGE_CLASS})"
    ));
    let pv_name = wait::until(&pvcs, CLAIM, TIMEOUT, |p| {
        p.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .and_then(|p| p.spec.as_ref().and_then(|s| s.volume_name.clone()))
    })
    .await?;
    let pvs: Api<PersistentVolume> = Api::all(guest.clone());
    let handle = pvs
        .get(&pv_name)
        .await?
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .ok_or_else(|| LabError::Invalid(format!("PV {pv_name} has no CSI volume handle")))?;
    t.event(format!(
        "guest: claim Bound to PersistentVolume {pv_name} (volume handle {handle})"
    ));
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    let mut last = String::new();
    wait::until(&dvs, &handle, TIMEOUT, |dv| {
        let dv = dv?;
        if dv.phase() != last {
            last = dv.phase().to_string();
            t.event(format!(
                "infra: DataVolume {}/{handle} phase {last}, labels {}",
                lab.infra_namespace,
                label_list(dv.labels())
            ));
        }
        (last == "Succeeded").then_some(())
    })
    .await?;

    // The writer: the kubelet attaches the claim to its node (a hotplug into
    // the worker VM), the node plugin formats and mounts it.
    let writer = run_pod(demo, &guest, "demo-writer", &writer_node, t, &handle).await?;
    let dir = kubelet::volume_path(
        &node_of(demo, &writer_node)?.kubelet_dir,
        &writer,
        &pv_name,
        false,
    );
    describe_mount(&dir, t)?;
    let content = format!(
        "hello from {writer_node}, written at {}\n",
        jiff::Timestamp::now()
    );
    write_durably(&dir.join(FILE), content.as_bytes())?;
    t.event(format!(
        "guest: demo-writer wrote {FILE}: {:?}",
        content.trim_end()
    ));
    delete_pod(&guest, "demo-writer", t).await?;
    let attachment = kubelet::attachment_name(&handle, CSI_DRIVER_NAME, &writer_node);
    let attachments: Api<VolumeAttachment> = Api::all(guest.clone());
    wait::until(&attachments, &attachment, TIMEOUT, |a| {
        a.is_none().then_some(())
    })
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    follow_volume(&vmis, &writer_node, &handle, t, |phase| phase.is_none()).await?;
    t.event(format!(
        "unmounted, detached: VolumeAttachment {attachment} gone, {writer_node} no longer has the disk"
    ));

    // The reader, on the other worker: the same disk, the same bytes.
    let reader = run_pod(demo, &guest, "demo-reader", &reader_node, t, &handle).await?;
    let dir = kubelet::volume_path(
        &node_of(demo, &reader_node)?.kubelet_dir,
        &reader,
        &pv_name,
        false,
    );
    let path = dir.join(FILE);
    let read = std::fs::read_to_string(&path).map_err(LabError::io("read", &path))?;
    if read != content {
        return Err(LabError::Invalid(format!(
            "demo-reader read {read:?}, demo-writer wrote {content:?}"
        )));
    }
    t.event(format!(
        "guest: demo-reader on {reader_node} reads {FILE}: {:?}",
        read.trim_end()
    ));
    delete_pod(&guest, "demo-reader", t).await?;

    pvcs.delete(CLAIM, &DeleteParams::default()).await?;
    t.event(format!("guest: deleted claim {CLAIM}"));
    wait::until(&pvs, &pv_name, TIMEOUT, |p| p.is_none().then_some(())).await?;
    wait::until(&dvs, &handle, TIMEOUT, |d| d.is_none().then_some(())).await?;
    t.event(format!(
        "PersistentVolume {pv_name} and infra DataVolume {handle} gone"
    ));
    Ok(())
}

/// Creates a pod on `node` using the demo claim, narrates the hotplug of
/// volume `handle` into that worker's VMI until the pod runs; its uid.
async fn run_pod(
    demo: &Demo,
    guest: &Client,
    name: &str,
    node: &str,
    t: &Timeline,
    handle: &str,
) -> Result<String, LabError> {
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
        }
    }))?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    t.event(format!("guest: created pod {NS}/{name} on {node}"));
    let lab = &demo.lab;
    let infra = lab.infra_client();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra, &lab.infra_namespace);
    follow_volume(&vmis, node, handle, t, |phase| phase == Some("Ready")).await?;
    let link = hotplugged_link(&lab.by_id_dir(node))?;
    if let Some(link) = link {
        t.event(format!("guest {node} sees {link}"));
    }
    wait::until(&pods, name, TIMEOUT, wait::pod_ready).await?;
    t.event(format!("guest: pod {name} Running and Ready"));
    Ok(pod.uid().unwrap_or_default())
}

/// Deletes a guest pod and waits until it is gone (its volume unpublished).
async fn delete_pod(guest: &Client, name: &str, t: &Timeline) -> Result<(), LabError> {
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    pods.delete(name, &DeleteParams::default()).await?;
    wait::until(&pods, name, TIMEOUT, |p| p.is_none().then_some(())).await?;
    t.event(format!("guest: pod {name} deleted"));
    Ok(())
}

/// Narrates the volume's phase on the VMI until `done(phase)`.
async fn follow_volume(
    vmis: &Api<VirtualMachineInstance>,
    vm: &str,
    volume: &str,
    t: &Timeline,
    done: impl Fn(Option<&str>) -> bool,
) -> Result<(), LabError> {
    let mut last: Option<Option<String>> = None;
    wait::until(vmis, vm, TIMEOUT, |vmi| {
        let status = vmi.and_then(|v| v.volume_status(volume));
        let phase = status.and_then(|s| s.phase.clone());
        if last.as_ref() != Some(&phase) {
            match status {
                Some(s) => t.event(format!(
                    "infra: VMI {vm} volumeStatus {volume}: {}{}",
                    phase.as_deref().unwrap_or("-"),
                    if s.target.is_empty() {
                        String::new()
                    } else {
                        format!(" (target {})", s.target)
                    }
                )),
                None if last.is_some() => {
                    t.event(format!("infra: VMI {vm} volumeStatus {volume}: gone"))
                }
                None => {}
            }
            last = Some(phase.clone());
        }
        done(phase.as_deref()).then_some(())
    })
    .await
}

/// `link -> target` of the hotplugged disk in a node's `/dev/disk/by-id`.
fn hotplugged_link(by_id: &Path) -> Result<Option<String>, LabError> {
    let Ok(entries) = std::fs::read_dir(by_id) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry.map_err(LabError::io("list", by_id))?.path();
        if let Ok(target) = std::fs::read_link(&path) {
            return Ok(Some(format!("{} -> {}", path.display(), target.display())));
        }
    }
    Ok(None)
}

/// Narrates the device, filesystem and size of the mount at `dir`.
fn describe_mount(dir: &Path, t: &Timeline) -> Result<(), LabError> {
    let (source, fstype) = mounts::mount_of(dir)
        .ok_or_else(|| LabError::Invalid(format!("{} is not a mount point", dir.display())))?;
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| LabError::io("statvfs", dir)(std::io::Error::from(e)))?;
    let size = st.blocks() * st.fragment_size();
    t.event(format!(
        "node: {source} formatted {fstype} ({:.2} GiB) and mounted at {}",
        size as f64 / f64::from(1u32 << 30),
        dir.display()
    ));
    Ok(())
}

fn write_durably(path: &Path, content: &[u8]) -> Result<(), LabError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(LabError::io("create", path))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(LabError::io("write", path))
}

fn node_of<'a>(demo: &'a Demo, node: &str) -> Result<&'a kubelet::GuestNode, LabError> {
    demo.suite
        .nodes
        .iter()
        .map(|n| &n.node)
        .find(|n| n.node_name == node)
        .ok_or_else(|| LabError::Invalid(format!("no CSI node plugin runs on {node}")))
}

/// A guest LoadBalancer Service: the CCM mirrors it into the infra cluster
/// and copies the address the infra load balancer assigns back.
pub async fn load_balancer(demo: &Demo, t: &Timeline) -> Result<(), LabError> {
    let lab = &demo.lab;
    let guest = lab.guest_client();
    let infra = lab.infra_client();
    let name = "demo-web";
    let services: Api<Service> = Api::namespaced(guest, NS);
    let svc: Service = from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let node_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .unwrap_or_default();
    t.event(format!(
        "guest: created Service {NS}/{name} (LoadBalancer, port 80, nodePort {node_port})"
    ));

    let infra_name = infra_service_name(&svc.uid().unwrap_or_default());
    let infra_services: Api<Service> = Api::namespaced(infra, &lab.infra_namespace);
    let mirrored = wait::until(&infra_services, &infra_name, TIMEOUT, |s| s.cloned()).await?;
    let ports: Vec<String> = mirrored
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            let target = p
                .target_port
                .as_ref()
                .map(|t| match t {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => {
                        i.to_string()
                    }
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                        s.clone()
                    }
                })
                .unwrap_or_default();
            format!("{} -> {target}", p.port)
        })
        .collect();
    let selector = mirrored
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    t.event(format!(
        "infra: Service {}/{infra_name} ports {} selecting {}",
        lab.infra_namespace,
        ports.join(", "),
        label_list(&selector)
    ));
    let ingress = wait::until(&services, name, TIMEOUT, |s| {
        let ips: Vec<String> = s
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        (!ips.is_empty()).then_some(ips)
    })
    .await?;
    t.event(format!(
        "guest: Service {name} load balancer ingress: {}",
        ingress.join(", ")
    ));
    let address: IpAddr = ingress
        .iter()
        .find_map(|ip| ip.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
        .ok_or_else(|| LabError::Invalid(format!("no IPv4 ingress among {ingress:?}")))?;
    let to = SocketAddr::new(address, 80);

    // Real traffic: an outside client, the infra load balancer, a
    // virt-launcher pod (its VM), the guest node port, the guest pod; then
    // the pod moves to the other worker and the answer comes from there.
    let (first, second) = match lab.nodes.as_slice() {
        [first, second, ..] => (first.clone(), second.clone()),
        [only] => (only.clone(), only.clone()),
        [] => return Err(LabError::Invalid("the demo needs a worker VM".into())),
    };
    let guest = lab.guest_client();
    let pod_ip = run_echo(&guest, "demo-web-0", &first, t).await?;
    ask(demo, to, node_port, &pod_ip, t).await?;
    delete_pod(&guest, "demo-web-0", t).await?;
    let pod_ip = run_echo(&guest, "demo-web-1", &second, t).await?;
    ask(demo, to, node_port, &pod_ip, t).await?;
    delete_pod(&guest, "demo-web-1", t).await?;

    services.delete(name, &DeleteParams::default()).await?;
    wait::until(&infra_services, &infra_name, TIMEOUT, |s| {
        s.is_none().then_some(())
    })
    .await?;
    t.event(format!(
        "guest: Service {name} deleted; infra Service {infra_name} gone, its address free"
    ));
    Ok(())
}

/// Runs an echo pod (`app: web`, port 8080) on `node`; its address.
async fn run_echo(
    guest: &Client,
    name: &str,
    node: &str,
    t: &Timeline,
) -> Result<String, LabError> {
    let pods: Api<Pod> = Api::namespaced(guest.clone(), NS);
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "web", "image": lab_net::echo::IMAGE,
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let ip = wait::until(&pods, name, TIMEOUT, |p| {
        wait::pod_ready(p)?;
        p?.status.as_ref()?.pod_ip.clone()
    })
    .await?;
    t.event(format!(
        "guest: pod {name} ({}) Running and Ready on {node}, address {ip}",
        lab_net::echo::IMAGE
    ));
    Ok(ip)
}

/// Waits until the guest node ports lead to `pod_ip` only, then sends an
/// HTTP request from an outside client to `to` and prints who answered.
async fn ask(
    demo: &Demo,
    to: SocketAddr,
    node_port: i32,
    pod_ip: &str,
    t: &Timeline,
) -> Result<(), LabError> {
    let lab = &demo.lab;
    let endpoint = format!("{pod_ip}:8080");
    let routed = lab.guest_proxy.wait_for(|serving| {
        let mut node_ports = serving
            .iter()
            .filter(|(l, _)| i32::from(l.addr.port()) == node_port)
            .peekable();
        node_ports.peek().is_some()
            && node_ports.all(|(_, route)| {
                matches!(route, lab_net::proxy::Route::Forward(f)
                    if f.backends.iter().map(|b| b.addr.to_string()).eq([endpoint.clone()]))
            })
    });
    wait::within(
        TIMEOUT,
        || format!("the guest node ports to lead to {endpoint}"),
        routed,
    )
    .await?;
    let ingress = lab_net::proxy::Listen::tcp(to);
    let served = lab
        .infra_proxy
        .wait_for(|serving| serving.contains_key(&ingress));
    wait::within(
        TIMEOUT,
        || format!("the infra load balancer to serve {to}"),
        served,
    )
    .await?;
    let client = IpAddr::V4(lab_net::OUTSIDE_CLIENT);
    let response = lab_net::client::http_get(&lab.net, to, "/", Some(client)).await?;
    let answer = response.answer()?;
    t.event(format!(
        "client {client} -> GET http://{to}/ -> {} from pod {} on {} (it saw {})",
        response.status, answer.identity.pod, answer.identity.node, answer.client
    ));
    Ok(())
}

/// The contract's infra Service name: `a` + the guest Service's uid without
/// dashes, at most 32 characters.
fn infra_service_name(uid: &str) -> String {
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    name.truncate(32);
    name
}

fn label_list(labels: &BTreeMap<String, String>) -> String {
    let list: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list.join(",")
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, LabError> {
    serde_json::from_value(v).map_err(|e| LabError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infra_names_follow_the_contract() {
        assert_eq!(
            infra_service_name("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
            "a1b4e28ba2fa111d2883f0016d3cca42"
        );
    }
}
