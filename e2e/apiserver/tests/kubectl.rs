//! The real `kubectl` against the server, through a kubeconfig from `write_kubeconfig`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lab_apiserver::ApiServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(server: &ApiServer) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig, &server.admin_token(), None)
            .expect("write kubeconfig");
        Self { dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl; panics with its stderr when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(30), self.command(args).output())
            .await
            .expect("kubectl timed out")
            .expect("kubectl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&a).await).expect("json output")
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write manifest");
        p
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: nginx}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  labels: {app: web}
data: {a: "1"}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    subresources: {status: {}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_label_patch_status_and_api_resources() {
    let server = common::start().await;
    let k = Kubectl::new(&server);
    let m = k.write("m.yaml", MANIFEST);
    let out = k.run(&["apply", "-f", path_str(&m)]).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = k.run(&["apply", "-f", path_str(&m)]).await;
    assert!(out.contains("configmap/cfg unchanged"), "{out}");
    let m2 = k.write("m2.yaml", &MANIFEST.replace("a: \"1\"", "a: \"2\""));
    let out = k.run(&["apply", "-f", path_str(&m2)]).await;
    assert!(out.contains("configmap/cfg configured"), "{out}");

    let cm = k.json(&["get", "configmap", "cfg"]).await;
    assert_eq!(cm["data"]["a"], "2");
    let listed = k.json(&["get", "deploy,cm", "-l", "app=web"]).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    let out = k.run(&["get", "cm", "-l", "app=nope"]).await;
    assert!(!out.contains("cfg"));

    k.run(&[
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":2}}"#,
    ])
    .await;
    let d = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(d["metadata"]["generation"], 1);

    let gadget = k.write(
        "g.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: 3}\n",
    );
    k.run(&["apply", "-f", path_str(&gadget)]).await;
    let g = k.json(&["get", "gd", "g1"]).await;
    assert_eq!(g["spec"]["size"], 3);

    let resources = k.run(&["api-resources"]).await;
    for needle in [
        "deployments",
        "deploy",
        "persistentvolumeclaims",
        "pvc",
        "gadgets",
        "gd",
    ] {
        assert!(
            resources.split_whitespace().any(|w| w == needle),
            "{needle} missing:\n{resources}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_later_change_and_foreground_delete() {
    let server = common::start().await;
    let k = Kubectl::new(&server);
    let m = k.write("m.yaml", MANIFEST);
    k.run(&["apply", "-f", path_str(&m)]).await;

    let mut watch = k
        .command(&["get", "configmap", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let header = common::within(lines.next_line())
        .await
        .expect("read")
        .expect("line");
    assert!(header.starts_with("EVENT"), "{header}");
    let first = common::within(lines.next_line())
        .await
        .expect("read")
        .expect("line");
    assert!(
        first.starts_with("ADDED") && first.contains("cfg"),
        "{first}"
    );
    k.run(&["label", "configmap", "cfg", "changed=yes"]).await;
    let next = common::within(lines.next_line())
        .await
        .expect("read")
        .expect("line");
    assert!(
        next.starts_with("MODIFIED") && next.contains("cfg"),
        "{next}"
    );
    watch.kill().await.expect("kill watch");

    let out = k
        .run(&["delete", "deployment", "web", "--cascade=foreground"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    let out = k.run(&["get", "deployments", "-o", "name"]).await;
    assert!(!out.contains("web"), "{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_conflicts() {
    let server = common::start().await;
    let k = Kubectl::new(&server);
    let m = k.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"1\"}\n",
    );
    let out = k.run(&["apply", "--server-side", "-f", path_str(&m)]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let m2 = k.write(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"2\"}\n",
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        k.command(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            path_str(&m2),
        ])
        .output(),
    )
    .await
    .expect("timeout")
    .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conflict"), "{stderr}");
    k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        path_str(&m2),
    ])
    .await;
    let cm = k.json(&["get", "cm", "ssa", "--show-managed-fields"]).await;
    assert_eq!(cm["data"]["a"], "2");
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(managers.contains(&"other"), "{managers:?}");
    server.shutdown().await;
}
