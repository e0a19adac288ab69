//! The three PATCH content types of the Kubernetes API: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902) and strategic merge patch.
//!
//! Exposes [`merge_patch`], [`json_patch()`], [`strategic_merge_patch`] (in `strategic`),
//! the per-kind strategies [`MergeKeys`] (in `merge_keys`), [`check_resource_version`]
//! for the optimistic-concurrency precondition a patch may carry, and [`PatchError`],
//! whose variants map to the status codes the real server answers with.

mod merge_keys;
mod strategic;

use serde_json::Value;

pub use merge_keys::{FieldStrategy, ListKey, MergeKeys, supports_strategic_merge};
pub use strategic::strategic_merge_patch;

/// The most operations a JSON patch may hold.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Why a patch was refused. [`PatchError::status_code`] is the real server's code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well formed but cannot be applied to this object (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A JSON patch `test` operation did not hold (422).
    #[error("{0}")]
    TestFailed(String),
    /// The patch pins a `metadata.resourceVersion` other than the live one (409).
    #[error(
        "the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { expected: String, actual: String },
    /// A JSON patch with more than [`MAX_JSON_PATCH_OPERATIONS`] operations (413).
    #[error("The allowed maximum operations in a JSON patch is {max}, got: {got}", max = MAX_JSON_PATCH_OPERATIONS)]
    TooManyOperations { got: usize },
    /// What the real server reports as an internal error (500), e.g. a merge-keyed
    /// list item without its key.
    #[error("{0}")]
    Internal(String),
}

impl PatchError {
    /// The HTTP status the real server answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unprocessable(_) | Self::TestFailed(_) => 422,
            Self::Conflict { .. } => 409,
            Self::TooManyOperations { .. } => 413,
            Self::Internal(_) => 500,
        }
    }

    /// The `Status.reason` of that response.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unprocessable(_) | Self::TestFailed(_) => "Invalid",
            Self::Conflict { .. } => "Conflict",
            Self::TooManyOperations { .. } => "RequestEntityTooLarge",
            Self::Internal(_) => "InternalError",
        }
    }
}

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes,
/// anything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch atomically: on error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            json_type_name(patch)
        )));
    };
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations { got: ops.len() });
    }
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        if !matches!(
            kind,
            "add" | "remove" | "replace" | "move" | "copy" | "test"
        ) {
            return Err(PatchError::Unprocessable(format!(
                "Unexpected kind: {kind}"
            )));
        }
    }
    let parsed: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Unprocessable(e.to_string()))?;
    // As in the API server's JSON patch library, `test` of a missing path
    // against `null` succeeds (kube-runtime's finalizer helper relies on it
    // when an object has no finalizers yet). Operations run in order, so
    // each such test is decided on the document as the earlier ones left it.
    let mut doc = target.clone();
    for op in &parsed.0 {
        if let json_patch::PatchOperation::Test(test) = op
            && test.value.is_null()
            && doc.pointer(test.path.as_str()).is_none()
        {
            continue;
        }
        let single = json_patch::Patch(vec![op.clone()]);
        json_patch::patch(&mut doc, &single).map_err(|e| describe_json_patch_error(&single, &e))?;
    }
    *target = doc;
    Ok(())
}

