//! Language definitions, image recipes and the content-addressed image store.
//!
//! Depends on no other workspace crate (the `corral` binary turns a [`store::Resolved`] into a
//! sandbox image). Everything here runs on the trusted side, as root, on one node's data directory.
//!
//! # Layout
//!
//! - `language`: language definitions (one TOML per language).
//! - [`recipe`]: image recipes (`images/recipes/*.toml`), validation and the recipe hash.
//! - [`build`]: building a recipe into a layer (mmdebstrap root, overlay-diff child layers), with
//!   [`chroot`] for the build's mounts and commands.
//! - [`store`]: `<data-dir>/images/`: layers by sha256, manifests, names, lazy read-only mounts.
//! - [`layer`]: EROFS files (`mkfs.erofs`), mounting, making an overlay upper a layer.
//! - [`oci`]: importing OCI layout and `docker save` tarballs; [`export`] writes OCI layouts.
//! - [`extract`]: safe tar extraction (no `..`, absolute paths, symlink walks, escaping links).
//! - [`tarball`]: deterministic tars of a layer (raw for digests and shipping, OCI for export).
//! - [`fetch`]: shipping layers between nodes by digest, verified while streaming.
//! - [`lock`]: `images/images.lock`, names pinned to digests.
//! - [`serve`]: what a gateway serves to nodes: manifests, layer bytes, an image's exact chain.
//! - [`digest`]: sha256 digests and hashing readers/writers.
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
pub mod serve;
pub mod store;
pub mod tarball;
