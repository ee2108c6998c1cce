//! `GET /v1/images/{digest}` and `GET /v1/images/{digest}/manifest`: nodes fetch image layers
//! they lack by digest, and verify the sha256 while the bytes stream in.
//!
//! The gateway knows nothing about images (it depends on the protocol crate only): whoever starts
//! it may hand it a [`LayerSource`] (`corral serve` passes one over the data directory's image
//! store). Without one, both routes answer 404.
//!
//! # Who may fetch
//!
//! Worker nodes authenticate with the deployment's node token (`Authorization: Bearer TOKEN`,
//! [`crate::Config::node_token`], `corral serve --node-token` / `CORRAL_NODE_TOKEN`): one shared
//! secret configured on the gateway and on every node, so a node never holds a tenant's key and
//! revoking a tenant never cuts a node off. Tenant API keys are accepted too (a layer is a
//! content-addressed toolchain, no tenant data, and asking for one needs its digest); the node
//! token opens these two routes only, never a tenant's jobs.
//!
//! The same source tells the dispatcher which exact layers a job's image is
//! ([`LayerSource::image`]), so a node can fetch what it lacks before running the job.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use corral_protocol::ImageRef;

use super::auth::LayerCaller;
use super::AppState;
use crate::error::ApiError;

/// A layer's bytes and their length, when known before streaming.
pub type LayerStream = (Box<dyn Read + Send>, Option<u64>);

/// Where the image routes find layers. Implementations block (file reads): the routes call them
/// on blocking threads.
pub trait LayerSource: Send + Sync + 'static {
    /// The manifest of layer `digest` (`sha256:<hex>`) as JSON, `Ok(None)` if it is not stored.
    fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, String>;
    /// The bytes of layer `digest`, exactly what its digest covers; `Ok(None)` if not stored.
    fn open(&self, digest: &str) -> Result<Option<LayerStream>, String>;
    /// The exact image a job on image `name` runs on (pins applied), `Ok(None)` when this source
    /// does not know the name (the node then runs the job on its own image of that name). Called
    /// on the dispatcher's task for each assignment of a language whose node names an image: it
    /// must be quick (local reads, no network).
    fn image(&self, name: &str) -> Result<Option<ImageRef>, String> {
        let _ = name;
        Ok(None)
    }
}

/// Bytes read from a layer per chunk sent.
const CHUNK: usize = 256 << 10;

/// `sha256:<64 hex>` (or the bare hex) as `sha256:<lowercase hex>`.
fn parse_digest(raw: &str) -> Result<String, ApiError> {
    let hex = raw.strip_prefix("sha256:").unwrap_or(raw);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
    } else {
        Err(ApiError::invalid(
            "invalid_digest",
            "an image digest is sha256:<64 hex digits>",
        ))
    }
}

/// `lookup` of the layer `raw_digest` names, on a blocking thread: 422 for a bad digest, 404
/// without a source or when the layer is not stored.
async fn find<T: Send + 'static>(
    state: &AppState,
    raw_digest: &str,
    lookup: fn(&dyn LayerSource, &str) -> Result<Option<T>, String>,
) -> Result<T, ApiError> {
    let digest = parse_digest(raw_digest)?;
    let source: Arc<dyn LayerSource> = state
        .layers
        .clone()
        .ok_or_else(|| ApiError::not_found("image layer"))?;
    tokio::task::spawn_blocking(move || lookup(source.as_ref(), &digest))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("image layer"))
}

/// `GET /v1/images/{digest}/manifest`.
pub(super) async fn manifest(
    State(state): State<AppState>,
    _caller: LayerCaller,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let json = find(&state, &digest, |source, digest| source.manifest(digest)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// `GET /v1/images/{digest}`: the layer's bytes, streamed from a blocking reader.
pub(super) async fn layer(
    State(state): State<AppState>,
    _caller: LayerCaller,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let (reader, len) = find(&state, &digest, |source, digest| source.open(digest)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || pump(reader, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}

/// Read `reader` to its end into `tx`; a read error ends the body with that error (the client
/// sees a broken stream, never a short layer that looks complete).
fn pump(mut reader: Box<dyn Read + Send>, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return; // the client went away
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading an image layer");
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_and_normalised() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_digest(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_digest(&"ab".repeat(32)).is_ok());
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "../etc/passwd",
            &"g".repeat(64),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad:?}");
        }
    }
}