fn describe_json_patch_error(patch: &json_patch::Patch, e: &json_patch::PatchError) -> PatchError {
    use json_patch::{PatchErrorKind, PatchOperation};
    let path = e.path.as_str();
    let op = patch.0.get(e.operation);
    let msg = match (op, &e.kind) {
        (Some(PatchOperation::Test(_)), _) | (_, PatchErrorKind::TestFailed) => {
            return PatchError::TestFailed(format!("testing value {path} failed: test failed"));
        }
        (Some(PatchOperation::Add(_)), _) => {
            format!("add operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        (Some(PatchOperation::Remove(_)), _) => {
            format!(
                "remove operation does not apply: doc is missing path: \"{path}\": missing value"
            )
        }
        (Some(PatchOperation::Replace(_)), _) => {
            format!("replace operation does not apply: doc is missing key: {path}: missing value")
        }
        (Some(PatchOperation::Move(m)), PatchErrorKind::InvalidFromPointer) => format!(
            "move operation does not apply: doc is missing from path: {}: missing value",
            m.from
        ),
        (Some(PatchOperation::Copy(c)), PatchErrorKind::InvalidFromPointer) => format!(
            "copy operation does not apply: doc is missing from path: {}: missing value",
            c.from
        ),
        _ => e.to_string(),
    };
    PatchError::Unprocessable(msg)
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The precondition a patched object carries: a `metadata.resourceVersion` the patch
/// set to something other than the live object's is a 409 conflict. Call it with the
/// live object and the patch result.
pub fn check_resource_version(live: &Value, patched: &Value) -> Result<(), PatchError> {
    let rv = |v: &Value| {
        v.get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (expected, actual) = (rv(patched), rv(live));
    if expected.is_empty() || expected == actual {
        Ok(())
    } else {
        Err(PatchError::Conflict { expected, actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": null, "y": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"y": 1}})
        );
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
        let mut obj = json!({"a": 1});
        merge_patch(&mut obj, &json!([1]));
        assert_eq!(obj, json!([1]));
    }

    #[test]
    fn json_patch_ops_and_atomicity() {
        let mut doc =
            json!({"spec": {"replicas": 1, "list": ["a"]}, "metadata": {"labels": {"a/b": "1"}}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/list/-", "value": "b"},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
            ]),
        )
        .expect("must succeed");
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 3, "list": ["a", "b"]}, "metadata": {"labels": {}}})
        );

        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 9},
                {"op": "test", "path": "/spec/replicas", "value": 1},
            ]),
        )
        .expect_err("must fail");
        assert!(matches!(err, PatchError::TestFailed(_)), "{err:?}");
        assert_eq!(err.status_code(), 422);
        assert_eq!(doc, before, "a failed patch leaves the document unchanged");
    }

    #[test]
    fn json_patch_test_of_a_missing_path_against_null_succeeds() {
        // What kube-runtime's finalizer helper sends for an object without finalizers.
        let mut doc = json!({"metadata": {"name": "a"}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
            ]),
        )
        .expect("a missing path tests equal to null");
        assert_eq!(doc, json!({"metadata": {"name": "a", "finalizers": ["x"]}}));
        // Now the path exists: the same test fails and nothing changes.
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["y"]},
            ]),
        )
        .expect_err("an existing value is not null");
        assert!(matches!(err, PatchError::TestFailed(_)), "{err:?}");
        assert_eq!(doc, before);
    }

    #[test]
    fn json_patch_errors() {
        let mut doc = json!({"spec": {}});
        let err = json_patch(&mut doc, &json!({"op": "add"})).expect_err("must fail");
        assert_eq!(err.status_code(), 400);
        let err = json_patch(
            &mut doc,
            &json!([{"op": "remove", "path": "/spec/missing"}]),
        )
        .expect_err("must fail");
        assert_eq!(err.status_code(), 422);
        assert!(err.to_string().contains("/spec/missing"), "{err}");
        let err = json_patch(&mut doc, &json!([{"op": "frobnicate", "path": "/x"}]))
            .expect_err("must fail");
        assert_eq!(err.to_string(), "Unexpected kind: frobnicate");
        let err = json_patch(
            &mut doc,
            &json!([{"op": "add", "path": "/a/b/c", "value": 1}]),
        )
        .expect_err("must fail");
        assert!(matches!(err, PatchError::Unprocessable(_)));
        let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/spec", "value": {}}))
            .collect();
        let err = json_patch(&mut doc, &Value::Array(many)).expect_err("must fail");
        assert_eq!(err.status_code(), 413);
    }

    #[test]
    fn resource_version_precondition() {
        let live = json!({"metadata": {"resourceVersion": "5"}});
        assert!(check_resource_version(&live, &json!({"metadata": {}})).is_ok());
        assert!(
            check_resource_version(&live, &json!({"metadata": {"resourceVersion": "5"}})).is_ok()
        );
        let err = check_resource_version(&live, &json!({"metadata": {"resourceVersion": "4"}}))
            .expect_err("must fail");
        assert_eq!(err.status_code(), 409);
        assert_eq!(err.reason(), "Conflict");
    }
}
