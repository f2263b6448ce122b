//! Where a container image comes from (`[app] kind = "oci"`): a registry reference, an OCI
//! image layout directory (`oci-layout:DIR[:TAG]`) or a `docker save` archive
//! (`docker-archive:FILE`), read for one architecture with every manifest and blob checked
//! against its digest and size; what comes from a registry is cached in the [`Store`] by
//! digest, so an image pinned by digest rebuilds offline.
//!
//! Accepted: OCI image manifests and indexes, Docker schema 2 manifests and manifest lists;
//! OCI and Docker image configs; layers that are tar, tar+gzip or tar+zstd (OCI) or Docker's
//! gzip rootfs diff. Refused with the digest in the message: other media types, Docker
//! schema 1, non-distributable ("foreign") layers, digests other than sha256, sizes beyond
//! [`MAX_BLOB`] / [`MAX_TOTAL`], more than [`MAX_LAYERS`] layers.

use super::client::{self, Client};
use super::index::{self, Platform};
use super::{Descriptor, Reference, MANIFEST_TYPE, MAX_CONFIG_SIZE};
use crate::digest::sha256_hex;
use crate::store::Store;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use super::index::{INDEX_TYPE as OCI_INDEX, MAX_INDEX_ENTRIES};
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The annotation an OCI layout's index.json names an image by (its tag).
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What the registry is asked for: the manifest and index types fuse reads.
const ACCEPT: [&str; 4] = [MANIFEST_TYPE, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest single blob (a layer, compressed): it is held in memory.
pub const MAX_BLOB: u64 = 4 << 30;
/// Largest sum of an image's layers (compressed), all held in memory.
pub const MAX_TOTAL: u64 = 16 << 30;
/// Most layers in one image (Docker itself stops at 127).
pub const MAX_LAYERS: usize = 256;
/// Indexes nested in indexes, at most.
const MAX_DEPTH: usize = 4;
/// Most members in a docker-archive.
const MAX_MEMBERS: usize = 100_000;
/// Symbolic or hard links followed from one docker-archive member, at most.
const MAX_LINK_HOPS: usize = 8;

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// REGISTRY/REPO@sha256:... or REGISTRY/REPO:TAG (parsed with oci::Reference)
    Registry(Reference),
    /// oci-layout:DIR[:TAG]  (index.json; TAG = org.opencontainers.image.ref.name annotation;
    /// without TAG the index must name exactly one image for the arch)
    Layout { dir: PathBuf, tag: Option<String> },
    /// docker-archive:FILE   (`docker save`: manifest.json + config + layer tars)
    DockerArchive(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "{r}"),
            Source::Layout { dir, tag: None } => write!(f, "oci-layout:{}", dir.display()),
            Source::Layout { dir, tag: Some(t) } => {
                write!(f, "oci-layout:{}:{t}", dir.display())
            }
            Source::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

/// Parses an image reference: `oci-layout:DIR[:TAG]`, `docker-archive:FILE`, else a registry
/// reference `REGISTRY/REPO[:TAG][@sha256:...]`. In `oci-layout:`, the text after the last
/// `:` is the TAG when it is a valid OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]*`, so never with a
/// `/`); a directory whose name ends in `:something` must then be written with a TAG (or
/// `./` and no colon). A docker-archive FILE is taken whole (colons included).
pub fn parse_source(s: &str) -> Result<Source> {
    if let Some(rest) = s.strip_prefix("oci-layout:") {
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if super::valid_tag(t) && !t.contains('/') => (d, Some(t.to_string())),
            _ => (rest, None),
        };
        ensure!(
            !dir.is_empty(),
            "{s:?}: expected oci-layout:DIR[:TAG] (the directory holding oci-layout and index.json)"
        );
        return Ok(Source::Layout {
            dir: PathBuf::from(dir),
            tag,
        });
    }
    if let Some(file) = s.strip_prefix("docker-archive:") {
        ensure!(
            !file.is_empty(),
            "{s:?}: expected docker-archive:FILE (what `docker save` writes)"
        );
        return Ok(Source::DockerArchive(PathBuf::from(file)));
    }
    let r = Reference::parse(s).with_context(|| {
        format!("{s:?} is not an image reference (REGISTRY/REPO:TAG, REGISTRY/REPO@sha256:..., oci-layout:DIR[:TAG] or docker-archive:FILE)")
    })?;
    Ok(Source::Registry(r))
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// The image's architecture (`amd64`, `arm64`): an index picks linux/`arch`.
    pub arch: &'a str,
    /// Plain HTTP to the registry allowed (as `fuse pull --insecure`).
    pub insecure: bool,
    /// Registry user (password in FUSE_REGISTRY_PASSWORD), else the Docker config's.
    pub username: Option<&'a str>,
    /// No network: a registry image must be pinned by digest and wholly in the cache.
    pub offline: bool,
}

/// The image read.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// `sha256:` of the image manifest the layers come from (registry, layout); for a
    /// docker-archive the config digest (it has no manifest).
    pub manifest_digest: String,
    /// `sha256:` of the config blob; its bytes.
    pub config_digest: String,
    pub config: Vec<u8>,
    /// Bottom to top, each verified against its descriptor digest (compressed bytes).
    pub layers: Vec<LayerBlob>,
    /// Registry only: REGISTRY/REPO@sha256:<manifest> (what the lock pins).
    pub pinned: Option<String>,
}

/// One layer as stored (compressed as its media type says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Reads/pulls the image for `opts.arch` (an image index picks the platform with
/// os=linux, architecture=arch); every blob verified; blobs cached in the Store by sha256
/// (and a registry manifest by its digest), so a pinned ref with everything cached needs
/// no network (offline=true then must not connect at all).
pub fn fetch(src: &Source, store: &Store, opts: &Options) -> Result<Fetched> {
    let t = std::time::Instant::now();
    let f = match src {
        Source::Registry(r) => fetch_registry(r, store, opts),
        Source::Layout { dir, tag } => fetch_layout(dir, tag.as_deref(), opts.arch),
        Source::DockerArchive(file) => fetch_archive(file, opts.arch),
    }
    .with_context(|| format!("container image {src}"))?;
    tracing::info!(
        "container image {src}: manifest {}, config {}, {} layers, {} bytes ({:.1}s)",
        f.manifest_digest,
        f.config_digest,
        f.layers.len(),
        f.layers.iter().map(|l| l.bytes.len() as u64).sum::<u64>(),
        t.elapsed().as_secs_f64()
    );
    Ok(f)
}

// ---------------------------------------------------------------------------------------
// Manifests and indexes

