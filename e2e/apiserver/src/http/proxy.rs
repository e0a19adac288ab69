//! The aggregation proxy: requests under an aggregated `/apis/{group}/{version}` are
//! forwarded (method, path, query, headers, body, streamed both ways) to the
//! registered backend, with the caller's identity in `X-Remote-User`/`X-Remote-Group`
//! as kube-aggregator sends it.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::User;
use crate::error::ApiError;

pub type ProxyClient = Client<HttpConnector, Body>;

pub fn client() -> ProxyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Forwards `req` to `base_url` + the same path and query.
pub async fn forward(
    client: &ProxyClient,
    base_url: &str,
    req: Request<Body>,
    user: &User,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri: Uri = format!("{}{pq}", base_url.trim_end_matches('/'))
        .parse()
        .map_err(|e| ApiError::unavailable(format!("invalid aggregated API URL: {e}")))?;
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    parts.headers.remove(http::header::AUTHORIZATION);
    if let Ok(v) = HeaderValue::from_str(&user.name) {
        parts.headers.insert("x-remote-user", v);
    }
    for g in &user.groups {
        if let Ok(v) = HeaderValue::from_str(g) {
            parts.headers.append("x-remote-group", v);
        }
    }
    let resp = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ApiError::unavailable(format!("error trying to reach service: {e}")))?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}
