//! A slot: one concurrent sandbox with its own unprivileged uid, its own cgroups (created once,
//! reused; counters read as deltas) and its own spawner process living inside them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cgroup::SlotCgroup;
use crate::init::InitFds;
use crate::lease::Lease;
use crate::spawner::{SOCKET_FD, SPAWNER_ARG};
use crate::wire::{recv_frame, send_frame, JobRequest, RootKey, SpawnerMsg, SpawnerSetup};
use crate::{sys, Error, Helper};

/// The spawner process of a slot and the socket to it.
pub(crate) struct Spawner {
    /// The process, killed and reaped when the slot drops it.
    child: SpawnerProcess,
    /// Requests out, answers in.
    pub sock: UnixStream,
    /// Its pid: allowed to stay in the slot's cgroup between jobs.
    pub pid: u32,
    /// The PID 1 it prepared for the slot's next job (see `spawner`), also allowed there.
    pub prepared: Option<u32>,
}

/// A spawner started by exec or by fork.
enum SpawnerProcess {
    Exec(Child),
    Fork(nix::unistd::Pid),
}

/// How long a spawner gets to end by itself once its socket is closed.
const SPAWNER_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Spawner {
    /// Close the socket first: the spawner then kills and reaps its job's or prepared PID 1 itself
    /// and exits (nothing of it is left, not even a zombie for the host's init). Past a grace
    /// period, or for a spawner that never got that far, SIGKILL.
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let deadline = std::time::Instant::now() + SPAWNER_EXIT_GRACE;
        while std::time::Instant::now() < deadline {
            let gone = match &mut self.child {
                SpawnerProcess::Exec(child) => !matches!(child.try_wait(), Ok(None)),
                SpawnerProcess::Fork(pid) => !matches!(
                    nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                    Ok(nix::sys::wait::WaitStatus::StillAlive)
                ),
            };
            if gone {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match &mut self.child {
            SpawnerProcess::Exec(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            SpawnerProcess::Fork(pid) => {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(*pid, None);
            }
        }
    }
}

/// PID 1 of a running job.
pub(crate) struct Launched {
    /// To signal it without a pid-reuse race, and to poll for its exit.
    pub pidfd: OwnedFd,
    /// Its pid when this process is its parent ([`Helper::InProcess`]).
    direct_pid: Option<nix::unistd::Pid>,
    /// Write end of PID 1's go pipe ([`Helper::InProcess`]): the job starts once a byte is written.
    go: Option<OwnedFd>,
}

impl Launched {
    /// Let a held job start. A PID 1 that is gone already (its root could not be built) has
    /// written its report, which says why: that is the outcome, not an error here.
    pub fn release(&mut self) -> Result<(), Error> {
        if let Some(go) = self.go.take() {
            match nix::unistd::write(&go, b"g") {
                Ok(_) | Err(nix::Error::EPIPE) => {}
                Err(e) => return Err(Error::nix("releasing the job")(e)),
            }
        }
        Ok(())
    }

    /// Never let a held job start: PID 1 reports a setup error instead and exits.
    pub fn abandon(&mut self) {
        self.go = None;
    }
}

/// Where a freshly cloned PID 1 should start: on a CPU other than the one its parent runs on.
///
/// The kernel queues a forked child on its parent's CPU more often than not (8 runs in 10 here,
/// `sched_process_fork` and `sched_switch` traces), so PID 1 would build the root only once the
/// parent blocks, ~0.4 ms later, instead of while the parent sets the slot's limits. Moving it
/// off the parent's CPU right after the clone lets both run at once; PID 1 restores `all` before
/// it starts the job.
struct SteerAway {
    /// The CPUs this process may use.
    all: nix::sched::CpuSet,
    /// The same without the one it runs on now.
    elsewhere: nix::sched::CpuSet,
}

impl SteerAway {
    /// `None` when there is no other CPU to move to (or the masks cannot be read).
    fn here() -> Option<SteerAway> {
        let all = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
        let current = nix::sched::sched_getcpu().ok()?;
        let mut elsewhere = all;
        elsewhere.unset(current).ok()?;
        (elsewhere != nix::sched::CpuSet::new()).then_some(SteerAway { all, elsewhere })
    }
}

/// Refuse to fork from a process with other threads (their locks would be copied held).
pub(crate) fn single_threaded() -> Result<(), Error> {
    let err = |source: std::io::Error| Error::StartSpawner {
        path: "fork".into(),
        source,
    };
    // Field 20 of /proc/self/stat (the 18th after the command name, which may hold spaces and
    // parentheses: everything up to its last ')') is the number of threads. Shorter to produce
    // and parse than /proc/self/status.
    let stat = crate::cgroup::read_text(Path::new("/proc/self/stat")).map_err(err)?;
    let threads = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17));
    if threads == Some("1") {
        Ok(())
    } else {
        Err(err(std::io::Error::other(
            "this launch mode needs a single-threaded process",
        )))
    }
}

