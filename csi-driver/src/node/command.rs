//! Runs the external filesystem tools (blkid, mkfs.*, resize2fs, xfs_growfs)
//! without a shell and turns a failure into [`NodeError::Tool`] carrying the
//! command line, exit status and stderr.

use std::ffi::OsStr;
use std::process::Output;

use tokio::process::Command;

use super::error::NodeError;

/// Runs `program args...` to completion and returns its output whatever the
/// exit status; only a failure to start it is an error.
pub(crate) async fn output<I, S>(program: &str, args: I) -> Result<Output, NodeError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    Command::new(program)
        .args(&args)
        .output()
        .await
        .map_err(|err| NodeError::Tool {
            command: command_line(program, &args),
            status: "not started".into(),
            stderr: err.to_string(),
        })
}

/// Runs `program args...` and fails unless it exits with status 0.
pub(crate) async fn run<I, S>(program: &str, args: I) -> Result<Output, NodeError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = output(program, &args).await?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failure(program, &args, &out))
    }
}

/// Builds the [`NodeError::Tool`] for a finished command that failed.
pub(crate) fn failure<S: AsRef<OsStr>>(program: &str, args: &[S], out: &Output) -> NodeError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stderr = if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        stderr
    };
    NodeError::Tool {
        command: command_line(program, args),
        status: out.status.to_string(),
        stderr,
    }
}

fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}
