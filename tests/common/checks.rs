//! The after-checks of HOSTILE.md: after a job, nothing of it is left on the host and every slot
//! starts the next job clean.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use corral_sandbox::{Limits, Status};

use super::{Shared, UID_RANGE};

/// Host paths whose metadata must not change because of a job.
const WATCHED: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/ld.so.preload",
    "/etc/ld.so.cache",
    "/usr/bin",
    "/usr/lib",
    "/root",
    "/tmp/corral-evil",
    "/usr/bin/corral-evil",
    env!("CARGO_BIN_EXE_corral"),
];
/// Host directories scanned (two levels deep) for files owned by a slot uid.
const SCANNED: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/root", "/run", "/home"];

/// Metadata of one path: (kind, len, mode, uid, mtime ns), or absent.
type Meta = Option<(u8, u64, u32, u32, i128)>;

/// What the host looked like before a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Everything under the sandbox's state directory.
    state: BTreeMap<PathBuf, Meta>,
    /// The watched host paths.
    watched: BTreeMap<PathBuf, Meta>,
    /// The host's hostname and domain name.
    names: (String, String),
}

fn meta(path: &Path) -> Meta {
    let m = std::fs::symlink_metadata(path).ok()?;
    let kind = if m.is_dir() {
        1
    } else if m.file_type().is_symlink() {
        2
    } else if m.is_file() {
        3
    } else {
        4
    };
    // A directory's size and mtime change with its entries; its listing is recorded instead.
    let (len, mtime) = if m.is_dir() {
        (0, 0)
    } else {
        (
            m.len(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        )
    };
    Some((kind, len, m.mode(), m.uid(), mtime))
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Meta>) {
    out.insert(dir.to_path_buf(), meta(dir));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&path, out);
        } else {
            out.insert(path.clone(), meta(&path));
        }
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl HostSnapshot {
    /// Record the host as it is now.
    pub fn take(shared: &Shared) -> HostSnapshot {
        let mut state = BTreeMap::new();
        walk(shared.state.path(), &mut state);
        let watched = WATCHED
            .iter()
            .map(|p| (PathBuf::from(p), meta(Path::new(p))))
            .collect();
        HostSnapshot {
            state,
            watched,
            names: (
                read_trim("/proc/sys/kernel/hostname"),
                read_trim("/proc/sys/kernel/domainname"),
            ),
        }
    }
}

/// Every after-check of HOSTILE.md; returns what is wrong (empty when all is well).
pub fn after_checks(shared: &Shared, before: &HostSnapshot) -> Vec<String> {
    let mut problems = Vec::new();
    let base = shared.uid_base();
    // First the slots: inspecting them waits until each job's PID 1 (which may read files back
    // as the slot uid) has been reaped, the state any next job starts from.
    problems.extend(slot_cgroups(shared));
    // A prepared PID 1 (root built for the next job, no job code run in it) runs as the slot's
    // container root, which is a slot-range uid in user-namespace mode: it is no survivor.
    let prepared: Vec<u32> = shared
        .sandbox
        .idle_slots()
        .iter()
        .filter_map(|s| s.prepared_pid)
        .collect();
    problems.extend(surviving_processes(base, &prepared));
    problems.extend(leftover_mounts(shared));
    problems.extend(host_changes(shared, before));
    problems.extend(files_owned_by_slots(base));
    problems.extend(host_ipc_of_slots(base));
    problems.extend(next_jobs_start_clean(shared));
    problems
}

fn in_range(uid: u32, base: u32) -> bool {
    (base..base + UID_RANGE).contains(&uid)
}

/// Processes whose real, effective, saved or filesystem uid is one of the sandbox's uids.
fn surviving_processes(base: u32, prepared: &[u32]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec!["cannot read /proc".into()];
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit())
            || name.parse().is_ok_and(|pid: u32| prepared.contains(&pid))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if uids.iter().any(|&u| in_range(u, base)) {
            let comm = read_trim(&format!("/proc/{name}/comm"));
            found.push(format!(
                "process {name} ({comm}) of a slot uid {uids:?} survived"
            ));
        }
    }
    found
}

