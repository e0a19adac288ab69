//! Building HTTP responses: JSON bodies, `metav1.Status` errors, list documents
//! assembled from pre-serialized objects, and what the client's `Accept` allows.

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::error::ApiError;
use crate::ops::Target;
use crate::ops::list::Page;
use crate::store::{Obj, serialize};

pub fn bytes(code: u16, content_type: &'static str, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json_bytes(code: u16, body: Bytes) -> Response {
    bytes(code, "application/json", body)
}

pub fn json(code: u16, v: &Value) -> Response {
    json_bytes(code, serialize(v))
}

pub fn error(e: &ApiError) -> Response {
    let mut r = json(e.code, &e.to_status());
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// An object as the client asked for it: full, or just its metadata.
pub fn render(t: &Target, obj: &Obj, format: Format) -> Bytes {
    match format {
        Format::Metadata => serialize(&partial(obj)),
        Format::Json | Format::Table => t.render(obj),
    }
}

/// The `meta.k8s.io/v1` PartialObjectMetadata of an object.
pub fn partial(obj: &Obj) -> Value {
    serde_json::json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.value.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

pub fn object(code: u16, t: &Target, obj: &Obj, format: Format) -> Response {
    json_bytes(code, render(t, obj, format))
}

/// A `<Kind>List` document from a page of stored objects.
pub fn list_body(t: &Target, page: &Page, format: Format) -> Bytes {
    let def = &t.def;
    let (api_version, kind) = match format {
        Format::Metadata => (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        ),
        Format::Json | Format::Table => (t.api_version(), format!("{}List", def.kind)),
    };
    let mut meta = serde_json::Map::new();
    meta.insert("resourceVersion".into(), Value::from(page.rv.to_string()));
    if let Some(c) = &page.continue_token {
        meta.insert("continue".into(), Value::from(c.clone()));
    }
    if let Some(n) = page.remaining {
        meta.insert("remainingItemCount".into(), Value::from(n));
    }
    let head = format!(
        "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{},\"items\":[",
        Value::from(api_version.as_str()),
        Value::from(kind),
        Value::Object(meta)
    );
    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = BytesMut::with_capacity(head.len() + size + 2);
    out.put_slice(head.as_bytes());
    for (i, obj) in page.items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&render(t, obj, format));
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// What the client accepts for an object or list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Table,
    /// `meta.k8s.io/v1` PartialObjectMetadata(List).
    Metadata,
}

/// Reads `Accept`: a `as=Table` entry wins, then JSON (or anything); protobuf- or
/// YAML-only clients get `406`.
pub fn negotiate(accept: Option<&str>) -> Result<Format, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    let mut json = false;
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let is_table = params.clone().any(|p| p == "as=Table");
        let is_metadata = params
            .clone()
            .any(|p| p == "as=PartialObjectMetadata" || p == "as=PartialObjectMetadataList");
        match media {
            "application/json" if is_table => return Ok(Format::Table),
            "application/json" if is_metadata => return Ok(Format::Metadata),
            "application/json" | "*/*" | "application/*"
                if !params.any(|p| p.starts_with("as=")) =>
            {
                json = true;
            }
            _ => {}
        }
    }
    if json {
        Ok(Format::Json)
    } else {
        Err(ApiError::not_acceptable(&[
            "application/json",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert_eq!(negotiate(None), Ok(Format::Json));
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            Ok(Format::Table)
        );
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*")),
            Ok(Format::Json)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            )),
            Ok(Format::Metadata)
        );
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf")).map_err(|e| e.code),
            Err(406)
        );
    }
}
