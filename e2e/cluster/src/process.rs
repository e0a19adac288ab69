//! A control-plane program as a child process: its own process group, output
//! appended to a log file, SIGTERM to stop (SIGKILL after a grace period),
//! killed with the lab when the process that started it dies
//! (`PR_SET_PDEATHSIG`), and [`Process::ready`], which waits until a probe
//! passes or the program exits.
//!
//! A program that just started cannot be watched for readiness, only asked:
//! the probe is retried with a short backoff, as kubeadm waits for its
//! control plane.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::Error;

/// How long a stopped program gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A program of the control plane.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    /// The network namespace it runs in (`nsenter --net=`), if not the host's.
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args`, output appended to `log`, in the
    /// network namespace `netns` (a path `nsenter --net=` takes) if given.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: Vec<OsString>,
        log: &Path,
        netns: Option<&Path>,
    ) -> Result<Process, Error> {
        let mut process = Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log: log.to_path_buf(),
            netns: netns.map(Path::to_path_buf),
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    /// Starts it (again) with the same command line.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(Error::io("open", &self.log))?;
        let err = out.try_clone().map_err(Error::io("open", &self.log))?;
        // nsenter enters the namespace and execs the program: one process,
        // its group and parent-death signal kept.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(Error::io("start", &self.program))?;
        tracing::debug!(process = %self.name, pid = child.id(), log = %self.log.display(), "started");
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `probe` answers true, failing if the program exits or
    /// `timeout` passes first.
    pub async fn ready<F, Fut>(&mut self, timeout: Duration, mut probe: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::Exited {
                    process: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: self.log_tail(20),
                });
            }
            if probe().await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    process: self.name.clone(),
                    after: timeout,
                    log: self.log.clone(),
                    tail: self.log_tail(20),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(pid(&child), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, SIGKILL after a grace period, and reap.
    pub async fn stop(&mut self) {
        self.stop_within(GRACE).await;
    }

    /// SIGTERM, SIGKILL after `grace`, and reap.
    pub async fn stop_within(&mut self, grace: Duration) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || terminate(child, grace)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, GRACE);
        }
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}

fn terminate(mut child: Child, grace: Duration) {
    let group = pid(&child);
    let _ = killpg(group, Signal::SIGTERM);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = child.wait();
        let _ = tx.send(());
    });
    if rx.recv_timeout(grace).is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = rx.recv();
    }
}

/// The child gets SIGKILL when the thread that started it ends, so a lab
/// killed hard leaves no control plane behind. (Labs start their processes
/// from runtime worker threads, which live as long as the lab.)
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe prctl(2) call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}
