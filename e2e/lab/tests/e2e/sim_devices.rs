//! Guest disk emulation (needs root): a hotplugged volume that is Ready is a
//! loop device over its backing file with the by-id link a QEMU disk of that
//! bus and serial gets in the guest; writes through the device land in the
//! file; growth reaches the device; unplugging, stopping the VM, shutting the
//! lab down and reopening after a crash all detach the devices.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::hotplug::{
    AddVolumeOptions, RemoveVolumeOptions, Target, add_volume, remove_volume,
};
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::{Lab, LabConfig, wait};
use lab_sim::devices::{DeviceConfig, Devices, device_size, link_name};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn lab() -> anyhow::Result<Lab> {
    crate::common::start_lab(LabConfig {
        vms: 1,
        devices: true,
        ..LabConfig::default()
    })
    .await
}

async fn create_dv(
    client: &Client,
    ns: &str,
    name: &str,
    size: &str,
) -> anyhow::Result<DataVolume> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": size}}, "volumeMode": "Block"}}
    }))?;
    dvs.create(&PostParams::default(), &dv).await?;
    Ok(wait::until(&dvs, name, WAIT, |d| {
        d.filter(|d| d.phase() == "Succeeded").cloned()
    })
    .await?)
}

async fn backing_file(client: &Client, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim)
        .await?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(
            &pvc.spec
                .and_then(|s| s.volume_name)
                .context("unbound claim")?,
        )
        .await?;
    Ok(PathBuf::from(
        pv.spec.and_then(|s| s.host_path).context("hostPath")?.path,
    ))
}

/// The file a loop device is attached to, or None once detached.
fn backing_of(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?;
    let s = std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
        .ok()?;
    Some(PathBuf::from(s.trim()))
}

/// Whether `dev` no longer backs `file`: detached, or (when someone, e.g.
/// udev probing it, still holds it open) set by `losetup -d` to detach at
/// its last close, which the kernel shows as autoclear.
fn released(dev: &Path, file: &Path) -> bool {
    let autoclear = dev.file_name().is_some_and(|name| {
        std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/autoclear"))
            .is_ok_and(|s| s.trim() == "1")
    });
    backing_of(dev).as_deref() != Some(file) || autoclear
}

