//! cgroup v2: one directory in the unified hierarchy, with memory, pids and (when available) cpu
//! enabled down to it through each level's `cgroup.subtree_control`. Killed with `cgroup.kill`
//! (Linux 5.14+). Limits go through `cgroups-rs` controllers pointed at the directory; reads,
//! `cgroup.kill` and `cgroup.subtree_control` through [`files`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::MaxValue;

use super::files::{self, poll_until};
use super::mounts::CgroupMount;
use super::{AppliedLimits, CgroupError, CgroupLimits, SlotCgroup, Usage};

/// How often `cgroup.kill` is written again while waiting for the cgroup to empty.
const KILL_ROUND: Duration = Duration::from_millis(100);

/// A slot cgroup on v2.
pub(super) struct V2Slot {
    dir: PathBuf,
    memory: MemController,
    /// `memory.swap.max` exists, so swap can be forbidden (RAM + swap = the memory limit).
    swap: bool,
    pids: PidController,
    /// Present when the cpu controller is enabled for the slot (needed for quotas only;
    /// `cpu.stat` usage exists without it).
    cpu: Option<CpuController>,
    peak: Mutex<Peak>,
    cpu_stat: files::Counter,
    memory_events: files::Counter,
    applied: AppliedLimits,
    kill_timeout: Duration,
}

/// Peak memory since the last reset. Since Linux 6.12 a write to `memory.peak` restarts the
/// measurement seen through that open file, so the slot keeps one open. Older kernels cannot
/// reset it; the peak is then the lifetime peak if that rose during the job (it is then exact),
/// else the highest `memory.current` sampled (at reset, at every CPU-time poll and at the end).
struct Peak {
    /// `memory.peak` opened read-write, while resetting through it works.
    file: Option<File>,
    /// Lifetime `memory.peak` at the last reset (0 without the file).
    lifetime_at_reset: u64,
    /// Highest `memory.current` seen since the last reset.
    sampled: u64,
}

impl V2Slot {
    /// Create (or reuse) `<root>/<rel>`, enabling the controllers on the way down.
    pub fn open(
        mount: &CgroupMount,
        rel: &Path,
        kill_timeout: Duration,
    ) -> Result<V2Slot, CgroupError> {
        let mut dir = mount.point.clone();
        let mut cpu = false;
        for part in rel.components() {
            cpu = enable_controllers(&dir)?;
            dir.push(part);
            files::create_dir(&dir)?;
        }
        if !dir.join("cgroup.kill").exists() {
            return Err(CgroupError::Unsupported {
                path: dir,
                what: "cgroup.kill (linux 5.14 or later)",
            });
        }
        let file = File::options()
            .read(true)
            .write(true)
            .open(dir.join("memory.peak"))
            .ok();
        let root = mount.point.clone();
        Ok(V2Slot {
            memory: MemController::new(dir.clone(), root.clone(), true),
            swap: dir.join("memory.swap.max").exists(),
            pids: PidController::new(dir.clone(), root.clone(), true),
            cpu: cpu.then(|| CpuController::new(dir.clone(), root, true)),
            peak: Mutex::new(Peak {
                file,
                lifetime_at_reset: 0,
                sampled: 0,
            }),
            cpu_stat: files::Counter::new(dir.join("cpu.stat")),
            memory_events: files::Counter::new(dir.join("memory.events")),
            dir,
            applied: AppliedLimits::default(),
            kill_timeout,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn peak(&self) -> MutexGuard<'_, Peak> {
        self.peak.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifetime peak (0 before Linux 5.19, which has no `memory.peak`).
    fn lifetime_peak(&self) -> Result<u64, CgroupError> {
        let path = self.file("memory.peak");
        if path.exists() {
            files::read_u64(&path)
        } else {
            Ok(0)
        }
    }

    fn sample(&self, peak: &mut Peak) -> Result<(), CgroupError> {
        let current = files::read_u64(&self.file("memory.current"))?;
        peak.sampled = peak.sampled.max(current);
        Ok(())
    }

    fn peak_bytes(&self) -> Result<u64, CgroupError> {
        let mut peak = self.peak();
        if let Some(file) = &mut peak.file {
            let path = self.file("memory.peak");
            let mut text = String::new();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut text))
                .map_err(|source| CgroupError::Read {
                    path: path.clone(),
                    source,
                })?;
            return text
                .trim()
                .parse()
                .map_err(|_| files::parse_error(path, &text));
        }
        self.sample(&mut peak)?;
        Ok(fallback_peak(
            self.lifetime_peak()?,
            peak.lifetime_at_reset,
            peak.sampled,
        ))
    }

    /// memory.max, memory.swap.max = 0 (RAM + swap = the limit), pids.max, cpu.max.
    fn write_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let limit_err = |name: &str, value: String| {
            let path = self.file(name);
            move |e| CgroupError::SetLimit {
                path,
                value,
                source: files::io_error(e),
            }
        };
        let bytes = limits.memory_bytes;
        self.memory
            .set_limit(files::to_i64(bytes, self.file("memory.max"))?)
            .map_err(limit_err("memory.max", bytes.to_string()))?;
        if self.swap {
            self.memory
                .set_memswap_limit(0)
                .map_err(limit_err("memory.swap.max", "0".into()))?;
        }
        let pids = files::to_i64(limits.pids, self.file("pids.max"))?;
        self.pids
            .set_pid_max(MaxValue::Value(pids))
            .map_err(limit_err("pids.max", pids.to_string()))?;
        self.set_cpu_quota(limits)
    }

