//! The kubelet of the management cluster, for one container: runs a
//! container of a pod that something else wrote (the hosted-control-plane
//! manager's Deployments and StatefulSets) as a child process, so that what
//! was generated is what runs. The container's image is stood in for by a
//! program (a workspace binary, or the control plane's own binaries); the
//! rest comes from the pod spec as a kubelet reads it:
//!
//! - every ConfigMap, Secret and emptyDir volume is materialised under
//!   `DIR/pods/<namespace>-<pod>/<volume>`, once for all the pod's
//!   containers (a claim's volume is the
//!   directory the caller gives for it, which outlives the pod) and
//!   bind-mounted at the container's `mountPath`s in a private mount
//!   namespace (`unshare --mount`), so the process finds its files where the
//!   pod spec says they are;
//! - with a [`PodNetwork`], the process runs in the lab's network namespace
//!   (`nsenter --net`) with the pod's address in `status.podIP` field
//!   references and an `/etc/resolv.conf` naming the cluster DNS with the
//!   pod namespace's search path, as a kubelet's `ClusterFirst` policy
//!   writes it;
//! - the pod's ServiceAccount gets a bound token through the TokenRequest
//!   API, mounted at `/var/run/secrets/kubernetes.io/serviceaccount` with the
//!   server's CA, and `KUBERNETES_SERVICE_HOST`/`PORT` point at the API
//!   server: in-cluster configuration works unchanged;
//! - `env` (values, ConfigMap and Secret keys, field references) and
//!   `$(VAR)` references in the arguments are resolved as the kubelet does.
//!
//! Without a network, only what a pod's own network namespace would isolate
//! is the caller's to change (`extra_args`, e.g. a listening port that
//! several pods on one host would share). Needs root (mount namespaces);
//! mount points missing on the host are created as empty directories first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, KeyToPath, PodSpec, Secret, Volume,
};
use kube::api::Api;
use kube::{Client, ResourceExt};
use lab_cluster::Cluster;

use crate::LabError;
use crate::daemon::{self, Daemon};

/// Where in-cluster clients look for their ServiceAccount credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime asked for the ServiceAccount token (the kubelet's default).
const TOKEN_SECONDS: i64 = 3607;

/// One container of a pod, ready to run.
pub struct PodRun<'a> {
    /// The lab directory; the pod's files go under `pods/`.
    pub dir: &'a Path,
    /// The API server of the cluster the pod lives in.
    pub server: &'a Cluster,
    /// Who reads the pod's Secrets and ConfigMaps and asks for its
    /// ServiceAccount's token: the kubelet's identity.
    pub client: Client,
    pub namespace: &'a str,
    pub pod_name: &'a str,
    pub spec: &'a PodSpec,
    /// The container's name in the pod spec.
    pub container: &'a str,
    /// The program standing in for the container's image.
    pub program: PathBuf,
    /// The arguments of the image's entrypoint after the program: used
    /// when the container has no `command` (which replaces the entrypoint).
    pub entrypoint_args: Vec<String>,
    /// Appended to the container's arguments (see the module docs).
    pub extra_args: Vec<String>,
    /// The pod's place in the lab network; none: the host's.
    pub network: Option<PodNetwork<'a>>,
    /// The host directory of each claim the pod mounts, by claim name.
    pub claims: BTreeMap<String, PathBuf>,
}

/// A pod's address in the lab network.
#[derive(Clone, Copy, Debug)]
pub struct PodNetwork<'a> {
    /// The lab's network namespace (`DIR/netns`).
    pub netns: &'a Path,
    pub pod_ip: IpAddr,
    pub host_ip: IpAddr,
    pub node_name: &'a str,
    /// The cluster DNS (`ClusterFirst`).
    pub dns: Option<IpAddr>,
}

/// A running container.
pub struct RunningPod {
    pub daemon: Daemon,
    /// Host directory of each volume, by volume name.
    pub volumes: BTreeMap<String, PathBuf>,
}

impl RunningPod {
    /// The host directory of volume `name`.
    pub fn volume(&self, name: &str) -> Result<&Path, LabError> {
        self.volumes
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| LabError::Invalid(format!("the pod has no volume {name}")))
    }
}

