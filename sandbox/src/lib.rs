//! Corral's security boundary: runs one command in a fresh, hardened, resource-capped Linux container
//! and reports what happened.
//!
//! Synchronous and Linux-only; no async runtime. This is the only crate of the workspace allowed
//! `unsafe`, and inside it only the `sys` module holds unsafe blocks. It depends on no other workspace
//! crate: the worker maps wire types onto [`Spec`].
//!
//! # Layout
//!
//! - [`spec`]: the request ([`Spec`], [`Limits`], [`Image`]) and the result ([`Outcome`]).

pub mod spec;

pub use spec::{FileIn, FileOut, Image, Limits, Outcome, Spec, Status, Stdin, TimeLimitKind};
