//! `GET /v1/images/{digest}` and its manifest through the router, with a fake layer source: the
//! bytes arrive whole (in several chunks), lengths and content types are set, unknown and invalid
//! digests and missing keys are refused, a gateway without a source answers 404, and a read error
//! in the middle breaks the body instead of ending it early as if complete.

mod common;

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{get, Harness};
use corral_gateway::{LayerSource, LayerStream};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// Layer `a` is 1 MiB + 3 bytes; layer `b` fails after its first 1000 bytes.
struct Fake;

fn layer_a() -> Vec<u8> {
    (0..(1 << 20) + 3).map(|i| (i % 251) as u8).collect()
}

/// Reads `ok` bytes, then errors.
struct Failing(usize);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("disk gone"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

impl LayerSource for Fake {
    fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        Ok((digest == self::digest('a')).then(|| format!("{{\"digest\":\"{digest}\"}}").into()))
    }

    fn open(&self, digest: &str) -> Result<Option<LayerStream>, String> {
        if digest == self::digest('a') {
            let bytes = layer_a();
            let len = bytes.len() as u64;
            Ok(Some((Box::new(std::io::Cursor::new(bytes)), Some(len))))
        } else if digest == self::digest('b') {
            Ok(Some((Box::new(Failing(1000)), None)))
        } else {
            Ok(None)
        }
    }
}

async fn fetch(app: &axum::Router, req: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let len = response
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, len, body.to_vec())
}

#[tokio::test]
async fn layers_stream_whole_and_bad_requests_are_refused() {
    let mut h = Harness::new().await;
    let uri = format!("/v1/images/{}", digest('a'));
    let (status, _, _) = fetch(&h.app, get(&h.alice, &uri)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no layer source: 404");

    h.gateway.serve_layers(Arc::new(Fake));
    let app = h.gateway.router();
    let (status, len, body) = fetch(&app, get(&h.alice, &uri)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(len.as_deref(), Some("1048579"));
    assert!(body == layer_a(), "the layer arrives byte for byte");
    // Bare hex and upper case name the same layer.
    let upper = format!("/v1/images/{}", "A".repeat(64));
    assert_eq!(fetch(&app, get(&h.bob, &upper)).await.0, StatusCode::OK);

    let (status, _, json) = fetch(&app, get(&h.alice, &format!("{uri}/manifest"))).await;
    assert_eq!(status, StatusCode::OK);
    let manifest: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(manifest["digest"], digest('a'));

    let unknown = format!("/v1/images/{}", digest('c'));
    assert_eq!(
        fetch(&app, get(&h.alice, &unknown)).await.0,
        StatusCode::NOT_FOUND
    );
    let unknown_manifest = format!("{unknown}/manifest");
    assert_eq!(
        fetch(&app, get(&h.alice, &unknown_manifest)).await.0,
        StatusCode::NOT_FOUND
    );
    for bad in [
        "/v1/images/latest",
        "/v1/images/sha256:abc",
        "/v1/images/..%2Fx",
    ] {
        let (status, _, _) = fetch(&app, get(&h.alice, bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let anonymous = Request::get(&uri).body(Body::empty()).unwrap();
    assert_eq!(fetch(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_read_error_breaks_the_body() {
    let mut h = Harness::new().await;
    h.gateway.serve_layers(Arc::new(Fake));
    let app = h.gateway.router();
    let uri = format!("/v1/images/{}", digest('b'));
    let response = app.oneshot(get(&h.alice, &uri)).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "headers go out before the error"
    );
    let body = response.into_body().collect().await;
    assert!(
        body.is_err(),
        "a failed read must not look like a complete layer"
    );
}
