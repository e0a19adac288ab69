//! The lab control API under `/lab/` (admin token only), for the `lab` binary and
//! benchmarks in other processes: `GET /lab/counters`, `DELETE /lab/counters`,
//! `GET|POST /lab/faults` ([`crate::FaultSpec`]), `POST /lab/tokens`
//! (`{"token","user","groups"}`).

use axum::response::Response;
use http::Method;
use serde::Deserialize;
use serde_json::json;

use super::respond;
use crate::error::ApiError;
use crate::faults::FaultSpec;
use crate::server::Shared;

#[derive(Deserialize)]
struct TokenSpec {
    token: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

pub fn handle(shared: &Shared, method: &Method, rest: &str, body: &[u8]) -> Response {
    let faults = shared.faults_handle();
    let result: Result<Response, ApiError> = match (method.as_str(), rest) {
        ("GET", "counters") => serde_json::to_value(shared.counters.snapshot())
            .map(|v| respond::json(200, &v))
            .map_err(|e| ApiError::internal(e.to_string())),
        ("DELETE", "counters") => {
            shared.counters.reset();
            Ok(respond::json(200, &json!({})))
        }
        ("GET", "faults") => serde_json::to_value(faults.current())
            .map(|v| respond::json(200, &v))
            .map_err(|e| ApiError::internal(e.to_string())),
        ("POST" | "PUT", "faults") => serde_json::from_slice::<FaultSpec>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid fault spec: {e}")))
            .and_then(|spec| {
                faults.apply(&spec);
                serde_json::to_value(faults.current())
                    .map(|v| respond::json(200, &v))
                    .map_err(|e| ApiError::internal(e.to_string()))
            }),
        ("POST", "tokens") => serde_json::from_slice::<TokenSpec>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid token spec: {e}")))
            .map(|t| {
                let groups: Vec<&str> = t.groups.iter().map(String::as_str).collect();
                shared.auth.add(&t.token, &t.user, &groups);
                respond::json(201, &json!({"user": t.user}))
            }),
        _ => Err(ApiError::resource_not_found()),
    };
    result.unwrap_or_else(|e| respond::error(&e))
}