    fn set_cpu_quota(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let (quota, period) = match (limits.cpu_quota, &self.cpu) {
            (None, None) => return Ok(()),
            (Some(_), None) => {
                return Err(CgroupError::Unsupported {
                    path: self.dir.clone(),
                    what: "the cpu controller (needed for a cpu quota)",
                })
            }
            // "max" keeps the current period.
            (None, Some(_)) => (-1, None),
            (Some(q), Some(_)) => (
                files::to_i64(q.quota_us, self.file("cpu.max"))?,
                Some(q.period_us),
            ),
        };
        let cpu = self.cpu.as_ref().expect("matched above");
        cpu.set_cfs_quota_and_period(Some(quota), period)
            .map_err(|e| CgroupError::SetLimit {
                path: self.file("cpu.max"),
                value: match period {
                    Some(period) => format!("{quota} {period}"),
                    None => "max".into(),
                },
                source: files::io_error(e),
            })
    }
}

/// The job's peak when `memory.peak` cannot be reset: the lifetime peak if it rose since the reset
/// (the job set it, so it is exact), else the highest sample.
pub(super) fn fallback_peak(lifetime: u64, lifetime_at_reset: u64, sampled: u64) -> u64 {
    if lifetime > lifetime_at_reset {
        lifetime
    } else {
        sampled
    }
}

/// Make memory, pids and (when available) cpu available to the children of `dir`, in one write to
/// its `cgroup.subtree_control`. Returns whether cpu is available.
fn enable_controllers(dir: &Path) -> Result<bool, CgroupError> {
    let available = files::read(&dir.join("cgroup.controllers"))?;
    let enabled = files::read(&dir.join("cgroup.subtree_control"))?;
    let has = |text: &str, c: &str| text.split_whitespace().any(|x| x == c);
    if !has(&available, "memory") || !has(&available, "pids") {
        return Err(CgroupError::Unsupported {
            path: dir.to_path_buf(),
            what: "the memory and pids controllers",
        });
    }
    let wanted: Vec<String> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| has(&available, c) && !has(&enabled, c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty() {
        let path = dir.join("cgroup.subtree_control");
        let controllers = wanted.join(" ");
        files::write(&path, &controllers).map_err(|source| CgroupError::EnableControllers {
            path,
            controllers,
            source,
        })?;
    }
    Ok(has(&available, "cpu"))
}

impl SlotCgroup for V2Slot {
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.applied.apply(limits, || self.write_limits(limits))
    }

    fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let path = self.file("cgroup.procs");
        files::write(&path, &pid.to_string()).map_err(|source| CgroupError::AddProcess {
            path,
            pid,
            source,
        })
    }

    fn self_attach_files(&self) -> Vec<PathBuf> {
        vec![self.file("cgroup.procs")]
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        let mut peak = self.peak();
        if let Some(file) = &mut peak.file {
            match file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(b"reset"))
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::debug!(%error, "memory.peak cannot be reset; sampling memory.current");
                    peak.file = None;
                }
            }
        }
        peak.lifetime_at_reset = self.lifetime_peak()?;
        peak.sampled = 0;
        self.sample(&mut peak)
    }

    fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        {
            let mut peak = self.peak();
            if peak.file.is_none() {
                self.sample(&mut peak)?;
            }
        }
        let usec = self.cpu_stat.read_keyed("usage_usec")?;
        Ok(usec.saturating_mul(1000))
    }

    fn usage(&self) -> Result<Usage, CgroupError> {
        Ok(Usage {
            cpu_ns: self.cpu_usage_ns()?,
            memory_peak_bytes: self.peak_bytes()?,
            // Cumulative; counts the slot's descendants too (it has none).
            oom_kills: self.memory_events.read_keyed("oom_kill")?,
        })
    }

    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = files::read_pids(&self.file("cgroup.procs"))?;
        pids.sort_unstable();
        Ok(pids)
    }

    /// `cgroup.kill` SIGKILLs every task atomically (forks included), so no freezing is needed;
    /// it is written again every [`KILL_ROUND`] in case a process was moved in meanwhile.
    fn kill_all(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        let deadline = start + self.kill_timeout;
        let kill = self.file("cgroup.kill");
        loop {
            files::write(&kill, "1").map_err(|source| CgroupError::Kill {
                path: kill.clone(),
                source,
            })?;
            let round = deadline.min(Instant::now() + KILL_ROUND);
            if poll_until(round, || self.pids().map(|p| p.is_empty()))? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    path: self.dir.clone(),
                    pids: self.pids()?,
                    waited: start.elapsed(),
                });
            }
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        files::remove_dir(&self.dir, Instant::now() + self.kill_timeout)?;
        files::remove_parent_if_empty(&self.dir);
        Ok(())
    }
}
