//! THROWAWAY local placeholder (not committed): replaced by the cgroup branch.
use std::path::PathBuf;
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    source: std::io::Error,
}
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_quota: Option<CpuQuota>,
}
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
}
#[derive(Debug, Clone, Copy)]
pub enum Version {
    V1,
    V2,
}
pub trait SlotCgroup: Send + Sync {
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;
    fn add_process(&self, pid: u32) -> Result<(), CgroupError>;
    fn self_attach_files(&self) -> Vec<PathBuf>;
    fn reset_peak(&self) -> Result<(), CgroupError>;
    fn cpu_usage_ns(&self) -> Result<u64, CgroupError>;
    fn usage(&self) -> Result<Usage, CgroupError>;
    fn pids(&self) -> Result<Vec<u32>, CgroupError>;
    fn kill_all(&self) -> Result<(), CgroupError>;
    fn remove(&self) -> Result<(), CgroupError>;
}
struct V1 {
    dirs: Vec<(String, PathBuf)>,
}
fn w(p: PathBuf, v: &str) -> Result<(), CgroupError> {
    std::fs::write(&p, v).map_err(|source| CgroupError { path: p, source })
}
fn r(p: PathBuf) -> Result<String, CgroupError> {
    std::fs::read_to_string(&p).map_err(|source| CgroupError { path: p, source })
}
impl V1 {
    fn d(&self, c: &str) -> PathBuf {
        self.dirs.iter().find(|(n, _)| n == c).unwrap().1.clone()
    }
}
impl SlotCgroup for V1 {
    fn set_limits(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        let m = self.d("memory");
        let _ = w(m.join("memory.memsw.limit_in_bytes"), "-1");
        w(m.join("memory.limit_in_bytes"), &l.memory_bytes.to_string())?;
        w(
            m.join("memory.memsw.limit_in_bytes"),
            &l.memory_bytes.to_string(),
        )?;
        w(self.d("pids").join("pids.max"), &l.pids.to_string())
    }
    fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, d) in &self.dirs {
            w(d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }
    fn self_attach_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.join("tasks")).collect()
    }
    fn reset_peak(&self) -> Result<(), CgroupError> {
        w(self.d("memory").join("memory.max_usage_in_bytes"), "0")
    }
    fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        Ok(r(self.d("cpuacct").join("cpuacct.usage"))?
            .trim()
            .parse()
            .unwrap_or(0))
    }
    fn usage(&self) -> Result<Usage, CgroupError> {
        let oom = r(self.d("memory").join("memory.oom_control"))?;
        let oom_kills = oom
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Usage {
            cpu_ns: self.cpu_usage_ns()?,
            memory_peak_bytes: r(self.d("memory").join("memory.max_usage_in_bytes"))?
                .trim()
                .parse()
                .unwrap_or(0),
            oom_kills,
        })
    }
    fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(r(self.d("pids").join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect())
    }
    fn kill_all(&self) -> Result<(), CgroupError> {
        for p in self.pids()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }
    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for (_, d) in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
        Ok(())
    }
}
pub fn detect() -> Result<Version, CgroupError> {
    Ok(Version::V1)
}
pub fn open_slot(
    _v: Version,
    parent: &str,
    slot: &str,
) -> Result<Box<dyn SlotCgroup>, CgroupError> {
    let mut dirs = vec![];
    for c in ["memory", "pids", "cpuacct", "cpu", "freezer"] {
        let d = PathBuf::from(format!("/sys/fs/cgroup/{c}/{parent}/{slot}"));
        std::fs::create_dir_all(&d).map_err(|source| CgroupError {
            path: d.clone(),
            source,
        })?;
        dirs.push((c.to_string(), d));
    }
    Ok(Box::new(V1 { dirs }))
}
pub fn sweep(_v: Version, _parent: &str) -> Result<usize, CgroupError> {
    Ok(0)
}
