//! Running `corral sandbox run` as a separate process, with its own state directory, cgroup parent
//! and uid range, and cleaning up what it keeps between runs (slot cgroups, pinned network
//! namespaces).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// What one `corral sandbox run` did.
pub struct CliRun {
    /// The command's exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// What it left on the host after its cleanup (processes of its uids, mounts, cgroups).
    pub leftovers: Vec<String>,
}

impl CliRun {
    /// The single JSON object stdout must consist of.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        let line = self.stdout.strip_suffix('\n').unwrap_or(&self.stdout);
        if line.contains('\n') {
            return Err(format!("stdout is not one line: {:?}", self.stdout));
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("stdout is not JSON ({e}): {:?}", self.stdout))?;
        if !value.is_object() {
            return Err(format!("stdout is not a JSON object: {line}"));
        }
        if !self.status.success() {
            return Err(format!(
                "exit status {} (stderr {:?})",
                self.status, self.stderr
            ));
        }
        Ok(value)
    }
}

/// uid range of CLI runs from this test process (disjoint from [`super::test_uid_base`]'s).
pub fn cli_uid_base() -> u32 {
    super::uid_base(1)
}

/// `corral sandbox run [OPTIONS] -- CMD...` with extra environment variables.
pub fn run_with(options: &[&str], cmd: &[&str], env: &[(&str, &str)]) -> CliRun {
    super::require_root();
    // One CLI run at a time: runs of this process share a cgroup parent and a uid range.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let state = tempfile::Builder::new()
        .prefix("corral-test-cli-")
        .tempdir()
        .expect("state directory");
    let parent = format!("corral-test-cli-{}", std::process::id());
    let base = cli_uid_base();
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command
        .args(["sandbox", "run", "--state-dir"])
        .arg(state.path())
        .args(["--cgroup-parent", &parent, "--uid-base", &base.to_string()])
        .args(options)
        .arg("--")
        .args(cmd);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("running corral");
    let leftovers = cleanup(state.path(), &parent, base);
    CliRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        leftovers,
    }
}

/// `corral sandbox run -- CMD...` with default options.
pub fn run(cmd: &[&str], env: &[(&str, &str)]) -> CliRun {
    run_with(&[], cmd, env)
}

/// Check for processes of the CLI's uids, unmount its pinned namespaces, remove its cgroups.
fn cleanup(state: &Path, parent: &str, base: u32) -> Vec<String> {
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let uid = std::fs::metadata(entry.path())
            .map(|m| m.uid())
            .unwrap_or(0);
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if uids
            .iter()
            .chain([&uid])
            .any(|u| (base..base + super::UID_RANGE).contains(u))
        {
            leftovers.push(format!(
                "process {:?} of a CLI slot uid survived",
                entry.path()
            ));
        }
    }
    let state_text = state.to_string_lossy().into_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&state_text))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        // Pinned network namespaces are kept on purpose (`keep_netns`); anything else is a leak.
        if !point.ends_with(".netns") {
            leftovers.push(format!("mount {point} left by the CLI"));
        }
        let _ = nix::mount::umount2(Path::new(&point), nix::mount::MntFlags::MNT_DETACH);
    }
    for dir in super::cgroup_parent_dirs(parent) {
        let procs = std::fs::read_to_string(dir.join("slot-0/cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            leftovers.push(format!("{} still holds {procs:?}", dir.display()));
        }
    }
    super::remove_cgroup_parent(parent);
    leftovers
}
