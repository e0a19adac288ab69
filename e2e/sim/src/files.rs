//! Backing files of simulated volumes and snapshots: sparse creation, growth,
//! a hole-preserving copy (SEEK_DATA/SEEK_HOLE, falling back to skipping
//! zero blocks where the filesystem cannot report holes) and removal.
//!
//! These are blocking calls; the async wrappers run them on the blocking pool.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use crate::Error;

const CHUNK: usize = 1 << 20;

/// Creates `path` as a sparse file of `size` bytes, or grows an existing one
/// to at least `size` (an interrupted earlier attempt leaves a file behind).
pub fn create_sparse(path: &Path, size: u64) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io("create", path))?;
    grow_file(&f, path, size)
}

/// Grows `path` to `size` bytes; never shrinks. Returns the new length.
pub fn grow(path: &Path, size: u64) -> Result<u64, Error> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))?;
    grow_file(&f, path, size)?;
    Ok(f.metadata().map_err(Error::io("stat", path))?.len())
}

fn grow_file(f: &File, path: &Path, size: u64) -> Result<(), Error> {
    let len = f.metadata().map_err(Error::io("stat", path))?.len();
    if len < size {
        f.set_len(size).map_err(Error::io("resize", path))?;
    }
    Ok(())
}

/// Copies `src` to `dst` keeping holes, then grows `dst` to at least `min_size`.
/// `dst` is written under a temporary name and renamed, so it never exists half-copied.
pub fn copy_sparse(src: &Path, dst: &Path, min_size: u64) -> Result<(), Error> {
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    let tmp = tmp_name(dst);
    let input = File::open(src).map_err(Error::io("open", src))?;
    let len = input.metadata().map_err(Error::io("stat", src))?.len();
    let output = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    output
        .set_len(len.max(min_size))
        .map_err(Error::io("resize", &tmp))?;
    let copied = match data_ranges(&input, len) {
        Some(ranges) => ranges
            .into_iter()
            .try_for_each(|(start, end)| copy_range(&input, &output, start, end, false, src, &tmp)),
        None => copy_range(&input, &output, 0, len, true, src, &tmp),
    };
    let result = copied
        .and_then(|()| output.sync_all().map_err(Error::io("sync", &tmp)))
        .and_then(|()| std::fs::rename(&tmp, dst).map_err(Error::io("rename", &tmp)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path`; a missing file is not an error.
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The size of `path` in bytes.
pub fn size(path: &Path) -> Result<u64, Error> {
    Ok(std::fs::metadata(path)
        .map_err(Error::io("stat", path))?
        .len())
}

fn tmp_name(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dst.with_file_name(name)
}

/// The data extents of `f`, or `None` when the filesystem cannot say.
fn data_ranges(f: &File, len: u64) -> Option<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(len).ok()?;
    while pos < end {
        let start = match lseek(f, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(Errno::ENXIO) => break,
            Err(_) => return None,
        };
        let stop = match lseek(f, start, Whence::SeekHole) {
            Ok(s) => s,
            Err(_) => return None,
        };
        ranges.push((start as u64, stop.min(end) as u64));
        pos = stop;
    }
    Some(ranges)
}

fn copy_range(
    input: &File,
    output: &File,
    start: u64,
    end: u64,
    skip_zeroes: bool,
    src: &Path,
    dst: &Path,
) -> Result<(), Error> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = start;
    while off < end {
        let want = usize::try_from(end - off).map_or(CHUNK, |n| n.min(CHUNK));
        let n = input
            .read_at(&mut buf[..want], off)
            .map_err(Error::io("read", src))?;
        if n == 0 {
            break;
        }
        if !(skip_zeroes && buf[..n].iter().all(|b| *b == 0)) {
            output
                .write_all_at(&buf[..n], off)
                .map_err(Error::io("write", dst))?;
        }
        off += n as u64;
    }
    Ok(())
}

/// [`create_sparse`] on the blocking pool.
pub async fn create_sparse_async(path: PathBuf, size: u64) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || create_sparse(&path, size)).await?
}

/// [`grow`] on the blocking pool.
pub async fn grow_async(path: PathBuf, size: u64) -> Result<u64, Error> {
    tokio::task::spawn_blocking(move || grow(&path, size)).await?
}

/// [`copy_sparse`] on the blocking pool.
pub async fn copy_sparse_async(src: PathBuf, dst: PathBuf, min_size: u64) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || copy_sparse(&src, &dst, min_size)).await?
}

/// [`remove`] on the blocking pool.
pub async fn remove_async(path: PathBuf) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || remove(&path)).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_holes() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tempdir", "/tmp"))?;
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        create_sparse(&src, 64 << 20)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&src)
            .map_err(Error::io("open", &src))?;
        f.write_all_at(b"hello", 0)
            .map_err(Error::io("write", &src))?;
        f.write_all_at(b"world", 40 << 20)
            .map_err(Error::io("write", &src))?;
        drop(f);

        copy_sparse(&src, &dst, 128 << 20)?;
        let out = File::open(&dst).map_err(Error::io("open", &dst))?;
        let meta = out.metadata().map_err(Error::io("stat", &dst))?;
        assert_eq!(meta.len(), 128 << 20, "grown to the requested size");
        assert!(
            meta.blocks() * 512 < 8 << 20,
            "holes stay holes: {} blocks",
            meta.blocks()
        );
        let mut buf = [0u8; 5];
        out.read_exact_at(&mut buf, 0)
            .map_err(Error::io("read", &dst))?;
        assert_eq!(&buf, b"hello");
        out.read_exact_at(&mut buf, 40 << 20)
            .map_err(Error::io("read", &dst))?;
        assert_eq!(&buf, b"world");
        assert!(!tmp_name(&dst).exists());

        assert_eq!(grow(&dst, 64 << 20)?, 128 << 20, "never shrinks");
        assert_eq!(grow(&dst, 256 << 20)?, 256 << 20);
        remove(&dst)?;
        remove(&dst)?;
        assert!(!dst.exists());
        Ok(())
    }
}
