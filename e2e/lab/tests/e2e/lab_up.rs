//! The `lab` binary as a user runs it: `lab up` serves kubectl through the
//! kubeconfigs it writes, and on SIGTERM exits 0 leaving no loop device
//! behind; `lab up --suite` runs our daemons, so a claim and a LoadBalancer
//! Service made with kubectl in the guest cluster are served, and stops them
//! on SIGTERM; `lab demo` narrates a guest volume and load balancer end to
//! end and exits 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::hotplug::{AddVolumeOptions, Target, add_volume};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use kubevirt_lab::{daemon, wait};
use serde_json::json;

const LAB: &str = env!("CARGO_BIN_EXE_lab");
const WAIT: Duration = Duration::from_secs(60);

async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// Loop devices attached to `file`, per `losetup -j`.
async fn loops_of(file: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("losetup")
        .arg("-j")
        .arg(file)
        .output()
        .await?;
    ensure!(out.status.success(), "losetup -j failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn lab_up_serves_kubectl_and_cleans_up_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lab_dir = dir.path().join("lab");
    std::fs::create_dir_all(&lab_dir)?;
    let mut lab = daemon::spawn(
        LAB,
        ["up", "--dir", &lab_dir.to_string_lossy(), "--vms", "2"],
        [("RUST_LOG", "info")],
        &dir.path().join("lab.log"),
    )?;
    let ready = lab_dir.join("ready");
    if let Err(e) = wait::file_exists(&ready, true, WAIT).await {
        anyhow::bail!("{e}; log:\n{}", lab.log());
    }

    let kubeconfig = lab_dir.join("infra.kubeconfig");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "vmi", "-n", "clusters-demo", "-o", "name"])
            .output(),
    )
    .await??;
    let listed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for vm in ["demo-worker-0", "demo-worker-1"] {
        ensure!(
            listed.contains(&format!("virtualmachineinstance.kubevirt.io/{vm}")),
            "kubectl listed:\n{listed}"
        );
    }
    let env = std::fs::read_to_string(lab_dir.join("lab.env"))?;
    ensure!(
        env.contains("NODES=\"demo-worker-0 demo-worker-1\""),
        "{env}"
    );

    // Hotplug a volume through the kubeconfig so the lab holds a loop device.
    let client = client_from(&kubeconfig).await?;
    let ns = "clusters-demo";
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "pvc-up", "namespace": ns},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "8Mi"}}}}
    }))?;
    dvs.create(&PostParams::default(), &dv).await?;
    let dv = wait::until(&dvs, "pvc-up", WAIT, |d| {
        d.filter(|d| d.phase() == "Succeeded").cloned()
    })
    .await?;
    let serial = dv.uid().context("uid")?;
    add_volume(
        &client,
        Target::VirtualMachine,
        ns,
        "demo-worker-0",
        &AddVolumeOptions::data_volume("pvc-up", "scsi", &serial),
    )
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    wait::until(&vmis, "demo-worker-0", WAIT, |v| {
        v?.volume_status("pvc-up")
            .filter(|s| s.is_ready())
            .map(|_| ())
    })
    .await?;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get("pvc-up")
        .await?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pvc.spec.and_then(|s| s.volume_name).context("volumeName")?)
        .await?;
    let file = PathBuf::from(pv.spec.and_then(|s| s.host_path).context("hostPath")?.path);
    ensure!(
        !loops_of(&file).await?.trim().is_empty(),
        "no loop device for the hotplugged volume"
    );
    let link = lab_dir
        .join("nodes/demo-worker-0/dev/disk/by-id")
        .join(format!("scsi-0QEMU_QEMU_HARDDISK_{serial}"));
    ensure!(
        std::fs::read_link(&link).is_ok(),
        "no by-id link in the guest node's device tree"
    );

    let status = lab
        .terminate(Duration::from_secs(30))
        .await?
        .context("lab was running")?;
    ensure!(
        status.success(),
        "lab up exited with {status}; log:\n{}",
        lab.log()
    );
    ensure!(
        loops_of(&file).await?.trim().is_empty(),
        "loop device left behind after SIGTERM"
    );
    ensure!(
        std::fs::symlink_metadata(&link).is_err(),
        "by-id link left behind"
    );
    ensure!(!ready.exists(), "ready marker left behind");
    Ok(())
}

