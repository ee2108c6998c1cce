//! Corral's security boundary: runs one command in a fresh, hardened, resource-capped Linux container
//! and reports what happened.
//!
//! Synchronous and Linux-only; no async runtime. This is the only crate of the workspace allowed
//! `unsafe`, and inside it nearly all of it is in [`sys`]. It depends on no other workspace crate: the
//! worker maps wire types onto [`Spec`].
//!
//! # How a job runs
//!
//! A [`Sandbox`] owns a pool of slots. Each slot has its own unprivileged uid, cgroups created once
//! and reused (counters read as deltas), and a long-lived single-threaded *spawner* process that lives
//! inside those cgroups and in an empty network namespace of its own. For each job the caller's thread
//! (the supervisor) sets the limits and sends the request; the spawner clones PID 1 of the job into
//! new mount, pid, ipc, uts and cgroup namespaces; PID 1 builds the root (overlay over a per-job
//! tmpfs, `pivot_root`, fresh /proc, minimal /dev) and starts the job (sharing PID 1's memory until
//! it execs, as `posix_spawn` does), which drops every privilege,
//! restricts itself with Landlock and seccomp, and execs. When the job exits, PID 1 kills whatever is
//! left of the namespace, reads back files as the unprivileged uid, reports, and exits; the kernel
//! then tears down every mount with the namespace: nothing is left on the host.
//!
//! # Layout
//!
//! - [`spec`]: the request ([`Spec`], [`Limits`], [`Image`]) and the result ([`Outcome`]).
//! - `supervisor`: the caller's side of one job: limits, pumping, verdict.
//! - `slot`: a slot's uid, cgroup and spawner process. `lease`: exclusive slot indexes across
//!   processes sharing a state directory.
//! - [`spawner`]: the per-slot process that clones each job's PID 1.
//! - `init`: PID 1 of the container. `job`: PID 2 from its start to exec.
//! - [`rootfs`]: the root filesystem as a plan of steps applied through a syscall seam.
//! - [`cgroup`]: cgroup v1 and v2 slot cgroups. [`seccomp`], [`landlock`]: the job's filters.
//! - [`files`]: file-name checks and safe read-back. [`host`]: the built-in `host` image.
//! - `wire`: frames between supervisor, spawner and PID 1. `sys`: the unsafe system call wrappers.
//! - `userns`: the optional user namespace of PID 1 (maps written by the parent).
#![deny(unsafe_code)]

pub mod cgroup;
mod error;
pub mod files;
pub mod host;
mod init;
mod job;
pub mod landlock;
mod lease;
pub mod rootfs;
pub mod seccomp;
mod slot;
pub mod spawner;
pub mod spec;
mod supervisor;
mod sys;
mod userns;
mod wire;

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

pub use error::Error;
pub use spec::{FileIn, FileOut, Image, Limits, Outcome, Spec, Status, Stdin, TimeLimitKind};

use lease::MAX_SLOTS;
use slot::Slot;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How the sandbox is set up on this host.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Concurrent slots.
    pub slots: usize,
    /// Directory for the sandbox's own state (slot mount points, the host image skeleton).
    pub state_dir: PathBuf,
    /// Name of the cgroup (under each hierarchy's root) holding the slot cgroups. Swept at start-up.
    pub cgroup_parent: String,
    /// The slot leased as index `i` runs as uid and gid `uid_base + i` (and, with
    /// `user_namespace`, its container root as `uid_base + 4096 + i`); the range
    /// `uid_base..uid_base + 8192` must belong to nobody else.
    pub uid_base: u32,
    /// How each slot's spawner process is started.
    pub helper: Helper,
    /// Refuse to run jobs unless Landlock is fully enforced (operators may opt out on old kernels).
    pub require_landlock: bool,
    /// Keep the (empty) slot cgroups when the sandbox is dropped, for the next process to reuse: a
    /// one-shot command then skips creating and removing them. Off: they are removed.
    pub keep_cgroups: bool,
    /// Give each slot a persistent empty network namespace (pinned at `<state>/slots/<i>.netns`),
    /// reused by whichever process leases the slot next, instead of creating one per spawner. It
    /// saves a one-shot command ~0.5 ms; the namespace holds no state between jobs (no interface is
    /// up and jobs cannot configure it), exactly like the spawner's own namespace across its jobs.
    pub keep_netns: bool,
    /// Put each job's PID 1 in a new user namespace whose root is an unprivileged host uid
    /// (`uid_base + 4096 + slot`): the code that builds the container then holds no privilege on
    /// the host either. The job's own uid is the same either way.
    pub user_namespace: bool,
}