/// One slot of the pool.
pub(crate) struct Slot {
    /// Position in the pool.
    pub index: usize,
    /// Unprivileged uid (and gid) of every job in this slot; no other slot shares it.
    pub uid: u32,
    /// Host directory the job's tmpfs is mounted on, privately, in the job's mount namespace.
    pub dir: PathBuf,
    /// The slot's cgroups.
    pub cgroup: Box<dyn SlotCgroup>,
    /// Started on first use and again after any failure.
    spawner: Option<Spawner>,
    /// Where the slot's persistent network namespace is pinned, if the sandbox keeps one.
    pub netns: Option<PathBuf>,
    /// PID 1 of the last job when it has reported but not yet been reaped (its namespaces may
    /// still be tearing down). Collected by [`Slot::settle`] before the slot's next job.
    pending: Option<Launched>,
    /// Root key of the slot's last job: the root its spawner prepares next (see `spawner`).
    last_key: Option<RootKey>,
    /// The slot's cgroups were found (or made) empty when the slot was leased, and no job has been
    /// launched since: the first [`Slot::settle`] need not look again.
    fresh: bool,
    /// Held for the slot's lifetime: no other process uses this index, uid or cgroup meanwhile.
    _lease: Lease,
}

impl Slot {
    pub fn new(
        lease: Lease,
        uid_base: u32,
        cgroup: Box<dyn SlotCgroup>,
        netns: Option<PathBuf>,
    ) -> Result<Slot, Error> {
        if !cgroup.pids()?.is_empty() {
            // Only a crashed holder of this lease can have left them: kill them.
            tracing::warn!(
                slot = lease.index,
                "killing processes a previous run left in a slot"
            );
            cgroup.kill_all()?;
        }
        Ok(Slot {
            index: lease.index,
            uid: uid_base + lease.index as u32,
            dir: lease.dir.clone(),
            cgroup,
            spawner: None,
            netns,
            pending: None,
            last_key: None,
            fresh: true,
            _lease: lease,
        })
    }

    /// The running spawner, started (and placed in the slot's cgroups) if there is none.
    pub fn spawner(&mut self, helper: &Helper) -> Result<&mut Spawner, Error> {
        if *helper == Helper::InProcess {
            return Err(Error::Spawner {
                slot: self.index,
                message: "in-process slots have no spawner".into(),
            });
        }
        if self.spawner.is_none() {
            let spawner = self.start_spawner(helper)?;
            self.spawner = Some(spawner);
        }
        Ok(self.spawner.as_mut().expect("spawner was just set"))
    }

    /// Kill the spawner (and so any job it runs); the next job starts a new one.
    pub fn discard_spawner(&mut self) {
        self.spawner = None;
    }

    fn start_spawner(&self, helper: &Helper) -> Result<Spawner, Error> {
        let (ours, theirs) = UnixStream::pair().map_err(|source| Error::StartSpawner {
            path: "socketpair".into(),
            source,
        })?;
        let child = match helper {
            Helper::Exec(path) => SpawnerProcess::Exec(self.exec_spawner(path, &theirs)?),
            Helper::Fork => SpawnerProcess::Fork(self.fork_spawner(&theirs)?),
            Helper::InProcess => unreachable!("spawner() refuses in-process slots"),
        };
        drop(theirs);
        let mut spawner = Spawner {
            child,
            sock: ours,
            pid: 0,
            prepared: None,
        };
        self.wait_ready(&mut spawner)?;
        Ok(spawner)
    }