#[tokio::test]
async fn lab_demo_narrates_and_exits_zero() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut demo = daemon::spawn(
        LAB,
        ["demo"],
        [("RUST_LOG", "warn")],
        &dir.path().join("demo.log"),
    )?;
    let status = demo.wait(Duration::from_secs(240)).await?;
    let log = demo.log();
    ensure!(status.success(), "lab demo failed with {status}:\n{log}");
    for expected in [
        "applied examples/hostedcluster.yaml: HostedCluster clusters/example, Kubernetes 1.32.13",
        "management: EtcdAvailable=True: 1 of 1 etcd members ready",
        "management: Available=True",
        "the API server is published at https://192.168.200.",
        "management: clusters-example/etcd-0 on infra-node-",
        "hosted cluster: kube-apiserver v1.32.13 answers through the endpoint; namespaces: default",
        "applied examples/nodepool.yaml: 2 VMs",
        "hosted cluster: Node example-workers-",
        " Ready (providerID kubevirt://example-workers-",
        "from system:bootstrap:",
        ": AutoApproved, signed by the hosted kube-controller-manager",
        "hosted cluster: pod demo-web-example-workers-",
        "hosted cluster: Service default/demo-web got ingress 192.168.200.",
        "-> 200 from pod demo-web-example-workers-",
        "guest: claim Bound to PersistentVolume pvc-",
        "phase Succeeded, labels hypershift.openshift.io/infra-id=demo",
        "volumeStatus pvc-",
        ": AttachedToNode",
        ": Ready (target sd",
        "-> /dev/loop",
        "formatted ext4",
        "demo-reader on demo-worker-1 reads hello.txt: \"hello from demo-worker-0",
        "and infra DataVolume pvc-",
        "selecting cluster.x-k8s.io/cluster-name=demo,cluster.x-k8s.io/role=worker",
        "load balancer ingress: 192.168.200.",
        "its address free",
        "== done",
    ] {
        ensure!(
            log.contains(expected),
            "demo output lacks {expected:?}:\n{log}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn lab_up_with_the_suite_serves_guest_claims_and_load_balancers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lab_dir = dir.path().join("lab");
    std::fs::create_dir_all(&lab_dir)?;
    let mut lab = daemon::spawn(
        LAB,
        [
            "up",
            "--dir",
            &lab_dir.to_string_lossy(),
            "--vms",
            "1",
            "--suite",
        ],
        [("RUST_LOG", "info")],
        &dir.path().join("lab.log"),
    )?;
    if let Err(e) = wait::file_exists(&lab_dir.join("ready"), true, WAIT).await {
        anyhow::bail!("{e}; log:\n{}", lab.log());
    }
    let log = lab.log();
    let pids: Vec<i32> = log
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok())
        .collect();
    ensure!(
        pids.len() == 3,
        "a CSI controller, a node plugin and a CCM:\n{log}"
    );

    let kubeconfig = lab_dir.join("guest.kubeconfig");
    let manifest = dir.path().join("guest.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: kubevirt
  resources:
    requests:
      storage: 64Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#,
    )?;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .output(),
    )
    .await??;
    ensure!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = client_from(&kubeconfig).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    wait::until(&pvcs, "data", WAIT, |p| {
        p.and_then(|p| p.status.as_ref())
            .filter(|s| s.phase.as_deref() == Some("Bound"))
            .map(|_| ())
    })
    .await
    .with_context(|| format!("claim not bound; log:\n{}", lab.log()))?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    wait::until(&services, "web", WAIT, |s| {
        s.and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .filter(|i| !i.is_empty())
            .map(|_| ())
    })
    .await
    .with_context(|| format!("no ingress; log:\n{}", lab.log()))?;

    let status = lab
        .terminate(Duration::from_secs(30))
        .await?
        .context("lab was running")?;
    ensure!(
        status.success(),
        "lab up exited with {status}; log:\n{}",
        lab.log()
    );
    for pid in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} still runs after the lab stopped"
        );
    }
    Ok(())
}
