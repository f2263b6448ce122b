//! OCI image indexes: the platform of an index entry and the choice of one entry by
//! architecture (shared with container image sources, [`super::source`]), and the index
//! `fuse push` writes for one image in several architectures: one entry per image manifest,
//! each with its `platform` (`linux`/`amd64`, `linux`/`arm64`), read back by `fuse pull`.
//!
//! The index is a pure function of its images: entries sorted by architecture, so the same
//! set of images gives the same index digest whatever the order they were named in.

use super::{Artifact, ANN_DIGEST, ANN_TITLE, ANN_VERSION, ARTIFACT_TYPE, MANIFEST_TYPE};
use crate::arch::Arch;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An OCI image index's media type.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Most entries in one image index.
pub const MAX_INDEX_ENTRIES: usize = 1024;

/// The operating system of every fuse image (OCI's `platform.os`).
pub const OS: &str = "linux";

/// An index entry's `platform` (fields fuse does not use, such as `os.version`, ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux`/`arch`, no variant: what a fuse image of `arch` is.
    pub fn linux(arch: Arch) -> Platform {
        Platform {
            architecture: arch.name().to_string(),
            os: OS.to_string(),
            variant: None,
        }
    }

    /// Whether this is linux/`arch` (any variant).
    pub fn is_linux(&self, arch: &str) -> bool {
        self.os == OS && self.architecture == arch
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The entry of `entries` for linux/`arch`, or `Err(the platforms offered)`, each entry's
/// platform given by `platform` and its digest (named when it has no platform) by `digest`.
/// Several matching entries (variants): the first without a variant (or `v8` for arm64),
/// else the first.
pub fn select_platform<'a, T>(
    entries: &'a [T],
    arch: &str,
    platform: impl Fn(&T) -> Option<&Platform>,
    digest: impl Fn(&T) -> &str,
) -> Result<&'a T, Vec<String>> {
    let found: Vec<&T> = entries
        .iter()
        .filter(|&d| platform(d).is_some_and(|p| p.is_linux(arch)))
        .collect();
    let plain = found.iter().find(|&&d| {
        let v = platform(d).and_then(|p| p.variant.as_deref());
        v.is_none() || (arch == "arm64" && v == Some("v8"))
    });
    match plain.or(found.first()) {
        Some(d) => Ok(d),
        None => Err(entries
            .iter()
            .map(|d| match platform(d) {
                Some(p) => p.to_string(),
                None => format!("(no platform: {})", digest(d)),
            })
            .collect()),
    }
}

/// One entry of an index: a descriptor of a manifest with its platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (fields other tools add are ignored when reading).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Entry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Refuses a set of images that cannot be one index: fewer than two, different names or
/// versions, or two of one architecture. `label` names image `i` in the messages.
pub fn check_set(arts: &[&Artifact], label: impl Fn(usize) -> String) -> Result<()> {
    ensure!(
        arts.len() >= 2,
        "an index needs two images or more (one per architecture)"
    );
    let first = &arts[0].meta;
    let mut seen: BTreeMap<Arch, usize> = BTreeMap::new();
    for (i, a) in arts.iter().enumerate() {
        let m = &a.meta;
        if m.name != first.name || m.version != first.version {
            bail!(
                "{} is {} {} and {} is {} {}: the images of one index must have the same name \
                 and version (one image per architecture)",
                label(0),
                first.name,
                first.version,
                label(i),
                m.name,
                m.version
            );
        }
        if let Some(j) = seen.insert(m.arch, i) {
            bail!(
                "{} and {} are both {} images: an index holds one image per architecture",
                label(j),
                label(i),
                m.arch.name()
            );
        }
    }
    Ok(())
}