/// The pod spec of a Deployment's template.
pub fn template_spec(deployment: &Deployment) -> Result<&PodSpec, LabError> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "Deployment {} has no pod spec",
                deployment.name_any()
            ))
        })
}

impl<'a> PodRun<'a> {
    /// Container `container` of a pod of `deployment` (named
    /// `<deployment>-lab`), run on the host by workspace binary `binary`.
    pub fn of_deployment(
        dir: &'a Path,
        server: &'a Cluster,
        deployment: &'a Deployment,
        pod_name: &'a str,
        container: &'a str,
        binary: &str,
    ) -> Result<PodRun<'a>, LabError> {
        Ok(PodRun {
            dir,
            server,
            client: server.client(),
            namespace: deployment.metadata.namespace.as_deref().unwrap_or_default(),
            pod_name,
            spec: template_spec(deployment)?,
            container,
            program: daemon::binary(binary),
            entrypoint_args: Vec::new(),
            extra_args: Vec::new(),
            network: None,
            claims: BTreeMap::new(),
        })
    }

    /// Materialises the volumes, gets the token and starts the process.
    pub async fn start(self) -> Result<RunningPod, LabError> {
        let ns = self.namespace.to_string();
        let pod_name = self.pod_name.to_string();
        let spec = self.spec;
        let container = spec
            .containers
            .iter()
            .find(|c| c.name == self.container)
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "pod {ns}/{pod_name} has no container {}",
                    self.container
                ))
            })?;
        let client = self.client.clone();
        let root = self.dir.join("pods").join(format!("{ns}-{pod_name}"));
        let mut volumes = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            if let Some(claim) = &v.persistent_volume_claim {
                let dir = self.claims.get(&claim.claim_name).ok_or_else(|| {
                    LabError::Invalid(format!(
                        "volume {}: claim {} has no volume yet",
                        v.name, claim.claim_name
                    ))
                })?;
                std::fs::create_dir_all(dir).map_err(LabError::io("create", dir))?;
                volumes.insert(v.name.clone(), dir.clone());
                continue;
            }
            // Made once per pod: its containers share it (an emptyDir
            // holding one's socket for the others), and a container
            // started again finds it as it left it. Keys are refreshed.
            let dir = root.join(&v.name);
            std::fs::create_dir_all(&dir).map_err(LabError::io("create", &dir))?;
            materialise(&client, &ns, v, &dir).await?;
            volumes.insert(v.name.clone(), dir);
        }

        // (host directory or file, mount path)
        let mut mounts: Vec<(PathBuf, String)> = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let src = volumes.get(&m.name).ok_or_else(|| {
                LabError::Invalid(format!("volumeMount {} names no volume", m.name))
            })?;
            let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => src.join(sub),
                None => src.clone(),
            };
            mounts.push((src, m.mount_path.clone()));
        }
        let mut env = BTreeMap::new();
        if spec.automount_service_account_token != Some(false) {
            let sa = spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string());
            let dir = root.join("kube-api-access");
            let token = token(&client, &ns, &sa).await?;
            write(&dir.join("token"), token.as_bytes())?;
            write(&dir.join("ca.crt"), self.server.ca_pem().as_bytes())?;
            write(&dir.join("namespace"), ns.as_bytes())?;
            mounts.push((dir, SERVICE_ACCOUNT_DIR.to_string()));
            let url = match self.network {
                Some(_) => self.server.in_netns_url(),
                None => self.server.https_url(),
            };
            let hostport = url.trim_start_matches("https://");
            let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "443"));
            env.insert("KUBERNETES_SERVICE_HOST".to_string(), host.to_string());
            env.insert("KUBERNETES_SERVICE_PORT".to_string(), port.to_string());
        }
        if let Some(net) = &self.network
            && let Some(dns) = net.dns
        {
            let resolv = root.join("resolv.conf");
            write(&resolv, resolv_conf(&ns, dns).as_bytes())?;
            mounts.push((resolv, "/etc/resolv.conf".to_string()));
        }
        let fields = Fields {
            namespace: &ns,
            pod: &pod_name,
            network: self.network,
        };
        for e in container.env.iter().flatten() {
            let value = env_value(&client, &fields, e, &env).await?;
            env.insert(e.name.clone(), value);
        }
        let args = arguments(container, &env, self.entrypoint_args, self.extra_args);

        // A mount over a directory holding other sources (e.g. /tmp, where
        // the lab directory lives) goes last, so those sources stay visible.
        mounts.sort_by_key(|(_, target)| mounts_over_sources(target, self.dir) as u8);
        let mut unshare: Vec<String> = [
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            MOUNT_SCRIPT,
            "pod",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        unshare.push(self.program.display().to_string());
        for (src, target) in &mounts {
            unshare.push(src.display().to_string());
            unshare.push(target.clone());
        }
        unshare.push("--".to_string());
        unshare.extend(args);
        let log = self
            .dir
            .join("logs")
            .join(format!("{ns}-{pod_name}-{}.log", self.container));
        let daemon = match &self.network {
            Some(net) => {
                let mut nsenter = vec![
                    format!("--net={}", net.netns.display()),
                    "--".to_string(),
                    "/usr/bin/unshare".to_string(),
                ];
                nsenter.extend(unshare);
                daemon::spawn("/usr/bin/nsenter", nsenter, env, &log)?
            }
            None => daemon::spawn("/usr/bin/unshare", unshare, env, &log)?,
        };
        Ok(RunningPod { daemon, volumes })
    }
}

