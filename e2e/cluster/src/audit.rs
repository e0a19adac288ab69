//! Request counters from kube-apiserver's audit log: the lab writes an audit
//! policy that records every request at the Metadata level once, when its
//! response is complete (kube-apiserver's and kube-controller-manager's own
//! identities, health checks and discovery left out), and [`AuditLog`] reads the JSON lines kube-apiserver appends,
//! counting requests by (verb, resource, user), where resource includes a
//! subresource (`pods/status`, `virtualmachines/addvolume`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::Deserialize;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::Error;

/// The audit policy: Metadata for everyone but the control plane itself.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: None
    users: ["system:apiserver", "system:kube-controller-manager", "system:kube-scheduler"]
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/openapi*", "/api", "/apis", "/api/*", "/apis/*"]
  - level: Metadata
"#;

/// A snapshot of the counters: (verb, resource, user) -> count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounters {
    pub counts: BTreeMap<(String, String, String), u64>,
}

impl RequestCounters {
    /// Requests of `verb` on `resource` by anyone.
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, r, _), _)| v == verb && r == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` on `resource` by `user`.
    pub fn count_by(&self, verb: &str, resource: &str, user: &str) -> u64 {
        self.counts
            .get(&(verb.to_string(), resource.to_string(), user.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Writes (create, update, patch, delete, deletecollection) by `user`,
    /// on any resource and subresource.
    pub fn writes_by(&self, user: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((verb, _, u), _)| u == user && is_write(verb))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every request by `user`, as (verb, resource, count).
    pub fn by_user(&self, user: &str) -> Vec<(String, String, u64)> {
        self.counts
            .iter()
            .filter(|((_, _, u), _)| u == user)
            .map(|((v, r, _), n)| (v.clone(), r.clone(), *n))
            .collect()
    }
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// The parts of an audit event the counters use.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    verb: String,
    user: User,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    request_u_r_i: String,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

/// The audit log of one API server, read incrementally.
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    offset: u64,
    counters: RequestCounters,
}

impl AuditLog {
    pub fn new(path: &Path) -> AuditLog {
        AuditLog {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters including every complete line written so far.
    pub fn counters(&self) -> RequestCounters {
        let Ok(mut state) = self.state.lock() else {
            return RequestCounters::default();
        };
        if let Err(e) = read_new(&self.path, &mut state) {
            tracing::warn!(log = %self.path.display(), "reading the audit log: {e}");
        }
        state.counters.clone()
    }

    /// The counters once `ready` holds for them, or as they stand after
    /// `timeout`. kube-apiserver appends a request's line after it has
    /// answered, so another client can see a write take effect (through a
    /// watch) a moment before the log records it; this waits for the log
    /// to grow (inotify), never polling it.
    pub async fn counters_when(
        &self,
        ready: impl Fn(&RequestCounters) -> bool,
        timeout: Duration,
    ) -> Result<RequestCounters, Error> {
        let growth = Growth::watch(&self.path)?;
        let wait = async {
            loop {
                let counters = self.counters();
                if ready(&counters) {
                    return Ok(counters);
                }
                growth.next().await?;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Ok(self.counters()),
        }
    }
}

/// Writes to one file, as inotify reports them to tokio's reactor.
struct Growth {
    path: PathBuf,
    fd: AsyncFd<InotifyFd>,
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Growth {
    fn watch(path: &Path) -> Result<Growth, Error> {
        let io = |action| Error::io(action, path);
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io("inotify for")(e.into()))?;
        inotify
            .add_watch(path, AddWatchFlags::IN_MODIFY)
            .map_err(|e| io("watch")(e.into()))?;
        // SAFETY: `InotifyFd` owns the inotify descriptor (nix keeps it in an
        // OwnedFd) and hands out only that descriptor; the AsyncFd owns the
        // InotifyFd, so the descriptor stays open and unchanged while it is
        // registered.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(|e| io("register the watch of")(e.into()))?;
        Ok(Growth {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// Resolves once the file was written to since the last call.
    async fn next(&self) -> Result<(), Error> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(Error::io("wait for writes to", &self.path))?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(Error::io("read the watch of", &self.path)(e.into())),
            }
        }
    }
}

fn read_new(path: &Path, state: &mut State) -> std::io::Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(state.offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    // Only complete lines; a partial last line is read next time.
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in buf[..complete].split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if let Ok(event) = serde_json::from_slice::<Event>(line) {
            let (verb, resource, user) = key(event);
            *state
                .counters
                .counts
                .entry((verb, resource, user))
                .or_default() += 1;
        }
    }
    state.offset += complete as u64;
    Ok(())
}

/// The counter key of an event: its verb, `resource[/subresource]` (the
/// request path for non-resource requests) and user name.
fn key(event: Event) -> (String, String, String) {
    let resource = match event.object_ref {
        Some(r) if r.subresource.is_empty() => r.resource,
        Some(r) => format!("{}/{}", r.resource, r.subresource),
        None => event
            .request_u_r_i
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    (event.verb, resource, event.user.username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_lines_by_verb_resource_and_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let event = |verb: &str, resource: &str, sub: &str, user: &str| {
            serde_json::json!({
                "kind": "Event", "verb": verb, "user": {"username": user},
                "objectRef": {"resource": resource, "subresource": sub},
                "requestURI": "/x", "stage": "ResponseComplete"
            })
            .to_string()
        };
        let log = AuditLog::new(&path);
        assert_eq!(log.counters().total(), 0, "no log yet");
        let lines = [
            event("create", "pods", "", "a"),
            event("patch", "pods", "status", "a"),
            event("update", "virtualmachines", "addvolume", "b"),
            event("get", "pods", "", "a"),
        ];
        std::fs::write(&path, format!("{}\n{}\n{}", lines[0], lines[1], lines[2])).expect("write");
        let c = log.counters();
        assert_eq!(c.count_by("create", "pods", "a"), 1);
        assert_eq!(c.count_by("patch", "pods/status", "a"), 1);
        assert_eq!(c.total(), 2, "the unterminated line waits");
        let mut all = std::fs::read_to_string(&path).expect("read");
        all.push('\n');
        all.push_str(&lines[3]);
        all.push('\n');
        std::fs::write(&path, all).expect("write");
        let c = log.counters();
        assert_eq!(c.count_by("update", "virtualmachines/addvolume", "b"), 1);
        assert_eq!(c.writes_by("a"), 2);
        assert_eq!(c.count("get", "pods"), 1);
        assert_eq!(c.total(), 4);
    }

    #[tokio::test]
    async fn counters_when_waits_for_the_line_that_makes_them_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "").expect("create");
        let log = AuditLog::new(&path);
        let line = serde_json::json!({
            "kind": "Event", "verb": "patch", "user": {"username": "ccm"},
            "objectRef": {"resource": "services", "subresource": "status"},
            "requestURI": "/x", "stage": "ResponseComplete"
        })
        .to_string();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                std::fs::write(&path, format!("{line}\n")).expect("append");
            })
        };
        let ready = |c: &RequestCounters| c.count_by("patch", "services/status", "ccm") == 1;
        let counters = log
            .counters_when(ready, Duration::from_secs(10))
            .await
            .expect("watch the log");
        writer.await.expect("writer");
        assert!(ready(&counters), "{counters:?}");

        let timed_out = log
            .counters_when(|c| c.total() > 1, Duration::from_millis(50))
            .await
            .expect("watch the log");
        assert_eq!(
            timed_out.total(),
            1,
            "after the timeout, the counters as they stand"
        );
    }
}
