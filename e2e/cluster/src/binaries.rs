//! Where the control plane's programs come from. Kubernetes binaries
//! (`kube-apiserver`, `kube-controller-manager`, `kube-scheduler`) are looked
//! up in `KUBE_BIN_DIR`, then as `../shared/tools/<name>.gz` beside the
//! project (unpacked once into `<target>/tools/`), then on `PATH`; etcd in
//! `ETCD_BIN`, then `KUBE_BIN_DIR`, then on `PATH` (Debian's `etcd-server`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The Kubernetes version the lab's control plane is.
pub const KUBERNETES_VERSION: &str = "1.32.13";

/// The programs of one control plane.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
}

impl Binaries {
    /// Finds (and, from the shared tools, unpacks) every program.
    pub fn find() -> Result<Binaries, Error> {
        Ok(Binaries {
            etcd: find_etcd()?,
            kube_apiserver: find_kube("kube-apiserver")?,
            kube_controller_manager: find_kube("kube-controller-manager")?,
            kube_scheduler: find_kube("kube-scheduler")?,
        })
    }
}

/// The workspace root (where `Cargo.lock` is).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$CARGO_TARGET_DIR/tools`, else `<workspace>/target/tools`.
fn tools_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("tools")
}

fn find_kube(name: &'static str) -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let packed = workspace_root()
        .join("../shared/tools")
        .join(format!("{name}.gz"));
    if packed.is_file() {
        return unpack(&packed, &tools_dir().join(name));
    }
    on_path(name).ok_or(Error::BinaryMissing {
        binary: name,
        version: KUBERNETES_VERSION,
    })
}

fn find_etcd() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("ETCD_BIN").map(PathBuf::from) {
        return Ok(path);
    }
    if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
        let path = PathBuf::from(dir).join("etcd");
        if path.is_file() {
            return Ok(path);
        }
    }
    on_path("etcd").ok_or(Error::BinaryMissing {
        binary: "etcd",
        version: KUBERNETES_VERSION,
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Unpacks `packed` (gzip) to `dest` unless a copy newer than it is there.
/// Concurrent unpackers each write their own temporary file and rename it
/// into place, so a reader never sees half a binary.
fn unpack(packed: &Path, dest: &Path) -> Result<PathBuf, Error> {
    let fresh = |d: &Path| -> Option<bool> {
        let (src, dst) = (packed.metadata().ok()?, d.metadata().ok()?);
        Some(dst.modified().ok()? >= src.modified().ok()?)
    };
    if fresh(dest) == Some(true) {
        return Ok(dest.to_path_buf());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    // A temporary file of its own for every unpacker, threads included;
    // removed if anything below fails.
    let tmp = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    let out = tmp
        .as_file()
        .try_clone()
        .map_err(Error::io("open", tmp.path()))?;
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(packed)
        .stdout(out)
        .status()
        .map_err(Error::io("run gzip -dc on", packed))?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "gzip -dc {} failed ({status})",
            packed.display()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("chmod", tmp.path()))?;
    tmp.persist(dest)
        .map_err(|e| Error::io("rename into", dest)(e.error))?;
    tracing::info!(binary = %dest.display(), "unpacked {}", packed.display());
    Ok(dest.to_path_buf())
}