/// The `/etc/resolv.conf` a kubelet's `ClusterFirst` policy writes for a
/// pod in `namespace`, with the cluster DNS at `dns`.
pub fn resolv_conf(namespace: &str, dns: IpAddr) -> String {
    format!(
        "search {namespace}.svc.{d} svc.{d} {d}\nnameserver {dns}\noptions ndots:5\n",
        d = lab_net::dns::DOMAIN
    )
}

/// `$0 program src dst src dst ... -- args...`: bind every source at its
/// target (creating a missing mount point), then exec the program. The
/// program's directory is held open on fd 9 before any mount, since a mount
/// (an emptyDir at `/tmp`, say) may cover the path the program was found by.
const MOUNT_SCRIPT: &str = r#"set -e
exec 9<"${1%/*}"
program="/proc/self/fd/9/${1##*/}"
shift
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || : > "$2"; fi
  mount --bind "$1" "$2"
  shift 2
done
shift
exec "$program" "$@""#;

fn mounts_over_sources(target: &str, lab_dir: &Path) -> bool {
    lab_dir.starts_with(target)
}

/// Removes the files of pod `namespace/pod` under lab directory `dir`
/// (its volumes but claims): before its first container starts and after
/// its last one stopped.
pub fn remove_pod_files(dir: &Path, namespace: &str, pod: &str) {
    let root = dir.join("pods").join(format!("{namespace}-{pod}"));
    if let Err(e) = std::fs::remove_dir_all(&root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %root.display(), "removing a pod's files: {e}");
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(LabError::io("create", parent))?;
    }
    std::fs::write(path, bytes).map_err(LabError::io("write", path))
}

/// Writes `files` (key -> bytes) into `dir`, through `items` when given.
fn write_keys(
    dir: &Path,
    files: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), LabError> {
    match items {
        Some(items) => {
            for item in items {
                if let Some(bytes) = files.get(&item.key) {
                    write(&dir.join(&item.path), bytes)?;
                }
            }
        }
        None => {
            for (key, bytes) in files {
                write(&dir.join(key), &bytes)?;
            }
        }
    }
    Ok(())
}

fn config_map_files(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    files.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v)),
    );
    files
}

fn secret_files(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect();
    files.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    files
}

async fn materialise(client: &Client, ns: &str, v: &Volume, dir: &Path) -> Result<(), LabError> {
    if let Some(src) = &v.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        match api.get_opt(&src.name).await? {
            Some(cm) => write_keys(dir, config_map_files(cm), src.items.as_ref())?,
            None if src.optional == Some(true) => {}
            None => {
                return Err(LabError::Invalid(format!(
                    "volume {}: ConfigMap {ns}/{} not found",
                    v.name, src.name
                )));
            }
        }
    } else if let Some(src) = &v.secret {
        let name = src.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        match api.get_opt(&name).await? {
            Some(s) => write_keys(dir, secret_files(s), src.items.as_ref())?,
            None if src.optional == Some(true) => {}
            None => {
                return Err(LabError::Invalid(format!(
                    "volume {}: Secret {ns}/{name} not found",
                    v.name
                )));
            }
        }
    }
    // emptyDir and anything else: the empty directory.
    Ok(())
}

