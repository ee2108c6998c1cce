//! cgroup v1: the slot's directory in the memory, pids, cpuacct, freezer and (for quotas) cpu
//! hierarchies; co-mounted controllers (`cpu,cpuacct`) share one directory. Limits go through
//! `cgroups-rs` controllers pointed at those directories; reads through [`files`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, MaxValue};
use cgroups_rs::FreezerState;

use super::kill::{freeze_and_kill, Freezable};
use super::mounts::{CgroupMount, V1Mounts};
use super::{files, AppliedLimits, CgroupError, CgroupLimits, CpuQuota, SlotCgroup, Usage};

/// A slot cgroup on v1.
pub(super) struct V1Slot {
    /// One directory per hierarchy the slot uses, with the mount it is in.
    dirs: Vec<(CgroupMount, PathBuf)>,
    memory: MemController,
    /// `memory.memsw.*` exists (swap accounting is on), so RAM + swap can be capped.
    memsw: bool,
    pids: PidController,
    /// Present when the cpu controller is mounted (needed for quotas only).
    cpu: Option<CpuController>,
    cpuacct_usage: files::Counter,
    max_usage: files::Counter,
    oom_control: files::Counter,
    applied: AppliedLimits,
    freezer: FreezerController,
    kill_timeout: Duration,
}

impl V1Slot {
    /// Create (or reuse) `<hierarchy>/<rel>` in each hierarchy.
    pub fn open(m: &V1Mounts, rel: &Path, kill_timeout: Duration) -> Result<V1Slot, CgroupError> {
        let mut dirs = Vec::new();
        for mount in m.unique() {
            let dir = mount.point.join(rel);
            files::create_dir(&dir)?;
            dirs.push((mount.clone(), dir));
        }
        let dir = |mount: &CgroupMount| mount.point.join(rel);
        let memory_dir = dir(&m.memory);
        let memsw = memory_dir.join("memory.memsw.limit_in_bytes").exists();
        if !memsw {
            tracing::warn!(
                cgroup = %memory_dir.display(),
                "no swap accounting (memory.memsw.*): swap use is not capped"
            );
        }
        Ok(V1Slot {
            cpuacct_usage: files::Counter::new(dir(&m.cpuacct).join("cpuacct.usage")),
            max_usage: files::Counter::writable(memory_dir.join("memory.max_usage_in_bytes")),
            oom_control: files::Counter::new(memory_dir.join("memory.oom_control")),
            memory: MemController::new(memory_dir, m.memory.point.clone(), false),
            memsw,
            pids: PidController::new(dir(&m.pids), m.pids.point.clone(), false),
            cpu: m
                .cpu
                .as_ref()
                .map(|c| CpuController::new(dir(c), c.point.clone(), false)),
            freezer: FreezerController::new(dir(&m.freezer), m.freezer.point.clone(), false),
            dirs,
            applied: AppliedLimits::default(),
            kill_timeout,
        })
    }

    fn memory_file(&self, name: &str) -> PathBuf {
        self.memory.path().join(name)
    }

    /// Memory first, then memory+swap to the same value; when raising above the current
    /// memory+swap limit the other way round (the kernel keeps memsw >= memory at all times).
    fn set_memory(&self, bytes: u64) -> Result<(), CgroupError> {
        let value = files::to_i64(bytes, self.memory_file("memory.limit_in_bytes"))?;
        let memory = || {
            self.memory.set_limit(value).map_err(limit_error(
                self.memory_file("memory.limit_in_bytes"),
                bytes,
            ))
        };
        if !self.memsw {
            return memory();
        }
        let memsw_file = self.memory_file("memory.memsw.limit_in_bytes");
        let memsw = || {
            self.memory
                .set_memswap_limit(value)
                .map_err(limit_error(memsw_file.clone(), bytes))
        };
        if memsw_first(bytes, files::read_u64(&memsw_file)?) {
            memsw()?;
            memory()
        } else {
            memory()?;
            memsw()
        }
    }

    fn set_cpu_quota(&self, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        let Some(cpu) = &self.cpu else {
            return match quota {
                None => Ok(()),
                Some(_) => Err(CgroupError::Unsupported {
                    path: self
                        .cpuacct_usage
                        .path()
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    what: "the cpu controller (needed for a cpu quota)",
                }),
            };
        };
        let file = |name: &str| cpu.path().join(name);
        match quota {
            Some(q) => {
                let period = file("cpu.cfs_period_us");
                cpu.set_cfs_period(q.period_us)
                    .map_err(limit_error(period, q.period_us))?;
                let quota = file("cpu.cfs_quota_us");
                cpu.set_cfs_quota(files::to_i64(q.quota_us, quota.clone())?)
                    .map_err(limit_error(quota, q.quota_us))
            }
            None => cpu.set_cfs_quota(-1).map_err(|e| CgroupError::SetLimit {
                path: file("cpu.cfs_quota_us"),
                value: "-1".into(),
                source: files::io_error(e),
            }),
        }
    }
}

