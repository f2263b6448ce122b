//! FAT12/16/32 file systems: a deterministic writer and a bounds-checked reader.
//!
//! The writer lays a [`Tree`] of directories and regular files out as
//!
//! | region            | contents                                                    |
//! |-------------------|-------------------------------------------------------------|
//! | reserved sectors  | boot sector with the BPB (FAT32: also FSInfo at sector 1 and |
//! |                   | backup copies of both at sectors 6 and 7)                   |
//! | FAT #1, FAT #2    | the file allocation table, twice                            |
//! | root directory    | FAT12/16 only: a fixed region of 32-byte entries            |
//! | data (clusters)   | FAT32 root directory, then every other directory in path    |
//! |                   | order, then every file's data in path order, each one       |
//! |                   | contiguous; then free clusters (the slack)                  |
//!
//! Sizing: the number of clusters is what the contents need plus 5% and 4
//! clusters, raised to reach `min_size`. The FAT type follows from the cluster
//! count as the Microsoft FAT specification (fatgen103) defines it (< 4085
//! FAT12, < 65525 FAT16, else FAT32), with a margin of 16 clusters kept from
//! each boundary. Volumes under 4 MiB are FAT12, under 512 MiB FAT16 (cluster
//! size from fatgen103's FAT16 table), larger ones FAT32 (its FAT32 table).
//!
//! Names: a name that is already a valid upper-case 8.3 name is stored as is;
//! every other name gets VFAT long-name entries plus a short name: the
//! upper-cased name when that is a valid 8.3 name (e.g. `bootx64.efi` ->
//! `BOOTX64.EFI`), else a `BASIS~N.EXT` alias with the smallest N unused in
//! that directory (names that are valid 8.3 names are reserved first, the rest
//! get aliases in sorted order). Names equal up to case are an error.
//!
//! Timestamps: each entry's creation/write/access stamps are its node's mtime
//! read as UTC, clamped to FAT's range 1980-01-01 00:00:00 ..= 2107-12-31
//! 23:59:58 and rounded down to 2 seconds; the volume label entry carries
//! 1980-01-01 00:00. The reader returns those stamps as mtimes. Files whose
//! mode has no write bit get the read-only attribute (read back as 0444;
//! others read back as 0644, directories as 0755).

use crate::tree::{Kind, Node, Tree};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Options for [`write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Volume label, at most 11 characters, stored upper-cased (empty: none).
    pub volume_label: String,
    /// Volume serial number (BPB VolID); callers derive it from content.
    pub volume_id: u32,
    /// Minimum image size in bytes; the image may be larger.
    pub min_size: u64,
}

/// The three FAT variants, which differ in FAT entry width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

const BPS: u64 = 512;
const DIR_ENTRY: u64 = 32;

/// Directory entry attribute bits.
const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
/// READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID marks a long-name entry.
const ATTR_LONG_NAME: u8 = 0x0F;
/// LFN entry "last (first stored) entry" flag in the ordinal byte.
const LFN_LAST: u8 = 0x40;
/// NT reserved byte flags (case of an 8.3 name) set by other writers.
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;

/// Cluster-count limits per type with a 16-cluster margin from each boundary.
const FAT12_MAX_CLUSTERS: u64 = 4084 - 16;
const FAT16_MIN_CLUSTERS: u64 = 4085 + 16;
const FAT16_MAX_CLUSTERS: u64 = 65524 - 16;
const FAT32_MIN_CLUSTERS: u64 = 65525 + 16;
/// Highest valid FAT32 cluster number is 0x0FFFFFF6 (0x0FFFFFF7 marks bad).
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF6 - 1;

/// Directories may hold at most 65536 entries (fatgen103).
const MAX_DIR_ENTRIES: u64 = 65536;
/// Long names are at most 255 UTF-16 units.
const MAX_LFN_UNITS: usize = 255;
/// Reader: deepest directory nesting accepted.
const MAX_DEPTH: usize = 128;

/// 1980-01-01T00:00:00Z and 2107-12-31T23:59:58Z in Unix seconds.
const FAT_EPOCH_MIN: u64 = 315_532_800;
const FAT_EPOCH_MAX: u64 = 4_354_819_198;

// ---------------------------------------------------------------------------
// Dates

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar (era-based civil-from-days conversion).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01 (inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds -> FAT (date, time). Date: bits 15-9 year-1980, 8-5 month,
/// 4-0 day. Time: bits 15-11 hours, 10-5 minutes, 4-0 seconds/2.
fn fat_datetime(mtime: u64) -> (u16, u16) {
    let t = mtime.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX);
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs / 60) % 60) as u16) << 5)
        | ((secs % 60) / 2) as u16;
    (date, time)
}

/// FAT (date, time) -> Unix seconds. Out-of-range fields (hostile input) are
/// clamped into something representable rather than rejected.
fn unix_from_fat(date: u16, time: u16) -> u64 {
    let y = 1980 + i64::from(date >> 9);
    let m = u32::from((date >> 5) & 0x0F).clamp(1, 12);
    let d = u32::from(date & 0x1F).max(1);
    let days = days_from_civil(y, m, d);
    let secs = i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2;
    u64::try_from(days * 86_400 + secs).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Names

/// Characters allowed in a short (8.3) name besides A-Z and 0-9.
fn is_short_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&c)
}

/// The 11-byte short name of `name` if, after ASCII upper-casing, it is a
/// valid 8.3 name (1-8 character base, optional dot and 1-3 character
/// extension, only short-name characters).
fn as_short_name(name: &str) -> Option<[u8; 11]> {
    let up = name.to_ascii_uppercase();
    let (base, ext) = match up.split_once('.') {
        Some((b, e)) => {
            if e.is_empty() {
                return None;
            }
            (b, e)
        }
        None => (up.as_str(), ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return None;
    }
    if !base.bytes().chain(ext.bytes()).all(is_short_char) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out)
}

/// Basis name and extension for an alias (fatgen103's basis-name steps):
/// upper-case, drop spaces and leading periods, base = text before the last
/// period (embedded periods dropped), ext = up to 3 characters after it;
/// every character not allowed in a short name becomes '_'.
fn alias_basis(name: &str) -> (Vec<u8>, Vec<u8>) {
    let map = |c: char| -> u8 {
        let u = c.to_ascii_uppercase();
        if u.is_ascii() && is_short_char(u as u8) {
            u as u8
        } else {
            b'_'
        }
    };
    let stripped: String = name.chars().filter(|&c| c != ' ').collect();
    let stripped = stripped.trim_start_matches('.');
    let (base, ext) = match stripped.rfind('.') {
        Some(i) => (&stripped[..i], &stripped[i + 1..]),
        None => (stripped, ""),
    };
    let mut b: Vec<u8> = base
        .chars()
        .filter(|&c| c != '.')
        .map(map)
        .take(8)
        .collect();
    if b.is_empty() {
        b.push(b'_');
    }
    let e: Vec<u8> = ext.chars().map(map).take(3).collect();
    (b, e)
}

/// A name the writer accepts: 1-255 UTF-16 units, none of `"*/:<>?\|`, no
/// control characters, not ending in a period or space (which FAT drops).
fn check_long_name(name: &str) -> Result<()> {
    let units = name.encode_utf16().count();
    ensure!(
        (1..=MAX_LFN_UNITS).contains(&units),
        "FAT: name {name:?} is {units} UTF-16 units long (1..=255 allowed)"
    );
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || c == '\u{7f}' || "\"*/:<>?\\|".contains(c))
    {
        bail!("FAT: name {name:?} contains {c:?}, which FAT does not allow");
    }
    ensure!(
        !name.ends_with('.') && !name.ends_with(' '),
        "FAT: name {name:?} ends with a period or space, which FAT drops"
    );
    Ok(())
}

/// VFAT checksum of an 11-byte short name, stored in each of its LFN entries.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b)
    })
}

