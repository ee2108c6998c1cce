//! Shared helpers of the root package's sandbox integration tests (`tests/sandbox.rs`,
//! `tests/hostile.rs`).
//!
//! - [`require_root`]: these tests create real namespaces, cgroups and mounts.
//! - [`sandbox`]: one [`Sandbox`] per test binary (2 slots, its own temporary state directory,
//!   cgroup parent `corral-test-<pid>` and uid range), used by one test at a time: the after-checks
//!   need a quiet sandbox, and serial jobs keep CPU measurements honest on a small machine. It is
//!   torn down (slot cgroups and cgroup parent removed, state directory deleted) when the last test
//!   waiting for it is done. `CORRAL_TEST_USERNS=1` starts it in user-namespace mode
//!   ([`SandboxConfig::user_namespace`]), so the same suites cover both modes.
//! - [`compile_c`]: a static binary from C source, cached per test binary.
//! - [`oci`]: small OCI layout tarballs made by the tests.
//! - [`http::call`]: one request to a gateway over a real connection.
//! - [`checks::HostSnapshot`] and [`checks::after_checks`]: what HOSTILE.md asks after every hostile job.
#![allow(dead_code)]

pub mod checks;
pub mod cli;
pub mod http;
pub mod oci;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use corral_sandbox::{
    FileIn, Helper, Image, Limits, Outcome, Sandbox, SandboxConfig, Spec, StreamKind,
};

/// Slots of the shared sandbox.
pub const SLOTS: usize = 2;
/// Every uid a test sandbox may use is in `uid_base..uid_base + UID_RANGE`.
pub const UID_RANGE: u32 = 8192;

/// Panic with a clear message unless running as root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests need root (CI runs as root)"
    );
}

/// The shared sandbox and what it owns on the host.
pub struct Shared {
    /// The sandbox.
    pub sandbox: Sandbox,
    /// Its state directory (a temporary directory).
    pub state: tempfile::TempDir,
    /// Name of its cgroup parent under each hierarchy.
    pub cgroup_parent: String,
}

impl Shared {
    /// The built-in `host` image.
    pub fn host(&self) -> Image {
        self.sandbox.host_image()
    }

    /// First uid of this sandbox's range.
    pub fn uid_base(&self) -> u32 {
        self.sandbox.config().uid_base
    }

    /// Run a spec, collecting output; panics if Corral itself failed.
    pub fn run(&self, spec: Spec) -> Outcome {
        self.sandbox
            .run(spec, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("the sandbox failed to run the job: {e}"))
    }

    /// Run `argv` on the host image with these limits.
    pub fn run_cmd(&self, argv: &[&str], limits: Limits) -> Outcome {
        self.run(self.spec(argv, limits))
    }

    /// A spec for `argv` on the host image.
    pub fn spec(&self, argv: &[&str], limits: Limits) -> Spec {
        Spec {
            image: self.host(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            limits,
            collect_max_bytes: 1 << 20,
            ..Spec::default()
        }
    }
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Exclusive use of the shared sandbox for one test.
pub struct Guard(Option<MutexGuard<'static, Option<Shared>>>);

impl Deref for Guard {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        self.0
            .as_ref()
            .and_then(|g| g.as_ref())
            .expect("the guard holds a started sandbox")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else {
            return;
        };
        if WAITING.load(Ordering::SeqCst) == 0 {
            if let Some(shared) = guard.take() {
                teardown(shared);
            }
        }
    }
}

/// The shared sandbox, started if needed, for this test alone until the guard drops.
pub fn sandbox() -> Guard {
    require_root();
    WAITING.fetch_add(1, Ordering::SeqCst);
    let mut guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    WAITING.fetch_sub(1, Ordering::SeqCst);
    if guard.is_none() {
        *guard = Some(start());
    }
    Guard(Some(guard))
}

/// uid ranges of this test process: `kind` 0 for the shared sandbox, 1 for CLI runs, 2 for
/// private sandboxes of single tests. Each kind has its own band of 50,000 ranges of 8192 uids
/// (~410 M uids), indexed by pid, all below 2^31 and far from the service's default 1,000,000.
pub fn uid_base(kind: u32) -> u32 {
    100_000_000 + kind * 50_000 * UID_RANGE + (std::process::id() % 50_000) * UID_RANGE
}

/// The shared sandbox's uid range.
pub fn test_uid_base() -> u32 {
    uid_base(0)
}

fn start() -> Shared {
    let state = tempfile::Builder::new()
        .prefix("corral-test-state-")
        .tempdir()
        .expect("creating the state directory");
    let cgroup_parent = format!("corral-test-{}", std::process::id());
    let config = SandboxConfig {
        slots: SLOTS,
        state_dir: state.path().to_path_buf(),
        cgroup_parent: cgroup_parent.clone(),
        uid_base: test_uid_base(),
        helper: Helper::Exec(env!("CARGO_BIN_EXE_corral").into()),
        require_landlock: true,
        keep_cgroups: false,
        keep_netns: false,
        // CORRAL_TEST_USERNS=1 runs the whole suite with each job's PID 1 in a user namespace.
        user_namespace: std::env::var_os("CORRAL_TEST_USERNS").is_some_and(|v| v == "1"),
    };
    let sandbox = Sandbox::new(config).unwrap_or_else(|e| panic!("starting the sandbox: {e}"));
    Shared {
        sandbox,
        state,
        cgroup_parent,
    }
}

fn teardown(shared: Shared) {
    let Shared {
        sandbox,
        state,
        cgroup_parent,
    } = shared;
    drop(sandbox);
    remove_cgroup_parent(&cgroup_parent);
    drop(state);
}

/// Remove `<hierarchy>/<parent>` (and any empty slot cgroup left in it) under every hierarchy.
pub fn remove_cgroup_parent(parent: &str) {
    for dir in cgroup_parent_dirs(parent) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("warning: removing cgroup {}: {e}", dir.display());
        }
    }
}

/// Existing `<hierarchy>/<parent>` directories under /sys/fs/cgroup (v1 hierarchies and v2).
pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let direct = root.join(parent);
    if direct.is_dir() {
        dirs.push(direct);
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let dir = entry.path().join(parent);
            if dir.is_dir() && !entry.path().is_symlink() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// A static binary compiled from `source` (cached by `name` for the life of the test binary).
pub fn compile_c(name: &str, source: &str) -> Vec<u8> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(bin) = cache.lock().unwrap().get(name) {
        return bin.clone();
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = dir.path().join(format!("{name}.c"));
    let out = dir.path().join(name);
    std::fs::write(&src, source).unwrap();
    let result = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-pthread", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("running gcc (it must be installed)");
    assert!(
        result.status.success(),
        "gcc failed on {name}.c:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let bin = std::fs::read(&out).unwrap();
    cache.lock().unwrap().insert(name.into(), bin.clone());
    bin
}

/// An executable input file.
pub fn exe(name: &str, contents: Vec<u8>) -> FileIn {
    FileIn {
        name: name.into(),
        contents,
        mode: 0o755,
    }
}

/// Lines of `text` (lossy UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An `on_output` callback that forwards chunks to a channel.
pub fn to_channel(
    tx: std::sync::mpsc::Sender<(StreamKind, Vec<u8>)>,
) -> impl FnMut(StreamKind, &[u8]) {
    move |kind, chunk| {
        let _ = tx.send((kind, chunk.to_vec()));
    }
}
