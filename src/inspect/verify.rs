//! Verification of an image from its own bytes: the disk digest, the GPT (both headers and
//! entry arrays, by their CRCs; zeros everywhere outside them and the partitions), the
//! ESP's FAT and embedded image.json, the UKI against its
//! recorded sha256, every layer partition against its recorded digest and size (and zero
//! padding after it), and the copy of image.json written beside the image. Pure.

use crate::digest::sha256_hex;
use crate::disk::{self, ImageMeta, ESP_IMAGE_JSON, ESP_PARTITION_NAME};
use crate::format::{fat, gpt, squashfs};
use crate::tree::Tree;
use serde::Serialize;
use std::fmt;

/// One thing that did not verify, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What failed: `gpt`, `disk` (bytes outside partitions and GPT), `esp`, `image.json`,
    /// `uki`, `layer <name>`, `beside <file>`.
    pub part: String,
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.part, self.problem)
    }
}

/// What was checked and what failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Each check that was made, in order (whether it passed or not).
    pub checked: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    pub fn check(&mut self, what: impl Into<String>) {
        self.checked.push(what.into());
    }
    pub fn fail(&mut self, part: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem {
            part: part.into(),
            problem: problem.into(),
        });
    }
}

/// The error of an image that does not verify (the command exits 2 with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationFailed {
    /// The image as the user named it.
    pub image: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for VerificationFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed verification ({} problem{})",
            self.image,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for VerificationFailed {}

/// A partition as found in the GPT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub index: u32,
    pub name: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Bytes (the partition's extent, padding included).
    pub size: u64,
}

/// An image read from its bytes and verified.
#[derive(Clone, Debug)]
pub struct Image {
    /// `sha256:` of the whole file.
    pub digest: String,
    pub size: u64,
    /// The embedded image.json, with `digest` and `disk_size` filled in from the bytes
    /// (the shape of the copy written beside the image). `None` when it could not be read.
    pub meta: Option<ImageMeta>,
    pub partitions: Vec<Partition>,
    pub report: Report,
    /// The file's format and size when the raw disk came out of an export format (qcow2,
    /// vmdk, ova, vhd, gce); `None` for a raw image. `digest` and `size` are the raw disk's.
    pub wrapper: Option<Wrapper>,
    /// The UKI's Secure Boot signatures, each verified against its embedded certificate
    /// and the UKI's Authenticode digest (empty: unsigned).
    pub signatures: Vec<crate::sign::SignatureReport>,
}

/// An exported image's container, as `fuse inspect` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Wrapper {
    pub format: String,
    pub file_size: u64,
}

impl Image {
    /// The metadata, or the verification error when the image could not be read far
    /// enough to have any.
    pub fn meta_or_err(&self, name: &str) -> Result<&ImageMeta, VerificationFailed> {
        self.meta.as_ref().ok_or_else(|| VerificationFailed {
            image: name.into(),
            problems: self.report.problems.clone(),
        })
    }
    /// `Err` with every problem when anything failed.
    pub fn verified(&self, name: &str) -> Result<&ImageMeta, VerificationFailed> {
        match &self.meta {
            Some(m) if self.report.ok() => Ok(m),
            _ => Err(VerificationFailed {
                image: name.into(),
                problems: self.report.problems.clone(),
            }),
        }
    }
}

/// The bytes of a layer's file system inside its partition (`size` bytes from the start).
pub fn layer_bytes<'a>(disk: &'a [u8], img: &Image, layer: &str) -> Option<&'a [u8]> {
    let meta = img.meta.as_ref()?;
    let l = meta.layers.iter().find(|l| l.name == layer)?;
    let p = img.partitions.iter().find(|p| p.name == l.partition)?;
    let start = usize::try_from(p.offset).ok()?;
    let len = usize::try_from(l.size.min(p.size)).ok()?;
    disk.get(start..start.checked_add(len)?)
}

