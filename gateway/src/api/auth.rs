//! Authentication (`Authorization: Bearer KEY`) and the per-tenant request rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::error::ApiError;
use crate::store::Tenant;

/// The authenticated tenant of a request (within its rate quota).
pub struct Caller(pub Tenant);

/// SHA-256 hex digest of an API key: what the store keeps instead of the key.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key (256 bits, `corral_` + hex).
pub fn new_key() -> String {
    format!("corral_{}", hex::encode(rand::random::<[u8; 32]>()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer_key(parts)?;
        let hash = key_hash(key);
        let tenant = state
            .db
            .call(move |s| s.tenant_by_key_hash(&hash))
            .await?
            .filter(|t| !t.revoked)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "the API key is not valid",
                )
            })?;
        state
            .rate
            .check(&tenant.name, tenant.quota.rate_per_minute)?;
        Ok(Caller(tenant))
    }
}

/// Who may fetch image layers: a worker node (by the node token of [`crate::Config::node_token`])
/// or any tenant (by its API key, within its rate quota).
pub enum LayerCaller {
    /// A node presenting the node token.
    Node,
    /// A tenant.
    Tenant(Tenant),
}

impl FromRequestParts<AppState> for LayerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = state.config.node_token.as_deref() {
            // Compared as SHA-256 digests: the time taken says nothing about the token's bytes.
            if key_hash(bearer_key(parts)?) == key_hash(token) {
                return Ok(LayerCaller::Node);
            }
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(|Caller(tenant)| LayerCaller::Tenant(tenant))
    }
}

fn bearer_key(parts: &Parts) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "send the API key as `Authorization: Bearer KEY`",
        )
    };
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let text = value.to_str().map_err(|_| missing())?;
    let (scheme, key) = text.split_once(' ').ok_or_else(missing)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(missing());
    }
    Ok(key)
}

/// Fixed one-minute windows of request counts per tenant.
#[derive(Default)]
pub struct RateLimiter {
    /// Window start and requests in it, by tenant.
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl RateLimiter {
    /// Counts one request of `tenant`; 429 with `Retry-After` when it is over `per_minute`.
    pub fn check(&self, tenant: &str, per_minute: u32) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = windows.entry(tenant.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= per_minute {
            let left = WINDOW.saturating_sub(now.duration_since(*start));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("more than {per_minute} requests per minute"),
            )
            .retry_after(secs.max(1)));
        }
        *count += 1;
        Ok(())
    }
}