/// The index of `arts` (checked by [`check_set`]): one entry per image manifest, sorted by
/// architecture, each with `platform` linux/arch, the fuse artifact type and the image
/// digest; the images' name and version as the index's annotations. Returns the bytes and
/// their digest. Pure.
pub fn build(arts: &[&Artifact]) -> Result<(Index, Vec<u8>, String)> {
    check_set(arts, |i| format!("image {}", i + 1))?;
    let mut sorted: Vec<&Artifact> = arts.to_vec();
    sorted.sort_by_key(|a| a.meta.arch);
    let index = Index {
        schema_version: 2,
        media_type: Some(INDEX_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        manifests: sorted
            .iter()
            .map(|a| Entry {
                media_type: MANIFEST_TYPE.into(),
                digest: a.manifest_digest.clone(),
                size: a.manifest_bytes.len() as u64,
                artifact_type: Some(ARTIFACT_TYPE.into()),
                platform: Some(Platform::linux(a.meta.arch)),
                annotations: BTreeMap::from([(ANN_DIGEST.to_string(), a.image_digest.clone())]),
            })
            .collect(),
        annotations: BTreeMap::from([
            (ANN_TITLE.to_string(), sorted[0].meta.name.clone()),
            (ANN_VERSION.to_string(), sorted[0].meta.version.clone()),
        ]),
    };
    let bytes = serde_json::to_vec(&index)?;
    let digest = format!("sha256:{}", crate::digest::sha256_hex(&bytes));
    Ok((index, bytes, digest))
}

/// Whether a document from a registry is an image index: its own `mediaType`, else the
/// `Content-Type` it came with, else its shape (`manifests` and no `config`).
pub fn is_index(bytes: &[u8], content_type: Option<&str>) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        config: Option<serde::de::IgnoredAny>,
    }
    let Ok(s) = serde_json::from_slice::<Shape>(bytes) else {
        return false;
    };
    match s
        .media_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .or(content_type)
    {
        Some(t) => t == INDEX_TYPE,
        None => s.manifests.is_some() && s.config.is_none(),
    }
}

/// Parses an image index: schemaVersion 2, the index media type when it names one, at most
/// [`MAX_INDEX_ENTRIES`] entries, each digest `sha256:<64 hex>`.
pub fn parse(bytes: &[u8]) -> Result<Index> {
    let ix: Index = serde_json::from_slice(bytes).context("the image index is not valid JSON")?;
    ensure!(
        ix.schema_version == 2,
        "image index schemaVersion {} is not 2",
        ix.schema_version
    );
    if let Some(t) = ix.media_type.as_deref().filter(|t| !t.is_empty()) {
        ensure!(t == INDEX_TYPE, "mediaType {t:?} is not {INDEX_TYPE}");
    }
    ensure!(
        ix.manifests.len() <= MAX_INDEX_ENTRIES,
        "an image index of {} entries: at most {MAX_INDEX_ENTRIES}",
        ix.manifests.len()
    );
    for e in &ix.manifests {
        ensure!(
            crate::image_store::is_full_digest(&e.digest),
            "index entry {:?} is not a sha256:<64 hex> digest",
            e.digest
        );
    }
    Ok(ix)
}

/// The entry of a fuse index to pull: linux/`want`; without `want`, the only entry when
/// there is one, else the host's architecture. An index without it is an error listing the
/// platforms it has. The entry must be an image manifest (fuse indexes are not nested).
pub fn pick(ix: &Index, want: Option<Arch>) -> Result<&Entry> {
    let e = match (want, ix.manifests.as_slice()) {
        (_, []) => bail!("the image index has no entries"),
        (None, [only]) => only,
        (want, entries) => {
            let arch = want.unwrap_or_else(Arch::host);
            select_platform(entries, arch.name(), |e| e.platform.as_ref(), |e| &e.digest).map_err(
                |offered| {
                    anyhow::anyhow!(
                        "the image index has no image for {OS}/{}: it has {}{}",
                        arch.name(),
                        offered.join(", "),
                        if want.is_none() {
                            " (this host's architecture was asked for; choose with --arch)"
                        } else {
                            ""
                        }
                    )
                },
            )?
        }
    };
    ensure!(
        e.media_type == MANIFEST_TYPE,
        "index entry {} has mediaType {:?}, not an image manifest ({MANIFEST_TYPE})",
        e.digest,
        e.media_type
    );
    ensure!(
        e.size <= super::client::MAX_MANIFEST,
        "index entry {} is {} bytes: a manifest is at most {}",
        e.digest,
        e.size,
        super::client::MAX_MANIFEST
    );
    Ok(e)
}

