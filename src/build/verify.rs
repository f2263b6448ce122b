//! `fuse build --verify`: the proof that an image is reproducible. After the build, the same
//! manifest, lock and app are copied into a temporary directory and built again with an
//! empty unit cache (every layer, the kernel unit, the initramfs and the UKI are made anew;
//! packages still come from the verified download cache), and the two images are compared
//! byte for byte (`repro::compare` names the first differing partition and files).

use super::outcome::{Built, CacheOptions};
use super::repro::{self, Difference};
use crate::manifest::{self, Manifest};
use crate::pin::Options;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Test-only: a path (relative to the manifest's directory) of a file the second build's
/// copy gets one byte appended to, so a test can see `--verify` catch a difference.
pub const PERTURB_ENV: &str = "FUSE_TEST_VERIFY_PERTURB";

/// The outcome of `--verify`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub reproducible: bool,
    /// `sha256:` of the second build's image.
    pub second_digest: String,
    /// Wall time of the second build and the comparison.
    pub duration_ms: u64,
    /// Whether the second build ran from a copy of the sources in another directory (else
    /// from the same directory, when the app or keyring lies outside the manifest's).
    pub copied_sources: bool,
    /// Where the images differ (absent when reproducible).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
}

/// Copy a file or a directory tree (symlinks as symlinks, permissions kept).
fn copy_path(src: &Path, dst: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(src).with_context(|| format!("cannot read {}", src.display()))?;
        std::os::unix::fs::symlink(&target, dst)
            .with_context(|| format!("cannot create {}", dst.display()))?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("cannot list {}", src.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_path(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions())
            .with_context(|| format!("cannot set the mode of {}", dst.display()))?;
    } else {
        std::fs::copy(src, dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// Copy the manifest, its lock, the app and the keyring into `dir` at the same relative
/// places; the new manifest path, or `None` when something lies outside the manifest's
/// directory (then the second build reads the sources where they are).
fn copy_sources(m: &Manifest, dir: &Path) -> Result<Option<PathBuf>> {
    let Some(base) = m.file.parent() else {
        return Ok(None);
    };
    let base = std::fs::canonicalize(base)
        .with_context(|| format!("cannot resolve {}", base.display()))?;
    let mut inside = vec![m.app_path.clone()];
    if let Some(j) = m.jar.as_ref().filter(|j| !j.dir) {
        let root = j.root(&m.app_path);
        inside.extend(
            j.class_path
                .iter()
                .map(|rel| root.join(rel.trim_end_matches('/'))),
        );
    }
    if let Some(k) = &m.keyring {
        inside.push(std::fs::canonicalize(k).unwrap_or_else(|_| k.clone()));
    }
    let mut rel = Vec::new();
    for p in &inside {
        match p.strip_prefix(&base) {
            Ok(r) if !r.as_os_str().is_empty() => rel.push(r.to_path_buf()),
            _ => return Ok(None),
        }
    }
    let name = m
        .file
        .file_name()
        .context("the manifest has no file name")?;
    copy_path(&m.file, &dir.join(name))?;
    let lock = super::lock_path(m);
    if lock.is_file() {
        copy_path(
            &lock,
            &dir.join(lock.file_name().context("lock file name")?),
        )?;
    }
    for (abs, r) in inside.iter().zip(&rel) {
        copy_path(abs, &dir.join(r))?;
    }
    Ok(Some(dir.join(name)))
}

/// Build `m` a second time without unit caches and compare with `first`.
pub fn verify(
    m: &Manifest,
    first: &Built,
    opts: Options,
    signer: Option<&crate::sign::Signer>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    tracing::info!("verify: building again without unit caches, in a temporary directory");
    let tmp = tempfile::Builder::new()
        .prefix("fuse-verify-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let src = tmp.path().join("src");
    let copied = copy_sources(m, &src)?;
    if copied.is_none() {
        tracing::info!(
            "verify: the app or keyring lies outside {}; the second build reads them in place",
            m.file.display()
        );
    }
    if let (Some(_), Ok(rel)) = (&copied, std::env::var(PERTURB_ENV)) {
        let f = src.join(rel.trim());
        let mut bytes = std::fs::read(&f)
            .with_context(|| format!("{PERTURB_ENV}: cannot read {}", f.display()))?;
        bytes.push(0);
        std::fs::write(&f, bytes).with_context(|| format!("cannot write {}", f.display()))?;
        tracing::warn!(
            "verify: {PERTURB_ENV}: appended a byte to {} (test only)",
            f.display()
        );
    }
    let units = Store::open(&tmp.path().join("units"))?;
    let second_opts = Options {
        // The first build wrote or checked the lock: the second uses it as it is.
        locked: true,
        update: false,
        ..opts
    };
    let manifest_path = copied.clone().unwrap_or_else(|| m.file.clone());
    let second_manifest = manifest::load(&manifest_path)?;
    let second = super::build(
        &second_manifest,
        Some(&tmp.path().join("out")),
        second_opts,
        Some(&units),
        &CacheOptions::default(),
        signer,
    )
    .context("verify: the second build failed")?;
    let a = std::fs::read(&first.image)
        .with_context(|| format!("cannot read {}", first.image.display()))?;
    let b = std::fs::read(&second.image)
        .with_context(|| format!("cannot read {}", second.image.display()))?;
    let difference = repro::compare(&a, &b)?;
    let report = VerifyReport {
        reproducible: difference.is_none(),
        second_digest: format!("sha256:{}", crate::digest::sha256_hex(&b)),
        duration_ms: started.elapsed().as_millis() as u64,
        copied_sources: copied.is_some(),
        difference,
    };
    match &report.difference {
        None => tracing::info!(
            "verify: the second build is byte-identical ({}) after {:.1}s",
            report.second_digest,
            report.duration_ms as f64 / 1000.0
        ),
        Some(d) => {
            eprintln!(
                "fuse build --verify: NOT reproducible: {} vs {}",
                first.digest, report.second_digest
            );
            eprintln!("fuse build --verify: {}", d.summary);
            for f in &d.files {
                eprintln!("  {}  {}", f.path, f.what);
            }
            if d.file_count > d.files.len() {
                eprintln!("  ... {} more", d.file_count - d.files.len());
            }
            eprintln!(
                "fuse build --verify: differing partitions: {}",
                d.partitions.join(", ")
            );
        }
    }
    Ok(report)
}
