//! Daemons under test as child processes: [`binary`] finds a workspace binary
//! that cargo built next to the running test, [`spawn`] starts it with its
//! stdout and stderr appended to a log file, and [`Daemon`] stops it (SIGTERM,
//! then SIGKILL after a grace period; also on drop), kills it hard and
//! restarts it for fault tests. Each daemon runs in its own process group, so
//! signals reach whatever it started too.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::LabError;

/// How long [`Drop`] waits after SIGTERM before SIGKILL.
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// The path of workspace binary `name` built by cargo: next to the running
/// executable, or one level up when that is a test or an example
/// (`target/<profile>/deps/`, `target/<profile>/examples/`).
/// `LAB_BIN_DIR` overrides the directory.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir.join(name)
}

/// A running (or stopped) child daemon.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_path: PathBuf,
    child: Option<Child>,
}

/// Starts `name` (a workspace binary name, or a path) with `args` and extra
/// `envs`, stdout and stderr appended to `log_path`.
pub fn spawn<A, K, V>(
    name: &str,
    args: impl IntoIterator<Item = A>,
    envs: impl IntoIterator<Item = (K, V)>,
    log_path: &Path,
) -> Result<Daemon, LabError>
where
    A: Into<OsString>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let program = if name.contains('/') {
        PathBuf::from(name)
    } else {
        binary(name)
    };
    let mut daemon = Daemon {
        name: name.rsplit('/').next().unwrap_or(name).to_string(),
        program,
        args: args.into_iter().map(Into::into).collect(),
        envs: envs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        log_path: log_path.to_path_buf(),
        child: None,
    };
    daemon.start()?;
    Ok(daemon)
}

impl Daemon {
    fn start(&mut self) -> Result<(), LabError> {
        if let Some(dir) = self.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(LabError::io("create", dir))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(LabError::io("open", &self.log_path))?;
        let err = log
            .try_clone()
            .map_err(LabError::io("open", &self.log_path))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(LabError::io("start", &self.program))?;
        tracing::info!(daemon = %self.name, pid = child.id(), log = %self.log_path.display(), "daemon started");
        self.child = Some(child);
        Ok(())
    }

    /// The daemon's name (the binary's file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether it has exited (reaping it if so); `Some(status)` once it has.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(c) => c
                .try_wait()
                .map_err(LabError::io("wait for", &self.program)),
        }
    }

    /// SIGKILL to its process group and reap it (a crash, for fault tests).
    pub fn kill(&mut self) -> Result<Option<ExitStatus>, LabError> {
        let Some(child) = self.child.take() else {
            return Ok(None);
        };
        signal(&child, Signal::SIGKILL);
        wait_blocking(child, &self.program).map(Some)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>, LabError> {
        let Some(child) = self.child.take() else {
            return Ok(None);
        };
        let program = self.program.clone();
        tokio::task::spawn_blocking(move || stop(child, grace, &program))
            .await
            .map_err(|e| LabError::Invalid(format!("stopping daemon: {e}")))?
            .map(Some)
    }

    /// Waits for it to exit by itself, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        let Some(child) = self.child.take() else {
            return Err(LabError::Invalid(format!("{} is not running", self.name)));
        };
        let program = self.program.clone();
        let pid = child.id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(wait_blocking(child, &program));
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => Err(LabError::Invalid("waiter thread vanished".into())),
            Err(_) => {
                // Still running: stop it so nothing leaks, then report the timeout.
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                Err(LabError::Timeout {
                    what: format!("{} to exit", self.name),
                    after: timeout,
                })
            }
        }
    }

    /// Kills it hard if it runs, then starts it again with the same command
    /// line (output appended to the same log).
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.kill()?;
        self.start()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take()
            && let Err(e) = stop(child, DROP_GRACE, &self.program)
        {
            tracing::warn!(daemon = %self.name, "stopping on drop: {e}");
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    // The daemon leads its own process group (process_group(0)).
    let _ = killpg(Pid::from_raw(child.id() as i32), sig);
}

fn wait_blocking(mut child: Child, program: &Path) -> Result<ExitStatus, LabError> {
    child.wait().map_err(LabError::io("wait for", program))
}

/// SIGTERM, wait up to `grace` (on a waiter thread), then SIGKILL and reap.
fn stop(child: Child, grace: Duration, program: &Path) -> Result<ExitStatus, LabError> {
    let pid = child.id();
    signal(&child, Signal::SIGTERM);
    let (tx, rx) = mpsc::channel();
    let program_owned = program.to_path_buf();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(wait_blocking(child, &program_owned));
    });
    let status = match rx.recv_timeout(grace) {
        Ok(status) => status,
        Err(_) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            rx.recv().map_err(|_| {
                LabError::Invalid(format!("waiting for {} failed", program.display()))
            })?
        }
    };
    let _ = waiter.join();
    // Children it left in its group go too.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[tokio::test]
    async fn terminate_restart_and_kill() -> Result<(), LabError> {
        let dir = tempfile::tempdir().map_err(LabError::io("create", "/tmp"))?;
        let log = dir.path().join("sleeper.log");
        let started = dir.path().join("started");
        let mut d = spawn(
            "/bin/sh",
            ["-c", "echo started; touch \"$MARKER\"; exec sleep 600"],
            [("MARKER", started.clone())],
            &log,
        )?;
        crate::wait::file_exists(&started, true, Duration::from_secs(5)).await?;
        let first = d.pid();
        assert!(first.is_some());
        assert_eq!(d.try_wait()?, None, "still running");
        std::fs::remove_file(&started).map_err(LabError::io("remove", &started))?;
        d.restart()?;
        crate::wait::file_exists(&started, true, Duration::from_secs(5)).await?;
        assert_ne!(d.pid(), first, "a new process");
        let status = d
            .terminate(Duration::from_secs(5))
            .await?
            .expect("it was running");
        assert_eq!(status.signal(), Some(libc_sigterm()));
        assert_eq!(d.pid(), None);
        assert_eq!(
            d.log().matches("started").count(),
            2,
            "both runs log to the same file"
        );

        // Ignores SIGTERM once the marker exists.
        let marker = dir.path().join("trapped");
        let mut d = spawn(
            "/bin/sh",
            [
                "-c",
                "trap '' TERM; touch \"$MARKER\"; while :; do sleep 1; done",
            ],
            [("MARKER", marker.clone())],
            &log,
        )?;
        crate::wait::file_exists(&marker, true, Duration::from_secs(5)).await?;
        let status = d
            .terminate(Duration::from_millis(300))
            .await?
            .expect("it was running");
        assert_eq!(status.signal(), Some(9), "SIGKILL after the grace period");

        let mut d = spawn(
            "/bin/sh",
            ["-c", "exit 3"],
            Vec::<(String, String)>::new(),
            &log,
        )?;
        assert_eq!(d.wait(Duration::from_secs(5)).await?.code(), Some(3));
        assert!(binary("lab").ends_with("lab"));
        Ok(())
    }

    fn libc_sigterm() -> i32 {
        Signal::SIGTERM as i32
    }
}
