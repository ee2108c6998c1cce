//! End to end: a real `corral serve` (child process, port 0) on the real sandbox (needs root; CI
//! runs as root), driven over HTTP and with `corral submit`: a python hello world with
//! `?wait=true`, a C judge job with tests, a cancel, a `kill -9` in the middle of a job, and
//! restarts in the middle of a drain of 40 jobs and after it.

#[path = "common/http.rs"]
mod http;
#[path = "service/server.rs"]
mod server;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;
use server::{Server, BIN};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn python_hello_world_waits_for_its_result() -> anyhow::Result<()> {
    let server = Server::start(0)?;
    let body =
        json!({"language": "python", "source": "print('hello', input())", "stdin": "corral"});
    let (status, doc) = server.call("POST", "/v1/jobs?wait=true", Some(&body))?;
    ensure!(status == 200, "{status}: {doc}");
    assert_eq!(doc["state"], "done", "{doc}");
    assert_eq!(doc["verdict"], "accepted", "{doc}");
    assert_eq!(doc["runs"][0]["stdout"], "hello corral\n");
    assert_eq!(doc["runs"][0]["exit_code"], 0);
    // Without a key: 401, and the metrics saw the job, the gateway's and the worker's.
    let (status, _) = server::request_without_key(&server.url, "/v1/jobs")?;
    assert_eq!(status, 401);
    let (status, metrics) = server::get_text(&server.url, "/metrics")?;
    assert_eq!(status, 200);
    for name in [
        r#"corral_jobs_finished_total{language="python",state="done",tenant="t",verdict="accepted"} 1"#,
        "corral_queue_depth 0",
        "corral_slots 2",
        "corral_sandbox_start_seconds_count",
        r#"corral_http_errors_total{code="missing_api_key",status="401"} 1"#,
    ] {
        assert!(metrics.contains(name), "{name} not in\n{metrics}");
    }
    Ok(())
}

#[test]
fn c_judge_job_compiles_once_and_judges_each_test() -> anyhow::Result<()> {
    let server = Server::start(1)?;
    let source = "#include <stdio.h>\nint main(void){long a,b;if(scanf(\"%ld %ld\",&a,&b)!=2)return 3;printf(\"%ld\\n\",a+b);return 0;}\n";
    let body = json!({
        "language": "c",
        "source": source,
        "tests": [
            {"stdin": "1 2", "expected_output": "3"},
            {"stdin": "40 2", "expected_output": "42\n"},
            {"stdin": "2 2", "expected_output": "5"},
            {"stdin": "x"}
        ],
    });
    let (status, doc) = server.call("POST", "/v1/jobs?wait=true", Some(&body))?;
    ensure!(status == 200, "{status}: {doc}");
    assert_eq!(doc["compile"]["verdict"], "accepted", "{doc}");
    let verdicts: Vec<&str> = doc["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["accepted", "accepted", "wrong_answer", "runtime_error"]
    );
    assert_eq!(doc["verdict"], "wrong_answer");
    let broken = json!({"language": "c", "source": "int main( {"});
    let (_, doc) = server.call("POST", "/v1/jobs?wait=true", Some(&broken))?;
    assert_eq!(doc["verdict"], "compilation_error", "{doc}");
    assert_eq!(doc["runs"], json!([]));
    Ok(())
}

