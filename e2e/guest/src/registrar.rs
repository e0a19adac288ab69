//! Stand-in for node-driver-registrar (and the kubelet's part of it): record
//! a node's CSI node id for our driver in its CSINode and in the Node's
//! `csi.volume.kubernetes.io/nodeid` annotation, where the attacher looks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::GuestError;
use crate::attacher::NODE_ID_ANNOTATION;
use crate::error::not_found_ok;

/// Register `driver` on `node` with `node_id` (and a volume limit, 0 = none).
pub async fn register(
    client: &kube::Client,
    driver: &str,
    node: &str,
    node_id: &str,
    max_volumes: i64,
) -> Result<(), GuestError> {
    let entry = CSINodeDriver {
        name: driver.to_string(),
        node_id: node_id.to_string(),
        allocatable: (max_volumes > 0).then(|| VolumeNodeResources {
            count: i32::try_from(max_volumes).ok(),
        }),
        topology_keys: None,
    };
    let api: Api<CSINode> = Api::all(client.clone());
    match not_found_ok(api.get(node).await, format!("reading CSINode {node}"))? {
        Some(mut existing) => {
            // A driver's entry is immutable: one registered with another
            // node id is removed first, then added anew, as kubelet does.
            if existing
                .spec
                .drivers
                .iter()
                .any(|d| d.name == driver && *d != entry)
            {
                existing.spec.drivers.retain(|d| d.name != driver);
                existing = api
                    .replace(node, &PostParams::default(), &existing)
                    .await
                    .map_err(GuestError::kube(format!("updating CSINode {node}")))?;
            }
            if !existing.spec.drivers.contains(&entry) {
                existing.spec.drivers.push(entry);
                api.replace(node, &PostParams::default(), &existing)
                    .await
                    .map_err(GuestError::kube(format!("updating CSINode {node}")))?;
            }
        }
        None => {
            let csinode = CSINode {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    ..Default::default()
                },
                spec: CSINodeSpec {
                    drivers: vec![entry],
                },
            };
            api.create(&PostParams::default(), &csinode)
                .await
                .map_err(GuestError::kube(format!("creating CSINode {node}")))?;
        }
    }
    let ids = serde_json::to_string(&BTreeMap::from([(driver, node_id)]))
        .map_err(|e| GuestError::Invalid(e.to_string()))?;
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {NODE_ID_ANNOTATION: ids}}})),
        )
        .await
        .map_err(GuestError::kube(format!("annotating Node {node}")))?;
    Ok(())
}
