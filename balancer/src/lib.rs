//! Placement: which worker node runs which job, from live node utilization, and which tenant's job
//! goes next so that tenants share the slots fairly.
//!
//! Everything here is a plain function over data (no I/O, no clock, no async), so a simulation can
//! drive it at any scale and the dispatcher in `corral-gateway` only has to feed it snapshots.
//! Depends on `corral-protocol` only.
//!
//! # Layout
//!
//! - [`place`]: [`choose_node`], the node for the next job (free slots first, then CPU, then memory).
//! - [`fair`]: [`choose_tenant`], the tenant whose oldest queued job is dispatched next (fewest
//!   running jobs first, round-robin among ties).
#![forbid(unsafe_code)]

pub mod fair;
pub mod place;

pub use fair::{choose_tenant, TenantLoad};
pub use place::choose_node;
