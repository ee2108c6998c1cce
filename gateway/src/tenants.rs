//! Creating tenants: a random API key (only its hash is stored) and a random webhook secret.

use crate::api::auth::{key_hash, new_key};
use crate::store::{now_ms, NewTenant, Store, StoreError, TenantQuota};

/// What can go wrong creating a tenant.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The name is not 1 to 64 of `a-z 0-9 _ -`.
    #[error("tenant name {0:?} must be 1 to 64 characters of a-z, 0-9, _ and -")]
    InvalidName(String),
    /// The store failed (or the name is taken).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The secrets of a new tenant, shown once.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The API key (`Authorization: Bearer KEY`).
    pub api_key: String,
    /// The key for verifying webhook signatures.
    pub webhook_secret: String,
}

/// Default quotas of `corral tenant create`.
pub const DEFAULT_QUOTA: TenantQuota = TenantQuota {
    max_concurrent: 8,
    rate_per_minute: 600,
    max_cpu_time_ms: 10_000,
    max_memory_bytes: 1 << 30,
    network_allowed: false,
};

/// Creates a tenant with fresh credentials.
pub fn create_tenant(
    store: &dyn Store,
    name: &str,
    quota: TenantQuota,
) -> Result<Credentials, TenantError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(TenantError::InvalidName(name.to_string()));
    }
    let api_key = new_key();
    let webhook_secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()));
    store.create_tenant(&NewTenant {
        name: name.to_string(),
        key_hash: key_hash(&api_key),
        webhook_secret: webhook_secret.clone(),
        quota,
        created_ms: now_ms(),
    })?;
    Ok(Credentials {
        api_key,
        webhook_secret,
    })
}