impl SandboxConfig {
    /// Defaults for this host: one slot per CPU, state in /run/corral, cgroup `corral`, uids from
    /// 1,000,000, Landlock required, and the current executable as the spawner helper.
    pub fn host_defaults() -> Result<SandboxConfig, Error> {
        let slots = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        SandboxConfig::with_slots(slots)
    }

    /// One slot for one job, run from this single-threaded process ([`Helper::InProcess`]), leaving
    /// the slot's cgroups and network namespace for the next such process: a one-shot command.
    pub fn one_shot() -> SandboxConfig {
        SandboxConfig {
            keep_cgroups: true,
            keep_netns: true,
            ..SandboxConfig::with_helper(1, Helper::InProcess)
        }
    }

    /// [`SandboxConfig::host_defaults`] with `slots` slots (without working out how many CPUs this
    /// process may use, which reads the cgroup files of the CPU quota).
    pub fn with_slots(slots: usize) -> Result<SandboxConfig, Error> {
        let exe = std::env::current_exe().map_err(|source| Error::StateDir {
            path: "/proc/self/exe".into(),
            source,
        })?;
        Ok(SandboxConfig::with_helper(slots, Helper::Exec(exe)))
    }

    fn with_helper(slots: usize, helper: Helper) -> SandboxConfig {
        SandboxConfig {
            slots,
            state_dir: "/run/corral".into(),
            cgroup_parent: "corral".into(),
            uid_base: 1_000_000,
            helper,
            require_landlock: true,
            keep_cgroups: false,
            keep_netns: false,
            user_namespace: false,
        }
    }
}

/// How a slot's spawner process is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Helper {
    /// Execute this binary with [`spawner::SPAWNER_ARG`]: one that calls [`run_helper_if_requested`]
    /// first thing in `main`. Works from any process, multi-threaded ones included.
    Exec(PathBuf),
    /// Fork the calling process without exec (about a millisecond faster per spawner). Only for a
    /// single-threaded caller: refused when the process has other threads.
    Fork,
    /// No spawner: the calling process joins the slot's cgroups, clones each job's PID 1 itself and
    /// leaves them again. For a single-threaded one-shot command with one slot (it enters the slot's
    /// network namespace itself).
    InProcess,
}

/// If this process was started as a spawner, run it and never return. Call it first in `main` of any
/// binary named as [`SandboxConfig::helper`].
pub fn run_helper_if_requested() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == spawner::SPAWNER_ARG)
    {
        spawner::spawner_main();
    }
}

/// A pool of sandbox slots. `run` blocks the calling thread for the job's duration.
pub struct Sandbox {
    config: SandboxConfig,
    free: Mutex<Vec<Slot>>,
    available: Condvar,
    host: Image,
    /// The sweep of other slots' leftovers, when it waits for the first job (see [`Sandbox::new`]).
    deferred_sweep: Mutex<Option<cgroup::Hierarchies>>,
}

