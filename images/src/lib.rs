//! Language definitions, image recipes and the content-addressed image store.
#![forbid(unsafe_code)]

pub mod build;
pub mod chroot;
pub mod digest;
pub mod export;
pub mod extract;
pub mod fetch;
pub mod language;
pub mod layer;
pub mod lock;
pub mod oci;
pub mod recipe;
pub mod store;
pub mod tarball;
