//! The job process (PID 2 of the container): from its start by PID 1 to `execve`, in SANDBOX.md's
//! order: session, rlimits, descriptors, working directory, identity, capabilities,
//! no_new_privs, Landlock, seccomp, exec.
//!
//! It runs in a child of the single-threaded PID 1 that shares PID 1's memory until it execs
//! (`CLONE_VM | CLONE_VFORK`, see `sys::spawn_shared_vm`; PID 1 waits meanwhile), so allocating is
//! safe here, and nothing here may free or take what PID 1 keeps using. On any failure it writes
//! one line to the error pipe (`S` = Corral's setup failed, `E` = the command could not be
//! executed) and exits with 127; a successful exec closes the pipe with nothing written.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setresgid, setresuid, Gid, Uid};

use crate::rootfs::WORKDIR;
use crate::sys;
use crate::wire::JobRequest;

/// Descriptor number the error pipe is moved to in the job process.
const ERROR_FD: RawFd = 3;

/// Set by the job right before each `execve` and cleared when one fails. The job shares PID 1's
/// memory until it execs (see `sys::spawn_shared_vm`), so this is PID 1's to read afterwards:
/// a job that died silently while it was clear may have died inside the allocator of that shared
/// memory (a SIGKILL from outside, or the OOM killer, during its set-up).
static AT_EXEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// PID 1, before starting the job: nothing reached exec yet.
pub fn clear_at_exec() {
    AT_EXEC.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// PID 1, once the job has exec'd or died: whether it was past its last allocation.
pub fn reached_exec() -> bool {
    AT_EXEC.load(std::sync::atomic::Ordering::SeqCst)
}

/// The job's standard streams and PID 1's error pipe.
pub struct JobFds {
    /// Read end of stdin.
    pub stdin: OwnedFd,
    /// Write end of stdout.
    pub stdout: OwnedFd,
    /// Write end of stderr.
    pub stderr: OwnedFd,
    /// Write end of the error pipe (close-on-exec).
    pub error: OwnedFd,
}

/// Become the job and exec its command. Never returns.
pub fn exec_job(req: &JobRequest, fds: JobFds) -> ! {
    if let Err(e) = install_fds(&fds) {
        sys::write_and_exit(fds.error.as_raw_fd(), format!("S{e}").as_bytes(), 127);
    }
    // Every descriptor above the error pipe is closed now: forget the originals, never close them
    // again (their numbers may be reused by Landlock or seccomp below).
    std::mem::forget(fds);
    let error = match prepare(req) {
        Ok(()) => match exec(req) {
            Ok(never) => match never {},
            Err(e) => format!("E{e}"),
        },
        Err(e) => format!("S{e}"),
    };
    sys::write_and_exit(ERROR_FD, error.as_bytes(), 127)
}

fn prepare(req: &JobRequest) -> Result<(), String> {
    sys::reset_signals().map_err(|e| format!("reset signals: {e}"))?;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // PID 1 is not dumpable; the job must be, or its own /proc files stay owned by the host's root
    // (unmapped inside a user namespace) and it could not even set its OOM score.
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("dumpable: {e}"))?;
    // The job is always the OOM killer's first choice, inside its cgroup and on the host.
    std::fs::write("/proc/self/oom_score_adj", "1000")
        .map_err(|e| format!("oom_score_adj: {e}"))?;
    set_rlimits(req)?;
    enter_workdir()?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    drop_identity(req.uid, req.gid)?;
    restrict(req)
}

fn set_rlimits(req: &JobRequest) -> Result<(), String> {
    let r = &req.rlimits;
    let limits = [
        (Resource::RLIMIT_CPU, r.cpu_secs),
        (Resource::RLIMIT_FSIZE, r.fsize),
        (Resource::RLIMIT_NOFILE, r.nofile),
        (Resource::RLIMIT_STACK, r.stack),
        (Resource::RLIMIT_NPROC, r.nproc),
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_MEMLOCK, 0),
        (Resource::RLIMIT_MSGQUEUE, 0),
    ];
    for (resource, value) in limits {
        setrlimit(resource, value, value).map_err(|e| format!("setrlimit {resource:?}: {e}"))?;
    }
    Ok(())
}