/// The architecture an index entry's platform names, when it is one fuse knows.
pub fn entry_arch(e: &Entry) -> Option<Arch> {
    e.platform
        .as_ref()
        .filter(|p| p.os == OS)
        .and_then(|p| Arch::parse(&p.architecture).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Descriptor;

    /// An artifact with just what the index uses (no disk behind it).
    fn art(name: &str, version: &str, arch: Arch, tag: u8) -> Artifact {
        let pkg = serde_json::json!({"name": "p", "version": "1", "arch": "all", "sha256": "s"});
        let meta: crate::disk::ImageMeta = serde_json::from_value(serde_json::json!({
            "format": 1, "name": name, "version": version, "arch": arch,
            "inputs": {"manifest_sha256": "m", "app_sha256": "a", "fuse_version": "0",
                       "source_epoch": 0, "distribution": "d", "archive_date": null},
            "kernel": {"package": pkg, "release": "r", "cmdline": "", "modules": []},
            "boot": {"stub": pkg, "uki_sha256": "u", "uki_size": 0, "initramfs_sha256": "i",
                     "initramfs_size": 0, "esp_size": 0},
            "app": {"kind": "binary", "argv": [], "workdir": "/", "env": {}, "uid": 0,
                    "gid": 0, "port": 1},
            "layers": []
        }))
        .unwrap();
        let manifest_bytes = format!("{{\"manifest\":{tag}}}").into_bytes();
        Artifact {
            image_digest: format!("sha256:{}", format!("{tag:02x}").repeat(32)),
            meta,
            config: vec![],
            manifest: crate::oci::Manifest {
                schema_version: 2,
                media_type: Some(MANIFEST_TYPE.into()),
                artifact_type: Some(ARTIFACT_TYPE.into()),
                config: Descriptor {
                    media_type: crate::oci::CONFIG_TYPE.into(),
                    digest: format!("sha256:{}", "0".repeat(64)),
                    size: 0,
                    annotations: BTreeMap::new(),
                },
                layers: vec![],
                annotations: BTreeMap::new(),
            },
            manifest_digest: format!("sha256:{}", crate::digest::sha256_hex(&manifest_bytes)),
            manifest_bytes,
            blobs: vec![],
        }
    }

    #[test]
    fn the_index_has_one_platform_entry_per_image_sorted_and_reads_back() {
        let amd = art("hello", "1.0.0", Arch::Amd64, 1);
        let arm = art("hello", "1.0.0", Arch::Arm64, 2);
        let (ix, bytes, digest) = build(&[&arm, &amd]).unwrap();
        let (_, bytes2, digest2) = build(&[&amd, &arm]).unwrap();
        assert_eq!((&bytes, &digest), (&bytes2, &digest2), "order-independent");
        assert_eq!(
            digest,
            format!("sha256:{}", crate::digest::sha256_hex(&bytes))
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mediaType"], INDEX_TYPE);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        let m = v["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            m[1]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux"})
        );
        assert_eq!(m[0]["digest"], amd.manifest_digest.as_str());
        assert_eq!(m[1]["digest"], arm.manifest_digest.as_str());
        assert_eq!(m[1]["size"], arm.manifest_bytes.len() as u64);
        assert_eq!(m[1]["mediaType"], MANIFEST_TYPE);
        assert_eq!(m[1]["annotations"][ANN_DIGEST], arm.image_digest.as_str());
        assert_eq!(v["annotations"][ANN_TITLE], "hello");
        assert_eq!(v["annotations"][ANN_VERSION], "1.0.0");

        assert!(is_index(&bytes, None));
        assert!(!is_index(&amd.manifest_bytes, Some(MANIFEST_TYPE)));
        let back = parse(&bytes).unwrap();
        assert_eq!(back, ix);
        assert_eq!(
            pick(&back, Some(Arch::Arm64)).unwrap().digest,
            arm.manifest_digest
        );
        assert_eq!(
            pick(&back, Some(Arch::Amd64)).unwrap().digest,
            amd.manifest_digest
        );
        let host = pick(&back, None).unwrap();
        assert_eq!(
            entry_arch(host),
            Some(Arch::host()),
            "no --arch: the host's"
        );
    }

    #[test]
    fn picking_a_missing_architecture_lists_the_platforms_and_one_entry_is_taken_as_is() {
        let amd = art("hello", "1.0.0", Arch::Amd64, 1);
        let mut ix = build(&[&amd, &art("hello", "1.0.0", Arch::Arm64, 2)])
            .unwrap()
            .0;
        ix.manifests[1].platform = Some(Platform {
            architecture: "riscv64".into(),
            os: OS.into(),
            variant: None,
        });
        let e = format!("{:#}", pick(&ix, Some(Arch::Arm64)).unwrap_err());
        assert!(
            e.contains("no image for linux/arm64") && e.contains("linux/amd64, linux/riscv64"),
            "{e}"
        );
        // One entry, no --arch: that one, whatever its platform.
        ix.manifests.remove(0);
        assert_eq!(
            pick(&ix, None).unwrap().digest,
            ix.manifests[0].digest,
            "the only entry"
        );
        assert!(pick(&ix, Some(Arch::Amd64)).is_err(), "--arch still checks");
        // Not a manifest (a nested index): refused.
        ix.manifests[0].media_type = INDEX_TYPE.into();
        let e = format!("{:#}", pick(&ix, None).unwrap_err());
        assert!(e.contains("not an image manifest"), "{e}");
        ix.manifests.clear();
        assert!(pick(&ix, None).is_err());
    }

    #[test]
    fn an_index_needs_one_name_and_version_and_one_image_per_architecture() {
        let a = art("hello", "1.0.0", Arch::Amd64, 1);
        let e = format!(
            "{:#}",
            build(&[&a, &art("hello", "1.0.0", Arch::Amd64, 2)]).unwrap_err()
        );
        assert!(
            e.contains("both amd64 images") && e.contains("one image per architecture"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            build(&[&a, &art("hello", "1.1.0", Arch::Arm64, 2)]).unwrap_err()
        );
        assert!(
            e.contains("same name and version") && e.contains("1.1.0"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            build(&[&a, &art("other", "1.0.0", Arch::Arm64, 2)]).unwrap_err()
        );
        assert!(e.contains("same name and version"), "{e}");
        assert!(build(&[&a]).is_err());
    }

    #[test]
    fn parse_refuses_bad_indexes() {
        let ok = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []});
        assert!(parse(ok.to_string().as_bytes()).is_ok());
        for bad in [
            serde_json::json!({"schemaVersion": 1, "manifests": []}),
            serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "manifests": []}),
            serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MANIFEST_TYPE, "digest": "sha256:../../x", "size": 1}]}),
            serde_json::json!({"schemaVersion": 2}),
        ] {
            assert!(parse(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<serde_json::Value> = (0..=MAX_INDEX_ENTRIES)
            .map(|_| serde_json::json!({"mediaType": MANIFEST_TYPE, "digest": format!("sha256:{}", "a".repeat(64)), "size": 1}))
            .collect();
        let big = serde_json::json!({"schemaVersion": 2, "manifests": many});
        assert!(parse(big.to_string().as_bytes()).is_err());
        assert!(!is_index(b"not json", Some(INDEX_TYPE)));
        assert!(is_index(b"{\"schemaVersion\":2}", Some(INDEX_TYPE)));
    }
}
