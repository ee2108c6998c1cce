//! The trusted side of one job, in the caller's process: sets the slot's cgroup limits, hands the
//! request to the slot's spawner, then pumps stdin/stdout/stderr and the report concurrently with
//! `poll(2)` while enforcing wall time (its own monotonic clock), CPU time (the cgroup's counter,
//! all processes and threads) and output caps, and finally computes the [`Outcome`] from data it owns:
//! cgroup counters, its clock, what it killed for, and PID 1's wait report.
//!
//! A [`CancelToken`] in the spec is one more descriptor in the same `poll(2)` set: once cancelled,
//! the job is killed like for any other limit and the outcome is [`Status::Cancelled`]; a job
//! cancelled before it starts is never launched.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::cgroup::{CgroupLimits, CpuQuota, Usage};
use crate::slot::{Launched, Slot};
use crate::spec::{CancelToken, FileOut, Limits, Outcome, Spec, Status, Stdin, TimeLimitKind};
use crate::wire::{self, JobExit, Report};
use crate::{sys, Error, StreamKind};

/// How often the pump wakes once PID 1 is gone, to give up on output that never ends.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// The shortest wait between two reads of the CPU counter (see [`next_cpu_check`]): bounds the
/// overshoot past the CPU limit to this much per CPU.
const CPU_CHECK_MIN: Duration = Duration::from_millis(1);
/// How long output may keep flowing after PID 1 is gone (only a kernel bug would need it).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Cap on the report PID 1 writes (header + collected files are capped separately too).
const REPORT_CAP: u64 = 1 << 30;

/// Why the supervisor killed the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Cpu,
    Wall,
    Output,
    Cancel,
}

/// What the pump loop observed.
struct Observed {
    stdout: Pump,
    stderr: Pump,
    report: Vec<u8>,
    kill: Option<Kill>,
    wall: Duration,
}

/// Run `spec` in `slot`. `Err` only when Corral itself failed. `while_started` runs once the job
/// is on its way, while this thread would only wait for it.
pub(crate) fn run(
    slot: &mut Slot,
    helper: &crate::Helper,
    req: wire::JobRequest,
    spec: Spec,
    on_output: &mut dyn FnMut(StreamKind, &[u8]),
    while_started: &mut dyn FnMut(),
) -> Result<Outcome, Error> {
    let limits = spec.limits;
    let cancel = spec.cancel.clone();
    if cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
        return Ok(cancelled_before_start());
    }
    // The previous job's PID 1 may still be tearing its namespaces down: wait for it here, so
    // nothing of it (processes, CPU, memory) is counted for this job.
    slot.settle(helper)?;
    let blobs: Vec<Vec<u8>> = spec.files.into_iter().map(|f| f.contents).collect();
    let result = supervise(
        slot,
        helper,
        &req,
        &blobs,
        spec.stdin,
        &limits,
        cancel.as_ref(),
        on_output,
        while_started,
    );
    let (observed, launched, before) = match result {
        Ok(done) => done,
        Err(e) => {
            // The spawner's state is unknown: replace it, and leave nothing running.
            slot.discard_spawner();
            slot.ensure_clean()?;
            return Err(e);
        }
    };
    let after = slot.cgroup.usage()?;
    // PID 1 has reported and closed every pipe: the job and all its processes are gone. What is
    // left is the kernel tearing down its namespaces and mounts (an RCU grace period, milliseconds
    // on a busy host); the slot collects that exit before its next job (see `Slot::settle`).
    slot.defer_reap(launched);
    Ok(outcome(observed, &before, &after, &limits, &req))
}

fn cgroup_limits(limits: &Limits) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: limits.memory_bytes,
        // The job's processes plus its PID 1 and the slot's spawner.
        pids: u64::from(limits.processes) + 2,
        cpu_quota: limits.cpu_quota_millicpus.map(|m| CpuQuota {
            quota_us: u64::from(m) * 100,
            period_us: 100_000,
        }),
    }
}

