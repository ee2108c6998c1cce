//! Choosing each language's image at start-up, with a fake executor that claims some images
//! besides `host` (and runs everything as plain processes): languages run on the first of their
//! images the node has, languages with none are not offered, the hello reports the image, every
//! command of a job is sent with the chosen image, and an image that disappears fails the job
//! instead of moving it to another image.

mod common;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use common::{job, start_with, PY_DOUBLE};
use corral_images::language::LanguageSet;
use corral_protocol::{RunStatus, Verdict};
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{Outcome, StreamKind};
use corral_worker::{ExecError, ExecRequest, Executor, ProcessExecutor};

/// Has `host` plus `extra` (until `remove`d); runs every command as a local process.
struct FakeImages {
    inner: ProcessExecutor,
    extra: Mutex<Vec<String>>,
    /// The image of every command run, in order.
    seen: Mutex<Vec<String>>,
}

impl FakeImages {
    fn new(extra: &[&str]) -> FakeImages {
        FakeImages {
            inner: ProcessExecutor::new(2),
            extra: Mutex::new(extra.iter().map(|s| s.to_string()).collect()),
            seen: Mutex::default(),
        }
    }

    fn remove(&self, image: &str) {
        self.extra.lock().unwrap().retain(|i| i != image);
    }
}

impl Executor for FakeImages {
    fn slots(&self) -> usize {
        self.inner.slots()
    }

    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError> {
        self.seen.lock().unwrap().push(request.image.clone());
        if !self.has_image(&request.image) {
            return Err(ExecError::ImageGone {
                name: request.image.clone(),
                why: "removed by the test".into(),
            });
        }
        self.inner.run(request, cancel, on_output)
    }

    fn images(&self) -> Vec<String> {
        let mut images = vec!["host".to_string()];
        images.extend(self.extra.lock().unwrap().iter().cloned());
        images
    }
}

/// python, c, ruby and go: enough to see every case without probing every language.
fn languages() -> LanguageSet {
    let mut set = LanguageSet::builtin();
    set.retain(|l| ["python", "c", "ruby", "go"].contains(&l.id.as_str()));
    set
}

#[tokio::test]
async fn languages_run_on_the_first_image_present_and_the_rest_are_not_offered(
) -> anyhow::Result<()> {
    // "python" exists (it runs as the host's python3 here); gcc, ruby and go do not.
    let executor = Arc::new(FakeImages::new(&["python"]));
    let mut node = start_with(executor.clone(), languages()).await?;
    let offered: Vec<(&str, Option<&str>)> = node
        .languages
        .iter()
        .map(|l| (l.id.as_str(), l.image.as_deref()))
        .collect();
    assert_eq!(offered, [("c", Some("host")), ("python", Some("python"))]);
    // The version probes ran on the chosen images, and never on a missing one.
    let probed = executor.seen.lock().unwrap().clone();
    assert!(probed.contains(&"python".to_string()), "{probed:?}");
    assert!(
        probed.iter().all(|i| i == "python" || i == "host"),
        "{probed:?}"
    );

    executor.seen.lock().unwrap().clear();
    let tests = [("1", Some("2")), ("5", Some("10"))];
    let done = node
        .run(job("python", "main.py", PY_DOUBLE, &tests))
        .await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted; 2]);
    assert_eq!(*executor.seen.lock().unwrap(), ["python", "python"]);
    Ok(())
}

#[tokio::test]
async fn a_job_whose_image_disappeared_fails_and_does_not_fall_back() -> anyhow::Result<()> {
    let executor = Arc::new(FakeImages::new(&["python"]));
    let mut node = start_with(executor.clone(), languages()).await?;
    let python = node.languages.iter().find(|l| l.id == "python");
    assert_eq!(python.context("python")?.image.as_deref(), Some("python"));

    executor.remove("python");
    executor.seen.lock().unwrap().clear();
    let done = node
        .run(job("python", "main.py", PY_DOUBLE, &[("1", Some("2"))]))
        .await?;
    assert_eq!(done.result.verdict, Verdict::InternalError);
    let run = done.result.runs.first().context("a run result")?;
    assert_eq!(run.status, RunStatus::InternalError);
    let message = run.error.clone().unwrap_or_default();
    assert!(
        message.contains("\"python\"") && message.contains("gone"),
        "{message}"
    );
    // Tried on its own image only: never on host.
    let seen = executor.seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|i| i == "python"),
        "{seen:?}"
    );
    Ok(())
}
