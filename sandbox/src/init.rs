//! PID 1 of the container: builds the root, starts the job as PID 2, reaps every process, and when
//! the job exits takes every remaining process of the namespace with it. Then it drops to the slot's
//! unprivileged uid, reads back the files asked for, writes one [`Report`] and exits.
//!
//! It is a fresh clone of the single-threaded spawner, so allocating here is safe. The job cannot
//! signal it (PID 1 ignores signals it has no handler for from inside its namespace, and Landlock
//! scopes signals), cannot see it (`hidepid`, other uid) and cannot ptrace it (not dumpable, seccomp).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setresgid, setresuid, Gid, Pid, Uid};

use crate::job::{self, JobFds, JobStart};
use crate::rootfs::{self, RealSys, WORKDIR};
use crate::sys;
use crate::wire::{read_blob, recv_frame, write_frame, FileReport, JobExit, JobRequest, Report};

/// Largest input file blob a prepared PID 1 accepts from the spawner (the spawner caps it too).
const MAX_INPUT_BLOB: u64 = 1 << 30;

/// Descriptors PID 1 receives from the spawner.
pub struct InitFds {
    /// The job's stdin (read end).
    pub stdin: OwnedFd,
    /// The job's stdout (write end).
    pub stdout: OwnedFd,
    /// The job's stderr (write end).
    pub stderr: OwnedFd,
    /// Where the report goes (write end).
    pub report: OwnedFd,
    /// With a user namespace: the pipe PID 1 waits on until its maps are written.
    pub sync: Option<OwnedFd>,
    /// For PID 1 cloned by the supervisor itself: the pipe it waits on, once its root is built,
    /// before it starts the job. The supervisor sets the slot's limits meanwhile (on the other
    /// core), then writes one byte; end of file means it gave up, and no job runs.
    pub go: Option<OwnedFd>,
    /// Cgroup `tasks`/`cgroup.procs` files (opened by the parent) PID 1 joins before anything else,
    /// then it enters a new cgroup namespace rooted there. Empty when it was cloned inside the
    /// slot's cgroups (from the spawner) and already is in a cgroup namespace of its own.
    pub join: Vec<OwnedFd>,
    /// The CPUs PID 1 (and so the job) may run on, when the parent moved it onto the others right
    /// after the clone so that it builds the root beside the parent instead of queued behind it
    /// (see `SteerAway` in `slot`). Restored once the go byte has arrived: the parent has moved it
    /// by then, so nothing overwrites the restored mask.
    pub restore_affinity: Option<nix::sched::CpuSet>,
}

/// Run PID 1, building the root for `req` first. Never returns.
pub fn init_main(req: &JobRequest, blobs: &[Vec<u8>], fds: InitFds) -> ! {
    let mut keep = vec![
        fds.stdin.as_raw_fd(),
        fds.stdout.as_raw_fd(),
        fds.stderr.as_raw_fd(),
        fds.report.as_raw_fd(),
    ];
    keep.extend(fds.sync.as_ref().map(AsRawFd::as_raw_fd));
    keep.extend(fds.go.as_ref().map(AsRawFd::as_raw_fd));
    let prepared = join_cgroups(fds.join)
        .and_then(|()| close_inherited(&keep))
        .and_then(|()| prepare_root(req, fds.sync))
        .and_then(|()| wait_for_go(fds.go))
        .and_then(|()| restore_affinity(fds.restore_affinity));
    finish(
        req, blobs, fds.stdin, fds.stdout, fds.stderr, fds.report, prepared,
    )
}

/// Move this process (still single-threaded, before it runs anything of the job) into the slot's
/// cgroups, then root a new cgroup namespace there, so the job sees its own cgroup as `/`.
///
/// PID 1 moves itself by writing "0" to each v1 `tasks` file: a single thread moving itself skips
/// the kernel's global threadgroup lock, whose write side waits for an RCU grace period (measured
/// here: 15 µs instead of ~12 ms under load for the parent writing PID 1's pid).
fn join_cgroups(files: Vec<OwnedFd>) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    for file in files {
        let mut file = std::fs::File::from(file);
        std::io::Write::write_all(&mut file, b"0")
            .map_err(|e| format!("joining the slot's cgroup: {e}"))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("new cgroup namespace: {e}"))
}