/// Read and verify a raw fuse image. `beside` is the content of the image.json written next
/// to the image, when there is one, with its file name for messages. Never fails: whatever
/// cannot be read is a problem in the report (and then `meta` may be `None`).
pub fn read(disk: &[u8], beside: Option<(&str, &[u8])>) -> Image {
    // The whole-disk digest runs beside the partition checks (2 cores: about half the time).
    std::thread::scope(|s| {
        let whole = s.spawn(|| sha256_hex(disk));
        let (meta, partitions, mut report, signatures) = read_parts(disk);
        let digest = format!(
            "sha256:{}",
            whole.join().unwrap_or_else(|_| sha256_hex(disk))
        );
        report.check("image digest (sha256 of the whole file)");
        let mut meta = meta;
        if let Some(m) = meta.as_mut() {
            m.digest = Some(digest.clone());
            m.disk_size = Some(disk.len() as u64);
        }
        if let (Some(m), Some((name, json))) = (meta.as_ref(), beside) {
            check_beside(m, name, json, &mut report);
        }
        Image {
            digest,
            size: disk.len() as u64,
            meta,
            partitions,
            report,
            wrapper: None,
            signatures,
        }
    })
}

type Parts = (
    Option<ImageMeta>,
    Vec<Partition>,
    Report,
    Vec<crate::sign::SignatureReport>,
);

fn read_parts(disk: &[u8]) -> Parts {
    let mut r = Report::default();
    r.check("GPT headers and partition entry arrays (CRC32, primary = backup)");
    let info = match gpt::read_disk(disk) {
        Ok(i) => i,
        Err(e) => {
            r.fail("gpt", format!("{e:#}"));
            return (None, Vec::new(), r, Vec::new());
        }
    };
    let partitions: Vec<Partition> = info
        .partitions
        .iter()
        .map(|p| {
            let range = p.byte_range();
            Partition {
                index: p.index,
                name: p.name.clone(),
                offset: range.start as u64,
                size: range.len() as u64,
            }
        })
        .collect();
    r.check("space outside the partitions and GPT structures is zero");
    if let Some(p) = unallocated_nonzero(disk, &info) {
        r.fail("disk", p);
    }
    let part_bytes = |name: &str| -> Result<&[u8], String> {
        let p = info
            .partitions
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no partition named {name}"))?;
        disk.get(p.byte_range())
            .ok_or_else(|| format!("partition {name} extends beyond the end of the disk"))
    };

    // The ESP: FAT, image.json, the UKI.
    r.check(format!("{ESP_PARTITION_NAME}: FAT file system"));
    let esp = match part_bytes(ESP_PARTITION_NAME).and_then(|b| {
        fat::read(b)
            .map(|t| (b, t))
            .map_err(|e| format!("cannot read its FAT file system: {e:#}"))
    }) {
        Ok(x) => x,
        Err(e) => {
            r.fail("esp", e);
            return (None, partitions, r, Vec::new());
        }
    };
    let (esp_bytes, esp_tree) = esp;
    r.check(format!("/{ESP_IMAGE_JSON} on the ESP (format)"));
    let meta = match esp_tree
        .get(ESP_IMAGE_JSON)
        .and_then(|n| n.data())
        .ok_or_else(|| format!("no /{ESP_IMAGE_JSON}"))
        .and_then(|j| disk::parse_meta(j).map_err(|e| format!("{e:#}")))
    {
        Ok(m) => m,
        Err(e) => {
            r.fail("image.json", e);
            return (None, partitions, r, Vec::new());
        }
    };
    if meta.digest.is_some() || meta.disk_size.is_some() {
        r.fail(
            "image.json",
            "the embedded copy records a digest or disk size (it cannot know its own)",
        );
    }
    check_esp(&meta, esp_bytes, &esp_tree, &mut r);
    if let Some(uki) = esp_tree
        .get(meta.arch.esp_boot_path())
        .and_then(|n| n.data())
    {
        check_boot_plan(&meta, uki, &mut r);
    }
    let signatures = check_signature(&meta, &esp_tree, &mut r);

    // The partition table must be exactly the ESP and the layers, in that order.
    let expected: Vec<&str> = std::iter::once(ESP_PARTITION_NAME)
        .chain(meta.layers.iter().map(|l| l.partition.as_str()))
        .collect();
    let found: Vec<&str> = info.partitions.iter().map(|p| p.name.as_str()).collect();
    r.check("partition table matches image.json (ESP, then one partition per layer)");
    if expected != found {
        r.fail(
            "gpt",
            format!(
                "partitions are [{}], image.json describes [{}]",
                found.join(", "),
                expected.join(", ")
            ),
        );
    }

    // Layers: digest of the first `size` bytes, zeros after them.
    let mut checks: Vec<(String, Result<&[u8], String>)> = Vec::new();
    for l in &meta.layers {
        checks.push((l.name.clone(), part_bytes(&l.partition)));
    }
    // A bounded pool: image.json is untrusted and may list any number of layers.
    let pairs: Vec<(&disk::LayerMeta, &Result<&[u8], String>)> = meta
        .layers
        .iter()
        .zip(checks.iter().map(|(_, b)| b))
        .collect();
    let results: Vec<Vec<String>> =
        crate::pool::map(&pairs, crate::pool::default_workers(), |(l, bytes)| {
            check_layer(l, (*bytes).clone())
        })
        .into_iter()
        .map(|r| r.unwrap_or_else(|p| vec![format!("internal error: the check panicked: {p}")]))
        .collect();
    for (l, problems) in meta.layers.iter().zip(&results) {
        r.check(format!(
            "layer {}: {} bytes of {} match {}, zero padding after them{}",
            l.name,
            l.size,
            l.partition,
            l.digest,
            match &l.verity {
                Some(v) => format!(", dm-verity root hash {} recomputed from them", v.root_hash),
                None => String::new(),
            }
        ));
        for p in problems {
            r.fail(format!("layer {}", l.name), p.clone());
        }
    }
    // What inspect prints of each layer (its files) is the listing of its squashfs: only
    // for layers whose bytes verified (else the digest problem says enough).
    for ((l, (_, bytes)), problems) in meta.layers.iter().zip(&checks).zip(&results) {
        if !problems.is_empty() {
            continue;
        }
        if let Some(fs) = bytes
            .as_ref()
            .ok()
            .and_then(|b| usize::try_from(l.size).ok().and_then(|s| b.get(..s)))
        {
            check_file_list(l, fs, &mut r);
        }
    }
    (Some(meta), partitions, r, signatures)
}

