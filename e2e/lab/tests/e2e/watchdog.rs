//! A test that hangs must fail, and say where it stood.
//!
//! Libtest has no time limit: a test stuck in a wait nothing bounds holds
//! the whole run until CI kills it, with nothing printed but "has been
//! running for over 60 seconds". So every lab a test starts is watched from
//! a thread of its own (it fires even when the test's runtime is blocked):
//! if the thread that started the lab has not ended [`LIMIT`] later, the
//! watchdog writes what the lab was doing to stderr (the tails of the
//! daemons' logs, the last requests each API server answered) and ends the
//! test process. The thread's end, not the lab's, disarms it, so a test
//! that hangs after its lab is gone (say, in its runtime's shutdown) is
//! caught too.

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long a test may run after starting a lab: several times the slowest
/// test on a loaded 2-core machine, and short enough that a hung run still
/// ends well within CI's limit.
pub const LIMIT: Duration = Duration::from_secs(20 * 60);

thread_local! {
    /// The watchdogs this thread armed; dropped, so disarmed, when it ends.
    static ARMED: RefCell<Vec<mpsc::Sender<()>>> = const { RefCell::new(Vec::new()) };
}

/// Watches the lab in `dir`, started by the current thread.
pub fn watch(dir: &Path) {
    let (armed, disarmed) = mpsc::channel::<()>();
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let dir = dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("lab-watchdog".to_string())
        .spawn(move || {
            if disarmed.recv_timeout(LIMIT) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let report = if dir.exists() {
                lab_report(&dir)
            } else {
                "Its lab is gone: the test hangs after shutting it down.".to_string()
            };
            // Straight to the file descriptor: libtest captures the test's
            // output and would never print it.
            let _ = writeln!(
                std::io::stderr(),
                "\nerror: {test} did not finish within {LIMIT:?} of starting its lab \
                 ({}); ending the test run.\n{report}",
                dir.display()
            );
            std::process::exit(101);
        });
    if spawned.is_ok() {
        ARMED.with(|a| a.borrow_mut().push(armed));
    }
}

/// The tails of the logs under `dir/logs` and, per cluster, the last
/// requests its audit log records (stage, verb, URI, code, user), watches
/// left out: their ends say nothing of where a test stood.
pub fn lab_report(dir: &Path) -> String {
    let mut out = String::new();
    let files = |sub: &str| {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths
    };
    for log in files("logs") {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            log.display(),
            crate::common::tail(&text, 15)
        ));
    }
    for cluster in files("clusters") {
        let audit = std::fs::read_to_string(cluster.join("audit.log")).unwrap_or_default();
        let requests: Vec<String> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["verb"] != "watch")
            .map(|e| {
                format!(
                    "{} {} {} {} {}",
                    e["stage"].as_str().unwrap_or("-"),
                    e["verb"].as_str().unwrap_or("-"),
                    e["requestURI"].as_str().unwrap_or("-"),
                    e["responseStatus"]["code"],
                    e["user"]["username"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        out.push_str(&format!(
            "--- last requests to {} ---\n{}\n",
            cluster.display(),
            requests[requests.len().saturating_sub(15)..].join("\n")
        ));
    }
    out
}
