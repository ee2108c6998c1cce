//! Language definitions, image recipes and the content-addressed image store.
#![forbid(unsafe_code)]

pub mod language;
