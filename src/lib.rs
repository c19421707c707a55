//! zmount: one directory tree whose subpaths and file patterns route to different storage providers.
//!
//! Layers, bottom up: [`config`] (mount.toml) and [`meta`] (what objects carry besides their bytes), [`routing`]
//! (path → provider), [`providers`] (object_store clients), [`storage`] (the routed API: upload, download, list,
//! get_info, get_url), then [`cache`], [`read`], [`write`], [`images`], [`fs`], [`fuse`], [`metrics`], [`transfer`]
//! and [`cli`] (the `zmount` command). `scripts/check-layers.sh` lists the references that still run upward.

// Lints the crate holds itself to (CI runs clippy with warnings as errors): every unsafe block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, rust_2018_idioms)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod fs;
pub mod fuse;
pub mod images;
pub mod meta;
pub mod metrics;
pub mod providers;
pub mod read;
pub mod routing;
pub mod storage;
pub mod tasks;
pub mod transfer;
pub mod write;

pub use config::Config;
pub use storage::{FileInfo, Storage, StorageError, UploadOptions};
