//! The v2 slot cgroup against fixture trees of the unified hierarchy.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mounts::Layout;
use super::tests::{get, put, MOUNTINFO_V2};
use super::v2::{fallback_peak, V2Slot};
use super::*;

/// A v2 fixture: the unified root and `corral-test` with their controller files, and the slot
/// directory holding what the kernel creates.
struct V2Fixture {
    root: tempfile::TempDir,
    layout: Layout,
}

impl V2Fixture {
    fn new(root_controllers: &str) -> V2Fixture {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("sys/fs/cgroup");
        put(&base.join("cgroup.controllers"), root_controllers);
        put(&base.join("cgroup.subtree_control"), "");
        let layout = Layout::find(MOUNTINFO_V2, root.path(), None).unwrap();
        let parent = base.join("corral-test");
        // What enabling the root's controllers makes available to the parent.
        put(&parent.join("cgroup.controllers"), root_controllers);
        put(&parent.join("cgroup.subtree_control"), "");
        let slot = parent.join("slot-0");
        for (file, contents) in [
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "1000\n"),
            ("memory.peak", "2000\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
            ),
            ("pids.max", "max\n"),
            ("cpu.max", "max 100000\n"),
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
        ] {
            put(&slot.join(file), contents);
        }
        V2Fixture { root, layout }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.root.path().join("sys/fs/cgroup").join(rel)
    }

    fn open(&self, kill_timeout: Duration) -> V2Slot {
        let Layout::V2(m) = &self.layout else {
            unreachable!()
        };
        V2Slot::open(m, Path::new("corral-test/slot-0"), kill_timeout).unwrap()
    }
}

#[test]
fn v2_open_enables_controllers_down_to_the_slot() {
    let fx = V2Fixture::new("cpuset cpu io memory pids\n");
    fx.open(KILL_TIMEOUT);
    let enabled = "+memory +pids +cpu";
    assert_eq!(get(&fx.dir("cgroup.subtree_control")), enabled);
    assert_eq!(get(&fx.dir("corral-test/cgroup.subtree_control")), enabled);

    // Already enabled: nothing is written.
    put(&fx.dir("cgroup.subtree_control"), "cpu memory pids\n");
    put(
        &fx.dir("corral-test/cgroup.subtree_control"),
        "memory pids\n",
    );
    fx.open(KILL_TIMEOUT);
    assert_eq!(get(&fx.dir("cgroup.subtree_control")), "cpu memory pids\n");
    assert_eq!(get(&fx.dir("corral-test/cgroup.subtree_control")), "+cpu");
}

#[test]
fn v2_open_refuses_hierarchies_without_pids_or_cgroup_kill() {
    let fx = V2Fixture::new("cpu memory pids\n");
    put(&fx.dir("corral-test/cgroup.controllers"), "cpu memory\n");
    let Layout::V2(m) = &fx.layout else {
        unreachable!()
    };
    let rel = Path::new("corral-test/slot-0");
    let err = V2Slot::open(m, rel, KILL_TIMEOUT).err().unwrap();
    assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");

    put(
        &fx.dir("corral-test/cgroup.controllers"),
        "cpu memory pids\n",
    );
    fs::remove_file(fx.dir("corral-test/slot-0/cgroup.kill")).unwrap();
    let err = V2Slot::open(m, rel, KILL_TIMEOUT).err().unwrap();
    assert!(err.to_string().contains("cgroup.kill"), "{err}");
}

#[test]
fn v2_limits_forbid_swap_and_set_cpu_max() {
    let fx = V2Fixture::new("cpu memory pids\n");
    let cg = fx.open(KILL_TIMEOUT);
    let limits = CgroupLimits {
        memory_bytes: 32 << 20,
        pids: 66,
        cpu_quota: Some(CpuQuota {
            quota_us: 150_000,
            period_us: 100_000,
        }),
    };
    cg.set_limits(&limits).unwrap();
    let slot = |f| get(&fx.dir("corral-test/slot-0").join(f));
    assert_eq!(slot("memory.max"), "33554432");
    assert_eq!(slot("memory.swap.max"), "0");
    assert_eq!(slot("pids.max"), "66");
    assert_eq!(slot("cpu.max"), "150000 100000");
    cg.set_limits(&CgroupLimits {
        cpu_quota: None,
        ..limits
    })
    .unwrap();
    assert_eq!(slot("cpu.max"), "max 100000");
}

