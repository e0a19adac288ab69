//! The HTTP surface as a raw client sees it: authentication, error Status bodies,
//! body limits, discovery, dry-run, the lab control API and the aggregation proxy.

mod common;

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use lab_apiserver::{ApiServer, ApiServerConfig, FaultSpec, RequestCounters};
use serde_json::{Value, json};

struct Raw {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

impl Raw {
    fn new(server: &ApiServer, token: Option<String>) -> Self {
        Self {
            base: server.url(),
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, http::HeaderMap, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Body::from(body)).expect("request");
        let resp = common::within(self.client.request(req))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let bytes = common::within(body.collect())
            .await
            .expect("body")
            .to_bytes();
        (parts.status, parts.headers, bytes.to_vec())
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, _, b) = self.send(method, path, "application/json", bytes).await;
        (
            status.as_u16(),
            serde_json::from_slice(&b).unwrap_or(Value::Null),
        )
    }
}

fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
}

#[tokio::test]
async fn authentication_and_health() {
    let server = common::start().await;
    let anon = Raw::new(&server, None);
    for path in ["/healthz", "/readyz", "/livez", "/version"] {
        let (s, _, _) = anon
            .send(Method::GET, path, "application/json", Vec::new())
            .await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let (code, v) = anon
        .json(Method::GET, "/api/v1/namespaces", Value::Null)
        .await;
    assert_eq!(code, 401);
    assert_status(&v, 401, "Unauthorized");
    let bad = Raw::new(&server, Some("wrong".into()));
    assert_eq!(bad.json(Method::GET, "/api", Value::Null).await.0, 401);
    server.add_token("alice-token", "alice", &["devs"]);
    let alice = Raw::new(&server, Some("alice-token".into()));
    assert_eq!(
        alice
            .json(Method::GET, "/api/v1/namespaces", Value::Null)
            .await
            .0,
        200
    );
    let (code, _) = alice.json(Method::GET, "/lab/counters", Value::Null).await;
    assert_eq!(code, 403, "the lab API needs the admin token");
    let (_, v) = anon.json(Method::GET, "/version", Value::Null).await;
    assert_eq!(v["gitVersion"], "v1.33.0");
    assert_eq!(server.counters().count_by("list", "namespaces", "alice"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn error_statuses_match_kube_apiserver() {
    let server = common::start_with(ApiServerConfig {
        max_body_bytes: 64 * 1024,
        ..ApiServerConfig::default()
    })
    .await;
    let raw = Raw::new(&server, Some(server.admin_token()));
    let (code, v) = raw.json(Method::GET, "/api/v1/widgets", Value::Null).await;
    assert_eq!(code, 404);
    assert_status(&v, 404, "NotFound");
    assert_eq!(
        v["message"],
        "the server could not find the requested resource"
    );

    let (code, v) = raw
        .json(
            Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/x",
            Value::Null,
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(v["message"], "deployments.apps \"x\" not found");
    assert_eq!(
        v["details"],
        json!({"name": "x", "group": "apps", "kind": "deployments"})
    );

    let (s, _, b) = raw
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_status(
        &serde_json::from_slice(&b).expect("status"),
        400,
        "BadRequest",
    );

    let big = json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(100 * 1024)}});
    let (code, v) = raw
        .json(Method::POST, "/api/v1/namespaces/default/configmaps", big)
        .await;
    assert_eq!(code, 413);
    assert_status(&v, 413, "RequestEntityTooLarge");

    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}});
    let (code, v) = raw
        .json(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            wrong_kind,
        )
        .await;
    assert_eq!(code, 400, "{v}");

    let (code, _) = raw
        .json(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, v) = raw
        .json(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/a",
            json!({"metadata": {"name": "b"}}),
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        v["message"],
        "the name of the object (b) does not match the name on the URL (a)"
    );

    let (s, _, b) = raw
        .send(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/a",
            "text/plain",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_status(
        &serde_json::from_slice(&b).expect("status"),
        415,
        "UnsupportedMediaType",
    );

    let (code, v) = raw
        .json(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_eq!(code, 405);
    assert_status(&v, 405, "MethodNotAllowed");
    // Preconditions on delete.
    let (code, v) = raw
        .json(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/a",
            json!({"preconditions": {"uid": "nope"}}),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    // Dry run persists nothing.
    let (code, _) = raw
        .json(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            json!({"metadata": {"name": "dry"}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, _) = raw
        .json(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/dry",
            Value::Null,
        )
        .await;
    assert_eq!(code, 404);
    let (code, v) = raw
        .json(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/a",
            Value::Null,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(v["status"], "Success");
    server.shutdown().await;
}

#[tokio::test]
async fn discovery_documents() {
    let server = common::start().await;
    let raw = Raw::new(&server, Some(server.admin_token()));
    let (_, v) = raw.json(Method::GET, "/api", Value::Null).await;
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = raw.json(Method::GET, "/api/v1", Value::Null).await;
    let pods = v["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "pods"))
        .expect("pods");
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    assert!(
        v["resources"]
            .as_array()
            .expect("list")
            .iter()
            .any(|r| r["name"] == "pods/status")
    );
    let (_, v) = raw.json(Method::GET, "/apis", Value::Null).await;
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    for g in [
        "apps",
        "storage.k8s.io",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
    ] {
        assert!(groups.contains(&g), "{g}");
    }
    let mut req = Request::builder()
        .uri(format!("{}/apis", server.url()))
        .header("authorization", format!("Bearer {}", server.admin_token()))
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        );
    req = req.header("x-test", "1");
    let resp = raw
        .client
        .request(req.body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    server.shutdown().await;
}

#[tokio::test]
async fn lab_api_controls_faults_and_counters() {
    let server = common::start().await;
    let raw = Raw::new(&server, Some(server.admin_token()));
    raw.json(
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        Value::Null,
    )
    .await;
    let (code, v) = raw.json(Method::GET, "/lab/counters", Value::Null).await;
    assert_eq!(code, 200);
    let counters: RequestCounters = serde_json::from_value(v).expect("counters");
    assert_eq!(counters.count("list", "configmaps"), 1);
    let spec = FaultSpec {
        error_rates: vec![lab_apiserver::ErrorRate {
            resource: "configmaps".into(),
            rate: 1.0,
            code: 500,
        }],
        ..FaultSpec::default()
    };
    let (code, _) = raw
        .json(
            Method::POST,
            "/lab/faults",
            serde_json::to_value(&spec).expect("spec"),
        )
        .await;
    assert_eq!(code, 200);
    let (code, v) = raw
        .json(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            Value::Null,
        )
        .await;
    assert_eq!(code, 500);
    assert_status(&v, 500, "InternalError");
    raw.json(
        Method::POST,
        "/lab/faults",
        json!({"clear": true, "latencyMs": 50}),
    )
    .await;
    let t = std::time::Instant::now();
    let (code, _) = raw
        .json(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            Value::Null,
        )
        .await;
    assert_eq!(code, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    raw.json(
        Method::POST,
        "/lab/faults",
        json!({"clear": true, "outageMs": 60000}),
    )
    .await;
    let (code, _) = raw
        .json(Method::GET, "/api/v1/namespaces", Value::Null)
        .await;
    assert_eq!(code, 503);
    raw.json(Method::POST, "/lab/faults", json!({"clear": true}))
        .await;
    assert_eq!(
        raw.json(Method::GET, "/api/v1/namespaces", Value::Null)
            .await
            .0,
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn aggregated_api_is_proxied_and_discovered() {
    let backend = axum::Router::new().fallback(|req: Request<Body>| async move {
        let user = req
            .headers()
            .get("x-remote-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        axum::Json(
            json!({"method": req.method().as_str(), "path": req.uri().to_string(), "user": user}),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, backend).await;
    });
    let server = common::start().await;
    let resource: APIResource = serde_json::from_value(json!({
        "name": "virtualmachines/addvolume", "singularName": "", "namespaced": true, "kind": "VirtualMachine", "verbs": ["update"]
    }))
    .expect("resource");
    server.register_aggregated_api(
        "subresources.kubevirt.io",
        "v1",
        &format!("http://{addr}"),
        vec![resource],
    );
    let raw = Raw::new(&server, Some(server.admin_token()));
    let (code, v) = raw
        .json(
            Method::PUT,
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/addvolume?x=1",
            json!({"name": "d"}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(v["method"], "PUT");
    assert_eq!(
        v["path"],
        "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/addvolume?x=1"
    );
    assert_eq!(v["user"], "admin");
    let (_, v) = raw
        .json(
            Method::GET,
            "/apis/subresources.kubevirt.io/v1",
            Value::Null,
        )
        .await;
    assert_eq!(v["resources"][0]["name"], "virtualmachines/addvolume");
    let (_, v) = raw.json(Method::GET, "/apis", Value::Null).await;
    assert!(
        v["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "subresources.kubevirt.io")
    );
    server.shutdown().await;
    task.abort();
}
