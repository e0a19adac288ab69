//! `resolve_node_id` against a minimal fake Kubernetes API (list + watch of
//! Nodes, as kube's watcher issues them): it waits for the Node to appear
//! and to name its infra VM, and reports precisely what is missing when the
//! timeout runs out.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use kubevirt_csi_driver::node::{NodeIdError, resolve_node_id};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio_stream::wrappers::BroadcastStream;

/// The fake API server's state: Nodes for LIST, a feed for WATCH.
#[derive(Clone)]
struct FakeApi {
    nodes: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<String>,
    watching: Arc<Notify>,
}

impl FakeApi {
    fn new(nodes: Vec<Value>) -> Self {
        Self {
            nodes: Arc::new(Mutex::new(nodes)),
            events: broadcast::channel(16).0,
            watching: Arc::new(Notify::new()),
        }
    }

    fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.respond(&req)) }
        });
        kube::Client::new(service, "default")
    }

    fn respond(&self, req: &Request<kube::client::Body>) -> Response<BoxBody<Bytes, Infallible>> {
        let query = req.uri().query().unwrap_or_default();
        assert!(
            req.uri().path() == "/api/v1/nodes",
            "unexpected path {}",
            req.uri()
        );
        assert!(
            query.contains("fieldSelector=metadata.name%3Dworker-1"),
            "unexpected query {query}"
        );
        if query.contains("watch=true") {
            let lines =
                BroadcastStream::new(self.events.subscribe()).filter_map(|line| async move {
                    line.ok().map(|l| Ok(Frame::data(Bytes::from(l + "\n"))))
                });
            self.watching.notify_one();
            return Response::new(BoxBody::new(StreamBody::new(lines)));
        }
        let items = self.nodes.lock().expect("lock").clone();
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": items});
        Response::new(Full::new(Bytes::from(list.to_string())).boxed())
    }

    fn send(&self, kind: &str, node: Value) {
        let event = json!({"type": kind, "object": node});
        self.events
            .send(event.to_string())
            .expect("a watcher is listening");
    }
}

fn node(rv: &str, provider_id: Option<&str>, annotations: Value) -> Value {
    let mut spec = json!({});
    if let Some(id) = provider_id {
        spec["providerID"] = json!(id);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "worker-1", "resourceVersion": rv, "annotations": annotations},
        "spec": spec,
    })
}

#[tokio::test]
async fn waits_for_the_node_to_name_its_vm() {
    let api = FakeApi::new(Vec::new());
    let resolve = tokio::spawn(resolve_node_id(
        api.client(),
        "worker-1",
        Duration::from_secs(20),
    ));

    tokio::time::timeout(Duration::from_secs(10), api.watching.notified())
        .await
        .expect("watch started");
    // First the Node registers without its providerID, then the CCM sets it.
    api.send(
        "ADDED",
        node(
            "2",
            None,
            json!({"cluster.x-k8s.io/cluster-namespace": "clusters-a"}),
        ),
    );
    api.send(
        "MODIFIED",
        node(
            "3",
            Some("kubevirt://worker-1-vm"),
            json!({"cluster.x-k8s.io/cluster-namespace": "clusters-a"}),
        ),
    );
    let id = tokio::time::timeout(Duration::from_secs(10), resolve)
        .await
        .expect("resolved in time");
    assert_eq!(
        id.expect("join").expect("node id"),
        "clusters-a/worker-1-vm"
    );
}

#[tokio::test]
async fn existing_node_with_infra_vm_annotations() {
    let api = FakeApi::new(vec![node(
        "1",
        None,
        json!({"csi.kubevirt.io/infra-vm-name": "vm-7", "csi.kubevirt.io/infra-vm-namespace": "infra"}),
    )]);
    let id = resolve_node_id(api.client(), "worker-1", Duration::from_secs(10))
        .await
        .expect("node id");
    assert_eq!(id, "infra/vm-7");
}

#[tokio::test]
async fn timeout_names_what_is_missing() {
    let api = FakeApi::new(vec![node("1", Some("kubevirt://vm-1"), json!({}))]);
    let err = resolve_node_id(api.client(), "worker-1", Duration::from_millis(500))
        .await
        .expect_err("incomplete node");
    assert!(matches!(err, NodeIdError::Incomplete { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("annotation cluster.x-k8s.io/cluster-namespace is missing"),
        "{msg}"
    );
    assert!(msg.contains("worker-1"), "{msg}");
}

#[tokio::test]
async fn a_node_that_never_appears_times_out() {
    let api = FakeApi::new(Vec::new());
    let err = resolve_node_id(api.client(), "worker-1", Duration::from_millis(300))
        .await
        .expect_err("no node");
    assert!(matches!(err, NodeIdError::NodeNotFound { .. }), "{err:?}");
}
