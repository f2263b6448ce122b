//! Assemble the disk: one squashfs per layer, the initramfs, the UKI, the ESP, the GPT disk;
//! and the image's metadata (image.json) and identity (sha256 of the raw disk). Pure.

use crate::digest::sha256_hex;
use crate::format::{cpio, fat, gpt, squashfs, uki, verity};
use crate::layers::{AppPlan, Layer, PackageRef};
use crate::tree::{Kind, Tree};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the image.json format; readers refuse versions they do not know.
pub const IMAGE_JSON_FORMAT: u32 = 1;
/// Where the metadata lives on the ESP.
pub const ESP_IMAGE_JSON: &str = "fuse/image.json";
/// The UKI's path on an amd64 image's ESP (each architecture's: [`crate::arch::Arch::esp_boot_path`]).
pub const ESP_BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// GPT partition name of the ESP; layers are `fuse-<layer>`.
pub const ESP_PARTITION_NAME: &str = "fuse-esp";

/// image.json: what the image is, what it was built from, what each layer holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMeta {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// The CPU architecture (absent in images older than the field: amd64).
    #[serde(default)]
    pub arch: crate::arch::Arch,
    /// `sha256:` of the raw disk. Absent in the copy embedded in the image (it cannot
    /// contain its own digest); present in the copy written beside it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    pub inputs: Inputs,
    pub kernel: KernelMeta,
    pub boot: BootMeta,
    pub app: AppMeta,
    pub layers: Vec<LayerMeta>,
    /// Raw disk size in bytes (present beside the image only, with the digest).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_size: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inputs {
    pub manifest_sha256: String,
    /// sha256 of the fuse.lock text the image was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_sha256: Option<String>,
    pub app_sha256: String,
    pub fuse_version: String,
    pub source_epoch: u64,
    pub distribution: String,
    /// The archive's Release date the packages were taken from.
    pub archive_date: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelMeta {
    pub package: PackageRef,
    pub release: String,
    pub cmdline: String,
    pub modules: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootMeta {
    pub stub: PackageRef,
    pub uki_sha256: String,
    pub uki_size: u64,
    pub initramfs_sha256: String,
    pub initramfs_size: u64,
    pub esp_size: u64,
    /// Who signed the UKI for Secure Boot (absent: unsigned).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signer: Option<crate::sign::SignerMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppMeta {
    pub kind: String,
    pub argv: Vec<String>,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub env_args: Option<crate::layers::EnvArgs>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health_http: Option<String>,
    /// Seconds between SIGTERM and SIGKILL on the power button (absent in older images).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_timeout: Option<u32>,
    /// The signal the power button sends the app when it is not SIGTERM (a container's
    /// StopSignal).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_signal: Option<String>,
    /// Directories mounted as tmpfs owned by the app user.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub writable: Vec<String>,
    /// The x86-64 level (1-4) the app's ELF objects say they need
    /// (`GNU_PROPERTY_X86_ISA_1_NEEDED`), when any says so.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x86_64_level: Option<u8>,
    /// Kind oci: the container image the app is (reference, digests, User, labels).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container: Option<ContainerSource>,
}

/// Where the container image came from and what of its config is not in the boot plan
/// (image.json `app.container`, `fuse inspect`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerSource {
    /// `[app] image` as written (paths made absolute).
    pub reference: String,
    /// REGISTRY/REPO@sha256:... of a registry image (what a tag resolved to).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pinned: Option<String>,
    /// `sha256:` of the image manifest (a docker-archive has none: its config digest).
    pub manifest_digest: String,
    /// `sha256:` of the image config.
    pub config_digest: String,
    /// The config's `User` as written ("" = root).
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
    /// Per image layer (bottom to top, after `base`): the container layers it holds.
    pub layers: Vec<Vec<String>>,
    /// The packages the container's package databases list as installed (dpkg, apk), one
    /// entry per database file; empty when it has none. The SBOM and `fuse inspect` show
    /// them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub packages: Vec<ContainerPackages>,
}