/// Wait until the supervisor lets the job start (see [`InitFds::go`]).
fn wait_for_go(go: Option<OwnedFd>) -> Result<(), String> {
    let Some(go) = go else { return Ok(()) };
    let mut byte = [0u8; 1];
    match std::fs::File::from(go).read_exact(&mut byte) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err("the supervisor stopped before the job started".to_string())
        }
        Err(e) => Err(format!("waiting for the supervisor: {e}")),
    }
}

/// Let PID 1, and the job it starts, run on every CPU the parent could (see
/// [`InitFds::restore_affinity`]).
fn restore_affinity(cpus: Option<nix::sched::CpuSet>) -> Result<(), String> {
    let Some(cpus) = cpus else { return Ok(()) };
    nix::sched::sched_setaffinity(Pid::from_raw(0), &cpus)
        .map_err(|e| format!("restoring the CPU affinity: {e}"))
}

/// Run a PID 1 prepared ahead of its job: build the root for `template`, then wait on `sock` for
/// the job itself (a [`JobRequest`] with the same root key, its input blobs, and the stdin, stdout,
/// stderr and report descriptors). End of file on `sock` (the spawner discarded it) ends it. Never
/// returns.
pub fn prepared_main(template: &JobRequest, sock: OwnedFd, sync: Option<OwnedFd>) -> ! {
    let mut keep = vec![sock.as_raw_fd()];
    keep.extend(sync.as_ref().map(AsRawFd::as_raw_fd));
    let prepared = close_inherited(&keep).and_then(|()| prepare_root(template, sync));
    let mut sock = UnixStream::from(sock);
    let Ok(Some((req, fds))) = recv_frame::<JobRequest>(&mut sock) else {
        sys::exit_now(0)
    };
    let blobs: std::io::Result<Vec<Vec<u8>>> = req
        .files
        .iter()
        .map(|f| read_blob(&mut sock, f.len, MAX_INPUT_BLOB))
        .collect();
    drop(sock);
    let Ok::<[OwnedFd; 4], _>([stdin, stdout, stderr, report]) = fds.try_into() else {
        sys::exit_now(1)
    };
    let (blobs, prepared) = match blobs {
        Err(e) => (Vec::new(), Err(format!("receiving the job's files: {e}"))),
        Ok(_) if req.root_key() != template.root_key() => (
            Vec::new(),
            Err("the job does not match the prepared root".to_string()),
        ),
        Ok(blobs) => (blobs, prepared),
    };
    finish(&req, &blobs, stdin, stdout, stderr, report, prepared)
}

/// Hold nothing of the process PID 1 was cloned from (a caller's terminal, sockets, the slot's
/// lease lock) but `keep`.
fn close_inherited(keep: &[RawFd]) -> Result<(), String> {
    sys::close_all_except(keep).map_err(|e| format!("closing inherited descriptors: {e}"))
}

/// Run the job in the root `prepared` built (or report why it could not be), read files back,
/// write the report and exit.
fn finish(
    req: &JobRequest,
    blobs: &[Vec<u8>],
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
    prepared: Result<(), String>,
) -> ! {
    let mut out = Report::default();
    let mut collected = Vec::new();
    let stdio = JobStdio {
        stdin,
        stdout,
        stderr,
    };
    let ran = prepared.and_then(|()| run_job(req, blobs, stdio, &mut out));
    if let Err(e) = ran {
        out.setup_error = Some(e);
    } else if !req.collect.is_empty() {
        collected = collect(req, &mut out);
    }
    let blobs: Vec<&[u8]> = collected.iter().map(Vec::as_slice).collect();
    let mut report = std::fs::File::from(report);
    let code = i32::from(write_frame(&mut report, &out, &blobs).is_err());
    drop(report);
    sys::exit_now(code)
}

struct JobStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Everything that does not depend on the job itself: namespaces settled, root built and entered.
fn prepare_root(req: &JobRequest, sync: Option<OwnedFd>) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    crate::userns::wait_for_release(req, sync)?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    rootfs::apply(&rootfs::plan(req), &[], &mut RealSys::new()).map_err(|e| e.to_string())?;
    if req.network {
        sys::loopback_up().map_err(|e| format!("loopback up: {e}"))?;
    }
    Ok(())
}

