//! Hotplug through the infra API server's URL, as the CSI driver does it:
//! virt-api's addvolume/removevolume (aggregated behind the API server)
//! change the VM and VMI specs, and the VMI's volume status walks every
//! KubeVirt phase to Ready and back out. Requests are validated like
//! KubeVirt's; a missing DataVolume keeps the volume Pending; the configured
//! step latency spaces the phases.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::hotplug::{
    self, AddVolumeOptions, RemoveVolumeOptions, Target, add_volume, remove_volume,
};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::{Lab, LabConfig, wait};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn lab(latency: Duration) -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms: 1,
        devices: false,
        hotplug_step_latency: latency,
        ..LabConfig::default()
    })
    .await
}

async fn create_dv(client: &Client, ns: &str, name: &str) -> anyhow::Result<DataVolume> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "8Mi"}}}}
    }))?;
    dvs.create(&PostParams::default(), &dv).await?;
    Ok(wait::until(&dvs, name, WAIT, |d| {
        d.filter(|d| d.phase() == "Succeeded").cloned()
    })
    .await?)
}

/// Follows the volume's phase on the VMI, recording each distinct phase
/// (`gone` once the entry disappears), until `stop` is seen.
async fn phases(
    vmis: &Api<VirtualMachineInstance>,
    vmi: &str,
    volume: &str,
    stop: &str,
) -> anyhow::Result<Vec<String>> {
    let mut seen: Vec<String> = Vec::new();
    wait::until(vmis, vmi, WAIT, |v| {
        let phase = v
            .and_then(|v| v.volume_status(volume))
            .map(|s| s.phase.clone().unwrap_or_default())
            .unwrap_or_else(|| "gone".to_string());
        if seen.last() != Some(&phase) && !(seen.is_empty() && phase == "gone") {
            seen.push(phase.clone());
        }
        (phase == stop).then_some(())
    })
    .await?;
    Ok(seen)
}