/// Set the slot's limits for the job and reset its peak counter; the usage it starts from.
fn configure(slot: &mut Slot, limits: &Limits) -> Result<Usage, Error> {
    slot.cgroup.set_limits(&cgroup_limits(limits))?;
    slot.cgroup.reset_peak()?;
    Ok(slot.cgroup.usage()?)
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    slot: &mut Slot,
    helper: &crate::Helper,
    req: &wire::JobRequest,
    blobs: &[Vec<u8>],
    stdin: Stdin,
    limits: &Limits,
    cancel: Option<&CancelToken>,
    on_output: &mut dyn FnMut(StreamKind, &[u8]),
    while_started: &mut dyn FnMut(),
) -> Result<(Observed, Launched, Usage), Error> {
    let pipes = Pipes::new(stdin)?;
    let started = Instant::now();
    let blob_refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    let fds = [
        pipes.child_stdin.as_raw_fd(),
        pipes.stdout_w.as_raw_fd(),
        pipes.stderr_w.as_raw_fd(),
        pipes.report_w.as_raw_fd(),
    ];
    // A spawner's prepared PID 1 starts the job as soon as it has the request: the limits come
    // first. A PID 1 cloned here builds its root first and waits: the limits are set meanwhile.
    let early = match *helper {
        crate::Helper::InProcess => None,
        _ => Some(configure(slot, limits)?),
    };
    let mut launched = slot.launch(helper, req, &blob_refs, blobs, fds)?;
    let before = match early {
        Some(before) => before,
        None => match configure(slot, limits).and_then(|b| launched.release().map(|()| b)) {
            Ok(before) => before,
            Err(e) => {
                launched.abandon();
                slot.reap(helper, &launched)?;
                return Err(e);
            }
        },
    };
    let (stdin_bytes, mut ends) = pipes.into_parent_ends();
    while_started();
    let observed = {
        let cgroup = &*slot.cgroup;
        let cpu_before = before.cpu_ns;
        let cpu = || {
            cgroup
                .cpu_usage_ns()
                .map(|now| now.saturating_sub(cpu_before))
        };
        pump(
            &mut ends,
            stdin_bytes,
            &launched.pidfd,
            limits,
            cancel,
            started,
            cpu,
            on_output,
        )
    };
    match observed {
        Ok(observed) => Ok((observed, launched, before)),
        Err(e) => {
            slot.reap(helper, &launched)?;
            Err(e)
        }
    }
}

/// The job's pipes: child ends go to the spawner, parent ends stay here.
struct Pipes {
    child_stdin: OwnedFd,
    stdin_w: Option<OwnedFd>,
    stdin_bytes: Vec<u8>,
    stdout_r: OwnedFd,
    stdout_w: OwnedFd,
    stderr_r: OwnedFd,
    stderr_w: OwnedFd,
    report_r: OwnedFd,
    report_w: OwnedFd,
}

/// Parent ends, non-blocking.
struct Ends {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    report: Option<File>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::nix("pipe"))
}

fn nonblocking(fd: OwnedFd) -> Result<File, Error> {
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(Error::nix("fcntl"))?;
    Ok(File::from(fd))
}

impl Pipes {
    fn new(stdin: Stdin) -> Result<Pipes, Error> {
        let (child_stdin, stdin_w, stdin_bytes) = match stdin {
            Stdin::Pipe(fd) => (fd, None, Vec::new()),
            Stdin::Empty => (pipe()?.0, None, Vec::new()),
            Stdin::Bytes(bytes) => {
                let (r, w) = pipe()?;
                (r, Some(w), bytes)
            }
        };
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        Ok(Pipes {
            child_stdin,
            stdin_w,
            stdin_bytes,
            stdout_r,
            stdout_w,
            stderr_r,
            stderr_w,
            report_r,
            report_w,
        })
    }

