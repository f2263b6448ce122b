//! fuse images as OCI artifacts: references, the manifest, and the pure mapping between a raw
//! disk and its blobs.
//!
//! An image is pushed as an OCI image manifest with `artifactType`
//! [`ARTIFACT_TYPE`], its image.json (the copy written beside the image, with digest and
//! size) as the config blob ([`CONFIG_TYPE`]), and the raw disk as layer blobs: by default
//! cut at the GPT partition boundaries (the GPT header region, the ESP, one blob per layer
//! partition, the backup GPT), so a second version that only changed its app sends only the
//! blobs that changed; or, with `whole`, as one blob. Every layer descriptor carries its
//! byte offset in the disk ([`ANN_OFFSET`]); the manifest carries the raw disk's digest and
//! size and the image's architecture ([`ANN_ARCH`]; its OS is always linux). The manifest is a
//! pure function of the image bytes, so the same image always has the same manifest digest
//! (which is what lets `fuse promote --registry` tag it by digest). Images of one name and
//! version in several architectures are pushed as an OCI image index ([`index`]) whose
//! entries carry each manifest's `platform`.

pub mod app;
pub mod auth;
pub mod client;
pub mod container;
pub mod index;
pub mod packages;
pub mod source;

use crate::arch::Arch;
use crate::digest::sha256_hex;
use crate::disk::{read_meta, ImageMeta};
use crate::format::{fat, gpt};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// What a fuse image is, to registries and tools that list artifacts.
pub const ARTIFACT_TYPE: &str = "application/vnd.fuse.image.v1";
/// The config blob: the image's image.json.
pub const CONFIG_TYPE: &str = "application/vnd.fuse.image.config.v1+json";
/// A layer blob holding a byte range of the raw disk.
pub const CHUNK_TYPE: &str = "application/vnd.fuse.image.chunk.v1";
/// A layer blob holding the whole raw disk.
pub const DISK_TYPE: &str = "application/vnd.fuse.image.disk.v1.raw";

/// Manifest annotation: `sha256:` of the raw disk.
pub const ANN_DIGEST: &str = "vnd.fuse.image.digest";
/// Manifest annotation: the raw disk's size in bytes.
pub const ANN_SIZE: &str = "vnd.fuse.image.size";
/// Manifest annotation: the image's architecture (`amd64`, `arm64`: OCI's
/// `platform.architecture`; the OS is linux). Manifests pushed by an older fuse have none.
pub const ANN_ARCH: &str = "vnd.fuse.image.arch";
/// Layer annotation: where the blob's bytes start in the raw disk.
pub const ANN_OFFSET: &str = "vnd.fuse.chunk.offset";
pub const ANN_TITLE: &str = "org.opencontainers.image.title";
pub const ANN_VERSION: &str = "org.opencontainers.image.version";

/// Largest raw disk `pull` will reassemble (the whole image is held in memory).
pub const MAX_IMAGE_SIZE: u64 = 16 << 30;

/// Largest config blob (image.json) accepted.
pub const MAX_CONFIG_SIZE: u64 = 64 << 20;

/// `registry/repository[:tag][@sha256:...]`, e.g. `registry.example.com:5000/team/hello:1.0.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn valid_repo_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || b"._-".contains(x))
}

