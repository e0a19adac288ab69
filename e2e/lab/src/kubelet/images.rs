//! Which program stands in for which container image on the management
//! cluster's nodes: a map from image repository (the image without its tag
//! or digest) to the image's entrypoint, a program and its leading
//! arguments. The lab's own map ([`ImageMap::standard`]) runs the hosted
//! control planes' upstream images with the binaries the lab's clusters
//! run, our images with the workspace's binaries, and the Kubernetes CSI
//! sidecars' images with the lab's stand-ins (`lab-csi-sidecar`); a file
//! (`lab up --image-map FILE`) can add or change entries:
//!
//! ```yaml
//! # repository: program [arguments]
//! registry.k8s.io/etcd: etcd                      # the lab's etcd
//! registry.k8s.io/kube-apiserver: kube-apiserver  # the lab's Kubernetes binaries
//! mirror.example/etcd: /usr/local/bin/etcd        # an absolute path
//! mirror.example/csi-attacher: lab-csi-sidecar csi-attacher
//! ```
//!
//! A program is one of `etcd`, `kube-apiserver`, `kube-controller-manager`,
//! `kube-scheduler` (the binaries the lab found), a workspace binary's name
//! (`kubevirt-cloud-controller-manager`, from the build's target directory),
//! or an absolute path. As with an image's `ENTRYPOINT`, a container's
//! `command` replaces the entrypoint (its first word is the program's) and
//! its `args` follow it. A pod with an image the map does not name is not
//! run (it stays Pending, as on a node that cannot pull the image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lab_cluster::Binaries;

use crate::{LabError, daemon};

/// Image repository -> entrypoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageMap {
    entries: BTreeMap<String, Entrypoint>,
}

/// What an image runs: a program and the arguments before the container's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entrypoint {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Entrypoint {
    fn program(program: PathBuf) -> Entrypoint {
        Entrypoint {
            program,
            args: Vec::new(),
        }
    }
}

/// Our images (`quay.io/kubevirt-rs/<binary>`), run by the workspace's binaries.
const OUR_IMAGES: [&str; 3] = [
    "kubevirt-csi-driver",
    "kubevirt-cloud-controller-manager",
    "kubevirt-hcp-manager",
];

/// The Kubernetes CSI sidecars and the snapshot controller
/// (`registry.k8s.io/sig-storage/<name>`), run by the lab's stand-ins
/// (`lab-csi-sidecar <name>`).
pub const SIDECARS: [&str; 6] = [
    "csi-provisioner",
    "csi-attacher",
    "csi-resizer",
    "csi-snapshotter",
    "livenessprobe",
    "snapshot-controller",
];

/// The program standing in for the CSI sidecars' images.
pub const SIDECAR_PROGRAM: &str = "lab-csi-sidecar";

/// The repository of an image reference: without `@digest` and `:tag`.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

impl ImageMap {
    /// The hosted control plane's upstream images (`registry.k8s.io`), ours
    /// (the manager's default registry) and the CSI sidecars'.
    pub fn standard(binaries: &Binaries) -> ImageMap {
        let mut map = ImageMap::default();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if let Some(program) = lab_program(binaries, name) {
                map.entries.insert(
                    format!("registry.k8s.io/{name}"),
                    Entrypoint::program(program),
                );
            }
        }
        for name in OUR_IMAGES {
            map.entries.insert(
                format!("quay.io/kubevirt-rs/{name}"),
                Entrypoint::program(daemon::binary(name)),
            );
        }
        for name in SIDECARS {
            map.entries.insert(
                format!("registry.k8s.io/sig-storage/{name}"),
                Entrypoint {
                    program: daemon::binary(SIDECAR_PROGRAM),
                    args: vec![name.to_string()],
                },
            );
        }
        map
    }

    /// `self` with the entries of a YAML map (`repository: program [args]`).
    pub fn with_yaml(mut self, text: &str, binaries: &Binaries) -> Result<ImageMap, LabError> {
        let entries: BTreeMap<String, String> =
            serde_yaml::from_str(text).map_err(|e| LabError::Invalid(format!("image map: {e}")))?;
        for (repo, entry) in entries {
            let mut words = entry.split_whitespace().map(str::to_string);
            let program = words
                .next()
                .ok_or_else(|| LabError::Invalid(format!("image map: {repo}: no program given")))?;
            let path = lab_program(binaries, &program).unwrap_or_else(|| {
                if Path::new(&program).is_absolute() {
                    PathBuf::from(&program)
                } else {
                    daemon::binary(&program)
                }
            });
            if !path.is_file() {
                return Err(LabError::Invalid(format!(
                    "image map: {repo}: program {} not found",
                    path.display()
                )));
            }
            self.entries.insert(
                repository(&repo).to_string(),
                Entrypoint {
                    program: path,
                    args: words.collect(),
                },
            );
        }
        Ok(self)
    }

    /// The entrypoint of `image`, if the map names its repository.
    pub fn entrypoint(&self, image: &str) -> Option<&Entrypoint> {
        self.entries.get(repository(image))
    }
}

fn lab_program(binaries: &Binaries, name: &str) -> Option<PathBuf> {
    match name {
        "etcd" => Some(binaries.etcd.clone()),
        "kube-apiserver" => Some(binaries.kube_apiserver.clone()),
        "kube-controller-manager" => Some(binaries.kube_controller_manager.clone()),
        "kube-scheduler" => Some(binaries.kube_scheduler.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tags_and_digests() {
        assert_eq!(
            repository("registry.k8s.io/etcd:3.5.16-0"),
            "registry.k8s.io/etcd"
        );
        assert_eq!(repository("localhost:5000/etcd"), "localhost:5000/etcd");
        assert_eq!(repository("localhost:5000/etcd:v1"), "localhost:5000/etcd");
        assert_eq!(repository("quay.io/x/y@sha256:abc"), "quay.io/x/y");
        assert_eq!(repository("etcd"), "etcd");
    }
}