#[test]
fn cancel_kills_a_running_job() -> anyhow::Result<()> {
    let server = Server::start(2)?;
    let body = json!({"language": "bash", "source": "echo started; sleep 30", "limits": {"wall_time_ms": 60000}});
    let (status, doc) = server.call("POST", "/v1/jobs", Some(&body))?;
    ensure!(status == 202, "{status}: {doc}");
    let id = doc["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    while server.call("GET", &format!("/v1/jobs/{id}"), None)?.1["state"] != "running" {
        ensure!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cancelled_at = Instant::now();
    let (status, _) = server.call("DELETE", &format!("/v1/jobs/{id}"), None)?;
    assert_eq!(status, 202);
    let doc = server.wait_final(&id, WAIT)?;
    assert_eq!(doc["state"], "cancelled", "{doc}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
    Ok(())
}

#[test]
fn kill_9_in_the_middle_loses_nothing_and_reruns_the_job() -> anyhow::Result<()> {
    let mut server = Server::start(3)?;
    let slow = json!({"language": "bash", "source": "sleep 2; echo slept"});
    let (_, doc) = server.call("POST", "/v1/jobs", Some(&slow))?;
    let slow_id = doc["id"].as_str().unwrap().to_string();
    let mut quick = Vec::new();
    for i in 0..4 {
        let body = json!({"language": "bash", "source": "cat", "stdin": format!("{i}")});
        let (_, doc) = server.call("POST", "/v1/jobs", Some(&body))?;
        quick.push(doc["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + WAIT;
    while server.call("GET", &format!("/v1/jobs/{slow_id}"), None)?.1["state"] != "running" {
        ensure!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9()?;
    server.spawn()?;
    let doc = server.wait_final(&slow_id, WAIT)?;
    assert_eq!(doc["state"], "done", "{doc}");
    assert_eq!(doc["runs"][0]["stdout"], "slept\n");
    assert_eq!(doc["attempts"], 2, "the interrupted job ran again: {doc}");
    for (i, id) in quick.iter().enumerate() {
        let doc = server.wait_final(id, WAIT)?;
        assert_eq!(doc["runs"][0]["stdout"], format!("{i}"), "{doc}");
        assert!(doc["attempts"].as_u64().unwrap() <= 2);
    }
    Ok(())
}

#[test]
fn corral_submit_prints_the_result() -> anyhow::Result<()> {
    let server = Server::start(4)?;
    let file = server.dir.path().join("hello.py");
    std::fs::write(&file, "print('hi from submit')\n")?;
    let out = Command::new(BIN)
        .arg("submit")
        .arg(&file)
        .args(["--server", &server.url])
        .env("CORRAL_KEY", &server.key)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    assert!(stdout.contains("verdict accepted"), "{stdout}");
    assert!(stdout.contains("hi from submit"), "{stdout}");
    let out = Command::new(BIN)
        .arg("submit")
        .arg(&file)
        .args(["--server", &server.url, "--json", "--key", &server.key])
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(doc["runs"][0]["stdout"], "hi from submit\n");
    Ok(())
}

#[test]
fn revoking_a_tenant_takes_effect_on_the_running_server() -> anyhow::Result<()> {
    let server = Server::start(5)?;
    let data = server.dir.path().join("data");
    assert_eq!(server.call("GET", "/v1/jobs", None)?.0, 200);
    let out = Command::new(BIN)
        .args(["tenant", "revoke", "t", "--data-dir"])
        .arg(&data)
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let (status, doc) = server.call("GET", "/v1/jobs", None)?;
    assert_eq!(status, 401, "{doc}");
    assert_eq!(doc["error"]["code"], "invalid_api_key");
    let out = Command::new(BIN)
        .args(["tenant", "list", "--data-dir"])
        .arg(&data)
        .output()?;
    let list = String::from_utf8(out.stdout)?;
    assert!(list.lines().any(|l| l.starts_with("t\trevoked")), "{list}");
    let out = Command::new(BIN)
        .args(["tenant", "create", "Bad/Name", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no key printed for a refused tenant");
    Ok(())
}

#[test]
fn events_stream_the_output_of_a_running_job() -> anyhow::Result<()> {
    let server = Server::start(6)?;
    let body = json!({"language": "bash", "source": "echo first; sleep 1; echo second"});
    let (status, doc) = server.call("POST", "/v1/jobs", Some(&body))?;
    ensure!(status == 202, "{status}: {doc}");
    let id = doc["id"].as_str().unwrap();
    let (status, text) = server::get_text_with(
        &server.url,
        &format!("/v1/jobs/{id}/events"),
        Some(&server.key),
    )?;
    assert_eq!(status, 200);
    let events: Vec<(&str, serde_json::Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str::<serde_json::Value>(data).ok()?))
        })
        .collect();
    assert_eq!(events.first().map(|e| e.0), Some("state"), "{text}");
    let output: String = events
        .iter()
        .filter(|(n, d)| *n == "output" && d["stream"] == "stdout")
        .map(|(_, d)| d["data"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(output, "first\nsecond\n", "{text}");
    let (last, doc) = events.last().unwrap();
    assert_eq!(*last, "job");
    assert_eq!(doc["verdict"], "accepted");
    Ok(())
}

/// Every job of the tenant as `GET /v1/jobs` pages through them: (id, document).
fn list_all(server: &Server) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let mut jobs = Vec::new();
    let mut path = "/v1/jobs?limit=50".to_string();
    loop {
        let (status, page) = server.call("GET", &path, None)?;
        ensure!(status == 200, "{status}: {page}");
        for doc in page["jobs"].as_array().into_iter().flatten() {
            jobs.push((
                doc["id"].as_str().unwrap_or_default().to_string(),
                doc.clone(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=50&cursor={cursor}"),
            None => return Ok(jobs),
        }
    }
}

#[test]
fn restart_under_load_loses_no_job_and_records_each_result_once() -> anyhow::Result<()> {
    const JOBS: usize = 40;
    let mut server = Server::start(7)?;
    let body = |i: usize| {
        json!({"language": "bash", "source": "sleep 0.05; cat", "stdin": format!("job {i}"),
               "idempotency_key": format!("load-{i}")})
    };
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let (status, doc) = server.call("POST", "/v1/jobs", Some(&body(i)))?;
        ensure!(status == 202, "{status}: {doc}");
        ids.push(doc["id"].as_str().unwrap().to_string());
    }
    // Crash in the middle of the drain: some jobs done, both slots busy, the rest queued.
    let deadline = Instant::now() + WAIT;
    loop {
        let jobs = list_all(&server)?;
        let done = jobs.iter().filter(|(_, d)| d["state"] == "done").count();
        let running = jobs.iter().filter(|(_, d)| d["state"] == "running").count();
        if done >= 6 && running > 0 {
            ensure!(done < JOBS, "drained before the crash");
            break;
        }
        ensure!(Instant::now() < deadline, "the drain never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9()?;
    server.spawn()?;

    // Clients that did not hear back submit again with their keys: the same jobs, no new ones.
    for (i, id) in ids.iter().enumerate() {
        let (status, doc) = server.call("POST", "/v1/jobs", Some(&body(i)))?;
        ensure!(status == 200 || status == 202, "{status}: {doc}");
        assert_eq!(doc["id"].as_str(), Some(id.as_str()), "resubmitted job {i}");
    }
    let mut docs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let doc = server.wait_final(id, WAIT)?;
        assert_eq!(doc["state"], "done", "{doc}");
        assert_eq!(doc["verdict"], "accepted", "{doc}");
        assert_eq!(doc["runs"][0]["stdout"], format!("job {i}"), "{doc}");
        let attempts = doc["attempts"].as_u64().unwrap_or(0);
        assert!((1..=2).contains(&attempts), "{doc}");
        docs.push(doc);
    }
    let mut listed: Vec<String> = list_all(&server)?.into_iter().map(|(id, _)| id).collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected, "the list holds each job exactly once");

    // Once recorded, a result stays: another crash re-runs and re-records nothing.
    server.kill9()?;
    server.spawn()?;
    for (id, before) in ids.iter().zip(&docs) {
        let (status, after) = server.call("GET", &format!("/v1/jobs/{id}"), None)?;
        assert_eq!(status, 200);
        assert_eq!(&after, before, "job {id} changed after a restart");
    }
    Ok(())
}