    fn exec_spawner(&self, helper: &Path, theirs: &UnixStream) -> Result<Child, Error> {
        let start_err = |source| Error::StartSpawner {
            path: helper.to_path_buf(),
            source,
        };
        let mut cmd = Command::new(helper);
        // The spawner joins the slot's cgroups itself: a single-threaded process writing "0" to a v1
        // `tasks` file skips the global threadgroup lock whose RCU grace period makes a migration by
        // pid cost 5-15 ms on an idle host (0.4 ms this way).
        cmd.arg(SPAWNER_ARG)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let raw = theirs.as_raw_fd();
        // SAFETY: the closure only calls dup2, which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            sys::pre_exec(&mut cmd, move || {
                sys::dup2_raw(raw, SOCKET_FD).map_err(Into::into)
            });
        }
        cmd.spawn().map_err(start_err)
    }

    fn fork_spawner(&self, theirs: &UnixStream) -> Result<nix::unistd::Pid, Error> {
        let err = |source: std::io::Error| Error::StartSpawner {
            path: "fork".into(),
            source,
        };
        single_threaded()?;
        match sys::fork_single_threaded().map_err(|e| err(e.into()))? {
            nix::unistd::ForkResult::Child => {
                crate::spawner::forked_spawner_main(theirs.as_raw_fd())
            }
            nix::unistd::ForkResult::Parent { child } => Ok(child),
        }
    }

    fn wait_ready(&self, spawner: &mut Spawner) -> Result<(), Error> {
        let spawner_err = |message: String| Error::Spawner {
            slot: self.index,
            message,
        };
        let setup = SpawnerSetup {
            cgroup_files: self.cgroup.self_attach_files(),
            netns: self.netns.clone(),
        };
        send_frame(&mut spawner.sock, &setup, &[], &[])
            .map_err(|e| spawner_err(format!("sending setup: {e}")))?;
        match recv_frame::<SpawnerMsg>(&mut spawner.sock) {
            Ok(Some((SpawnerMsg::Ready { pid }, _))) => spawner.pid = pid,
            Ok(Some((SpawnerMsg::Failed { error }, _))) => return Err(spawner_err(error)),
            Ok(other) => return Err(spawner_err(format!("expected ready, got {other:?}"))),
            Err(e) => return Err(spawner_err(format!("waiting for ready: {e}"))),
        }
        Ok(())
    }

    /// Start PID 1 of a job: through the spawner, or (for [`Helper::InProcess`]) by cloning it from
    /// this process after joining the slot's cgroups, which it leaves again right after.
    pub fn launch(
        &mut self,
        helper: &Helper,
        req: &JobRequest,
        blob_refs: &[&[u8]],
        blobs: &[Vec<u8>],
        fds: [RawFd; 4],
    ) -> Result<Launched, Error> {
        let index = self.index;
        let spawner_err = move |message: String| Error::Spawner {
            slot: index,
            message,
        };
        self.fresh = false;
        if *helper == Helper::InProcess {
            return self.launch_in_process(req, blobs, fds).map_err(spawner_err);
        }
        self.last_key = Some(req.root_key());
        let spawner = self.spawner(helper)?;
        send_frame(&mut spawner.sock, req, blob_refs, &fds)
            .map_err(|e| spawner_err(format!("send: {e}")))?;
        match recv_frame::<SpawnerMsg>(&mut spawner.sock) {
            Ok(Some((SpawnerMsg::Started { .. }, mut fds))) if fds.len() == 1 => Ok(Launched {
                pidfd: fds.remove(0),
                direct_pid: None,
                go: None,
            }),
            Ok(Some((SpawnerMsg::Failed { error }, _))) => Err(spawner_err(error)),
            other => Err(spawner_err(format!("expected started, got {other:?}"))),
        }
    }

    fn launch_in_process(
        &mut self,
        req: &JobRequest,
        blobs: &[Vec<u8>],
        fds: [RawFd; 4],
    ) -> Result<Launched, String> {
        single_threaded().map_err(|e| e.to_string())?;
        let dup = |fd| sys::dup_cloexec_raw(fd).map_err(|e| format!("dup: {e}"));
        // PID 1 moves itself into the slot's cgroups before it runs anything; this process stays
        // where it is. A thread moving itself is the cheap migration: the parent moving PID 1 (or
        // itself back out after a clone) waits for an RCU grace period.
        let join = self
            .cgroup
            .self_attach_files()
            .iter()
            .map(|file| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("opening {}: {e}", file.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("go pipe: {e}"))?;
        let steer = SteerAway::here();
        let init_fds = InitFds {
            stdin: dup(fds[0])?,
            stdout: dup(fds[1])?,
            stderr: dup(fds[2])?,
            report: dup(fds[3])?,
            sync: None,
            go: Some(go_r),
            join,
            restore_affinity: steer.as_ref().map(|s| s.all),
        };
        // SAFETY: single_threaded() just checked that no other thread exists.
        #[allow(unsafe_code)]
        let (pid, pidfd) = unsafe { crate::spawner::clone_init(req, blobs, init_fds) }?;
        if let Some(steer) = steer {
            // Best effort: where it fails, PID 1 only starts later, and restores the mask anyway.
            let _ = nix::sched::sched_setaffinity(pid, &steer.elsewhere);
        }
        Ok(Launched {
            pidfd,
            direct_pid: Some(pid),
            go: Some(go_w),
        })
    }

    /// After the job's PID 1 is gone: collect its exit (ours to reap in-process, the spawner's
    /// otherwise).
    pub fn reap(&mut self, helper: &Helper, launched: &Launched) -> Result<(), Error> {
        if let Some(pid) = launched.direct_pid {
            nix::sys::wait::waitpid(pid, None).map_err(Error::nix("waitpid"))?;
            return Ok(());
        }
        let index = self.index;
        let spawner = self.spawner(helper)?;
        match recv_frame::<SpawnerMsg>(&mut spawner.sock) {
            Ok(Some((SpawnerMsg::Exited { prepared, .. }, _))) => {
                if let Some(spawner) = self.spawner.as_mut() {
                    spawner.prepared = prepared;
                }
                Ok(())
            }
            other => {
                let _ = sys::pidfd_send_signal(
                    std::os::fd::AsFd::as_fd(&launched.pidfd),
                    libc::SIGKILL,
                );
                Err(Error::Spawner {
                    slot: index,
                    message: format!("expected exited, got {other:?}"),
                })
            }
        }
    }

    /// The PID 1 the spawner prepared for the next job, if any.
    pub fn prepared_pid(&self) -> Option<u32> {
        self.spawner.as_ref().and_then(|s| s.prepared)
    }

    /// The root the slot's next job finds prepared: its last job's, once that job's PID 1 has
    /// reported (the spawner then builds the next one like it). A guess, good enough to choose
    /// a slot by: if building it failed, the next job builds its own.
    pub fn prepared_key(&self) -> Option<&RootKey> {
        let prepared = self.pending.is_some() || self.prepared_pid().is_some();
        self.last_key.as_ref().filter(|_| prepared)
    }

    /// Remember a reported job's PID 1, to be reaped by [`Slot::settle`].
    pub fn defer_reap(&mut self, launched: Launched) {
        self.pending = Some(launched);
    }

    /// Wait until the previous job's PID 1 is reaped, then check that nothing but the spawner is
    /// left in the slot's cgroup. Called before each job and before the slot is inspected.
    pub fn settle(&mut self, helper: &Helper) -> Result<(), Error> {
        if let Some(launched) = self.pending.take() {
            if let Err(e) = self.reap(helper, &launched) {
                self.discard_spawner();
                self.ensure_clean()?;
                return Err(e);
            }
        } else if self.fresh {
            return Ok(());
        }
        self.ensure_clean()
    }

    /// After a job: nothing but the spawner may remain in the slot's cgroup. If anything does (it
    /// cannot, short of a kernel bug), kill the whole cgroup tree and start a fresh spawner.
    pub fn ensure_clean(&mut self) -> Result<(), Error> {
        let ours = |p: u32| {
            self.spawner
                .as_ref()
                .is_some_and(|s| s.pid == p || s.prepared == Some(p))
        };
        let pids = self.cgroup.pids()?;
        if pids.iter().any(|&p| !ours(p)) {
            tracing::warn!(
                slot = self.index,
                ?pids,
                "processes left in the slot cgroup; killing the tree"
            );
            self.discard_spawner();
            self.cgroup.kill_all()?;
        }
        Ok(())
    }
}