impl Reference {
    /// Parses a reference; the registry host is required (it must contain `.` or `:` or be
    /// `localhost`), so a typo never silently goes to some default registry.
    pub fn parse(s: &str) -> Result<Reference> {
        let (host, rest) = s
            .split_once('/')
            .with_context(|| format!("{s:?}: expected REGISTRY/REPOSITORY[:TAG|@DIGEST]"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost")
            || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'@')
        {
            bail!(
                "{s:?}: {host:?} is not a registry host (REGISTRY/REPOSITORY[:TAG], e.g. \
                 registry.example.com/team/hello:1.0.0 or 127.0.0.1:5000/hello)"
            );
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                ensure!(
                    crate::image_store::is_full_digest(d),
                    "{s:?}: {d:?} is not a sha256:<64 hex> digest"
                );
                (r, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (rest, None),
        };
        ensure!(
            repo.split('/').all(valid_repo_component) && repo.len() <= 255,
            "{s:?}: repository {repo:?} must be lower-case components [a-z0-9] joined by . _ - and /"
        );
        if let Some(t) = &tag {
            ensure!(
                valid_tag(t),
                "{s:?}: tag {t:?} is not [A-Za-z0-9_][A-Za-z0-9._-]*"
            );
        }
        Ok(Reference {
            registry: host.to_string(),
            repository: repo.to_string(),
            tag,
            digest,
        })
    }

    /// The host to talk to (`docker.io` is served by `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// `https://host` (or `http://` when plain HTTP is allowed).
    pub fn base_url(&self, insecure: bool) -> String {
        format!(
            "{}://{}",
            if insecure { "http" } else { "https" },
            self.api_host()
        )
    }

    /// This reference with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (fields other registries add are ignored when reading).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A named byte range of the raw disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub name: String,
    pub range: Range<usize>,
}

/// The disk cut into content-aligned pieces, so that what did not change between two
/// images is the same blob: the protective MBR + primary GPT (header and entry array), the
/// alignment padding before the first partition, each partition (a FAT partition further
/// cut at the extents of its files, e.g. the UKI, which an app change leaves alone while
/// image.json next to it changes), any gap between partitions, and the region after the
/// last partition (backup GPT). The chunks tile the disk exactly, in order.
pub fn chunks(disk: &[u8]) -> Result<Vec<Chunk>> {
    let info = gpt::read_disk(disk).context("cannot read the image's GPT")?;
    let mut parts = info.partitions.clone();
    parts.sort_by_key(|p| p.first_lba);
    let mut out = Vec::new();
    let mut pos = 0usize;
    let esp_type = gpt::Guid::parse(gpt::ESP_TYPE)?;
    for p in &parts {
        let r = p.byte_range();
        ensure!(
            r.start >= pos && r.end <= disk.len() && r.start < r.end,
            "partition {} ({:?}) overlaps another or the end of the disk",
            p.index,
            p.name
        );
        if r.start > pos {
            if pos == 0 {
                let split = primary_gpt_end(disk).filter(|&e| e > 0 && e < r.start);
                if let Some(e) = split {
                    out.push(Chunk {
                        name: "gpt-header".into(),
                        range: 0..e,
                    });
                    out.push(Chunk {
                        name: "gpt-padding".into(),
                        range: e..r.start,
                    });
                } else {
                    out.push(Chunk {
                        name: "gpt-header".into(),
                        range: 0..r.start,
                    });
                }
            } else {
                out.push(Chunk {
                    name: format!("gap-{}", out.len()),
                    range: pos..r.start,
                });
            }
        }
        let bytes = &disk[r.clone()];
        let first_esp_chunk = out.len();
        let files = if p.type_guid == esp_type {
            fat_extents(bytes)
        } else {
            vec![]
        };
        let mut at = 0usize;
        for (path, ext) in files {
            if ext.start > at {
                out.push(Chunk {
                    name: if at == 0 {
                        p.name.clone()
                    } else {
                        format!("{}+{at}", p.name)
                    },
                    range: r.start + at..r.start + ext.start,
                });
            }
            out.push(Chunk {
                name: format!("{}/{path}", p.name),
                range: r.start + ext.start..r.start + ext.end,
            });
            at = ext.end;
        }
        if at < bytes.len() {
            out.push(Chunk {
                name: if at == 0 {
                    p.name.clone()
                } else {
                    format!("{}+{at}", p.name)
                },
                range: r.start + at..r.end,
            });
        }
        if p.type_guid == esp_type {
            out = split_fixed(out, first_esp_chunk, ESP_CHUNK);
        }
        pos = r.end;
    }
    if pos < disk.len() {
        let split = backup_gpt_start(disk).filter(|&s| s > pos && s < disk.len());
        if let Some(s) = split {
            out.push(Chunk {
                name: "gpt-backup-padding".into(),
                range: pos..s,
            });
        }
        out.push(Chunk {
            name: "gpt-backup".into(),
            range: split.unwrap_or(pos)..disk.len(),
        });
    }
    Ok(out)
}

/// Size of the fixed pieces the ESP's chunks are cut into: the UKI changes with every layer's
/// root hash (they are in its initramfs) while its stub and kernel do not, and those
/// unchanged pieces are blobs the registry already has.
pub const ESP_CHUNK: usize = 256 << 10;

/// `chunks[from..]` with every chunk longer than `size` cut into pieces of `size` bytes
/// (the last one shorter), counted from the chunk's start; named `<name>#<n>`.
fn split_fixed(mut chunks: Vec<Chunk>, from: usize, size: usize) -> Vec<Chunk> {
    let tail = chunks.split_off(from);
    for c in tail {
        if c.range.len() <= size {
            chunks.push(c);
            continue;
        }
        let mut at = c.range.start;
        let mut n = 0;
        while at < c.range.end {
            let end = (at + size).min(c.range.end);
            chunks.push(Chunk {
                name: format!("{}#{n}", c.name),
                range: at..end,
            });
            at = end;
            n += 1;
        }
    }
    chunks
}

/// Where the backup GPT (entry array, then header in the last sector) starts, from the
/// backup header's entry array LBA.
fn backup_gpt_start(disk: &[u8]) -> Option<usize> {
    let h = disk.get(disk.len().checked_sub(512)?..)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let lba = u64::from_le_bytes(h[72..80].try_into().ok()?);
    usize::try_from(lba.checked_mul(512)?).ok()
}

/// Where the primary GPT's partition entry array ends (bytes, sector-aligned), from the
/// header in LBA 1.
fn primary_gpt_end(disk: &[u8]) -> Option<usize> {
    let h = disk.get(512..512 + 92)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let lba = u64::from_le_bytes(h[72..80].try_into().ok()?);
    let count = u64::from(u32::from_le_bytes(h[80..84].try_into().ok()?));
    let size = u64::from(u32::from_le_bytes(h[84..88].try_into().ok()?));
    let end = lba
        .checked_mul(512)?
        .checked_add(count.checked_mul(size)?)?;
    usize::try_from(end.div_ceil(512) * 512).ok()
}

/// The byte extents of the files (of at least 4 KiB) of a FAT file system, found where the
/// writer put them: each file's bytes, contiguous, at a sector boundary. Sorted, not
/// overlapping; empty when the partition is not FAT. Only an optimisation: any extents
/// would tile correctly.
fn fat_extents(part: &[u8]) -> Vec<(String, Range<usize>)> {
    const MIN: usize = 4096;
    let Ok(tree) = fat::read(part) else {
        return vec![];
    };
    let mut found: Vec<(String, Range<usize>)> = Vec::new();
    for (path, node) in tree.iter() {
        let Some(data) = node.data() else { continue };
        if data.len() < MIN || data.len() > part.len() {
            continue;
        }
        let probe = &data[..64];
        let hit = (0..=part.len() - data.len())
            .step_by(512)
            .find(|&o| &part[o..o + 64] == probe && &part[o..o + data.len()] == data);
        if let Some(o) = hit {
            let r = o..o + data.len();
            if found
                .iter()
                .all(|(_, f)| r.end <= f.start || r.start >= f.end)
            {
                found.push((path.to_string(), r));
            }
        }
    }
    found.sort_by_key(|(_, r)| r.start);
    found
}

impl Manifest {
    /// The architecture the manifest's [`ANN_ARCH`] annotation names (`None` in a manifest
    /// pushed before the annotation existed).
    pub fn arch(&self) -> Result<Option<Arch>> {
        self.annotations
            .get(ANN_ARCH)
            .map(|a| {
                Arch::parse(a).with_context(|| format!("the manifest's {ANN_ARCH} annotation"))
            })
            .transpose()
    }
}

/// Everything `push` sends for one image.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub image_digest: String,
    pub meta: ImageMeta,
    /// image.json as written beside the image (with digest and disk size).
    pub config: Vec<u8>,
    pub manifest: Manifest,
    /// The manifest's bytes as sent; its digest is [`Artifact::manifest_digest`].
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    /// Each layer's descriptor and its byte range in the disk.
    pub blobs: Vec<(Descriptor, Range<usize>)>,
}

impl Artifact {
    /// The manifest as a fuse without the [`ANN_ARCH`] annotation pushed it (bytes, digest):
    /// how `fuse promote --registry` finds an image pushed before the annotation existed.
    pub fn manifest_without_arch(&self) -> Result<(Vec<u8>, String)> {
        let mut m = self.manifest.clone();
        m.annotations.remove(ANN_ARCH);
        let bytes = serde_json::to_vec(&m)?;
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        Ok((bytes, digest))
    }
}

/// image.json as `fuse build` writes it beside the image: the embedded copy plus the digest
/// and disk size.
pub fn config_json(disk: &[u8]) -> Result<(ImageMeta, Vec<u8>)> {
    let mut meta = read_meta(disk).context("not a fuse image")?;
    meta.digest = Some(format!("sha256:{}", sha256_hex(disk)));
    meta.disk_size = Some(disk.len() as u64);
    let mut json = serde_json::to_vec_pretty(&meta)?;
    json.push(b'\n');
    Ok((meta, json))
}

/// The artifact of a raw disk: chunked at partition boundaries, or one blob when `whole`.
/// Pure and deterministic.
pub fn artifact(disk: &[u8], whole: bool) -> Result<Artifact> {
    let (meta, config) = config_json(disk)?;
    let image_digest = meta.digest.clone().unwrap_or_default();
    let pieces = if whole {
        vec![Chunk {
            name: "disk".into(),
            range: 0..disk.len(),
        }]
    } else {
        chunks(disk)?
    };
    let blobs: Vec<(Descriptor, Range<usize>)> = pieces
        .into_iter()
        .map(|c| {
            let bytes = &disk[c.range.clone()];
            let d = Descriptor {
                media_type: if whole { DISK_TYPE } else { CHUNK_TYPE }.into(),
                digest: format!("sha256:{}", sha256_hex(bytes)),
                size: bytes.len() as u64,
                annotations: BTreeMap::from([
                    (ANN_OFFSET.to_string(), c.range.start.to_string()),
                    (ANN_TITLE.to_string(), c.name),
                ]),
            };
            (d, c.range)
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: CONFIG_TYPE.into(),
            digest: format!("sha256:{}", sha256_hex(&config)),
            size: config.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: blobs.iter().map(|(d, _)| d.clone()).collect(),
        annotations: BTreeMap::from([
            (ANN_DIGEST.to_string(), image_digest.clone()),
            (ANN_SIZE.to_string(), disk.len().to_string()),
            (ANN_ARCH.to_string(), meta.arch.name().to_string()),
            (ANN_TITLE.to_string(), meta.name.clone()),
            (ANN_VERSION.to_string(), meta.version.clone()),
        ]),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest_bytes));
    Ok(Artifact {
        image_digest,
        meta,
        config,
        manifest,
        manifest_bytes,
        manifest_digest,
        blobs,
    })
}

/// Refuses bytes that are not what `d` describes (size, then sha256).
pub fn verify_blob(d: &Descriptor, bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.len() as u64 == d.size,
        "blob {}: expected {} bytes, got {}",
        d.digest,
        d.size,
        bytes.len()
    );
    let got = format!("sha256:{}", sha256_hex(bytes));
    ensure!(
        got == d.digest,
        "blob {} does not match its digest: its bytes hash to {got} (corrupted in the registry or in transit)",
        d.digest
    );
    Ok(())
}

