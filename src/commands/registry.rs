//! `fuse push IMAGE [IMAGE...] REF` and `fuse pull REF [--arch ARCH]`: images through any OCI
//! registry. Push skips the blobs the registry already has and reports the bytes it sent;
//! several images of one name and version (one per architecture) go up as an OCI image index
//! under the tag. Pull takes an index's entry for the architecture asked for and verifies
//! every blob and the whole image before writing anything.

use crate::arch::Arch;
use crate::cli::{PullArgs, PushArgs, RegistryArgs};
use crate::image_store::{resolve_image_ref, Images};
use crate::oci::client::{connect, Client};
use crate::oci::{self, index, Artifact, Reference};
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

/// An image named on the command line, read and mapped to its artifact.
struct Local {
    /// As the user named it (for messages).
    name: String,
    disk: Vec<u8>,
    art: Artifact,
}

fn load(image: &str, whole: bool) -> Result<Local> {
    let path = resolve_image_ref(image)?;
    let disk =
        std::fs::read(&path).with_context(|| format!("cannot read image {}", path.display()))?;
    let art = oci::artifact(&disk, whole)
        .with_context(|| format!("{} is not a fuse image", path.display()))?;
    Ok(Local {
        name: image.to_string(),
        disk,
        art,
    })
}

/// REF's tag, else the image version when it is a valid tag.
fn tag_of(r: &Reference, version: &str) -> Result<String> {
    match &r.tag {
        Some(t) => Ok(t.clone()),
        None if oci::valid_tag(version) => Ok(version.to_string()),
        None => bail!("the image version {version:?} is not a valid OCI tag: give REF a :TAG"),
    }
}

fn log_stats(s: &PushStats) {
    tracing::info!(
        "push: {} bytes sent in {} blobs; {} blobs ({} bytes) already in the registry; manifest {} bytes",
        s.sent_bytes,
        s.sent_blobs,
        s.skipped_blobs,
        s.skipped_bytes,
        s.manifest_bytes
    );
}

pub fn push(args: &PushArgs) -> Result<u8> {
    let r = Reference::parse(&args.reference)?;
    ensure!(
        r.digest.is_none(),
        "push to a tag, not a digest: the manifest's digest follows from the image"
    );
    let images = args
        .images
        .iter()
        .map(|i| load(i, args.whole))
        .collect::<Result<Vec<_>>>()?;
    match images.as_slice() {
        [one] => push_one(args, &r, one),
        _ => push_index(args, &r, &images),
    }
}

/// One image: its manifest under the tag.
fn push_one(args: &PushArgs, r: &Reference, img: &Local) -> Result<u8> {
    let art = &img.art;
    let tag = tag_of(r, &art.meta.version)?;
    let r = r.with_tag(&tag);
    tracing::info!(
        "pushing {} {} {} ({}) to {r}: {} blobs",
        art.meta.name,
        art.meta.version,
        art.meta.arch.name(),
        art.image_digest,
        art.blobs.len() + 1
    );
    let c = connect(&r, args.reg.insecure, args.reg.username.as_deref(), true)?;
    let s = push_artifact(&c, art, &img.disk, &tag)?;
    log_stats(&s);
    println!("{r}@{}", art.manifest_digest);
    println!("{}", art.image_digest);
    Ok(0)
}

