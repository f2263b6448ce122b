//! What a build produced, as reported: the image, its units and where each came from.

use crate::cache::Source;
use serde::Serialize;
use std::path::PathBuf;

/// One unit of a build, as reported.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct UnitReport {
    /// "base", "runtime", "server", "app" for layers; "kernel", "initramfs", "uki".
    pub name: String,
    pub key: String,
    /// Bytes (a layer's partition, vmlinuz, the gzipped initramfs, the UKI).
    pub size: u64,
    /// `sha256:` of those bytes.
    pub digest: String,
    pub source: Source,
}

/// What a build produced.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Built {
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
    /// Bytes per part of the disk: (part, size).
    pub parts: Vec<(String, u64)>,
    /// The layers in disk order.
    pub layers: Vec<UnitReport>,
    /// Kernel, initramfs, UKI.
    pub boot: Vec<UnitReport>,
    /// sha256 of the fuse.lock text the image was built from.
    pub lock_sha256: String,
    /// Whether fuse.lock was written (fresh resolution, or the app digest updated).
    pub lock_changed: bool,
    /// .deb files read (decompressed) by this build: 0 when every unit was cached.
    pub debs_read: usize,
    /// Units pushed to the registry cache.
    pub pushed: usize,
    /// Wall time of the build, in seconds.
    pub duration: f64,
}

/// Where built units are shared beyond this machine.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// REGISTRY/REPOSITORY of the registry cache.
    pub registry: Option<String>,
    pub insecure: bool,
    pub username: Option<String>,
}

pub(crate) fn unit(name: &str, key: &str, size: u64, sha256: &str, source: Source) -> UnitReport {
    UnitReport {
        name: name.into(),
        key: key.into(),
        size,
        digest: format!("sha256:{sha256}"),
        source,
    }
}