fn code(result: Result<(), kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

async fn put_raw(client: &Client, path: &str, body: &str) -> Result<(), kube::Error> {
    let req = http::Request::put(path)
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}

#[tokio::test]
async fn addvolume_walks_to_ready_and_removevolume_walks_back_out() -> anyhow::Result<()> {
    let lab = lab(Duration::ZERO).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vm = lab.nodes[0].clone();
    let dv = create_dv(&client, ns, "pvc-hot").await?;
    let serial = dv.uid().context("uid")?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);

    let watch = tokio::spawn({
        let vmis = vmis.clone();
        let vm = vm.clone();
        async move { phases(&vmis, &vm, "pvc-hot", "Ready").await }
    });
    tokio::task::yield_now().await;
    add_volume(
        &client,
        Target::VirtualMachine,
        ns,
        &vm,
        &AddVolumeOptions::data_volume("pvc-hot", "scsi", &serial),
    )
    .await?;
    let seen = watch.await??;
    ensure!(
        seen == [
            "Pending",
            "Bound",
            "AttachedToNode",
            "MountedToPod",
            "Ready"
        ],
        "phases {seen:?}"
    );

    let vmi = vmis.get(&vm).await?;
    let status = vmi.volume_status("pvc-hot").context("volume status")?;
    ensure!(status.target == "sda");
    ensure!(status.reason.as_deref() == Some("VolumeReady"));
    ensure!(
        status
            .hotplug_volume
            .as_ref()
            .and_then(|h| h.attach_pod_name.as_deref())
            .is_some_and(|n| n.starts_with("hp-volume-"))
    );
    let disk = vmi
        .spec
        .domain
        .devices
        .disks
        .iter()
        .find(|d| d.name == "pvc-hot")
        .context("disk on the VMI")?;
    ensure!(disk.serial.as_deref() == Some(serial.as_str()));
    let spec_vm = vms.get(&vm).await?;
    ensure!(
        spec_vm.has_volume("pvc-hot")
            && spec_vm
                .template_volumes()
                .iter()
                .any(|v| v.is_hotpluggable())
    );

    let watch = tokio::spawn({
        let vmis = vmis.clone();
        let vm = vm.clone();
        async move { phases(&vmis, &vm, "pvc-hot", "gone").await }
    });
    tokio::task::yield_now().await;
    remove_volume(
        &client,
        Target::VirtualMachine,
        ns,
        &vm,
        &RemoveVolumeOptions {
            name: "pvc-hot".into(),
            dry_run: vec![],
        },
    )
    .await?;
    let seen = watch.await??;
    ensure!(
        seen.ends_with(&[
            "UnMountedFromPod".to_string(),
            "Detaching".to_string(),
            "gone".to_string()
        ]),
        "phases {seen:?}"
    );
    ensure!(
        !vms.get(&vm).await?.has_volume("pvc-hot"),
        "VM template still has the volume"
    );
    ensure!(!vmis.get(&vm).await?.has_volume("pvc-hot"));
    // The VM controller clears the requests it has seen through.
    wait::until(&vms, &vm, WAIT, |v| {
        v.filter(|v| {
            v.status
                .as_ref()
                .is_some_and(|s| s.volume_requests.is_empty())
        })
        .map(|_| ())
    })
    .await?;
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_volume_waits_pending_for_its_data_volume() -> anyhow::Result<()> {
    let lab = lab(Duration::ZERO).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vm = lab.nodes[0].clone();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    add_volume(
        &client,
        Target::VirtualMachine,
        ns,
        &vm,
        &AddVolumeOptions::data_volume("pvc-later", "scsi", "s"),
    )
    .await?;
    let message = wait::until(&vmis, &vm, WAIT, |v| {
        let s = v?.volume_status("pvc-later")?;
        (s.phase.as_deref() == Some("Pending"))
            .then(|| s.message.clone())
            .flatten()
    })
    .await?;
    ensure!(message.contains("does not exist"), "{message}");
    create_dv(&client, ns, "pvc-later").await?;
    wait::until(&vmis, &vm, WAIT, |v| {
        v?.volume_status("pvc-later")
            .filter(|s| s.is_ready())
            .map(|_| ())
    })
    .await?;
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn requests_are_validated_like_kubevirt() -> anyhow::Result<()> {
    let lab = lab(Duration::ZERO).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vm = lab.nodes[0].clone();
    create_dv(&client, ns, "pvc-v").await?;
    let opts = AddVolumeOptions::data_volume("pvc-v", "scsi", "serial");
    let remove = |name: &str| RemoveVolumeOptions {
        name: name.into(),
        dry_run: vec![],
    };

    ensure!(
        code(add_volume(&client, Target::VirtualMachine, ns, "no-such-vm", &opts).await)
            == Some(404)
    );
    ensure!(
        code(
            add_volume(
                &client,
                Target::VirtualMachineInstance,
                ns,
                "no-such-vmi",
                &opts
            )
            .await
        ) == Some(404)
    );
    let add_path = hotplug::path(Target::VirtualMachine, ns, &vm, "addvolume");
    ensure!(code(put_raw(&client, &add_path, "{not json").await) == Some(400));
    ensure!(
        code(
            put_raw(
                &client,
                &add_path,
                r#"{"name":"pvc-v","volumeSource":{"dataVolume":{"name":"pvc-v"}}}"#
            )
            .await
        ) == Some(400),
        "missing disk"
    );
    ensure!(
        code(put_raw(&client, &add_path, r#"{"name":"pvc-v","disk":{"name":"pvc-v"},"volumeSource":{"dataVolume":{"name":"pvc-v"},"persistentVolumeClaim":{"claimName":"pvc-v"}}}"#).await)
            == Some(400),
        "two volume sources"
    );
    ensure!(
        code(
            put_raw(
                &client,
                &add_path,
                r#"{"name":"pvc-v","disk":{"name":"pvc-v"},"volumeSource":{}}"#
            )
            .await
        ) == Some(400),
        "no volume source"
    );

    add_volume(&client, Target::VirtualMachine, ns, &vm, &opts).await?;
    ensure!(
        code(add_volume(&client, Target::VirtualMachine, ns, &vm, &opts).await) == Some(409),
        "duplicate on the VM"
    );
    ensure!(
        code(add_volume(&client, Target::VirtualMachineInstance, ns, &vm, &opts).await)
            == Some(409),
        "duplicate on the VMI"
    );
    ensure!(
        code(
            remove_volume(
                &client,
                Target::VirtualMachine,
                ns,
                &vm,
                &remove("pvc-unknown")
            )
            .await
        ) == Some(404)
    );
    ensure!(
        code(
            remove_volume(
                &client,
                Target::VirtualMachine,
                ns,
                &vm,
                &remove("rootdisk")
            )
            .await
        ) == Some(400),
        "not hotpluggable"
    );
    ensure!(
        code(
            remove_volume(
                &client,
                Target::VirtualMachine,
                ns,
                "no-such-vm",
                &remove("pvc-v")
            )
            .await
        ) == Some(404)
    );
    ensure!(
        code(
            put_raw(
                &client,
                &hotplug::path(Target::VirtualMachine, ns, &vm, "removevolume"),
                "{}"
            )
            .await
        ) == Some(400)
    );

    // A dry run validates without changing anything.
    let mut dry = AddVolumeOptions::data_volume("pvc-dry", "scsi", "s");
    dry.dry_run = vec!["All".into()];
    add_volume(&client, Target::VirtualMachine, ns, &vm, &dry).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    ensure!(!vms.get(&vm).await?.has_volume("pvc-dry"));
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_volume_on_the_vmi_only_is_added_and_removed_there() -> anyhow::Result<()> {
    let lab = lab(Duration::ZERO).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vm = lab.nodes[0].clone();
    create_dv(&client, ns, "pvc-vmi").await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    add_volume(
        &client,
        Target::VirtualMachineInstance,
        ns,
        &vm,
        &AddVolumeOptions::data_volume("pvc-vmi", "scsi", "s"),
    )
    .await?;
    wait::until(&vmis, &vm, WAIT, |v| {
        v?.volume_status("pvc-vmi")
            .filter(|s| s.is_ready())
            .map(|_| ())
    })
    .await?;
    ensure!(
        !vms.get(&vm).await?.has_volume("pvc-vmi"),
        "a VMI-only hotplug leaves the VM alone"
    );
    let remove = RemoveVolumeOptions {
        name: "pvc-vmi".into(),
        dry_run: vec![],
    };
    ensure!(
        code(remove_volume(&client, Target::VirtualMachine, ns, &vm, &remove).await) == Some(404),
        "the VM does not have it"
    );
    remove_volume(&client, Target::VirtualMachineInstance, ns, &vm, &remove).await?;
    wait::until(&vmis, &vm, WAIT, |v| {
        v.filter(|v| v.volume_status("pvc-vmi").is_none())
            .map(|_| ())
    })
    .await?;
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn step_latency_spaces_the_phases() -> anyhow::Result<()> {
    let latency = Duration::from_millis(150);
    let lab = lab(latency).await?;
    let client = lab.infra_client();
    let ns = &lab.infra_namespace;
    let vm = lab.nodes[0].clone();
    create_dv(&client, ns, "pvc-slow").await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    add_volume(
        &client,
        Target::VirtualMachine,
        ns,
        &vm,
        &AddVolumeOptions::data_volume("pvc-slow", "scsi", "s"),
    )
    .await?;
    wait::until(&vmis, &vm, WAIT, |v| {
        v?.volume_status("pvc-slow")
            .filter(|s| s.is_ready())
            .map(|_| ())
    })
    .await?;
    let took = started.elapsed();
    ensure!(
        took >= latency * 4,
        "four steps after Pending took only {took:?}"
    );
    lab.shutdown().await?;
    Ok(())
}