/// Each slot cgroup holds at most the slot's spawner and the PID 1 it prepared for the next job
/// (a child of that spawner), and its counters agree with that.
fn slot_cgroups(shared: &Shared) -> Vec<String> {
    let mut problems = Vec::new();
    let slots = shared.sandbox.idle_slots();
    if slots.len() != shared.sandbox.slots() {
        problems.push(format!(
            "{} of {} slots are idle after the job",
            slots.len(),
            shared.sandbox.slots()
        ));
    }
    for slot in &slots {
        if slot.cgroup_dirs.is_empty() {
            problems.push(format!("slot {} has no cgroup directory", slot.index));
        }
        for dir in &slot.cgroup_dirs {
            problems.extend(one_cgroup(dir, slot.prepared_pid));
        }
        match std::fs::read_dir(&slot.dir) {
            Ok(mut entries) => {
                if let Some(e) = entries.next() {
                    problems.push(format!(
                        "slot directory {} is not empty on the host: {:?}",
                        slot.dir.display(),
                        e.map(|e| e.path())
                    ));
                }
            }
            Err(e) => problems.push(format!("slot directory {}: {e}", slot.dir.display())),
        }
    }
    problems
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn one_cgroup(dir: &Path, prepared: Option<u32>) -> Vec<String> {
    let mut problems = Vec::new();
    let procs: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if procs.len() > 1 + usize::from(prepared.is_some()) {
        problems.push(format!(
            "{} holds {} processes: {procs:?}",
            dir.display(),
            procs.len()
        ));
    }
    for pid in &procs {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        let spawner_image =
            args.get(1).map(String::as_str) == Some(corral_sandbox::spawner::SPAWNER_ARG);
        let is_spawner = spawner_image && ppid == Some(std::process::id());
        // The prepared PID 1 is a clone of the spawner, so its parent is a spawner in this cgroup.
        let is_prepared =
            spawner_image && Some(*pid) == prepared && ppid.is_some_and(|p| procs.contains(&p));
        if !is_spawner && !is_prepared {
            problems.push(format!(
                "{} holds process {pid} {args:?} (parent {ppid:?}), not the slot's spawner",
                dir.display()
            ));
        }
    }
    let tasks = std::fs::read_to_string(dir.join("tasks"))
        .map(|t| t.lines().count() as u64)
        .ok();
    if let (Some(current), Some(tasks)) = (read_u64(&dir.join("pids.current")), tasks) {
        if current != tasks {
            problems.push(format!(
                "{}: pids.current is {current} with {tasks} tasks",
                dir.display()
            ));
        }
    }
    if let (Some(usage), Some(limit)) = (
        read_u64(&dir.join("memory.usage_in_bytes")),
        read_u64(&dir.join("memory.limit_in_bytes")),
    ) {
        if usage > limit {
            problems.push(format!(
                "{}: memory usage {usage} above limit {limit}",
                dir.display()
            ));
        }
    }
    if let Ok(oom) = std::fs::read_to_string(dir.join("memory.oom_control")) {
        if oom.lines().any(|l| l.trim() == "under_oom 1") {
            problems.push(format!("{} is under OOM", dir.display()));
        }
    }
    if let Ok(state) = std::fs::read_to_string(dir.join("freezer.state")) {
        if state.trim() != "THAWED" {
            problems.push(format!("{}: freezer.state {}", dir.display(), state.trim()));
        }
    }
    problems
}

/// Mounts on the host under the sandbox's state directory.
fn leftover_mounts(shared: &Shared) -> Vec<String> {
    let state = shared.state.path().to_string_lossy().into_owned();
    let mut problems = Vec::new();
    for pid in ["self".to_string(), std::process::id().to_string()] {
        let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        for line in info.lines().filter(|l| l.contains(&state)) {
            problems.push(format!("mount left on the host: {line}"));
        }
    }
    problems.dedup();
    problems
}

fn host_changes(shared: &Shared, before: &HostSnapshot) -> Vec<String> {
    let now = HostSnapshot::take(shared);
    let mut problems = Vec::new();
    for (label, a, b) in [
        ("state directory", &before.state, &now.state),
        ("watched host path", &before.watched, &now.watched),
    ] {
        for (path, meta) in b {
            if a.get(path) != Some(meta) {
                problems.push(format!(
                    "{label} {} changed: {:?} -> {meta:?}",
                    path.display(),
                    a.get(path)
                ));
            }
        }
        for path in a.keys().filter(|p| !b.contains_key(*p)) {
            problems.push(format!("{label} {} disappeared", path.display()));
        }
    }
    if before.names != now.names {
        problems.push(format!(
            "host hostname/domainname changed: {:?} -> {:?}",
            before.names, now.names
        ));
    }
    problems
}

/// Files owned by a slot uid anywhere in the usual writable host directories.
fn files_owned_by_slots(base: u32) -> Vec<String> {
    let mut problems = Vec::new();
    for top in SCANNED {
        scan_owned(Path::new(top), base, 2, &mut problems);
    }
    problems
}

fn scan_owned(dir: &Path, base: u32, depth: u32, problems: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(m) = entry.path().symlink_metadata() else {
            continue;
        };
        if in_range(m.uid(), base) || in_range(m.gid(), base) {
            problems.push(format!(
                "host file {} is owned by slot uid {}",
                entry.path().display(),
                m.uid()
            ));
        }
        if m.is_dir() && depth > 1 {
            scan_owned(&entry.path(), base, depth - 1, problems);
        }
    }
}