/// One package database of a container and what it lists (see `oci::packages`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerPackages {
    /// The package URL type: `deb` (a dpkg database) or `apk`.
    pub kind: String,
    /// The database file in the image (`/var/lib/dpkg/status`, `/lib/apk/db/installed`).
    pub path: String,
    /// The image layer that holds it.
    pub layer: String,
    /// The distribution, from the container's /etc/os-release `ID` (when it has none:
    /// `debian` for dpkg, `alpine` for apk).
    pub vendor: String,
    /// `ID-VERSION_ID` of its os-release (`debian-12`, `alpine-3.19.1`), when it says.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub distro: Option<String>,
    /// Sorted by name, architecture, version.
    pub installed: Vec<ContainerPackage>,
}

/// A package a container's package database lists as installed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerPackage {
    pub name: String,
    pub version: String,
    /// As the database writes it (`amd64`, `x86_64`, `all`; empty when it does not say).
    pub arch: String,
    /// The source package (dpkg `Source`, apk origin), when it is named.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// The licence the database states (apk `L:`); dpkg databases state none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub license: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    pub name: String,
    pub partition: String,
    pub fs: String,
    pub digest: String,
    pub size: u64,
    /// The partition's GPT unique GUID, derived from the name and digest; the init finds
    /// the layer by it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partuuid: Option<String>,
    /// The dm-verity hash tree that follows the file system in the partition.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verity: Option<verity::VerityParams>,
    pub packages: Vec<PackageRef>,
    pub files: Vec<FileMeta>,
    /// The JDK modules of a Java runtime layer (its `lib/modules`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub java_modules: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileMeta {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
}

/// The per-file listing of a tree, as recorded in image.json.
pub fn file_list(tree: &Tree) -> Vec<FileMeta> {
    tree.iter()
        .map(|(path, n)| {
            let (kind, sha256, target) = match &n.kind {
                Kind::Dir => ("dir", None, None),
                Kind::File(d) => ("file", Some(sha256_hex(d)), None),
                Kind::Symlink(t) => ("symlink", None, Some(t.clone())),
                Kind::CharDev { major, minor } => {
                    ("chardev", None, Some(format!("{major}:{minor}")))
                }
            };
            FileMeta {
                path: format!("/{path}"),
                kind: kind.into(),
                mode: format!("{:04o}", n.mode & 0o7777),
                uid: n.uid,
                gid: n.gid,
                size: n.size(),
                sha256,
                target,
            }
        })
        .collect()
}

/// A layer as it goes on the disk: its partition bytes (the file system, and whatever a
/// partition appends to it) and its image.json entry. What the layer cache stores.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub meta: LayerMeta,
    pub bytes: Vec<u8>,
}

/// Write a layer's tree as its partition: squashfs with `opts`, then its dm-verity
/// superblock and hash tree (see `format::verity`). Pure.
pub fn write_layer(l: &Layer, opts: &squashfs::Options) -> Result<BuiltLayer> {
    let files = file_list(&l.tree);
    let fs = timed(
        &format!("layer {} ({} entries) written", l.name, l.tree.len()),
        || {
            squashfs::write(&l.tree, opts)
                .with_context(|| format!("cannot write the squashfs of layer {}", l.name))
        },
    )?;
    let digest = format!("sha256:{}", sha256_hex(&fs));
    let (bytes, params) = timed(&format!("layer {} hash tree computed", l.name), || {
        Ok(verity::partition(&fs))
    })?;
    let partition = format!("fuse-{}", l.name);
    Ok(BuiltLayer {
        meta: LayerMeta {
            name: l.name.clone(),
            partuuid: Some(guid_for(&partition, &digest).to_string().to_lowercase()),
            partition,
            fs: "squashfs".into(),
            digest,
            size: fs.len() as u64,
            verity: Some(params),
            packages: l.packages.clone(),
            files,
            java_modules: l.java_modules.clone(),
        },
        bytes,
    })
}

/// The boot plan's per-layer entries: partition GUID and verity parameters.
pub fn boot_verity<'a>(
    layers: impl IntoIterator<Item = &'a LayerMeta>,
) -> Result<std::collections::BTreeMap<String, crate::layers::LayerVerity>> {
    layers
        .into_iter()
        .map(|m| {
            let v = m.verity.as_ref().context("layer without verity")?;
            Ok((
                m.name.clone(),
                crate::layers::LayerVerity {
                    partuuid: m.partuuid.clone().context("layer without GUID")?,
                    data_blocks: v.data_blocks,
                    hash_start_block: v.hash_start_block(),
                    root_hash: v.root_hash.clone(),
                    salt: v.salt.clone(),
                },
            ))
        })
        .collect()
}

