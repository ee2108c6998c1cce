//! The public HTTP API and everything between it and the worker nodes: tenants and their API keys,
//! validation and quotas, the durable job store, the dispatcher that hands jobs to nodes, live
//! updates (`?wait=true`, SSE) and webhooks. Never touches the sandbox directly: it depends on
//! `corral-protocol` and `corral-balancer` only, and nodes are channel pairs speaking the protocol.
//!
//! # Layout
//!
//! - [`store`]: the [`store::Store`] trait (tenants, jobs, webhook outbox) and its SQLite backend.
//! - [`dispatch`]: the dispatcher task: connected nodes, queue index, exactly-once results.
//! - [`api`]: the axum router, authentication, request validation, documents, SSE, OpenAPI, and
//!   image layers for nodes from a [`LayerSource`] the caller passes in.
//! - [`hub`]: fan-out of job updates to waiters and SSE streams.
//! - [`webhook`]: signed webhook delivery (http and https) from the outbox, with retries.
//! - [`tenants`]: creating tenants and their credentials.
//! - [`error`]: the one API error type. [`config`]: defaults and maxima. [`metrics`]: Prometheus.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod store;
pub mod tenants;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::Notify;

pub use api::images::{LayerSource, LayerStream};
pub use api::AppState;
pub use config::Config;
pub use dispatch::Dispatcher;
pub use store::{Db, SqliteStore, Store, StoreError};

/// What can stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Registering metrics failed.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A certificate in [`Config::webhook_extra_roots`] is unusable.
    #[error("webhook TLS roots: {0}")]
    WebhookTls(#[from] rustls::Error),
}

/// A started gateway: its router and the dispatcher nodes connect to.
pub struct Gateway {
    /// Handler state (the router is built from it).
    pub state: AppState,
}

impl Gateway {
    /// Recovers the store (jobs that were running go back to the queue: the crash was Corral's),
    /// starts the dispatcher and the webhook deliverer.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        registry: prometheus::Registry,
    ) -> Result<Self, StartError> {
        let db = Db::new(store);
        let requeued = db.call(|s| s.requeue_all_running()).await?;
        if requeued > 0 {
            tracing::warn!(requeued, "jobs interrupted by the last shutdown run again");
        }
        let metrics = metrics::Metrics::new(registry)?;
        let hub = Arc::new(hub::Hub::default());
        let config = Arc::new(config);
        let wake = Arc::new(Notify::new());
        let dispatcher = Dispatcher::start(
            db.clone(),
            Arc::clone(&hub),
            metrics.clone(),
            Arc::clone(&wake),
        )
        .await?;
        webhook::spawn(db.clone(), Arc::clone(&config), wake)?;
        Ok(Gateway {
            state: AppState {
                db,
                hub,
                dispatcher,
                config,
                metrics,
                rate: Arc::default(),
                layers: None,
            },
        })
    }

    /// The HTTP API.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serve image layers from `source` on `GET /v1/images/{digest}` (and its manifest), and
    /// resolve each assignment's image through it; call before [`Gateway::router`] and before
    /// connecting nodes.
    pub fn serve_layers(&mut self, source: Arc<dyn api::images::LayerSource>) {
        self.state
            .dispatcher
            .send(dispatch::Command::ServeLayers(dispatch::Layers(
                source.clone(),
            )));
        self.state.layers = Some(source);
    }

    /// The dispatcher (to connect nodes).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.state.dispatcher
    }
}
