//! Real cgroups on this host (root only: they fail with "needs root" otherwise). Each test works
//! under its own parent, `corral-test-<pid>[-suffix]`, and removes it.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: these tests create real cgroups"
    );
}

/// Every `<hierarchy>/<parent>` directory under /sys/fs/cgroup.
fn leftovers(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        let dir = entry.unwrap().path().join(parent);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

/// Removes the test's parent cgroups (and kills what is left in the slots) even when a test fails.
struct Parent {
    name: String,
    hierarchies: Hierarchies,
    children: Vec<Child>,
}

impl Parent {
    fn new(suffix: &str) -> Parent {
        require_root();
        Parent {
            name: format!("corral-test-{}{suffix}", std::process::id()),
            hierarchies: Hierarchies::probe().unwrap(),
            children: Vec::new(),
        }
    }

    fn open(&self, slot: &str) -> Box<dyn SlotCgroup> {
        self.hierarchies.open_slot(&self.name, slot).unwrap()
    }

    /// A shell, moved into `cg`, that runs `script` once it reads a line (so everything the script
    /// starts is born inside the cgroup).
    fn start_in(&mut self, cg: &dyn SlotCgroup, script: &str) -> u32 {
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        cg.add_process(pid).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        self.children.push(child);
        pid
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in leftovers(&self.name) {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// A memory limit of `bytes`, 16 processes, no CPU quota.
fn memory_limit(bytes: u64) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: bytes,
        pids: 16,
        cpu_quota: None,
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_real_slot_cgroup_holds_kills_and_removes_a_process_tree() {
    let mut parent = Parent::new("");
    let cg = parent.open("slot-0");
    cg.set_limits(&CgroupLimits {
        memory_bytes: 64 << 20,
        pids: 16,
        cpu_quota: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
    })
    .unwrap();
    cg.reset_peak().unwrap();
    let sleeper = Command::new("sleep").arg("100").spawn().unwrap();
    cg.add_process(sleeper.id()).unwrap();
    let sleeper_pid = sleeper.id();
    parent.children.push(sleeper);
    assert_eq!(cg.pids().unwrap(), [sleeper_pid]);

    // Grandchildren born inside the cgroup, not children of this process.
    let shell = parent.start_in(&*cg, "sleep 100 & sleep 100 & wait");
    wait_for("the shell's two sleeps", || cg.pids().unwrap().len() == 4);
    assert!(cg.pids().unwrap().contains(&shell));
    assert!(cg.cpu_usage_ns().unwrap() > 0);

    cg.kill_all().unwrap();
    // Dead but not yet reaped by this process: no longer listed.
    assert_eq!(cg.pids().unwrap(), Vec::<u32>::new());
    for child in &mut parent.children {
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    parent.children.clear();

    // The last slot of the parent takes the parent with it.
    cg.remove().unwrap();
    assert_eq!(leftovers(&parent.name), Vec::<PathBuf>::new());
}

#[test]
fn a_memory_hog_is_oom_killed_and_counted() {
    let mut parent = Parent::new("-oom");
    let cg = parent.open("slot-0");
    cg.set_limits(&memory_limit(32 << 20)).unwrap();
    cg.reset_peak().unwrap();
    let before = cg.usage().unwrap();
    parent.start_in(&*cg, "exec /usr/bin/python3 -c 'x = bytearray(200 << 20)'");
    let status = parent.children[0].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let after = cg.usage().unwrap();
    assert!(after.oom_kills > before.oom_kills, "{before:?} {after:?}");
    assert!(after.memory_peak_bytes > 16 << 20, "{after:?}");
    assert!(after.memory_peak_bytes <= 33 << 20, "{after:?}");
    cg.remove().unwrap();
    assert_eq!(leftovers(&parent.name), Vec::<PathBuf>::new());
}

#[test]
fn the_memory_peak_resets_each_time_between_jobs() {
    let mut parent = Parent::new("-peak");
    let cg = parent.open("slot-0");
    cg.set_limits(&memory_limit(256 << 20)).unwrap();
    // Twice: the second reset goes through the file the first one left open.
    for round in 0..2 {
        cg.reset_peak().unwrap();
        let quiet = cg.usage().unwrap().memory_peak_bytes;
        assert!(
            quiet < 16 << 20,
            "round {round}: {quiet} bytes before the job"
        );
        parent.start_in(&*cg, "exec /usr/bin/python3 -c 'x = bytearray(48 << 20)'");
        let status = parent.children.pop().unwrap().wait().unwrap();
        assert!(status.success(), "round {round}: {status:?}");
        let peak = cg.usage().unwrap().memory_peak_bytes;
        assert!(
            peak > 40 << 20,
            "round {round}: peak {peak} after a 48 MiB job"
        );
    }
    cg.reset_peak().unwrap();
    let after = cg.usage().unwrap().memory_peak_bytes;
    assert!(after < 16 << 20, "{after} bytes once reset after the jobs");
    cg.remove().unwrap();
    assert_eq!(leftovers(&parent.name), Vec::<PathBuf>::new());
}

#[test]
fn sweep_removes_unclaimed_leftovers_only() {
    let mut parent = Parent::new("-sweep");
    let kept = parent.open("slot-0");
    let leftover = parent.open("slot-1");
    let pid = parent.start_in(&*leftover, "exec sleep 100");
    wait_for("the leftover's sleep", || leftover.pids().unwrap() == [pid]);
    let mut claimed = Vec::new();
    let removed = parent
        .hierarchies
        .sweep(&parent.name, |name| {
            claimed.push(name.to_string());
            (name == "slot-1").then_some(())
        })
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(claimed, ["slot-0", "slot-1"]);
    assert_eq!(
        parent.children[0].wait().unwrap().signal(),
        Some(libc::SIGKILL)
    );
    for dir in leftovers(&parent.name) {
        assert!(!dir.join("slot-1").exists(), "{} left", dir.display());
        assert!(dir.join("slot-0").is_dir());
    }
    kept.remove().unwrap();
    assert_eq!(leftovers(&parent.name), Vec::<PathBuf>::new());
}
