//! A Python `grpcio` client (gRPC C-core, from PyPI) calls the driver binary
//! over its unix socket, as Python tools and other gRPC C-core based clients
//! do. Such clients send the socket path as HTTP/2 `:authority`
//! (percent-encoded or raw), which the HTTP/2 layer under tonic refuses by
//! itself; see `src/authority.rs`.
//!
//! The driver runs as a node plugin only, with its tenant cluster a minimal
//! fake Kubernetes API that lists the one Node it needs. The Python
//! interpreter is `$CSI_TEST_PYTHON` (scripts/test.sh installs grpcio into a
//! venv and sets it), else `python3`; without grpcio the test fails saying
//! how to get it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kubevirt_csi_proto::v1::{GetPluginInfoResponse, ProbeResponse};
use prost::Message as _;
use serde_json::{Value, json};

/// The client side: every call on a fresh channel per target form, twice
/// each so that later requests reuse the client's HPACK dynamic table.
/// Prints one JSON line per call.
const CLIENT: &str = r#"
import json, sys
import grpc

sock = sys.argv[1]
for target in ("unix://" + sock, "unix:" + sock):
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        for method in ["/csi.v1.Identity/GetPluginInfo", "/csi.v1.Identity/Probe",
                       "/csi.v1.Node/NodeGetVolumeStats"] * 2:
            call = channel.unary_unary(method)
            line = {"target": target, "method": method}
            try:
                line["response"] = call(b"", timeout=30).hex()
            except grpc.RpcError as e:
                line["code"] = e.code().name
                line["details"] = e.details()
            print(json.dumps(line), flush=True)
"#;

/// `$CSI_TEST_PYTHON` or `python3`, checked to have grpcio.
fn python() -> String {
    let python = std::env::var("CSI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let version = Command::new(&python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output();
    match version {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "grpcio is not available to {python}: run scripts/test.sh, which installs it from \
             PyPI into target/python-clients, or set CSI_TEST_PYTHON to a Python that has it \
             (python3 -m venv target/python-clients && target/python-clients/bin/pip install grpcio)"
        ),
    }
}

/// A fake tenant API server on loopback: lists one Node whose infra VM is
/// `clusters-a/worker-1-vm`; a watch gets an empty stream.
async fn fake_api() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake API");
    let addr = listener.local_addr().expect("fake API address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let query = req.uri().query().unwrap_or_default();
                let body = if req.uri().path() != "/api/v1/nodes" {
                    return Ok::<_, Infallible>(
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new()))
                            .expect("response"),
                    );
                } else if query.contains("watch=true") {
                    String::new()
                } else {
                    json!({
                        "apiVersion": "v1", "kind": "NodeList",
                        "metadata": {"resourceVersion": "1"},
                        "items": [{
                            "apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": "worker-1", "resourceVersion": "1",
                                "annotations": {"cluster.x-k8s.io/cluster-namespace": "clusters-a"}},
                            "spec": {"providerID": "kubevirt://worker-1-vm"},
                        }],
                    })
                    .to_string()
                };
                Ok(Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("response"))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The driver binary; killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver(dir: &Path, api: std::net::SocketAddr) -> (Driver, PathBuf) {
    let kubeconfig = dir.join("tenant.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: tenant, cluster: {{server: \"http://{api}\"}}}}]\n\
             users: [{{name: tenant, user: {{}}}}]\n\
             contexts: [{{name: tenant, context: {{cluster: tenant, user: tenant}}}}]\n\
             current-context: tenant\n"
        ),
    )
    .expect("write kubeconfig");
    for sub in ["dev", "sys"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create dir");
    }
    let sock = dir.join("csi.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_kubevirt-csi-driver"))
        .arg(format!("--endpoint=unix://{}", sock.display()))
        .args(["--run-controller-service=false", "--node-name=worker-1"])
        .arg(format!(
            "--tenant-cluster-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg(format!("--device-dir={}", dir.join("dev").display()))
        .arg(format!("--sysfs-dir={}", dir.join("sys").display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start the driver");
    (Driver(child), sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_over_the_unix_socket() {
    let python = python();
    let dir = tempfile::Builder::new()
        .prefix("csi-grpcio-")
        .tempdir()
        .expect("tempdir");
    let api = fake_api().await;
    let (mut driver, sock) = start_driver(dir.path(), api);

    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        if let Some(status) = driver.0.try_wait().expect("driver status") {
            panic!("the driver exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the driver did not listen in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sock_arg = sock.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(CLIENT)
            .arg(&sock_arg)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("join")
    .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Python client failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 12, "{stdout}");
    for line in &lines {
        let method = line["method"].as_str().expect("method");
        let response = || {
            hex(line["response"]
                .as_str()
                .unwrap_or_else(|| panic!("{line}")))
        };
        match method.rsplit('/').next() {
            Some("GetPluginInfo") => {
                let info = GetPluginInfoResponse::decode(response().as_slice()).expect("decode");
                assert_eq!(info.name, "csi.kubevirt.io", "{line}");
                assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"), "{line}");
            }
            Some("Probe") => {
                let probe = ProbeResponse::decode(response().as_slice()).expect("decode");
                assert_eq!(probe.ready, Some(true), "{line}");
            }
            _ => {
                assert_eq!(line["code"], "INVALID_ARGUMENT", "{line}");
                assert!(
                    line["details"]
                        .as_str()
                        .is_some_and(|d| d.contains("volume_id")),
                    "{line}"
                );
            }
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
