//! The per-slot spawner: a long-lived, single-threaded root process that lives inside its slot's
//! cgroups and its own empty network namespace, and clones each job's PID 1 from there. Jobs thus
//! start in the right cgroup with no per-job migration (which costs 5–12 ms on an idle v1 host) and
//! with no per-job network namespace to create, while nothing passes from one job to the next:
//! mount, pid, ipc, uts and cgroup namespaces are new for every job, and the network namespace has no
//! interface up and nothing a job could configure without capabilities it never has.
//!
//! Protocol on the socket from the supervisor: one [`JobRequest`] frame (with stdin, stdout, stderr
//! and report descriptors) at a time; answers [`SpawnerMsg::Started`] (with a pidfd of PID 1) or
//! `Failed`, then `Exited` once PID 1 is reaped.
//!
//! After each job the spawner clones the next job's PID 1 right away and lets it build its root
//! (namespaces, overlay, /dev, /proc, `pivot_root` and the detach of the old root, whose RCU grace
//! period is the slowest step) while the slot is idle. When the next request has the same root key
//! (image, disk size, network, ids) it is handed to that PID 1; otherwise the prepared one is
//! discarded and a PID 1 is cloned for the request as before. End of file on the socket (the supervisor died)
//! kills the running job and ends the spawner.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};

use crate::init::{init_main, prepared_main, InitFds};
use crate::sys::{self, CloneResult};
use crate::wire::{
    read_blob, recv_frame, send_frame, JobRequest, RootKey, SpawnerMsg, SpawnerSetup,
};

/// argv[1] that makes a binary run [`spawner_main`] (see [`crate::run_helper_if_requested`]).
pub const SPAWNER_ARG: &str = "__corral-sandbox-spawner";
/// The socket's descriptor number in the spawner.
pub const SOCKET_FD: RawFd = 3;
/// Largest input file blob accepted from the supervisor.
const MAX_BLOB: u64 = 1 << 30;

/// Run the spawner on the socket at [`SOCKET_FD`], joining the cgroups named by argv[2..]. Never
/// returns.
pub fn spawner_main() -> ! {
    run_spawner(UnixStream::from(sys::adopt_received_fd(SOCKET_FD)))
}

/// In a child forked (without exec) from a single-threaded process: keep only the socket (as
/// [`SOCKET_FD`]) and stderr, put /dev/null on stdin and stdout, and run the spawner. Never returns.
pub(crate) fn forked_spawner_main(sock: RawFd) -> ! {
    let setup = (|| -> nix::Result<()> {
        sys::dup2_raw(sock, SOCKET_FD)?;
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        )?;
        sys::dup2_raw(null.as_raw_fd(), 0)?;
        sys::dup2_raw(null.as_raw_fd(), 1)?;
        drop(null);
        sys::close_from(SOCKET_FD as u32 + 1)
    })();
    if let Err(e) = setup {
        eprintln!("corral spawner: setting up descriptors: {e}");
        sys::exit_now(1);
    }
    run_spawner(UnixStream::from(sys::adopt_received_fd(SOCKET_FD)))
}

/// Run the spawner on `sock` after joining the cgroups through `cgroup_files`. Never returns.
pub(crate) fn run_spawner(mut sock: UnixStream) -> ! {
    let code = match serve(&mut sock) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("corral spawner: {e}");
            1
        }
    };
    sys::exit_now(code)
}

fn serve(sock: &mut UnixStream) -> std::io::Result<()> {
    let Some((setup, _)) = recv_frame::<SpawnerSetup>(sock)? else {
        return Ok(());
    };
    // Network namespace first: its kernel memory must not be charged to the slot's memory cgroup
    // (where it would count against every job for the namespace's lifetime).
    if let Err(error) =
        enter_netns(setup.netns.as_deref()).and_then(|()| join_cgroups(&setup.cgroup_files))
    {
        return send_frame(sock, &SpawnerMsg::Failed { error }, &[], &[]);
    }
    // The OOM killer must pick the job, never the spawner or PID 1. Lowering the score needs
    // CAP_SYS_RESOURCE, which some hosts withhold even from root; the job raises its own score to the
    // maximum anyway (see `job`), so it is the victim either way.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // The spawner never executes anything, so it needs no capability an execve could grant; every
    // PID 1 and job cloned from it inherits the empty bounding set (a job in a user namespace of
    // its own gets a full one there, and drops it itself).
    if let Err(e) = sys::drop_bounding_set() {
        let error = format!("dropping the capability bounding set: {e}");
        return send_frame(sock, &SpawnerMsg::Failed { error }, &[], &[]);
    }
    // Built once here, inherited by every PID 1 and job cloned from this process.
    if let Err(e) = crate::seccomp::filter() {
        let error = e.to_string();
        return send_frame(sock, &SpawnerMsg::Failed { error }, &[], &[]);
    }
    send_frame(
        sock,
        &SpawnerMsg::Ready {
            pid: std::process::id(),
        },
        &[],
        &[],
    )?;
    let mut prepared: Option<Prepared> = None;
    while let Some((req, fds)) = recv_frame::<JobRequest>(sock)? {
        let mut blobs = Vec::with_capacity(req.files.len());
        for file in &req.files {
            blobs.push(read_blob(sock, file.len, MAX_BLOB)?);
        }
        let Ok::<[OwnedFd; 4], _>([stdin, stdout, stderr, report]) = fds.try_into() else {
            send_frame(
                sock,
                &SpawnerMsg::Failed {
                    error: "expected 4 descriptors".into(),
                },
                &[],
                &[],
            )?;
            continue;
        };
        let fds = InitFds {
            stdin,
            stdout,
            stderr,
            report,
            sync: None,
            go: None,
            join: Vec::new(),
            restore_affinity: None,
        };
        run_one(sock, &req, &blobs, fds, &mut prepared)?;
    }
    Ok(())
}