/// Parses a manifest and checks it is a fuse image: the artifact type (or config type),
/// the image digest and size annotations, and layers that tile the disk exactly.
pub fn parse_manifest(bytes: &[u8]) -> Result<(Manifest, String, u64)> {
    let m: Manifest = serde_json::from_slice(bytes).context("the manifest is not valid JSON")?;
    ensure!(
        m.schema_version == 2,
        "manifest schemaVersion {} is not 2",
        m.schema_version
    );
    let is_fuse =
        m.artifact_type.as_deref() == Some(ARTIFACT_TYPE) || m.config.media_type == CONFIG_TYPE;
    ensure!(
        is_fuse,
        "not a fuse image: artifactType {:?}, config mediaType {:?} (expected {ARTIFACT_TYPE})",
        m.artifact_type,
        m.config.media_type
    );
    let digest = m
        .annotations
        .get(ANN_DIGEST)
        .filter(|d| crate::image_store::is_full_digest(d))
        .with_context(|| format!("the manifest has no valid {ANN_DIGEST} annotation"))?
        .clone();
    let size: u64 = m
        .annotations
        .get(ANN_SIZE)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the manifest has no valid {ANN_SIZE} annotation"))?;
    ensure!(
        size <= MAX_IMAGE_SIZE,
        "the image is {size} bytes; this fuse pulls images up to {MAX_IMAGE_SIZE} bytes"
    );
    ensure!(
        m.config.size <= MAX_CONFIG_SIZE,
        "the config blob is {} bytes; image.json is at most {MAX_CONFIG_SIZE}",
        m.config.size
    );
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for l in &m.layers {
        ensure!(
            l.media_type == CHUNK_TYPE || l.media_type == DISK_TYPE,
            "layer {} has media type {:?}, not a fuse disk chunk",
            l.digest,
            l.media_type
        );
        let off: u64 = l
            .annotations
            .get(ANN_OFFSET)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("layer {} has no valid {ANN_OFFSET}", l.digest))?;
        ranges.push((off, l.size));
    }
    ranges.sort();
    let mut pos = 0u64;
    for (off, len) in ranges {
        ensure!(
            off == pos,
            "the layers do not tile the disk: a layer starts at {off}, expected {pos}"
        );
        pos = off.checked_add(len).context("layer size overflows")?;
    }
    ensure!(
        pos == size,
        "the layers cover {pos} bytes, the image is {size} bytes"
    );
    Ok((m, digest, size))
}

