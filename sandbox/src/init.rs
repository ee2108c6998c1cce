//! PID 1 of the container: builds the root, forks the job as PID 2, reaps every process, and when
//! the job exits takes every remaining process of the namespace with it. Then it drops to the slot's
//! unprivileged uid, reads back the files asked for, writes one [`Report`] and exits.
//!
//! It is a fresh clone of the single-threaded spawner, so allocating here is safe. The job cannot
//! signal it (PID 1 ignores signals it has no handler for from inside its namespace, and Landlock
//! scopes signals), cannot see it (`hidepid`, other uid) and cannot ptrace it (not dumpable, seccomp).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setresgid, setresuid, ForkResult, Gid, Pid, Uid};

use crate::job::{self, JobFds, JobStart};
use crate::rootfs::{self, RealSys, WORKDIR};
use crate::sys;
use crate::wire::{write_frame, FileReport, JobExit, JobRequest, Report};

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
}

/// Run PID 1. Never returns.
pub fn init_main(req: &JobRequest, blobs: &[Vec<u8>], fds: InitFds) -> ! {
    let InitFds {
        stdin,
        stdout,
        stderr,
        report,
        sync,
    } = fds;
    // Hold nothing of the process it was cloned from (a caller's terminal, sockets, the slot's
    // lease lock): only the job's pipes and the report.
    let mut keep = vec![
        stdin.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
        report.as_raw_fd(),
    ];
    keep.extend(sync.as_ref().map(AsRawFd::as_raw_fd));
    if let Err(e) = sys::close_all_except(&keep) {
        let error = format!("closing inherited descriptors: {e}");
        let out = Report {
            setup_error: Some(error),
            ..Report::default()
        };
        let _ = write_frame(&mut std::fs::File::from(report), &out, &[]);
        sys::exit_now(1);
    }
    let mut out = Report::default();
    let mut collected = Vec::new();
    if let Err(e) = contain_and_run(
        req,
        blobs,
        JobStdio {
            stdin,
            stdout,
            stderr,
        },
        sync,
        &mut out,
    ) {
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

fn contain_and_run(
    req: &JobRequest,
    blobs: &[Vec<u8>],
    stdio: JobStdio,
    sync: Option<OwnedFd>,
    out: &mut Report,
) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    crate::userns::wait_for_maps(sync)?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    rootfs::apply(&rootfs::plan(req), blobs, &mut RealSys).map_err(|e| e.to_string())?;
    if req.network {
        sys::loopback_up().map_err(|e| format!("loopback up: {e}"))?;
    }
    let (error_r, error_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("error pipe: {e}"))?;
    let job = match unsafe_fork()? {
        ForkResult::Child => {
            drop(error_r);
            let JobStdio {
                stdin,
                stdout,
                stderr,
            } = stdio;
            job::exec_job(
                req,
                JobFds {
                    stdin,
                    stdout,
                    stderr,
                    error: error_w,
                },
            )
        }
        ForkResult::Parent { child } => child,
    };
    drop(stdio);
    drop(error_w);
    let mut started = Vec::new();
    std::fs::File::from(error_r)
        .read_to_end(&mut started)
        .map_err(|e| format!("error pipe: {e}"))?;
    let start = job::parse_start(&started);
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

fn unsafe_fork() -> Result<ForkResult, String> {
    // SAFETY: this runs in PID 1 of the container, a single-threaded clone of the single-threaded
    // spawner.
    #[allow(unsafe_code)]
    unsafe { sys::fork() }.map_err(|e| format!("fork: {e}"))
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
