//! The HTTP edge: one handler that authenticates, applies faults, counts, routes and
//! dispatches each request to discovery, the lab API, the aggregation proxy or a REST
//! verb, and maps every failure to a `metav1.Status` response.

pub mod discovery;
pub mod lab;
pub mod openapi;
pub mod proxy;
mod request;
mod resource;
pub mod respond;
pub mod route;
pub mod table;
pub mod watch;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{Request, header};

use crate::error::{ApiError, ApiResult};
use crate::server::Shared;
use request::header_str;
use route::Route;

/// Entry point for every request.
pub async fn handle(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let route = route::parse(req.uri().path());
    match route {
        Route::Healthz => {
            return if shared.faults.in_outage() {
                respond::bytes(
                    503,
                    "text/plain; charset=utf-8",
                    Bytes::from_static(b"outage"),
                )
            } else {
                respond::bytes(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok"))
            };
        }
        Route::Version => return respond::json(200, &discovery::version()),
        _ => {}
    }
    let Some(user) = shared
        .auth
        .authenticate(header_str(req.headers(), header::AUTHORIZATION))
    else {
        return respond::error(&ApiError::unauthorized());
    };
    if let Route::Lab(rest) = &route {
        if !user.is_admin() {
            return respond::error(&ApiError::forbidden(format!(
                "User \"{}\" cannot use the lab API",
                user.name
            )));
        }
        let method = req.method().clone();
        return match read_body(&shared, req.into_body(), None).await {
            Ok(body) => lab::handle(&shared, &method, rest, &body),
            Err(e) => respond::error(&e),
        };
    }
    if shared.faults.in_outage() {
        return respond::error(&ApiError::unavailable(
            "the server is currently unable to handle the request",
        ));
    }
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let accept = header_str(req.headers(), header::ACCEPT).map(str::to_string);
    let result = match route {
        Route::OpenApiV2 => Err(ApiError::resource_not_found()),
        Route::OpenApiV3 => {
            let path = req.uri().path().trim_end_matches('/');
            let st = shared.lock();
            match path.strip_prefix("/openapi/v3") {
                Some("") => Ok(respond::json(200, &openapi::root(&st.store.registry))),
                Some(rest) => openapi::group_version_doc(&st.store.registry, rest)
                    .map(|d| respond::json(200, &d))
                    .ok_or_else(ApiError::resource_not_found),
                None => Err(ApiError::resource_not_found()),
            }
        }
        Route::CoreVersions => Ok(if discovery::wants_v2(accept.as_deref()) {
            let doc = {
                let st = shared.lock();
                discovery::v2(&st.store.registry, &[], true)
            };
            respond::bytes(
                200,
                discovery::V2_CONTENT_TYPE,
                crate::store::serialize(&doc),
            )
        } else {
            respond::json(200, &discovery::core_versions(&shared.addr))
        }),
        Route::Groups => {
            let agg = shared.aggregated();
            let st = shared.lock();
            Ok(if discovery::wants_v2(accept.as_deref()) {
                let doc = discovery::v2(&st.store.registry, &agg, false);
                respond::bytes(
                    200,
                    discovery::V2_CONTENT_TYPE,
                    crate::store::serialize(&doc),
                )
            } else {
                respond::json(200, &discovery::groups(&st.store.registry, &agg))
            })
        }
        Route::Group(g) => {
            let agg = shared.aggregated();
            let st = shared.lock();
            discovery::group(&st.store.registry, &agg, &g)
                .map(|d| respond::json(200, &d))
                .ok_or_else(ApiError::resource_not_found)
        }
        Route::ResourceList(g, v) => {
            let agg = shared.aggregated();
            let st = shared.lock();
            discovery::resource_list(&st.store.registry, &agg, &g, &v)
                .map(|d| respond::json(200, &d))
                .ok_or_else(ApiError::resource_not_found)
        }
        Route::Resource(p) => resource::resource(&shared, &user, req, p, accept.as_deref()).await,
        Route::NotFound | Route::Healthz | Route::Version | Route::Lab(_) => {
            Err(ApiError::resource_not_found())
        }
    };
    result.unwrap_or_else(|e| respond::error(&e))
}

/// Reads a request body up to the configured limit.
async fn read_body(shared: &Shared, body: Body, length: Option<u64>) -> ApiResult<Bytes> {
    let limit = shared.cfg.max_body_bytes;
    if length.is_some_and(|l| l > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}