async fn hotplug_ready(
    lab: &Lab,
    client: &Client,
    volume: &str,
    bus: &str,
    serial: &str,
) -> anyhow::Result<()> {
    let ns = &lab.infra_namespace;
    let vm = &lab.nodes[0];
    add_volume(
        client,
        Target::VirtualMachine,
        ns,
        vm,
        &AddVolumeOptions::data_volume(volume, bus, serial),
    )
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    wait::until(&vmis, vm, WAIT, |v| {
        v?.volume_status(volume)
            .filter(|s| s.is_ready())
            .map(|_| ())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn ready_volumes_are_loop_devices_behind_by_id_links() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let vm = lab.nodes[0].clone();
    let by_id = lab.by_id_dir(&vm);
    ensure!(
        by_id.starts_with(lab.node_dev_dir(&vm))
            && lab.node_dev_dir(&vm) == lab.dir.join("nodes").join(&vm).join("dev")
    );

    let dv = create_dv(&client, &ns, "pvc-dev", "32Mi").await?;
    let serial = dv.uid().context("uid")?;
    hotplug_ready(&lab, &client, "pvc-dev", "scsi", &serial).await?;
    let link = by_id.join(format!("scsi-0QEMU_QEMU_HARDDISK_{serial}"));
    let dev =
        std::fs::read_link(&link).with_context(|| format!("{} is not a link", link.display()))?;
    ensure!(
        dev.is_absolute() && dev.to_string_lossy().starts_with("/dev/loop"),
        "{}",
        dev.display()
    );
    let file = backing_file(&client, &ns, "pvc-dev").await?;
    ensure!(
        backing_of(&dev).as_deref() == Some(file.as_path()),
        "{} is not backed by {}",
        dev.display(),
        file.display()
    );
    ensure!(device_size(&dev) == Some(32 << 20));

    // What the guest writes lands in the infra volume.
    {
        let disk = std::fs::OpenOptions::new().write(true).open(&dev)?;
        disk.write_all_at(b"written by the guest", 4096)?;
        disk.sync_all()?;
    }
    let mut buf = [0u8; 20];
    std::fs::File::open(&file)?.read_exact_at(&mut buf, 4096)?;
    ensure!(&buf == b"written by the guest");

    // A virtio disk shows its serial cut to 20 characters.
    let dv2 = create_dv(&client, &ns, "pvc-virtio", "8Mi").await?;
    let serial2 = dv2.uid().context("uid")?;
    hotplug_ready(&lab, &client, "pvc-virtio", "virtio", &serial2).await?;
    let virtio_link = by_id.join(link_name("virtio", &serial2));
    ensure!(
        virtio_link
            .file_name()
            .is_some_and(|n| n.len() == "virtio-".len() + 20)
    );
    let virtio_dev = std::fs::read_link(&virtio_link)?;
    let virtio_file = backing_file(&client, &ns, "pvc-virtio").await?;
    ensure!(backing_of(&virtio_dev).as_deref() == Some(virtio_file.as_path()));

    // Growth reaches the device before the new capacity shows in the volume status.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let grow = json!({"spec": {"resources": {"requests": {"storage": "64Mi"}}}});
    pvcs.patch("pvc-dev", &PatchParams::default(), &Patch::Merge(&grow))
        .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    wait::until(&vmis, &vm, WAIT, |v| {
        let s = v?.volume_status("pvc-dev")?;
        let cap = s
            .extra
            .get("persistentVolumeClaimInfo")?
            .get("capacity")?
            .get("storage")?
            .as_str()?;
        (cap == "64Mi").then_some(())
    })
    .await?;
    ensure!(
        device_size(&dev) == Some(64 << 20),
        "device size {:?}",
        device_size(&dev)
    );

    remove_volume(
        &client,
        Target::VirtualMachine,
        &ns,
        &vm,
        &RemoveVolumeOptions {
            name: "pvc-dev".into(),
            dry_run: vec![],
        },
    )
    .await?;
    wait::until(&vmis, &vm, WAIT, |v| {
        v.filter(|v| v.volume_status("pvc-dev").is_none())
            .map(|_| ())
    })
    .await?;
    ensure!(
        !link.exists() && std::fs::symlink_metadata(&link).is_err(),
        "link survived the unplug"
    );
    ensure!(released(&dev, &file), "loop device still attached");

    lab.shutdown().await?;
    ensure!(
        std::fs::symlink_metadata(&virtio_link).is_err(),
        "shutdown left the virtio link"
    );
    ensure!(
        released(&virtio_dev, &virtio_file),
        "shutdown left {} attached",
        virtio_dev.display()
    );
    Ok(())
}

#[tokio::test]
async fn stopping_the_vm_detaches_its_disks() -> anyhow::Result<()> {
    let lab = lab().await?;
    let client = lab.infra_client();
    let ns = lab.infra_namespace.clone();
    let vm = lab.nodes[0].clone();
    let dv = create_dv(&client, &ns, "pvc-stop", "8Mi").await?;
    let serial = dv.uid().context("uid")?;
    hotplug_ready(&lab, &client, "pvc-stop", "scsi", &serial).await?;
    let link = lab.by_id_dir(&vm).join(link_name("scsi", &serial));
    let dev = std::fs::read_link(&link)?;
    let file = backing_file(&client, &ns, "pvc-stop").await?;

    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    vms.patch(
        &vm,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    wait::until(&vmis, &vm, WAIT, |v| v.is_none().then_some(())).await?;
    ensure!(
        std::fs::symlink_metadata(&link).is_err(),
        "link outlived the VMI"
    );
    ensure!(released(&dev, &file), "loop device outlived the VMI");
    ensure!(
        lab.devices
            .as_ref()
            .is_some_and(|d| d.attached().is_empty())
    );
    lab.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn devices_left_by_a_crashed_run_are_detached_on_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("disk.img");
    lab_sim::files::create_sparse(&file, 4 << 20)?;
    let cfg = DeviceConfig {
        root: dir.path().join("nodes"),
    };
    let devices = Devices::open(&cfg)?;
    let attached = devices.attach("node-a", "vol", "scsi", "serial-1", &file, false)?;
    ensure!(backing_of(&attached.loop_device).as_deref() == Some(file.as_path()));
    ensure!(std::fs::read_link(&attached.link)? == attached.loop_device);
    // A crash: the registry never runs its cleanup.
    std::mem::forget(devices);

    let reopened = Devices::open(&cfg)?;
    ensure!(
        released(&attached.loop_device, &file),
        "stale loop device still attached"
    );
    ensure!(
        std::fs::symlink_metadata(&attached.link).is_err(),
        "stale link survived"
    );
    ensure!(reopened.attached().is_empty());
    Ok(())
}
