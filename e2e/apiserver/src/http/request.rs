//! Reading a request: query parameters, bodies by content type, patch kinds,
//! selectors checked against what the resource supports, write and delete options,
//! and the verb and resource name a request is counted under.

use http::{HeaderMap, Method, header};
use serde_json::Value;

use super::route::ResourcePath;
use crate::error::{ApiError, ApiResult};
use crate::machinery::selector::{FieldSelector, LabelSelector};
use crate::ops::delete::{DeleteOpts, Propagation};
use crate::ops::{PatchKind, WriteOpts};

pub type Query = Vec<(String, String)>;

pub fn q<'a>(query: &'a Query, key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn q_bool(query: &Query, key: &str) -> bool {
    matches!(q(query, key), Some("true" | "1"))
}

pub fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn decode_object(content_type: Option<&str>, body: &[u8]) -> ApiResult<Value> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("application/json");
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}"))),
        other => Err(ApiError::unsupported_media_type(
            other,
            &["application/json", "application/yaml"],
        )),
    }
}

pub fn patch_kind(content_type: Option<&str>, custom: bool) -> ApiResult<PatchKind> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    match media {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
        other => {
            let mut accepted = vec![
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ];
            if !custom {
                accepted.push("application/strategic-merge-patch+json");
            }
            Err(ApiError::unsupported_media_type(other, &accepted))
        }
    }
}

pub fn selectors(
    query: &Query,
    def: &crate::resources::ResourceDef,
) -> ApiResult<(Option<LabelSelector>, Option<FieldSelector>)> {
    let labels = match q(query, "labelSelector").filter(|s| !s.is_empty()) {
        Some(s) => Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?),
        None => None,
    };
    let fields = match q(query, "fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => {
            let f = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if let Some(bad) = f.fields().into_iter().find(|f| !def.supports_field(f)) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {bad}"
                )));
            }
            Some(f)
        }
        None => None,
    };
    Ok((labels, fields))
}

pub fn write_opts(query: &Query, headers: &HeaderMap, default_manager: bool) -> WriteOpts {
    let manager = q(query, "fieldManager")
        .map(str::to_string)
        .unwrap_or_else(|| {
            if default_manager {
                header_str(headers, header::USER_AGENT)
                    .and_then(|ua| ua.split('/').next())
                    .unwrap_or("unknown")
                    .to_string()
            } else {
                String::new()
            }
        });
    WriteOpts {
        dry_run: q(query, "dryRun") == Some("All"),
        manager,
        force: q_bool(query, "force"),
    }
}

pub fn delete_opts(query: &Query, body: &[u8]) -> ApiResult<DeleteOpts> {
    let mut o = DeleteOpts {
        dry_run: q(query, "dryRun") == Some("All"),
        ..DeleteOpts::default()
    };
    if let Some(p) = q(query, "propagationPolicy") {
        o.propagation = Some(Propagation::parse(p)?);
    } else if let Some(orphan) = q(query, "orphanDependents") {
        o.propagation = Some(if orphan == "true" {
            Propagation::Orphan
        } else {
            Propagation::Background
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(o);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't decode DeleteOptions: {e}")))?;
    o.merge_body(&v)
}

/// The verb a request counts as.
pub fn verb_for(method: &Method, p: &ResourcePath, watch: bool) -> &'static str {
    match (method.as_str(), p.name.is_some()) {
        ("GET", _) if watch || p.watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

pub fn counter_resource(plural: &str, sub: Option<&str>) -> String {
    match sub {
        Some(s) => format!("{plural}/{s}"),
        None => plural.to_string(),
    }
}