/// Enter the slot's network namespace: a fresh one, or the persistent one pinned at `pin` (created
/// and pinned there by a bind mount of /proc/self/ns/net if it is not yet).
pub(crate) fn enter_netns(pin: Option<&std::path::Path>) -> Result<(), String> {
    let Some(pin) = pin else {
        return nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("new network namespace: {e}"));
    };
    if let Ok(ns) = std::fs::File::open(pin) {
        if nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).is_ok() {
            return Ok(());
        }
    }
    let err = |op: &str, e: &dyn std::fmt::Display| format!("{op} {}: {e}", pin.display());
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| err("new network namespace for", &e))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pin)
        .map_err(|e| err("create", &e))?;
    let none: Option<&str> = None;
    nix::mount::mount(
        Some("/proc/self/ns/net"),
        pin,
        none,
        nix::mount::MsFlags::MS_BIND,
        none,
    )
    .map_err(|e| err("pin network namespace at", &e))
}

/// Join the slot's cgroups by writing "0" (this process) to each file.
fn join_cgroups(files: &[std::path::PathBuf]) -> Result<(), String> {
    for file in files {
        std::fs::write(file, "0").map_err(|e| format!("joining cgroup {}: {e}", file.display()))?;
    }
    Ok(())
}

/// The namespaces each job's PID 1 gets (a network namespace only when networking is granted:
/// otherwise the slot's empty one is shared).
pub(crate) fn job_namespaces(req: &JobRequest) -> libc::c_int {
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    if req.network {
        flags |= libc::CLONE_NEWNET;
    }
    if req.userns_root.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    flags
}

fn run_one(
    sock: &mut UnixStream,
    req: &JobRequest,
    blobs: &[Vec<u8>],
    fds: InitFds,
    prepared: &mut Option<Prepared>,
) -> std::io::Result<()> {
    let started = match prepared.take() {
        Some(ready) if ready.key == req.root_key() && ready.alive() => ready.start(req, blobs, fds),
        other => {
            if let Some(stale) = other {
                stale.discard();
            }
            // SAFETY: the spawner is single-threaded.
            #[allow(unsafe_code)]
            unsafe {
                clone_init(req, blobs, fds)
            }
        }
    };
    let (pid, pidfd) = match started {
        Ok(started) => started,
        Err(error) => return send_frame(sock, &SpawnerMsg::Failed { error }, &[], &[]),
    };
    let started = SpawnerMsg::Started {
        pid: pid.as_raw() as u32,
    };
    send_frame(sock, &started, &[], &[pidfd.as_raw_fd()])?;
    let status = wait_or_abandon(sock, pid, &pidfd)?;
    // Build the next job's root now, while the slot is idle: most jobs of a slot share their root
    // (image, disk size, network), and then only the job itself is left to do when it arrives.
    // SAFETY: the spawner is single-threaded.
    #[allow(unsafe_code)]
    let next = unsafe { prepare(req) };
    *prepared = next
        .map_err(|e| eprintln!("corral spawner: preparing the next root: {e}"))
        .ok();
    let exited = SpawnerMsg::Exited {
        status,
        prepared: prepared.as_ref().map(|p| p.pid.as_raw() as u32),
    };
    send_frame(sock, &exited, &[], &[])
}

/// A PID 1 whose namespaces and root were built ahead of its job, waiting on its socket for it.
/// Nothing of any job has run in it: it was cloned fresh after the previous job's PID 1 was
/// reaped.
struct Prepared {
    /// The root it built.
    key: RootKey,
    pid: nix::unistd::Pid,
    /// `None` once handed a job (then it is that job's PID 1, supervised as any other).
    pidfd: Option<OwnedFd>,
    sock: UnixStream,
}

