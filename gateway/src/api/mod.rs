//! The HTTP API: the router, its shared state, and the small endpoints.

pub mod auth;
pub mod document;
pub mod images;
mod jobs;
pub mod openapi;
pub mod request;
mod sse;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Db;
use auth::{Caller, RateLimiter};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Db,
    /// Live job updates.
    pub hub: Arc<Hub>,
    /// The dispatcher.
    pub dispatcher: Dispatcher,
    /// Settings.
    pub config: Arc<Config>,
    /// Metrics.
    pub metrics: Metrics,
    /// Request rates.
    pub rate: Arc<RateLimiter>,
    /// Image layers served to nodes (`GET /v1/images/...`); `None`: those routes answer 404.
    pub layers: Option<Arc<dyn images::LayerSource>>,
}

/// Every route of the API, as (method, path) pairs; the OpenAPI document must describe each.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/languages"),
    ("get", "/v1/images/{digest}"),
    ("get", "/v1/images/{digest}/manifest"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/languages", get(languages))
        .route("/v1/images/{digest}", get(images::layer))
        .route("/v1/images/{digest}/manifest", get(images::manifest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        .with_state(state)
}

async fn count_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("other", |c| c.0);
        state
            .metrics
            .http_errors
            .with_label_values(&[status.as_str(), code])
            .inc();
    }
    response
}

/// A handler panicked (a bug): log it and answer the generic 500, never the panic message.
fn panicked(cause: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = cause
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| cause.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format_args!("handler panicked: {message}")).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn languages(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    Json(serde_json::json!({ "languages": *state.dispatcher.languages() }))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let languages = state.dispatcher.languages();
    if languages.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no worker node with a working language is connected",
        )
        .retry_after(1));
    }
    Ok(Json(
        serde_json::json!({ "status": "ready", "languages": languages.len() }),
    ))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.db.call(|s| s.count_by_state()).await?;
    for s in ["queued", "running", "done", "cancelled"] {
        state.metrics.jobs.with_label_values(&[s]).set(0);
    }
    for (s, n) in counts {
        state
            .metrics
            .jobs
            .with_label_values(&[s.as_str()])
            .set(n as i64);
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}
