//! One job, start to end, on a blocking thread: compile once, then run every test (in parallel on
//! slots that are free), judge, and stop early when asked or cancelled.
//!
//! Compile artifacts flow into the runs: the compile step names its artifacts (`a.out`,
//! `main.jar`), the executor reads them back from the compile run's working directory (safely:
//! regular files only, no links, size capped by the compile limits' `file_size_bytes`), and every
//! run gets them as input files beside the job's own files. A missing or refused artifact makes
//! the compile step a `compilation_error` with the reason appended to its stderr.
//!
//! Tests are taken in order from a shared queue by the job's own thread plus one thread per slot
//! that was free when the tests began (borrowed, and given back as each thread runs out of
//! tests). With `stop_on_first_failure`, no test is taken after a failure, running ones finish,
//! and the result keeps the prefix up to the first failure: a later test that finished in
//! parallel still had its `RunStarted`/`RunFinished` events, but is not in the job's result.
//!
//! A cancel kills the running commands (the executor watches the token) and no further test is
//! taken; the result keeps the runs that ended before it. A job waiting inside the sandbox for a
//! free slot notices the cancel when it gets one, before anything is launched.
//!
//! Nothing here panics on a job's behalf: executor failures become `internal_error` runs with an
//! `error` message.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use corral_images::language::{CompileStep, Language, Vars};
use corral_protocol::{Bytes, JobEvent, JobResult, JobSpec, RunResult, Stream, Verdict};
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{FileIn, Outcome, StreamKind};

use crate::convert::{internal_error, run_result, run_status, sandbox_limits};
use crate::executor::{ExecError, ExecRequest, Executor};
use crate::judge::{compile_verdict, job_verdict, run_verdict};
use crate::metrics::Metrics;
use crate::slots::Slots;

/// Mode of the job's own files.
const SOURCE_MODE: u32 = 0o644;
/// A compiler is killed for its output only past this many bytes per stream; below it, what the
/// result and the events keep is capped at the compile limits' `output_bytes` instead, so a
/// compile that succeeds with many warnings is not cut off.
const COMPILE_OUTPUT_KILL: u64 = 4 << 20;

/// Everything the runs of one job share.
pub(crate) struct Job<'a> {
    /// The job.
    pub spec: &'a JobSpec,
    /// Its language.
    pub language: &'a Language,
    /// Runs the commands.
    pub executor: &'a dyn Executor,
    /// Cancelled by the coordinator's `Cancel`.
    pub cancel: &'a CancelToken,
    /// Sends a progress event (callable from every test thread).
    pub emit: &'a (dyn Fn(JobEvent) + Sync),
    /// The node's slots, to borrow free ones for parallel tests.
    pub slots: &'a Slots,
    /// Run time histograms and counters.
    pub metrics: &'a Metrics,
}

/// How a job ended.
pub(crate) struct Finished {
    /// Its result (for a cancelled job, the runs that ended before the cancel).
    pub result: JobResult,
    /// Whether the cancel cut it short.
    pub cancelled: bool,
}

/// Run the job.
pub(crate) fn run_job(job: &Job<'_>) -> Finished {
    (job.emit)(JobEvent::Started);
    let mut files: Vec<FileIn> = job
        .spec
        .files
        .iter()
        .map(|f| FileIn {
            name: f.name.clone(),
            contents: f.content.0.clone(),
            mode: SOURCE_MODE,
        })
        .collect();
    let mut compile = None;
    if let Some(step) = &job.language.compile {
        let Some((result, artifacts)) = job.compile(step, &files) else {
            return finished(None, Vec::new(), true);
        };
        let ok = result.verdict == Verdict::Accepted;
        compile = Some(result);
        if !ok {
            return finished(compile, Vec::new(), false);
        }
        for artifact in artifacts {
            files.retain(|f| f.name != artifact.name);
            files.push(artifact);
        }
    }
    let (runs, cancelled) = job.run_tests(&files);
    finished(compile, runs, cancelled)
}

fn finished(compile: Option<RunResult>, runs: Vec<RunResult>, cancelled: bool) -> Finished {
    Finished {
        result: JobResult {
            verdict: job_verdict(compile.as_ref(), &runs),
            compile,
            runs,
        },
        cancelled,
    }
}

/// One test's input and expected output.
struct Case<'a> {
    stdin: &'a Bytes,
    expected: Option<&'a Bytes>,
}

