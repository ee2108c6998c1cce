//! The API through `router().oneshot(...)` with a fake worker node.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{delete, get, post, Harness};
use corral_gateway::Store;
use serde_json::json;

#[tokio::test]
async fn python_job_waits_for_its_result() {
    let h = Harness::new().await;
    let body = json!({"language": "py", "source": "print(input())", "stdin": "hi\n"});
    let (status, doc) = h.post(&h.alice, "/v1/jobs?wait=true", &body).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["state"], "done");
    assert_eq!(doc["verdict"], "accepted");
    assert_eq!(doc["language"], "python");
    assert_eq!(doc["runs"][0]["stdout"], "hi\n");
    assert_eq!(doc["runs"][0]["stdout_encoding"], "utf8");
    assert_eq!(doc["attempts"], 1);
    // The answer is the job as stored, not a copy that could differ from it.
    let id = doc["id"].as_str().unwrap();
    let (status, stored) = h.get(&h.alice, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, stored);
    assert!(doc["started_at"].is_string() && doc["finished_at"].is_string());
    let spec = &h.log.lock().unwrap().assigned[0];
    assert_eq!(spec.files[0].name, "main.py");
    assert_eq!(
        spec.limits,
        common::limits(),
        "language defaults fill the limits"
    );
}

#[tokio::test]
async fn async_submit_answers_202_then_the_job_is_readable_and_listed() {
    let h = Harness::new().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"language": "c", "files": [
            {"name": "main.c", "content": "aW50IG1haW47", "encoding": "base64"},
            {"name": "util.h", "content": "// header"}],
            "tests": [{"stdin": format!("{i}"), "expected_output": "0"}],
            "compare": "exact"});
        let (status, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{doc}");
        ids.push(doc["id"].as_str().unwrap().to_string());
    }
    let first = h.wait_done(&h.alice, &ids[0]).await;
    assert_eq!(first["verdict"], "accepted");
    let second = h.wait_done(&h.alice, &ids[1]).await;
    assert_eq!(second["verdict"], "wrong_answer");
    assert_eq!(
        h.log.lock().unwrap().assigned[0].files[0].content.0,
        b"int main;"
    );

    let (status, page) = h.get(&h.alice, "/v1/jobs?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = h
        .get(&h.alice, &format!("/v1/jobs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page2["jobs"][0]["id"], ids[0].as_str());
    assert!(page2["next_cursor"].is_null());
}

#[tokio::test]
async fn non_utf8_output_is_sent_as_base64() {
    let h = Harness::new().await;
    // The fake node echoes stdin; stdin is UTF-8 in the API, so check the document mapping on a
    // stored result directly.
    let doc = corral_gateway::api::document::text(&vec![0xff, 0xfe, b'a'].into());
    assert_eq!(doc, ("//5h".to_string(), "base64"));
    let ok = corral_gateway::api::document::text(&"é\n".into());
    assert_eq!(ok, ("é\n".to_string(), "utf8"));
    drop(h);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    let h = Harness::new().await;
    let body = json!({"language": "python", "source": "1", "idempotency_key": "k1"});
    let (s1, a) = h.post(&h.alice, "/v1/jobs", &body).await;
    let (s2, b) = h.post(&h.alice, "/v1/jobs", &body).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    assert!(s2.is_success(), "{s2}");
    assert_eq!(a["id"], b["id"]);
    assert_eq!(h.stored_jobs("alice"), 1);
    // Another tenant's key space is its own.
    let (_, c) = h.post(&h.bob, "/v1/jobs", &body).await;
    assert_ne!(a["id"], c["id"]);
}

#[tokio::test]
async fn cancel_a_queued_job_and_a_running_job() {
    let h = Harness::with(corral_gateway::Config::default(), common::quota(), 1).await;
    let hang = json!({"language": "python", "source": "hang"});
    let (_, running) = h.post(&h.alice, "/v1/jobs", &hang).await;
    let (_, queued) = h
        .post(
            &h.alice,
            "/v1/jobs",
            &json!({"language": "python", "source": "x"}),
        )
        .await;
    let running_id = running["id"].as_str().unwrap();
    let queued_id = queued["id"].as_str().unwrap();
    // Wait until the first is running.
    for _ in 0..100 {
        if h.get(&h.alice, &format!("/v1/jobs/{running_id}")).await.1["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, _, doc) = h
        .send(delete(&h.alice, &format!("/v1/jobs/{queued_id}")))
        .await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["state"], "cancelled");
    let (s, _, _) = h
        .send(delete(&h.alice, &format!("/v1/jobs/{running_id}")))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let doc = h.wait_done(&h.alice, running_id).await;
    assert_eq!(doc["state"], "cancelled");
    assert!(doc["verdict"].is_null());
    // The queued one never ran.
    tokio::time::sleep(Duration::from_millis(50)).await;
    {
        let log = h.log.lock().unwrap();
        assert_eq!(log.assigned.len(), 1);
        assert_eq!(log.cancelled.len(), 1);
    }
    let (s, _, doc) = h
        .send(delete(&h.alice, &format!("/v1/jobs/{queued_id}")))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(doc["error"]["code"], "job_finished");
}

#[tokio::test]
async fn concurrency_quota_keeps_extra_jobs_queued() {
    let mut q = common::quota();
    q.max_concurrent = 1;
    let h = Harness::with(corral_gateway::Config::default(), q, 4).await;
    let hang = json!({"language": "python", "source": "hang"});
    for _ in 0..3 {
        h.post(&h.alice, "/v1/jobs", &hang).await;
    }
    let (_, bob) = h.post(&h.bob, "/v1/jobs", &hang).await;
    // Bob's job was queued last: once the node has it, the dispatcher has considered every job
    // and the node has received every earlier assignment (one channel, in order).
    let bob_id: corral_protocol::JobId = bob["id"].as_str().unwrap().parse().unwrap();
    for _ in 0..500 {
        if h.log
            .lock()
            .unwrap()
            .assigned
            .iter()
            .any(|j| j.id == bob_id)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let log = h.log.lock().unwrap();
    let alice = log.assigned.iter().filter(|j| j.tenant == "alice").count();
    let bob = log.assigned.iter().filter(|j| j.tenant == "bob").count();
    assert_eq!((alice, bob), (1, 1));
}

#[tokio::test]
async fn a_burst_of_one_tenant_does_not_starve_another() {
    // No slot yet: alice queues 1,000 jobs, then bob queues one.
    let h = Harness::with(corral_gateway::Config::default(), common::quota(), 0).await;
    let slow = json!({"language": "python", "source": "slow"});
    for _ in 0..1000 {
        let (s, _) = h.post(&h.alice, "/v1/jobs", &slow).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let (_, bob) = h.post(&h.bob, "/v1/jobs", &slow).await;
    // One slot appears: bob's job is among the first two assignments, not the 1,001st.
    let log = std::sync::Arc::default();
    common::connect_fake_node(&h.gateway, 1, std::sync::Arc::clone(&log));
    h.wait_done(&h.bob, bob["id"].as_str().unwrap()).await;
    let log = log.lock().unwrap();
    let position = log.assigned.iter().position(|j| j.tenant == "bob").unwrap();
    assert!(position < 2, "bob's job was assignment {position}");
}

#[tokio::test]
async fn tenants_see_only_their_own_jobs() {
    let h = Harness::new().await;
    let (_, doc) = h
        .post(
            &h.alice,
            "/v1/jobs?wait=true",
            &json!({"language": "python", "source": "1"}),
        )
        .await;
    let id = doc["id"].as_str().unwrap();
    for req in [
        get(&h.bob, &format!("/v1/jobs/{id}")),
        delete(&h.bob, &format!("/v1/jobs/{id}")),
        get(&h.bob, &format!("/v1/jobs/{id}/events")),
    ] {
        let (s, _, body) = h.send(req).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert!(!body.to_string().contains("alice"));
    }
    let (_, list) = h.get(&h.bob, "/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]));
    let (s, _) = h.get(&h.bob, "/v1/jobs/not-a-uuid").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn authentication_failures_are_401_with_stable_codes() {
    let h = Harness::new().await;
    h.store.revoke_tenant("bob").unwrap();
    let body = json!({"language": "python", "source": "1"}).to_string();
    let no_key = Request::post("/v1/jobs")
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let wrong_header = Request::post("/v1/jobs")
        .header("x-api-key", &h.alice)
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let basic = Request::get("/v1/jobs")
        .header("authorization", format!("Basic {}", h.alice))
        .body(Body::empty())
        .unwrap();
    let cases = [
        (no_key, "missing_api_key"),
        (wrong_header, "missing_api_key"),
        (basic, "missing_api_key"),
        (
            post("corral_0000", "/v1/jobs", body.clone()),
            "invalid_api_key",
        ),
        (post(&h.bob, "/v1/jobs", body.clone()), "invalid_api_key"),
        (get(&h.bob, "/v1/languages"), "invalid_api_key"),
    ];
    for (req, code) in cases {
        let (s, headers, doc) = h.send(req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{doc}");
        assert_eq!(doc["error"]["code"], code);
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    assert_eq!(h.stored_jobs("alice") + h.stored_jobs("bob"), 0);
}

#[tokio::test]
async fn request_rate_quota_answers_429_with_retry_after() {
    let mut q = common::quota();
    q.rate_per_minute = 3;
    let h = Harness::with(corral_gateway::Config::default(), q, 1).await;
    for _ in 0..3 {
        assert_eq!(h.get(&h.alice, "/v1/jobs").await.0, StatusCode::OK);
    }
    let (s, headers, doc) = h.send(get(&h.alice, "/v1/jobs")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(doc["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other tenants are not affected.
    assert_eq!(h.get(&h.bob, "/v1/jobs").await.0, StatusCode::OK);
}

#[tokio::test]
async fn limits_above_the_tenant_maximum_are_422_with_the_maximum() {
    let h = Harness::new().await;
    let body = json!({"language": "python", "source": "1", "limits": {"cpu_time_ms": 5001}});
    let (s, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(doc["error"]["code"], "limit_too_high");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("5000"),
        "{doc}"
    );
    let ok = json!({"language": "python", "source": "1", "limits": {"cpu_time_ms": 5000}});
    assert_eq!(
        h.post(&h.alice, "/v1/jobs", &ok).await.0,
        StatusCode::ACCEPTED
    );
    let net = json!({"language": "python", "source": "1", "network": true});
    let (s, doc) = h.post(&h.alice, "/v1/jobs", &net).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(doc["error"]["code"], "network_not_allowed");
    assert_eq!(h.stored_jobs("alice"), 1);
}

#[tokio::test]
async fn health_readiness_languages_metrics_openapi() {
    let h = Harness::new().await;
    let (s, _, doc) = h
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, doc["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, _, _) = h
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, langs) = h.get(&h.alice, "/v1/languages").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(langs["languages"][0]["id"], "c");
    assert_eq!(langs["languages"][1]["aliases"], json!(["py", "python3"]));
    h.post(
        &h.alice,
        "/v1/jobs?wait=true",
        &json!({"language": "python", "source": "1"}),
    )
    .await;
    let response = tower::ServiceExt::oneshot(
        h.app.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        r#"corral_jobs{state="done"} 1"#,
        r#"corral_jobs_finished_total{language="python",state="done",tenant="alice",verdict="accepted"} 1"#,
        "corral_queue_depth 0",
        "corral_slots 4",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let (s, _, doc) = h
        .send(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["paths"]["/v1/jobs"]["post"].is_object());
}

#[tokio::test]
async fn not_ready_without_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(corral_gateway::SqliteStore::open(dir.path()).unwrap());
    let gw = corral_gateway::Gateway::start(Default::default(), store, prometheus::Registry::new())
        .await
        .unwrap();
    let response = tower::ServiceExt::oneshot(
        gw.router(),
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