/// Write the input files, start the job, wait for it and take every other process with it.
fn run_job(
    req: &JobRequest,
    blobs: &[Vec<u8>],
    stdio: JobStdio,
    out: &mut Report,
) -> Result<(), String> {
    rootfs::apply(&rootfs::input_steps(req), blobs, &mut RealSys::new())
        .map_err(|e| e.to_string())?;
    let (error_r, error_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("error pipe: {e}"))?;
    job::clear_at_exec();
    let job = spawn_job(req, &stdio, &error_w)?;
    drop(stdio);
    drop(error_w);
    // Into a buffer on the stack: until the check below, PID 1 must not allocate.
    let mut started = [0u8; 4096];
    let len = read_all(error_r, &mut started);
    if len == Some(0) && !job::reached_exec() {
        // The job died before exec without a word: killed from outside the sandbox (the OOM
        // killer, root) during its set-up, maybe inside the allocator of the memory it shared
        // with PID 1. PID 1 takes the namespace down and exits without touching that memory;
        // the supervisor reports that PID 1 ended without a report.
        kill_and_reap_all();
        sys::exit_now(2);
    }
    let started = &started[..len.ok_or("reading the error pipe failed")?];
    let start = job::parse_start(started);
    out.exit = Some(wait_job(job));
    kill_and_reap_all();
    match start {
        JobStart::Started => Ok(()),
        JobStart::ExecFailed(e) => {
            out.exec_error = Some(e);
            Ok(())
        }
        JobStart::SetupFailed(e) => Err(e),
    }
}

/// Read `fd` to its end into `buf` (what does not fit is dropped); how many bytes were kept, or
/// `None` on a read error. Allocates nothing.
fn read_all(fd: OwnedFd, buf: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut rest = [0u8; 256];
    loop {
        let target = if len < buf.len() {
            &mut buf[len..]
        } else {
            &mut rest[..]
        };
        match nix::unistd::read(&fd, target) {
            Ok(0) => return Some(len),
            Ok(n) if len < buf.len() => len += n,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Start the job (PID 2) on the descriptors PID 1 holds; it shares PID 1's memory until it
/// execs (see [`sys::spawn_shared_vm`]). Returns once it has exec'd or failed.
fn spawn_job(req: &JobRequest, stdio: &JobStdio, error: &OwnedFd) -> Result<Pid, String> {
    let raw = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
        error.as_raw_fd(),
    ];
    let mut child = || -> libc::c_int {
        // The child's descriptor table is its own copy: these numbers are open in it, and it
        // execs or exits without ever handing them back.
        job::exec_job(
            req,
            JobFds {
                stdin: sys::adopt_received_fd(raw[0]),
                stdout: sys::adopt_received_fd(raw[1]),
                stderr: sys::adopt_received_fd(raw[2]),
                error: sys::adopt_received_fd(raw[3]),
            },
        )
    };
    // SAFETY: PID 1 is a single-threaded clone of a single-threaded process, and `exec_job`
    // ends in execve or _exit without returning.
    #[allow(unsafe_code)]
    unsafe { sys::spawn_shared_vm(&mut child) }.map_err(|e| format!("clone: {e}"))
}

/// Reap every child until the job itself exits; return how it ended.
fn wait_job(job: Pid) -> JobExit {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == job => return JobExit::Code(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == job => {
                return JobExit::Signal(signal as i32)
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            // No child left at all: cannot happen while the job is unreaped.
            Err(_) => return JobExit::Code(-1),
        }
    }
}

/// Kill every other process of the namespace and reap them all.
fn kill_and_reap_all() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while let Ok(_) | Err(nix::Error::EINTR) = waitpid(None, None) {}
}

/// Drop to the slot's uid (no job process is left), then read the files back safely.
fn collect(req: &JobRequest, out: &mut Report) -> Vec<Vec<u8>> {
    let mut blobs = Vec::new();
    let dropped = setresgid(
        Gid::from_raw(req.gid),
        Gid::from_raw(req.gid),
        Gid::from_raw(req.gid),
    )
    .and_then(|()| {
        setresuid(
            Uid::from_raw(req.uid),
            Uid::from_raw(req.uid),
            Uid::from_raw(req.uid),
        )
    });
    let dir = dropped
        .map_err(|e| format!("drop identity: {e}"))
        .and_then(|()| crate::files::open_dir(WORKDIR).map_err(|e| format!("open {WORKDIR}: {e}")));
    for name in &req.collect {
        let read = dir
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|dir| crate::files::read_back(dir.as_fd(), name, req.collect_max_bytes));
        let (len, mode) = match read {
            Ok((contents, mode)) => {
                let len = contents.len() as u64;
                blobs.push(contents);
                (Ok(len), mode)
            }
            Err(e) => (Err(e), 0),
        };
        out.files.push(FileReport {
            name: name.clone(),
            mode,
            len,
        });
    }
    blobs
}
