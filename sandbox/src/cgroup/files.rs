//! The thin file layer under both versions: every failure names the file, and a value that does
//! not parse is an error, never a silent 0 (which is what `cgroups-rs`'s readers return).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// Longest poll interval while waiting for the kernel (freezing, emptying, removing).
const MAX_POLL: Duration = Duration::from_millis(5);

/// The whole file.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    read_text(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A small text file the kernel generates (cgroupfs, /proc) read whole: one open, reads into a
/// 4 KiB buffer (grown when full) until end of file, no stat. These files report a size of 0, so
/// `std::fs::read_to_string` stats them, then starts with a 32-byte read and doubles: nine system
/// calls for a 1 KB mountinfo, where this makes four.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    read_from_start(&std::fs::File::open(path)?)
}

/// A file holding one unsigned number.
pub(super) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim()
        .parse()
        .map_err(|_| parse_error(path.to_path_buf(), text))
}

/// A slot's counter file, read before, during (every CPU poll) and after every job: opened once,
/// then read again from offset 0 (`pread`; cgroupfs produces a counter's contents afresh at each
/// read from the start; not so v1's `cgroup.procs`, whose pid list an open file keeps). An open
/// walks the cgroupfs path, which cost the server ~10 µs per read. A read that fails (the cgroup
/// was removed and made again: the old file answers ENODEV) reopens the file and tries once more.
pub(super) struct Counter {
    path: PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
    /// Opened for writing too (a counter that is reset by writing to it).
    writable: bool,
}

impl Counter {
    pub fn new(path: PathBuf) -> Counter {
        Counter {
            path,
            file: std::sync::Mutex::new(None),
            writable: false,
        }
    }

    /// A counter that [`Counter::write`] resets (v1's `memory.max_usage_in_bytes`).
    pub fn writable(path: PathBuf) -> Counter {
        Counter {
            writable: true,
            ..Counter::new(path)
        }
    }

    fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(&self.path)
    }

    /// Write `value` at offset 0 through the open file (cgroupfs takes each write whole and
    /// ignores the offset and the truncation; in a fixture tree the file then holds exactly
    /// `value`).
    pub fn write(&self, value: &str) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.with_file(|file| {
            file.write_all_at(value.as_bytes(), 0)?;
            file.set_len(value.len() as u64)
        })
    }

    /// `op` on the open file; when that fails (or none is open yet), on the file opened afresh,
    /// once.
    fn with_file<T>(
        &self,
        op: impl Fn(&std::fs::File) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = file.as_ref() {
            if let Ok(done) = op(open) {
                return Ok(done);
            }
        }
        *file = None;
        let open = self.open()?;
        let done = op(&open)?;
        *file = Some(open);
        Ok(done)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file, as of now.
    pub fn read(&self) -> Result<String, CgroupError> {
        self.with_file(read_from_start)
            .map_err(|source| CgroupError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// The number the file holds.
    pub fn read_u64(&self) -> Result<u64, CgroupError> {
        parse_u64(&self.path, &self.read()?)
    }

    /// The value of `key` in a flat keyed file (`key value` lines: `memory.events`, `cpu.stat`,
    /// `memory.oom_control`).
    pub fn read_keyed(&self, key: &str) -> Result<u64, CgroupError> {
        let text = self.read()?;
        parse_keyed(&text, key).ok_or_else(|| parse_error(self.path.clone(), &text))
    }
}

/// `file`'s contents from offset 0, with `pread` (the file offset is never used).
fn read_from_start(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

pub(super) fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The pids listed in a `cgroup.procs` file.
pub(super) fn read_pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = read(path)?;
    text.lines()
        .map(|l| l.trim().parse())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| parse_error(path.to_path_buf(), &text))
}

/// Write to an existing file (never creates one: on cgroupfs every file exists, and in fixture
/// trees a write to a file the kernel would not have must fail the test). Truncating is a no-op on
/// cgroupfs and leaves exactly the last value in a fixture.
pub(super) fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// The I/O error inside a `cgroups-rs` error (keeping errno), or the error itself as text.
pub(super) fn io_error(e: cgroups_rs::fs::error::Error) -> std::io::Error {
    let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match cause {
        Some(io) => match io.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::new(io.kind(), io.to_string()),
        },
        None => std::io::Error::other(e.to_string()),
    }
}

/// A limit as the `i64` cgroups-rs takes; larger values are refused rather than wrapped.
pub(super) fn to_i64(value: u64, path: PathBuf) -> Result<i64, CgroupError> {
    i64::try_from(value).map_err(|_| CgroupError::SetLimit {
        path,
        value: value.to_string(),
        source: std::io::Error::from(ErrorKind::InvalidInput),
    })
}

pub(super) fn parse_error(path: PathBuf, text: &str) -> CgroupError {
    CgroupError::Parse {
        path,
        text: text.chars().take(120).collect(),
    }
}

/// Create a cgroup directory and its missing parents.
pub(super) fn create_dir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Remove a cgroup directory (already gone is fine). The kernel refuses (EBUSY) while a task that
/// was just killed is still being torn down, so that is retried until `deadline`.
pub(super) fn remove_dir(path: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let busy = || std::io::Error::from_raw_os_error(libc::EBUSY);
    let removed = poll_until(deadline, || match std::fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(e),
    });
    match removed {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(CgroupError::Remove {
            path: path.to_path_buf(),
            source: removed.err().unwrap_or_else(busy),
        }),
    }
}

/// Remove the parent cgroup of a just-removed slot cgroup when no other slot is left in it, so
/// that parents (`corral-test-<pid>` ones especially) do not pile up. Another process's slots
/// keep it (EBUSY); a process creating a slot under it at the same time retries (see `open_in`).
pub(super) fn remove_parent_if_empty(slot_dir: &Path) {
    let Some(parent) = slot_dir.parent() else {
        return;
    };
    match std::fs::remove_dir(parent) {
        Ok(()) => tracing::debug!(cgroup = %parent.display(), "removed the empty parent cgroup"),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT)
            ) => {}
        Err(error) => {
            tracing::warn!(cgroup = %parent.display(), %error, "removing the empty parent cgroup")
        }
    }
}

/// Call `done` until it returns true or `deadline` passes, sleeping a little more each time (from
/// 100 µs to [`MAX_POLL`]). Returns the last answer.
pub(super) fn poll_until<E>(
    deadline: Instant,
    mut done: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    let mut pause = Duration::from_micros(100);
    loop {
        if done()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}
