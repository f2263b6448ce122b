//! fuse: an app manifest plus a signed distribution archive, fused into one
//! content-addressed, immutable, bootable disk image.

pub mod format;
pub mod tree;
pub mod fetch;
pub mod kernel;
pub mod manifest;
pub mod store;
