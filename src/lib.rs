//! fuse: an app manifest plus a signed distribution archive, fused into one
//! content-addressed, immutable, bootable disk image.

pub mod archive;
pub mod format;
pub mod tree;