    /// Drop the child ends (the spawner has its copies) and return the parent ends.
    fn into_parent_ends(self) -> (Vec<u8>, Ends) {
        let ends = (|| -> Result<Ends, Error> {
            Ok(Ends {
                stdin: self.stdin_w.map(nonblocking).transpose()?,
                stdout: Some(nonblocking(self.stdout_r)?),
                stderr: Some(nonblocking(self.stderr_r)?),
                report: Some(nonblocking(self.report_r)?),
            })
        })();
        // fcntl on a fresh pipe cannot fail; if it did, every end is simply closed.
        (
            self.stdin_bytes,
            ends.unwrap_or(Ends {
                stdin: None,
                stdout: None,
                stderr: None,
                report: None,
            }),
        )
    }
}

/// An output stream: kept up to its cap, the rest counted as truncation.
struct Pump {
    data: Vec<u8>,
    cap: u64,
    truncated: bool,
}

impl Pump {
    /// Keep what fits; return whether the cap was passed.
    fn take(
        &mut self,
        chunk: &[u8],
        kind: StreamKind,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> bool {
        let room = self.cap.saturating_sub(self.data.len() as u64) as usize;
        let kept = &chunk[..chunk.len().min(room)];
        if !kept.is_empty() {
            self.data.extend_from_slice(kept);
            on_output(kind, kept);
        }
        if chunk.len() > room {
            self.truncated = true;
        }
        self.truncated
    }
}

/// Read what is available from `file`; `None` at end of file.
fn read_some(file: &mut File, buf: &mut [u8]) -> Option<usize> {
    match file.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Some(0),
        Err(_) => None,
    }
}

/// The pump loop's state: what was read so far and what was decided.
struct Pumper<'a> {
    ends: &'a mut Ends,
    pidfd: &'a OwnedFd,
    limits: &'a Limits,
    cancel: Option<&'a CancelToken>,
    started: Instant,
    stdin_bytes: Vec<u8>,
    stdin_off: usize,
    stdout: Pump,
    stderr: Pump,
    report: Vec<u8>,
    kill: Option<Kill>,
    exited: Option<Instant>,
    /// When the cgroup's CPU counter is read next (see [`next_cpu_check`]), not on every wake-up
    /// for output (a job that prints a lot would otherwise cost a cgroup file read per chunk).
    next_cpu_check: Instant,
}

/// When the CPU counter must be read next, having read `used` of the `limit` at `now`: the
/// earliest instant the job could reach its limit, running on all `cpus` at once (at least
/// [`CPU_CHECK_MIN`] away). A job well inside its budget is never woken for; one spinning towards
/// it is checked at ever shorter intervals, so it is killed within about `cpus` ×
/// [`CPU_CHECK_MIN`] of CPU time past its limit.
fn next_cpu_check(now: Instant, limit: Duration, used: Duration, cpus: u32) -> Instant {
    let earliest = limit.saturating_sub(used) / cpus.max(1);
    now + earliest.max(CPU_CHECK_MIN)
}