/// A descriptor as found in manifests and indexes (with the index's `platform`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

impl Desc {
    fn to_descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: BTreeMap::new(),
        }
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A manifest or an index, as JSON says (fields of the other kinds ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

/// An image manifest, checked: what to read for the image.
#[derive(Clone, Debug)]
struct Image {
    /// `sha256:` of the manifest's bytes.
    digest: String,
    config: Desc,
    layers: Vec<Desc>,
}

enum Parsed {
    Index(Vec<Desc>),
    Image { config: Desc, layers: Vec<Desc> },
}

/// `sha256:<64 lower-case hex>` -> the hex; anything else refused (it becomes a file name).
fn digest_hex(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(h) if crate::image_store::is_full_digest(d) => Ok(h),
        _ if d.contains(':') && !d.starts_with("sha256:") => {
            bail!("digest {d:?}: only sha256 digests are supported")
        }
        _ => bail!("{d:?} is not a sha256:<64 lower-case hex> digest"),
    }
}

/// Refuses bytes that are not what `d` says (size, then sha256); `what` names them.
fn verify(d: &Desc, bytes: &[u8], what: &str) -> Result<()> {
    ensure!(
        bytes.len() as u64 == d.size,
        "{what} {}: its descriptor says {} bytes, got {}",
        d.digest,
        d.size,
        bytes.len()
    );
    verify_digest(&d.digest, bytes, what)
}

fn verify_digest(digest: &str, bytes: &[u8], what: &str) -> Result<()> {
    let got = format!("sha256:{}", sha256_hex(bytes));
    ensure!(
        got == digest,
        "{what} {digest} does not match its digest: its bytes hash to {got}"
    );
    Ok(())
}

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_LIST
}

fn is_manifest_type(t: &str) -> bool {
    t == MANIFEST_TYPE || t == DOCKER_MANIFEST
}

/// Refuses a layer fuse cannot read, naming its digest.
fn check_layer(d: &Desc) -> Result<()> {
    digest_hex(&d.digest).with_context(|| format!("layer {:?}", d.digest))?;
    let t = d.media_type.as_str();
    if t.contains("nondistributable") || t.contains("foreign") || d.urls.is_some() {
        bail!(
            "layer {} is non-distributable (mediaType {t:?}{}): its bytes are not in the image, \
             and fuse uses only the image's own blobs",
            d.digest,
            if d.urls.is_some() { ", with urls" } else { "" }
        );
    }
    ensure!(
        [LAYER_TAR, LAYER_GZIP, LAYER_ZSTD, DOCKER_LAYER].contains(&t),
        "layer {} has mediaType {t:?}: fuse reads {LAYER_TAR}, {LAYER_GZIP}, {LAYER_ZSTD} and {DOCKER_LAYER}",
        d.digest
    );
    ensure!(
        d.size <= MAX_BLOB,
        "layer {} is {} bytes: at most {MAX_BLOB}",
        d.digest,
        d.size
    );
    Ok(())
}

/// Parses a manifest or index. Its kind is its own `mediaType`, else `hint` (the descriptor
/// that pointed at it, or the registry's Content-Type), else its shape.
fn parse_doc(bytes: &[u8], hint: Option<&str>) -> Result<Parsed> {
    let doc: Doc =
        serde_json::from_slice(bytes).context("not a valid image manifest or index (JSON)")?;
    let kind = doc
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| hint.filter(|t| !t.is_empty()).map(str::to_string));
    if doc.schema_version == 1
        || kind
            .as_deref()
            .is_some_and(|k| k.starts_with(DOCKER_SCHEMA1))
    {
        bail!("a Docker schema 1 manifest (deprecated): push the image again with a current tool");
    }
    ensure!(
        doc.schema_version == 2,
        "schemaVersion {} (expected 2)",
        doc.schema_version
    );
    let index = match kind.as_deref() {
        Some(k) if is_index_type(k) => true,
        Some(k) if is_manifest_type(k) => false,
        Some(k) => bail!(
            "mediaType {k:?} is not a container image manifest or index ({MANIFEST_TYPE}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST})"
        ),
        None => doc.manifests.is_some() && doc.config.is_none(),
    };
    if index {
        let m = doc
            .manifests
            .context("an image index without \"manifests\"")?;
        ensure!(
            m.len() <= MAX_INDEX_ENTRIES,
            "an image index of {} entries: at most {MAX_INDEX_ENTRIES}",
            m.len()
        );
        for d in &m {
            digest_hex(&d.digest).context("an index entry")?;
        }
        return Ok(Parsed::Index(m));
    }
    let config = doc.config.context("an image manifest without \"config\"")?;
    let layers = doc.layers.context("an image manifest without \"layers\"")?;
    digest_hex(&config.digest).context("the config descriptor")?;
    ensure!(
        config.media_type == OCI_CONFIG || config.media_type == DOCKER_CONFIG,
        "config {} has mediaType {:?}: not a container image ({OCI_CONFIG} or {DOCKER_CONFIG}){}",
        config.digest,
        config.media_type,
        if config.media_type == super::CONFIG_TYPE {
            "; this is a fuse image: use `fuse pull`"
        } else {
            ""
        }
    );
    ensure!(
        config.size <= MAX_CONFIG_SIZE,
        "config {} is {} bytes: at most {MAX_CONFIG_SIZE}",
        config.digest,
        config.size
    );
    ensure!(
        layers.len() <= MAX_LAYERS,
        "{} layers: at most {MAX_LAYERS}",
        layers.len()
    );
    let mut total = 0u64;
    for l in &layers {
        check_layer(l)?;
        total = total.saturating_add(l.size);
    }
    ensure!(
        total <= MAX_TOTAL,
        "the layers add up to {total} bytes: at most {MAX_TOTAL}"
    );
    Ok(Parsed::Image { config, layers })
}

/// Whether an index entry is the image for linux/`arch` (any variant).
fn matches(d: &Desc, arch: &str) -> bool {
    d.platform.as_ref().is_some_and(|p| p.is_linux(arch))
}

/// The index entry for linux/`arch`, or `Err(platforms offered)`
/// ([`index::select_platform`]: a variant-less entry, or `v8` for arm64, first).
fn select_platform<'a>(entries: &'a [Desc], arch: &str) -> Result<&'a Desc, Vec<String>> {
    index::select_platform(entries, arch, |d| d.platform.as_ref(), |d| &d.digest)
}

/// The outcome of following a document down to an image for one architecture.
enum Resolved {
    Image(Box<Image>),
    /// An index on the way offers no linux/arch image: these platforms instead.
    NoPlatform(Vec<String>),
}