/// SysV IPC objects in the host's namespace created or owned by a slot uid.
fn host_ipc_of_slots(base: u32) -> Vec<String> {
    let mut problems = Vec::new();
    for kind in ["shm", "msg", "sem"] {
        let path = format!("/proc/sysvipc/{kind}");
        let table = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let columns: Vec<usize> = ["uid", "cuid"]
            .iter()
            .filter_map(|c| header.iter().position(|h| h == c))
            .collect();
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let owned = columns.iter().any(|&i| {
                fields
                    .get(i)
                    .and_then(|u| u.parse::<u32>().ok())
                    .is_some_and(|u| in_range(u, base))
            });
            if owned {
                problems.push(format!("host {path} holds a slot's object: {line}"));
            }
        }
    }
    problems
}

/// What a clean slot shows: its uid, and nothing else.
const PROBE: &str = r#"echo ready; cat >/dev/null
echo "uid $(id -u)"
find /box /tmp /dev/shm -mindepth 1 -printf 'left %p\n' 2>&1
awk 'FNR>1 { print "ipc " FILENAME ": " $0 }' /proc/sysvipc/shm /proc/sysvipc/msg /proc/sysvipc/sem
[ -e /etc/ld.so.preload ] && echo "left /etc/ld.so.preload"
grep -n evil /etc/passwd /etc/group
echo done"#;

/// Run the clean-slot probe on every slot at once (each waits until all have started, so they
/// cannot share a slot) and check each sees a fresh box.
fn next_jobs_start_clean(shared: &Shared) -> Vec<String> {
    let slots = shared.sandbox.slots();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut problems = Vec::new();
    let mut uids = Vec::new();
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..slots {
            let (writer, stdin) = corral_sandbox::stdin_pipe().expect("stdin pipe");
            writers.push(writer);
            let mut spec = shared.spec(&["sh", "-c", PROBE], Limits::default());
            spec.stdin = stdin;
            let tx = ready_tx.clone();
            handles.push(scope.spawn(move || {
                let mut told = false;
                shared.sandbox.run(spec, &mut |_, chunk| {
                    if !told && chunk.starts_with(b"ready") {
                        told = true;
                        let _ = tx.send(());
                    }
                })
            }));
        }
        for _ in 0..slots {
            if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
                problems.push("a probe job did not start within 20 s".into());
                break;
            }
        }
        drop(writers);
        for handle in handles {
            match handle.join().expect("probe thread") {
                Ok(out) => {
                    let stdout = super::text(&out.stdout);
                    let mut lines = stdout.lines();
                    let ok = out.status == Status::Ok
                        && lines.next() == Some("ready")
                        && stdout.ends_with("done\n");
                    let extra: Vec<&str> = stdout
                        .lines()
                        .filter(|l| !matches!(*l, "ready" | "done") && !l.starts_with("uid "))
                        .collect();
                    if !ok || !extra.is_empty() {
                        problems.push(format!(
                            "the next job did not start clean: {:?} {extra:?}\nstdout: {stdout}\nstderr: {}",
                            out.status,
                            super::text(&out.stderr)
                        ));
                    }
                    uids.extend(
                        stdout
                            .lines()
                            .filter_map(|l| l.strip_prefix("uid "))
                            .filter_map(|u| u.parse::<u32>().ok()),
                    );
                }
                Err(e) => problems.push(format!("the probe job failed to run: {e}")),
            }
        }
    });
    uids.sort_unstable();
    let expected: Vec<u32> = shared.sandbox.idle_slots().iter().map(|s| s.uid).collect();
    if uids != expected {
        problems.push(format!(
            "probe jobs ran as uids {uids:?}, expected one per slot {expected:?}"
        ));
    }
    problems
}