/// The CPUs this host is configured with, online or not (read once: glibc reads sysfs for it):
/// the most a job's processes can ever run on at once (its affinity and any CPU quota can only
/// lower it, and a CPU brought online later is counted already).
fn host_cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(
        || match nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF) {
            Ok(Some(n)) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => 1024,
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn pump(
    ends: &mut Ends,
    stdin_bytes: Vec<u8>,
    pidfd: &OwnedFd,
    limits: &Limits,
    cancel: Option<&CancelToken>,
    started: Instant,
    cpu_used: impl Fn() -> Result<u64, crate::cgroup::CgroupError>,
    on_output: &mut dyn FnMut(StreamKind, &[u8]),
) -> Result<Observed, Error> {
    let cap = limits.output_bytes;
    let mut p = Pumper {
        ends,
        pidfd,
        limits,
        cancel,
        started,
        next_cpu_check: next_cpu_check(started, limits.cpu_time, Duration::ZERO, host_cpus()),
        stdin_bytes,
        stdin_off: 0,
        stdout: Pump {
            data: Vec::new(),
            cap,
            truncated: false,
        },
        stderr: Pump {
            data: Vec::new(),
            cap,
            truncated: false,
        },
        report: Vec::new(),
        kill: None,
        exited: None,
    };
    let mut buf = vec![0u8; 64 * 1024];
    while p.running() {
        if !p.enforce(&cpu_used)? {
            break;
        }
        p.wait_ready()?;
        p.read_outputs(&mut buf, on_output);
        write_stdin(&mut p.ends.stdin, &p.stdin_bytes, &mut p.stdin_off);
    }
    let wall = p
        .exited
        .unwrap_or_else(Instant::now)
        .duration_since(started);
    Ok(Observed {
        stdout: p.stdout,
        stderr: p.stderr,
        report: p.report,
        kill: p.kill,
        wall,
    })
}

impl Pumper<'_> {
    /// Until every pipe reached end of file and, unless PID 1 reported normally, PID 1 exited.
    ///
    /// A report means PID 1 had already killed and reaped every process of its namespace, so the
    /// kernel tearing its namespaces down (an RCU grace period, milliseconds on a busy host) is left
    /// to finish in the background (see `Slot::settle`). When the supervisor killed PID 1 (a limit,
    /// a cancel) or PID 1 died without a report, the job's processes die only with PID 1's exit:
    /// that is waited for, so no job process outlives the returned outcome.
    fn running(&self) -> bool {
        let pipes_open =
            self.ends.stdout.is_some() || self.ends.stderr.is_some() || self.ends.report.is_some();
        let reported = self.kill.is_none() && !self.report.is_empty();
        pipes_open || (self.exited.is_none() && !reported)
    }

    /// Kill the job (once) for `why`.
    fn kill_for(&mut self, why: Kill) {
        if self.kill.is_none() {
            self.kill = Some(why);
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        }
    }

    /// Apply the time limits; `false` when draining after exit has gone on too long.
    fn enforce(
        &mut self,
        cpu_used: &impl Fn() -> Result<u64, crate::cgroup::CgroupError>,
    ) -> Result<bool, Error> {
        let now = Instant::now();
        if let Some(at) = self.exited {
            return Ok(now.duration_since(at) <= DRAIN_GRACE);
        }
        if self.cancel.is_some_and(CancelToken::is_cancelled) {
            self.kill_for(Kill::Cancel);
        } else if now.duration_since(self.started) >= self.limits.wall_time {
            self.kill_for(Kill::Wall);
        } else if now >= self.next_cpu_check {
            let used = cpu_used().map_err(Error::Cgroup)?;
            if used > self.limits.cpu_time.as_nanos() as u64 {
                self.kill_for(Kill::Cpu);
            }
            let used = Duration::from_nanos(used);
            self.next_cpu_check = next_cpu_check(now, self.limits.cpu_time, used, host_cpus());
        }
        Ok(true)
    }

    /// Sleep in poll(2) until a pipe or PID 1 is ready, or the next CPU check is due.
    fn wait_ready(&mut self) -> Result<(), Error> {
        let wall_left = self.limits.wall_time.saturating_sub(self.started.elapsed());
        // Rounded up by a millisecond: poll(2) counts whole milliseconds, and waking a little
        // early would skip the CPU check it woke for.
        let cpu_due = self
            .next_cpu_check
            .saturating_duration_since(Instant::now());
        let timeout = if self.exited.is_some() {
            DRAIN_POLL
        } else {
            cpu_due.min(wall_left) + Duration::from_millis(1)
        };
        let mut set = PollSet::default();
        set.add(self.ends.stdout.as_ref(), PollFlags::POLLIN);
        set.add(self.ends.stderr.as_ref(), PollFlags::POLLIN);
        set.add(self.ends.report.as_ref(), PollFlags::POLLIN);
        set.add(self.ends.stdin.as_ref(), PollFlags::POLLOUT);
        set.add_fd(
            self.exited.is_none().then(|| self.pidfd.as_fd()),
            PollFlags::POLLIN,
        );
        // Once a kill is sent the token has done its work (and would stay readable).
        set.add_fd(
            self.cancel
                .filter(|_| self.kill.is_none())
                .map(CancelToken::fd),
            PollFlags::POLLIN,
        );
        if set.wait(timeout)?.contains(&4) && self.exited.is_none() {
            self.exited = Some(Instant::now());
        }
        Ok(())
    }

    /// Read what the job wrote; past an output cap, kill it.
    fn read_outputs(&mut self, buf: &mut [u8], on_output: &mut dyn FnMut(StreamKind, &[u8])) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            let (end, pump) = match kind {
                StreamKind::Stdout => (&mut self.ends.stdout, &mut self.stdout),
                StreamKind::Stderr => (&mut self.ends.stderr, &mut self.stderr),
            };
            let Some(file) = end.as_mut() else { continue };
            match read_some(file, buf) {
                None => *end = None,
                Some(n) => {
                    if pump.take(&buf[..n], kind, on_output) {
                        self.kill_for(Kill::Output);
                    }
                }
            }
        }
        if let Some(file) = self.ends.report.as_mut() {
            match read_some(file, buf) {
                None => self.ends.report = None,
                Some(n) if (self.report.len() + n) as u64 <= REPORT_CAP => {
                    self.report.extend_from_slice(&buf[..n])
                }
                Some(_) => self.ends.report = None,
            }
        }
    }
}