/// The most bytes the initramfs' compressed core may inflate to while it is scanned.
const CORE_LIMIT: u64 = 1 << 30;

/// What boots is the UKI's `.cmdline` and the boot plan (`fuse/boot.json` in the first,
/// uncompressed archive of `.initrd`): both are compared with image.json, field by field,
/// so that what `inspect` prints from image.json is what runs. The compressed core after
/// the plan must not hold anything under `fuse/` (the kernel unpacks archives in order, so
/// a later `fuse/boot.json` would replace the plan).
fn check_boot_plan(meta: &ImageMeta, uki: &[u8], r: &mut Report) {
    r.check(
        "UKI: .cmdline and the boot plan in .initrd (user, argv, env, workdir, layers, \
         verity roots) match image.json; initramfs digest",
    );
    let sections = match crate::format::uki::read_sections(uki) {
        Ok(s) => s,
        Err(e) => return r.fail("uki", format!("cannot read its sections: {e:#}")),
    };
    let section = |name: &str| -> Option<&[u8]> {
        let mut it = sections.iter().filter(|(n, _)| n == name);
        let first = it.next();
        match it.next() {
            Some(_) => None,
            None => first.map(|(_, d)| d.as_slice()),
        }
    };
    let cmdline = section(".cmdline").map(|c| {
        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        String::from_utf8_lossy(&c[..end]).into_owned()
    });
    if cmdline.as_deref() != Some(meta.kernel.cmdline.as_str()) {
        r.fail(
            "uki",
            format!(
                "kernel command line: the UKI's .cmdline is {:?}, image.json says {:?}",
                cmdline.unwrap_or_else(|| "(none, or more than one)".into()),
                meta.kernel.cmdline
            ),
        );
    }
    let Some(initrd) = section(".initrd") else {
        return r.fail("uki", "no single .initrd section (the boot plan)");
    };
    let sha = sha256_hex(initrd);
    if sha != meta.boot.initramfs_sha256 || initrd.len() as u64 != meta.boot.initramfs_size {
        r.fail(
            "uki",
            format!(
                "initramfs: .initrd is {} bytes with sha256 {sha}, image.json says {} bytes, {}",
                initrd.len(),
                meta.boot.initramfs_size,
                meta.boot.initramfs_sha256
            ),
        );
    }
    let (plan_tree, core_at) = match crate::format::cpio::read_first(initrd) {
        Ok(x) => x,
        Err(e) => return r.fail("uki", format!("cannot read the boot plan archive: {e:#}")),
    };
    let plan: crate::layers::BootPlan = match plan_tree
        .get("fuse/boot.json")
        .and_then(|n| n.data())
        .ok_or_else(|| anyhow::anyhow!("no fuse/boot.json"))
        .and_then(|j| serde_json::from_slice(j).map_err(anyhow::Error::from))
    {
        Ok(p) => p,
        Err(e) => return r.fail("uki", format!("boot plan: {e:#}")),
    };
    if let Err(e) = core_leaves_plan_alone(initrd.get(core_at..).unwrap_or_default()) {
        r.fail("uki", format!("initramfs core: {e:#}"));
    }
    let a = &meta.app;
    let mut diff = |field: &str, plan: String, json: String| {
        if plan != json {
            r.fail(
                "uki",
                format!("boot plan {field} is {plan}, image.json says {json}"),
            );
        }
    };
    diff(
        "app.argv",
        format!("{:?}", plan.app.argv),
        format!("{:?}", a.argv),
    );
    diff(
        "app.env",
        format!("{:?}", plan.app.env),
        format!("{:?}", a.env),
    );
    diff(
        "app.workdir",
        format!("{:?}", plan.app.workdir),
        format!("{:?}", a.workdir),
    );
    diff(
        "app user",
        format!("{}:{}", plan.app.uid, plan.app.gid),
        format!("{}:{}", a.uid, a.gid),
    );
    diff(
        "app.env_args",
        format!("{:?}", plan.app.env_args),
        format!("{:?}", a.env_args),
    );
    diff(
        "app.writable",
        format!("{:?}", plan.app.writable),
        format!("{:?}", a.writable),
    );
    diff(
        "app.stop_timeout",
        format!("{}", plan.app.stop_timeout),
        format!(
            "{}",
            a.stop_timeout
                .unwrap_or(crate::manifest::DEFAULT_STOP_TIMEOUT)
        ),
    );
    diff(
        "app.stop_signal",
        format!("{:?}", plan.app.stop_signal),
        format!("{:?}", a.stop_signal),
    );
    diff(
        "layers",
        format!("{:?}", plan.layers),
        format!(
            "{:?}",
            meta.layers.iter().map(|l| &l.name).collect::<Vec<_>>()
        ),
    );
    for l in &meta.layers {
        let v = plan.verity.get(&l.name);
        let want = l.verity.as_ref().map(|v| {
            (
                v.root_hash.clone(),
                v.salt.clone(),
                v.data_blocks,
                v.hash_start_block(),
            )
        });
        let got = v.map(|v| {
            (
                v.root_hash.clone(),
                v.salt.clone(),
                v.data_blocks,
                v.hash_start_block,
            )
        });
        diff(
            &format!("verity of layer {}", l.name),
            format!("{got:?}"),
            format!("{want:?}"),
        );
        diff(
            &format!("partuuid of layer {}", l.name),
            format!("{:?}", v.map(|v| &v.partuuid)),
            format!("{:?}", l.partuuid.as_ref()),
        );
        diff(
            &format!("file system of layer {}", l.name),
            format!("{:?}", plan.fs_type),
            format!("{:?}", l.fs),
        );
    }
    if plan.verity.len() != meta.layers.len() {
        diff(
            "verity",
            format!("{} layers", plan.verity.len()),
            format!("{} layers", meta.layers.len()),
        );
    }
}

