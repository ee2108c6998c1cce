//! [`ProcessExecutor`]: runs commands as plain local processes, with no isolation at all. For tests
//! of the service logic only (no root needed); never for untrusted code.
//!
//! It enforces, simply: wall time, output caps and cancellation (by killing the process group),
//! and CPU time of the main process (sampled from `/proc/<pid>/stat` every few milliseconds;
//! children's CPU is not counted). Memory, process count and file size limits are not enforced;
//! the reported memory peak is the main process's `VmHWM`.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_sandbox::spec::CancelToken;
use corral_sandbox::{FileIn, FileOut, Outcome, Status, StreamKind, TimeLimitKind};

use crate::executor::{ExecError, ExecRequest, Executor};

/// How often limits are checked.
const TICK: Duration = Duration::from_millis(5);
/// How long output may keep flowing after the main process exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Plain local processes in a temporary working directory each. See the module doc.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    /// Commands at once (the node's slot count).
    slots: usize,
}

impl ProcessExecutor {
    /// An executor reporting `slots` slots.
    pub fn new(slots: usize) -> ProcessExecutor {
        ProcessExecutor {
            slots: slots.max(1),
        }
    }
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ExecError {
    move |source| ExecError::Process { op, source }
}

/// Why the executor killed the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Cancel,
    Cpu,
    Wall,
    Output,
}

/// One output stream, kept up to its cap.
#[derive(Default)]
struct Kept {
    data: Vec<u8>,
    truncated: bool,
}

impl Executor for ProcessExecutor {
    fn slots(&self) -> usize {
        self.slots
    }

    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError> {
        let dir = tempfile::tempdir().map_err(io("creating a working directory"))?;
        write_files(dir.path(), &request.files)?;
        let started = Instant::now();
        let mut child = spawn(dir.path(), &request)?;
        let pid = child.id();
        let streams = start_readers(&mut child, request.stdin.clone());
        let mut watch = Watch {
            request: &request,
            cancel,
            started,
            pid,
            kill: None,
            kept: [Kept::default(), Kept::default()],
            cpu: Duration::ZERO,
            memory_peak: 0,
        };
        let (status, wall) = watch.supervise(&mut child, &streams, on_output)?;
        let files = collect(dir.path(), &request.collect, request.collect_max_bytes);
        Ok(watch.outcome(status, wall, files))
    }

    fn images(&self) -> Vec<String> {
        vec!["host".to_string()]
    }
}

fn write_files(dir: &Path, files: &[FileIn]) -> Result<(), ExecError> {
    for file in files {
        corral_sandbox::files::check_name(&file.name).map_err(|e| ExecError::Process {
            op: "checking an input file name",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.contents).map_err(io("writing an input file"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o777))
            .map_err(io("setting an input file's mode"))?;
    }
    Ok(())
}

fn spawn(dir: &Path, request: &ExecRequest) -> Result<Child, ExecError> {
    let Some((program, args)) = request.argv.split_first() else {
        return Err(io("starting the command")(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the command is empty",
        )));
    };
    let program = match program.strip_prefix("./") {
        Some(rest) => dir.join(rest).into_os_string(),
        None => program.into(),
    };
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(io("starting the command"))
}

/// Output chunks from the reader threads; the channel disconnects when both streams ended.
type Chunks = mpsc::Receiver<(StreamKind, Vec<u8>)>;