#[test]
fn v2_without_the_cpu_controller_refuses_quotas_only() {
    let fx = V2Fixture::new("memory pids\n");
    let cg = fx.open(KILL_TIMEOUT);
    let mut limits = CgroupLimits {
        memory_bytes: 32 << 20,
        pids: 66,
        cpu_quota: Some(CpuQuota {
            quota_us: 1000,
            period_us: 100_000,
        }),
    };
    assert!(matches!(
        cg.set_limits(&limits).unwrap_err(),
        CgroupError::Unsupported { .. }
    ));
    limits.cpu_quota = None;
    cg.set_limits(&limits).unwrap();
    assert_eq!(get(&fx.dir("corral-test/slot-0/cpu.max")), "max 100000\n");
    assert_eq!(
        get(&fx.dir("corral-test/cgroup.subtree_control")),
        "+memory +pids"
    );
}

#[test]
fn v2_usage_reads_cpu_stat_memory_events_and_a_resettable_peak() {
    let fx = V2Fixture::new("cpu memory pids\n");
    let cg = fx.open(KILL_TIMEOUT);
    let peak = fx.dir("corral-test/slot-0/memory.peak");
    assert_eq!(
        cg.usage().unwrap(),
        Usage {
            cpu_ns: 1_500_000,
            memory_peak_bytes: 2000,
            oom_kills: 2,
        }
    );
    cg.reset_peak().unwrap();
    assert_eq!(get(&peak), "reset");
    // The kernel's answer through the same open file after the reset.
    put(&peak, "4096\n");
    assert_eq!(cg.usage().unwrap().memory_peak_bytes, 4096);
}

#[test]
fn v2_peak_without_memory_peak_is_the_sampled_maximum() {
    let fx = V2Fixture::new("cpu memory pids\n");
    let slot = fx.dir("corral-test/slot-0");
    fs::remove_file(slot.join("memory.peak")).unwrap();
    let cg = fx.open(KILL_TIMEOUT);
    cg.reset_peak().unwrap();
    put(&slot.join("memory.current"), "5000\n");
    cg.cpu_usage_ns().unwrap();
    put(&slot.join("memory.current"), "3000\n");
    assert_eq!(cg.usage().unwrap().memory_peak_bytes, 5000);
    cg.reset_peak().unwrap();
    assert_eq!(cg.usage().unwrap().memory_peak_bytes, 3000);

    // With a lifetime peak that cannot be reset: exact when it rose during the job.
    assert_eq!(fallback_peak(9000, 8000, 5000), 9000);
    assert_eq!(fallback_peak(8000, 8000, 5000), 5000);
}

#[test]
fn v2_kill_all_writes_cgroup_kill_and_waits_for_the_cgroup_to_empty() {
    let fx = V2Fixture::new("cpu memory pids\n");
    let slot = fx.dir("corral-test/slot-0");
    put(&slot.join("cgroup.procs"), "4242\n4243\n");
    let cg = fx.open(Duration::from_secs(2));
    assert_eq!(cg.pids().unwrap(), [4242, 4243]);
    let kernel = {
        let slot = slot.clone();
        // Plays the kernel: empties the cgroup once cgroup.kill was written.
        std::thread::spawn(move || {
            while get(&slot.join("cgroup.kill")) != "1" {
                std::thread::sleep(Duration::from_millis(1));
            }
            put(&slot.join("cgroup.procs"), "");
        })
    };
    cg.kill_all().unwrap();
    kernel.join().unwrap();
    assert!(cg.pids().unwrap().is_empty());
}

#[test]
fn v2_kill_all_gives_up_naming_the_survivors() {
    let fx = V2Fixture::new("cpu memory pids\n");
    put(&fx.dir("corral-test/slot-0/cgroup.procs"), "4242\n");
    let cg = fx.open(Duration::from_millis(150));
    match cg.kill_all().unwrap_err() {
        CgroupError::KillTimeout { pids, .. } => assert_eq!(pids, [4242]),
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(get(&fx.dir("corral-test/slot-0/cgroup.kill")), "1");
}
