//! Slot cgroups on cgroup v1 and v2: one cgroup per slot under a configurable parent, created once
//! and reused across jobs (limits rewritten before each job, counters read as deltas), holding the
//! slot's spawner between jobs.
//!
//! Every controller takes the directory it works on, so the whole module runs against fixture trees
//! in tests. Limits are written through `cgroups-rs` controllers (`MemController`, `PidController`,
//! `CpuController`, `FreezerController`), which accept any path. Reads go through a thin file layer
//! here instead: the crate's readers turn a missing or unreadable file into 0 or an empty list, and a
//! supervisor that took "0 oom kills" or "no processes left" from a failed read would report a
//! wrong verdict or leave processes running. The crate's hierarchy-level API (`Cgroup`, `auto()`,
//! `Cgroup::kill`, subtree control) is hard-wired to `/sys/fs/cgroup` and `/proc/self/mountinfo`,
//! so detection, `cgroup.kill` and `cgroup.subtree_control` are written here too.
//!
//! # Layout
//!
//! - `mounts`: where the hierarchies are mounted (a pure parser of `/proc/self/mountinfo`) and
//!   which one to use; this process's own cgroups from `/proc/self/cgroup`.
//! - `v1`: memory, pids, cpu, cpuacct and freezer hierarchies; whole-tree kill by freezing.
//! - `v2`: one directory in the unified hierarchy; kill with `cgroup.kill`.
//! - `kill`: the freeze / SIGKILL / thaw loop of v1, over a small trait so its logic is tested.
//! - `files`: reading and parsing cgroup files with errors that name the file.
//! - `tests` (detection, v1) and `tests_v2`: fixture trees; `tests_privileged`: real cgroups on
//!   this host under `corral-test-<pid>` parents (root only).
//!
//! Slot cgroups are removed by [`SlotCgroup::remove`] (which also removes the parent once it is
//! empty) and, for a crashed process's leftovers, by [`sweep`] at start-up.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

mod files;
mod kill;
mod mounts;
pub(crate) use files::read_text;
mod v1;
mod v2;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_privileged;
#[cfg(test)]
mod tests_v2;