/// Follows `bytes` (the document with digest `digest`, of kind `hint` when it does not say)
/// through indexes to the image manifest for `arch`; `load` gives a nested document's bytes,
/// verified against its descriptor.
fn resolve(
    mut bytes: Vec<u8>,
    mut digest: String,
    hint: Option<&str>,
    arch: &str,
    mut load: impl FnMut(&Desc) -> Result<Vec<u8>>,
) -> Result<Resolved> {
    let mut hint = hint.map(str::to_string);
    for _ in 0..=MAX_DEPTH {
        let parsed =
            parse_doc(&bytes, hint.as_deref()).with_context(|| format!("manifest {digest}"))?;
        match parsed {
            Parsed::Image { config, layers } => {
                return Ok(Resolved::Image(Box::new(Image {
                    digest,
                    config,
                    layers,
                })))
            }
            Parsed::Index(entries) => {
                let d = match select_platform(&entries, arch) {
                    Ok(d) => d.clone(),
                    Err(offered) => return Ok(Resolved::NoPlatform(offered)),
                };
                ensure!(
                    d.size <= client::MAX_MANIFEST,
                    "index {digest}: manifest {} is {} bytes, at most {}",
                    d.digest,
                    d.size,
                    client::MAX_MANIFEST
                );
                bytes = load(&d).with_context(|| format!("index {digest}"))?;
                verify(&d, &bytes, "manifest")?;
                digest = d.digest.clone();
                hint = Some(d.media_type.clone());
            }
        }
    }
    bail!("indexes nested more than {MAX_DEPTH} deep")
}

fn no_platform(arch: &str, offered: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "no image for linux/{arch}: the index offers {}",
        if offered.is_empty() {
            "nothing".to_string()
        } else {
            offered.join(", ")
        }
    )
}

