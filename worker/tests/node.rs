//! The node loop driven over its channels, with the plain-process executor (no root needed):
//! hello and self-test, status and slots, cancel, shutdown, exactly one `Done` per assignment,
//! executor failures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use common::{job, start, start_with, PY_DOUBLE, WAIT};
use corral_images::language::LanguageSet;
use corral_protocol::{CoordinatorMessage, JobEvent, JobId, RunStatus, Verdict, WorkerMessage};
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{Outcome, StreamKind};
use corral_worker::{ExecError, ExecRequest, Executor, ProcessExecutor};

#[tokio::test]
async fn hello_lists_self_tested_languages_with_versions() -> anyhow::Result<()> {
    let node = start_with(Arc::new(ProcessExecutor::new(3)), LanguageSet::builtin()).await?;
    assert_eq!(node.hello.slots, 3);
    assert_eq!(node.hello.free_slots, 3);
    assert_eq!(node.hello.node.0, "test-node");
    let python = node
        .languages
        .iter()
        .find(|l| l.id == "python")
        .context("python passed its self-test")?;
    assert!(python.version.starts_with('3'), "{}", python.version);
    assert!(python.aliases.contains(&"py".to_string()));
    assert_eq!(python.limits.cpu_time_ms, 2000);
    let c = node.languages.iter().find(|l| l.id == "c").context("c")?;
    assert!(c.compiled && c.compile_limits.is_some());
    Ok(())
}

#[tokio::test]
async fn tests_run_in_parallel_on_free_slots() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let tests = [("1", Some("2")), ("2", Some("4")), ("3", Some("6"))];
    let done = node
        .run(job("python", "main.py", PY_DOUBLE, &tests))
        .await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted; 3]);
    // The job's own slot, then a borrowed one: the node reported itself full while it ran.
    let free: Vec<u32> = done.statuses.iter().map(|s| s.free_slots).collect();
    assert_eq!(free.first(), Some(&1), "{free:?}");
    assert!(free.contains(&0), "{free:?}");
    // All slots come back after the Done.
    let after = node.next().await?;
    match after {
        WorkerMessage::Status { status } => assert_eq!(status.free_slots, 2),
        other => bail!("expected a status, got {other:?}"),
    }
    let metrics = prometheus::TextEncoder::new().encode_to_string(&node.registry.gather())?;
    assert!(
        metrics.contains("corral_run_seconds_count{language=\"python\",step=\"run\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_worker_slot_utilization 0"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_kills_a_running_job_and_still_sends_done() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job(
        "python",
        "main.py",
        "import time\nprint('up', flush=True)\ntime.sleep(30)\n",
        &[],
    );
    let id = spec.id;
    node.send(CoordinatorMessage::Assign {
        job: spec,
        image: None,
    })
    .await?;
    // Wait until the job is running (its first output).
    loop {
        if let WorkerMessage::Event {
            event: JobEvent::Output { .. },
            ..
        } = node.next().await?
        {
            break;
        }
    }
    let started = std::time::Instant::now();
    node.send(CoordinatorMessage::Cancel { job: id }).await?;
    let done = node.collect(id).await?;
    assert!(done.cancelled);
    assert!(done.result.runs.is_empty(), "the cut run has no result");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A cancel for a job that is unknown or already done changes nothing: no second `Done`
    // (`run` fails on any `Done` but the one it waits for).
    node.send(CoordinatorMessage::Cancel { job: JobId::new() })
        .await?;
    node.send(CoordinatorMessage::Cancel { job: id }).await?;
    let done = node.run(job("python", "main.py", "print(1)", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn unknown_language_gets_an_internal_error_done() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let done = node.run(job("cobol", "main.cob", "", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::InternalError);
    let error = done.result.runs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("cobol"), "{error}");
    assert!(done.events.is_empty());
    // An alias that reached the worker unresolved still finds its language.
    let done = node.run(job("py", "main.py", "print(1)", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn closing_the_coordinator_side_cancels_running_jobs_and_ends() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job("python", "main.py", "import time\ntime.sleep(30)\n", &[]);
    let id = spec.id;
    node.send(CoordinatorMessage::Assign {
        job: spec,
        image: None,
    })
    .await?;
    loop {
        if let WorkerMessage::Event {
            event: JobEvent::RunStarted { .. },
            ..
        } = node.next().await?
        {
            break;
        }
    }
    node.to_worker = None;
    let done = node.collect(id).await?;
    assert!(done.cancelled);
    tokio::time::timeout(WAIT, node.task).await???;
    Ok(())
}

/// Passes version probes through to plain processes, then fails every job's command.
struct FailingExecutor(ProcessExecutor);

impl Executor for FailingExecutor {
    fn slots(&self) -> usize {
        1
    }

    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError> {
        if request.argv.iter().any(|a| a == "--version") {
            return self.0.run(request, cancel, on_output);
        }
        Err(ExecError::UnknownImage("gone".into()))
    }

    /// Claims `host`, so the languages are offered (a node without any image offers nothing).
    fn images(&self) -> Vec<String> {
        vec!["host".to_string()]
    }
}

#[tokio::test]
async fn executor_failures_become_internal_error_runs() -> anyhow::Result<()> {
    let executor = Arc::new(FailingExecutor(ProcessExecutor::new(1)));
    let mut languages = LanguageSet::builtin();
    languages.retain(|l| l.id == "python");
    let mut node = start_with(executor, languages).await?;
    assert_eq!(node.languages.len(), 1);
    let done = node
        .run(job(
            "python",
            "main.py",
            PY_DOUBLE,
            &[("1", Some("2")), ("2", Some("4"))],
        ))
        .await?;
    assert_eq!(done.result.verdict, Verdict::InternalError);
    assert_eq!(done.result.runs.len(), 2);
    for run in &done.result.runs {
        assert_eq!(run.status, RunStatus::InternalError);
        assert!(
            run.error.as_deref().unwrap_or_default().contains("gone"),
            "{run:?}"
        );
    }
    Ok(())
}
