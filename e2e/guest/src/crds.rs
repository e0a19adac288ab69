//! The snapshot CRDs a guest cluster needs for the snapshotter stand-in
//! (VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass), as the
//! product installs them (`infra/crds/`), and [`install`], which creates
//! them and waits until they are Established.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::GuestError;

const SNAPSHOT_CRDS: [&str; 3] = kubevirt_infra::snapshot::CRDS;

/// Create the snapshot CRDs (existing ones are kept) and wait until Established.
pub async fn install(client: &kube::Client, timeout: Duration) -> Result<(), GuestError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for yaml in SNAPSHOT_CRDS {
        let crd: CustomResourceDefinition = serde_yaml::from_str(yaml)
            .map_err(|e| GuestError::Invalid(format!("embedded CRD: {e}")))?;
        let name = crd.name_any();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(GuestError::kube(format!("creating CRD {name}"))(e)),
        }
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(GuestError::NotReady(format!("CRD {name}: {e}"))),
            Err(_) => {
                return Err(GuestError::NotReady(format!(
                    "CRD {name} not Established in {timeout:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Whether the cluster serves the three snapshot resources.
pub async fn served(client: &kube::Client) -> Result<bool, GuestError> {
    match client
        .list_api_group_resources("snapshot.storage.k8s.io/v1")
        .await
    {
        Ok(list) => Ok([
            "volumesnapshots",
            "volumesnapshotcontents",
            "volumesnapshotclasses",
        ]
        .iter()
        .all(|name| list.resources.iter().any(|r| r.name == *name))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(GuestError::kube("discovering snapshot.storage.k8s.io/v1")(
            e,
        )),
    }
}