/// Checks the config against the manifest: JSON, the architecture (when it says one) is
/// `arch`, as many diff_ids (when it lists them) as layers.
fn check_config(config: &[u8], digest: &str, arch: &str, layers: usize) -> Result<()> {
    let v: serde_json::Value =
        serde_json::from_slice(config).with_context(|| format!("config {digest} is not JSON"))?;
    ensure!(v.is_object(), "config {digest} is not a JSON object");
    if let Some(a) = v.get("architecture").and_then(|a| a.as_str()) {
        ensure!(
            a == arch,
            "config {digest}: the image is for {a}, the fuse image for {arch}"
        );
    }
    if let Some(ids) = v.pointer("/rootfs/diff_ids").and_then(|d| d.as_array()) {
        ensure!(
            ids.len() == layers,
            "config {digest} lists {} diff_ids for {layers} layers",
            ids.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Registry

/// A registry client made at the first request (never when everything is cached).
struct Lazy<'a> {
    r: &'a Reference,
    opts: &'a Options<'a>,
    client: Option<Client>,
}

impl Lazy<'_> {
    fn get(&mut self) -> Result<&Client> {
        if self.client.is_none() {
            self.client = Some(client::connect(
                self.r,
                self.opts.insecure,
                self.opts.username,
                false,
            )?);
        }
        Ok(self.client.as_ref().expect("just made"))
    }
}

/// A manifest by digest: from the cache, else (not offline) the registry, verified, cached.
fn registry_manifest(lazy: &mut Lazy, store: &Store, d: &Desc, offline: bool) -> Result<Vec<u8>> {
    let hex = digest_hex(&d.digest)?;
    if let Some(b) = store.get(hex)? {
        return Ok(b);
    }
    ensure!(
        !offline,
        "offline: manifest {} of {} is not in the cache",
        d.digest,
        lazy.r
    );
    let (bytes, _) = lazy.get()?.get_manifest_as(&d.digest, &ACCEPT)?;
    verify(d, &bytes, "manifest")?;
    store.put(hex, &bytes)?;
    Ok(bytes)
}

fn fetch_registry(r: &Reference, store: &Store, opts: &Options) -> Result<Fetched> {
    let mut lazy = Lazy {
        r,
        opts,
        client: None,
    };
    // The top document: by digest (cache first), or by tag (the registry only).
    let (top, top_digest, hint) = match (&r.digest, &r.tag) {
        (Some(d), _) => {
            let hex = digest_hex(d)?;
            match store.get(hex)? {
                Some(b) => (b, d.clone(), None),
                None => {
                    ensure!(
                        !opts.offline,
                        "offline: manifest {d} of {r} is not in the cache"
                    );
                    let (b, ct) = lazy.get()?.get_manifest_as(d, &ACCEPT)?;
                    verify_digest(d, &b, "manifest").context("the registry's answer")?;
                    store.put(hex, &b)?;
                    (b, d.clone(), ct)
                }
            }
        }
        (None, Some(t)) => {
            ensure!(
                !opts.offline,
                "offline: the tag {t:?} can only be resolved by the registry; pin the image by digest (REGISTRY/REPO@sha256:...)"
            );
            let (b, ct) = lazy.get()?.get_manifest_as(t, &ACCEPT)?;
            let d = format!("sha256:{}", sha256_hex(&b));
            store.put(digest_hex(&d)?, &b)?;
            tracing::info!("{r} is {d}");
            (b, d, ct)
        }
        (None, None) => bail!("{r}: name a tag (:TAG) or a manifest digest (@sha256:...)"),
    };
    let offline = opts.offline;
    let image = match resolve(top, top_digest, hint.as_deref(), opts.arch, |d| {
        registry_manifest(&mut lazy, store, d, offline)
    })? {
        Resolved::Image(i) => *i,
        Resolved::NoPlatform(offered) => return Err(no_platform(opts.arch, &offered)),
    };
    // Blobs: plan first (what the cache lacks), so offline names everything missing.
    let wanted: Vec<&Desc> = std::iter::once(&image.config)
        .chain(image.layers.iter())
        .collect();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for d in &wanted {
        let hex = digest_hex(&d.digest)?;
        if seen.insert(hex) && !store.blob_path(hex).is_file() {
            missing.push(d.digest.as_str());
        }
    }
    if offline && !missing.is_empty() {
        bail!(
            "offline: {} blob(s) of {r}@{} are not in the cache: {}",
            missing.len(),
            image.digest,
            missing.join(", ")
        );
    }
    if !missing.is_empty() {
        tracing::info!("{r}: fetching {} blobs", missing.len());
    }
    let mut blob = |d: &Desc, what: &str| -> Result<Vec<u8>> {
        let hex = digest_hex(&d.digest)?;
        let cached = |store: &Store| -> Result<Option<Vec<u8>>> {
            match store.get(hex)? {
                Some(b) => {
                    verify(d, &b, what).context("the cached copy")?;
                    Ok(Some(b))
                }
                None => Ok(None),
            }
        };
        if let Some(b) = cached(store)? {
            return Ok(b);
        }
        ensure!(!offline, "offline: {what} {} is not in the cache", d.digest);
        let _lock = store.lock_blob(hex)?;
        if let Some(b) = cached(store)? {
            return Ok(b);
        }
        let b = lazy
            .get()?
            .get_blob(&d.to_descriptor())
            .with_context(|| format!("fetching {what} {}", d.digest))?;
        verify(d, &b, what).context("the registry's answer (nothing cached)")?;
        store.put(hex, &b)?;
        Ok(b)
    };
    let config = blob(&image.config, "config")?;
    check_config(&config, &image.config.digest, opts.arch, image.layers.len())?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for l in &image.layers {
        layers.push(LayerBlob {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            bytes: blob(l, "layer")?,
        });
    }
    Ok(Fetched {
        pinned: Some(format!("{}/{}@{}", r.registry, r.repository, image.digest)),
        manifest_digest: image.digest,
        config_digest: image.config.digest.clone(),
        config,
        layers,
    })
}

// ---------------------------------------------------------------------------------------
// OCI image layout

/// A blob of a layout: `blobs/sha256/<hex>` (the path made from the validated digest only),
/// a regular file of exactly the descriptor's size (checked before reading), its sha256 the
/// digest.
fn layout_blob(dir: &Path, d: &Desc, max: u64, what: &str) -> Result<Vec<u8>> {
    let hex = digest_hex(&d.digest).with_context(|| format!("{what} descriptor"))?;
    ensure!(
        d.size <= max,
        "{what} {} is {} bytes: at most {max}",
        d.digest,
        d.size
    );
    let path = dir.join("blobs").join("sha256").join(hex);
    let f = std::fs::File::open(&path)
        .with_context(|| format!("{what} {}: cannot open {}", d.digest, path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    ensure!(
        meta.is_file(),
        "{what} {}: {} is not a regular file",
        d.digest,
        path.display()
    );
    ensure!(
        meta.len() == d.size,
        "{what} {}: {} is {} bytes, its descriptor says {} (not read)",
        d.digest,
        path.display(),
        meta.len(),
        d.size
    );
    let mut bytes = Vec::with_capacity(usize::try_from(d.size).unwrap_or(0).min(64 << 20));
    f.take(d.size.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    verify(d, &bytes, what).with_context(|| format!("{}", path.display()))?;
    Ok(bytes)
}

fn fetch_layout(dir: &Path, tag: Option<&str>, arch: &str) -> Result<Fetched> {
    let marker = dir.join("oci-layout");
    let text = crate::util::fs::read_capped(&marker, 4096, "oci-layout file")
        .with_context(|| format!("{} is not an OCI image layout", dir.display()))?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LayoutFile {
        image_layout_version: String,
    }
    let lf: LayoutFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", marker.display()))?;
    ensure!(
        lf.image_layout_version == "1.0.0",
        "{}: imageLayoutVersion {:?}, fuse reads 1.0.0",
        marker.display(),
        lf.image_layout_version
    );
    let index_path = dir.join("index.json");
    let index_bytes =
        crate::util::fs::read_capped(&index_path, client::MAX_MANIFEST, "index.json")?;
    let entries = match parse_doc(&index_bytes, Some(OCI_INDEX))
        .with_context(|| format!("{}", index_path.display()))?
    {
        Parsed::Index(e) => e,
        Parsed::Image { .. } => bail!("{} is not an image index", index_path.display()),
    };
    let name = |d: &Desc| d.annotation(ANN_REF_NAME).map(str::to_string);
    let candidates: Vec<&Desc> = match tag {
        Some(t) => {
            let c: Vec<&Desc> = entries
                .iter()
                .filter(|d| d.annotation(ANN_REF_NAME) == Some(t))
                .collect();
            if c.is_empty() {
                let tags: BTreeSet<String> = entries.iter().filter_map(name).collect();
                bail!(
                    "{} names no image {t:?}; its tags: {}",
                    index_path.display(),
                    if tags.is_empty() {
                        "none".to_string()
                    } else {
                        tags.into_iter().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            c
        }
        None => entries.iter().collect(),
    };
    // Several entries (under one tag, or all of an untagged index): those of another
    // platform are left out; entries without a platform are kept (their config says).
    let candidates: Vec<&Desc> = if candidates.len() > 1 {
        candidates
            .into_iter()
            .filter(|d| d.platform.is_none() || matches(d, arch))
            .collect()
    } else {
        candidates
    };
    let load = |d: &Desc| layout_blob(dir, d, client::MAX_MANIFEST, "manifest");
    let mut found: Vec<(&Desc, Image)> = Vec::new();
    let mut offered = Vec::new();
    for d in &candidates {
        let bytes = load(d)?;
        match resolve(bytes, d.digest.clone(), Some(&d.media_type), arch, |x| {
            load(x)
        })? {
            Resolved::Image(i) => found.push((d, *i)),
            Resolved::NoPlatform(o) => offered.extend(o),
        }
    }
    let image = match found.len() {
        1 => found.pop().expect("one").1,
        0 => {
            return Err(no_platform(arch, &offered))
                .with_context(|| format!("{}", index_path.display()))
        }
        _ => bail!(
            "{} names {} images for linux/{arch} ({}): choose one with oci-layout:DIR:TAG",
            index_path.display(),
            found.len(),
            found
                .iter()
                .map(|(d, _)| name(d).unwrap_or_else(|| format!("untagged {}", d.digest)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let config = layout_blob(dir, &image.config, MAX_CONFIG_SIZE, "config")?;
    check_config(&config, &image.config.digest, arch, image.layers.len())?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for l in &image.layers {
        layers.push(LayerBlob {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            bytes: layout_blob(dir, l, MAX_BLOB, "layer")?,
        });
    }
    Ok(Fetched {
        manifest_digest: image.digest,
        config_digest: image.config.digest.clone(),
        config,
        layers,
        pinned: None,
    })
}

// ---------------------------------------------------------------------------------------
// docker-archive

/// The archive's members as read, uncompressed when gzip or zstd.
fn open_archive(file: &Path) -> Result<Box<dyn Read>> {
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let r = head.chain(f);
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            zstd::stream::read::Decoder::new(r)
                .with_context(|| format!("{}: bad zstd stream", file.display()))?,
        ),
        _ => Box::new(r),
    })
}

/// A member path, normalized (`./` and empty components dropped); absolute paths and `..`
/// refused.
fn member_path(p: &str) -> Result<String> {
    ensure!(!p.starts_with('/'), "member {p:?} has an absolute path");
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("member {p:?} has a '..' component"),
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

/// `target` of a symbolic link in member `from`, resolved inside the archive (lexically;
/// never above its root).
fn link_target(from: &str, target: &str) -> Result<String> {
    ensure!(
        !target.starts_with('/'),
        "member {from:?} links to the absolute path {target:?}"
    );
    let mut out: Vec<&str> = from.split('/').collect();
    out.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                ensure!(
                    out.pop().is_some(),
                    "member {from:?} links outside the archive ({target:?})"
                );
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

#[derive(Clone, Debug)]
enum Member {
    File(u64),
    Dir,
    Symlink(String),
    Hardlink(String),
    Other,
}

/// One image of `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Every member's kind (paths checked), and manifest.json's bytes.
fn archive_index(file: &Path) -> Result<(BTreeMap<String, Member>, Vec<u8>)> {
    let mut a = tar::Archive::new(open_archive(file)?);
    let mut members = BTreeMap::new();
    let mut manifest = None;
    for e in a.entries().context("not a tar archive")? {
        let mut e = e.context("a corrupt tar member")?;
        let raw = e.path().context("a member without a path")?;
        let raw = raw
            .to_str()
            .with_context(|| format!("member {raw:?}: not UTF-8"))?
            .to_string();
        let path = member_path(&raw)?;
        let t = e.header().entry_type();
        let link = || -> Result<String> {
            let l = e
                .link_name()
                .with_context(|| format!("member {raw:?}: bad link"))?
                .with_context(|| format!("member {raw:?}: a link without a target"))?;
            l.to_str()
                .map(str::to_string)
                .with_context(|| format!("member {raw:?}: link target not UTF-8"))
        };
        let m = match t {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File(e.size()),
            tar::EntryType::Directory => Member::Dir,
            tar::EntryType::Symlink => Member::Symlink(link()?),
            tar::EntryType::Link => Member::Hardlink(member_path(&link()?)?),
            _ => Member::Other,
        };
        if path == "manifest.json" && matches!(m, Member::File(_)) {
            let mut b = Vec::new();
            (&mut e)
                .take(client::MAX_MANIFEST + 1)
                .read_to_end(&mut b)
                .context("reading manifest.json")?;
            ensure!(
                b.len() as u64 <= client::MAX_MANIFEST,
                "manifest.json is larger than {} bytes",
                client::MAX_MANIFEST
            );
            manifest = Some(b);
        }
        if !matches!(m, Member::Dir) {
            ensure!(!members.contains_key(&path), "member {raw:?} appears twice");
        }
        members.insert(path, m);
        ensure!(
            members.len() <= MAX_MEMBERS,
            "more than {MAX_MEMBERS} members"
        );
    }
    let manifest = manifest.context("no manifest.json: not a `docker save` archive")?;
    Ok((members, manifest))
}

/// The regular file a name in manifest.json stands for, following links; with its size.
fn archive_file(members: &BTreeMap<String, Member>, name: &str) -> Result<(String, u64)> {
    let mut path = member_path(name).with_context(|| format!("manifest.json names {name:?}"))?;
    for _ in 0..=MAX_LINK_HOPS {
        match members.get(&path) {
            Some(Member::File(size)) => return Ok((path, *size)),
            Some(Member::Symlink(t)) => path = link_target(&path, t)?,
            Some(Member::Hardlink(t)) => path = t.clone(),
            Some(_) => bail!("member {path:?} (for {name:?}) is not a regular file"),
            None => bail!("manifest.json names {name:?}, which the archive does not hold"),
        }
    }
    bail!("member {name:?}: more than {MAX_LINK_HOPS} links")
}

/// The media type of an archived layer, from its first bytes (`docker save` writes plain
/// tars; `docker load` also takes compressed ones).
fn sniff_layer(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x1f, 0x8b, ..] => LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => LAYER_ZSTD,
        _ => LAYER_TAR,
    }
}

fn fetch_archive(file: &Path, arch: &str) -> Result<Fetched> {
    let (members, manifest) = archive_index(file)?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&manifest).context("manifest.json is not a docker save manifest")?;
    let img = match images.as_slice() {
        [one] => one,
        _ => bail!(
            "manifest.json holds {} images ({}): fuse takes an archive of exactly one",
            images.len(),
            images
                .iter()
                .map(|i| match &i.repo_tags {
                    Some(t) if !t.is_empty() => t.join(" "),
                    _ => format!("untagged {}", i.config),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    ensure!(
        img.layers.len() <= MAX_LAYERS,
        "{} layers: at most {MAX_LAYERS}",
        img.layers.len()
    );
    let (config_path, config_size) = archive_file(&members, &img.config)?;
    ensure!(
        config_size <= MAX_CONFIG_SIZE,
        "config {config_path:?} is {config_size} bytes: at most {MAX_CONFIG_SIZE}"
    );
    let mut wanted: BTreeMap<String, u64> = BTreeMap::from([(config_path.clone(), config_size)]);
    let mut layer_paths = Vec::new();
    let mut total = 0u64;
    for l in &img.layers {
        let (p, size) = archive_file(&members, l)?;
        ensure!(
            size <= MAX_BLOB,
            "layer {p:?} is {size} bytes: at most {MAX_BLOB}"
        );
        total = total.saturating_add(size);
        wanted.insert(p.clone(), size);
        layer_paths.push(p);
    }
    ensure!(
        total <= MAX_TOTAL,
        "the layers add up to {total} bytes: at most {MAX_TOTAL}"
    );
    // Second pass: the wanted members' bytes (their sizes as the first pass saw them).
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(open_archive(file)?);
    for e in a.entries().context("not a tar archive")? {
        let mut e = e.context("a corrupt tar member")?;
        let path = member_path(
            e.path()
                .context("a member without a path")?
                .to_str()
                .context("not UTF-8")?,
        )?;
        let Some(&size) = wanted.get(&path) else {
            continue;
        };
        if !matches!(
            e.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) || bytes.contains_key(&path)
        {
            continue;
        }
        let mut b = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
        (&mut e)
            .take(size.saturating_add(1))
            .read_to_end(&mut b)
            .with_context(|| format!("reading member {path:?}"))?;
        ensure!(
            b.len() as u64 == size,
            "member {path:?}: {} bytes read, {size} expected",
            b.len()
        );
        bytes.insert(path, b);
    }
    // Each member's bytes moved out at its last use (a layer named twice is copied once).
    let mut uses: BTreeMap<&str, usize> = BTreeMap::new();
    for p in std::iter::once(&config_path).chain(layer_paths.iter()) {
        *uses.entry(p.as_str()).or_default() += 1;
    }
    let mut take = |p: &str| -> Result<Vec<u8>> {
        let n = uses.get_mut(p).context("member not planned")?;
        *n -= 1;
        let b = if *n == 0 {
            bytes.remove(p)
        } else {
            bytes.get(p).cloned()
        };
        b.with_context(|| format!("member {p:?} changed between two reads of the archive"))
    };
    let config = take(&config_path)?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    check_config(&config, &config_digest, arch, layer_paths.len())
        .with_context(|| format!("member {config_path:?}"))?;
    let mut layers = Vec::with_capacity(layer_paths.len());
    for p in &layer_paths {
        let b = take(p)?;
        layers.push(LayerBlob {
            digest: format!("sha256:{}", sha256_hex(&b)),
            media_type: sniff_layer(&b).to_string(),
            bytes: b,
        });
    }
    Ok(Fetched {
        manifest_digest: config_digest.clone(),
        config_digest,
        config,
        layers,
        pinned: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", sha256_hex(b))
    }

    /// A one-file layer tar, gzip-compressed when `gz`.
    fn layer(name: &str, data: &[u8], gz: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        let tar = b.into_inner().unwrap();
        if !gz {
            return tar;
        }
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    }

    fn config(arch: &str, layers: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/app"]},
            "rootfs": {"type": "layers", "diff_ids": ids}
        }))
        .unwrap()
    }

    fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
    }

    /// An OCI layout under construction.
    struct Layout {
        dir: tempfile::TempDir,
        index: Vec<serde_json::Value>,
    }

    impl Layout {
        fn new() -> Layout {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
            std::fs::write(
                dir.path().join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .unwrap();
            Layout { dir, index: vec![] }
        }

        fn blob(&self, bytes: &[u8]) -> String {
            let d = digest(bytes);
            std::fs::write(self.dir.path().join("blobs/sha256").join(&d[7..]), bytes).unwrap();
            d
        }

        /// An image (one gzip layer holding `app` = `content`): its manifest bytes.
        fn image(&self, arch: &str, content: &[u8]) -> Vec<u8> {
            let l = layer("app", content, true);
            let plain = layer("app", content, false);
            let c = config(arch, &[&plain]);
            self.blob(&l);
            self.blob(&c);
            let m = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": desc(OCI_CONFIG, &c),
                "layers": [desc(LAYER_GZIP, &l)]
            }))
            .unwrap();
            self.blob(&m);
            m
        }

        fn add(&mut self, mut d: serde_json::Value, tag: Option<&str>) {
            if let Some(t) = tag {
                d["annotations"] = json!({ ANN_REF_NAME: t });
            }
            self.index.push(d);
        }

        fn source(&self, tag: Option<&str>) -> Source {
            std::fs::write(
                self.dir.path().join("index.json"),
                serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": self.index})).unwrap(),
            )
            .unwrap();
            Source::Layout {
                dir: self.dir.path().to_path_buf(),
                tag: tag.map(str::to_string),
            }
        }
    }

    fn opts(arch: &str) -> Options<'_> {
        Options {
            arch,
            insecure: false,
            username: None,
            offline: true,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn err(r: Result<Fetched>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn cache_is_empty(s: &Store) -> bool {
        std::fs::read_dir(s.root().join("sha256")).unwrap().count() == 0
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            parse_source("oci-layout:/tmp/img:1.0").unwrap(),
            Source::Layout {
                dir: "/tmp/img".into(),
                tag: Some("1.0".into())
            }
        );
        assert_eq!(
            parse_source("oci-layout:./out").unwrap(),
            Source::Layout {
                dir: "./out".into(),
                tag: None
            }
        );
        // What follows the last colon is not a tag: part of the directory.
        assert_eq!(
            parse_source("oci-layout:/tmp/a:b/c").unwrap(),
            Source::Layout {
                dir: "/tmp/a:b/c".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_source("docker-archive:/tmp/x:y.tar").unwrap(),
            Source::DockerArchive("/tmp/x:y.tar".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        match parse_source(&format!("127.0.0.1:5000/team/app@{d}")).unwrap() {
            Source::Registry(r) => {
                assert_eq!(r.digest.as_deref(), Some(d.as_str()));
                assert_eq!(r.repository, "team/app");
            }
            s => panic!("{s:?}"),
        }
        for bad in [
            "oci-layout:",
            "oci-layout::tag",
            "docker-archive:",
            "app:1.0",
        ] {
            let e = format!("{:#}", parse_source(bad).unwrap_err());
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_layout_index_of_two_platforms_gives_the_image_for_the_arch() {
        let mut l = Layout::new();
        let amd = l.image("amd64", b"amd64 app");
        let arm = l.image("arm64", b"arm64 app");
        let mut da = desc(MANIFEST_TYPE, &amd);
        da["platform"] = json!({"architecture": "amd64", "os": "linux"});
        let mut db = desc(MANIFEST_TYPE, &arm);
        db["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
        let nested = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [db, da]
        }))
        .unwrap();
        l.blob(&nested);
        l.add(desc(OCI_INDEX, &nested), Some("1.0"));
        let (_d, s) = store();
        for (arch, m, content) in [("amd64", &amd, b"amd64 app"), ("arm64", &arm, b"arm64 app")] {
            for tag in [None, Some("1.0")] {
                let f = fetch(&l.source(tag), &s, &opts(arch)).unwrap();
                assert_eq!(f.manifest_digest, digest(m));
                assert_eq!(f.layers.len(), 1);
                assert_eq!(f.layers[0].bytes, layer("app", content, true));
                assert_eq!(f.layers[0].media_type, LAYER_GZIP);
                assert_eq!(f.layers[0].digest, digest(&f.layers[0].bytes));
                assert_eq!(f.config_digest, digest(&f.config));
                let c: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
                assert_eq!(c["architecture"], arch);
                assert_eq!(f.pinned, None);
            }
        }
        let e = err(fetch(&l.source(None), &s, &opts("riscv64")));
        assert!(
            e.contains("linux/riscv64") && e.contains("linux/arm64/v8, linux/amd64"),
            "{e}"
        );
        // Nothing was cached from a local layout.
        assert!(cache_is_empty(&s));
    }

    #[test]
    fn a_layout_tag_selects_the_image_and_an_unknown_tag_lists_the_tags() {
        let mut l = Layout::new();
        let a = l.image("amd64", b"A");
        let b = l.image("amd64", b"B");
        l.add(desc(MANIFEST_TYPE, &a), Some("a"));
        l.add(desc(MANIFEST_TYPE, &b), Some("b"));
        let (_d, s) = store();
        let f = fetch(&l.source(Some("b")), &s, &opts("amd64")).unwrap();
        assert_eq!(f.manifest_digest, digest(&b));
        assert_eq!(f.layers[0].bytes, layer("app", b"B", true));
        let f = fetch(&l.source(Some("a")), &s, &opts("amd64")).unwrap();
        assert_eq!(f.manifest_digest, digest(&a));
        let e = err(fetch(&l.source(Some("c")), &s, &opts("amd64")));
        assert!(e.contains("\"c\"") && e.contains("a, b"), "{e}");
        // No tag: two images, the tags named.
        let e = err(fetch(&l.source(None), &s, &opts("amd64")));
        assert!(e.contains("2 images") && e.contains("a, b"), "{e}");
        // A single-arch image of another architecture is refused by its config.
        let mut l = Layout::new();
        let arm = l.image("arm64", b"A");
        l.add(desc(MANIFEST_TYPE, &arm), None);
        let e = err(fetch(&l.source(None), &s, &opts("amd64")));
        assert!(e.contains("for arm64") && e.contains("for amd64"), "{e}");
    }

    #[test]
    fn a_layout_blob_that_does_not_match_its_digest_or_size_is_refused() {
        let mut l = Layout::new();
        let m = l.image("amd64", b"app");
        l.add(desc(MANIFEST_TYPE, &m), None);
        let src = l.source(None);
        let (_d, s) = store();
        fetch(&src, &s, &opts("amd64")).unwrap();
        let man: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let ld = man["layers"][0]["digest"].as_str().unwrap().to_string();
        let path = l.dir.path().join("blobs/sha256").join(&ld[7..]);
        let mut bytes = std::fs::read(&path).unwrap();
        // Same size, one byte changed.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = err(fetch(&src, &s, &opts("amd64")));
        assert!(e.contains(&ld) && e.contains("does not match"), "{e}");
        // Longer than its descriptor: refused from its size, before reading.
        bytes[last] ^= 1;
        bytes.extend_from_slice(b"more");
        std::fs::write(&path, &bytes).unwrap();
        let e = err(fetch(&src, &s, &opts("amd64")));
        assert!(e.contains(&ld) && e.contains("not read"), "{e}");
        assert!(cache_is_empty(&s));
    }

    #[test]
    fn a_layout_digest_never_becomes_a_path_outside_blobs() {
        let mut l = Layout::new();
        l.add(
            json!({"mediaType": MANIFEST_TYPE, "digest": "sha256:../../../etc/passwd", "size": 10}),
            None,
        );
        let (_d, s) = store();
        let e = err(fetch(&l.source(None), &s, &opts("amd64")));
        assert!(
            e.contains("../../../etc/passwd") && e.contains("sha256:<64"),
            "{e}"
        );
        let mut l = Layout::new();
        l.add(
            json!({"mediaType": MANIFEST_TYPE, "digest": format!("sha512:{}", "a".repeat(128)), "size": 10}),
            None,
        );
        let e = err(fetch(&l.source(None), &s, &opts("amd64")));
        assert!(e.contains("only sha256"), "{e}");
    }

    #[test]
    fn foreign_layers_schema1_and_fuse_artifacts_are_refused() {
        let c = config("amd64", &[]);
        let l = b"layer";
        let m = |cfg_type: &str, layer_type: &str| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": desc(cfg_type, &c), "layers": [desc(layer_type, l)]
            }))
            .unwrap()
        };
        let msg = |b: Vec<u8>| match parse_doc(&b, None) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        };
        let e = msg(m(
            OCI_CONFIG,
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ));
        assert!(
            e.contains("non-distributable") && e.contains(&digest(l)),
            "{e}"
        );
        let e = msg(m(
            DOCKER_CONFIG,
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ));
        assert!(e.contains("non-distributable"), "{e}");
        let e = msg(m(OCI_CONFIG, "application/vnd.fuse.image.chunk.v1"));
        assert!(e.contains("mediaType") && e.contains(&digest(l)), "{e}");
        let e = msg(m(super::super::CONFIG_TYPE, LAYER_TAR));
        assert!(e.contains("fuse pull"), "{e}");
        let e = msg(br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#.to_vec());
        assert!(e.contains("schema 1"), "{e}");
        // Docker's own types are read.
        assert!(matches!(
            parse_doc(&m(DOCKER_CONFIG, DOCKER_LAYER), Some(DOCKER_MANIFEST)),
            Ok(Parsed::Image { .. })
        ));
    }

    /// An archive member: path, bytes (a regular file) or symlink target.
    type Entry<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>);

    /// A tar archive of members: raw header names, so hostile paths can be written.
    fn archive(members: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, link) in members {
            let mut h = tar::Header::new_old();
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_mode(0o644);
            match (data, link) {
                (_, Some(t)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, std::io::empty()).unwrap();
                }
                (Some(d), None) => {
                    h.set_size(d.len() as u64);
                    h.set_cksum();
                    b.append(&h, *d).unwrap();
                }
                (None, None) => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    fn write_archive(dir: &Path, name: &str, bytes: &[u8]) -> Source {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        Source::DockerArchive(p)
    }

    #[test]
    fn a_docker_archive_gives_its_config_digest_and_layer_tars() {
        let l1 = layer("etc/os-release", b"ID=test\n", false);
        let l2 = layer("app", b"the app", false);
        let c = config("amd64", &[&l1, &l2, &l1]);
        let ch = sha256_hex(&c);
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{ch}.json"),
            "RepoTags": ["example/app:1"],
            "Layers": ["aaa/layer.tar", "./bbb/layer.tar", "ccc/layer.tar"]
        }]))
        .unwrap();
        let tar = archive(&[
            ("aaa/layer.tar", Some(&l1), None),
            ("bbb/layer.tar", Some(&l2), None),
            // docker save links a repeated layer to its first copy.
            ("ccc/layer.tar", None, Some("../aaa/layer.tar")),
            (&format!("{ch}.json"), Some(&c), None),
            ("manifest.json", Some(&manifest), None),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let (_d, s) = store();
        let check = |f: Fetched| {
            assert_eq!(f.config_digest, digest(&c));
            assert_eq!(f.manifest_digest, f.config_digest);
            assert_eq!(f.config, c);
            assert_eq!(f.pinned, None);
            let got: Vec<(&str, &[u8], &str)> = f
                .layers
                .iter()
                .map(|l| (l.digest.as_str(), l.bytes.as_slice(), l.media_type.as_str()))
                .collect();
            let (d1, d2) = (digest(&l1), digest(&l2));
            assert_eq!(
                got,
                [
                    (d1.as_str(), l1.as_slice(), LAYER_TAR),
                    (d2.as_str(), l2.as_slice(), LAYER_TAR),
                    (d1.as_str(), l1.as_slice(), LAYER_TAR)
                ]
            );
        };
        check(
            fetch(
                &write_archive(dir.path(), "a.tar", &tar),
                &s,
                &opts("amd64"),
            )
            .unwrap(),
        );
        // The same archive gzip-compressed.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        let gz = e.finish().unwrap();
        check(
            fetch(
                &write_archive(dir.path(), "a.tar.gz", &gz),
                &s,
                &opts("amd64"),
            )
            .unwrap(),
        );
        assert!(cache_is_empty(&s));
        // Another architecture than the image's.
        let e = err(fetch(
            &write_archive(dir.path(), "a.tar", &tar),
            &s,
            &opts("arm64"),
        ));
        assert!(e.contains("for amd64"), "{e}");
    }

    #[test]
    fn hostile_docker_archives_are_refused() {
        let l1 = layer("app", b"x", false);
        let c = config("amd64", &[&l1]);
        let m = |layers: &[&str]| {
            serde_json::to_vec(
                &json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": layers}]),
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (_d, s) = store();
        let run = |name: &str, members: &[Entry<'_>]| {
            err(fetch(
                &write_archive(dir.path(), name, &archive(members)),
                &s,
                &opts("amd64"),
            ))
        };
        let good = m(&["l/layer.tar"]);
        // A '..' member, even one the manifest does not use.
        let e = run(
            "dotdot.tar",
            &[
                ("l/layer.tar", Some(&l1), None),
                ("c.json", Some(&c), None),
                ("../evil", Some(b"x"), None),
                ("manifest.json", Some(&good), None),
            ],
        );
        assert!(e.contains("../evil") && e.contains("'..'"), "{e}");
        // An absolute member.
        let e = run(
            "abs.tar",
            &[
                ("/etc/x", Some(b"x"), None),
                ("manifest.json", Some(&good), None),
            ],
        );
        assert!(e.contains("/etc/x") && e.contains("absolute"), "{e}");
        // A manifest naming a path out of the archive.
        let e = run(
            "mdotdot.tar",
            &[
                ("c.json", Some(&c), None),
                ("manifest.json", Some(&m(&["../../etc/passwd"])), None),
            ],
        );
        assert!(e.contains("../../etc/passwd"), "{e}");
        // A layer that is a symlink out of the archive.
        let e = run(
            "link.tar",
            &[
                ("l/layer.tar", None, Some("../../etc/passwd")),
                ("c.json", Some(&c), None),
                ("manifest.json", Some(&good), None),
            ],
        );
        assert!(e.contains("outside the archive"), "{e}");
        // Two images: their tags listed.
        let two = serde_json::to_vec(&json!([
            {"Config": "c.json", "RepoTags": ["a:1"], "Layers": []},
            {"Config": "c.json", "RepoTags": ["b:2"], "Layers": []}
        ]))
        .unwrap();
        let e = run(
            "two.tar",
            &[
                ("c.json", Some(&c), None),
                ("manifest.json", Some(&two), None),
            ],
        );
        assert!(e.contains("2 images") && e.contains("a:1, b:2"), "{e}");
        // A missing layer.
        let e = run(
            "missing.tar",
            &[
                ("c.json", Some(&c), None),
                ("manifest.json", Some(&good), None),
            ],
        );
        assert!(
            e.contains("l/layer.tar") && e.contains("does not hold"),
            "{e}"
        );
        assert!(cache_is_empty(&s));
    }

    /// A registry reference to a port where nothing listens: any connection attempt fails.
    fn dead_registry(d: &str) -> Source {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        parse_source(&format!("127.0.0.1:{port}/team/app@{d}")).unwrap()
    }

    #[test]
    fn a_registry_image_pinned_by_digest_and_cached_needs_no_registry() {
        let l = layer("app", b"cached", true);
        let plain = layer("app", b"cached", false);
        let c = config("amd64", &[&plain]);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": desc(DOCKER_CONFIG, &c), "layers": [desc(DOCKER_LAYER, &l)]
        }))
        .unwrap();
        let mut entry = desc(DOCKER_MANIFEST, &m);
        entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
        let list = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [entry]
        }))
        .unwrap();
        let (_d, s) = store();
        // Offline and nothing cached: the missing manifest is named.
        let src = dead_registry(&digest(&list));
        let e = err(fetch(&src, &s, &opts("amd64")));
        assert!(e.contains("offline") && e.contains(&digest(&list)), "{e}");
        for b in [&list, &m, &c] {
            s.put(&sha256_hex(b), b).unwrap();
        }
        // The layer missing: named too.
        let e = err(fetch(&src, &s, &opts("amd64")));
        assert!(e.contains("offline") && e.contains(&digest(&l)), "{e}");
        s.put(&sha256_hex(&l), &l).unwrap();
        // Everything cached: no connection even when allowed (nothing listens there).
        for offline in [true, false] {
            let o = Options {
                offline,
                ..opts("amd64")
            };
            let f = fetch(&src, &s, &o).unwrap();
            assert_eq!(f.manifest_digest, digest(&m));
            assert_eq!(f.config_digest, digest(&c));
            assert_eq!(f.layers[0].bytes, l);
            assert_eq!(f.layers[0].media_type, DOCKER_LAYER);
            let Source::Registry(r) = &src else { panic!() };
            assert_eq!(
                f.pinned.unwrap(),
                format!("{}/team/app@{}", r.registry, digest(&m))
            );
        }
        // A tag offline: refused without asking.
        let tag = parse_source("127.0.0.1:9/team/app:1").unwrap();
        let e = err(fetch(&tag, &s, &opts("amd64")));
        assert!(e.contains("offline") && e.contains("pin"), "{e}");
        // A corrupted cache entry is an error, not a silent refetch.
        std::fs::write(s.blob_path(&sha256_hex(&l)), b"garbage").unwrap();
        let e = err(fetch(&src, &s, &opts("amd64")));
        assert!(e.contains("corrupt") && e.contains(&sha256_hex(&l)), "{e}");
    }
}
