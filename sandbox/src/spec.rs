//! What a caller asks the sandbox to run, and what it gets back.
//!
//! These types are plain data: the worker maps its wire types onto them, so protocol changes never
//! touch security code.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A root filesystem for the container: read-only layers stacked by overlayfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Name shown in errors and logs.
    pub name: String,
    /// Layer directories, lowest first. Each must be a directory tree owned by root.
    pub layers: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same path inside the container (the `host`
    /// image uses this for /usr, /lib, ...). Never writable, never with setuid or device files.
    pub host_binds: Vec<PathBuf>,
    /// Environment the image defines (PATH, LANG, ...); the job's own variables are added after.
    pub env: Vec<(String, String)>,
}

/// A file copied into the job's working directory before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIn {
    /// A plain relative name: no `/`, no `..`, not empty (checked by [`crate::files::check_name`]).
    pub name: String,
    /// File contents.
    pub contents: Vec<u8>,
    /// Permission bits (e.g. 0o644, 0o755); setuid/setgid/sticky bits are dropped.
    pub mode: u32,
}

/// Where the job's standard input comes from.
#[derive(Debug, Default)]
pub enum Stdin {
    /// End of file at once.
    #[default]
    Empty,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// The read end of a pipe that the caller feeds from another thread (interactive use); the job
    /// sees end of file when the caller closes the write end. See [`crate::stdin_pipe`].
    Pipe(OwnedFd),
}

/// Every limit a job runs under. All have defaults ([`Limits::default`]); callers clamp to their
/// own maxima before building a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time of all processes and threads of the job together.
    pub cpu_time: Duration,
    /// Wall-clock time from start to exit, on the supervisor's monotonic clock.
    pub wall_time: Duration,
    /// Memory (RAM + swap) of the whole job, including files it writes to its tmpfs.
    pub memory_bytes: u64,
    /// Processes and threads the job may have at once.
    pub processes: u32,
    /// Bytes kept per output stream (stdout, stderr); past it the job is killed.
    pub output_bytes: u64,
    /// Largest file the job may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Open file descriptors per process (RLIMIT_NOFILE).
    pub open_files: u32,
    /// Stack size per process (RLIMIT_STACK).
    pub stack_bytes: u64,
    /// Size of the job's private tmpfs: working directory, /tmp, /dev/shm and overlay upper.
    pub disk_bytes: u64,
    /// Inodes of that tmpfs.
    pub disk_inodes: u64,
    /// Optional CPU bandwidth cap in thousandths of a CPU (1000 = one full core).
    pub cpu_quota_millicpus: Option<u32>,
}

const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_time: Duration::from_secs(2),
            wall_time: Duration::from_secs(5),
            memory_bytes: 256 * MIB,
            processes: 64,
            output_bytes: MIB,
            file_size_bytes: 16 * MIB,
            open_files: 256,
            stack_bytes: 64 * MIB,
            disk_bytes: 64 * MIB,
            disk_inodes: 16 * 1024,
            cpu_quota_millicpus: None,
        }
    }
}

/// One command to run in a fresh container.
#[derive(Debug, Default)]
pub struct Spec {
    /// Root filesystem.
    pub image: Image,
    /// The command; `argv[0]` without a `/` is looked up in the job's PATH inside the container.
    pub argv: Vec<String>,
    /// Extra environment variables (after the image's). Nothing of the host's leaks in.
    pub env: Vec<(String, String)>,
    /// Files placed in the working directory before start.
    pub files: Vec<FileIn>,
    /// Standard input.
    pub stdin: Stdin,
    /// Limits.
    pub limits: Limits,
    /// Grant a private network namespace with loopback up and TCP allowed. Off: no interface is up
    /// and Landlock denies every TCP bind and connect.
    pub network: bool,
    /// Names of files in the working directory to read back after the job ends (at most
    /// `collect_max_bytes` each); read safely, see [`crate::files`].
    pub collect: Vec<String>,
    /// Size cap of each collected file.
    pub collect_max_bytes: u64,
    /// Stops the job when cancelled (before or while it runs); the outcome is then
    /// [`Status::Cancelled`].
    pub cancel: Option<CancelToken>,
}