/// For each name of one directory (sorted), its short name and whether it
/// needs long-name entries.
fn short_names(names: &[&str]) -> Result<Vec<([u8; 11], bool)>> {
    let mut folded: BTreeMap<String, &str> = BTreeMap::new();
    for &n in names {
        check_long_name(n)?;
        if let Some(other) = folded.insert(n.to_uppercase(), n) {
            bail!("FAT: names {other:?} and {n:?} differ only in case, which FAT cannot hold in one directory");
        }
    }
    let mut used: BTreeSet<[u8; 11]> = BTreeSet::new();
    let mut out: Vec<Option<([u8; 11], bool)>> = vec![None; names.len()];
    for (i, &n) in names.iter().enumerate() {
        if let Some(s) = as_short_name(n) {
            if used.insert(s) {
                out[i] = Some((s, n.bytes().any(|c| c.is_ascii_lowercase())));
            }
        }
    }
    for (i, &n) in names.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let (base, ext) = alias_basis(n);
        let mut found = None;
        for k in 1..=999_999u32 {
            let tail = format!("~{k}");
            let keep = base.len().min(8 - tail.len());
            let mut s = [b' '; 11];
            s[..keep].copy_from_slice(&base[..keep]);
            s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            s[8..8 + ext.len()].copy_from_slice(&ext);
            if used.insert(s) {
                found = Some(s);
                break;
            }
        }
        let s = found.with_context(|| format!("FAT: no free short name for {n:?}"))?;
        out[i] = Some((s, true));
    }
    out.into_iter()
        .map(|o| o.context("FAT: internal error: short name not assigned"))
        .collect()
}

fn lfn_slots(name: &str) -> u64 {
    (name.encode_utf16().count() as u64).div_ceil(13)
}

// ---------------------------------------------------------------------------
// Planning

struct EntryPlan<'a> {
    long: &'a str,
    path: &'a str,
    node: &'a Node,
    short: [u8; 11],
    lfn: bool,
}

struct DirPlan<'a> {
    /// "" for the root.
    path: &'a str,
    /// Directory node (None for the root).
    node: Option<&'a Node>,
    entries: Vec<EntryPlan<'a>>,
    /// 32-byte entries used: dot entries / label, LFN entries, short entries.
    slots: u64,
}

struct Plan<'a> {
    dirs: Vec<DirPlan<'a>>,
    files: Vec<(&'a str, &'a [u8])>,
    label: Option<[u8; 11]>,
}

fn volume_label(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    let up = label.to_ascii_uppercase();
    ensure!(
        up.len() <= 11 && up.bytes().all(|c| c == b' ' || is_short_char(c)),
        "FAT: volume label {label:?} must be at most 11 characters A-Z, 0-9, space or !#$%&'()-@^_`{{}}~"
    );
    let mut out = [b' '; 11];
    out[..up.len()].copy_from_slice(up.as_bytes());
    Ok(Some(out))
}

fn plan<'a>(tree: &'a Tree, opts: &Options) -> Result<Plan<'a>> {
    let label = volume_label(&opts.volume_label)?;
    let mut dir_nodes: Vec<(&str, Option<&Node>)> = vec![("", None)];
    let mut files = Vec::new();
    for (path, node) in tree.iter() {
        match &node.kind {
            Kind::Dir => dir_nodes.push((path, Some(node))),
            Kind::File(data) => {
                ensure!(
                    data.len() as u64 <= u32::MAX as u64,
                    "FAT: file {path:?} is {} bytes; FAT files hold at most 4 GiB - 1",
                    data.len()
                );
                files.push((path, data.as_slice()));
            }
            other => bail!(
                "FAT: {path:?} is a {}; FAT holds only directories and regular files",
                match other {
                    Kind::Symlink(_) => "symbolic link",
                    Kind::CharDev { .. } => "character device",
                    _ => "special file",
                }
            ),
        }
    }
    let mut dirs = Vec::with_capacity(dir_nodes.len());
    for (path, node) in dir_nodes {
        let children = tree.children(path);
        let names: Vec<&str> = children.iter().map(|c| c.0).collect();
        let shorts = short_names(&names).with_context(|| {
            format!(
                "FAT: in directory {:?}",
                if path.is_empty() { "/" } else { path }
            )
        })?;
        let mut slots: u64 = if path.is_empty() {
            u64::from(label.is_some())
        } else {
            2
        };
        let mut entries = Vec::with_capacity(children.len());
        for ((long, cpath, cnode), (short, lfn)) in children.into_iter().zip(shorts) {
            slots += 1 + if lfn { lfn_slots(long) } else { 0 };
            entries.push(EntryPlan {
                long,
                path: cpath,
                node: cnode,
                short,
                lfn,
            });
        }
        ensure!(
            slots <= MAX_DIR_ENTRIES,
            "FAT: directory {path:?} needs {slots} entries (at most {MAX_DIR_ENTRIES})"
        );
        dirs.push(DirPlan {
            path,
            node,
            entries,
            slots,
        });
    }
    Ok(Plan { dirs, files, label })
}

impl Plan<'_> {
    /// Clusters the contents take with `cluster_bytes`-byte clusters.
    fn clusters(&self, ft: FatType, cluster_bytes: u64) -> u64 {
        let mut n = 0;
        for d in &self.dirs {
            if d.path.is_empty() && ft != FatType::Fat32 {
                continue; // fixed root directory region
            }
            n += (d.slots * DIR_ENTRY).div_ceil(cluster_bytes).max(1);
        }
        for (_, data) in &self.files {
            n += (data.len() as u64).div_ceil(cluster_bytes);
        }
        n
    }

    /// FAT12/16 root directory entry count: at least 512, a whole number of sectors.
    fn root_entries(&self, ft: FatType) -> Result<u64> {
        if ft == FatType::Fat32 {
            return Ok(0);
        }
        let n = self.dirs.first().map_or(0, |d| d.slots).div_ceil(16) * 16;
        ensure!(
            n <= 65_520,
            "FAT: root directory needs {n} entries, more than FAT12/16 can hold"
        );
        Ok(n.max(512))
    }
}

// ---------------------------------------------------------------------------
// Geometry

#[derive(Clone, Copy, Debug)]
struct Geometry {
    ft: FatType,
    /// Sectors per cluster.
    spc: u64,
    /// Reserved sectors before the first FAT.
    rsvd: u64,
    /// Sectors per FAT.
    fat_sz: u64,
    /// FAT12/16 root directory entries (0 on FAT32).
    root_ent: u64,
    /// Number of data clusters (numbered 2 ..= clusters + 1).
    clusters: u64,
    /// Total sectors.
    total: u64,
}

impl Geometry {
    fn new(ft: FatType, spc: u64, clusters: u64, root_ent: u64) -> Geometry {
        let rsvd = if ft == FatType::Fat32 { 32 } else { 1 };
        let entries = clusters + 2;
        let fat_bytes = match ft {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        };
        let fat_sz = fat_bytes.div_ceil(BPS);
        let g = Geometry {
            ft,
            spc,
            rsvd,
            fat_sz,
            root_ent,
            clusters,
            total: 0,
        };
        Geometry {
            total: g.data_start() + clusters * spc,
            ..g
        }
    }
    fn root_dir_sectors(&self) -> u64 {
        (self.root_ent * DIR_ENTRY).div_ceil(BPS)
    }
    /// First sector of the FAT12/16 root directory region.
    fn root_start(&self) -> u64 {
        self.rsvd + 2 * self.fat_sz
    }
    /// First sector of cluster 2.
    fn data_start(&self) -> u64 {
        self.root_start() + self.root_dir_sectors()
    }
    fn cluster_bytes(&self) -> u64 {
        self.spc * BPS
    }
    fn cluster_offset(&self, c: u32) -> usize {
        ((self.data_start() + (u64::from(c) - 2) * self.spc) * BPS) as usize
    }
}

fn cluster_limits(ft: FatType) -> (u64, u64) {
    match ft {
        FatType::Fat12 => (1, FAT12_MAX_CLUSTERS),
        FatType::Fat16 => (FAT16_MIN_CLUSTERS, FAT16_MAX_CLUSTERS),
        FatType::Fat32 => (FAT32_MIN_CLUSTERS, FAT32_MAX_CLUSTERS),
    }
}

/// Pick type and cluster size from the estimated volume size, then size the
/// cluster count (contents + slack, at least the type's minimum and
/// `min_size`), doubling the cluster size while the count is too large.
fn choose_geometry(plan: &Plan, min_size: u64, force: Option<(FatType, u64)>) -> Result<Geometry> {
    const MIB: u64 = 1 << 20;
    let (ft, mut spc) = match force {
        Some(f) => f,
        None => {
            let est = plan.clusters(FatType::Fat32, 4096) * 4096;
            let est = (est + est / 20 + 64 * 1024).max(min_size);
            if est < 4 * MIB {
                (FatType::Fat12, 1)
            } else if est < 512 * MIB {
                let spc = match est {
                    e if e <= 16 * MIB => 2,
                    e if e <= 128 * MIB => 4,
                    e if e <= 256 * MIB => 8,
                    _ => 16,
                };
                (FatType::Fat16, spc)
            } else {
                let spc = match est {
                    e if e <= 8192 * MIB => 8,
                    e if e <= 16384 * MIB => 16,
                    e if e <= 32768 * MIB => 32,
                    _ => 64,
                };
                (FatType::Fat32, spc)
            }
        }
    };
    let min_sectors = min_size.div_ceil(BPS);
    let root_ent = plan.root_entries(ft)?;
    let (lo, hi) = cluster_limits(ft);
    loop {
        let need = plan.clusters(ft, spc * BPS);
        let mut n = (need + need / 20 + 4).max(lo);
        let mut g = Geometry::new(ft, spc, n, root_ent);
        while g.total < min_sectors && n <= hi {
            n += (min_sectors - g.total).div_ceil(spc);
            g = Geometry::new(ft, spc, n, root_ent);
        }
        if n <= hi && g.total <= u64::from(u32::MAX) {
            return Ok(g);
        }
        spc *= 2;
        ensure!(
            spc <= 64 && force.is_none(),
            "FAT: contents ({need} clusters) do not fit a {ft:?} volume with clusters up to 32 KiB"
        );
    }
}

