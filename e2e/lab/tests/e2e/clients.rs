//! Real clients against the lab's clusters, as a new user would use them:
//! `scripts/kubectl-conformance.sh` (the real kubectl: create, apply client-
//! and server-side with conflicts, replace, patch, label, scale, delete with
//! each cascade, every output form, watch, wait, explain, auth, token, diff,
//! each line asserted) and `scripts/python-client-check.py` (the official
//! Python client, PyPI `kubernetes`), both against the infra and the guest
//! cluster at once.
//!
//! The Python is `$LAB_TEST_PYTHON` (scripts/test.sh installs the client into
//! a venv under target/), else `python3` when it has the client.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kubevirt_lab::LabConfig;

/// Bound of each script run (a hang guard).
const TIMEOUT: Duration = Duration::from_secs(400);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// The Python with the Kubernetes client.
fn python() -> anyhow::Result<String> {
    let python = std::env::var("LAB_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        bail!(
            "the Kubernetes Python client is not available to {python}: run scripts/test.sh, \
             which installs it from PyPI into target/python-clients, or set LAB_TEST_PYTHON to \
             a Python that has it (pip install kubernetes)"
        );
    }
    Ok(python)
}

async fn run(program: &str, args: Vec<&Path>) -> anyhow::Result<Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, child)
        .await
        .with_context(|| format!("{program} did not finish within {TIMEOUT:?}"))?
        .with_context(|| format!("run {program}"))
}

fn check(what: &str, out: &Output) -> anyhow::Result<()> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    println!("{what}: {last}");
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_the_python_client_against_both_clusters() -> anyhow::Result<()> {
    crate::common::init_logging();
    let python = python()?;
    let lab = crate::common::start_lab(LabConfig {
        vms: 1,
        devices: false,
        ..LabConfig::default()
    })
    .await?;
    let kubectl = script("kubectl-conformance.sh");
    let kubectl = kubectl.to_str().context("script path")?;
    let client = script("python-client-check.py");
    let (infra, guest) = (&lab.infra_kubeconfig, &lab.guest_kubeconfig);
    let (ki, kg, pi, pg) = tokio::join!(
        run(kubectl, vec![infra]),
        run(kubectl, vec![guest]),
        run(&python, vec![&client, infra]),
        run(&python, vec![&client, guest]),
    );
    let result = (|| {
        check("kubectl, infra cluster", &ki?)?;
        check("kubectl, guest cluster", &kg?)?;
        check("Python client, infra cluster", &pi?)?;
        check("Python client, guest cluster", &pg?)
    })();
    lab.shutdown().await?;
    result
}