/// stdin/stdout/stderr on 0/1/2, the error pipe on 3 (close-on-exec), everything else closed.
fn install_fds(fds: &JobFds) -> Result<(), String> {
    // Copy every source above the targets first so no dup2 clobbers another source.
    let moved: Vec<OwnedFd> = [&fds.stdin, &fds.stdout, &fds.stderr, &fds.error]
        .into_iter()
        .map(|fd| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .map(sys::adopt_received_fd)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("dup: {e}"))?;
    for (target, fd) in moved.iter().take(3).enumerate() {
        sys::dup2_raw(fd.as_raw_fd(), target as RawFd).map_err(|e| format!("dup2: {e}"))?;
    }
    sys::dup3_cloexec_raw(moved[3].as_raw_fd(), ERROR_FD).map_err(|e| format!("dup3: {e}"))?;
    drop(moved);
    sys::close_from(ERROR_FD as u32 + 1).map_err(|e| format!("close_range: {e}"))
}

/// chdir into the working directory and check that the kernel agrees where we are (no leaked
/// directory descriptor can put the job outside its root; CVE-2024-21626).
fn enter_workdir() -> Result<(), String> {
    nix::unistd::chdir(WORKDIR).map_err(|e| format!("chdir {WORKDIR}: {e}"))?;
    let cwd = nix::unistd::getcwd().map_err(|e| format!("getcwd: {e}"))?;
    if cwd.as_os_str() != WORKDIR {
        return Err(format!(
            "working directory is {} instead of {WORKDIR}",
            cwd.display()
        ));
    }
    Ok(())
}

fn drop_identity(uid: u32, gid: u32) -> Result<(), String> {
    sys::drop_bounding_set().map_err(|e| format!("drop bounding set: {e}"))?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    sys::clear_capabilities().map_err(|e| format!("clear capabilities: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if Uid::current().is_root() || Uid::effective().is_root() {
        return Err("still root after dropping identity".to_string());
    }
    Ok(())
}

fn restrict(req: &JobRequest) -> Result<(), String> {
    let rules = crate::landlock::Rules {
        read_exec: vec!["/".into()],
        read_write: vec![WORKDIR.into(), "/tmp".into(), "/dev/shm".into()],
        write_files: vec!["/dev/null".into(), "/dev/zero".into(), "/dev/full".into()],
        network: req.network,
    };
    crate::landlock::restrict(&rules, req.require_landlock)
        .map_err(|e| format!("landlock: {e}"))?;
    let filters = crate::seccomp::filter().map_err(|e| format!("seccomp: {e}"))?;
    crate::seccomp::install(filters).map_err(|e| format!("seccomp: {e}"))
}

/// Exec `argv[0]`, searching the job's PATH when it has no `/`.
fn exec(req: &JobRequest) -> Result<std::convert::Infallible, String> {
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let argv: Vec<CString> = req.argv.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = req
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let program = argv.first().ok_or("empty command")?;
    let candidates = candidates(&req.argv[0], &req.env)?;
    let (argv_ptrs, envp_ptrs) = (sys::ExecArray::new(&argv), sys::ExecArray::new(&envp));
    let mut last = nix::Error::ENOENT;
    for path in &candidates {
        // Nothing allocates from here to the kernel (see AT_EXEC).
        AT_EXEC.store(true, std::sync::atomic::Ordering::SeqCst);
        let error = sys::execve(path, &argv_ptrs, &envp_ptrs);
        AT_EXEC.store(false, std::sync::atomic::Ordering::SeqCst);
        match error {
            e @ (nix::Error::ENOENT | nix::Error::ENOTDIR) if candidates.len() > 1 => last = e,
            nix::Error::EACCES if candidates.len() > 1 => last = nix::Error::EACCES,
            e => return Err(exec_message(program, e)),
        }
    }
    Err(exec_message(program, last))
}

fn exec_message(program: &CStr, e: nix::Error) -> String {
    format!("cannot execute {}: {}", program.to_string_lossy(), e.desc())
}

fn candidates(program: &str, env: &[(String, String)]) -> Result<Vec<CString>, String> {
    if program.contains('/') {
        return Ok(vec![CString::new(program).map_err(|_| "NUL in command")?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/bin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| CString::new(format!("{dir}/{program}")).map_err(|_| "NUL in PATH".to_string()))
        .collect()
}

/// Read what the job process reported before exec (nothing when exec succeeded).
pub enum JobStart {
    /// The command is running.
    Started,
    /// Corral failed to set the job up.
    SetupFailed(String),
    /// The command could not be executed.
    ExecFailed(String),
}

/// Interpret the bytes read from the error pipe.
pub fn parse_start(bytes: &[u8]) -> JobStart {
    let text = String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()).into_owned();
    match bytes.first() {
        None => JobStart::Started,
        Some(b'E') => JobStart::ExecFailed(text),
        Some(_) => JobStart::SetupFailed(text),
    }
}