/// The initramfs core (zstd, then cpio) holds nothing at or under `fuse` that would
/// replace the boot plan when the kernel unpacks it. Streamed: bounded memory, at most
/// [`CORE_LIMIT`] bytes inflated.
pub(crate) fn core_leaves_plan_alone(core: &[u8]) -> anyhow::Result<()> {
    use anyhow::{bail, ensure, Context};
    use std::io::Read;
    if core.is_empty() {
        return Ok(());
    }
    let mut z = zstd::stream::read::Decoder::new(core)
        .context("not zstd")?
        .take(CORE_LIMIT);
    let mut hdr = [0u8; 110];
    loop {
        // Archives are 4-byte aligned; NULs pad between them.
        match z.read(&mut hdr[..1]).context("zstd")? {
            0 => return Ok(()),
            _ if hdr[0] == 0 => continue,
            _ => {}
        }
        z.read_exact(&mut hdr[1..])
            .context("truncated cpio header")?;
        ensure!(&hdr[..5] == b"07070", "not a newc cpio archive");
        let field = |i: usize| -> anyhow::Result<usize> {
            let t = std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i])?;
            Ok(usize::from_str_radix(t, 16)?)
        };
        let (mode, uid, gid) = (field(1)?, field(2)?, field(3)?);
        let (filesize, namesize) = (field(6)?, field(11)?);
        ensure!((1..=4096).contains(&namesize), "bad cpio name size");
        let mut name = vec![0u8; namesize];
        z.read_exact(&mut name).context("truncated cpio name")?;
        let pad = (4 - (110 + namesize) % 4) % 4;
        let skip = pad + filesize + (4 - filesize % 4) % 4;
        let name = String::from_utf8_lossy(&name[..namesize - 1]).into_owned();
        let path = name.trim_start_matches("./").trim_start_matches('/');
        // The core makes the directory too (`layers::initramfs_core`): the same directory
        // again (0755, root's) leaves the plan in it alone; anything else does not.
        let plain_dir = mode == 0o040755 && uid == 0 && gid == 0 && filesize == 0;
        if path.starts_with("fuse/") || (path == "fuse" && !plain_dir) {
            bail!("it holds {name:?}, which would replace the boot plan");
        }
        let copied = std::io::copy(&mut (&mut z).take(skip as u64), &mut std::io::sink())?;
        ensure!(copied == skip as u64, "truncated cpio member {name:?}");
        if name == "TRAILER!!!" {
            continue;
        }
    }
}

