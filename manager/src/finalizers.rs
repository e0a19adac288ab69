//! Adding the manager's finalizer before kube's finalizer helper runs.
//!
//! kube's helper adds a finalizer with a JSON patch that first tests
//! `/metadata/finalizers` against `null`. kube-apiserver accepts that for a
//! missing field; API servers built on RFC 6902 libraries that treat a
//! missing path as a failed test (the lab's) reject it. Adding the finalizer
//! here, guarded by a test of the object's `resourceVersion` instead, is
//! just as safe against concurrent writers and works on both; the helper
//! then finds the finalizer present and only dispatches.

use json_patch::{AddOperation, PatchOperation, TestOperation};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The JSON patch that adds `finalizer` to `obj` if it is not being deleted
/// and does not carry it yet.
pub fn add_patch<K: Resource>(obj: &K, finalizer: &str) -> Option<json_patch::Patch> {
    if obj.meta().deletion_timestamp.is_some() || obj.finalizers().iter().any(|f| f == finalizer) {
        return None;
    }
    let rv = obj.meta().resource_version.clone()?;
    let add = match &obj.meta().finalizers {
        Some(list) if !list.is_empty() => AddOperation {
            path: "/metadata/finalizers/-".parse().ok()?,
            value: Value::String(finalizer.to_string()),
        },
        _ => AddOperation {
            path: "/metadata/finalizers".parse().ok()?,
            value: Value::Array(vec![Value::String(finalizer.to_string())]),
        },
    };
    Some(json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: "/metadata/resourceVersion".parse().ok()?,
            value: Value::String(rv),
        }),
        PatchOperation::Add(add),
    ]))
}

/// Add `finalizer` to `obj`; `true` if a patch was sent (the change will
/// trigger the next reconcile).
pub async fn ensure<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(patch) = add_patch(obj, finalizer) else {
        return Ok(false);
    };
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(finalizers: Option<Vec<&str>>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                resource_version: Some("7".into()),
                finalizers: finalizers.map(|f| f.into_iter().map(String::from).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn adds_once_guarded_by_the_resource_version() {
        let p = serde_json::to_value(add_patch(&cm(None), "x/f").expect("patch")).expect("json");
        assert_eq!(
            p,
            serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/finalizers", "value": ["x/f"]}
            ])
        );
        let p = serde_json::to_value(add_patch(&cm(Some(vec!["other"])), "x/f").expect("patch"))
            .expect("json");
        assert_eq!(
            p[1],
            serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": "x/f"})
        );
        assert!(add_patch(&cm(Some(vec!["x/f"])), "x/f").is_none());
        let mut deleting = cm(None);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(add_patch(&deleting, "x/f").is_none());
    }
}
