//! Server-Sent Events, webhooks and restart durability, with a fake worker node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use common::{delete, get, Harness};
use corral_gateway::store::{JobState, Store};
use corral_gateway::{Config, Gateway, SqliteStore};
use corral_protocol::{JobResult, Verdict};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

async fn wait_state(h: &Harness, id: &str, state: &str) {
    for _ in 0..200 {
        if h.get(&h.alice, &format!("/v1/jobs/{id}")).await.1["state"] == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("job {id} never reached {state}");
}

/// (event name, data) pairs of an SSE body.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test]
async fn events_stream_state_changes_and_output_then_the_document() {
    let h = Harness::new().await;
    let body = json!({"language": "python", "source": "hang", "stdin": "streamed"});
    let (_, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
    let id = doc["id"].as_str().unwrap().to_string();
    wait_state(&h, &id, "running").await;
    let response = h
        .app
        .clone()
        .oneshot(get(&h.alice, &format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (s, _, _) = h.send(delete(&h.alice, &format!("/v1/jobs/{id}"))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let bytes = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the stream ends after the job")
        .unwrap()
        .to_bytes();
    let events = parse_sse(std::str::from_utf8(&bytes).unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"state"), "{names:?}");
    assert_eq!(events[0].1["state"], "running");
    let output = events.iter().find(|(n, _)| n == "output").expect("output");
    assert_eq!(output.1["data"], "streamed");
    assert_eq!(output.1["stream"], "stdout");
    assert_eq!(names[names.len() - 2], "state");
    assert_eq!(events[names.len() - 2].1["state"], "cancelled");
    assert_eq!(names.last(), Some(&"job"));
    assert_eq!(events.last().unwrap().1["id"], id.as_str());
}

#[tokio::test]
async fn a_late_subscriber_gets_the_final_state_and_document() {
    let h = Harness::new().await;
    let (_, doc) = h
        .post(
            &h.alice,
            "/v1/jobs?wait=true",
            &json!({"language": "python", "source": "1"}),
        )
        .await;
    let id = doc["id"].as_str().unwrap();
    let response = h
        .app
        .clone()
        .oneshot(get(&h.alice, &format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let events = parse_sse(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].1["state"], "done");
    assert_eq!(events[1].1["verdict"], "accepted");
}

/// A local webhook receiver: the first `failures` requests answer 500.
async fn receiver(failures: usize) -> (String, mpsc::UnboundedReceiver<(HeaderMap, Vec<u8>)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        route_post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tx.send((headers, body.to_vec()));
                if n < failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_delivered() {
    let config = Config {
        webhook_backoff: Duration::from_millis(20),
        // The receiver is on loopback.
        webhook_allow_private: true,
        ..Config::default()
    };
    let h = Harness::with(config, common::quota(), 2).await;
    let (url, mut rx) = receiver(2).await;
    let body = json!({"language": "python", "source": "1", "stdin": "x", "callback_url": url});
    let (_, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
    let id = doc["id"].as_str().unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a webhook request")
            .unwrap();
        deliveries.push(got);
    }
    for (headers, body) in &deliveries {
        let sig = headers["x-corral-signature"].to_str().unwrap();
        assert_eq!(
            sig,
            corral_gateway::webhook::signature(&h.alice_secret, body)
        );
        assert_ne!(
            sig,
            corral_gateway::webhook::signature("other secret", body)
        );
        let doc: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(doc["id"], id);
        assert_eq!(doc["state"], "done");
        assert_eq!(doc["runs"][0]["stdout"], "x");
    }
    // Delivered on the third try: no fourth request.
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(extra.is_err(), "delivered webhook was sent again");
}

#[tokio::test]
async fn a_restart_loses_nothing_and_reruns_interrupted_jobs_once() {
    // First life: a node without slots, three jobs queued; one of them "was running" when the process died.
    let h = Harness::with(Config::default(), common::quota(), 0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"language": "python", "source": "1", "stdin": format!("{i}")});
        let (s, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        ids.push(
            doc["id"]
                .as_str()
                .unwrap()
                .parse::<corral_protocol::JobId>()
                .unwrap(),
        );
    }
    let started = h.store.start_job(ids[0], 0).unwrap().unwrap();
    assert_eq!(started.attempt, 1);
    let dir = h.dir;
    drop((h.gateway, h.app, h.store));

    // Second life, from the files only.
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let gateway = Gateway::start(
        Config::default(),
        store.clone() as Arc<dyn Store>,
        Default::default(),
    )
    .await
    .unwrap();
    common::connect_fake_node(&gateway, 2, Default::default());
    for (i, id) in ids.iter().enumerate() {
        let mut record = None;
        for _ in 0..200 {
            let r = store.get_job("alice", *id).unwrap().unwrap();
            if r.state == JobState::Done {
                record = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let record = record.expect("job ran after the restart");
        assert_eq!(record.attempts, if i == 0 { 2 } else { 1 });
        assert_eq!(
            record.result.unwrap().runs[0].stdout.0,
            format!("{i}").into_bytes()
        );
    }
    // The interrupted attempt's late result is refused; so is a second result of the new one.
    let late = JobResult {
        verdict: Verdict::WrongAnswer,
        compile: None,
        runs: vec![],
    };
    assert!(!store
        .finish_job(ids[0], 1, &late, false, 0)
        .unwrap()
        .recorded());
    assert!(!store
        .finish_job(ids[0], 2, &late, false, 0)
        .unwrap()
        .recorded());
    let record = store.get_job("alice", ids[0]).unwrap().unwrap();
    assert_eq!(record.result.unwrap().verdict, Verdict::Accepted);
}

#[tokio::test]
async fn a_lost_node_s_jobs_run_again_on_another_node() {
    let h = Harness::with(Config::default(), common::quota(), 0).await;
    // A node that takes one job and then disappears.
    let (to_node, mut from_gateway) = mpsc::channel(8);
    let (to_gateway, from_node) = mpsc::channel(8);
    assert!(h.gateway.dispatcher().connect(to_node, from_node));
    let hello = corral_protocol::WorkerMessage::Hello {
        status: common::status(1),
        languages: common::languages(),
    };
    to_gateway.send(hello).await.unwrap();
    let (_, doc) = h
        .post(
            &h.alice,
            "/v1/jobs",
            &json!({"language": "python", "source": "1", "stdin": "again"}),
        )
        .await;
    let id = doc["id"].as_str().unwrap().to_string();
    let assigned = tokio::time::timeout(Duration::from_secs(5), from_gateway.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        assigned,
        corral_protocol::CoordinatorMessage::Assign { .. }
    ));
    wait_state(&h, &id, "running").await;
    drop((to_gateway, from_gateway));
    wait_state(&h, &id, "queued").await;
    // A healthy node arrives and runs it.
    let log = Arc::default();
    common::connect_fake_node(&h.gateway, 1, Arc::clone(&log));
    let doc = h.wait_done(&h.alice, &id).await;
    assert_eq!(doc["state"], "done");
    assert_eq!(doc["attempts"], 2);
    assert_eq!(doc["runs"][0]["stdout"], "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_queued_jobs_all_complete_exactly_once() {
    const JOBS: usize = 2_000;
    let h = Harness::with(Config::default(), common::quota(), 0).await;
    let body = json!({"language": "python", "source": "1"});
    for _ in 0..JOBS {
        let (s, _) = h.post(&h.alice, "/v1/jobs", &body).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let log: Arc<std::sync::Mutex<common::NodeLog>> = Arc::default();
    common::connect_fake_node(&h.gateway, 4, Arc::clone(&log));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = h.store.count_by_state().unwrap();
        let done = counts
            .iter()
            .find(|(s, _)| *s == JobState::Done)
            .map_or(0, |c| c.1);
        if done == JOBS as u64 {
            assert_eq!(counts.len(), 1, "{counts:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = log.lock().unwrap();
    let unique: std::collections::HashSet<_> = log.assigned.iter().map(|j| j.id).collect();
    assert_eq!(
        (log.assigned.len(), unique.len()),
        (JOBS, JOBS),
        "a job ran twice"
    );
}

#[tokio::test]
async fn webhooks_to_the_gateway_s_own_network_are_refused() {
    let h = Harness::new().await;
    let (url, mut rx) = receiver(0).await;
    // An IP literal is refused at submission.
    let body = json!({"language": "python", "source": "1", "callback_url": url});
    let (s, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(doc["error"]["code"], "invalid_callback_url");
    // A name that resolves to loopback is accepted, then never delivered.
    let named = url.replace("127.0.0.1", "localhost");
    let body = json!({"language": "python", "source": "1", "callback_url": named});
    let (s, doc) = h.post(&h.alice, "/v1/jobs?wait=true", &body).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let mut settled = false;
    for _ in 0..200 {
        if h.store.next_webhook_due().unwrap().is_none() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(settled, "the webhook is still pending");
    let got = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
    assert!(got.is_err(), "a webhook reached loopback");
}