/// The UKI's Secure Boot signature: each verified against its embedded certificate and the
/// UKI's Authenticode digest; the signer must be the one image.json records.
fn check_signature(
    meta: &ImageMeta,
    tree: &Tree,
    r: &mut Report,
) -> Vec<crate::sign::SignatureReport> {
    let Some(uki) = tree.get(meta.arch.esp_boot_path()).and_then(|n| n.data()) else {
        return Vec::new();
    };
    r.check("UKI Secure Boot signature (Authenticode) against its embedded certificate");
    let sigs = match crate::sign::verify_pe(uki) {
        Ok(s) => s,
        Err(e) => {
            r.fail("uki", format!("cannot read its signature: {e:#}"));
            return Vec::new();
        }
    };
    for s in &sigs {
        for p in &s.problems {
            r.fail("uki", format!("signature by {}: {p}", s.signer.subject));
        }
    }
    let actual = sigs.first().map(|s| &s.signer);
    if actual != meta.boot.signer.as_ref() {
        r.fail(
            "uki",
            format!(
                "signed by {}, image.json says {}",
                actual.map_or("nobody".into(), |s| format!(
                    "{} ({})",
                    s.subject, s.fingerprint
                )),
                meta.boot
                    .signer
                    .as_ref()
                    .map_or("unsigned".into(), |s| format!(
                        "{} ({})",
                        s.subject, s.fingerprint
                    ))
            ),
        );
    }
    sigs
}

