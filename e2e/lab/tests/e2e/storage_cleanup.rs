//! Nothing of a deleted claim stays in the infra cluster: while a pod uses
//! the claim, its infra DataVolume (tenant-labelled) and claim exist and the
//! disk is hotplugged into the node's VM; once the pod and the guest claim
//! are deleted, the DataVolume, the infra claim and the hotplugged volume are
//! gone, and no tenant-labelled DataVolume or claim remains.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use crate::storage_support::*;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_objects_go_with_the_claim() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = scenario(&s).await;
        s.finish(outcome).await
    })
    .await
}

async fn scenario(s: &Storage) -> anyhow::Result<()> {
    let node = s.lab.nodes[0].clone();
    let infra = s.lab.infra_client();
    let ns = &s.lab.infra_namespace;
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), ns);
    let infra_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(infra.clone(), ns);
    let vms: Api<VirtualMachine> = Api::namespaced(infra.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), ns);
    let selector = s
        .lab
        .infra_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");

    let pv = s.provision(&Claim::fs("data", "1Gi")).await?;
    let volume = pv
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .unwrap_or_default();
    let dv = dvs.get(&volume).await?;
    for (k, v) in &s.lab.infra_labels {
        assert_eq!(
            dv.labels().get(k),
            Some(v),
            "the DataVolume carries the tenant's labels"
        );
    }
    let pod = s.run_pod("user", &node, &["data"]).await?;
    write_file(&pod.volume("data")?.join("f"), b"x")?;
    assert!(
        infra_pvcs.get_opt(&volume).await?.is_some(),
        "CDI made the infra claim"
    );
    assert!(
        vmis.get(&node)
            .await?
            .volume_status(&volume)
            .is_some_and(|v| v.is_ready()),
        "hotplugged into the node's VMI"
    );

    s.delete_pod("user").await?;
    s.delete_claim("data").await?;
    wait::until(&dvs, &volume, WAIT, |d| d.is_none().then_some(())).await?;
    wait::until(&infra_pvcs, &volume, WAIT, |p| p.is_none().then_some(())).await?;
    assert!(
        vmis.get(&node).await?.volume_status(&volume).is_none(),
        "unplugged from the VMI"
    );
    let vm = serde_json::to_value(vms.get(&node).await?)?;
    let in_vm = vm["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .is_some_and(|vols| vols.iter().any(|v| v["name"] == volume.as_str()));
    assert!(!in_vm, "gone from the VM spec");

    let dv_left: Vec<String> = dvs
        .list(&ListParams::default().labels(&selector))
        .await?
        .iter()
        .map(|d| d.name_any())
        .collect();
    assert!(dv_left.is_empty(), "tenant DataVolumes left: {dv_left:?}");
    let pvc_left: Vec<String> = infra_pvcs
        .list(&ListParams::default().labels(&selector))
        .await?
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(pvc_left.is_empty(), "tenant claims left: {pvc_left:?}");
    Ok(())
}
