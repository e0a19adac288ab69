//! ListVolumes and ControllerGetVolume, answered from the index: each
//! volume with the nodes it is published to (the VMs and VMIs that list it)
//! and its condition (abnormal when the DataVolume failed).

use std::collections::HashMap;

use kubevirt_csi_proto::v1::{
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ListVolumesRequest,
    ListVolumesResponse, Volume, VolumeCondition, controller_get_volume_response,
    list_volumes_response,
};
use tokio::time::Instant;

use super::ControllerService;
use super::capability::{node_id, required};
use super::entries::{ContentSource, VolumeEntry};
use super::index::State;
use super::pagination;
use super::volume::SERIAL_KEY;
use crate::error::Result;

fn csi_volume(name: &str, e: &VolumeEntry) -> Volume {
    use kubevirt_csi_proto::v1::{VolumeContentSource, volume_content_source as vcs};
    let content_source = e.source.as_ref().map(|s| VolumeContentSource {
        r#type: Some(match s {
            ContentSource::Snapshot(id) => vcs::Type::Snapshot(vcs::SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => vcs::Type::Volume(vcs::VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    });
    Volume {
        capacity_bytes: e.size.unwrap_or(0),
        volume_id: name.to_string(),
        volume_context: HashMap::from([(SERIAL_KEY.to_string(), e.uid.clone())]),
        content_source,
        accessible_topology: Vec::new(),
    }
}

/// The volume's condition: abnormal when the DataVolume failed or a VMI
/// reports a failed hotplug.
fn condition(s: &State, name: &str, e: &VolumeEntry) -> VolumeCondition {
    let hotplug_failure = s.vmis_with(name).find_map(|vmi| {
        s.vmi(vmi)
            .and_then(|v| v.volume(name))
            .and_then(|v| v.failure.as_ref())
            .map(|f| format!("hotplug into {vmi} failed: {f}"))
    });
    match (&e.failure, hotplug_failure) {
        (Some(why), _) => VolumeCondition {
            abnormal: true,
            message: format!("infra DataVolume failed: {why}"),
        },
        (None, Some(why)) => VolumeCondition {
            abnormal: true,
            message: why,
        },
        (None, None) => VolumeCondition {
            abnormal: false,
            message: if e.phase.is_empty() {
                "infra DataVolume has no phase yet".to_string()
            } else {
                format!("infra DataVolume is {}", e.phase)
            },
        },
    }
}

fn published_nodes(s: &State, namespace: &str, volume: &str) -> Vec<String> {
    s.holders(volume)
        .into_iter()
        .map(|vm| node_id(namespace, vm))
        .collect()
}

pub(super) async fn list_volumes(
    svc: &ControllerService,
    req: ListVolumesRequest,
    deadline: Instant,
) -> Result<ListVolumesResponse> {
    pagination::check_request(req.max_entries, &req.starting_token)?;
    svc.synced(deadline).await?;
    let ns = svc.scope().namespace();
    let page = svc.index.read(|s| {
        pagination::page(
            s.volumes(),
            req.max_entries,
            &req.starting_token,
            |name, e| {
                Some(list_volumes_response::Entry {
                    volume: Some(csi_volume(name, e)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: published_nodes(s, ns, name),
                        volume_condition: Some(condition(s, name, e)),
                    }),
                })
            },
        )
    })?;
    Ok(ListVolumesResponse {
        entries: page.entries,
        next_token: page.next_token,
    })
}

pub(super) async fn get_volume(
    svc: &ControllerService,
    req: ControllerGetVolumeRequest,
    deadline: Instant,
) -> Result<ControllerGetVolumeResponse> {
    let id = required(&req.volume_id, "volume_id")?;
    svc.synced(deadline).await?;
    let e = svc.volume(id).await?;
    let ns = svc.scope().namespace();
    let (published, condition) = svc
        .index
        .read(|s| (published_nodes(s, ns, id), condition(s, id, &e)));
    Ok(ControllerGetVolumeResponse {
        volume: Some(csi_volume(id, &e)),
        status: Some(controller_get_volume_response::VolumeStatus {
            published_node_ids: published,
            volume_condition: Some(condition),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::entries::{VmiEntry, VmiVolume};
    use crate::controller::index::Index;

    #[test]
    fn failed_data_volumes_and_hotplugs_are_abnormal() {
        let mut e = VolumeEntry {
            uid: "u".into(),
            csi_name: None,
            size: Some(1),
            storage_class: None,
            multi_node: false,
            source: Some(ContentSource::Snapshot("s".into())),
            phase: "Succeeded".into(),
            failure: None,
            deleting: false,
        };
        let idx = Index::new();
        idx.read(|s| assert!(!condition(s, "pvc-1", &e).abnormal));
        idx.write(|s| {
            s.upsert_vmi(
                "vm1".into(),
                Some(VmiEntry {
                    tenant: true,
                    phase: "Running".into(),
                    volumes: vec![VmiVolume {
                        name: "pvc-1".into(),
                        phase: Some("Pending".into()),
                        hotplug: true,
                        message: None,
                        failure: Some("FailedAttach: no device".into()),
                    }],
                }),
            )
        });
        idx.read(|s| {
            let c = condition(s, "pvc-1", &e);
            assert!(c.abnormal && c.message.contains("vm1"), "{c:?}");
        });
        e.failure = Some("quota".into());
        idx.read(|s| assert!(condition(s, "pvc-1", &e).message.contains("quota")));
        let v = csi_volume("pvc-1", &e);
        assert_eq!(
            v.volume_context.get("serial").map(String::as_str),
            Some("u")
        );
        assert!(v.content_source.is_some());
    }
}
