//! Errors. [`Error`] is what starting the server can fail with; [`ApiError`] is a failed
//! API request, rendered once, at the HTTP edge, as the `metav1.Status` body and code a
//! real kube-apiserver answers with.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot mint the server's TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// One failed API request: HTTP code, `reason`, message and optional `details`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
}

/// One entry of `details.causes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `metav1.Status` JSON body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Some(map)) = (&self.details, status.as_object_mut()) {
            map.insert("details".into(), details.clone());
        }
        status
    }

    /// `404` for a path that names no known resource.
    pub fn resource_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// `404` for a missing object of `resource` (plural) in `group`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(object_details(group, resource, name))
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::not_found("", "namespaces", ns)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(object_details(group, resource, name))
    }

    /// `409` for an update against a stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict_because(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict_because(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        )
        .with_details(object_details(group, resource, name))
    }

    /// `409` for server-side apply conflicts, one cause per field: `conflicts` are
    /// (cause message, field) pairs and `message` the whole summary.
    pub fn apply_conflicts(
        def: &ResourceDef,
        name: &str,
        message: String,
        conflicts: &[(String, String)],
    ) -> Self {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(cause, field)| {
                json!({"reason": "FieldManagerConflict", "message": cause, "field": field})
            })
            .collect();
        let mut details = object_details(&def.group, &def.plural, name);
        if let Some(map) = details.as_object_mut() {
            map.insert("causes".into(), Value::Array(causes));
        }
        Self::new(409, "Conflict", message).with_details(details)
    }

    /// `422` with one cause per field error.
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let what = if listed.len() == 1 {
            listed.join("")
        } else {
            format!("[{}]", listed.join(", "))
        };
        let qualified_kind = if def.group.is_empty() {
            def.kind.clone()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        let mut details = json!({"name": name, "kind": def.kind});
        if let Some(map) = details.as_object_mut() {
            if !def.group.is_empty() {
                map.insert("group".into(), json!(def.group));
            }
            map.insert(
                "causes".into(),
                Value::Array(
                    causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field}),
                        )
                        .collect(),
                ),
            );
        }
        Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {what}"),
        )
        .with_details(details)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `403` for a create in a namespace that is being deleted.
    pub fn namespace_terminating(group: &str, resource: &str, name: &str, ns: &str) -> Self {
        let mut details = object_details(group, resource, name);
        if let Some(map) = details.as_object_mut() {
            map.insert(
                "causes".into(),
                json!([{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]),
            );
        }
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(group, resource)
            ),
        )
        .with_details(details)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
        .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": content_type}]}))
    }

    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// `410` for a watch or list from a resourceVersion the history no longer holds.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    pub fn expired_continue() -> Self {
        Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// An error with the code a fault injection asked for.
    pub fn injected(code: u16, resource: &str) -> Self {
        let message = format!("injected fault on {resource}");
        match code {
            400 => Self::bad_request(message),
            401 => Self::unauthorized(),
            403 => Self::forbidden(message),
            404 => Self::new(404, "NotFound", message),
            409 => Self::new(409, "Conflict", message),
            410 => Self::new(410, "Expired", message),
            422 => Self::new(422, "Invalid", message),
            429 => {
                let mut e = Self::new(429, "TooManyRequests", message)
                    .with_details(json!({"retryAfterSeconds": 1}));
                e.retry_after = Some(1);
                e
            }
            503 => Self::unavailable(message),
            504 => Self::new(504, "Timeout", message),
            code => Self::new(code, "InternalError", message),
        }
    }
}

/// `resource` or `resource.group`, as kube-apiserver names a resource in messages.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn object_details(group: &str, resource: &str, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource});
    if !group.is_empty()
        && let Some(map) = details.as_object_mut()
    {
        map.insert("group".into(), json!(group));
    }
    details
}
