//! Webhook delivery from the persisted outbox.
//!
//! The dispatcher records a job's result and its outbox row in one transaction and only wakes this
//! task, so delivery never blocks dispatch, and a restart still delivers what was pending. Each
//! POST carries the job document and `X-Corral-Signature: sha256=<hex HMAC-SHA256 of the body
//! with the tenant's webhook secret>`; failures are retried with doubling delays.
//! Plain `http://` only for now (the HTTP client has no TLS).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::api::document::JobDocument;
use crate::config::Config;
use crate::store::{now_ms, Db, StoreError, Webhook};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-corral-signature";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// `sha256=<hex>` HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the delivery task; `wake` tells it a new webhook is due.
pub fn spawn(db: Db, config: Arc<Config>, wake: Arc<Notify>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let next = match deliver_due(&db, &client, &config).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: store failed");
                    Some(now_ms() + 1000)
                }
            };
            let sleep = next.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis((t - now_ms()).clamp(0, 3_600_000) as u64)
            });
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    });
}

/// Delivers every due webhook (concurrently); when the next one is due.
async fn deliver_due(
    db: &Db,
    client: &HttpClient,
    config: &Config,
) -> Result<Option<i64>, StoreError> {
    loop {
        let due = db.call(|s| s.due_webhooks(now_ms(), 32)).await?;
        if due.is_empty() {
            return db.call(|s| s.next_webhook_due()).await;
        }
        let tasks = due.into_iter().map(|w| deliver(db, client, config, w));
        for result in futures::future::join_all(tasks).await {
            result?;
        }
    }
}

async fn deliver(
    db: &Db,
    client: &HttpClient,
    config: &Config,
    hook: Webhook,
) -> Result<(), StoreError> {
    let (job, tenant) = (hook.job, hook.tenant.clone());
    let found = db
        .call(move |s| {
            let record = s.get_job(&tenant, job)?;
            let secret = s.tenant_by_name(&tenant)?.map(|t| t.webhook_secret);
            Ok(record.zip(secret))
        })
        .await?;
    let Some((record, secret)) = found else {
        return db.call(move |s| s.webhook_finished(job, true)).await;
    };
    let body = serde_json::to_vec(&JobDocument::from(&record)).unwrap_or_default();
    match post(client, &hook.url, &secret, body, config.webhook_timeout).await {
        Ok(()) => {
            tracing::debug!(job = %job, "webhook delivered");
            db.call(move |s| s.webhook_finished(job, false)).await
        }
        Err(why) => {
            let attempts = hook.attempts + 1;
            if attempts >= config.webhook_attempts {
                tracing::warn!(job = %job, attempts, error = %why, "webhook: giving up");
                return db.call(move |s| s.webhook_finished(job, true)).await;
            }
            let delay = config.webhook_backoff.as_millis() as i64 * (1i64 << attempts.min(16));
            tracing::info!(job = %job, attempts, error = %why, "webhook failed; will retry");
            db.call(move |s| s.webhook_retry(job, attempts, now_ms() + delay))
                .await
        }
    }
}

async fn post(
    client: &HttpClient,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let request = axum::http::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", "corral-webhook")
        .header(SIGNATURE_HEADER, signature(secret, &body))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
