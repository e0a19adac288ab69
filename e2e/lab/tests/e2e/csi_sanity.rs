//! The official CSI conformance suite, csi-sanity (kubernetes-csi/csi-test),
//! against the driver in the lab: both services in one process, as the
//! suite wants them, with the node service on the lab's loop devices (real
//! mkfs, mounts and resizes) and the controller on the lab's infra cluster.
//! Run twice: with the default parameters, and with a StorageClass
//! parameter set naming the virtio bus and a mutable parameter set naming
//! an infra VolumeAttributesClass.
//!
//! The binary is `$CSI_SANITY`, else `../shared/tools/csi-sanity` beside
//! the repository; without either the test says so in one line and passes
//! (a user's machine). It must report no failure and at least
//! [`MIN_PASSED`] passed specs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::storage::v1beta1::VolumeAttributesClass;
use kube::api::{Api, PostParams};
use kubevirt_infra::labels::selector_string;
use kubevirt_lab::daemon::{self, Daemon};
use kubevirt_lab::identity;
use kubevirt_lab::{Lab, LabConfig, wait};

use crate::csi_support::{BINARY, INFRA_ID};

/// Fewer passed specs means the suite skipped what it should run.
const MIN_PASSED: u32 = 80;
/// The volume prefix the driver runs with (csi-sanity's names carry none).
const PREFIX: &str = "sanity";
/// One run of the suite; it takes about a minute.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The csi-sanity binary, or `None` (with the reason) when there is none.
fn csi_sanity() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CSI_SANITY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CSI_SANITY={} is not a file", p.display()))
        };
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/csi-sanity");
    if shared.is_file() {
        Ok(shared)
    } else {
        Err("csi-sanity not found (../shared/tools/csi-sanity; set CSI_SANITY=/path)".into())
    }
}

/// `(passed, failed, pending, skipped)` from Ginkgo's closing line,
/// `SUCCESS! -- 82 Passed | 0 Failed | 1 Pending | 9 Skipped`.
fn summary(output: &str) -> Option<(u32, u32, u32, u32)> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(" Passed | ") && l.contains(" Failed"))?;
    let count = |word: &str| -> Option<u32> {
        let before = line.split(word).next()?;
        before.split_whitespace().last()?.parse().ok()
    };
    Some((
        count(" Passed")?,
        count(" Failed")?,
        count(" Pending").unwrap_or(0),
        count(" Skipped").unwrap_or(0),
    ))
}

/// Ginkgo's reports of the failed specs: each line that says `[FAILED]`
/// with the lines that follow it (the spec, the expectation, the gRPC
/// status), else the whole output.
fn failures(output: &str) -> String {
    const CONTEXT: usize = 12;
    let lines: Vec<&str> = output.lines().collect();
    let mut shown = Vec::new();
    let mut until = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.contains("[FAILED]") {
            until = i + CONTEXT;
        }
        if i < until {
            shown.push(*line);
        }
    }
    if shown.is_empty() {
        output.to_string()
    } else {
        shown.join("\n")
    }
}

/// The driver with both services, as csi-sanity wants it, on the lab's
/// only node, as the ServiceAccounts of its manifests on both clusters.
async fn start_driver(lab: &Lab, dir: &Path) -> anyhow::Result<(Daemon, PathBuf)> {
    let (infra_identity, guest_identity) = identity::csi_controller(lab).await?;
    let infra = dir.join("infra.kubeconfig");
    let guest = dir.join("guest.kubeconfig");
    lab.infra
        .write_kubeconfig(&infra, &infra_identity.token, Some(&lab.infra_namespace))
        .context("write the infra kubeconfig")?;
    lab.guest
        .write_kubeconfig(&guest, &guest_identity.token, Some("default"))
        .context("write the guest kubeconfig")?;
    let node = lab.nodes.first().context("the lab has no node")?;
    let socket = dir.join("csi/csi.sock");
    let args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--node-name={node}"),
        format!("--infra-cluster-kubeconfig={}", infra.display()),
        format!("--infra-cluster-namespace={}", lab.infra_namespace),
        format!(
            "--infra-cluster-labels={}",
            selector_string(&lab.infra_labels)
        ),
        format!("--tenant-cluster-kubeconfig={}", guest.display()),
        format!("--volume-prefix={PREFIX}"),
        format!("--device-dir={}", lab.node_dev_dir(node).display()),
        "--v=3".to_string(),
    ];
    let daemon = daemon::spawn(
        BINARY,
        args,
        [("RUST_BACKTRACE", "1")],
        &dir.join("driver.log"),
    )?;
    std::fs::create_dir_all(dir.join("csi")).context("create the socket directory")?;
    if let Err(e) = wait::file_exists(&socket, true, Duration::from_secs(60)).await {
        bail!("driver socket did not appear: {e}\n{}", daemon.log());
    }
    Ok((daemon, socket))
}

