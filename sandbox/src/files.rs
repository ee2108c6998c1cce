//! Files in and out of the job's working directory.
//!
//! In: names are checked here, once, before anything is written ([`check_name`]).
//! Out: read back by PID 1 *after* it has dropped to the slot's unprivileged uid and every job
//! process is dead, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! `O_NOFOLLOW | O_NONBLOCK`, regular files with one link only, size capped: no symlink, hard link,
//! FIFO, device or sparse-file trick reaches anything but the job's own files.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use crate::sys;

/// Longest file name accepted.
pub const MAX_NAME: usize = 255;

/// Why a file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// Empty name.
    #[error("file name is empty")]
    Empty,
    /// `.` or `..`, or a `/` in the name.
    #[error("file name {0:?} must be a plain name: no '/', not '.' or '..'")]
    NotPlain(String),
    /// NUL or another control character.
    #[error("file name {0:?} contains a control character")]
    Control(String),
    /// Longer than [`MAX_NAME`] bytes.
    #[error("file name is longer than {MAX_NAME} bytes")]
    TooLong,
}

/// Accept only plain names directly inside the working directory.
pub fn check_name(name: &str) -> Result<(), FileNameError> {
    if name.is_empty() {
        return Err(FileNameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(FileNameError::TooLong);
    }
    if name == "." || name == ".." || name.contains('/') {
        return Err(FileNameError::NotPlain(name.to_string()));
    }
    if name.chars().any(char::is_control) {
        return Err(FileNameError::Control(name.to_string()));
    }
    Ok(())
}

/// Read `name` from the directory `dir` without following anything the job controls.
/// Returns the contents and mode bits, or why the file was refused.
pub fn read_back(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    cap: u64,
) -> Result<(Vec<u8>, u32), String> {
    check_name(name).map_err(|e| e.to_string())?;
    let path = CString::new(name).map_err(|_| "file name contains NUL".to_string())?;
    let flags =
        (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            as u64;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let fd = sys::openat2(dir, &path, flags, resolve).map_err(|e| match e {
        nix::Error::ENOENT => "not found".to_string(),
        nix::Error::ELOOP => "is a symbolic link".to_string(),
        e => format!("cannot open: {e}"),
    })?;
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.nlink() != 1 {
        return Err("has more than one link".to_string());
    }
    if meta.len() > cap {
        return Err(format!("larger than the cap of {cap} bytes"));
    }
    let mut contents = Vec::with_capacity(meta.len() as usize);
    // The file may grow between fstat and read only if a job process is alive; none is. Cap anyway.
    file.by_ref()
        .take(cap + 1)
        .read_to_end(&mut contents)
        .map_err(|e| format!("cannot read: {e}"))?;
    if contents.len() as u64 > cap {
        return Err(format!("larger than the cap of {cap} bytes"));
    }
    Ok((contents, meta.mode() & 0o7777))
}

/// Open a directory for [`read_back`].
pub fn open_dir(path: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn names_must_be_plain() {
        assert!(check_name("main.c").is_ok());
        assert!(check_name("a b-c_d.1").is_ok());
        for bad in ["", ".", "..", "../x", "/etc/passwd", "a/b", "x\0y", "x\ny"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(check_name(&"x".repeat(256)), Err(FileNameError::TooLong));
    }

    #[test]
    fn read_back_refuses_links_fifos_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("ok"), b"hello").unwrap();
        std::fs::write(p.join("big"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        std::fs::write(p.join("a"), b"x").unwrap();
        std::fs::hard_link(p.join("a"), p.join("hard")).unwrap();
        nix::unistd::mkfifo(
            &p.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        let d = open_dir(p.to_str().unwrap()).unwrap();
        let fd = d.as_fd();
        assert_eq!(read_back(fd, "ok", 10).unwrap().0, b"hello");
        assert!(read_back(fd, "big", 10).unwrap_err().contains("cap"));
        assert!(read_back(fd, "link", 10)
            .unwrap_err()
            .contains("symbolic link"));
        assert!(read_back(fd, "hard", 10)
            .unwrap_err()
            .contains("more than one link"));
        assert!(read_back(fd, "fifo", 10)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_back(fd, "sub", 10)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_back(fd, "missing", 10)
            .unwrap_err()
            .contains("not found"));
        assert!(read_back(fd, "../ok", 10).is_err());
    }
}
