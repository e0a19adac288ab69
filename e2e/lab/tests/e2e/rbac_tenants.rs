//! The RBAC our manifests ship, on the lab's real kube-apiserver: each
//! daemon's ServiceAccount may do what its flows need in its own tenant's
//! infra namespace and nothing in another tenant's (403), and its guest
//! identity holds no right on the infra cluster at all.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::{VirtualMachine, VirtualMachineInstance};
use kubevirt_lab::identity::{self, Identity, Overlay};
use kubevirt_lab::{Lab, LabConfig};

/// Whether listing through `api` is allowed (false on 403, an error otherwise).
async fn may_list<K>(api: Api<K>) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn client(lab: &Lab, who: &Identity) -> anyhow::Result<Client> {
    Ok(lab.infra.client_for(&who.token).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_roles_are_enough_and_tenant_tight() -> anyhow::Result<()> {
    let lab = crate::common::start_lab(LabConfig {
        vms: 0,
        devices: false,
        cluster_name: "rbac".into(),
        infra_namespace: "clusters-a".into(),
        infra_labels: BTreeMap::from([("hypershift.openshift.io/infra-id".into(), "a".into())]),
        ..LabConfig::default()
    })
    .await?;
    let result = scenario(&lab).await;
    lab.shutdown().await?;
    result
}

async fn scenario(lab: &Lab) -> anyhow::Result<()> {
    let (mine, theirs) = ("clusters-a", "clusters-b");
    kubevirt_lab::lab::ensure_namespace(&lab.infra_client(), theirs).await?;

    let csi = identity::service_account(
        &lab.infra,
        &identity::CSI_INFRA,
        &Overlay::namespace(mine),
        identity::CSI_INFRA_ACCOUNT,
    )
    .await?;
    let c = client(lab, &csi).await?;
    for ns in [mine, theirs] {
        let allowed = [
            may_list(Api::<DataVolume>::namespaced(c.clone(), ns)).await?,
            may_list(Api::<VirtualMachine>::namespaced(c.clone(), ns)).await?,
            may_list(Api::<VirtualMachineInstance>::namespaced(c.clone(), ns)).await?,
            may_list(Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)).await?,
        ];
        let want = ns == mine;
        ensure!(
            allowed.iter().all(|a| *a == want),
            "CSI controller of {mine} listing in {ns}: {allowed:?}, want all {want}"
        );
    }
    ensure!(
        !may_list(Api::<Secret>::namespaced(c.clone(), mine)).await?,
        "the CSI controller reads Secrets"
    );
    ensure!(
        !may_list(Api::<Service>::namespaced(c.clone(), mine)).await?,
        "the CSI controller reads Services"
    );

    let ccm = identity::service_account(
        &lab.infra,
        &identity::CCM_INFRA,
        &Overlay::namespace(mine),
        identity::CCM_ACCOUNT,
    )
    .await?;
    let c = client(lab, &ccm).await?;
    for ns in [mine, theirs] {
        let allowed = [
            may_list(Api::<Service>::namespaced(c.clone(), ns)).await?,
            may_list(Api::<EndpointSlice>::namespaced(c.clone(), ns)).await?,
            may_list(Api::<VirtualMachineInstance>::namespaced(c.clone(), ns)).await?,
        ];
        let want = ns == mine;
        ensure!(
            allowed.iter().all(|a| *a == want),
            "CCM of {mine} listing in {ns}: {allowed:?}, want all {want}"
        );
    }
    ensure!(
        !may_list(Api::<DataVolume>::namespaced(c.clone(), mine)).await?,
        "the CCM reads DataVolumes"
    );

    // An identity of the guest cluster means nothing to the infra cluster.
    let node = identity::service_account(
        &lab.guest,
        &identity::CSI_TENANT_NODE,
        &Overlay::default(),
        identity::CSI_TENANT_NODE_ACCOUNT,
    )
    .await?;
    let stranger = lab.infra.client_for(&node.token).await?;
    match Api::<DataVolume>::namespaced(stranger, mine)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => {
            ensure!(e.code == 401, "a guest token on the infra cluster: {e:?}")
        }
        other => {
            return Err(anyhow::anyhow!(
                "a guest token on the infra cluster: {other:?}"
            ));
        }
    }
    let audit = lab
        .infra
        .counters_when(
            |c| c.count_by("list", "datavolumes", &csi.user) >= 2,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        audit.count_by("list", "datavolumes", &csi.user) == 2,
        "the audit log counts the CSI controller's lists: {:?}",
        audit.by_user(&csi.user)
    );
    Ok(())
}