/// One csi-sanity run; its output goes to `dir/<name>.log`.
async fn run_suite(
    sanity: &Path,
    socket: &Path,
    dir: &Path,
    name: &str,
    parameters: Option<&str>,
    mutable_parameters: Option<&str>,
) -> anyhow::Result<(u32, u32, u32, u32)> {
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).context("create the run directory")?;
    let mut args = vec![
        format!("--csi.endpoint=unix://{}", socket.display()),
        format!("--csi.stagingdir={}", run_dir.join("staging").display()),
        format!("--csi.mountdir={}", run_dir.join("mount").display()),
        "--csi.testvolumesize=1073741824".to_string(),
        "--ginkgo.no-color".to_string(),
    ];
    for (flag, yaml) in [
        ("testvolumeparameters", parameters),
        ("testvolumemutableparameters", mutable_parameters),
    ] {
        if let Some(yaml) = yaml {
            let file = run_dir.join(format!("{flag}.yaml"));
            std::fs::write(&file, yaml).with_context(|| format!("write {}", file.display()))?;
            args.push(format!("--csi.{flag}={}", file.display()));
        }
    }
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).context("create the log")?;
    let err = out.try_clone().context("clone the log handle")?;
    let mut child = tokio::process::Command::new(sanity)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", sanity.display()))?;
    let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
        .await
        .with_context(|| format!("csi-sanity ({name}) did not finish in {RUN_TIMEOUT:?}"))?
        .context("wait for csi-sanity")?;
    let output = std::fs::read_to_string(&log).context("read the log")?;
    let Some(counts) = summary(&output) else {
        bail!("csi-sanity ({name}) exited with {status} and no summary:\n{output}");
    };
    let (passed, failed, pending, skipped) = counts;
    println!(
        "csi-sanity ({name}): {passed} passed, {failed} failed, {skipped} skipped, {pending} pending"
    );
    if failed > 0 || !status.success() {
        bail!(
            "csi-sanity ({name}) failed ({status}):\n{}",
            failures(&output)
        );
    }
    Ok(counts)
}

#[tokio::test]
async fn official_suite_passes() -> anyhow::Result<()> {
    // No log subscriber here: the lab simulators' retries would drown the
    // suite's report; the driver's own log is printed on failure.
    let sanity = match csi_sanity() {
        Ok(p) => p,
        Err(why) => {
            println!("skipping csi-sanity: {why}");
            return Ok(());
        }
    };
    let lab = crate::common::start_lab_for(
        BINARY,
        "kubevirt-csi-driver",
        LabConfig {
            vms: 1,
            cluster_name: "sanity".into(),
            infra_namespace: "clusters-sanity".into(),
            infra_labels: [(INFRA_ID.to_string(), "sanity".to_string())].into(),
            ..LabConfig::default()
        },
    )
    .await?;
    let dir = lab.dir.join("csi-sanity");
    std::fs::create_dir_all(&dir).context("create the csi-sanity directory")?;
    let (driver, socket) = start_driver(&lab, &dir).await?;

    // The second run also gives its volumes an infra VolumeAttributesClass
    // (the mutable parameter ControllerModifyVolume sets).
    let classes: Api<VolumeAttributesClass> = Api::all(lab.infra_client());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "storage.k8s.io/v1beta1", "kind": "VolumeAttributesClass",
                "metadata": {"name": "lab-gold"},
                "driverName": "lab.kubevirt.io/hostpath", "parameters": {"tier": "gold"}
            }))?,
        )
        .await
        .context("create the infra VolumeAttributesClass")?;
    let runs = [
        ("default", None, None),
        (
            "virtio",
            Some("bus: virtio\n"),
            Some("infraVolumeAttributesClassName: lab-gold\n"),
        ),
    ];
    for (name, parameters, mutable) in runs {
        let result = run_suite(&sanity, &socket, &dir, name, parameters, mutable).await;
        let (passed, ..) = match result {
            Ok(c) => c,
            Err(e) => {
                let log = driver.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{e:#}\n--- driver log (tail) ---\n{}", tail.join("\n"));
            }
        };
        assert!(
            passed >= MIN_PASSED,
            "csi-sanity ({name}) passed only {passed} specs (at least {MIN_PASSED} expected)"
        );
    }
    drop(driver);
    lab.shutdown().await?;
    Ok(())
}

#[test]
fn reads_the_closing_line() {
    let out = "Ran 82 of 92 Specs in 61.2 seconds\nSUCCESS! -- 82 Passed | 0 Failed | 1 Pending | 9 Skipped\nPASS\n";
    assert_eq!(summary(out), Some((82, 0, 1, 9)));
    let out = "FAIL! -- 37 Passed | 37 Failed | 1 Pending | 17 Skipped\n";
    assert_eq!(summary(out), Some((37, 37, 1, 17)));
    assert_eq!(summary("no summary here"), None);
}
