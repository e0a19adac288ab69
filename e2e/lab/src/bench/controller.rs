//! The CSI controller on its own socket, as the sidecars call it:
//!
//! - a burst of CreateVolume calls sent at once, until every one answered;
//! - its resident memory while its caches hold many tenant DataVolumes
//!   (created straight in the infra cluster, as if provisioned earlier).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kubevirt_csi_proto::v1::controller_client::ControllerClient;
use kubevirt_csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use kubevirt_csi_proto::v1::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, ListVolumesRequest, VolumeCapability,
};
use kubevirt_infra::cdi::DataVolume;
use serde_json::json;
use tonic::transport::Channel;

use super::{Params, Report, rss_mib};
use crate::suite::Suite;
use crate::{Lab, LabError};

const SECTION: &str = "CSI controller";

fn create_request(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
        }],
        parameters: [("bus".to_string(), "scsi".to_string())].into(),
        ..Default::default()
    }
}

async fn client(lab: &Lab) -> Result<ControllerClient<Channel>, LabError> {
    let socket = lab.dir.join("csi-controller").join("csi.sock");
    Ok(ControllerClient::new(lab_guest::connect(&socket).await?))
}

fn grpc(what: &str) -> impl FnOnce(tonic::Status) -> LabError + '_ {
    move |s| LabError::Invalid(format!("{what}: {:?}: {}", s.code(), s.message()))
}

/// `p.create_burst` CreateVolume calls at once; then each volume deleted.
pub async fn create_burst(lab: &Lab, p: &Params, report: &mut Report) -> Result<(), LabError> {
    let c = client(lab).await?;
    let names: Vec<String> = (0..p.create_burst)
        .map(|_| format!("pvc-{}", uuid::Uuid::new_v4()))
        .collect();
    let t0 = Instant::now();
    futures::future::try_join_all(names.iter().map(|name| {
        let mut c = c.clone();
        async move {
            c.create_volume(create_request(name))
                .await
                .map_err(grpc("CreateVolume"))
        }
    }))
    .await?;
    let elapsed = t0.elapsed();
    report.add_target(
        SECTION,
        format!(
            "{} concurrent CreateVolume calls, all answered",
            p.create_burst
        ),
        elapsed.as_secs_f64(),
        "s",
        "<= 2",
    );
    futures::future::try_join_all(names.iter().map(|name| {
        let mut c = c.clone();
        async move {
            c.delete_volume(DeleteVolumeRequest {
                volume_id: name.clone(),
                ..Default::default()
            })
            .await
            .map_err(grpc("DeleteVolume"))
        }
    }))
    .await?;
    Ok(())
}

/// Every daemon's resident memory, as `<metric prefix> <daemon>` rows.
pub fn memory(suite: &Suite, when: &str, report: &mut Report) {
    for d in suite.daemons() {
        let Some(pid) = d.pid() else { continue };
        let Some(mib) = rss_mib(pid) else { continue };
        let name = d
            .log_path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("csi-node-") {
            report.add_target(
                "memory",
                format!("RSS of {name} {when}"),
                mib,
                "MiB",
                "<= 8",
            );
        } else {
            report.add("memory", format!("RSS of {name} {when}"), mib, "MiB");
        }
    }
}

/// The controller's memory once its caches hold `p.held_volumes` more
/// tenant DataVolumes.
pub async fn memory_holding(
    lab: &Lab,
    suite: &Suite,
    p: &Params,
    report: &mut Report,
) -> Result<(), LabError> {
    let infra = lab.infra_client();
    let dvs: Api<DataVolume> = Api::namespaced(infra, &lab.infra_namespace);
    futures::stream::iter(0..p.held_volumes)
        .map(|i| {
            let dvs = dvs.clone();
            let labels = lab.infra_labels.clone();
            async move {
                let dv: DataVolume = serde_json::from_value(json!({
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                    "metadata": {"name": format!("pvc-held-{i:05}"), "labels": labels},
                    "spec": {"source": {"blank": {}},
                             "storage": {"resources": {"requests": {"storage": "1Mi"}}}}
                }))
                .map_err(|e| LabError::Invalid(e.to_string()))?;
                dvs.create(&PostParams::default(), &dv).await?;
                Ok::<_, LabError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    // How many the controller lists: what its caches hold.
    let mut c = client(lab).await?;
    let mut held = 0;
    let mut token = String::new();
    loop {
        let page = c
            .list_volumes(ListVolumesRequest {
                max_entries: 500,
                starting_token: token,
            })
            .await
            .map_err(grpc("ListVolumes"))?
            .into_inner();
        held += page.entries.len();
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let Some(pid) = suite.controller.as_ref().and_then(|d| d.pid()) else {
        return Err(LabError::Invalid(
            "the CSI controller is not running".into(),
        ));
    };
    let mib = rss_mib(pid).unwrap_or_default();
    report.add_target(
        SECTION,
        format!("controller RSS holding {held} volumes"),
        mib,
        "MiB",
        "<= 24",
    );
    Ok(())
}
