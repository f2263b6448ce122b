//! The record kept beside each cached unit's bytes: its kind, key, digest and metadata.

use serde::{Deserialize, Serialize};

/// Version of the record format; records of other versions are misses.
pub const RECORD_FORMAT: u32 = 1;

/// A cache record: what the bytes are and which key they were built for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record<M> {
    pub format: u32,
    /// "layer", "kernel", "initramfs", "uki"
    pub kind: String,
    pub key: String,
    /// sha256 (hex) of the bytes.
    pub sha256: String,
    pub size: u64,
    pub meta: M,
}
