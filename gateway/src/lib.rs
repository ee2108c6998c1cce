//! The public HTTP API: authentication, quotas, validation, persistence, streaming, webhooks.
//! Never touches the sandbox directly.
#![forbid(unsafe_code)]
