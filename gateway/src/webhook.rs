//! Webhook delivery from the persisted outbox.
//!
//! The dispatcher records a job's result and its outbox row in one transaction and only wakes this
//! task, so delivery never blocks dispatch, and a restart still delivers what was pending. Each
//! POST carries the job document and `X-Corral-Signature: sha256=<hex HMAC-SHA256 of the body
//! with the tenant's webhook secret>`; failures are retried with doubling delays.
//! URLs are `http://` or `https://` (rustls; the certificate must be valid for the URL's host).
//!
//! A tenant chooses the URL, so the gateway must not become a way into its own network: unless
//! [`Config::webhook_allow_private`] is set, the host is resolved once, every address must be
//! public (not loopback, private, link-local, CGNAT, unspecified or multicast), and the
//! connection goes to that checked address (no second resolution that DNS rebinding could
//! change); with TLS the hostname is still what the certificate is checked against
//! (the private `connect` module).

mod connect;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Uri;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::api::document::JobDocument;
use crate::config::Config;
use crate::store::{now_ms, Db, StoreError, Webhook};
pub use connect::is_public;
use connect::{HttpClient, PostError};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-corral-signature";

/// `sha256=<hex>` HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the delivery task; `wake` tells it a new webhook is due. Fails only on an unusable
/// certificate in [`Config::webhook_extra_roots`].
pub fn spawn(db: Db, config: Arc<Config>, wake: Arc<Notify>) -> Result<(), rustls::Error> {
    let client = connect::client(&config)?;
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
    Ok(())
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
    match post(client, &hook.url, &secret, body, config).await {
        Ok(()) => {
            tracing::debug!(job = %job, "webhook delivered");
            db.call(move |s| s.webhook_finished(job, false)).await
        }
        Err(PostError::Refused(why)) => {
            tracing::warn!(job = %job, error = %why, "webhook refused; not sent");
            db.call(move |s| s.webhook_finished(job, true)).await
        }
        Err(PostError::Failed(why)) => {
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

/// POSTs the signed `body` to `url`; the connection is made by `connect::CheckedConnector`.
async fn post(
    client: &HttpClient,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    config: &Config,
) -> Result<(), PostError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| PostError::Refused("not a URL".into()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(PostError::Refused("not an http(s) URL with a host".into()));
    }
    let request = axum::http::Request::post(uri)
        .header("content-type", "application/json")
        .header("user-agent", "corral-webhook")
        .header(SIGNATURE_HEADER, signature(secret, &body))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Refused(e.to_string()))?;
    let response = tokio::time::timeout(config.webhook_timeout, client.request(request))
        .await
        .map_err(|_| PostError::Failed("timed out".into()))?
        .map_err(|e| connect::classify(&e))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Failed(format!("answered {}", response.status())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
