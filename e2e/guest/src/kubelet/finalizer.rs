//! The pod finalizer that keeps a deleted pod around until its volumes are
//! down (the stand-in's version of a pod's graceful deletion), as JSON
//! patches. Adding it is guarded by the pod's resourceVersion rather than by
//! a `test` of a missing `/metadata/finalizers` against `null` (which only
//! some servers accept); removing it tests that the entry at the index is
//! still ours.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, TestOperation};
use serde_json::Value;

/// The stand-in's pod finalizer.
pub const FINALIZER: &str = "kubelet.lab.kubevirt.io/volumes";

/// `/metadata/<tokens...>`.
fn metadata(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(std::iter::once("metadata").chain(tokens.iter().copied()))
}

/// The patch adding `name` to an object at `resource_version` with
/// `finalizers`.
pub fn add(finalizers: &[String], resource_version: &str, name: &str) -> Patch {
    let mut ops = vec![PatchOperation::Test(TestOperation {
        path: metadata(&["resourceVersion"]),
        value: Value::String(resource_version.to_string()),
    })];
    ops.push(if finalizers.is_empty() {
        PatchOperation::Add(AddOperation {
            path: metadata(&["finalizers"]),
            value: Value::from(vec![name.to_string()]),
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: metadata(&["finalizers", "-"]),
            value: Value::String(name.to_string()),
        })
    });
    Patch(ops)
}

/// The patch removing `name` from `finalizers`, if it is there.
pub fn remove(finalizers: &[String], name: &str) -> Option<Patch> {
    let i = finalizers.iter().position(|f| f == name)?;
    let path = metadata(&["finalizers", &i.to_string()]);
    Some(Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: Value::String(name.to_string()),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_and_removes_its_entry() -> Result<(), json_patch::PatchError> {
        let mut bare = json!({"metadata": {"name": "p", "resourceVersion": "7"}});
        json_patch::patch(&mut bare, &add(&[], "7", FINALIZER))?;
        assert_eq!(bare["metadata"]["finalizers"], json!([FINALIZER]));

        let mut other = json!({"metadata": {"resourceVersion": "8", "finalizers": ["a"]}});
        json_patch::patch(&mut other, &add(&["a".into()], "8", FINALIZER))?;
        assert_eq!(other["metadata"]["finalizers"], json!(["a", FINALIZER]));
        assert!(
            json_patch::patch(&mut other.clone(), &add(&["a".into()], "7", FINALIZER)).is_err(),
            "stale version"
        );

        let fins = vec!["a".to_string(), FINALIZER.to_string()];
        let patch = remove(&fins, FINALIZER).expect("present");
        json_patch::patch(&mut other, &patch)?;
        assert_eq!(other["metadata"]["finalizers"], json!(["a"]));
        assert!(remove(&["a".into()], FINALIZER).is_none());
        Ok(())
    }
}
