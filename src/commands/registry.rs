//! `fuse push IMAGE REF` and `fuse pull REF`: images through any OCI registry. Push skips the
//! blobs the registry already has and reports the bytes it sent; pull verifies every blob
//! and the whole image before writing anything.

use crate::cli::{PullArgs, PushArgs, RegistryArgs};
use crate::image_store::{resolve_image_ref, Images};
use crate::oci::client::{connect, Client};
use crate::oci::{self, Artifact, Reference};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What a push sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    pub sent_blobs: usize,
    pub sent_bytes: u64,
    pub skipped_blobs: usize,
    pub skipped_bytes: u64,
    pub manifest_bytes: u64,
}

/// Uploads the blobs the registry lacks (config first, then the layers), then the manifest
/// under `tag`.
pub fn push_artifact(c: &Client, art: &Artifact, disk: &[u8], tag: &str) -> Result<PushStats> {
    let mut stats = PushStats::default();
    let mut done = BTreeSet::new();
    let mut blobs: Vec<(&str, &str, &[u8])> = vec![(
        "image.json",
        art.manifest.config.digest.as_str(),
        &art.config,
    )];
    for (d, range) in &art.blobs {
        let name = d
            .annotations
            .get(oci::ANN_TITLE)
            .map(String::as_str)
            .unwrap_or("chunk");
        let bytes = disk.get(range.clone()).context("chunk outside the disk")?;
        blobs.push((name, d.digest.as_str(), bytes));
    }
    for (name, digest, bytes) in blobs {
        if !done.insert(digest.to_string()) {
            continue;
        }
        if c.blob_exists(digest)? {
            tracing::info!("  {name:<12} {digest} already in the registry");
            stats.skipped_blobs += 1;
            stats.skipped_bytes += bytes.len() as u64;
        } else {
            tracing::info!("  {name:<12} {digest} uploading {} bytes", bytes.len());
            c.upload_blob(digest, bytes)
                .with_context(|| format!("uploading {name} ({digest})"))?;
            stats.sent_blobs += 1;
            stats.sent_bytes += bytes.len() as u64;
        }
    }
    let reported = c.put_manifest(tag, &art.manifest_bytes)?;
    stats.manifest_bytes = art.manifest_bytes.len() as u64;
    if let Some(d) = reported {
        ensure!(
            d == art.manifest_digest,
            "the registry stored the manifest as {d}, expected {}",
            art.manifest_digest
        );
    }
    Ok(stats)
}

pub fn push(args: &PushArgs) -> Result<u8> {
    let path = resolve_image_ref(&args.image)?;
    let disk =
        std::fs::read(&path).with_context(|| format!("cannot read image {}", path.display()))?;
    let art = oci::artifact(&disk, args.whole)
        .with_context(|| format!("{} is not a fuse image", path.display()))?;
    let r = Reference::parse(&args.reference)?;
    ensure!(
        r.digest.is_none(),
        "push to a tag, not a digest: the manifest's digest follows from the image"
    );
    let tag = match &r.tag {
        Some(t) => t.clone(),
        None if oci::valid_tag(&art.meta.version) => art.meta.version.clone(),
        None => bail!(
            "the image version {:?} is not a valid OCI tag: give REF a :TAG",
            art.meta.version
        ),
    };
    let r = r.with_tag(&tag);
    tracing::info!(
        "pushing {} {} ({}) to {r}: {} blobs",
        art.meta.name,
        art.meta.version,
        art.image_digest,
        art.blobs.len() + 1
    );
    let c = connect(&r, args.reg.insecure, args.reg.username.as_deref(), true)?;
    let s = push_artifact(&c, &art, &disk, &tag)?;
    tracing::info!(
        "push: {} bytes sent in {} blobs; {} blobs ({} bytes) already in the registry; manifest {} bytes",
        s.sent_bytes,
        s.sent_blobs,
        s.skipped_blobs,
        s.skipped_bytes,
        s.manifest_bytes
    );
    println!("{r}@{}", art.manifest_digest);
    println!("{}", art.image_digest);
    Ok(0)
}

/// Downloads and verifies an image: (disk bytes, image.json bytes, meta, digest).
pub fn fetch_image(
    r: &Reference,
    reg: &RegistryArgs,
) -> Result<(Vec<u8>, Vec<u8>, crate::disk::ImageMeta, String)> {
    let reference = match (&r.digest, &r.tag) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("{r}: name a tag (:TAG) or a manifest digest (@sha256:...)"),
    };
    let c = connect(r, reg.insecure, reg.username.as_deref(), false)?;
    let manifest = c.get_manifest(&reference)?;
    if let Some(d) = &r.digest {
        let got = format!("sha256:{}", crate::digest::sha256_hex(&manifest));
        ensure!(
            &got == d,
            "the registry answered {d} with a manifest whose digest is {got}"
        );
    }
    let (m, digest, size) = oci::parse_manifest(&manifest).with_context(|| format!("{r}"))?;
    tracing::info!(
        "pulling {r}: image {digest}, {size} bytes in {} blobs",
        m.layers.len()
    );
    let config = c.get_blob(&m.config).context("fetching image.json")?;
    let (disk, meta, digest) = oci::reassemble(&manifest, &config, |d| {
        let name = d
            .annotations
            .get(oci::ANN_TITLE)
            .cloned()
            .unwrap_or_default();
        tracing::info!("  {name:<12} {} ({} bytes)", d.digest, d.size);
        c.get_blob(d)
            .with_context(|| format!("fetching {name} ({})", d.digest))
    })
    .with_context(|| format!("pulling {r}: nothing was written"))?;
    Ok((disk, config, meta, digest))
}

pub fn pull(args: &PullArgs) -> Result<u8> {
    let r = Reference::parse(&args.reference)?;
    let (disk, config, meta, digest) = fetch_image(&r, &args.reg)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    let stem = format!("{}-{}", meta.name, meta.version);
    ensure!(
        crate::image_store::check_tag(&format!("{}:{}", meta.name, meta.version)).is_ok(),
        "the image's name/version {stem:?} are not safe as a file name"
    );
    let img = out.join(format!("{stem}.img"));
    let json = out.join(format!("{stem}.json"));
    crate::util::fs::write_atomic(&img, &disk)?;
    crate::util::fs::set_mode(&img, 0o644)?;
    crate::util::fs::write_atomic(&json, &config)?;
    crate::util::fs::set_mode(&json, 0o644)?;
    Images::open_default()?
        .add_with(&disk, &meta.name, &meta.version)
        .context("adding the pulled image to the local store")?;
    println!("{}", img.display());
    println!("{digest}");
    Ok(0)
}