fn start_readers(child: &mut Child, stdin: Vec<u8>) -> Chunks {
    if let Some(mut pipe) = child.stdin.take() {
        std::thread::spawn(move || {
            // EPIPE: the command stopped reading; nothing more to give it.
            let _ = pipe.write_all(&stdin);
        });
    }
    let (tx, rx) = mpsc::channel();
    let readers: [(StreamKind, Option<Box<dyn Read + Send>>); 2] = [
        (
            StreamKind::Stdout,
            child.stdout.take().map(|p| Box::new(p) as _),
        ),
        (
            StreamKind::Stderr,
            child.stderr.take().map(|p| Box::new(p) as _),
        ),
    ];
    for (kind, pipe) in readers {
        let (Some(mut pipe), tx) = (pipe, tx.clone()) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send((kind, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// The supervising loop's state.
struct Watch<'a> {
    request: &'a ExecRequest,
    cancel: &'a CancelToken,
    started: Instant,
    pid: u32,
    kill: Option<Kill>,
    /// Stdout, stderr.
    kept: [Kept; 2],
    cpu: Duration,
    memory_peak: u64,
}

impl Watch<'_> {
    fn supervise(
        &mut self,
        child: &mut Child,
        chunks: &Chunks,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<(ExitStatus, Duration), ExecError> {
        let mut exited: Option<(ExitStatus, Instant)> = None;
        let mut streams_open = true;
        loop {
            match chunks.recv_timeout(TICK) {
                Ok((kind, data)) => self.take(kind, &data, on_output),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => streams_open = false,
            }
            if exited.is_none() {
                self.sample();
                self.enforce();
                if let Some(status) = child.try_wait().map_err(io("waiting for the command"))? {
                    exited = Some((status, Instant::now()));
                    // Whatever it left running must not hold the output pipes open.
                    self.kill_group();
                }
            }
            if let Some((status, at)) = exited {
                if !streams_open || at.elapsed() > DRAIN_GRACE {
                    return Ok((status, at.duration_since(self.started)));
                }
            }
        }
    }

    /// Keep what fits of a chunk; past the cap, kill.
    fn take(
        &mut self,
        kind: StreamKind,
        chunk: &[u8],
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) {
        let cap = self.request.limits.output_bytes;
        let kept = match kind {
            StreamKind::Stdout => &mut self.kept[0],
            StreamKind::Stderr => &mut self.kept[1],
        };
        let room = cap.saturating_sub(kept.data.len() as u64) as usize;
        let part = &chunk[..chunk.len().min(room)];
        if !part.is_empty() {
            kept.data.extend_from_slice(part);
            on_output(kind, part);
        }
        if chunk.len() > room {
            kept.truncated = true;
            self.kill_for(Kill::Output);
        }
    }

    fn enforce(&mut self) {
        let limits = &self.request.limits;
        if self.cancel.is_cancelled() {
            self.kill_for(Kill::Cancel);
        } else if self.started.elapsed() >= limits.wall_time {
            self.kill_for(Kill::Wall);
        } else if self.cpu > limits.cpu_time {
            self.kill_for(Kill::Cpu);
        }
    }

    fn kill_for(&mut self, why: Kill) {
        if self.kill.is_none() {
            self.kill = Some(why);
            self.kill_group();
        }
    }

    fn kill_group(&self) {
        let group = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }

    /// CPU time and memory peak of the main process, from /proc (while it runs).
    fn sample(&mut self) {
        if let Some(cpu) = proc_cpu(self.pid) {
            self.cpu = cpu;
        }
        if let Some(peak) = proc_memory_peak(self.pid) {
            self.memory_peak = self.memory_peak.max(peak);
        }
    }

    fn outcome(&mut self, status: ExitStatus, wall: Duration, files: Vec<FileOut>) -> Outcome {
        let [stdout, stderr] = std::mem::take(&mut self.kept);
        let (result, limit) = match self.kill {
            Some(Kill::Cancel) => (Status::Cancelled, None),
            Some(Kill::Cpu) => (Status::TimeLimit, Some(TimeLimitKind::Cpu)),
            Some(Kill::Wall) => (Status::TimeLimit, Some(TimeLimitKind::Wall)),
            Some(Kill::Output) => (Status::OutputLimit, None),
            None if status.success() => (Status::Ok, None),
            None => (Status::RuntimeError, None),
        };
        Outcome {
            status: result,
            limit,
            exit_code: status.code(),
            signal: status.signal(),
            cpu_time: self.cpu,
            wall_time: wall,
            memory_peak_bytes: self.memory_peak,
            stdout: stdout.data,
            stderr: stderr.data,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            files,
            error: None,
        }
    }
}

fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the state field (3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz.max(1)))
}

fn proc_memory_peak(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Read back `names` from `dir`: regular files only (no symlinks), at most `cap` bytes each.
fn collect(dir: &Path, names: &[String], cap: u64) -> Vec<FileOut> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let (contents, mode) = match std::fs::symlink_metadata(&path) {
                Err(_) => (Err("not found".to_string()), 0),
                Ok(m) if !m.file_type().is_file() => (Err("not a regular file".to_string()), 0),
                Ok(m) if m.len() > cap => {
                    (Err(format!("larger than the cap of {cap} bytes")), m.mode())
                }
                Ok(m) => (
                    std::fs::read(&path).map_err(|e| format!("cannot read: {e}")),
                    m.mode() & 0o7777,
                ),
            };
            FileOut {
                name: name.clone(),
                contents,
                mode,
            }
        })
        .collect()
}