impl Job<'_> {
    fn vars<'v>(&'v self, names: &'v [&'v str]) -> Vars<'v> {
        Vars {
            files: names,
            args: &self.spec.args,
        }
    }

    /// Compile; `None` when cancelled.
    fn compile(&self, step: &CompileStep, files: &[FileIn]) -> Option<(RunResult, Vec<FileIn>)> {
        (self.emit)(JobEvent::CompileStarted);
        let names: Vec<&str> = self.spec.files.iter().map(|f| f.name.as_str()).collect();
        let limits = &self.spec.compile_limits;
        let mut sandbox = sandbox_limits(limits);
        sandbox.output_bytes = sandbox.output_bytes.max(COMPILE_OUTPUT_KILL);
        let request = ExecRequest {
            image: self.language.image().to_string(),
            argv: self.language.command(&step.argv, self.vars(&names)),
            files: files.to_vec(),
            stdin: Vec::new(),
            limits: sandbox,
            network: false,
            collect: step.artifacts.clone(),
            collect_max_bytes: limits.file_size_bytes,
        };
        let cap = limits.output_bytes;
        let (result, artifacts) = match self.execute("compile", None, request, cap) {
            Err(e) => (internal_error(e.to_string()), Vec::new()),
            Ok(outcome) => compile_result(outcome, cap)?,
        };
        self.count("compile", result.verdict);
        (self.emit)(JobEvent::CompileFinished {
            result: result.clone(),
        });
        Some((result, artifacts))
    }

    /// Run every test (or the one run without tests); the runs in order, and whether a cancel cut
    /// them short.
    fn run_tests(&self, files: &[FileIn]) -> (Vec<RunResult>, bool) {
        let no_tests = [Case {
            stdin: &self.spec.stdin,
            expected: None,
        }];
        let tests: Vec<Case<'_>> = self
            .spec
            .tests
            .iter()
            .map(|t| Case {
                stdin: &t.stdin,
                expected: t.expected_output.as_ref(),
            })
            .collect();
        let cases: &[Case<'_>] = if tests.is_empty() { &no_tests } else { &tests };
        let queue = Queue {
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            results: Mutex::new(vec![None; cases.len()]),
        };
        std::thread::scope(|scope| {
            for _ in 1..cases.len() {
                let Some(slot) = self.slots.try_borrow() else {
                    break;
                };
                let queue = &queue;
                scope.spawn(move || {
                    self.work(cases, files, queue);
                    drop(slot);
                });
            }
            self.work(cases, files, &queue);
        });
        let results = queue
            .results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let mut runs: Vec<RunResult> = results.into_iter().map_while(|r| r).collect();
        if self.spec.stop_on_first_failure {
            if let Some(first) = runs.iter().position(|r| r.verdict != Verdict::Accepted) {
                // Parallel threads may have finished later tests; the result stops at the failure.
                runs.truncate(first + 1);
            }
        }
        (runs, queue.cancelled.into_inner())
    }

    /// Take tests from the queue until none is left, a failure stops the job, or it is cancelled.
    fn work(&self, cases: &[Case<'_>], files: &[FileIn], queue: &Queue) {
        loop {
            if queue.stop.load(Ordering::SeqCst) {
                return;
            }
            let index = queue.next.fetch_add(1, Ordering::SeqCst);
            if index >= cases.len() {
                return;
            }
            if self.cancel.is_cancelled() {
                queue.cancelled.store(true, Ordering::SeqCst);
                return;
            }
            (self.emit)(JobEvent::RunStarted { index });
            let Some(result) = self.run_one(index, &cases[index], files) else {
                queue.cancelled.store(true, Ordering::SeqCst);
                return;
            };
            if result.verdict != Verdict::Accepted && self.spec.stop_on_first_failure {
                queue.stop.store(true, Ordering::SeqCst);
            }
            (self.emit)(JobEvent::RunFinished {
                index,
                result: result.clone(),
            });
            queue.results.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(result);
        }
    }

    /// One run; `None` when cancelled.
    fn run_one(&self, index: usize, case: &Case<'_>, files: &[FileIn]) -> Option<RunResult> {
        let names: Vec<&str> = self.spec.files.iter().map(|f| f.name.as_str()).collect();
        let request = ExecRequest {
            image: self.language.image().to_string(),
            argv: self
                .language
                .command(&self.language.run.argv, self.vars(&names)),
            files: files.to_vec(),
            stdin: case.stdin.0.clone(),
            limits: sandbox_limits(&self.spec.limits),
            network: self.spec.network,
            collect: Vec::new(),
            collect_max_bytes: 0,
        };
        let result = match self.execute("run", Some(index), request, u64::MAX) {
            Err(e) => internal_error(e.to_string()),
            Ok(outcome) => {
                let status = run_status(outcome.status)?;
                let expected = case.expected.map(|b| b.0.as_slice());
                let verdict = run_verdict(status, &outcome.stdout, expected, self.spec.compare);
                run_result(outcome, status, verdict)
            }
        };
        self.count("run", result.verdict);
        Some(result)
    }

    /// Run one command, streaming its output as events (at most `event_cap` bytes per stream)
    /// and timing it.
    fn execute(
        &self,
        step: &str,
        index: Option<usize>,
        request: ExecRequest,
        event_cap: u64,
    ) -> Result<Outcome, ExecError> {
        let started = Instant::now();
        let mut sent = [0u64; 2];
        let mut on_output = |kind: StreamKind, data: &[u8]| {
            let (stream, sent) = match kind {
                StreamKind::Stdout => (Stream::Stdout, &mut sent[0]),
                StreamKind::Stderr => (Stream::Stderr, &mut sent[1]),
            };
            let room = event_cap.saturating_sub(*sent).min(data.len() as u64) as usize;
            *sent += room as u64;
            if room > 0 {
                (self.emit)(JobEvent::Output {
                    index,
                    stream,
                    data: Bytes(data[..room].to_vec()),
                });
            }
        };
        let outcome = self.executor.run(request, self.cancel, &mut on_output);
        match &outcome {
            Ok(o) => {
                let labels = [self.language.id.as_str(), step];
                let overhead = started.elapsed().saturating_sub(o.wall_time);
                let m = self.metrics;
                m.run_time
                    .with_label_values(&labels)
                    .observe(o.wall_time.as_secs_f64());
                m.sandbox_start
                    .with_label_values(&labels)
                    .observe(overhead.as_secs_f64());
            }
            Err(e) => tracing::warn!(job = %self.spec.id, step, error = %e, "executor failed"),
        }
        outcome
    }

    fn count(&self, step: &str, verdict: Verdict) {
        self.metrics
            .runs
            .with_label_values(&[self.language.id.as_str(), step, verdict.as_str()])
            .inc();
    }
}

/// Tests not taken yet, and what the test threads decided.
struct Queue {
    /// Index of the next test to take.
    next: AtomicUsize,
    /// A failure asked to stop (`stop_on_first_failure`).
    stop: AtomicBool,
    /// A cancel cut the job short.
    cancelled: AtomicBool,
    /// Results by test index.
    results: Mutex<Vec<Option<RunResult>>>,
}

/// The compile step's result and artifacts; `None` when it was cancelled.
fn compile_result(mut outcome: Outcome, output_cap: u64) -> Option<(RunResult, Vec<FileIn>)> {
    let status = run_status(outcome.status)?;
    let cap = usize::try_from(output_cap).unwrap_or(usize::MAX);
    for (data, truncated) in [
        (&mut outcome.stdout, &mut outcome.stdout_truncated),
        (&mut outcome.stderr, &mut outcome.stderr_truncated),
    ] {
        if data.len() > cap {
            data.truncate(cap);
            *truncated = true;
        }
    }
    let mut verdict = compile_verdict(status);
    let mut artifacts = Vec::new();
    let mut notes = String::new();
    if verdict == Verdict::Accepted {
        for file in std::mem::take(&mut outcome.files) {
            match file.contents {
                Ok(contents) => artifacts.push(FileIn {
                    name: file.name,
                    contents,
                    mode: file.mode & 0o777,
                }),
                Err(why) => {
                    verdict = Verdict::CompilationError;
                    notes.push_str(&format!("corral: compile artifact {}: {why}\n", file.name));
                }
            }
        }
    }
    let mut result = run_result(outcome, status, verdict);
    result.stderr.0.extend_from_slice(notes.as_bytes());
    if verdict != Verdict::Accepted {
        artifacts.clear();
    }
    Some((result, artifacts))
}