/// Feed as much stdin as the pipe takes; close it when done or when the job stopped reading.
fn write_stdin(stdin: &mut Option<File>, bytes: &[u8], off: &mut usize) {
    let Some(file) = stdin.as_mut() else { return };
    while *off < bytes.len() {
        match file.write(&bytes[*off..]) {
            Ok(n) => *off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // EPIPE: the job closed stdin or exited; nothing more to give it.
            Err(_) => break,
        }
    }
    *stdin = None;
}

/// Descriptors to poll, remembering which slot each came from.
#[derive(Default)]
struct PollSet<'a> {
    fds: Vec<PollFd<'a>>,
    slots: Vec<usize>,
    next: usize,
}

impl<'a> PollSet<'a> {
    fn add(&mut self, file: Option<&'a File>, flags: PollFlags) {
        self.add_fd(file.map(|f| f.as_fd()), flags);
    }

    fn add_fd(&mut self, fd: Option<BorrowedFd<'a>>, flags: PollFlags) {
        let slot = self.next;
        self.next += 1;
        if let Some(fd) = fd {
            self.fds.push(PollFd::new(fd, flags));
            self.slots.push(slot);
        }
    }

    /// Slots whose descriptors are ready (or hung up).
    fn wait(mut self, timeout: Duration) -> Result<Vec<usize>, Error> {
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::NONE);
        match poll(&mut self.fds, ms) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::nix("poll")(e)),
        }
        Ok(self
            .fds
            .iter()
            .zip(&self.slots)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &slot)| slot)
            .collect())
    }
}