impl Prepared {
    /// Whether it is still waiting (not died while building its root).
    fn alive(&self) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return false;
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Hand it the job: the request, the input blobs and the job's four descriptors.
    fn start(
        mut self,
        req: &JobRequest,
        blobs: &[Vec<u8>],
        fds: InitFds,
    ) -> Result<(nix::unistd::Pid, OwnedFd), String> {
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let raw = [
            fds.stdin.as_raw_fd(),
            fds.stdout.as_raw_fd(),
            fds.stderr.as_raw_fd(),
            fds.report.as_raw_fd(),
        ];
        match send_frame(&mut self.sock, req, &refs, &raw) {
            // It is the job's PID 1 now: no longer ours to kill when this handle goes.
            Ok(()) => match self.pidfd.take() {
                Some(pidfd) => Ok((self.pid, pidfd)),
                None => Err("the prepared PID 1 was already handed out".into()),
            },
            Err(e) => Err(format!("handing the job to its prepared PID 1: {e}")),
        }
    }

    /// Kill it and reap it (its root no longer fits the next job).
    fn discard(self) {
        drop(self);
    }
}

impl Drop for Prepared {
    /// Also when the spawner ends: the prepared PID 1 never outlives it, not even as a zombie.
    fn drop(&mut self) {
        if let Some(pidfd) = &self.pidfd {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Clone a PID 1 that builds the root for jobs like `template`, then waits for one.
///
/// # Safety
///
/// The calling process must be single-threaded: the child runs arbitrary code after the clone.
#[allow(unsafe_code)]
unsafe fn prepare(template: &JobRequest) -> Result<Prepared, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let sync = crate::userns::sync_pipe(template)?;
    // SAFETY: forwarded to the caller's contract.
    #[allow(unsafe_code)]
    let cloned = unsafe { sys::clone_with_pidfd(job_namespaces(template)) };
    match cloned {
        Ok(CloneResult::Child) => {
            drop(ours);
            prepared_main(template, OwnedFd::from(theirs), sync.map(|s| s.wait))
        }
        Ok(CloneResult::Parent { pid, pidfd }) => {
            drop(theirs);
            if let Some(sync) = sync {
                if let Err(e) = crate::userns::map_and_release(template, pid, sync) {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(e);
                }
            }
            Ok(Prepared {
                key: template.root_key(),
                pid,
                pidfd: Some(pidfd),
                sock: ours,
            })
        }
        Err(e) => Err(format!("clone: {e}")),
    }
}

/// Clone the job's PID 1 into its namespaces and return its pid and pidfd (once its user namespace
/// is mapped, if asked). With `fds.join` empty it stays in the caller's cgroups (the slot's, when
/// the caller is the spawner); otherwise it moves itself into the cgroups of those files first and
/// gets its cgroup namespace after that. The child runs [`init_main`] and never returns here.
///
/// # Safety
///
/// The calling process must be single-threaded: the child runs arbitrary code after the clone.
#[allow(unsafe_code)]
pub(crate) unsafe fn clone_init(
    req: &JobRequest,
    blobs: &[Vec<u8>],
    mut fds: InitFds,
) -> Result<(nix::unistd::Pid, OwnedFd), String> {
    let sync = crate::userns::sync_pipe(req)?;
    let mut flags = job_namespaces(req);
    if !fds.join.is_empty() {
        flags &= !libc::CLONE_NEWCGROUP;
    }
    // SAFETY: forwarded to the caller's contract.
    #[allow(unsafe_code)]
    let cloned = unsafe { sys::clone_with_pidfd(flags) };
    match cloned {
        Ok(CloneResult::Child) => {
            fds.sync = sync.map(|s| s.wait);
            init_main(req, blobs, fds)
        }
        Ok(CloneResult::Parent { pid, pidfd }) => {
            drop(fds);
            if let Some(sync) = sync {
                if let Err(e) = crate::userns::map_and_release(req, pid, sync) {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(e);
                }
            }
            Ok((pid, pidfd))
        }
        Err(e) => Err(format!("clone: {e}")),
    }
}

/// Wait for PID 1; if the supervisor goes away meanwhile, kill the job and fail.
fn wait_or_abandon(
    sock: &UnixStream,
    pid: nix::unistd::Pid,
    pidfd: &OwnedFd,
) -> std::io::Result<i32> {
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let supervisor_gone = fds[1].revents().is_some_and(|r| !r.is_empty());
        if supervisor_gone {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(std::io::Error::other(
                "supervisor closed the socket during a job",
            ));
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(match waitpid(pid, None)? {
                WaitStatus::Exited(_, code) => code << 8,
                WaitStatus::Signaled(_, signal, _) => signal as i32,
                _ => -1,
            });
        }
    }
}