/// The zstd-compressed cpio of an initramfs tree (the kernel unpacks zstd natively: 8 MB of
/// modules and init become 1.9 MB, against 2.4 MB with gzip -9, and unpack faster). Pure.
pub fn write_initramfs(tree: &Tree) -> Result<Vec<u8>> {
    timed("initramfs written", || {
        let cpio = cpio::write(tree).context("cannot write the initramfs cpio")?;
        zstd::bulk::compress(&cpio, 19).context("cannot compress the initramfs")
    })
}

/// The initramfs from its boot plan's tree and its compressed core ([`write_initramfs`]):
/// the plan as an uncompressed newc archive, then the core. The kernel unpacks
/// concatenated archives in order, compressed or not (as it does an early-microcode
/// archive before the main one). Pure.
pub fn join_initramfs(plan: &Tree, core: &[u8]) -> Result<Vec<u8>> {
    let mut b = cpio::write(plan).context("cannot write the boot plan's cpio")?;
    // The next archive starts on a 4-byte boundary (the kernel skips zeros up to it).
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b.extend_from_slice(core);
    Ok(b)
}

/// The unified kernel image. Pure.
pub fn write_uki(
    stub: &[u8],
    os_release: &str,
    cmdline: &str,
    vmlinuz: &[u8],
    initrd: &[u8],
) -> Result<Vec<u8>> {
    timed("UKI built", || {
        uki::build(
            stub,
            &uki::Sections {
                osrel: os_release.as_bytes(),
                cmdline: cmdline.as_bytes(),
                linux: vmlinuz,
                initrd,
            },
        )
        .context("cannot build the unified kernel image")
    })
}

/// Everything the disk is made of: built units and the metadata that describes them.
pub struct DiskInputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub arch: crate::arch::Arch,
    pub inputs: Inputs,
    pub kernel: KernelMeta,
    /// Size of vmlinuz (for the size report).
    pub kernel_size: u64,
    pub stub_package: PackageRef,
    pub uki: &'a [u8],
    pub initramfs_sha256: String,
    pub initramfs_size: u64,
    pub layers: &'a [BuiltLayer],
    pub app: AppPlan,
    pub app_kind: &'a str,
    /// The x86-64 level the app's ELF objects say they need.
    pub x86_64_level: Option<u8>,
    pub port: u16,
    /// Kind oci: the container image the app is.
    pub container: Option<ContainerSource>,
    pub health_http: Option<String>,
    pub epoch: u64,
    /// Who signed `uki` (it is already signed; recorded in image.json).
    pub signer: Option<crate::sign::SignerMeta>,
}

/// The finished image.
pub struct Disk {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// image.json with digest and disk size filled in (the copy written beside the image).
    pub meta: ImageMeta,
    /// Bytes per part, for reporting: (part, size).
    pub parts: Vec<(String, u64)>,
}

fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = std::time::Instant::now();
    let r = f();
    tracing::info!("{what} in {:.2}s", t.elapsed().as_secs_f64());
    r
}

/// Derive a GUID from a label and content.
fn guid_for(label: &str, content_sha256: &str) -> gpt::Guid {
    let d: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        format!("fuse-guid\0{label}\0{content_sha256}").as_bytes(),
    ))
    .into();
    gpt::Guid::from_hash(&d)
}

