//! Judging through the node loop, with the plain-process executor (no root needed): verdicts per
//! test, compile once, compile errors and artifacts, comparison modes, limits, stop early.

mod common;

use std::sync::Arc;

use anyhow::Context;
use common::{job, start, start_with, PY_DOUBLE};
use corral_images::language::LanguageSet;
use corral_protocol::{Compare, JobEvent, JobId, RunStatus, Verdict};
use corral_worker::ProcessExecutor;

#[tokio::test]
async fn python_tests_get_per_test_verdicts() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job(
        "python",
        "main.py",
        PY_DOUBLE,
        &[("2\n", Some("4\n")), ("3\n", Some("7")), ("5", Some("10"))],
    );
    let done = node.run(spec).await?;
    assert_eq!(
        done.verdicts(),
        [Verdict::Accepted, Verdict::WrongAnswer, Verdict::Accepted]
    );
    assert_eq!(done.result.verdict, Verdict::WrongAnswer);
    assert_eq!(done.result.runs[1].stdout.0, b"6\n");
    assert!(!done.cancelled);
    assert_eq!(done.events.first(), Some(&JobEvent::Started));
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunStarted { .. })), 3);
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunFinished { .. })), 3);
    let outputs: Vec<&JobEvent> = done
        .events
        .iter()
        .filter(|e| matches!(e, JobEvent::Output { .. }))
        .collect();
    assert!(
        outputs.contains(&&JobEvent::Output {
            index: Some(2),
            stream: corral_protocol::Stream::Stdout,
            data: "10\n".into()
        }),
        "{outputs:?}"
    );
    assert!(done.result.compile.is_none());
    assert_eq!(done.statuses.first().map(|s| s.free_slots), Some(0));
    Ok(())
}

#[tokio::test]
async fn c_is_compiled_once_and_run_on_each_test() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let source = "#include <stdio.h>\nint main(void){long a,b;scanf(\"%ld %ld\",&a,&b);printf(\"%ld\\n\",a+b);return 0;}\n";
    let spec = job(
        "c",
        "main.c",
        source,
        &[
            ("1 2", Some("3")),
            ("40 2", Some("42")),
            ("-5 5", Some("0")),
        ],
    );
    let done = node.run(spec).await?;
    let compile = done.result.compile.as_ref().context("compile result")?;
    assert_eq!(compile.verdict, Verdict::Accepted, "{compile:?}");
    assert_eq!(done.count(|e| *e == JobEvent::CompileStarted), 1);
    assert_eq!(
        done.count(|e| matches!(e, JobEvent::CompileFinished { .. })),
        1
    );
    assert_eq!(done.verdicts(), [Verdict::Accepted; 3]);
    assert_eq!(done.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn c_compile_error_is_a_compilation_error_without_runs() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job("c", "main.c", "int main( { return 0; }\n", &[("", None)]);
    let done = node.run(spec).await?;
    assert_eq!(done.result.verdict, Verdict::CompilationError);
    let compile = done.result.compile.context("compile result")?;
    assert!(compile.stderr.to_string_lossy().contains("error"));
    assert!(done.result.runs.is_empty());
    assert!(done.events.iter().any(|e| matches!(
        e,
        JobEvent::Output {
            index: None,
            stream: corral_protocol::Stream::Stderr,
            ..
        }
    )));
    Ok(())
}

#[tokio::test]
async fn wrong_answer_and_comparison_modes() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let mut spec = job(
        "python",
        "main.py",
        "print('1.0000001  2')\n",
        &[("", Some("1 2"))],
    );
    spec.compare = Compare::Tokens;
    assert_eq!(
        node.run(spec.clone()).await?.result.verdict,
        Verdict::WrongAnswer
    );
    spec.id = JobId::new();
    spec.compare = Compare::Float { tolerance: 1e-6 };
    assert_eq!(
        node.run(spec.clone()).await?.result.verdict,
        Verdict::Accepted
    );
    spec.id = JobId::new();
    spec.compare = Compare::Exact;
    spec.tests[0].expected_output = Some("1.0000001  2\n".into());
    assert_eq!(node.run(spec).await?.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn runtime_error_time_limit_and_output_limit() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let crash = job("python", "main.py", "raise SystemExit(3)\n", &[]);
    let done = node.run(crash).await?;
    assert_eq!(done.result.verdict, Verdict::RuntimeError);
    assert_eq!(done.result.runs[0].exit_code, Some(3));
    let mut slow = job("python", "main.py", "while True: pass\n", &[]);
    slow.limits.wall_time_ms = 500;
    let done = node.run(slow).await?;
    assert_eq!(done.result.verdict, Verdict::TimeLimitExceeded);
    assert_eq!(done.result.runs[0].status, RunStatus::TimeLimit);
    let mut loud = job("python", "main.py", "print('x' * 100000)\n", &[]);
    loud.limits.output_bytes = 1000;
    let done = node.run(loud).await?;
    assert_eq!(done.result.verdict, Verdict::OutputLimitExceeded);
    assert_eq!(done.result.runs[0].stdout.len(), 1000);
    assert!(done.result.runs[0].stdout_truncated);
    Ok(())
}