/// A bound token of ServiceAccount `ns/sa`, as the kubelet asks for one.
async fn token(client: &Client, ns: &str, sa: &str) -> Result<String, LabError> {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    Ok(lab_cluster::request_token(&api, sa, TOKEN_SECONDS).await?)
}

/// What field references of a pod resolve to.
struct Fields<'a> {
    namespace: &'a str,
    pod: &'a str,
    network: Option<PodNetwork<'a>>,
}

async fn env_value(
    client: &Client,
    fields: &Fields<'_>,
    e: &EnvVar,
    defined: &BTreeMap<String, String>,
) -> Result<String, LabError> {
    let ns = fields.namespace;
    if let Some(v) = &e.value {
        return Ok(expand(v, defined));
    }
    let Some(from) = &e.value_from else {
        return Ok(String::new());
    };
    if let Some(r) = &from.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let value = api
            .get_opt(&r.name)
            .await?
            .and_then(|cm| cm.data)
            .and_then(|mut d| d.remove(&r.key));
        return match value {
            Some(v) => Ok(v),
            None if r.optional == Some(true) => Ok(String::new()),
            None => Err(LabError::Invalid(format!(
                "env {}: key {} of ConfigMap {ns}/{} not found",
                e.name, r.key, r.name
            ))),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let value = api
            .get_opt(&r.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove(&r.key));
        return match value {
            Some(ByteString(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            None if r.optional == Some(true) => Ok(String::new()),
            None => Err(LabError::Invalid(format!(
                "env {}: key {} of Secret {ns}/{} not found",
                e.name, r.key, r.name
            ))),
        };
    }
    if let Some(f) = &from.field_ref {
        let net = fields.network;
        return Ok(match f.field_path.as_str() {
            "metadata.namespace" => ns.to_string(),
            "metadata.name" => fields.pod.to_string(),
            "spec.nodeName" => net
                .map_or("lab-management-node", |n| n.node_name)
                .to_string(),
            "status.podIP" | "status.podIPs" => {
                net.map_or("127.0.0.1".to_string(), |n| n.pod_ip.to_string())
            }
            "status.hostIP" | "status.hostIPs" => {
                net.map_or("127.0.0.1".to_string(), |n| n.host_ip.to_string())
            }
            _ => String::new(),
        });
    }
    Ok(String::new())
}

/// `$(VAR)` references replaced by defined variables, `$$` by `$`; an
/// undefined reference stays as written (Kubernetes' expansion rules).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process arguments: `command` after its program, then `args`, each
/// expanded, then `extra`.
/// The program's arguments: the rest of the container's `command`, or else
/// of the image's entrypoint; then its `args` (both with `$(VAR)` expanded,
/// as the kubelet does); then `extra`.
fn arguments(
    c: &Container,
    env: &BTreeMap<String, String>,
    entrypoint: Vec<String>,
    extra: Vec<String>,
) -> Vec<String> {
    let leading = match c.command.as_ref().filter(|c| !c.is_empty()) {
        Some(command) => command[1..].iter().map(|a| expand(a, env)).collect(),
        None => entrypoint,
    };
    leading
        .into_iter()
        .chain(c.args.iter().flatten().map(|a| expand(a, env)))
        .chain(extra)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_replaces_the_entrypoint_and_args_follow_it() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        let entry = || vec!["csi-attacher".to_string()];
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "args": ["--a=$(A)"]
        }))
        .expect("container");
        assert_eq!(
            arguments(&c, &env, entry(), vec!["--extra".into()]),
            ["csi-attacher", "--a=x", "--extra"]
        );
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "command": ["prog", "--b"], "args": ["--a=$(A)"]
        }))
        .expect("container");
        assert_eq!(arguments(&c, &env, entry(), Vec::new()), ["--b", "--a=x"]);
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = BTreeMap::from([
            ("A".to_string(), "x".to_string()),
            ("B".to_string(), "y".to_string()),
        ]);
        assert_eq!(expand("--a=$(A) --b=$(B)", &vars), "--a=x --b=y");
        assert_eq!(expand("$(C)", &vars), "$(C)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }
}