/// Assemble the disk image from its built units: the ESP (UKI + image.json) and one
/// partition per layer, in a GPT disk. Pure.
pub fn assemble(i: DiskInputs) -> Result<Disk> {
    let mut parts = Vec::new();
    for l in i.layers {
        parts.push((format!("layer {}", l.meta.name), l.bytes.len() as u64));
    }
    parts.push(("kernel".into(), i.kernel_size));
    parts.push(("initramfs".into(), i.initramfs_size));
    let uki = i.uki;

    let mut meta = ImageMeta {
        format: IMAGE_JSON_FORMAT,
        name: i.name.into(),
        version: i.version.into(),
        arch: i.arch,
        digest: None,
        inputs: i.inputs,
        kernel: i.kernel,
        boot: BootMeta {
            stub: i.stub_package,
            uki_sha256: sha256_hex(uki),
            uki_size: uki.len() as u64,
            initramfs_sha256: i.initramfs_sha256,
            initramfs_size: i.initramfs_size,
            esp_size: 0,
            signer: i.signer,
        },
        app: AppMeta {
            kind: i.app_kind.into(),
            argv: i.app.argv,
            workdir: i.app.workdir,
            env: i.app.env,
            uid: i.app.uid,
            gid: i.app.gid,
            env_args: i.app.env_args,
            stop_timeout: Some(i.app.stop_timeout),
            stop_signal: i.app.stop_signal,
            writable: i.app.writable,
            x86_64_level: i.x86_64_level,
            container: i.container,
            port: i.port,
            health_http: i.health_http,
        },
        layers: i.layers.iter().map(|l| l.meta.clone()).collect(),
        disk_size: None,
    };
    // The ESP size is known only once the ESP is written, and the ESP holds image.json:
    // size it with a provisional copy, then write the final copy into an ESP of that size.
    // One tree (one copy of the UKI); only image.json is replaced between the two.
    let mut esp_files = Tree::new();
    let mut u = crate::tree::Node::file(uki.to_vec(), 0o644);
    u.mtime = i.epoch;
    esp_files.insert(i.arch.esp_boot_path(), u)?;
    let esp_json = |t: &mut Tree, meta: &ImageMeta| -> Result<()> {
        let mut j = serde_json::to_vec_pretty(meta)?;
        j.push(b'\n');
        let mut n = crate::tree::Node::file(j, 0o644);
        n.mtime = i.epoch;
        t.insert(ESP_IMAGE_JSON, n)
    };
    let volume_id = u32::from_le_bytes(hex_prefix4(&meta.boot.uki_sha256));
    let fat_opts = |min_size| fat::Options {
        volume_label: "FUSE-ESP".into(),
        volume_id,
        min_size,
    };
    meta.boot.esp_size = u64::MAX; // widest number: the provisional copy is never shorter than the final one
    let provisional = {
        esp_json(&mut esp_files, &meta)?;
        fat::write(&esp_files, &fat_opts(0)).context("cannot write the ESP")?
    };
    meta.boot.esp_size = provisional.len() as u64;
    let esp = timed("ESP written", || {
        esp_json(&mut esp_files, &meta)?;
        fat::write(&esp_files, &fat_opts(provisional.len() as u64)).context("cannot write the ESP")
    })?;
    if esp.len() != provisional.len() {
        anyhow::bail!(
            "internal error: ESP size changed from {} to {} bytes",
            provisional.len(),
            esp.len()
        );
    }
    parts.push(("esp".into(), esp.len() as u64));

    let esp_sha = sha256_hex(&esp);
    let mut specs = vec![gpt::PartitionSpec {
        name: ESP_PARTITION_NAME.into(),
        type_guid: gpt::Guid::parse(gpt::ESP_TYPE)?,
        unique_guid: guid_for(ESP_PARTITION_NAME, &esp_sha),
        attributes: 0,
        data: &esp,
    }];
    let linux = gpt::Guid::parse(gpt::LINUX_DATA_TYPE)?;
    for (m, b) in meta.layers.iter().zip(i.layers.iter().map(|l| &l.bytes)) {
        specs.push(gpt::PartitionSpec {
            name: m.partition.clone(),
            type_guid: linux,
            unique_guid: match &m.partuuid {
                Some(g) => gpt::Guid::parse(g)?,
                None => guid_for(&m.partition, &m.digest),
            },
            // bit 60: read-only (a hint to tools that mount by partition)
            attributes: 1 << 60,
            data: b,
        });
    }
    let disk_guid = guid_for(
        "disk",
        &specs
            .iter()
            .map(|s| s.unique_guid.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    let bytes = timed("GPT disk written", || gpt::write_disk(disk_guid, &specs))?;
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    let payload: u64 = parts
        .iter()
        .filter(|(n, _)| n == "esp" || n.starts_with("layer "))
        .map(|(_, s)| *s)
        .sum();
    parts.push(("gpt and alignment".into(), bytes.len() as u64 - payload));
    meta.digest = Some(digest.clone());
    meta.disk_size = Some(bytes.len() as u64);
    Ok(Disk {
        bytes,
        digest,
        meta,
        parts,
    })
}

fn hex_prefix4(hex: &str) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// Read the embedded image.json of a raw disk (GPT -> ESP -> FAT), refusing formats it does
/// not know.
pub fn read_meta(disk: &[u8]) -> Result<ImageMeta> {
    parse_meta(&read_esp_file(disk, ESP_IMAGE_JSON)?)
}

/// A file from a raw disk's ESP (GPT -> ESP -> FAT), e.g. the UKI.
pub fn read_esp_file(disk: &[u8], path: &str) -> Result<Vec<u8>> {
    let info = gpt::read_disk(disk).context("cannot read the GPT")?;
    let esp = info
        .partitions
        .iter()
        .find(|p| p.name == ESP_PARTITION_NAME)
        .context("no fuse-esp partition")?;
    let bytes = disk
        .get(esp.byte_range())
        .context("ESP partition beyond the end of the disk")?;
    let tree = fat::read(bytes).context("cannot read the ESP's FAT file system")?;
    tree.get(path)
        .and_then(|n| n.data())
        .map(|d| d.to_vec())
        .with_context(|| format!("no /{path} on the ESP"))
}

/// Parse image.json (either copy), refusing formats this fuse does not know.
pub fn parse_meta(json: &[u8]) -> Result<ImageMeta> {
    let v: serde_json::Value = serde_json::from_slice(json).context("image.json is not JSON")?;
    match v.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == IMAGE_JSON_FORMAT as u64 => {}
        Some(f) => anyhow::bail!(
            "image.json format {f} is not known to this fuse (it reads format {IMAGE_JSON_FORMAT})"
        ),
        None => anyhow::bail!("image.json has no format version"),
    }
    let meta: ImageMeta =
        serde_json::from_value(v).context("image.json does not match format 1")?;
    check_name_version(&meta.name, &meta.version).context("image.json")?;
    Ok(meta)
}

/// An image's name `[a-z0-9-]+` and version `[A-Za-z0-9._+~-]+` (at most 128): what every
/// reader of image.json checks before a name or version goes into a file name, a VMDK
/// descriptor, a tag or a terminal (`pull`, `export`, `inspect`, `run`, `test`, `promote`
/// all read image.json through [`parse_meta`]).
pub fn check_name_version(name: &str, version: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        anyhow::bail!(
            "the name {:?} must be [a-z0-9-]+ (at most 128)",
            crate::util::text::one_line(name)
        );
    }
    if version.is_empty()
        || version.len() > 128
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
    {
        anyhow::bail!(
            "the version {:?} must be [A-Za-z0-9._+~-]+ (at most 128)",
            crate::util::text::one_line(version)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn initramfs_is_the_plan_archive_then_the_compressed_core() {
        let mut plan = Tree::new();
        plan.insert("fuse", Node::dir(0o755)).unwrap();
        plan.insert("fuse/boot.json", Node::file(b"{}\n".to_vec(), 0o644))
            .unwrap();
        let mut core = Tree::new();
        core.insert("init", Node::file(b"\x7fELF init".to_vec(), 0o755))
            .unwrap();
        let zst = write_initramfs(&core).unwrap();
        let b = join_initramfs(&plan, &zst).unwrap();
        // The core starts on a 4-byte boundary right after the plan's archive...
        let at = b.len() - zst.len();
        assert_eq!(at % 4, 0);
        assert_eq!(&b[at..], &zst[..]);
        let first = cpio::read(&b[..at]).unwrap();
        assert!(first.get("fuse/boot.json").is_some());
        assert!(first.get("init").is_none());
        // ...and decompresses to the core's own archive.
        let inner = zstd::decode_all(&b[at..]).unwrap();
        assert!(cpio::read(&inner).unwrap().get("init").is_some());
        // A kernel reads a newc archive's magic at its start.
        assert!(b.starts_with(b"070701"));
    }
}
