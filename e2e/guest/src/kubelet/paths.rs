//! Where kubelet keeps CSI volumes on a node, and the names it derives from
//! them, as pure functions: the staging path of a volume
//! (`plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`, or
//! `plugins/kubernetes.io/csi/volumeDevices/staging/<pv>` for a raw block
//! volume), the per-pod publish target (`pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`
//! or `pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>`), the stand-in's
//! record of a published volume, and the VolumeAttachment name the
//! attach-detach controller gives a (volume, driver, node) triple.

use std::path::{Path, PathBuf};

/// `kubernetes.io~csi`: the plugin directory of CSI volumes inside a pod.
const CSI_PLUGIN_DIR: &str = "kubernetes.io~csi";
/// The record file kept next to each published volume (kubelet's name).
pub const RECORD_FILE: &str = "vol_data.json";

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The VolumeAttachment name kube-controller-manager uses:
/// `csi-<hex sha256 of volumeHandle + attacher + node>`.
pub fn attachment_name(volume_handle: &str, attacher: &str, node: &str) -> String {
    format!(
        "csi-{}",
        sha256_hex(format!("{volume_handle}{attacher}{node}").as_bytes())
    )
}

/// `<kubelet_dir>/pods`.
pub fn pods_dir(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir.join("pods")
}

/// `<kubelet_dir>/pods/<uid>`.
pub fn pod_dir(kubelet_dir: &Path, pod_uid: &str) -> PathBuf {
    pods_dir(kubelet_dir).join(pod_uid)
}

/// Where a volume is staged on the node: the global mount of a filesystem
/// volume, or the staging directory of a raw block volume.
pub fn staging_path(
    kubelet_dir: &Path,
    driver: &str,
    volume_handle: &str,
    pv_name: &str,
    block: bool,
) -> PathBuf {
    let csi = kubelet_dir.join("plugins/kubernetes.io/csi");
    if block {
        csi.join("volumeDevices/staging").join(pv_name)
    } else {
        csi.join(driver)
            .join(sha256_hex(volume_handle.as_bytes()))
            .join("globalmount")
    }
}

/// The publish target of volume `pv_name` in pod `pod_uid`: the directory a
/// filesystem volume is mounted on, or the file a raw block device is bound
/// to. This is what the pod's container sees as the volume.
pub fn volume_path(kubelet_dir: &Path, pod_uid: &str, pv_name: &str, block: bool) -> PathBuf {
    let pod = pod_dir(kubelet_dir, pod_uid);
    if block {
        pod.join("volumeDevices").join(CSI_PLUGIN_DIR).join(pv_name)
    } else {
        pod.join("volumes")
            .join(CSI_PLUGIN_DIR)
            .join(pv_name)
            .join("mount")
    }
}

/// `<kubelet_dir>/pods/<uid>/volumes/kubernetes.io~csi`: holds one directory
/// per CSI volume of the pod, with its record (and, for a filesystem
/// volume, its `mount` target).
pub fn pod_csi_dir(kubelet_dir: &Path, pod_uid: &str) -> PathBuf {
    pod_dir(kubelet_dir, pod_uid)
        .join("volumes")
        .join(CSI_PLUGIN_DIR)
}

/// The record of volume `pv_name` published into pod `pod_uid`.
pub fn record_path(kubelet_dir: &Path, pod_uid: &str, pv_name: &str) -> PathBuf {
    pod_csi_dir(kubelet_dir, pod_uid)
        .join(pv_name)
        .join(RECORD_FILE)
}

/// Directories under the pod directory that [`volume_path`] and
/// [`record_path`] create, deepest first, for removal once empty.
pub fn pod_volume_dirs(kubelet_dir: &Path, pod_uid: &str, pv_name: &str) -> Vec<PathBuf> {
    let mut dirs = vec![pod_csi_dir(kubelet_dir, pod_uid).join(pv_name)];
    dirs.extend(pod_dirs(kubelet_dir, pod_uid));
    dirs
}

/// The directories of a pod's volumes and the pod directory, deepest first.
pub fn pod_dirs(kubelet_dir: &Path, pod_uid: &str) -> Vec<PathBuf> {
    let pod = pod_dir(kubelet_dir, pod_uid);
    vec![
        pod_csi_dir(kubelet_dir, pod_uid),
        pod.join("volumeDevices").join(CSI_PLUGIN_DIR),
        pod.join("volumeDevices"),
        pod.join("volumes"),
        pod,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_layout() {
        let k = Path::new("/var/lib/kubelet");
        assert_eq!(
            volume_path(k, "u1", "pvc-1", false),
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pvc-1/mount")
        );
        assert_eq!(
            volume_path(k, "u1", "pvc-1", true),
            Path::new("/var/lib/kubelet/pods/u1/volumeDevices/kubernetes.io~csi/pvc-1")
        );
        assert_eq!(
            record_path(k, "u1", "pvc-1"),
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pvc-1/vol_data.json")
        );
        let staging = staging_path(k, "csi.kubevirt.io", "pvc-abc", "pvc-1", false);
        assert_eq!(
            staging,
            k.join("plugins/kubernetes.io/csi/csi.kubevirt.io")
                .join(sha256_hex(b"pvc-abc"))
                .join("globalmount")
        );
        assert_eq!(
            staging_path(k, "csi.kubevirt.io", "pvc-abc", "pvc-1", true),
            Path::new("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/pvc-1")
        );
        assert!(
            pod_volume_dirs(k, "u1", "pvc-1")
                .iter()
                .all(|d| d.starts_with("/var/lib/kubelet/pods/u1"))
        );
    }

    #[test]
    fn attachment_names_match_kube_controller_manager() {
        // echo -n "" | sha256sum
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // echo -n "pvc-1csi.kubevirt.ionode-a" | sha256sum
        assert_eq!(
            attachment_name("pvc-1", "csi.kubevirt.io", "node-a"),
            "csi-f72beed228100ad265c667fc5b02f01e9229b9627a2140322f2d0717c3616f5e"
        );
        assert_eq!(attachment_name("v", "d", "n").len(), 4 + 64);
        assert_ne!(
            attachment_name("v", "d", "n1"),
            attachment_name("v", "d", "n2")
        );
    }
}
