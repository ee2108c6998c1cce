//! Layer files on disk: making an EROFS file from a directory, mounting it read-only, and
//! turning an overlayfs upper directory into a layer that works as a lower in either xattr mode.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

/// How a layer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerFormat {
    /// One EROFS file, mounted read-only once per node; the digest is the file's sha256.
    Erofs,
    /// A plain directory; the digest is the sha256 of its deterministic tar ([`crate::tarball`]).
    Dir,
}

/// Filesystem UUID written into every EROFS layer, so identical trees give identical files.
const FIXED_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Errors of layer operations.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// mkfs.erofs could not be started or failed.
    #[error("mkfs.erofs {dir}: {detail}")]
    MkfsErofs {
        /// Source directory.
        dir: PathBuf,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// mount(2) of an EROFS file failed.
    #[error("mounting {file} at {target}: {source}")]
    Mount {
        /// The EROFS file.
        file: PathBuf,
        /// Mount point.
        target: PathBuf,
        /// Errno.
        source: nix::Error,
    },
    /// Some other filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether this node can build and mount EROFS layers: the kernel knows the filesystem and
/// `mkfs.erofs` (Debian package erofs-utils) is installed.
pub fn erofs_available() -> bool {
    let kernel = std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("erofs"))
        })
        .unwrap_or(false);
    kernel
        && Command::new("mkfs.erofs")
            .arg("--help")
            .output()
            .map(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
            .unwrap_or(false)
}

/// Write `dir` as an EROFS file at `out`, keeping ownership, modes, xattrs and per-file mtimes
/// (Python's bytecode caches check source mtimes: flattening them would make every start
/// recompile). The UUID is fixed; the superblock still records the build time, so two builds of
/// the same tree differ in a few bytes (erofs-utils 1.5 can only fix it by clamping every mtime).
pub fn make_erofs(dir: &Path, out: &Path) -> Result<(), LayerError> {
    let output = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--preserve-mtime")
        .arg(format!("-U{FIXED_UUID}"))
        .arg(out)
        .arg(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .map_err(|e| LayerError::MkfsErofs {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(LayerError::MkfsErofs {
            dir: dir.to_path_buf(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Mount an EROFS file read-only at `target` (created if missing), straight from the file: the
/// kernel (6.12+) needs no loop device.
pub fn mount_erofs(file: &Path, target: &Path) -> Result<(), LayerError> {
    std::fs::create_dir_all(target).map_err(io_err("creating mount point", target))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount(Some(file), target, Some("erofs"), flags, None::<&str>).map_err(|source| {
        LayerError::Mount {
            file: file.to_path_buf(),
            target: target.to_path_buf(),
            source,
        }
    })
}

/// Detach the mount at `target` if there is one (jobs still using it keep it until they end).
pub fn unmount(target: &Path) {
    if is_mount_point(target) {
        if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
            tracing::warn!(target = %target.display(), error = %e, "unmounting layer");
        }
    }
}

/// Make an overlayfs upper directory usable as a lower layer in both xattr modes: every opaque
/// directory (`trusted.overlay.opaque=y`) also gets `user.overlay.opaque=y` (what overlayfs reads
/// with `userxattr`, inside a user namespace), and the other `trusted.overlay.*` bookkeeping
/// (origin, impure, redirect) that only meant something to the build's own mount is removed.
/// Whiteouts (character devices 0:0) are already in overlay form and stay.
pub fn finish_upper(dir: &Path) -> Result<(), LayerError> {
    // `xattr::list`/`get`/`set`/`remove` never follow symlinks.
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("reading", dir))?;
    for name in xattr::list(dir).map_err(io_err("listing xattrs of", dir))? {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("trusted.overlay.") {
            continue;
        }
        if name == "trusted.overlay.opaque" {
            let value = xattr::get(dir, name).map_err(io_err("reading xattr of", dir))?;
            if value.as_deref() == Some(b"y") {
                xattr::set(dir, "user.overlay.opaque", b"y")
                    .map_err(io_err("setting user.overlay.opaque on", dir))?;
            }
        } else {
            xattr::remove(dir, name).map_err(io_err("removing xattr of", dir))?;
        }
    }
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err("listing", dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err("listing", dir))?;
        entries.sort();
        for entry in entries {
            finish_upper(&entry)?;
        }
    }
    Ok(())
}

/// Total bytes of regular files under `dir` (a directory layer's size).
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += tree_size(&entry?.path())?;
    }
    Ok(total)
}

/// Detach every mount at or below `dir`, deepest first (e.g. what an interrupted mmdebstrap left
/// in a staging root), so that removing `dir` can never reach into a mounted host filesystem.
pub fn unmount_beneath(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!(point = %point.display(), error = %e, "unmounting leftover build mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_beneath_detaches_nested_mounts_deepest_first() {
        assert!(nix::unistd::geteuid().is_root(), "needs root: mounts tmpfs");
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("a b");
        std::fs::create_dir(&outer).unwrap();
        let tmpfs = |p: &Path| {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap()
        };
        tmpfs(&outer);
        let inner = outer.join("inner");
        std::fs::create_dir(&inner).unwrap();
        tmpfs(&inner);
        assert!(is_mount_point(&outer) && is_mount_point(&inner));
        unmount_beneath(dir.path());
        assert!(!is_mount_point(&outer));
        assert_eq!(std::fs::read_dir(&outer).unwrap().count(), 0);
    }
}