/// Several images of one name and version, one per architecture: each manifest by its
/// digest, then an OCI image index listing them (with their platforms) under the tag.
fn push_index(args: &PushArgs, r: &Reference, images: &[Local]) -> Result<u8> {
    let arts: Vec<&Artifact> = images.iter().map(|i| &i.art).collect();
    index::check_set(&arts, |i| format!("{:?}", images[i].name))?;
    let (_, bytes, digest) = index::build(&arts)?;
    let meta = &images[0].art.meta;
    let tag = tag_of(r, &meta.version)?;
    let r = r.with_tag(&tag);
    let mut sorted: Vec<&Local> = images.iter().collect();
    sorted.sort_by_key(|i| i.art.meta.arch);
    tracing::info!(
        "pushing {} {} for {} to {r} as one image index",
        meta.name,
        meta.version,
        sorted
            .iter()
            .map(|i| format!("linux/{}", i.art.meta.arch.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let c = connect(&r, args.reg.insecure, args.reg.username.as_deref(), true)?;
    let mut total = PushStats::default();
    for img in &sorted {
        let art = &img.art;
        tracing::info!(
            "{} ({}): manifest {}, {} blobs",
            art.meta.arch.name(),
            art.image_digest,
            art.manifest_digest,
            art.blobs.len() + 1
        );
        let s = push_artifact(&c, art, &img.disk, &art.manifest_digest)
            .with_context(|| format!("pushing {} ({})", img.name, art.meta.arch.name()))?;
        total.sent_blobs += s.sent_blobs;
        total.sent_bytes += s.sent_bytes;
        total.skipped_blobs += s.skipped_blobs;
        total.skipped_bytes += s.skipped_bytes;
        total.manifest_bytes += s.manifest_bytes;
    }
    let reported = c.put_manifest_as(&tag, &bytes, index::INDEX_TYPE)?;
    total.manifest_bytes += bytes.len() as u64;
    if let Some(d) = reported {
        ensure!(
            d == digest,
            "the registry stored the image index as {d}, expected {digest}"
        );
    }
    log_stats(&total);
    println!("{r}@{digest}");
    for img in &sorted {
        let art = &img.art;
        println!(
            "{} {} {}/{}@{}",
            art.meta.arch.name(),
            art.image_digest,
            r.registry,
            r.repository,
            art.manifest_digest
        );
    }
    Ok(0)
}

/// The manifest `r` names for `arch`: `r` itself when it is an image manifest; when it is an
/// image index, its entry for linux/`arch` (see [`index::pick`]: without `arch`, the only
/// entry or the host's architecture), fetched by digest and verified against the entry.
/// Returns the manifest bytes and the architecture the image must have (`arch`, else the
/// platform of the index entry taken).
fn resolve_manifest(
    c: &Client,
    r: &Reference,
    arch: Option<Arch>,
) -> Result<(Vec<u8>, Option<Arch>)> {
    let reference = match (&r.digest, &r.tag) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("{r}: name a tag (:TAG) or a manifest digest (@sha256:...)"),
    };
    let (top, content_type) =
        c.get_manifest_as(&reference, &[oci::MANIFEST_TYPE, index::INDEX_TYPE])?;
    if let Some(d) = &r.digest {
        let got = format!("sha256:{}", crate::digest::sha256_hex(&top));
        ensure!(
            &got == d,
            "the registry answered {d} with a manifest whose digest is {got}"
        );
    }
    if !index::is_index(&top, content_type.as_deref()) {
        return Ok((top, arch));
    }
    let ix = index::parse(&top).with_context(|| format!("{r}"))?;
    let e = index::pick(&ix, arch).with_context(|| format!("{r}"))?;
    let platform = index::entry_arch(e);
    tracing::info!(
        "{r} is an image index of {} images: taking {} {}",
        ix.manifests.len(),
        e.platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "(no platform)".into()),
        e.digest
    );
    let (bytes, _) = c.get_manifest_as(&e.digest, &[oci::MANIFEST_TYPE])?;
    let d = oci::Descriptor {
        media_type: e.media_type.clone(),
        digest: e.digest.clone(),
        size: e.size,
        annotations: Default::default(),
    };
    oci::verify_blob(&d, &bytes).with_context(|| format!("{r}: the index entry's manifest"))?;
    Ok((bytes, arch.or(platform)))
}

/// Downloads and verifies an image: (disk bytes, image.json bytes, meta, digest). When `r`
/// is an image index, the entry for `arch` is pulled (see [`resolve_manifest`]); the image's
/// architecture must be `arch` when given (and the index entry's platform).
pub fn fetch_image(
    r: &Reference,
    reg: &RegistryArgs,
    arch: Option<Arch>,
) -> Result<(Vec<u8>, Vec<u8>, crate::disk::ImageMeta, String)> {
    let c = connect(r, reg.insecure, reg.username.as_deref(), false)?;
    let (manifest, want) = resolve_manifest(&c, r, arch)?;
    let (m, digest, size) = oci::parse_manifest(&manifest).with_context(|| format!("{r}"))?;
    let wrong = |got: Arch, want: Arch| {
        anyhow::anyhow!(
            "{r} is an {} image, not {}{}: nothing was written",
            got.name(),
            want.name(),
            if arch.is_some() {
                " (--arch)"
            } else {
                " (its platform in the index)"
            }
        )
    };
    // Before any blob is fetched, when the manifest says its architecture.
    if let (Some(want), Some(got)) = (want, m.arch().with_context(|| format!("{r}"))?) {
        if got != want {
            return Err(wrong(got, want));
        }
    }
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
    if let Some(want) = want {
        if meta.arch != want {
            return Err(wrong(meta.arch, want));
        }
    }
    Ok((disk, config, meta, digest))
}

pub fn pull(args: &PullArgs) -> Result<u8> {
    let r = Reference::parse(&args.reference)?;
    let (disk, config, meta, digest) = fetch_image(&r, &args.reg, args.arch)?;
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