/// Rebuilds the raw disk from a checked manifest (see [`parse_manifest`]) and its config
/// bytes, fetching each layer with `fetch` and verifying it before use; then verifies the
/// whole disk's digest and that the config is this image's image.json.
pub fn reassemble(
    bytes: &[u8],
    config: &[u8],
    mut fetch: impl FnMut(&Descriptor) -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, ImageMeta, String)> {
    let (m, digest, size) = parse_manifest(bytes)?;
    verify_blob(&m.config, config).context("the config blob (image.json)")?;
    let size = usize::try_from(size).context("image too large for this machine")?;
    let mut disk = vec![0u8; size];
    for l in &m.layers {
        let data = fetch(l)?;
        verify_blob(l, &data)?;
        let off: usize = l
            .annotations
            .get(ANN_OFFSET)
            .and_then(|s| s.parse().ok())
            .context("layer offset")?;
        let end = off
            .checked_add(data.len())
            .context("layer offset overflows")?;
        disk.get_mut(off..end)
            .context("layer beyond the end of the disk")?
            .copy_from_slice(&data);
    }
    let got = format!("sha256:{}", sha256_hex(&disk));
    ensure!(
        got == digest,
        "the reassembled image hashes to {got}, the manifest says {digest}"
    );
    let (meta, expected_config) = config_json(&disk)?;
    ensure!(
        expected_config == config,
        "the config blob is not this image's image.json"
    );
    if let Some(a) = m.arch()? {
        ensure!(
            a == meta.arch,
            "the manifest says {} ({ANN_ARCH}), the image is {}",
            a.name(),
            meta.arch.name()
        );
    }
    Ok((disk, meta, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print() {
        let r = Reference::parse("127.0.0.1:5000/team/hello:1.0.0").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/hello");
        assert_eq!(r.tag.as_deref(), Some("1.0.0"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/hello:1.0.0");
        assert_eq!(r.base_url(true), "http://127.0.0.1:5000");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("reg.example.com/hello@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.base_url(false), "https://localhost");
        assert_eq!(
            Reference::parse("docker.io/a/b").unwrap().api_host(),
            "registry-1.docker.io"
        );
        for bad in [
            "hello:1.0.0",
            "team/hello",
            "reg.example.com/Hello",
            "reg.example.com/hello:bad tag",
            "reg.example.com/hello@sha256:abc",
            "reg.example.com/a//b",
            "reg.example.com/-a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    fn fake_disk() -> Vec<u8> {
        let a = vec![1u8; 8192];
        let b = vec![2u8; 4096];
        let g = |s: &str| gpt::Guid::parse(s).unwrap();
        gpt::write_disk(
            g("11111111-2222-3333-4444-555555555555"),
            &[
                gpt::PartitionSpec {
                    name: "fuse-esp".into(),
                    type_guid: g(gpt::ESP_TYPE),
                    unique_guid: g("11111111-2222-3333-4444-000000000001"),
                    attributes: 0,
                    data: &a,
                },
                gpt::PartitionSpec {
                    name: "fuse-app".into(),
                    type_guid: g(gpt::LINUX_DATA_TYPE),
                    unique_guid: g("11111111-2222-3333-4444-000000000002"),
                    attributes: 0,
                    data: &b,
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn chunks_tile_the_disk_at_partition_boundaries() {
        let disk = fake_disk();
        let c = chunks(&disk).unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gpt-header",
                "gpt-padding",
                "fuse-esp",
                "fuse-app",
                "gpt-backup-padding",
                "gpt-backup"
            ]
        );
        assert_eq!(c[5].range, disk.len() - 33 * 512..disk.len());
        assert_eq!(c[0].range, 0..34 * 512, "MBR + GPT header + 128 entries");
        let mut pos = 0;
        for ch in &c {
            assert_eq!(ch.range.start, pos);
            pos = ch.range.end;
        }
        assert_eq!(pos, disk.len());
        assert!(disk[c[1].range.clone()].iter().all(|&b| b == 0));
        assert!(disk[c[2].range.clone()].iter().all(|&b| b == 1));
        assert!(disk[c[3].range.clone()].iter().all(|&b| b == 2));
        assert!(disk[c[4].range.clone()].iter().all(|&b| b == 0));
    }

    fn esp_disk(json: &str) -> Vec<u8> {
        use crate::tree::{Node, Tree};
        let mut t = Tree::new();
        let uki: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        t.insert("EFI/BOOT/BOOTX64.EFI", Node::file(uki, 0o644))
            .unwrap();
        t.insert("fuse/image.json", Node::file(json.repeat(500), 0o644))
            .unwrap();
        let esp = fat::write(
            &t,
            &fat::Options {
                volume_label: "FUSE-ESP".into(),
                volume_id: 1,
                min_size: 0,
            },
        )
        .unwrap();
        let g = |s: &str| gpt::Guid::parse(s).unwrap();
        gpt::write_disk(
            g("11111111-2222-3333-4444-555555555555"),
            &[gpt::PartitionSpec {
                name: "fuse-esp".into(),
                type_guid: g(gpt::ESP_TYPE),
                unique_guid: g("11111111-2222-3333-4444-000000000001"),
                attributes: 0,
                data: &esp,
            }],
        )
        .unwrap()
    }

    #[test]
    fn long_esp_chunks_are_cut_into_fixed_pieces_so_a_change_at_the_end_sends_one() {
        let c = vec![
            Chunk {
                name: "gpt-header".into(),
                range: 0..100,
            },
            Chunk {
                name: "fuse-esp/uki".into(),
                range: 100..100 + 3 * ESP_CHUNK + 5,
            },
        ];
        let out = split_fixed(c, 1, ESP_CHUNK);
        let names: Vec<&str> = out.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gpt-header",
                "fuse-esp/uki#0",
                "fuse-esp/uki#1",
                "fuse-esp/uki#2",
                "fuse-esp/uki#3"
            ]
        );
        assert_eq!(out[1].range, 100..100 + ESP_CHUNK);
        assert_eq!(out[4].range.len(), 5);
        assert_eq!(out[4].range.end, 100 + 3 * ESP_CHUNK + 5);
    }

    #[test]
    fn the_esp_is_cut_at_its_files_so_the_uki_survives_a_metadata_change() {
        let a = esp_disk("{\"app\": 1}");
        let b = esp_disk("{\"app\": 2}");
        let (ca, cb) = (chunks(&a).unwrap(), chunks(&b).unwrap());
        let uki = |d: &[u8], c: &[Chunk]| {
            let ch = c
                .iter()
                .find(|c| c.name == "fuse-esp/EFI/BOOT/BOOTX64.EFI")
                .expect("a chunk for the UKI");
            d[ch.range.clone()].to_vec()
        };
        let expected: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(uki(&a, &ca), expected);
        assert_eq!(uki(&b, &cb), expected);
        let json = |d: &[u8], c: &[Chunk]| {
            let ch = c
                .iter()
                .find(|c| c.name == "fuse-esp/fuse/image.json")
                .unwrap();
            d[ch.range.clone()].to_vec()
        };
        assert_ne!(json(&a, &ca), json(&b, &cb));
        // Still an exact tiling.
        let mut pos = 0;
        for ch in &ca {
            assert_eq!(ch.range.start, pos, "{ch:?}");
            pos = ch.range.end;
        }
        assert_eq!(pos, a.len());
    }

    #[test]
    fn parse_manifest_refuses_holes_and_foreign_artifacts() {
        let d = format!("sha256:{}", "b".repeat(64));
        let layer = |off: u64, size: u64| Descriptor {
            media_type: CHUNK_TYPE.into(),
            digest: d.clone(),
            size,
            annotations: BTreeMap::from([(ANN_OFFSET.to_string(), off.to_string())]),
        };
        let mut m = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_TYPE.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_TYPE.into(),
                digest: d.clone(),
                size: 1,
                annotations: BTreeMap::new(),
            },
            layers: vec![layer(0, 10), layer(10, 5)],
            annotations: BTreeMap::from([
                (ANN_DIGEST.to_string(), d.clone()),
                (ANN_SIZE.to_string(), "15".to_string()),
            ]),
        };
        assert!(parse_manifest(&serde_json::to_vec(&m).unwrap()).is_ok());
        m.layers[1] = layer(11, 4);
        let e = format!(
            "{:#}",
            parse_manifest(&serde_json::to_vec(&m).unwrap()).unwrap_err()
        );
        assert!(e.contains("tile"), "{e}");
        m.layers[1] = layer(10, 5);
        m.annotations
            .insert(ANN_SIZE.into(), (MAX_IMAGE_SIZE + 1).to_string());
        assert!(parse_manifest(&serde_json::to_vec(&m).unwrap()).is_err());
        m.annotations.insert(ANN_SIZE.into(), "15".into());
        m.artifact_type = Some("application/vnd.oci.image.config.v1+json".into());
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        let e = format!(
            "{:#}",
            parse_manifest(&serde_json::to_vec(&m).unwrap()).unwrap_err()
        );
        assert!(e.contains("not a fuse image"), "{e}");
    }

    #[test]
    fn verify_blob_checks_size_and_digest() {
        let data = b"chunk";
        let d = Descriptor {
            media_type: CHUNK_TYPE.into(),
            digest: format!("sha256:{}", sha256_hex(data)),
            size: 5,
            annotations: BTreeMap::new(),
        };
        verify_blob(&d, data).unwrap();
        assert!(verify_blob(&d, b"chunk!").is_err());
        let e = format!("{:#}", verify_blob(&d, b"chonk").unwrap_err());
        assert!(e.contains("does not match its digest"), "{e}");
    }
}
