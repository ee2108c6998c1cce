//! The host's load for the node's status: CPU utilization between two samples of `/proc/stat`,
//! and available memory from `/proc/meminfo`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// CPU time counters of the previous sample.
#[derive(Default)]
pub(crate) struct CpuLoad {
    /// (total jiffies, idle + iowait jiffies) at the last sample.
    last: Mutex<Option<(u64, u64)>>,
}

impl CpuLoad {
    /// Utilization of all cores since the previous call, 0.0 to 1.0 (0.0 on the first call or
    /// when /proc/stat is unreadable).
    pub(crate) fn sample(&self) -> f64 {
        let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            return 0.0;
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.replace(now);
        match before {
            Some((total, idle)) if now.0 > total => {
                let busy = (now.0 - total).saturating_sub(now.1.saturating_sub(idle));
                (busy as f64 / (now.0 - total) as f64).clamp(0.0, 1.0)
            }
            _ => 0.0,
        }
    }
}

/// How long a [`HostLoad`] reading is reused: the node reports its status on every slot change
/// (twice per job), and reading /proc for each cost ~5% of a busy server's CPU.
const REUSE_FOR: Duration = Duration::from_millis(250);

/// CPU utilization and available memory, read from /proc at most every [`REUSE_FOR`].
#[derive(Default)]
pub(crate) struct HostLoad {
    cpu: CpuLoad,
    /// When it was read last, and what it was.
    last: Mutex<Option<(Instant, f64, u64)>>,
}

impl HostLoad {
    /// (CPU utilization 0.0 to 1.0, available memory in bytes).
    pub(crate) fn sample(&self) -> (f64, u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, cpu, mem)) = *last {
            if at.elapsed() < REUSE_FOR {
                return (cpu, mem);
            }
        }
        let (cpu, mem) = (self.cpu.sample(), memory_available());
        *last = Some((Instant::now(), cpu, mem));
        (cpu, mem)
    }
}

/// (total, idle + iowait) from the aggregate `cpu` line.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    Some((total, idle))
}

/// `MemAvailable` in bytes (0 when unreadable).
pub(crate) fn memory_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo(&s))
        .unwrap_or(0)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_stat(stat), Some((1000, 845)));
        assert_eq!(parse_stat("intr 1 2"), None);
        let meminfo = "MemTotal:  16 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some(2 << 20));
    }

    #[test]
    fn samples_stay_in_range() {
        let load = CpuLoad::default();
        assert_eq!(load.sample(), 0.0, "first sample has no interval");
        let u = load.sample();
        assert!((0.0..=1.0).contains(&u), "{u}");
        assert!(memory_available() > 0);
    }
}
