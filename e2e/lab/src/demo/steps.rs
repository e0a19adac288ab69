//! The demo's steps. Each creates infra objects the way a daemon of the
//! suite would, follows them through watches, narrates every change on the
//! timeline, and cleans up after itself.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::hotplug::{
    AddVolumeOptions, RemoveVolumeOptions, Target, add_volume, remove_volume,
};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use serde_json::json;

use super::Timeline;
use crate::{Lab, LabError, wait};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates a blank DataVolume, hotplugs it into the first worker, shows its
/// volume status phases and guest device link, then unplugs and deletes it.
pub async fn hotplug(lab: &Lab, t: &Timeline) -> Result<(), LabError> {
    let client = lab.infra_client().await;
    let ns = &lab.infra_namespace;
    let vm = lab
        .nodes
        .first()
        .ok_or_else(|| LabError::Invalid("the demo needs at least one worker VM".into()))?;
    let name = format!("pvc-demo-{}", &uuid_suffix());
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": ns, "labels": lab.infra_labels,
                     "annotations": {"cdi.kubevirt.io/storage.deleteAfterCompletion": "false"}},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))?;
    let dv = dvs.create(&PostParams::default(), &dv).await?;
    t.event(format!("created DataVolume {ns}/{name} (blank, 1Gi)"));
    let mut last = String::new();
    wait::until(&dvs, &name, TIMEOUT, |dv| {
        let phase = dv.map(|d| d.phase().to_string()).unwrap_or_default();
        if phase != last && !phase.is_empty() {
            t.event(format!("DataVolume phase {phase}"));
            last = phase.clone();
        }
        (phase == "Succeeded").then_some(())
    })
    .await?;

    let serial = dv.uid().unwrap_or_default();
    let opts = AddVolumeOptions::data_volume(&name, "scsi", &serial);
    add_volume(&client, Target::VirtualMachine, ns, vm, &opts).await?;
    t.event(format!("PUT .../virtualmachines/{vm}/addvolume accepted"));
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    follow_volume(&vmis, vm, &name, t, |phase| phase == Some("Ready")).await?;

    let link = lab
        .by_id_dir(vm)
        .join(lab_sim::devices::link_name("scsi", &serial));
    if lab.devices.is_some() {
        let target = std::fs::read_link(&link).map_err(LabError::io("read link", &link))?;
        t.event(format!(
            "guest {vm} sees {} -> {}",
            link.display(),
            target.display()
        ));
    }

    remove_volume(
        &client,
        Target::VirtualMachine,
        ns,
        vm,
        &RemoveVolumeOptions {
            name: name.clone(),
            dry_run: vec![],
        },
    )
    .await?;
    t.event(format!(
        "PUT .../virtualmachines/{vm}/removevolume accepted"
    ));
    follow_volume(&vmis, vm, &name, t, |phase| phase.is_none()).await?;
    if lab.devices.is_some() {
        if link.exists() {
            return Err(LabError::Invalid(format!(
                "{} still exists after unplug",
                link.display()
            )));
        }
        t.event(format!("guest {vm} no longer has {}", link.display()));
    }

    dvs.delete(&name, &DeleteParams::default()).await?;
    wait::until(&dvs, &name, TIMEOUT, |dv| dv.is_none().then_some(())).await?;
    t.event(format!(
        "DataVolume {name} deleted (its PVC, PV and backing file go with it)"
    ));
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
                    "volumeStatus {volume}: {} ({})",
                    phase.as_deref().unwrap_or("-"),
                    s.message.as_deref().unwrap_or("")
                )),
                None if last.is_some() => t.event(format!("volumeStatus {volume}: gone")),
                None => {}
            }
            last = Some(phase.clone());
        }
        done(phase.as_deref()).then_some(())
    })
    .await
}

/// Creates a dual-stack LoadBalancer Service selecting the workers, shows
/// the addresses it gets and its EndpointSlice, then deletes it.
pub async fn load_balancer(lab: &Lab, t: &Timeline) -> Result<(), LabError> {
    let client = lab.infra_client().await;
    let ns = &lab.infra_namespace;
    let name = "demo-lb";
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let selector: BTreeMap<String, String> = lab.worker_labels();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": lab.infra_labels},
        "spec": {
            "type": "LoadBalancer",
            "ipFamilyPolicy": "PreferDualStack",
            "ipFamilies": ["IPv4", "IPv6"],
            "selector": selector,
            "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 30443}]
        }
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))?;
    services.create(&PostParams::default(), &svc).await?;
    t.event(format!(
        "created Service {ns}/{name} (LoadBalancer, dual-stack, selecting the workers)"
    ));
    let ingress = wait::until(&services, name, TIMEOUT, |svc| {
        let ips = svc.map(lab_sim::lb::ingress_ips).unwrap_or_default();
        (!ips.is_empty()).then_some(ips)
    })
    .await?;
    let list: Vec<String> = ingress.iter().map(ToString::to_string).collect();
    t.event(format!("load balancer ingress: {}", list.join(", ")));

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let want = lab.nodes.len();
    let endpoints = wait::until(&slices, &format!("{name}-ipv4"), TIMEOUT, |slice| {
        let addrs: Vec<String> = slice
            .map(|s| {
                s.endpoints
                    .iter()
                    .flat_map(|e| e.addresses.clone())
                    .collect()
            })
            .unwrap_or_default();
        (addrs.len() == want).then_some(addrs)
    })
    .await?;
    t.event(format!(
        "EndpointSlice {name}-ipv4 lists the virt-launcher pods: {}",
        endpoints.join(", ")
    ));

    services.delete(name, &DeleteParams::default()).await?;
    wait::until(&services, name, TIMEOUT, |s| s.is_none().then_some(())).await?;
    t.event(format!(
        "Service {name} deleted; its addresses are free again"
    ));
    Ok(())
}

fn uuid_suffix() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(8)
        .collect()
}
