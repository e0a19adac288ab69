//! The node's own account of what it published: one [`VolumeRecord`] per
//! volume per pod, at `pods/<uid>/volumes/kubernetes.io~csi/<pv>/vol_data.json`
//! (kubelet's file name). Written before a volume is staged or published and
//! removed after it is unpublished, so a pod's volumes can be taken down
//! from the node alone, whatever happened to its pod, claim or PV, and so
//! "does another pod on this node still use this volume?" is answered from
//! the node's state.

use std::path::Path;

use super::error::Error;
use super::paths;
use super::volumes::VolumeRecord;

/// Writes `record` (atomically: a temporary file renamed into place).
pub fn write(kubelet_dir: &Path, record: &VolumeRecord) -> Result<(), Error> {
    let path = paths::record_path(kubelet_dir, &record.pod_uid, &record.pv_name);
    let dir = path.parent().unwrap_or(kubelet_dir);
    std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    let body = serde_json::to_vec_pretty(record).map_err(|e| Error::Record {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(Error::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))
}

/// The records of pod `pod_uid`, by PV name.
pub fn of_pod(kubelet_dir: &Path, pod_uid: &str) -> Result<Vec<VolumeRecord>, Error> {
    let dir = paths::pod_csi_dir(kubelet_dir, pod_uid);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", &dir)(e)),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", &dir))?;
        let path = entry.path().join(paths::RECORD_FILE);
        let body = match std::fs::read(&path) {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        let record = serde_json::from_slice(&body).map_err(|e| Error::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        records.push(record);
    }
    records.sort_by(|a: &VolumeRecord, b| a.pv_name.cmp(&b.pv_name));
    Ok(records)
}

/// The uids of pods with a directory on this node.
pub fn pods_on_disk(kubelet_dir: &Path) -> Result<Vec<String>, Error> {
    let dir = paths::pods_dir(kubelet_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", &dir)(e)),
    };
    let mut uids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", &dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            uids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    uids.sort();
    Ok(uids)
}

/// Whether a pod other than `except_uid` has a record of `pv_name` here.
pub fn used_by_other_pod(
    kubelet_dir: &Path,
    pv_name: &str,
    except_uid: &str,
) -> Result<bool, Error> {
    for uid in pods_on_disk(kubelet_dir)? {
        if uid != except_uid && paths::record_path(kubelet_dir, &uid, pv_name).exists() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes `record` and every directory it leaves empty in the pod
/// directory. A directory that is not empty stays: what is in it is not
/// the stand-in's to delete.
pub fn remove(kubelet_dir: &Path, record: &VolumeRecord) -> Result<(), Error> {
    let path = paths::record_path(kubelet_dir, &record.pod_uid, &record.pv_name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &path)(e)),
    }
    remove_empty_pod_dirs(kubelet_dir, &record.pod_uid, &record.pv_name);
    Ok(())
}

/// Removes the empty directories of volume `pv_name` in pod `pod_uid`, up
/// to the pod directory itself.
pub fn remove_empty_pod_dirs(kubelet_dir: &Path, pod_uid: &str, pv_name: &str) {
    remove_empty(paths::pod_volume_dirs(kubelet_dir, pod_uid, pv_name));
}

/// Removes pod `pod_uid`'s directory if nothing is left in it.
pub fn remove_pod_dir_if_empty(kubelet_dir: &Path, pod_uid: &str) {
    remove_empty(paths::pod_dirs(kubelet_dir, pod_uid));
}

fn remove_empty(dirs: Vec<std::path::PathBuf>) {
    for dir in dirs {
        // Fails when missing or not empty (another volume, or data): then it
        // and its parents stay.
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &Path, uid: &str, pv: &str) -> VolumeRecord {
        VolumeRecord {
            pod_uid: uid.into(),
            pv_name: pv.into(),
            volume_handle: format!("{pv}-handle"),
            driver: "csi.kubevirt.io".into(),
            claim_namespace: "ns".into(),
            claim_name: "data".into(),
            block: false,
            staging_path: paths::staging_path(dir, "csi.kubevirt.io", pv, pv, false),
            target_path: paths::volume_path(dir, uid, pv, false),
            attachment: "csi-x".into(),
        }
    }

    #[test]
    fn records_round_trip_and_clean_up() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(Error::io("create", "/tmp"))?;
        let k = tmp.path();
        assert!(of_pod(k, "u1")?.is_empty());
        let a = record(k, "u1", "pvc-a");
        let b = record(k, "u1", "pvc-b");
        write(k, &b)?;
        write(k, &a)?;
        write(k, &record(k, "u2", "pvc-a"))?;
        assert_eq!(of_pod(k, "u1")?, vec![a.clone(), b.clone()]);
        assert_eq!(pods_on_disk(k)?, ["u1", "u2"]);
        assert!(used_by_other_pod(k, "pvc-a", "u1")?);
        assert!(!used_by_other_pod(k, "pvc-b", "u1")?);

        // A volume's data left in its target keeps that directory (and the pod's).
        std::fs::create_dir_all(&a.target_path).map_err(Error::io("create", &a.target_path))?;
        std::fs::write(a.target_path.join("f"), b"x")
            .map_err(Error::io("write", &a.target_path))?;
        remove(k, &a)?;
        remove(k, &b)?;
        assert!(of_pod(k, "u1")?.is_empty());
        assert!(
            a.target_path.join("f").exists(),
            "data is not ours to delete"
        );
        std::fs::remove_dir_all(paths::pod_dir(k, "u1")).map_err(Error::io("remove", k))?;
        remove(k, &record(k, "u2", "pvc-a"))?;
        assert!(
            pods_on_disk(k)?.is_empty(),
            "empty pod directories are removed"
        );
        Ok(())
    }
}