impl Sandbox {
    /// Lease slots (other processes sharing the state directory keep theirs), clean what a crashed
    /// predecessor left in them, prepare the `host` image and start each slot's spawner.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::NotRoot);
        }
        if config.helper == Helper::InProcess && config.slots != 1 {
            return Err(Error::InvalidSpec(
                "an in-process sandbox has exactly one slot".into(),
            ));
        }
        let hierarchies = cgroup::Hierarchies::probe()?;
        let slots_dir = config.state_dir.join("slots");
        let leases = lease::lease_slots(&slots_dir, config.slots)?;
        // Other slots' leftovers never touch this sandbox's own (leased, cleaned below). A pool
        // sweeps them now; an in-process sandbox, a whole command per job, while its first job
        // runs, when it would only wait.
        let deferred_sweep = if config.helper == Helper::InProcess {
            Some(hierarchies.clone())
        } else {
            sweep_leftovers(&hierarchies, &config.cgroup_parent, &slots_dir)?;
            None
        };
        let uids = config.uid_base..config.uid_base + MAX_SLOTS as u32;
        let host = host::prepare(&config.state_dir.join("images/host"), uids)?;
        let mut slots = Vec::with_capacity(config.slots);
        for lease in leases {
            let name = format!("slot-{}", lease.index);
            let cg = hierarchies.open_slot(&config.cgroup_parent, &name)?;
            let netns = config.keep_netns.then(|| lease.dir.with_extension("netns"));
            let mut slot = Slot::new(lease, config.uid_base, cg, netns)?;
            if config.helper == Helper::InProcess {
                slot::single_threaded()?;
                spawner::enter_netns(slot.netns.as_deref()).map_err(|message| Error::Spawner {
                    slot: slot.index,
                    message,
                })?;
            } else {
                slot.spawner(&config.helper)?;
            }
            slots.push(slot);
        }
        Ok(Sandbox {
            config,
            free: Mutex::new(slots),
            available: Condvar::new(),
            host,
            deferred_sweep: Mutex::new(deferred_sweep),
        })
    }

    /// Number of slots (jobs that can run at once).
    pub fn slots(&self) -> usize {
        self.config.slots
    }

    /// The built-in `host` image.
    pub fn host_image(&self) -> Image {
        self.host.clone()
    }

    /// The configuration this sandbox was started with (state directory, cgroup parent, uid base).
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Read-only views of the slots that are not running a job right now (all of them when no
    /// `run` is in progress), lowest index first. For tests and diagnostics.
    ///
    /// It first waits for each idle slot's last PID 1 to be reaped (its namespaces torn down), so
    /// what it shows is the state the slot's next job would start from.
    pub fn idle_slots(&self) -> Vec<SlotInfo> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for slot in free.iter_mut() {
            if let Err(e) = slot.settle(&self.config.helper) {
                tracing::warn!(slot = slot.index, error = %e, "settling an idle slot");
            }
        }
        let mut slots: Vec<SlotInfo> = free
            .iter()
            .map(|slot| SlotInfo {
                index: slot.index,
                uid: slot.uid,
                dir: slot.dir.clone(),
                cgroup_dirs: slot
                    .cgroup
                    .self_attach_files()
                    .iter()
                    .filter_map(|f| f.parent().map(PathBuf::from))
                    .collect(),
                prepared_pid: slot.prepared_pid(),
            })
            .collect();
        slots.sort_by_key(|s| s.index);
        slots
    }

    /// Run one job on the next free slot, waiting for one if all are busy. Output chunks are passed
    /// to `on_output` as they arrive (within the caps) and also kept in the outcome.
    pub fn run(
        &self,
        spec: Spec,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, Error> {
        validate(&spec)?;
        let mut slot = self.take_slot(|slot| {
            slot.prepared_key()
                .is_some_and(|key| *key == self.request(&spec, slot).root_key())
        });
        let req = self.request(&spec, &slot);
        let mut sweep = || self.run_deferred_sweep();
        let result = supervisor::run(
            &mut slot,
            &self.config.helper,
            req,
            spec,
            on_output,
            &mut sweep,
        );
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
        self.available.notify_one();
        result
    }

    /// Sweep other slots' leftovers if [`Sandbox::new`] left it for the first job.
    fn run_deferred_sweep(&self) {
        let deferred = self
            .deferred_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hierarchies) = deferred {
            let slots_dir = self.config.state_dir.join("slots");
            if let Err(error) =
                sweep_leftovers(&hierarchies, &self.config.cgroup_parent, &slots_dir)
            {
                tracing::warn!(%error, "sweeping leftover slot cgroups");
            }
        }
    }

    /// The job's request on `slot`.
    fn request(&self, spec: &Spec, slot: &Slot) -> wire::JobRequest {
        let mut req = request(spec, slot, self.config.require_landlock);
        if self.config.user_namespace {
            req.userns_root = Some(self.config.uid_base + (MAX_SLOTS + slot.index) as u32);
        }
        req
    }

    /// A free slot, waiting for one if all are busy: the oldest-returned one whose prepared root
    /// `fits`, else the oldest-returned. Oldest first: consecutive jobs rotate over the slots, so
    /// each slot's last PID 1 has the other slots' jobs' time to finish tearing down; a fitting
    /// root first: a job of another image (or disk size, or network) would have that slot's
    /// prepared root thrown away and build its own while it waits.
    fn take_slot(&self, fits: impl Fn(&Slot) -> bool) -> Slot {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if !free.is_empty() {
                let at = if free.len() > 1 {
                    free.iter().position(&fits).unwrap_or(0)
                } else {
                    0
                };
                return free.remove(at);
            }
            free = self.available.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        for mut slot in slots {
            // Nothing of a job outlives its sandbox: wait for the last PID 1 to be reaped.
            if let Err(e) = slot.settle(&self.config.helper) {
                tracing::warn!(slot = slot.index, error = %e, "settling a slot");
            }
            slot.discard_spawner();
            if self.config.keep_cgroups {
                continue;
            }
            if let Err(e) = slot.cgroup.remove() {
                tracing::warn!(slot = slot.index, error = %e, "removing slot cgroup");
            }
        }
    }
}

