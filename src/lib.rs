//! fuse: an app manifest plus a signed distribution archive, fused into one
//! content-addressed, immutable, bootable disk image.

pub mod app;
pub mod arch;
pub mod archive;
pub mod budget;
pub mod build;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod configdisk;
pub mod deploy;
pub mod digest;
pub mod disk;
pub mod envfile;
pub mod envs;
pub mod export;
pub mod fetch;
pub mod format;
pub mod image_store;
pub mod inspect;
pub mod java;
pub mod kernel;
pub mod layers;
pub mod ledger;
pub mod manifest;
pub mod mirror;
pub mod oci;
pub mod pin;
pub mod plan;
pub mod pool;
pub mod pyc;
pub mod resolve;
pub mod runtimes;
pub mod sign;
pub mod store;
#[cfg(test)]
pub mod testutil;
pub mod tree;
pub mod util;
pub mod vm;