// ---------------------------------------------------------------------------
// Writer

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Boot sector / BPB (offsets from fatgen103):
/// 0 jump, 3 OEM name, 11 BytsPerSec, 13 SecPerClus, 14 RsvdSecCnt, 16 NumFATs,
/// 17 RootEntCnt, 19 TotSec16, 21 Media, 22 FATSz16, 24 SecPerTrk, 26 NumHeads,
/// 28 HiddSec, 32 TotSec32; then FAT12/16: 36 DrvNum, 37 Reserved1, 38 BootSig,
/// 39 VolID, 43 VolLab, 54 FilSysType; FAT32: 36 FATSz32, 40 ExtFlags, 42 FSVer,
/// 44 RootClus, 48 FSInfo, 50 BkBootSec, 52 Reserved, 64 DrvNum, 65 Reserved1,
/// 66 BootSig, 67 VolID, 71 VolLab, 82 FilSysType; 510 signature 55 AA.
fn boot_sector(g: &Geometry, opts: &Options, label: Option<[u8; 11]>) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = g.ft == FatType::Fat32;
    // Jump over the BPB to a stub that asks the BIOS for the next boot device
    // (int 18h) and halts: this volume is not BIOS-bootable.
    let code_at: usize = if fat32 { 0x5A } else { 0x3E };
    b[0..3].copy_from_slice(&[0xEB, (code_at - 2) as u8, 0x90]);
    b[code_at..code_at + 5].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    put16(&mut b, 11, BPS as u16);
    b[13] = g.spc as u8;
    put16(&mut b, 14, g.rsvd as u16);
    b[16] = 2;
    put16(&mut b, 17, g.root_ent as u16);
    if g.total < 0x10000 && !fat32 {
        put16(&mut b, 19, g.total as u16);
    } else {
        put32(&mut b, 32, g.total as u32);
    }
    b[21] = 0xF8; // fixed media
    if !fat32 {
        put16(&mut b, 22, g.fat_sz as u16);
    }
    put16(&mut b, 24, 63);
    put16(&mut b, 26, 255);
    // HiddSec (28) stays 0: the writer does not know the partition offset.
    let ext = if fat32 {
        put32(&mut b, 36, g.fat_sz as u32);
        put16(&mut b, 40, 0); // FAT mirroring on
        put16(&mut b, 42, 0); // version 0.0
        put32(&mut b, 44, 2); // root directory cluster
        put16(&mut b, 48, 1); // FSInfo sector
        put16(&mut b, 50, 6); // backup boot sector
        64
    } else {
        36
    };
    b[ext] = 0x80; // drive number
    b[ext + 2] = 0x29; // extended boot signature: the next three fields exist
    put32(&mut b, ext + 3, opts.volume_id);
    b[ext + 7..ext + 18].copy_from_slice(&label.unwrap_or(*b"NO NAME    "));
    b[ext + 18..ext + 26].copy_from_slice(match g.ft {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    });
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// FAT32 FSInfo sector: 0 LeadSig 0x41615252, 484 StrucSig 0x61417272,
/// 488 Free_Count, 492 Nxt_Free, 508 TrailSig 0xAA550000.
fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    put32(&mut b, 0, 0x4161_5252);
    put32(&mut b, 484, 0x6141_7272);
    put32(&mut b, 488, free);
    put32(&mut b, 492, next_free);
    put32(&mut b, 508, 0xAA55_0000);
    b
}

/// A 32-byte short directory entry: 0 Name (11), 11 Attr, 12 NTRes,
/// 13 CrtTimeTenth, 14 CrtTime, 16 CrtDate, 18 LstAccDate, 20 FstClusHI,
/// 22 WrtTime, 24 WrtDate, 26 FstClusLO, 28 FileSize.
fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, mtime: u64) -> [u8; 32] {
    let (date, time) = fat_datetime(mtime);
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    put16(&mut e, 14, time);
    put16(&mut e, 16, date);
    put16(&mut e, 18, date);
    put16(&mut e, 20, (cluster >> 16) as u16);
    put16(&mut e, 22, time);
    put16(&mut e, 24, date);
    put16(&mut e, 26, cluster as u16);
    put32(&mut e, 28, size);
    e
}

/// VFAT long-name entries for `name`, in on-disk order (highest ordinal
/// first). Each: 0 Ord (| 0x40 on the last), 1 Name1 (5 units), 11 Attr 0x0F,
/// 12 Type 0, 13 Chksum, 14 Name2 (6 units), 26 FstClusLO 0, 28 Name3 (2 units).
/// The name is NUL-terminated when it does not fill the last entry, then
/// padded with 0xFFFF.
fn lfn_entries(name: &str, checksum: u8) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0);
    }
    units.resize(n * 13, 0xFFFF);
    (1..=n)
        .rev()
        .map(|seq| {
            let chunk = &units[(seq - 1) * 13..seq * 13];
            let mut e = [0u8; 32];
            e[0] = seq as u8 | if seq == n { LFN_LAST } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = checksum;
            let offs = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (u, &o) in chunk.iter().zip(offs.iter()) {
                put16(&mut e, o, *u);
            }
            e
        })
        .collect()
}

/// Write `tree` (directories and regular files only) as a FAT volume.
pub fn write(tree: &Tree, opts: &Options) -> Result<Vec<u8>> {
    write_with(tree, opts, None)
}