/// How long `kill_all` (and the emptying part of `remove`) may take before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// A cgroup operation failed. Each variant names the operation and the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` (or `/proc/self/cgroup`) could not be read.
    #[error("reading cgroup mounts from {path}: {source}")]
    ReadMounts {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// No hierarchy has the controllers the sandbox needs.
    #[error("no usable cgroup hierarchy: {reason}")]
    NoHierarchy {
        /// What is missing.
        reason: String,
    },
    /// A cgroup parent or slot name is not a plain relative path.
    #[error("invalid cgroup name {name:?}: must be a relative path without `.` or `..`")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Creating a cgroup directory failed.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Enabling controllers for child cgroups (v2 `cgroup.subtree_control`) failed.
    #[error("enabling controllers {controllers} in {path}: {source}")]
    EnableControllers {
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// What was written.
        controllers: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A hierarchy lacks a controller or file the operation needs.
    #[error("{path} lacks {what}")]
    Unsupported {
        /// The cgroup directory.
        path: PathBuf,
        /// The missing controller or file.
        what: &'static str,
    },
    /// Writing a limit failed.
    #[error("setting limit {path} to {value}: {source}")]
    SetLimit {
        /// The limit file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Moving a process into the cgroup failed.
    #[error("moving pid {pid} into {path}: {source}")]
    AddProcess {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// What failed.
        source: std::io::Error,
    },
    /// Resetting the peak memory counter failed.
    #[error("resetting peak memory {path}: {source}")]
    ResetPeak {
        /// The counter file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Reading a cgroup file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A cgroup file did not hold what the kernel documents.
    #[error("parsing {path}: unexpected contents {text:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed to a short prefix).
        text: String,
    },
    /// Freezing or thawing the cgroup failed.
    #[error("writing freezer state {state} to {path}: {source}")]
    Freeze {
        /// The freezer file.
        path: PathBuf,
        /// The state written.
        state: &'static str,
        /// What failed.
        source: std::io::Error,
    },
    /// Signalling or killing the cgroup's processes failed.
    #[error("killing the processes of {path}: {source}")]
    Kill {
        /// The cgroup directory (or its `cgroup.kill`).
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Processes were still in the cgroup when the kill deadline passed.
    #[error("processes {pids:?} still in {path} after {waited:?} of killing")]
    KillTimeout {
        /// The cgroup directory.
        path: PathBuf,
        /// What was left.
        pids: Vec<u32>,
        /// How long it tried.
        waited: Duration,
    },
    /// Removing a cgroup directory failed.
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl CgroupError {
    /// A directory or file was missing (as when a parent cgroup is removed concurrently).
    fn is_not_found(&self) -> bool {
        let source = match self {
            CgroupError::Create { source, .. }
            | CgroupError::Read { source, .. }
            | CgroupError::EnableControllers { source, .. } => source,
            _ => return false,
        };
        source.kind() == std::io::ErrorKind::NotFound
    }
}

/// What a slot's cgroup enforces for the next job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory, RAM and swap together.
    pub memory_bytes: u64,
    /// Processes and threads at once (including the job's PID 1 and the slot's spawner).
    pub pids: u64,
    /// CPU bandwidth cap; `None` removes any cap a previous job had.
    pub cpu_quota: Option<CpuQuota>,
}

/// CFS bandwidth: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time per period, in microseconds.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

/// Counters of a slot cgroup. `cpu_ns` and `oom_kills` are cumulative over the cgroup's life (read
/// them before and after a job); `memory_peak_bytes` is the peak since the last `reset_peak`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every task that ran in the cgroup, in nanoseconds.
    pub cpu_ns: u64,
    /// Highest memory use since the last reset, in bytes.
    pub memory_peak_bytes: u64,
    /// Times the OOM killer killed a task of the cgroup.
    pub oom_kills: u64,
}

/// Which cgroup interface the host offers for the sandbox's controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (or group of co-mounted controllers).
    V1,
    /// The unified hierarchy with the memory and pids controllers available.
    V2,
}

/// One slot's cgroup (on v1, its directory in each hierarchy the sandbox uses).
pub trait SlotCgroup: Send + Sync {
    /// Write the limits for the next job. On v1 the memory limit is written before the equal
    /// memory+swap limit (or after it, when raising).
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Move a process (all its threads) into the cgroup.
    fn add_process(&self, pid: u32) -> Result<(), CgroupError>;
    /// Files a process writes "0" to in order to join the cgroup itself (v1 `tasks`, which is
    /// cheaper for a single-threaded process, or v2 `cgroup.procs`).
    fn self_attach_files(&self) -> Vec<PathBuf>;
    /// Start a new peak-memory measurement.
    fn reset_peak(&self) -> Result<(), CgroupError>;
    /// Cumulative CPU time of the cgroup, in nanoseconds (cheap: polled while a job runs).
    fn cpu_usage_ns(&self) -> Result<u64, CgroupError>;
    /// All counters.
    fn usage(&self) -> Result<Usage, CgroupError>;
    /// Every process in the cgroup, sorted (the slot's spawner included). On v1 as the pids
    /// hierarchy lists them: processes join every hierarchy together.
    fn pids(&self) -> Result<Vec<u32>, CgroupError>;
    /// Kill every process in the cgroup (the spawner included) and wait until it is empty.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kill everything in it and remove the cgroup's directories (and the parent's, once no slot
    /// is left in it).
    fn remove(&self) -> Result<(), CgroupError>;
}

/// The cgroup hierarchies of this host, read once from `/proc/self/mountinfo`: v2 when the
/// unified hierarchy has the memory and pids controllers, else v1 when memory, pids, cpuacct and
/// freezer are mounted.
#[derive(Debug, Clone)]
pub struct Hierarchies(mounts::Layout);

impl Hierarchies {
    /// Probe this host's hierarchies.
    pub fn probe() -> Result<Hierarchies, CgroupError> {
        mounts::Layout::probe(None).map(Hierarchies)
    }

    /// Which version they are.
    pub fn version(&self) -> Version {
        self.0.version()
    }

    /// Open (creating as needed) the cgroup `<parent>/<slot>`.
    pub fn open_slot(&self, parent: &str, slot: &str) -> Result<Box<dyn SlotCgroup>, CgroupError> {
        open_in(&self.0, parent, slot)
    }

    /// Remove the cgroups under `<parent>` that a crashed process left behind. Each child cgroup's
    /// name is passed to `claim`; only when it returns a guard (a lease on that slot, proving no
    /// live process uses it) is the cgroup emptied and removed, while the guard is held. Failures
    /// are logged and skipped: a leftover must not stop the sandbox from starting. Returns how
    /// many cgroups were removed.
    pub fn sweep<G>(
        &self,
        parent: &str,
        claim: impl FnMut(&str) -> Option<G>,
    ) -> Result<usize, CgroupError> {
        sweep_in(&self.0, parent, claim)
    }
}

fn open_in(
    layout: &mounts::Layout,
    parent: &str,
    slot: &str,
) -> Result<Box<dyn SlotCgroup>, CgroupError> {
    let rel = cgroup_path(parent, Some(slot))?;
    let mut retries = 2;
    loop {
        let opened: Result<Box<dyn SlotCgroup>, CgroupError> = match layout {
            mounts::Layout::V1(m) => {
                v1::V1Slot::open(m, &rel, KILL_TIMEOUT).map(|s| Box::new(s) as _)
            }
            mounts::Layout::V2(m) => {
                v2::V2Slot::open(m, &rel, KILL_TIMEOUT).map(|s| Box::new(s) as _)
            }
        };
        match opened {
            // Another process removed the (then empty) parent between our steps: start over.
            Err(e) if retries > 0 && e.is_not_found() => retries -= 1,
            other => return other,
        }
    }
}

fn sweep_in<G>(
    layout: &mounts::Layout,
    parent: &str,
    mut claim: impl FnMut(&str) -> Option<G>,
) -> Result<usize, CgroupError> {
    let parent_rel = cgroup_path(parent, None)?;
    let mut removed = 0;
    for name in layout.children(&parent_rel)? {
        let Some(guard) = claim(&name) else {
            continue;
        };
        let result = open_in(layout, parent, &name).and_then(|cg| {
            if !cg.pids()?.is_empty() {
                tracing::warn!(cgroup = %name, "killing processes a crashed run left");
            }
            cg.remove()
        });
        drop(guard);
        match result {
            Ok(()) => removed += 1,
            Err(error) => tracing::warn!(cgroup = %name, %error, "sweeping a leftover cgroup"),
        }
    }
    Ok(removed)
}

/// The limits last written to a slot cgroup. Jobs in a row mostly share their limits, and nothing
/// but the slot's holder writes its cgroup files (jobs have no cgroupfs), so unchanged limits are
/// not written again (on v1 that saves five file operations, ~75 µs, per job).
#[derive(Default)]
struct AppliedLimits(std::sync::Mutex<Option<CgroupLimits>>);

impl AppliedLimits {
    /// Run `write` unless `limits` are the ones it last wrote successfully.
    fn apply(
        &self,
        limits: &CgroupLimits,
        write: impl FnOnce() -> Result<(), CgroupError>,
    ) -> Result<(), CgroupError> {
        let mut applied = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if applied.as_ref() == Some(limits) {
            return Ok(());
        }
        *applied = None;
        write()?;
        *applied = Some(limits.clone());
        Ok(())
    }
}

/// `<parent>/<slot>` (or `<parent>` alone) as a relative path, refusing empty names, absolute
/// paths, `.` and `..`.
fn cgroup_path(parent: &str, slot: Option<&str>) -> Result<PathBuf, CgroupError> {
    let mut rel = PathBuf::new();
    for name in std::iter::once(parent).chain(slot) {
        let invalid = || CgroupError::InvalidName { name: name.into() };
        if name.is_empty() || name.contains('\n') {
            return Err(invalid());
        }
        for c in Path::new(name).components() {
            match c {
                Component::Normal(part) => rel.push(part),
                _ => return Err(invalid()),
            }
        }
    }
    Ok(rel)
}