/// What [`Sandbox::idle_slots`] shows of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index (its lease number).
    pub index: usize,
    /// The uid and gid every job of this slot runs as.
    pub uid: u32,
    /// Host directory the job's tmpfs is mounted on inside each job's mount namespace (on the
    /// host it stays an empty directory).
    pub dir: PathBuf,
    /// The slot's cgroup directories, one per hierarchy (v1) or one (v2). Between jobs they hold
    /// the slot's spawner and the PID 1 it prepared for the next job.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The PID 1 the slot's spawner prepared for its next job (root built, no job code run yet).
    pub prepared_pid: Option<u32>,
}

/// Remove the slot cgroups under `parent` that no live process leases: a crashed predecessor's, or
/// ones a `keep_cgroups` process left behind. Each is claimed by locking its lease while it is
/// emptied and removed, so a slot another live process holds is never touched; the slots this
/// process just leased are locked already, hence skipped (`Sandbox::new` cleans those itself).
/// Names other than `slot-<index>` are left alone.
fn sweep_leftovers(
    hierarchies: &cgroup::Hierarchies,
    parent: &str,
    slots_dir: &std::path::Path,
) -> Result<(), Error> {
    let swept = hierarchies.sweep(parent, |name| {
        let index: usize = name.strip_prefix("slot-")?.parse().ok()?;
        if index >= MAX_SLOTS || name != format!("slot-{index}") {
            return None;
        }
        lease::lock_index(slots_dir, index).unwrap_or_else(|error| {
            tracing::warn!(%error, "locking a slot lease to sweep its cgroup");
            None
        })
    })?;
    if swept > 0 {
        tracing::info!(swept, parent, "removed leftover slot cgroups");
    }
    Ok(())
}

/// A pipe whose read end is a job's stdin ([`Stdin::Pipe`]) and whose write end the caller feeds.
pub fn stdin_pipe() -> Result<(std::fs::File, Stdin), Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::nix("pipe"))?;
    Ok((std::fs::File::from(w), Stdin::Pipe(r)))
}

fn validate(spec: &Spec) -> Result<(), Error> {
    let invalid = |m: String| Err(Error::InvalidSpec(m));
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return invalid("the command is empty".into());
    }
    if spec.image.layers.is_empty() {
        return invalid(format!("image {:?} has no layers", spec.image.name));
    }
    for layer in &spec.image.layers {
        let text = layer.to_string_lossy();
        if !layer.is_absolute() || text.contains([',', ':', '\n']) || !layer.is_dir() {
            return invalid(format!(
                "image layer {text:?} is not an absolute directory usable by overlayfs"
            ));
        }
    }
    for file in &spec.files {
        files::check_name(&file.name).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    }
    let mut names: Vec<&str> = spec.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return invalid("two input files have the same name".into());
    }
    for name in &spec.collect {
        files::check_name(name).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    }
    for (key, _) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return invalid(format!("environment variable name {key:?} is invalid"));
        }
    }
    Ok(())
}

fn request(spec: &Spec, slot: &Slot, require_landlock: bool) -> wire::JobRequest {
    let l = &spec.limits;
    let mut env = spec.image.env.clone();
    env.extend(spec.env.iter().cloned());
    wire::JobRequest {
        argv: spec.argv.clone(),
        env,
        files: spec
            .files
            .iter()
            .map(|f| wire::FileMeta {
                name: f.name.clone(),
                mode: f.mode,
                len: f.contents.len() as u64,
            })
            .collect(),
        layers: spec.image.layers.clone(),
        host_binds: spec.image.host_binds.clone(),
        slot_dir: slot.dir.clone(),
        uid: slot.uid,
        gid: slot.uid,
        rlimits: wire::Rlimits {
            // A backstop only: the supervisor enforces CPU time for the whole job from the cgroup.
            cpu_secs: l.cpu_time.as_secs() + 2,
            fsize: l.file_size_bytes,
            nofile: u64::from(l.open_files),
            stack: l.stack_bytes,
            nproc: u64::from(l.processes),
        },
        disk_bytes: l.disk_bytes,
        disk_inodes: l.disk_inodes,
        network: spec.network,
        collect: spec.collect.clone(),
        collect_max_bytes: spec.collect_max_bytes,
        require_landlock,
        userns_root: None,
    }
}