/// [`write`] with an optional forced (type, sectors per cluster), for tests.
pub(crate) fn write_with(
    tree: &Tree,
    opts: &Options,
    force: Option<(FatType, u64)>,
) -> Result<Vec<u8>> {
    let plan = plan(tree, opts)?;
    let g = choose_geometry(&plan, opts.min_size, force)?;
    let cb = g.cluster_bytes();
    let len = usize::try_from(g.total * BPS).context("FAT: volume too large for memory")?;
    let mut img = vec![0u8; len];

    // Allocate clusters: FAT32 root, other directories, then files, in order.
    let mut next: u64 = 2;
    let mut chains: Vec<(u32, u64)> = Vec::new(); // (first cluster, count)
    let mut alloc = |count: u64, chains: &mut Vec<(u32, u64)>| -> u32 {
        if count == 0 {
            return 0;
        }
        let first = next as u32;
        next += count;
        chains.push((first, count));
        first
    };
    let mut dir_cluster: BTreeMap<&str, u32> = BTreeMap::new();
    for d in &plan.dirs {
        let c = if d.path.is_empty() && g.ft != FatType::Fat32 {
            0
        } else {
            alloc((d.slots * DIR_ENTRY).div_ceil(cb).max(1), &mut chains)
        };
        dir_cluster.insert(d.path, c);
    }
    let mut file_cluster: BTreeMap<&str, u32> = BTreeMap::new();
    for &(path, data) in &plan.files {
        let c = alloc((data.len() as u64).div_ceil(cb), &mut chains);
        file_cluster.insert(path, c);
    }
    let used = next - 2;
    ensure!(
        used <= g.clusters,
        "FAT: internal error: {used} clusters used of {}",
        g.clusters
    );
    for &(path, data) in &plan.files {
        if let Some(&c) = file_cluster.get(path).filter(|&&c| c != 0) {
            let off = g.cluster_offset(c);
            img[off..off + data.len()].copy_from_slice(data);
        }
    }

    // Directories.
    for d in &plan.dirs {
        let mut buf: Vec<u8> = Vec::with_capacity((d.slots * DIR_ENTRY) as usize);
        let own = dir_cluster.get(d.path).copied().unwrap_or(0);
        if let Some(node) = d.node {
            // ".." names the parent's first cluster; 0 when the parent is
            // the root, even on FAT32 (fatgen103).
            let parent = match d.path.rfind('/') {
                Some(i) => dir_cluster.get(&d.path[..i]).copied().unwrap_or(0),
                None => 0,
            };
            buf.extend_from_slice(&short_entry(
                b".          ",
                ATTR_DIRECTORY,
                own,
                0,
                node.mtime,
            ));
            buf.extend_from_slice(&short_entry(
                b"..         ",
                ATTR_DIRECTORY,
                parent,
                0,
                node.mtime,
            ));
        } else if let Some(label) = plan.label {
            buf.extend_from_slice(&short_entry(&label, ATTR_VOLUME_ID, 0, 0, 0));
        }
        for e in &d.entries {
            if e.lfn {
                for l in lfn_entries(e.long, lfn_checksum(&e.short)) {
                    buf.extend_from_slice(&l);
                }
            }
            let (attr, cluster, size) = match &e.node.kind {
                Kind::Dir => (
                    ATTR_DIRECTORY,
                    dir_cluster.get(e.path).copied().unwrap_or(0),
                    0,
                ),
                Kind::File(data) => {
                    let ro = if e.node.mode & 0o222 == 0 {
                        ATTR_READ_ONLY
                    } else {
                        0
                    };
                    (
                        ATTR_ARCHIVE | ro,
                        file_cluster.get(e.path).copied().unwrap_or(0),
                        data.len() as u32,
                    )
                }
                _ => bail!("FAT: internal error: unexpected node kind at {:?}", e.path),
            };
            buf.extend_from_slice(&short_entry(&e.short, attr, cluster, size, e.node.mtime));
        }
        let off = if own == 0 {
            (g.root_start() * BPS) as usize
        } else {
            g.cluster_offset(own)
        };
        img[off..off + buf.len()].copy_from_slice(&buf);
    }

    // The FAT: entry 0 = media byte with the other bits set, entry 1 = end of
    // chain (also "clean, no errors"), then each chain links to the next
    // cluster and ends with end-of-chain; free clusters are 0.
    let eoc: u32 = match g.ft {
        FatType::Fat12 => 0xFFF,
        FatType::Fat16 => 0xFFFF,
        FatType::Fat32 => 0x0FFF_FFFF,
    };
    let mut fat = vec![0u32; (g.clusters + 2) as usize];
    fat[0] = (eoc & !0xFF) | 0xF8;
    fat[1] = eoc;
    for &(first, count) in &chains {
        for i in 0..count as u32 {
            let c = first + i;
            fat[c as usize] = if u64::from(i) + 1 == count {
                eoc
            } else {
                c + 1
            };
        }
    }
    let fat_off = (g.rsvd * BPS) as usize;
    let fat_len = (g.fat_sz * BPS) as usize;
    {
        let table = &mut img[fat_off..fat_off + fat_len];
        match g.ft {
            FatType::Fat12 => {
                for (pair, out) in fat.chunks(2).zip(table.chunks_mut(3)) {
                    let a = pair[0];
                    let b = pair.get(1).copied().unwrap_or(0);
                    let v = a | (b << 12);
                    let bytes = v.to_le_bytes();
                    let k = out.len();
                    out.copy_from_slice(&bytes[..k]);
                }
            }
            FatType::Fat16 => {
                for (v, out) in fat.iter().zip(table.chunks_mut(2)) {
                    out.copy_from_slice(&(*v as u16).to_le_bytes());
                }
            }
            FatType::Fat32 => {
                for (v, out) in fat.iter().zip(table.chunks_mut(4)) {
                    out.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    img.copy_within(fat_off..fat_off + fat_len, fat_off + fat_len);

    // Boot sector (and FAT32's FSInfo plus backups).
    let bs = boot_sector(&g, opts, plan.label);
    img[..512].copy_from_slice(&bs);
    if g.ft == FatType::Fat32 {
        let next_free = if used < g.clusters {
            next as u32
        } else {
            u32::MAX
        };
        let fsinfo = fsinfo_sector((g.clusters - used) as u32, next_free);
        img[512..1024].copy_from_slice(&fsinfo);
        img[6 * 512..7 * 512].copy_from_slice(&bs);
        img[7 * 512..8 * 512].copy_from_slice(&fsinfo);
    }
    Ok(img)
}

// ---------------------------------------------------------------------------
// Reader

fn le16(b: &[u8], off: usize) -> Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .with_context(|| format!("FAT: read past end at offset {off}"))
}

fn le32(b: &[u8], off: usize) -> Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .with_context(|| format!("FAT: read past end at offset {off}"))
}

/// A parsed, sanity-checked volume.
struct Volume<'a> {
    img: &'a [u8],
    ft: FatType,
    cluster_bytes: usize,
    clusters: u32,
    fat: &'a [u8],
    /// FAT12/16 root directory region.
    root_region: &'a [u8],
    /// FAT32 root directory first cluster.
    root_cluster: u32,
    /// Byte offset of cluster 2.
    data_start: usize,
}

/// What a FAT entry says about the next cluster.
enum Next {
    Cluster(u32),
    End,
}

impl<'a> Volume<'a> {
    fn parse(img: &'a [u8]) -> Result<Volume<'a>> {
        let bs = img.get(..512).with_context(|| {
            format!(
                "FAT: image is {} bytes, too small for a boot sector",
                img.len()
            )
        })?;
        ensure!(
            bs[510] == 0x55 && bs[511] == 0xAA,
            "FAT: boot sector signature is {:02x} {:02x} (expected 55 aa)",
            bs[510],
            bs[511]
        );
        let bps = u64::from(le16(bs, 11)?);
        ensure!(
            matches!(bps, 512 | 1024 | 2048 | 4096),
            "FAT: bytes per sector {bps} (expected 512, 1024, 2048 or 4096)"
        );
        let spc = u64::from(bs[13]);
        ensure!(
            spc.is_power_of_two() && spc <= 128,
            "FAT: sectors per cluster {spc} (expected a power of two up to 128)"
        );
        let rsvd = u64::from(le16(bs, 14)?);
        ensure!(rsvd >= 1, "FAT: reserved sector count is 0");
        let nfats = u64::from(bs[16]);
        ensure!(nfats >= 1, "FAT: number of FATs is 0");
        let root_ent = u64::from(le16(bs, 17)?);
        let tot16 = u64::from(le16(bs, 19)?);
        let fatsz16 = u64::from(le16(bs, 22)?);
        let tot32 = u64::from(le32(bs, 32)?);
        let fat_sz = if fatsz16 != 0 {
            fatsz16
        } else {
            u64::from(le32(bs, 36)?)
        };
        ensure!(fat_sz >= 1, "FAT: sectors per FAT is 0");
        let total = if tot16 != 0 { tot16 } else { tot32 };
        let root_dir_sectors = (root_ent * DIR_ENTRY).div_ceil(bps);
        let meta = rsvd + nfats * fat_sz + root_dir_sectors;
        ensure!(
            total > meta,
            "FAT: total sectors {total} leave no data region after {meta} metadata sectors"
        );
        let clusters = (total - meta) / spc;
        ensure!(clusters >= 1, "FAT: volume has no data clusters");
        let ft = if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        ensure!(
            clusters <= FAT32_MAX_CLUSTERS,
            "FAT: {clusters} clusters is more than FAT32 can address"
        );
        let need = total
            .checked_mul(bps)
            .context("FAT: volume size overflows")?;
        ensure!(
            img.len() as u64 >= need,
            "FAT: image is truncated: the boot sector describes {need} bytes, the image has {}",
            img.len()
        );
        if ft == FatType::Fat32 {
            ensure!(
                root_ent == 0 && fatsz16 == 0,
                "FAT: {clusters} clusters means FAT32, but the BPB has FAT12/16 fields set"
            );
        } else {
            ensure!(
                root_ent != 0,
                "FAT: {clusters} clusters means FAT12/16, but the root entry count is 0"
            );
        }
        let active = if ft == FatType::Fat32 {
            let flags = le16(bs, 40)?;
            if flags & 0x80 != 0 {
                u64::from(flags & 0x0F)
            } else {
                0
            }
        } else {
            0
        };
        ensure!(active < nfats, "FAT: active FAT {active} of {nfats}");
        let fat_start = ((rsvd + active * fat_sz) * bps) as usize;
        let fat = img
            .get(fat_start..fat_start + (fat_sz * bps) as usize)
            .context("FAT: the FAT lies beyond the end of the image")?;
        let bits = match ft {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        ensure!(
            fat.len() as u64 * 8 >= (clusters + 2) * bits,
            "FAT: the FAT ({} bytes) is too small for {clusters} clusters",
            fat.len()
        );
        let root_start = ((rsvd + nfats * fat_sz) * bps) as usize;
        let root_region = img
            .get(root_start..root_start + (root_ent * DIR_ENTRY) as usize)
            .context("FAT: the root directory lies beyond the end of the image")?;
        let root_cluster = if ft == FatType::Fat32 {
            le32(bs, 44)? & 0x0FFF_FFFF
        } else {
            0
        };
        Ok(Volume {
            img,
            ft,
            cluster_bytes: (spc * bps) as usize,
            clusters: clusters as u32,
            fat,
            root_region,
            root_cluster,
            data_start: (meta * bps) as usize,
        })
    }

    fn next(&self, c: u32) -> Result<Next> {
        let (v, eoc_min, bad) = match self.ft {
            FatType::Fat12 => {
                let off = c as usize + c as usize / 2;
                let raw = u32::from(le16(self.fat, off)?);
                let v = if c & 1 == 1 { raw >> 4 } else { raw & 0xFFF };
                (v, 0xFF8, 0xFF7)
            }
            FatType::Fat16 => (u32::from(le16(self.fat, 2 * c as usize)?), 0xFFF8, 0xFFF7),
            FatType::Fat32 => (
                le32(self.fat, 4 * c as usize)? & 0x0FFF_FFFF,
                0x0FFF_FFF8,
                0x0FFF_FFF7,
            ),
        };
        if v >= eoc_min {
            Ok(Next::End)
        } else if v == 0 {
            bail!("FAT: cluster chain runs into free cluster (entry of cluster {c} is 0)")
        } else if v == bad {
            bail!("FAT: cluster chain runs into a bad cluster (after cluster {c})")
        } else {
            Ok(Next::Cluster(v))
        }
    }

    fn cluster(&self, c: u32) -> Result<&'a [u8]> {
        let off = (c as usize)
            .checked_sub(2)
            .and_then(|i| i.checked_mul(self.cluster_bytes))
            .and_then(|o| o.checked_add(self.data_start))
            .context("FAT: cluster offset overflows")?;
        self.img
            .get(off..off + self.cluster_bytes)
            .with_context(|| format!("FAT: cluster {c} lies beyond the end of the image"))
    }

    /// Follow the chain from `start`: all of it (`want` None) or exactly
    /// `want` clusters. Every cluster may be owned by one chain only, which
    /// catches loops and cross-linked chains.
    fn chain(
        &self,
        start: u32,
        want: Option<u64>,
        owned: &mut [u64],
        what: &str,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = start;
        loop {
            ensure!(
                c >= 2 && c <= self.clusters + 1,
                "FAT: {what}: cluster {c} out of range 2..={}",
                self.clusters + 1
            );
            let (word, bit) = ((c / 64) as usize, c % 64);
            let slot = owned
                .get_mut(word)
                .context("FAT: internal error: cluster map too small")?;
            ensure!(
                *slot & (1 << bit) == 0,
                "FAT: {what}: cluster {c} is reached twice (a loop in the chain or a cross-link)"
            );
            *slot |= 1 << bit;
            out.push(c);
            if want == Some(out.len() as u64) {
                return Ok(out);
            }
            match self.next(c).with_context(|| format!("FAT: {what}"))? {
                Next::End => {
                    if let Some(w) = want {
                        bail!(
                            "FAT: {what}: chain ends after {} clusters, its size needs {w}",
                            out.len()
                        );
                    }
                    return Ok(out);
                }
                Next::Cluster(n) => c = n,
            }
        }
    }
}

/// One directory entry as read.
struct RawEntry {
    name: String,
    is_dir: bool,
    read_only: bool,
    cluster: u32,
    size: u32,
    mtime: u64,
}

fn short_display(e: &[u8; 32]) -> String {
    let mut name = [0u8; 11];
    name.copy_from_slice(&e[..11]);
    if name[0] == 0x05 {
        name[0] = 0xE5; // 0x05 stands for a leading 0xE5 byte
    }
    let conv = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        bytes[..end]
            .iter()
            .map(|&b| {
                // Bytes above 0x7F are OEM code page characters; read as Latin-1.
                let c = char::from(b);
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let base = conv(&name[..8], e[12] & NT_LOWER_BASE != 0);
    let ext = conv(&name[8..], e[12] & NT_LOWER_EXT != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Long-name entries collected so far for the next short entry.
struct LfnAcc {
    checksum: u8,
    last_seq: u8,
    /// 13-unit pieces in on-disk order (highest ordinal first).
    pieces: Vec<[u16; 13]>,
}

fn parse_dir(bytes: &[u8], ft: FatType) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    let mut lfn: Option<LfnAcc> = None;
    for chunk in bytes.chunks_exact(32) {
        let mut e = [0u8; 32];
        e.copy_from_slice(chunk);
        if e[0] == 0x00 {
            break; // this and all later entries are free
        }
        if e[0] == 0xE5 {
            lfn = None; // deleted
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LONG_NAME {
            let ord = e[0];
            let seq = ord & 0x3F;
            let mut piece = [0u16; 13];
            let offs = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (p, &o) in piece.iter_mut().zip(offs.iter()) {
                *p = u16::from_le_bytes([e[o], e[o + 1]]);
            }
            if ord & LFN_LAST != 0 && (1..=20).contains(&seq) {
                lfn = Some(LfnAcc {
                    checksum: e[13],
                    last_seq: seq,
                    pieces: vec![piece],
                });
            } else if let Some(acc) = lfn.as_mut().filter(|a| {
                ord & LFN_LAST == 0 && seq >= 1 && seq + 1 == a.last_seq && a.checksum == e[13]
            }) {
                acc.last_seq = seq;
                acc.pieces.push(piece);
            } else {
                lfn = None; // orphaned or out-of-order long-name entry
            }
            continue;
        }
        let acc = lfn.take();
        if attr & ATTR_VOLUME_ID != 0 {
            continue; // volume label
        }
        if &e[..11] == b".          " || &e[..11] == b"..         " {
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        let long = acc
            .filter(|a| a.last_seq == 1 && a.checksum == lfn_checksum(&short))
            .and_then(|a| {
                let units: Vec<u16> = a
                    .pieces
                    .iter()
                    .rev()
                    .flat_map(|p| p.iter().copied())
                    .take_while(|&u| u != 0)
                    .collect();
                String::from_utf16(&units).ok()
            });
        let name = long.unwrap_or_else(|| short_display(&e));
        let hi = if ft == FatType::Fat32 {
            u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        } else {
            0
        };
        out.push(RawEntry {
            name,
            is_dir: attr & ATTR_DIRECTORY != 0,
            read_only: attr & ATTR_READ_ONLY != 0,
            cluster: hi | u32::from(u16::from_le_bytes([e[26], e[27]])),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
            mtime: unix_from_fat(
                u16::from_le_bytes([e[24], e[25]]),
                u16::from_le_bytes([e[22], e[23]]),
            ),
        });
    }
    Ok(out)
}

/// Read a FAT12/16/32 volume back into a tree of directories and files
/// (long names where present, else 8.3 names honouring the NT lower-case
/// flags). Hostile images give an error, never a panic.
pub fn read(image: &[u8]) -> Result<Tree> {
    let v = Volume::parse(image)?;
    let mut owned = vec![0u64; (v.clusters as usize + 2).div_ceil(64)];
    let mut tree = Tree::new();
    // (path, first cluster or 0 for the FAT12/16 root region, depth)
    let root = if v.ft == FatType::Fat32 {
        v.root_cluster
    } else {
        0
    };
    let mut stack: Vec<(String, u32, usize)> = vec![(String::new(), root, 0)];
    while let Some((path, first, depth)) = stack.pop() {
        let shown = if path.is_empty() { "/" } else { path.as_str() };
        let bytes: Vec<u8> = if first == 0 && path.is_empty() {
            v.root_region.to_vec()
        } else {
            let what = format!("directory {shown:?}");
            let mut buf = Vec::new();
            for c in v.chain(first, None, &mut owned, &what)? {
                buf.extend_from_slice(v.cluster(c)?);
            }
            buf
        };
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for e in parse_dir(&bytes, v.ft)? {
            ensure!(
                !e.name.is_empty() && e.name != "." && e.name != ".." && !e.name.contains(['/', '\0']),
                "FAT: directory {shown:?} holds an entry named {:?}, which is not a valid file name",
                e.name
            );
            ensure!(
                seen.insert(e.name.to_uppercase()),
                "FAT: directory {shown:?} holds {:?} twice",
                e.name
            );
            let child = if path.is_empty() {
                e.name.clone()
            } else {
                format!("{path}/{}", e.name)
            };
            if e.is_dir {
                ensure!(
                    depth < MAX_DEPTH,
                    "FAT: directories nested deeper than {MAX_DEPTH} levels at {child:?}"
                );
                ensure!(
                    e.cluster != 0,
                    "FAT: directory {child:?} has no cluster (first cluster 0)"
                );
                let mut node = Node::dir(0o755);
                node.mtime = e.mtime;
                tree.insert(&child, node)
                    .with_context(|| format!("FAT: adding {child:?}"))?;
                stack.push((child, e.cluster, depth + 1));
            } else {
                let size = u64::from(e.size);
                let mut data = Vec::new();
                if size > 0 {
                    let want = size.div_ceil(v.cluster_bytes as u64);
                    ensure!(
                        want <= u64::from(v.clusters),
                        "FAT: file {child:?} claims {size} bytes, more than the volume holds"
                    );
                    let what = format!("file {child:?}");
                    let chain = v.chain(e.cluster, Some(want), &mut owned, &what)?;
                    data.reserve(size as usize);
                    for c in chain {
                        let chunk = v.cluster(c)?;
                        let take = (size as usize - data.len()).min(chunk.len());
                        data.extend_from_slice(&chunk[..take]);
                    }
                }
                let mut node = Node::file(data, if e.read_only { 0o444 } else { 0o644 });
                node.mtime = e.mtime;
                tree.insert(&child, node)
                    .with_context(|| format!("FAT: adding {child:?}"))?;
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const T: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC, even

    fn opts(label: &str, min_size: u64) -> Options {
        Options {
            volume_label: label.into(),
            volume_id: 0x1234_5678,
            min_size,
        }
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Set every mtime to `T` and modes to what the reader produces.
    fn canonical(mut t: Tree) -> Tree {
        for (_, n) in t.iter_mut() {
            n.mtime = T;
            if n.kind == Kind::Dir {
                n.mode = 0o755;
            } else if n.mode & 0o222 != 0 {
                n.mode = 0o644;
            } else {
                n.mode = 0o444;
            }
        }
        t
    }

    fn esp_tree(efi_len: usize) -> Tree {
        let mut t = Tree::new();
        t.insert(
            "EFI/BOOT/BOOTX64.EFI",
            Node::file(pattern(efi_len, 1), 0o644),
        )
        .unwrap();
        t.insert(
            "fuse/image.json",
            Node::file(b"{\"name\":\"demo\",\"version\":\"1\"}\n".to_vec(), 0o644),
        )
        .unwrap();
        canonical(t)
    }

    fn rich_tree() -> Tree {
        let mut t = Tree::new();
        let add = |t: &mut Tree, p: &str, n: Node| t.insert(p, n).unwrap();
        add(
            &mut t,
            "EFI/BOOT/BOOTX64.EFI",
            Node::file(pattern(200_000, 1), 0o644),
        );
        add(
            &mut t,
            "EFI/boot2/bootx64.efi",
            Node::file(pattern(3000, 2), 0o644),
        );
        add(&mut t, "fuse/image.json", Node::file(b"{}".to_vec(), 0o644));
        add(&mut t, "README", Node::file(b"plain 8.3".to_vec(), 0o644));
        add(
            &mut t,
            "A long file name with spaces and \u{fc}n\u{ef}c\u{f6}d\u{e9}.txt",
            Node::file(pattern(777, 3), 0o644),
        );
        add(
            &mut t,
            &format!("{}.dat", "n".repeat(200)),
            Node::file(pattern(10, 4), 0o644),
        );
        add(&mut t, "empty-file", Node::file(Vec::new(), 0o644));
        add(&mut t, "readonly.txt", Node::file(b"ro".to_vec(), 0o444));
        add(&mut t, "empty dir", Node::dir(0o755));
        add(
            &mut t,
            "a/b/c/d/e/f/deep.bin",
            Node::file(pattern(513, 5), 0o644),
        );
        for i in 0..120 {
            add(
                &mut t,
                &format!("many/file number {i:03}.json"),
                Node::file(pattern(i * 7, i as u32), 0o644),
            );
        }
        canonical(t)
    }

    fn fat_type_of(img: &[u8]) -> FatType {
        Volume::parse(img).unwrap().ft
    }

    #[test]
    fn short_name_generation() {
        let names = [
            ".hidden",
            "A long file name.txt",
            "IMAGE~1.JSO",
            "README",
            "abcdefghij.txt",
            "abcdefghik.txt",
            "bootx64.efi",
            "image.json",
            "x+y.tar.gz",
        ];
        let got = short_names(&names).unwrap();
        let s = |x: &[u8; 11]| String::from_utf8(x.to_vec()).unwrap();
        let got: Vec<(String, bool)> = got.iter().map(|(n, l)| (s(n), *l)).collect();
        let want = [
            ("HIDDEN~1   ", true),
            ("ALONGF~1TXT", true),
            ("IMAGE~1 JSO", false),
            ("README     ", false),
            ("ABCDEF~1TXT", true),
            ("ABCDEF~2TXT", true),
            ("BOOTX64 EFI", true),
            ("IMAGE~2 JSO", true), // ~1 is taken by the literal 8.3 name
            ("X_YTAR~1GZ ", true),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(a, b)| (a.to_string(), *b)).collect();
        assert_eq!(got, want);
        assert!(short_names(&["Foo", "foo"]).is_err());
        assert!(short_names(&["a:b"]).is_err());
        assert!(short_names(&["trailing."]).is_err());
        assert!(short_names(&[&"x".repeat(256)]).is_err());
        assert!(short_names(&[&"x".repeat(255)]).is_ok());
    }

    #[test]
    fn lfn_entries_layout() {
        let short = *b"IMAGE~1 JSO";
        let sum = lfn_checksum(&short);
        let e = lfn_entries("image.json", sum);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(e[0][11], 0x0F);
        assert_eq!(e[0][13], sum);
        assert_eq!(&e[0][1..3], &[b'i', 0]);
        // 10 characters, the NUL terminator (unit 10, offset 24), FstClusLO 0, then 0xFFFF.
        assert_eq!(&e[0][22..24], &[b'n', 0]);
        assert_eq!(&e[0][24..28], &[0, 0, 0, 0]);
        assert_eq!(&e[0][28..32], &[0xFF, 0xFF, 0xFF, 0xFF]);
        let e = lfn_entries(&"z".repeat(26), sum);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0][0], e[1][0]), (0x42, 0x01));
        assert_eq!(&e[0][30..32], &[b'z', 0], "exact fit: no terminator");
    }

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1980, 1, 1) * 86_400, FAT_EPOCH_MIN as i64);
        assert_eq!(
            days_from_civil(2107, 12, 31) * 86_400 + 86_398,
            FAT_EPOCH_MAX as i64
        );
        for d in (3600..50_000).step_by(37) {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(fat_datetime(0), (0x0021, 0));
        // 2023-11-14 22:13:20
        assert_eq!(
            fat_datetime(T),
            ((43 << 9) | (11 << 5) | 14, (22 << 11) | (13 << 5) | 10)
        );
        assert_eq!(unix_from_fat(fat_datetime(T).0, fat_datetime(T).1), T);
        assert_eq!(
            unix_from_fat(fat_datetime(T + 1).0, fat_datetime(T + 1).1),
            T
        );
        assert_eq!(
            unix_from_fat(fat_datetime(u64::MAX).0, fat_datetime(u64::MAX).1),
            FAT_EPOCH_MAX
        );
        unix_from_fat(0xFFFF, 0xFFFF); // garbage fields: no panic
    }

    #[test]
    fn round_trip_rich_tree() {
        let t = rich_tree();
        let img = write(&t, &opts("EFI", 0)).unwrap();
        assert_eq!(img.len() % 512, 0);
        let back = read(&img).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn round_trip_each_type() {
        let t = rich_tree();
        for (force, want) in [
            (Some((FatType::Fat12, 4)), FatType::Fat12),
            (Some((FatType::Fat16, 1)), FatType::Fat16),
            (Some((FatType::Fat32, 1)), FatType::Fat32),
        ] {
            let img = write_with(&t, &opts("X", 0), force).unwrap();
            assert_eq!(fat_type_of(&img), want);
            assert_eq!(read(&img).unwrap(), t, "{want:?}");
        }
    }

    #[test]
    fn mtimes_are_clamped_and_rounded() {
        let mut t = Tree::new();
        let mut a = Node::file(b"a".to_vec(), 0o644);
        a.mtime = 0;
        let mut b = Node::file(b"b".to_vec(), 0o644);
        b.mtime = T + 1;
        let mut c = Node::file(b"c".to_vec(), 0o644);
        c.mtime = u64::MAX;
        t.insert("a", a).unwrap();
        t.insert("b", b).unwrap();
        t.insert("c", c).unwrap();
        let back = read(&write(&t, &opts("", 0)).unwrap()).unwrap();
        assert_eq!(back.get("a").unwrap().mtime, FAT_EPOCH_MIN);
        assert_eq!(back.get("b").unwrap().mtime, T);
        assert_eq!(back.get("c").unwrap().mtime, FAT_EPOCH_MAX);
    }

    #[test]
    fn raw_directory_has_lfn_with_matching_checksum() {
        let t = esp_tree(1000);
        let img = write(&t, &opts("EFI", 0)).unwrap();
        let v = Volume::parse(&img).unwrap();
        let mut owned = vec![0u64; 1 + v.clusters as usize / 64];
        // Root holds: label, EFI, fuse (lower case: LFN + FUSE short name).
        let root = v.root_region;
        assert_eq!(&root[..11], b"EFI        ");
        assert_eq!(root[11], ATTR_VOLUME_ID);
        assert_eq!(&root[32..43], b"EFI        ");
        assert_eq!(root[32 + 11], ATTR_DIRECTORY);
        assert_eq!(root[64 + 11], ATTR_LONG_NAME);
        assert_eq!(&root[96..107], b"FUSE       ");
        assert_eq!(root[64 + 13], lfn_checksum(b"FUSE       "));
        // fuse/: ".", "..", LFN for image.json, IMAGE~1.JSO.
        let fuse_cluster = u16::from_le_bytes([root[96 + 26], root[96 + 27]]) as u32;
        let c = v.chain(fuse_cluster, None, &mut owned, "fuse").unwrap();
        let dir = v.cluster(c[0]).unwrap();
        assert_eq!(&dir[..11], b".          ");
        assert_eq!(u16::from_le_bytes([dir[26], dir[27]]) as u32, fuse_cluster);
        assert_eq!(&dir[32..43], b"..         ");
        assert_eq!(u16::from_le_bytes([dir[32 + 26], dir[32 + 27]]), 0);
        assert_eq!(dir[64], 0x41);
        assert_eq!(dir[64 + 11], ATTR_LONG_NAME);
        assert_eq!(&dir[96..107], b"IMAGE~1 JSO");
        assert_eq!(dir[64 + 13], lfn_checksum(b"IMAGE~1 JSO"));
        assert_eq!(dir[128], 0, "end of directory");
    }

    #[test]
    fn deterministic_and_order_independent() {
        let a = write(&rich_tree(), &opts("EFI", 0)).unwrap();
        let b = write(&rich_tree(), &opts("EFI", 0)).unwrap();
        assert_eq!(a, b);
        let mut t1 = Tree::new();
        let mut t2 = Tree::new();
        let files = [
            ("z/y", b"1".to_vec()),
            ("a/b", b"2".to_vec()),
            ("m", b"3".to_vec()),
        ];
        for (p, d) in &files {
            t1.insert(p, Node::file(d.clone(), 0o644)).unwrap();
        }
        for (p, d) in files.iter().rev() {
            t2.insert(p, Node::file(d.clone(), 0o644)).unwrap();
        }
        assert_eq!(
            write(&t1, &opts("", 0)).unwrap(),
            write(&t2, &opts("", 0)).unwrap()
        );
        let other_id = Options {
            volume_id: 1,
            ..opts("EFI", 0)
        };
        assert_ne!(write(&rich_tree(), &other_id).unwrap(), a);
    }

    #[test]
    fn sizing_and_type_selection() {
        // Tiny config disk: FAT12.
        let mut t = Tree::new();
        t.insert("env", Node::file(b"A=1\n".to_vec(), 0o644))
            .unwrap();
        let img = write(&t, &opts("FUSECONFIG", 0)).unwrap();
        assert_eq!(fat_type_of(&img), FatType::Fat12);
        assert!(img.len() < 1 << 20, "tiny volume is {} bytes", img.len());
        // min_size is honoured, and the length is whole sectors.
        let img = write(&t, &opts("FUSECONFIG", 3_000_001)).unwrap();
        assert!(img.len() >= 3_000_001 && img.len().is_multiple_of(512));
        assert_eq!(fat_type_of(&img), FatType::Fat12);
        let img = write(&t, &opts("", 6 << 20)).unwrap();
        assert_eq!(fat_type_of(&img), FatType::Fat16);
        assert!(img.len() >= 6 << 20);
        // An ESP with a 12 MB UKI: FAT16, contents + ~5% slack.
        let esp = esp_tree(12 << 20);
        let img = write(&esp, &opts("EFI", 0)).unwrap();
        assert_eq!(fat_type_of(&img), FatType::Fat16);
        assert!(
            img.len() > 12 << 20 && img.len() < 13 << 20,
            "{}",
            img.len()
        );
        assert_eq!(read(&img).unwrap(), esp);
    }

    #[test]
    fn large_min_size_gives_fat32() {
        let esp = esp_tree(100_000);
        let img = write(&esp, &opts("EFI", 520 << 20)).unwrap();
        assert_eq!(fat_type_of(&img), FatType::Fat32);
        assert!(img.len() >= 520 << 20);
        assert_eq!(read(&img).unwrap(), esp);
        check_with_tools(&img, &esp, true);
    }

    #[test]
    fn rejects_what_fat_cannot_hold() {
        let mut t = Tree::new();
        t.insert("link", Node::symlink("x")).unwrap();
        let e = format!("{:#}", write(&t, &opts("", 0)).unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        let mut t = Tree::new();
        t.insert("dev/console", Node::char_dev(5, 1, 0o600))
            .unwrap();
        assert!(write(&t, &opts("", 0)).is_err());
        let t = Tree::new();
        assert!(write(&t, &opts("TWELVE CHARS", 0)).is_err());
        assert!(write(&t, &opts("bad.label", 0)).is_err());
        assert!(write(&t, &opts("lower ok", 0)).is_ok());
        let mut t = Tree::new();
        t.insert("d/Readme", Node::file(Vec::new(), 0o644)).unwrap();
        t.insert("d/README", Node::file(Vec::new(), 0o644)).unwrap();
        let e = format!("{:#}", write(&t, &opts("", 0)).unwrap_err());
        assert!(
            e.contains("differ only in case") && e.contains("\"d\""),
            "{e}"
        );
        // An empty tree is a valid, empty volume.
        let img = write(&Tree::new(), &opts("", 0)).unwrap();
        assert!(read(&img).unwrap().is_empty());
    }

    #[test]
    fn hostile_images_give_errors_not_panics() {
        let t = rich_tree();
        for force in [
            (FatType::Fat12, 4),
            (FatType::Fat16, 1),
            (FatType::Fat32, 1),
        ] {
            let img = write_with(&t, &opts("X", 0), Some(force)).unwrap();
            let v = Volume::parse(&img).unwrap();
            let fat_start = v.fat.as_ptr() as usize - img.as_ptr() as usize;
            let root_start = v.data_start - v.root_region.len();
            // Regions worth corrupting: boot sector (and FSInfo), the used
            // part of the FAT, the root region and the first directory clusters.
            let regions = [
                (0, 1024),
                (fat_start, fat_start + 1024),
                (root_start, v.data_start + 16 * 1024),
            ];
            let mut d = img.clone();
            let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ force.1;
            for _ in 0..800 {
                let mut saved = Vec::new();
                for k in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (a, b) = regions[(x % 3) as usize];
                    let off = a + ((x >> 8) % (b - a) as u64) as usize;
                    saved.push((off, d[off]));
                    d[off] = (x >> (32 + k * 8)) as u8;
                }
                let _ = read(&d);
                for (off, b) in saved.into_iter().rev() {
                    d[off] = b;
                }
            }
            assert_eq!(d, img);
            for cut in [0, 100, 511, 512, 4096, img.len() / 2, img.len() - 1] {
                assert!(read(&img[..cut]).is_err(), "{force:?} cut at {cut}");
            }
        }
    }

    /// Patch FAT entry `c` (both copies) of a FAT16 image.
    fn set_fat16(img: &mut [u8], c: u32, v: u16) {
        let rsvd = u16::from_le_bytes([img[14], img[15]]) as usize;
        let fat_sz = u16::from_le_bytes([img[22], img[23]]) as usize;
        for k in 0..2 {
            let off = (rsvd + k * fat_sz) * 512 + 2 * c as usize;
            img[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }

    #[test]
    fn loops_and_cross_links_are_detected() {
        let mut t = Tree::new();
        t.insert("big", Node::file(pattern(5000, 9), 0o644))
            .unwrap();
        t.insert("small", Node::file(pattern(10, 9), 0o644))
            .unwrap();
        let img = write_with(&t, &opts("", 0), Some((FatType::Fat16, 1))).unwrap();
        assert_eq!(read(&img).unwrap(), canonical_modes(&t));
        // "big" occupies clusters 2..=11; make cluster 5 point back to 3.
        let mut d = img.clone();
        set_fat16(&mut d, 5, 3);
        let e = format!("{:#}", read(&d).unwrap_err());
        assert!(e.contains("reached twice") && e.contains("big"), "{e}");
        // Chain ends early.
        let mut d = img.clone();
        set_fat16(&mut d, 5, 0xFFFF);
        let e = format!("{:#}", read(&d).unwrap_err());
        assert!(e.contains("chain ends after 4 clusters"), "{e}");
        // Runs into a free cluster.
        let mut d = img.clone();
        set_fat16(&mut d, 5, 0);
        assert!(format!("{:#}", read(&d).unwrap_err()).contains("free cluster"));
        // "small" (cluster 12) cross-linked into "big": point its entry at cluster 4.
        let mut d = img.clone();
        let v = Volume::parse(&img).unwrap();
        let root_off = v.data_start - v.root_region.len();
        let pos = (0..v.root_region.len())
            .step_by(32)
            .find(|&o| &img[root_off + o..root_off + o + 11] == b"SMALL      ")
            .unwrap();
        d[root_off + pos + 26..root_off + pos + 28].copy_from_slice(&4u16.to_le_bytes());
        let e = format!("{:#}", read(&d).unwrap_err());
        assert!(e.contains("reached twice"), "{e}");
    }

    #[test]
    fn directory_cycle_is_detected() {
        let mut t = Tree::new();
        t.insert("a/b/f", Node::file(b"x".to_vec(), 0o644)).unwrap();
        let img = write_with(&t, &opts("", 0), Some((FatType::Fat32, 1))).unwrap();
        // Directories: root = 2, a = 3, b = 4. Point b's entry (in a) at a.
        let v = Volume::parse(&img).unwrap();
        let a = v.cluster_bytes + v.data_start;
        assert_eq!(img[a + 64 + 11], ATTR_LONG_NAME);
        assert_eq!(&img[a + 96..a + 107], b"B          ");
        let mut d = img.clone();
        d[a + 96 + 26] = 3;
        let e = format!("{:#}", read(&d).unwrap_err());
        assert!(e.contains("reached twice"), "{e}");
    }

    fn canonical_modes(t: &Tree) -> Tree {
        let mut t = t.clone();
        for (_, n) in t.iter_mut() {
            n.mtime = FAT_EPOCH_MIN;
        }
        t
    }

    // ----- cross-checks with dosfstools and mtools -----

    use crate::testutil::require_tool as have;

    fn run(cmd: &mut Command) -> (bool, Vec<u8>, String) {
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// fsck.fat finds nothing to fix; mtools lists and reads every file with
    /// identical bytes.
    fn check_with_tools(img: &[u8], tree: &Tree, has_label: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fat.img");
        std::fs::write(&path, img).unwrap();
        if have("fsck.fat") {
            let (ok, out, err) = run(Command::new("fsck.fat").arg("-n").arg("-V").arg(&path));
            let out = String::from_utf8_lossy(&out);
            assert!(ok, "fsck.fat failed:\n{out}\n{err}");
            // Anything besides the banner, pass names and the summary is a finding.
            let findings: Vec<&str> = out
                .lines()
                .chain(err.lines())
                .filter(|l| {
                    !(l.starts_with("fsck.fat ")
                        || l.starts_with("Starting ")
                        || l.contains(" files, ")
                        || l.trim().is_empty())
                })
                .collect();
            assert!(findings.is_empty(), "fsck.fat reports:\n{out}\n{err}");
            // It counts every file and directory, plus the volume label entry.
            let entries = tree.len() + usize::from(has_label);
            assert!(out.contains(&format!(": {entries} files, ")), "{out}");
        }
        if have("mcopy") && have("mdir") {
            let img_arg = path.to_str().unwrap();
            for (p, n) in tree.iter() {
                let Some(data) = n.data() else { continue };
                let (ok, out, err) =
                    run(Command::new("mcopy").args(["-n", "-i", img_arg, &format!("::/{p}"), "-"]));
                assert!(ok, "mcopy {p}: {err}");
                assert!(
                    out == data,
                    "mcopy {p}: {} bytes differ from {} written",
                    out.len(),
                    data.len()
                );
            }
            let (ok, out, err) = run(Command::new("mdir").args(["-i", img_arg, "-/", "-b", "::/"]));
            assert!(ok, "mdir: {err}");
            let listed = String::from_utf8_lossy(&out);
            for (p, _) in tree.iter() {
                assert!(
                    listed
                        .lines()
                        .any(|l| l.trim_end_matches('/') == format!("::/{p}")),
                    "mdir misses {p}:\n{listed}"
                );
            }
        }
    }

    #[test]
    fn cross_check_with_fsck_and_mtools() {
        let t = rich_tree();
        for force in [
            None,
            Some((FatType::Fat12, 4)),
            Some((FatType::Fat16, 1)),
            Some((FatType::Fat32, 1)),
        ] {
            let img = write_with(&t, &opts("EFI", 0), force).unwrap();
            check_with_tools(&img, &t, true);
        }
        let esp = esp_tree(14 << 20);
        let img = write(&esp, &opts("EFI", 0)).unwrap();
        check_with_tools(&img, &esp, true);
        // mdir of the ESP's boot directory shows the file under its name.
        if have("mdir") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("esp.img");
            std::fs::write(&path, &img).unwrap();
            let (ok, out, err) =
                run(Command::new("mdir").args(["-i", path.to_str().unwrap(), "::/EFI/BOOT"]));
            let out = String::from_utf8_lossy(&out);
            assert!(ok, "{err}");
            assert!(
                out.contains("BOOTX64  EFI") && out.contains(&(14u64 << 20).to_string()),
                "{out}"
            );
            let (ok, out, _) =
                run(Command::new("mdir").args(["-i", path.to_str().unwrap(), "::/fuse"]));
            assert!(ok && String::from_utf8_lossy(&out).contains("image.json"));
        }
    }

    fn mtools(args: &[&str], img: &Path) {
        let mut cmd = Command::new(args[0]);
        cmd.arg("-i").arg(img).args(&args[1..]);
        let (ok, _, err) = run(&mut cmd);
        assert!(ok, "{args:?}: {err}");
    }

    #[test]
    fn reads_images_made_by_mkfs_fat_and_mcopy() {
        if !(have("mkfs.fat") && have("mcopy")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("EFI/BOOT/BOOTX64.EFI", pattern(300_000, 11)),
            ("fuse/image.json", b"{\"a\":1}".to_vec()),
            ("lower.txt", b"lower-case 8.3".to_vec()),
            ("A much longer name, with commas.text", pattern(5000, 12)),
            ("empty", Vec::new()),
        ];
        for (fat, size_mb) in [("12", "2"), ("16", "20"), ("32", "40")] {
            let img = dir.path().join(format!("fat{fat}.img"));
            let (ok, _, err) = run(Command::new("mkfs.fat")
                .args(["-C", "-F", fat, "-n", "REFVOL", "-i", "0badcafe"])
                .arg(&img)
                .arg(format!("{}", size_mb.parse::<u64>().unwrap() * 1024)));
            assert!(ok, "mkfs.fat: {err}");
            mtools(
                &["mmd", "::/EFI", "::/EFI/BOOT", "::/fuse", "::/empty dir"],
                &img,
            );
            for (i, (p, data)) in files.iter().enumerate() {
                let local = src.join(format!("f{i}"));
                std::fs::write(&local, data).unwrap();
                mtools(
                    &["mcopy", local.to_str().unwrap(), &format!("::/{p}")],
                    &img,
                );
            }
            let bytes = std::fs::read(&img).unwrap();
            let tree = read(&bytes).unwrap_or_else(|e| panic!("FAT{fat}: {e:#}"));
            let want = match fat {
                "12" => FatType::Fat12,
                "16" => FatType::Fat16,
                _ => FatType::Fat32,
            };
            assert_eq!(fat_type_of(&bytes), want);
            for (p, data) in &files {
                let n = tree
                    .get(p)
                    .unwrap_or_else(|| panic!("FAT{fat}: {p} missing"));
                assert_eq!(n.data().unwrap(), &data[..], "FAT{fat}: {p}");
            }
            assert_eq!(tree.get("empty dir").map(|n| &n.kind), Some(&Kind::Dir));
            let names: Vec<&str> = tree.children("").iter().map(|c| c.0).collect();
            assert_eq!(
                names,
                [
                    "A much longer name, with commas.text",
                    "EFI",
                    "empty",
                    "empty dir",
                    "fuse",
                    "lower.txt"
                ]
            );
        }
    }
}
