//! Language definitions, image recipes and the content-addressed image store.
#![forbid(unsafe_code)]

pub mod digest;
pub mod extract;
pub mod language;
pub mod layer;
pub mod recipe;
pub mod store;
pub mod tarball;