/// A switch that stops a job from another thread: [`CancelToken::cancel`] kills the job it was
/// given to (through [`Spec::cancel`]), at once if it is running, before start if it is not. Clones
/// share the switch; once cancelled it stays cancelled.
///
/// It is a non-blocking pipe: cancelling writes one byte that is never read, so the read end stays
/// readable and the supervisor's `poll(2)` loop wakes up on it (no polling interval is added).
#[derive(Debug, Clone)]
pub struct CancelToken(Arc<CancelPipe>);

#[derive(Debug)]
struct CancelPipe {
    read: OwnedFd,
    write: OwnedFd,
    cancelled: AtomicBool,
}

impl CancelToken {
    /// A new switch, not cancelled.
    pub fn new() -> Result<CancelToken, crate::Error> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(crate::Error::nix("pipe"))?;
        Ok(CancelToken(Arc::new(CancelPipe {
            read,
            write,
            cancelled: AtomicBool::new(false),
        })))
    }

    /// Cancel (idempotent, callable from any thread).
    pub fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::SeqCst) {
            // An empty pipe with a 64 KiB buffer always takes one byte; nothing to do on error.
            let _ = nix::unistd::write(&self.0.write, b"c");
        }
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// The descriptor that becomes readable once cancelled.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.read.as_fd()
    }
}

/// How a job ended. Computed only from data the supervisor owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exited 0 within every limit.
    Ok,
    /// Non-zero exit or a fatal signal.
    RuntimeError,
    /// CPU or wall time limit reached (see [`Outcome::limit`]).
    TimeLimit,
    /// The memory cgroup's OOM killer fired.
    MemoryLimit,
    /// An output stream went past its cap.
    OutputLimit,
    /// Corral itself failed to run the job.
    InternalError,
    /// Stopped by its [`Spec::cancel`] token (the job was killed, or never started).
    Cancelled,
}

/// Which time limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeLimitKind {
    /// CPU time of the whole job.
    Cpu,
    /// Wall-clock time.
    Wall,
}

/// A file read back from the job's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOut {
    /// The name asked for.
    pub name: String,
    /// Contents, or why it was refused (missing, not a regular file, a link, too large).
    pub contents: Result<Vec<u8>, String>,
    /// Permission bits of the file as the job left them.
    pub mode: u32,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Overall status, by the precedence of SANDBOX.md step 22.
    pub status: Status,
    /// Set when `status` is [`Status::TimeLimit`].
    pub limit: Option<TimeLimitKind>,
    /// Exit code when the job exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the job was killed by a signal.
    pub signal: Option<i32>,
    /// CPU time of every process and thread of the job (cgroup accounting).
    pub cpu_time: Duration,
    /// Wall time on the supervisor's monotonic clock.
    pub wall_time: Duration,
    /// Peak memory of the job's cgroup.
    pub memory_peak_bytes: u64,
    /// Standard output, at most `output_bytes`.
    pub stdout: Vec<u8>,
    /// Standard error, at most `output_bytes`.
    pub stderr: Vec<u8>,
    /// Stdout went past the cap.
    pub stdout_truncated: bool,
    /// Stderr went past the cap.
    pub stderr_truncated: bool,
    /// Files read back, in the order asked.
    pub files: Vec<FileOut>,
    /// For [`Status::InternalError`]: what failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn readable(token: &CancelToken) -> bool {
        let mut fds = [PollFd::new(token.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn cancel_token_wakes_poll_and_stays_cancelled() {
        let token = CancelToken::new().unwrap();
        let other = token.clone();
        assert!(!token.is_cancelled());
        assert!(!readable(&token));
        let t = std::thread::spawn(move || other.cancel());
        t.join().unwrap();
        assert!(token.is_cancelled());
        assert!(readable(&token));
        token.cancel();
        assert!(readable(&token), "a second cancel changes nothing");
    }
}
