//! Detection, limits, counters and kill logic against fixture trees of both cgroup versions.

use std::fs;
use std::path::{Path, PathBuf};

use super::kill::Freezable;
use super::mounts::{self, Layout};
use super::v1::memsw_first;
use super::v1::V1Slot;
use super::*;

/// This machine: v1 with cpu and cpuacct mounted separately, and a v2 mount with no controllers.
const MOUNTINFO_V1_SPLIT: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A systemd "hybrid" host: cpu and cpuacct co-mounted, an empty unified hierarchy.
const MOUNTINFO_V1_COMBINED: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
33 25 0:30 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
";

/// A pure v2 host.
pub(super) const MOUNTINFO_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

pub(super) fn put(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

pub(super) fn get(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

const UNLIMITED: &str = "9223372036854771712\n";

/// A v1 fixture tree laid out as `mountinfo` says, with `corral-test/slot-0` already holding the
/// files the kernel creates.
struct V1Fixture {
    root: tempfile::TempDir,
    layout: Layout,
}

impl V1Fixture {
    fn new(mountinfo: &str, memsw: bool) -> V1Fixture {
        let root = tempfile::tempdir().unwrap();
        put(
            &root.path().join("sys/fs/cgroup/unified/cgroup.controllers"),
            "",
        );
        let layout = Layout::find(mountinfo, root.path(), None).unwrap();
        let Layout::V1(m) = &layout else {
            panic!("expected v1, got {layout:?}")
        };
        for mount in m.unique() {
            let dir = mount.point.join("corral-test/slot-0");
            put(&dir.join("cgroup.procs"), "");
            put(&dir.join("tasks"), "");
        }
        let dir = |m: &mounts::CgroupMount| m.point.join("corral-test/slot-0");
        let mem = dir(&m.memory);
        put(&mem.join("memory.limit_in_bytes"), UNLIMITED);
        if memsw {
            put(&mem.join("memory.memsw.limit_in_bytes"), UNLIMITED);
        }
        put(&mem.join("memory.max_usage_in_bytes"), "52953088\n");
        put(
            &mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        put(&dir(&m.pids).join("pids.max"), "max\n");
        put(&dir(&m.cpuacct).join("cpuacct.usage"), "123456789\n");
        if let Some(cpu) = &m.cpu {
            put(&dir(cpu).join("cpu.cfs_quota_us"), "-1\n");
            put(&dir(cpu).join("cpu.cfs_period_us"), "100000\n");
        }
        put(&dir(&m.freezer).join("freezer.state"), "THAWED\n");
        V1Fixture { root, layout }
    }

    fn slot(&self, hierarchy: &str) -> PathBuf {
        self.root
            .path()
            .join("sys/fs/cgroup")
            .join(hierarchy)
            .join("corral-test/slot-0")
    }

    fn open(&self) -> Box<dyn SlotCgroup> {
        open_in(&self.layout, "corral-test", "slot-0").unwrap()
    }
}

#[test]
fn detects_this_hosts_v1_layout_with_split_cpu_and_cpuacct() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let Layout::V1(m) = &fx.layout else {
        unreachable!()
    };
    let base = fx.root.path().join("sys/fs/cgroup");
    assert_eq!(m.memory.point, base.join("memory"));
    assert_eq!(m.cpuacct.point, base.join("cpuacct"));
    assert_eq!(m.cpu.as_ref().unwrap().point, base.join("cpu"));
    let points: Vec<&Path> = m.unique().iter().map(|m| m.point.as_path()).collect();
    let names = ["memory", "pids", "cpuacct", "cpu", "freezer"];
    assert_eq!(
        points,
        names
            .map(|n| base.join(n))
            .iter()
            .map(PathBuf::as_path)
            .collect::<Vec<_>>()
    );
}

#[test]
fn detects_co_mounted_cpu_and_cpuacct_as_one_hierarchy() {
    let fx = V1Fixture::new(MOUNTINFO_V1_COMBINED, true);
    let Layout::V1(m) = &fx.layout else {
        unreachable!()
    };
    let combined = fx.root.path().join("sys/fs/cgroup/cpu,cpuacct");
    assert_eq!(m.cpuacct.point, combined);
    assert_eq!(m.cpu.as_ref().unwrap().point, combined);
    assert_eq!(m.unique().len(), 4);
    let attach = fx.open().self_attach_files();
    assert_eq!(attach.len(), 4);
    assert!(attach.contains(&fx.slot("cpu,cpuacct").join("tasks")));
}

#[test]
fn detects_v2_only_when_the_unified_hierarchy_has_memory_and_pids() {
    let root = tempfile::tempdir().unwrap();
    let controllers = root.path().join("sys/fs/cgroup/cgroup.controllers");
    put(
        &controllers,
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    let layout = Layout::find(MOUNTINFO_V2, root.path(), None).unwrap();
    assert_eq!(layout.version(), Version::V2);
    assert_eq!(layout.mounts()[0].point, root.path().join("sys/fs/cgroup"));

    put(&controllers, "cpuset cpu io memory\n");
    let err = Layout::find(MOUNTINFO_V2, root.path(), None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CgroupError::NoHierarchy { .. }), "{text}");
    assert!(
        text.contains("lacks the memory or pids") && text.contains("no v1 hierarchy for memory"),
        "{text}"
    );
}

#[test]
fn an_empty_unified_mount_next_to_v1_means_v1_and_versions_can_be_forced() {
    let root = tempfile::tempdir().unwrap();
    put(
        &root.path().join("sys/fs/cgroup/unified/cgroup.controllers"),
        "\n",
    );
    let layout = Layout::find(MOUNTINFO_V1_SPLIT, root.path(), None).unwrap();
    assert_eq!(layout.version(), Version::V1);
    assert!(Layout::find(MOUNTINFO_V1_SPLIT, root.path(), Some(Version::V2)).is_err());

    put(
        &root.path().join("sys/fs/cgroup/unified/cgroup.controllers"),
        "memory pids\n",
    );
    let hybrid = Layout::find(MOUNTINFO_V1_SPLIT, root.path(), None).unwrap();
    assert_eq!(hybrid.version(), Version::V2);
    let forced = Layout::find(MOUNTINFO_V1_SPLIT, root.path(), Some(Version::V1)).unwrap();
    assert_eq!(forced.version(), Version::V1);
}

#[test]
fn mountinfo_escapes_and_mount_roots_are_honoured() {
    let text = "40 31 0:37 /lxc/box /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n\
                41 31 0:38 / /sys/fs/cgroup/bad - tmpfs tmpfs rw\n";
    let mounts = mounts::parse_mountinfo(text, Path::new("/"));
    assert_eq!(mounts.len(), 1);
    let m = &mounts[0];
    assert_eq!(m.point, Path::new("/sys/fs/cgroup/my mem"));
    assert_eq!(m.root, Path::new("/lxc/box"));
}

#[test]
fn cgroup_names_must_be_plain_relative_paths() {
    assert_eq!(
        cgroup_path("corral", Some("slot-1")).unwrap(),
        Path::new("corral/slot-1")
    );
    assert_eq!(cgroup_path("a/b", None).unwrap(), Path::new("a/b"));
    for bad in ["", "../x", "/abs", "./x", "a/../b", "a\nb"] {
        assert!(cgroup_path(bad, Some("slot-0")).is_err(), "{bad:?}");
        assert!(cgroup_path("corral", Some(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn v1_limits_land_in_memory_memsw_pids_and_cpu() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let cg = fx.open();
    let limits = CgroupLimits {
        memory_bytes: 64 << 20,
        pids: 34,
        cpu_quota: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
    };
    cg.set_limits(&limits).unwrap();
    let mem = fx.slot("memory");
    assert_eq!(get(&mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(get(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(get(&fx.slot("pids").join("pids.max")), "34");
    assert_eq!(get(&fx.slot("cpu").join("cpu.cfs_quota_us")), "50000");
    assert_eq!(get(&fx.slot("cpu").join("cpu.cfs_period_us")), "100000");

    // The next job has no quota: the previous one's must not stay.
    cg.set_limits(&CgroupLimits {
        cpu_quota: None,
        ..limits
    })
    .unwrap();
    assert_eq!(get(&fx.slot("cpu").join("cpu.cfs_quota_us")), "-1");
}

#[test]
fn v1_memory_goes_before_memsw_unless_raising_above_it() {
    // Lowering (or keeping): memory first, so memsw >= memory holds after each write.
    assert!(!memsw_first(64 << 20, 9_223_372_036_854_771_712));
    assert!(!memsw_first(64 << 20, 64 << 20));
    // Raising above the current memsw limit: memsw first.
    assert!(memsw_first(256 << 20, 64 << 20));

    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let mem = fx.slot("memory");
    put(&mem.join("memory.limit_in_bytes"), "33554432\n");
    put(&mem.join("memory.memsw.limit_in_bytes"), "33554432\n");
    let limits = CgroupLimits {
        memory_bytes: 256 << 20,
        pids: 10,
        cpu_quota: None,
    };
    fx.open().set_limits(&limits).unwrap();
    assert_eq!(get(&mem.join("memory.limit_in_bytes")), "268435456");
    assert_eq!(get(&mem.join("memory.memsw.limit_in_bytes")), "268435456");
}

#[test]
fn v1_without_swap_accounting_writes_no_memsw_file() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, false);
    let limits = CgroupLimits {
        memory_bytes: 1 << 30,
        pids: 10,
        cpu_quota: None,
    };
    fx.open().set_limits(&limits).unwrap();
    let mem = fx.slot("memory");
    assert_eq!(get(&mem.join("memory.limit_in_bytes")), "1073741824");
    assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn v1_quota_without_a_cpu_hierarchy_is_refused() {
    let no_cpu: String = MOUNTINFO_V1_SPLIT
        .lines()
        .filter(|l| !l.ends_with("rw,cpu"))
        .map(|l| format!("{l}\n"))
        .collect();
    let fx = V1Fixture::new(&no_cpu, true);
    let cg = fx.open();
    let mut limits = CgroupLimits {
        memory_bytes: 1 << 30,
        pids: 10,
        cpu_quota: Some(CpuQuota {
            quota_us: 10_000,
            period_us: 100_000,
        }),
    };
    let err = cg.set_limits(&limits).unwrap_err();
    assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    limits.cpu_quota = None;
    cg.set_limits(&limits).unwrap();
}

#[test]
fn v1_usage_is_parsed_from_cpuacct_max_usage_and_oom_control() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let cg = fx.open();
    let usage = cg.usage().unwrap();
    assert_eq!(
        usage,
        Usage {
            cpu_ns: 123_456_789,
            memory_peak_bytes: 52_953_088,
            oom_kills: 3,
        }
    );
    assert_eq!(cg.cpu_usage_ns().unwrap(), 123_456_789);
    cg.reset_peak().unwrap();
    assert_eq!(
        get(&fx.slot("memory").join("memory.max_usage_in_bytes")),
        "0"
    );
}

#[test]
fn a_counter_read_again_shows_the_value_written_since() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpuacct.usage");
    put(&path, "5\n");
    let counter = files::Counter::new(path.clone());
    assert_eq!(counter.read_u64().unwrap(), 5);
    files::write(&path, "123456789\n").unwrap();
    assert_eq!(counter.read_u64().unwrap(), 123_456_789);
    files::write(&path, "7\n").unwrap();
    assert_eq!(counter.read_u64().unwrap(), 7);
    assert_eq!(counter.path(), path);
}

#[test]
fn v1_unreadable_or_malformed_counters_are_errors_not_zero() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let cg = fx.open();
    let oom = fx.slot("memory").join("memory.oom_control");
    put(&oom, "oom_kill_disable 0\nunder_oom 0\n");
    match cg.usage().unwrap_err() {
        CgroupError::Parse { path, .. } => assert_eq!(path, oom),
        other => panic!("expected a parse error, got {other}"),
    }
    // Counters stay open once read (as on cgroupfs, where only removing the cgroup takes them
    // away): a slot opened after the file went away finds it missing.
    fs::remove_file(fx.slot("cpuacct").join("cpuacct.usage")).unwrap();
    assert!(matches!(
        fx.open().cpu_usage_ns().unwrap_err(),
        CgroupError::Read { .. }
    ));
    put(&fx.slot("pids").join("cgroup.procs"), "12\nnot-a-pid\n");
    assert!(matches!(cg.pids().unwrap_err(), CgroupError::Parse { .. }));
}

#[test]
fn v1_pids_come_from_the_pids_hierarchy_and_the_kill_loop_sees_every_one() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    put(&fx.slot("memory").join("cgroup.procs"), "7\n5\n");
    put(&fx.slot("pids").join("cgroup.procs"), "9\n7\n");
    let Layout::V1(m) = &fx.layout else {
        unreachable!()
    };
    let slot = V1Slot::open(m, Path::new("corral-test/slot-0"), KILL_TIMEOUT).unwrap();
    assert_eq!(slot.pids().unwrap(), [7, 9]);
    assert_eq!(slot.procs().unwrap(), [5, 7, 9]);

    slot.add_process(4321).unwrap();
    for h in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        assert_eq!(get(&fx.slot(h).join("cgroup.procs")), "4321", "{h}");
    }
    let attach = slot.self_attach_files();
    assert_eq!(attach.len(), 5);
    assert!(attach
        .iter()
        .all(|f| f.ends_with("corral-test/slot-0/tasks")));
}

#[test]
fn unchanged_limits_are_not_written_again() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let cg = fx.open();
    let mut limits = CgroupLimits {
        memory_bytes: 64 << 20,
        pids: 10,
        cpu_quota: None,
    };
    let pids_max = fx.slot("pids").join("pids.max");
    cg.set_limits(&limits).unwrap();
    put(&pids_max, "sentinel");
    cg.set_limits(&limits).unwrap();
    assert_eq!(get(&pids_max), "sentinel");
    limits.pids = 11;
    cg.set_limits(&limits).unwrap();
    assert_eq!(get(&pids_max), "11");
}

#[test]
fn v1_kill_all_of_an_empty_cgroup_leaves_it_thawed() {
    let fx = V1Fixture::new(MOUNTINFO_V1_SPLIT, true);
    let state = fx.slot("freezer").join("freezer.state");
    // A crashed run may have left it frozen: a spawner joining it would freeze too.
    put(&state, "FROZEN\n");
    fx.open().kill_all().unwrap();
    assert_eq!(get(&state), "THAWED");
}

#[test]
fn children_are_listed_across_hierarchies() {
    let fx = V1Fixture::new(MOUNTINFO_V1_COMBINED, true);
    fs::create_dir_all(fx.slot("memory").with_file_name("slot-3")).unwrap();
    put(&fx.slot("pids").with_file_name("not-a-cgroup"), "");
    let names = fx.layout.children(Path::new("corral-test")).unwrap();
    assert_eq!(names, ["slot-0", "slot-3"]);
    assert!(fx.layout.children(Path::new("absent")).unwrap().is_empty());
}