/// Combine what the supervisor observed with PID 1's report, by SANDBOX.md's precedence.
fn outcome(
    observed: Observed,
    before: &Usage,
    after: &Usage,
    limits: &Limits,
    req: &wire::JobRequest,
) -> Outcome {
    let Observed {
        stdout,
        mut stderr,
        report,
        kill,
        wall,
    } = observed;
    let cpu = Duration::from_nanos(after.cpu_ns.saturating_sub(before.cpu_ns));
    let oom = after.oom_kills > before.oom_kills;
    let (report, files) = parse_report(&report, req);
    let mut out = Outcome {
        status: Status::Ok,
        limit: None,
        exit_code: None,
        signal: None,
        cpu_time: cpu,
        wall_time: wall,
        // The peak was reset to the usage at the start (the spawner and page cache earlier jobs
        // left charged to the reused slot cgroup, reclaimable under pressure): count only what
        // this job added on top of it.
        memory_peak_bytes: after
            .memory_peak_bytes
            .saturating_sub(before.memory_peak_bytes),
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        files,
        error: None,
    };
    match report.as_ref().and_then(|r| r.exit) {
        Some(JobExit::Code(code)) => out.exit_code = Some(code),
        Some(JobExit::Signal(signal)) => out.signal = Some(signal),
        None if kill.is_some() => out.signal = Some(libc::SIGKILL),
        None => {}
    }
    if let Some(message) = report.as_ref().and_then(|r| r.exec_error.clone()) {
        let line = format!("corral: {message}\n");
        let room = stderr.cap.saturating_sub(stderr.data.len() as u64) as usize;
        stderr
            .data
            .extend_from_slice(&line.as_bytes()[..line.len().min(room)]);
    }
    let setup_error = match &report {
        Some(r) => r.setup_error.clone(),
        None if kill.is_none() => Some("the container's PID 1 ended without a report".to_string()),
        None => None,
    };
    out.status = if let Some(error) = setup_error {
        out.error = Some(error);
        Status::InternalError
    } else if kill == Some(Kill::Cancel) {
        Status::Cancelled
    } else if oom {
        // The kernel killed a process of the job for its memory limit. That came before any time
        // limit ended the job: a fork tree whose main process survived the OOM killer and then
        // spun, or thrashed at the limit, overran its memory first.
        Status::MemoryLimit
    } else if kill == Some(Kill::Cpu) || cpu > limits.cpu_time {
        out.limit = Some(TimeLimitKind::Cpu);
        Status::TimeLimit
    } else if kill == Some(Kill::Wall) {
        out.limit = Some(TimeLimitKind::Wall);
        Status::TimeLimit
    } else if kill == Some(Kill::Output) {
        Status::OutputLimit
    } else if out.exit_code == Some(0) && out.signal.is_none() {
        Status::Ok
    } else {
        Status::RuntimeError
    };
    out.stdout = stdout.data;
    out.stderr = stderr.data;
    out
}

/// The outcome of a job whose token was cancelled before it was launched.
fn cancelled_before_start() -> Outcome {
    Outcome {
        status: Status::Cancelled,
        limit: None,
        exit_code: None,
        signal: None,
        cpu_time: Duration::ZERO,
        wall_time: Duration::ZERO,
        memory_peak_bytes: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        files: Vec::new(),
        error: None,
    }
}

/// Decode PID 1's report; a malformed one counts as no report.
fn parse_report(bytes: &[u8], req: &wire::JobRequest) -> (Option<Report>, Vec<FileOut>) {
    let mut r = bytes;
    let Ok(Some(report)) = wire::read_frame::<Report>(&mut r) else {
        return (None, Vec::new());
    };
    let mut files = Vec::new();
    for file in &report.files {
        let contents = match &file.len {
            Ok(len) => match wire::read_blob(&mut r, *len, req.collect_max_bytes) {
                Ok(data) => Ok(data),
                Err(e) => Err(format!("report: {e}")),
            },
            Err(e) => Err(e.clone()),
        };
        files.push(FileOut {
            name: file.name.clone(),
            contents,
            mode: file.mode,
        });
    }
    (Some(report), files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_job_well_inside_its_cpu_budget_is_checked_when_it_could_first_reach_it() {
        let now = Instant::now();
        // 2 s of CPU on 2 CPUs cannot be used up in less than 1 s of wall time.
        assert_eq!(
            next_cpu_check(now, 2000 * MS, Duration::ZERO, 2),
            now + 1000 * MS
        );
        // Having used 1.5 s, the rest may go in 250 ms.
        assert_eq!(next_cpu_check(now, 2000 * MS, 1500 * MS, 2), now + 250 * MS);
    }

    #[test]
    fn checks_near_or_past_the_cpu_limit_come_at_the_shortest_interval() {
        let now = Instant::now();
        assert_eq!(
            next_cpu_check(now, 2000 * MS, 1999 * MS, 4),
            now + CPU_CHECK_MIN
        );
        assert_eq!(
            next_cpu_check(now, 2000 * MS, 3000 * MS, 4),
            now + CPU_CHECK_MIN
        );
        // No CPU count (a failed sysconf is never passed as 0, but it must not divide by zero).
        assert_eq!(
            next_cpu_check(now, 10 * MS, Duration::ZERO, 0),
            now + 10 * MS
        );
    }
}