fn le_u64(disk: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let b: [u8; 8] = disk.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

fn le_u32(disk: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    let b: [u8; 4] = disk.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The first non-zero byte outside the protective MBR, both GPT headers, both entry arrays
/// and the partitions (fuse writes zeros there; the CRCs and digests cover everything else).
/// Called after `gpt::read_disk` verified the headers.
fn unallocated_nonzero(disk: &[u8], info: &gpt::DiskInfo) -> Option<String> {
    let sector = gpt::SECTOR;
    let mut used: Vec<(u64, u64)> = vec![(0, 2 * sector)]; // MBR + primary header
    let array = |header_lba: u64| -> Option<(u64, u64)> {
        let h = header_lba.checked_mul(sector)?;
        let lba = le_u64(disk, h + 72)?;
        let len = u64::from(le_u32(disk, h + 80)?) * u64::from(le_u32(disk, h + 84)?);
        let start = lba.checked_mul(sector)?;
        Some((start, start.checked_add(len)?))
    };
    let backup_lba = le_u64(disk, sector + 32)?;
    used.push((backup_lba * sector, (backup_lba + 1) * sector));
    used.extend(array(1));
    used.extend(array(backup_lba));
    for p in &info.partitions {
        let r = p.byte_range();
        used.push((r.start as u64, r.end as u64));
    }
    used.sort();
    let mut pos = 0u64;
    for (start, end) in used
        .into_iter()
        .chain([(disk.len() as u64, disk.len() as u64)])
    {
        if start > pos {
            let gap = disk.get(pos as usize..(start as usize).min(disk.len()))?;
            if let Some(at) = gap.iter().position(|&b| b != 0) {
                return Some(format!(
                    "non-zero byte at offset {} (outside every partition and GPT structure)",
                    pos + at as u64
                ));
            }
        }
        pos = pos.max(end);
    }
    None
}

fn check_esp(meta: &ImageMeta, esp_bytes: &[u8], tree: &Tree, r: &mut Report) {
    let boot_path = meta.arch.esp_boot_path();
    r.check(format!(
        "/{boot_path} (the UKI) matches boot.uki_sha256 and boot.uki_size"
    ));
    match tree.get(meta.arch.esp_boot_path()).and_then(|n| n.data()) {
        None => r.fail("uki", format!("no /{boot_path} on the ESP")),
        Some(uki) => {
            if uki.len() as u64 != meta.boot.uki_size {
                r.fail(
                    "uki",
                    format!(
                        "/{boot_path} is {} bytes, image.json says {}",
                        uki.len(),
                        meta.boot.uki_size
                    ),
                );
            }
            let sha = sha256_hex(uki);
            if sha != meta.boot.uki_sha256 {
                r.fail(
                    "uki",
                    format!(
                        "/{boot_path} has sha256 {sha}, image.json says {}",
                        meta.boot.uki_sha256
                    ),
                );
            }
        }
    }
    r.check("ESP size matches boot.esp_size, zero padding after it");
    let size = meta.boot.esp_size;
    match usize::try_from(size).ok().and_then(|s| esp_bytes.get(s..)) {
        None => r.fail(
            "esp",
            format!(
                "image.json says the ESP is {size} bytes, its partition holds {}",
                esp_bytes.len()
            ),
        ),
        Some(pad) => {
            if let Some(at) = pad.iter().position(|&b| b != 0) {
                r.fail(
                    "esp",
                    format!(
                        "non-zero byte at offset {} of the partition, after the {size} bytes of the ESP",
                        size as usize + at
                    ),
                );
            }
        }
    }
}

/// Problems of one layer's partition bytes against its metadata.
fn check_layer(l: &disk::LayerMeta, bytes: Result<&[u8], String>) -> Vec<String> {
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let Some(fs) = usize::try_from(l.size).ok().and_then(|s| bytes.get(..s)) else {
        return vec![format!(
            "image.json says {} bytes, partition {} holds only {}",
            l.size,
            l.partition,
            bytes.len()
        )];
    };
    let digest = format!("sha256:{}", sha256_hex(fs));
    if digest != l.digest {
        problems.push(format!(
            "digest mismatch: the {} bytes of partition {} hash to {digest}, image.json says {}",
            l.size, l.partition, l.digest
        ));
    }
    // Zeros between the file system and the hash area, and after the hash tree.
    let mut zero_ranges = vec![(fs.len(), bytes.len())];
    if let Some(v) = &l.verity {
        let hash = usize::try_from(v.hash_offset).unwrap_or(usize::MAX);
        let end = usize::try_from(v.partition_size()).unwrap_or(usize::MAX);
        zero_ranges = vec![
            (fs.len(), hash.min(bytes.len())),
            (end.min(bytes.len()), bytes.len()),
        ];
        if end > bytes.len() {
            problems.push(format!(
                "verity: the hash tree ends at byte {end}, partition {} holds only {}",
                l.partition,
                bytes.len()
            ));
        } else if let Err(e) = crate::format::verity::verify(bytes, v) {
            problems.push(format!("verity: {e:#}"));
        }
    }
    for (from, to) in zero_ranges {
        if let Some(at) = bytes
            .get(from..to)
            .and_then(|b| b.iter().position(|&b| b != 0))
        {
            problems.push(format!(
                "non-zero byte at offset {} of partition {}, after the {} bytes of the file system",
                from + at,
                l.partition,
                l.size
            ));
        }
    }
    problems
}

fn check_beside(embedded: &ImageMeta, name: &str, json: &[u8], r: &mut Report) {
    let part = format!("beside {name}");
    r.check(format!(
        "{name} (written beside the image) matches the image"
    ));
    let beside = match disk::parse_meta(json) {
        Ok(m) => m,
        Err(e) => {
            r.fail(part, format!("{e:#}"));
            return;
        }
    };
    if beside.digest != embedded.digest {
        r.fail(
            &part,
            format!(
                "records digest {}, the image is {}",
                beside.digest.as_deref().unwrap_or("(none)"),
                embedded.digest.as_deref().unwrap_or("?")
            ),
        );
    }
    if beside.disk_size != embedded.disk_size {
        r.fail(
            &part,
            format!(
                "records disk_size {}, the image is {} bytes",
                beside.disk_size.map_or("(none)".into(), |s| s.to_string()),
                embedded.disk_size.unwrap_or(0)
            ),
        );
    }
    let strip = |m: &ImageMeta| ImageMeta {
        digest: None,
        disk_size: None,
        ..m.clone()
    };
    if strip(&beside) != strip(embedded) {
        r.fail(
            &part,
            format!(
                "differs from the image.json embedded in the image ({})",
                meta_differences(&strip(&beside), &strip(embedded)).join(", ")
            ),
        );
    }
}

/// Top-level fields (and layers by name) where two image.json values differ.
fn meta_differences(a: &ImageMeta, b: &ImageMeta) -> Vec<String> {
    let (Ok(va), Ok(vb)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return vec!["unserialisable".into()];
    };
    let mut out = Vec::new();
    if let (Some(oa), Some(ob)) = (va.as_object(), vb.as_object()) {
        let keys: std::collections::BTreeSet<&String> = oa.keys().chain(ob.keys()).collect();
        for k in keys {
            if oa.get(k) != ob.get(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

/// Read a layer's file system back and compare its listing with image.json's: every
/// path, type, mode, owner, size, sha256 and link target must agree. The tree is returned
/// for callers that need the contents (the SBOM).
pub fn check_layer_files(
    disk: &[u8],
    img: &Image,
    layer: &disk::LayerMeta,
    report: &mut Report,
) -> Option<Tree> {
    let Some(bytes) = layer_bytes(disk, img, &layer.name) else {
        let part = format!("layer {}", layer.name);
        report.fail(part, "its partition cannot be read");
        return None;
    };
    check_file_list(layer, bytes, report)
}

/// The squashfs of a layer (its file-system bytes) read, and its listing compared with
/// image.json's file list.
fn check_file_list(layer: &disk::LayerMeta, bytes: &[u8], report: &mut Report) -> Option<Tree> {
    let part = format!("layer {}", layer.name);
    report.check(format!(
        "layer {}: file list of its squashfs matches image.json",
        layer.name
    ));
    let tree = match squashfs::read(bytes) {
        Ok(t) => t,
        Err(e) => {
            report.fail(part, format!("cannot read its squashfs: {e:#}"));
            return None;
        }
    };
    let actual = disk::file_list(&tree);
    if actual != layer.files {
        let recorded: std::collections::BTreeMap<&str, &disk::FileMeta> =
            layer.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let real: std::collections::BTreeMap<&str, &disk::FileMeta> =
            actual.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut diffs = Vec::new();
        for (p, f) in &real {
            match recorded.get(p) {
                None => diffs.push(format!("{p} is in the file system, not in image.json")),
                Some(g) if g != f => diffs.push(format!("{p} differs from image.json")),
                _ => {}
            }
        }
        for p in recorded.keys().filter(|p| !real.contains_key(*p)) {
            diffs.push(format!("{p} is in image.json, not in the file system"));
        }
        if diffs.is_empty() {
            diffs.push("the order of the listing differs".into());
        }
        let more = diffs.len().saturating_sub(5);
        diffs.truncate(5);
        if more > 0 {
            diffs.push(format!("{more} more"));
        }
        report.fail(part, diffs.join("; "));
    }
    Some(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_its_size_in_bytes_then_zeros() {
        // fuse's squashfs writer pads to 4 KiB itself, so real layers fill their
        // partitions; a shorter file system is followed by zeros that are checked too.
        let fs = b"a file system of 31 bytes, say.";
        let mut part = fs.to_vec();
        part.resize(4096, 0);
        let l = disk::LayerMeta {
            name: "app".into(),
            partition: "fuse-app".into(),
            fs: "squashfs".into(),
            digest: format!("sha256:{}", sha256_hex(fs)),
            size: fs.len() as u64,
            partuuid: None,
            verity: None,
            packages: vec![],
            files: vec![],
            java_modules: vec![],
        };
        assert!(check_layer(&l, Ok(&part)).is_empty());
        let mut bad = part.clone();
        bad[4000] = 7;
        let p = check_layer(&l, Ok(&bad));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("non-zero byte at offset 4000"), "{p:?}");
        bad[3] ^= 1;
        assert_eq!(check_layer(&l, Ok(&bad)).len(), 2);
        let long = disk::LayerMeta { size: 5000, ..l };
        assert!(check_layer(&long, Ok(&part))[0].contains("holds only 4096"));
    }
}