#[tokio::test]
async fn stop_on_first_failure_skips_the_rest() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let tests = [
        ("1", Some("2")),
        ("2", Some("5")),
        ("3", Some("6")),
        ("4", Some("8")),
    ];
    let mut spec = job("python", "main.py", PY_DOUBLE, &tests);
    spec.stop_on_first_failure = true;
    let done = node.run(spec.clone()).await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted, Verdict::WrongAnswer]);
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunStarted { .. })), 2);
    spec.id = JobId::new();
    spec.stop_on_first_failure = false;
    let done = node.run(spec).await?;
    assert_eq!(done.verdicts().len(), 4);
    Ok(())
}

#[tokio::test]
async fn stop_on_first_failure_with_parallel_tests_keeps_a_prefix() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let tests: Vec<(&str, Option<&str>)> = vec![
        ("1", Some("2")),
        ("2", Some("0")),
        ("3", Some("6")),
        ("4", Some("8")),
        ("5", Some("10")),
    ];
    let mut spec = job("python", "main.py", PY_DOUBLE, &tests);
    spec.stop_on_first_failure = true;
    let done = node.run(spec).await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted, Verdict::WrongAnswer]);
    Ok(())
}

#[tokio::test]
async fn args_and_stdin_reach_the_program_as_data() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let mut spec = job(
        "python",
        "main.py",
        "import sys\nprint(sys.argv[1:])\nprint(sys.stdin.read())\n",
        &[],
    );
    spec.args = vec!["a b".into(), "{main}".into(), "$(id)".into()];
    spec.stdin = "from stdin".into();
    let done = node.run(spec).await?;
    assert_eq!(
        done.result.runs[0].stdout.to_string_lossy(),
        "['a b', '{main}', '$(id)']\nfrom stdin\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_compile_artifact_is_a_compilation_error() -> anyhow::Result<()> {
    // A "compiler" that succeeds without writing the artifact it promises.
    let text = r#"
id = "fakec"
name = "Fake C"
extensions = ["fc"]
images = ["host"]
source_file = "main.fc"
[version]
argv = ["bash", "--version"]
regex = 'version (\S+)'
[compile]
argv = ["true", "{sources}"]
artifacts = ["a.out"]
[compile.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
[run]
argv = ["./a.out"]
[run.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
"#;
    let language = corral_images::language::Language::parse("fakec.toml", text)?;
    let languages = LanguageSet::new(vec![language])?;
    let mut node = start_with(Arc::new(ProcessExecutor::new(1)), languages).await?;
    let done = node.run(job("fakec", "main.fc", "", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::CompilationError);
    let compile = done.result.compile.context("compile result")?;
    assert_eq!(
        compile.status,
        RunStatus::Ok,
        "the compiler itself exited 0"
    );
    assert!(
        compile
            .stderr
            .to_string_lossy()
            .contains("compile artifact a.out: not found"),
        "{compile:?}"
    );
    assert!(done.result.runs.is_empty());
    Ok(())
}

#[tokio::test]
async fn compile_output_is_capped_without_killing_the_compiler() -> anyhow::Result<()> {
    // A "compiler" that writes 100 KB of warnings, then its artifact (the script itself).
    let script = r#"head -c 100000 /dev/zero | tr "\0" w >&2; cp "$1" a.out; chmod 755 a.out"#;
    let text = format!(
        r#"
id = "noisy"
name = "Noisy"
extensions = ["sh"]
images = ["host"]
source_file = "main.sh"
[version]
argv = ["bash", "--version"]
regex = 'version (\S+)'
[compile]
argv = ["bash", "-c", '{script}', "bash", "{{sources}}"]
artifacts = ["a.out"]
[compile.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 1000
file_size_bytes = 1048576
[run]
argv = ["./a.out"]
[run.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
"#
    );
    let language = corral_images::language::Language::parse("noisy.toml", &text)?;
    let languages = LanguageSet::new(vec![language])?;
    let mut node = start_with(Arc::new(ProcessExecutor::new(1)), languages).await?;
    let mut spec = job(
        "noisy",
        "main.sh",
        "#!/bin/bash\necho ran\n",
        &[("", Some("ran"))],
    );
    spec.compile_limits.output_bytes = 1000;
    let done = node.run(spec).await?;
    let compile = done.result.compile.as_ref().context("compile result")?;
    assert_eq!(compile.verdict, Verdict::Accepted, "{compile:?}");
    assert_eq!(compile.stderr.len(), 1000);
    assert!(compile.stderr_truncated);
    let streamed: usize = done
        .events
        .iter()
        .map(|e| match e {
            JobEvent::Output {
                index: None, data, ..
            } => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(streamed, 1000, "compile events are capped too");
    assert_eq!(done.result.verdict, Verdict::Accepted, "{:?}", done.result);
    Ok(())
}