/// Whether memory+swap must be raised before memory: when the new limit is above it.
pub(super) fn memsw_first(new_limit: u64, current_memsw: u64) -> bool {
    new_limit > current_memsw
}

fn limit_error(
    path: PathBuf,
    value: u64,
) -> impl FnOnce(cgroups_rs::fs::error::Error) -> CgroupError {
    move |e| CgroupError::SetLimit {
        path,
        value: value.to_string(),
        source: files::io_error(e),
    }
}

impl SlotCgroup for V1Slot {
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.applied.apply(limits, || {
            self.set_memory(limits.memory_bytes)?;
            let pids_max = self.pids.path().join("pids.max");
            let pids = files::to_i64(limits.pids, pids_max.clone())?;
            self.pids
                .set_pid_max(MaxValue::Value(pids))
                .map_err(limit_error(pids_max, limits.pids))?;
            self.set_cpu_quota(limits.cpu_quota)
        })
    }

    fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        // A plain write per hierarchy: cgroups-rs would need one controller object per directory
        // (cpuacct has no other use for one) to do the same.
        for (_, dir) in &self.dirs {
            let path = dir.join("cgroup.procs");
            files::write(&path, &pid.to_string()).map_err(|source| CgroupError::AddProcess {
                path,
                pid,
                source,
            })?;
        }
        Ok(())
    }

    fn self_attach_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, dir)| dir.join("tasks")).collect()
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        // Through the counter's open file: an open walks the cgroupfs path at every job.
        self.max_usage
            .write("0")
            .map_err(|source| CgroupError::ResetPeak {
                path: self.max_usage.path().to_path_buf(),
                source,
            })
    }

    fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        self.cpuacct_usage.read_u64()
    }

    fn usage(&self) -> Result<Usage, CgroupError> {
        Ok(Usage {
            cpu_ns: self.cpu_usage_ns()?,
            memory_peak_bytes: self.max_usage.read_u64()?,
            // Linux 4.13+; cumulative over the cgroup's life.
            oom_kills: self.oom_control.read_keyed("oom_kill")?,
        })
    }

    /// From the pids hierarchy alone (one read per job instead of five, ~20 µs each): processes
    /// join every hierarchy together, and the kill loop reads the union anyway.
    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        // Opened afresh each time: v1 keeps a pid list per open file for a second.
        let mut pids = files::read_pids(&self.pids.path().join("cgroup.procs"))?;
        pids.sort_unstable();
        Ok(pids)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        freeze_and_kill(self, self.kill_timeout)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        let deadline = Instant::now() + self.kill_timeout;
        for (_, dir) in &self.dirs {
            files::remove_dir(dir, deadline)?;
            files::remove_parent_if_empty(dir);
        }
        Ok(())
    }
}

impl Freezable for V1Slot {
    fn path(&self) -> &Path {
        self.freezer.path()
    }

    /// The union over every hierarchy: a process that is in only some of them (a partly failed
    /// `add_process`) still keeps that directory from being removed.
    fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for (_, dir) in &self.dirs {
            pids.extend(files::read_pids(&dir.join("cgroup.procs"))?);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (result, state) = if frozen {
            (self.freezer.freeze(), "FROZEN")
        } else {
            (self.freezer.thaw(), "THAWED")
        };
        result.map_err(|e| CgroupError::Freeze {
            path: self.freezer.path().join("freezer.state"),
            state,
            source: files::io_error(e),
        })
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        let path = self.freezer.path().join("freezer.state");
        match self.freezer.state() {
            Ok(state) => Ok(matches!(state, FreezerState::Frozen)),
            // cgroups-rs reports both unreadable and unknown contents as an error: tell them apart.
            Err(_) => Err(files::parse_error(path.clone(), &files::read(&path)?)),
        }
    }

    fn sigkill(&self, pid: u32) -> Result<(), CgroupError> {
        // Listed while frozen, so the pid still names that task (a frozen task cannot exit);
        // pids fit in i32 (pid_max is at most 2^22).
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(CgroupError::Kill {
                path: self.path().to_path_buf(),
                source: e.into(),
            }),
        }
    }
}
