//! Request counters from kube-apiserver's audit log: the lab writes an audit
//! policy that records every request at the Metadata level once, when its
//! response is complete (kube-apiserver's and kube-controller-manager's own
//! identities, health checks and discovery left out), and [`AuditLog`] reads the JSON lines kube-apiserver appends,
//! counting requests by (verb, resource, user), where resource includes a
//! subresource (`pods/status`, `virtualmachines/addvolume`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

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
}
