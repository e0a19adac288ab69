//! Requests on resource paths: resolving the resource, counting, faults and
//! authorization, then each REST verb (and the scale and action subresources) over
//! the store, answered in the format the client accepts.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, header};
use serde_json::{Value, json};

use super::request::{
    Query, counter_resource, decode_object, delete_opts, header_str, patch_kind, q, q_bool,
    selectors, verb_for, write_opts,
};
use super::respond::{self, Format};
use super::route::ResourcePath;
use super::{proxy, read_body, table, watch};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::machinery::selector::FieldSelector;
use crate::ops::list::ListOpts;
use crate::ops::{self, PatchKind, Sub, Target, WriteOpts};
use crate::resources::View;
use crate::server::Shared;

/// A request on a resource path.
pub async fn resource(
    shared: &Arc<Shared>,
    user: &User,
    req: Request<Body>,
    p: ResourcePath,
    accept: Option<&str>,
) -> ApiResult<Response> {
    if let Some(base) = shared.aggregated_base(&p.group, &p.version) {
        let verb = verb_for(req.method(), &p, false);
        let counted = counter_resource(&p.resource, p.subresource.as_deref());
        shared.counters.record(verb, &counted, &user.name);
        // Injected faults reach aggregated APIs too (e.g. KubeVirt's addvolume).
        if let Some(code) = shared.faults.injected_error(&counted) {
            return Err(ApiError::injected(code, &counted));
        }
        return proxy::forward(&shared.proxy, &base, req, user).await;
    }
    let query: Query = axum::extract::Query::<Query>::try_from_uri(req.uri())
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let (def, version, view) = {
        let st = shared.lock();
        let def = st
            .store
            .registry
            .lookup(&p.group, &p.version, &p.resource)
            .ok_or_else(ApiError::resource_not_found)?;
        match def.view {
            View::Native => (def, p.version.clone(), View::Native),
            // Another schema over core Events: work on the stored kind, render the view.
            View::EventsV1 => (
                st.store
                    .registry
                    .by_plural("", "events")
                    .ok_or_else(ApiError::resource_not_found)?,
                "v1".to_string(),
                View::EventsV1,
            ),
        }
    };
    if !def.namespaced && p.namespace.is_some() {
        return Err(ApiError::resource_not_found());
    }
    if let Some(action @ ("binding" | "eviction" | "finalize" | "token")) = p.subresource.as_deref()
    {
        return action_subresource(shared, user, req, &def, &p, action).await;
    }
    let sub = match p.subresource.as_deref() {
        None => Sub::Main,
        Some("status") if def.status => Sub::Status,
        Some("scale") if def.scale => Sub::Scale,
        Some(_) => return Err(ApiError::resource_not_found()),
    };
    let is_watch = p.watch || q_bool(&query, "watch");
    let method = req.method().clone();
    let verb = verb_for(&method, &p, is_watch);
    let counted = counter_resource(&def.plural, p.subresource.as_deref());
    shared.counters.record(verb, &counted, &user.name);
    if !shared
        .authz
        .allows(user, verb, &counted, p.namespace.as_deref())
    {
        return Err(ApiError::forbidden(format!(
            "User \"{}\" cannot {verb} resource \"{counted}\"",
            user.name
        )));
    }
    if let Some(code) = shared.faults.injected_error(&counted) {
        return Err(ApiError::injected(code, &counted));
    }
    if p.name.is_none() && sub != Sub::Main {
        return Err(ApiError::resource_not_found());
    }
    let allowed = match verb {
        "update" | "patch" => p.name.is_some(),
        "create" => p.name.is_none(),
        "unknown" => false,
        _ => true,
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        )));
    }
    let t = Target {
        def: def.clone(),
        version,
        ns: p.namespace.clone(),
        name: p.name.clone(),
        sub,
        view,
    };
    let format = respond::negotiate(accept)?;
    let headers = req.headers().clone();
    let content_type = header_str(&headers, header::CONTENT_TYPE).map(str::to_string);
    let length = header_str(&headers, header::CONTENT_LENGTH).and_then(|l| l.parse().ok());
    match verb {
        "get" => {
            let obj = ops::get(&shared.lock(), &t)?;
            if sub == Sub::Scale {
                return Ok(respond::json(200, &ops::prepare::scale_of(&obj.value)));
            }
            if format == Format::Table {
                return Ok(respond::json(200, &table::object_table(&def, &obj, true)));
            }
            Ok(respond::object(200, &t, &obj, format))
        }
        "list" => {
            let (labels, fields) = selectors(&query, &def)?;
            let o = ListOpts {
                labels,
                fields,
                limit: q(&query, "limit").and_then(|l| l.parse().ok()),
                continue_token: q(&query, "continue").map(str::to_string),
                resource_version: q(&query, "resourceVersion").map(str::to_string),
                resource_version_match: q(&query, "resourceVersionMatch").map(str::to_string),
            };
            let ns = if def.namespaced {
                p.namespace.as_deref()
            } else {
                None
            };
            let page = ops::list::list(&mut shared.lock().store, &def.key(), ns, &o)?;
            if format == Format::Table {
                return Ok(respond::json(200, &table::list_table(&def, &page)));
            }
            Ok(respond::json_bytes(
                200,
                respond::list_body(&t, &page, format),
            ))
        }
        "watch" => {
            let (labels, fields) = selectors(&query, &def)?;
            let timeout = q(&query, "timeoutSeconds")
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or_else(|| {
                    Duration::from_secs(1800 + u64::from(rand::random::<u16>() % 1800))
                });
            let mut t = t;
            if let Some(name) = t.name.take() {
                // A watch on one object is a watch with a name field selector.
                let f = FieldSelector::parse(&format!("metadata.name={name}"))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                return watch::serve(
                    shared.clone(),
                    t,
                    watch::WatchParams {
                        labels,
                        fields: Some(f),
                        resource_version: q(&query, "resourceVersion").map(str::to_string),
                        send_initial_events: q_bool(&query, "sendInitialEvents"),
                        bookmarks: q_bool(&query, "allowWatchBookmarks"),
                        timeout,
                        format,
                    },
                );
            }
            watch::serve(
                shared.clone(),
                t,
                watch::WatchParams {
                    labels,
                    fields,
                    resource_version: q(&query, "resourceVersion").map(str::to_string),
                    send_initial_events: q_bool(&query, "sendInitialEvents"),
                    bookmarks: q_bool(&query, "allowWatchBookmarks"),
                    timeout,
                    format,
                },
            )
        }
        "create" => {
            let body = read_body(shared, req.into_body(), length).await?;
            let obj = t.internal(decode_object(content_type.as_deref(), &body)?);
            let o = write_opts(&query, &headers, true);
            let stored = ops::create(&mut shared.lock(), &t, obj, &o)?;
            Ok(respond::object(201, &t, &stored, format))
        }
        "update" => {
            let body = read_body(shared, req.into_body(), length).await?;
            let obj = t.internal(decode_object(content_type.as_deref(), &body)?);
            let o = write_opts(&query, &headers, true);
            if sub == Sub::Scale {
                return scale_update(shared, &t, &obj, &o);
            }
            let (stored, created) = ops::update(&mut shared.lock(), &t, obj, &o)?;
            Ok(respond::object(
                if created { 201 } else { 200 },
                &t,
                &stored,
                format,
            ))
        }
        "patch" => {
            let body = read_body(shared, req.into_body(), length).await?;
            let kind = patch_kind(content_type.as_deref(), def.custom)?;
            let o = write_opts(&query, &headers, kind != PatchKind::Apply);
            if sub == Sub::Scale {
                return scale_patch(shared, &t, kind, &body, &o);
            }
            let (stored, created) = ops::patch(&mut shared.lock(), &t, kind, &body, &o)?;
            Ok(respond::object(
                if created { 201 } else { 200 },
                &t,
                &stored,
                format,
            ))
        }
        "delete" => {
            let body = read_body(shared, req.into_body(), length).await?;
            let o = delete_opts(&query, &body)?;
            let ns = if def.namespaced {
                p.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            };
            let name = p.name.clone().unwrap_or_default();
            let d = ops::delete::delete(&mut shared.lock(), &def, &ns, &name, &o)?;
            if !d.removed {
                return Ok(respond::object(202, &t, &d.obj, format));
            }
            if def.return_deleted {
                return Ok(respond::object(200, &t, &d.obj, format));
            }
            let mut details = json!({"name": name, "kind": def.plural, "uid": d.obj.uid()});
            if !def.group.is_empty()
                && let Some(m) = details.as_object_mut()
            {
                m.insert("group".into(), json!(def.group));
            }
            Ok(respond::json(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        "deletecollection" => {
            let body = read_body(shared, req.into_body(), length).await?;
            let o = delete_opts(&query, &body)?;
            let (labels, fields) = selectors(&query, &def)?;
            let ns = if def.namespaced {
                p.namespace.as_deref()
            } else {
                None
            };
            let items = ops::delete::delete_collection(
                &mut shared.lock(),
                &def,
                ns,
                labels.as_ref(),
                fields.as_ref(),
                &o,
            )?;
            let rv = shared.lock().store.rv;
            let page = ops::list::Page {
                items,
                rv,
                continue_token: None,
                remaining: None,
            };
            Ok(respond::json_bytes(
                200,
                respond::list_body(&t, &page, format),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

/// POST `pods/{name}/binding|eviction`, PUT `namespaces/{name}/finalize`,
/// POST `serviceaccounts/{name}/token`.
pub async fn action_subresource(
    shared: &Arc<Shared>,
    user: &User,
    req: Request<Body>,
    def: &Arc<crate::resources::ResourceDef>,
    p: &ResourcePath,
    action: &str,
) -> ApiResult<Response> {
    let method = req.method().clone();
    let verb = if action == "finalize" {
        "update"
    } else {
        "create"
    };
    let counted = counter_resource(&def.plural, Some(action));
    shared.counters.record(verb, &counted, &user.name);
    if let Some(code) = shared.faults.injected_error(&counted) {
        return Err(ApiError::injected(code, &counted));
    }
    let expected = if action == "finalize" {
        Method::PUT
    } else {
        Method::POST
    };
    let core = |plural: &str| def.group.is_empty() && def.plural == plural;
    let applies = match action {
        "binding" | "eviction" => core("pods"),
        "finalize" => core("namespaces"),
        "token" => core("serviceaccounts"),
        _ => false,
    };
    if method != expected || !applies {
        return Err(ApiError::resource_not_found());
    }
    let name = p.name.clone().unwrap_or_default();
    let ns = p.namespace.clone().unwrap_or_default();
    let length = header_str(req.headers(), header::CONTENT_LENGTH).and_then(|l| l.parse().ok());
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_string);
    let body = read_body(shared, req.into_body(), length).await?;
    let body = decode_object(content_type.as_deref(), &body)?;
    if action == "token" {
        return issue_token(shared, def, &ns, &name, &body);
    }
    let t = Target {
        def: def.clone(),
        version: p.version.clone(),
        ns: p.namespace.clone(),
        name: p.name.clone(),
        sub: Sub::Main,
        view: View::Native,
    };
    let mut st = shared.lock();
    match action {
        "binding" => {
            ops::subresources::bind(&mut st, def, &ns, &name, &body)?;
            Ok(respond::json(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        "eviction" => {
            ops::subresources::evict(&mut st, def, &ns, &name, &body)?;
            Ok(respond::json(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        _ => {
            let obj = ops::subresources::finalize(&mut st, def, &name, &body)?;
            Ok(respond::object(200, &t, &obj, Format::Json))
        }
    }
}

/// A TokenRequest for ServiceAccount `ns/name`: a fresh bearer token,
/// authenticated from then on as `system:serviceaccount:<ns>:<name>`, valid
/// for `spec.expirationSeconds` (default one hour). The lab never expires
/// tokens; the answer carries the expiration a client must plan its
/// refresh by.
fn issue_token(
    shared: &Shared,
    def: &crate::resources::ResourceDef,
    ns: &str,
    name: &str,
    body: &Value,
) -> ApiResult<Response> {
    if shared.lock().store.get(&def.key(), ns, name).is_none() {
        return Err(ApiError::not_found("", "serviceaccounts", name));
    }
    let seconds = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_string(),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    shared.auth.add(
        &token,
        &format!("system:serviceaccount:{ns}:{name}"),
        &groups,
    );
    let now = jiff::Timestamp::now();
    let expires = now
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    if let Some(s) = spec.as_object_mut() {
        s.insert("expirationSeconds".into(), json!(seconds));
    }
    Ok(respond::json(
        201,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::meta::timestamp(now)},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": crate::meta::timestamp(expires)}
        }),
    ))
}

/// PUT on `/scale`: sets `spec.replicas` of the object.
pub fn scale_update(
    shared: &Shared,
    t: &Target,
    scale: &Value,
    o: &WriteOpts,
) -> ApiResult<Response> {
    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    let mut st = shared.lock();
    let cur = ops::get(&st, t)?;
    let rv = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut obj = cur.value_as(&t.api_version());
    if !rv.is_empty() {
        crate::meta::set(&mut obj, "resourceVersion", json!(rv));
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("replicas".into(), replicas);
    }
    let main = Target {
        sub: Sub::Main,
        ..t.clone()
    };
    let (stored, _) = ops::update(&mut st, &main, obj, o)?;
    Ok(respond::json(200, &ops::prepare::scale_of(&stored.value)))
}

/// PATCH on `/scale`: patches the Scale, then sets `spec.replicas` from it.
pub fn scale_patch(
    shared: &Shared,
    t: &Target,
    kind: PatchKind,
    body: &[u8],
    o: &WriteOpts,
) -> ApiResult<Response> {
    let cur = ops::get(&shared.lock(), t)?;
    let mut scale = ops::prepare::scale_of(&cur.value);
    let p: Value = match kind {
        PatchKind::Apply => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    match kind {
        PatchKind::Json => crate::machinery::patch::json_patch(&mut scale, &p)
            .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
        _ => crate::machinery::patch::merge_patch(&mut scale, &p),
    }
    scale_update(shared, t, &scale, o)
}
