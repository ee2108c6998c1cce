//! HOSTILE.md rows 43–44 through the API: every bad request is a 4xx JSON error with a stable
//! code, and nothing is stored.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{post, Harness};
use serde_json::json;

fn job(extra: serde_json::Value) -> String {
    let mut body = json!({"language": "python", "source": "print(1)"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

#[tokio::test]
async fn bad_requests_are_refused_with_stable_codes_and_nothing_is_stored() {
    let h = Harness::new().await;
    let huge_stdin = "x".repeat(5 << 20);
    let many_tests: Vec<_> = (0..10_000).map(|_| json!({"stdin": "1"})).collect();
    let many_files: Vec<_> = (0..65)
        .map(|i| json!({"name": format!("f{i}.py"), "content": ""}))
        .collect();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_in_field = format!(
        r#"{{"language":"python","source":"x","tests":[{{"stdin":{}}}]}}"#,
        "[".repeat(5_000) + &"]".repeat(5_000)
    );
    let mut non_utf8 = br#"{"language":"python","source":""#.to_vec();
    non_utf8.extend_from_slice(&[0xff, 0xfe]);
    non_utf8.extend_from_slice(br#""}"#);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed JSON", br#"{"language": "#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("not an object", b"[1,2]".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("unknown field", job(json!({"sauce": 1})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("unknown limit field", job(json!({"limits": {"cpu": 1}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("unknown file field", job(json!({"source": null, "files": [{"name": "a.py", "content": "", "mode": 7}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("huge body", vec![b' '; 11 << 20], StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ("huge stdin", job(json!({"stdin": huge_stdin})).into(), StatusCode::UNPROCESSABLE_ENTITY, "too_large"),
        ("10,000 tests", job(json!({"tests": many_tests})).into(), StatusCode::UNPROCESSABLE_ENTITY, "too_many"),
        ("65 files", job(json!({"source": null, "files": many_files})).into(), StatusCode::UNPROCESSABLE_ENTITY, "too_many"),
        ("deeply nested JSON", nested.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("deeply nested JSON in a field", nested_in_field.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("invalid base64", job(json!({"source": null, "files": [{"name": "a.py", "content": "!!!", "encoding": "base64"}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_base64"),
        ("unknown encoding", job(json!({"source": null, "files": [{"name": "a.py", "content": "", "encoding": "latin1"}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("non-UTF-8 bytes in a utf8 string", non_utf8, StatusCode::BAD_REQUEST, "malformed_json"),
        ("lone surrogate", br#"{"language":"python","source":"\ud800"}"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("negative limit", job(json!({"limits": {"cpu_time_ms": -1}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("fractional limit", job(json!({"limits": {"cpu_time_ms": 1.5}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("enormous limit", job(json!({"limits": {"memory_bytes": u64::MAX}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "limit_too_high"),
        ("enormous processes", job(json!({"limits": {"processes": 1u64 << 40}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "limit_too_high"),
        ("number beyond u64", br#"{"language":"python","source":"x","limits":{"wall_time_ms":1e400}}"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("zero limit", job(json!({"compile_limits": {"wall_time_ms": 0}})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit"),
        ("unknown language", job(json!({"language": "cobol"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "unknown_language"),
        ("missing language", br#"{"source":"x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("unknown version", job(json!({"version": "2.7"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "unknown_version"),
        ("no source", br#"{"language":"python"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "missing_source"),
        ("empty files", job(json!({"source": null, "files": []})).into(), StatusCode::UNPROCESSABLE_ENTITY, "missing_source"),
        ("files and source", job(json!({"files": [{"name": "a.py", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("file name with /", job(json!({"source": null, "files": [{"name": "a/b.py", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("file name ..", job(json!({"source": null, "files": [{"name": "..", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("file name ../x", job(json!({"source": null, "files": [{"name": "../x", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("empty file name", job(json!({"source": null, "files": [{"name": "", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("file name with NUL", job(json!({"source": null, "files": [{"name": "a\u{0}b", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("duplicate file", job(json!({"source": null, "files": [{"name": "a", "content": ""}, {"name": "a", "content": ""}]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_file_name"),
        ("bad compare", job(json!({"compare": "fuzzy"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_compare"),
        ("NaN tolerance", job(json!({"compare": "float:NaN"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_compare"),
        ("argument with NUL", job(json!({"args": ["a\u{0}"]})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
        ("ftp callback", job(json!({"callback_url": "ftp://example.com/hook"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("https loopback callback", job(json!({"callback_url": "https://127.0.0.1:8443/x"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("loopback callback", job(json!({"callback_url": "http://127.0.0.1:8080/x"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("metadata callback", job(json!({"callback_url": "http://169.254.169.254/latest"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("IPv6 loopback callback", job(json!({"callback_url": "http://[::1]:80/x"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("callback not a URL", job(json!({"callback_url": "not a url"})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback_url"),
        ("empty idempotency key", job(json!({"idempotency_key": ""})).into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_idempotency_key"),
    ];
    for (what, body, status, code) in cases {
        let req = Request::post("/v1/jobs")
            .header("authorization", format!("Bearer {}", h.alice))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (got, _, doc) = h.send(req).await;
        assert_eq!(got, status, "{what}: {doc}");
        assert_eq!(doc["error"]["code"], code, "{what}: {doc}");
        assert!(doc["error"]["message"].is_string(), "{what}: {doc}");
    }
    let others = [
        (
            Request::post("/v1/jobs")
                .header("authorization", format!("Bearer {}", h.alice))
                .body(Body::from(job(json!({}))))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(&h.alice, "/v1/jobs?wait=maybe", job(json!({}))),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            post(&h.alice, "/v1/jobs?wait=true&timeout=-1", job(json!({}))),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            post(&h.alice, "/v1/jobs?wait=true&timeout=1e9", job(json!({}))),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            post(&h.alice, "/v1/jobs?colour=red", job(json!({}))),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            post(&h.alice, "/v1/nothing", job(json!({}))),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::put("/v1/jobs").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            common::get(&h.alice, "/v1/jobs?limit=0"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            common::get(&h.alice, "/v1/jobs?cursor=zzz"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ];
    for (req, status, code) in others {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, _, doc) = h.send(req).await;
        assert_eq!(got, status, "{what}: {doc}");
        assert_eq!(doc["error"]["code"], code, "{what}: {doc}");
    }
    assert_eq!(
        h.stored_jobs("alice"),
        0,
        "a refused request left a job behind"
    );
    assert!(h.log.lock().unwrap().assigned.is_empty());
}
