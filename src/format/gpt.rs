//! GPT (GUID Partition Table) disks: a deterministic writer and a verifying reader.
//!
//! Layout written by [`write_disk`] (512-byte logical blocks, "LBA"):
//!
//! | LBA                 | contents                                              |
//! |---------------------|-------------------------------------------------------|
//! | 0                   | protective MBR: one partition of type 0xEE            |
//! | 1                   | primary GPT header                                    |
//! | 2 ..= 33            | primary partition entry array (128 entries × 128 B)   |
//! | 34 .. 2048          | unused (zero)                                         |
//! | 2048 ..             | partitions, each starting on a 4 KiB (8-LBA) boundary, |
//! |                     | each sized to its data rounded up to 4 KiB (zero pad) |
//! | last-33 ..= last-2  | backup partition entry array                          |
//! | last                | backup GPT header                                     |
//!
//! The disk is rounded up to a whole MiB. Field meanings follow the UEFI
//! specification, chapter "GUID Partition Table (GPT) Disk Layout".

use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::ops::Range;

/// Logical block size in bytes.
pub const SECTOR: u64 = 512;
/// EFI System Partition type GUID.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux file system data type GUID.
pub const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Number of partition entries written (the minimum the spec allows for 16 KiB).
const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry written.
const ENTRY_SIZE: u32 = 128;
/// Sectors taken by one entry array (128 × 128 / 512).
const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// "EFI PART", the header signature.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Header revision 1.0.
const GPT_REVISION: u32 = 0x0001_0000;
/// Size of the header structure proper (the rest of its block is zero).
const HEADER_SIZE: u32 = 92;
/// The first partition starts at 1 MiB.
const FIRST_PARTITION_LBA: u64 = 2048;
/// Later partitions start on 4 KiB boundaries and are sized in 4 KiB units.
const PARTITION_ALIGN_LBA: u64 = 8;
/// The whole disk is a multiple of 1 MiB.
const DISK_ALIGN_LBA: u64 = 2048;
/// Maximum partition name length in UTF-16 code units (72 bytes).
const NAME_UNITS: usize = 36;

// ---------------------------------------------------------------------------
// CRC32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as GPT uses it.

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC32 (IEEE) of `data`, the checksum GPT headers and entry arrays carry.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------
// GUIDs

/// A GUID, stored in its on-disk byte order: the first three fields
/// little-endian, the last two (clock sequence and node) as they are written.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

/// Positions of the on-disk bytes in canonical text order
/// (`aabbccdd-eeff-gghh-...` -> disk bytes dd cc bb aa ff ee hh gg ...).
const TEXT_ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

impl Guid {
    /// The all-zero GUID (an unused partition entry's type).
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parse the canonical text form `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`
    /// (either case) into on-disk bytes.
    pub fn parse(s: &str) -> Result<Guid> {
        let b = s.as_bytes();
        ensure!(
            b.len() == 36,
            "GUID {s:?}: expected 36 characters (8-4-4-4-12 hex digits), got {}",
            b.len()
        );
        let mut text = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                ensure!(b[i] == b'-', "GUID {s:?}: expected '-' at position {i}");
                i += 1;
                continue;
            }
            let hi = hex_val(b[i]).with_context(|| format!("GUID {s:?}: bad hex digit"))?;
            let lo = hex_val(b[i + 1]).with_context(|| format!("GUID {s:?}: bad hex digit"))?;
            text[n] = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        Ok(Guid::from_text_order(text))
    }

    /// A content-derived GUID: the first 16 bytes of `digest`, read in text
    /// order (so the GUID's text form starts with the digest's hex), with the
    /// RFC 4122 version (4, random) and variant (10xx) bits set.
    pub fn from_hash(digest: &[u8; 32]) -> Guid {
        let mut text = [0u8; 16];
        text.copy_from_slice(&digest[..16]);
        text[6] = (text[6] & 0x0F) | 0x40;
        text[8] = (text[8] & 0x3F) | 0x80;
        Guid::from_text_order(text)
    }

    fn from_text_order(text: [u8; 16]) -> Guid {
        let mut disk = [0u8; 16];
        for (t, &d) in TEXT_ORDER.iter().enumerate() {
            disk[d] = text[t];
        }
        Guid(disk)
    }

    fn text_order(&self) -> [u8; 16] {
        let mut text = [0u8; 16];
        for (t, &d) in TEXT_ORDER.iter().enumerate() {
            text[t] = self.0[d];
        }
        text
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.text_order();
        for (i, b) in t.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Writer

/// One partition to write.
pub struct PartitionSpec<'a> {
    /// Partition name, stored as UTF-16LE, at most 36 code units.
    pub name: String,
    /// What the partition holds (e.g. [`ESP_TYPE`]); must not be zero.
    pub type_guid: Guid,
    /// This partition's own GUID (unique on the disk).
    pub unique_guid: Guid,
    /// Attribute bits (bit 0 required, bit 2 legacy BIOS bootable, 48..63 type-specific).
    pub attributes: u64,
    /// Contents; the partition is this rounded up to 4 KiB with zeros.
    pub data: &'a [u8],
}

fn align_up(v: u64, a: u64) -> Result<u64> {
    v.checked_add(a - 1)
        .map(|x| x / a * a)
        .context("disk size overflows")
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Cylinder/head/sector address of `lba` in the conventional 255-head,
/// 63-sector geometry, or 0xFFFFFF when it cannot be represented.
fn chs(lba: u64) -> [u8; 3] {
    let c = lba / (255 * 63);
    if c > 1023 {
        return [0xFF, 0xFF, 0xFF];
    }
    let h = (lba / 63) % 255;
    let s = lba % 63 + 1;
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xC0) as u8),
        (c & 0xFF) as u8,
    ]
}

/// The 128-byte partition entry:
/// 0 partition type GUID, 16 unique partition GUID, 32 starting LBA,
/// 40 ending LBA (inclusive), 48 attributes, 56 name (72 bytes, UTF-16LE).
fn encode_entry(p: &PartitionSpec, first: u64, last: u64, out: &mut [u8]) {
    out[0..16].copy_from_slice(&p.type_guid.0);
    out[16..32].copy_from_slice(&p.unique_guid.0);
    put_u64(out, 32, first);
    put_u64(out, 40, last);
    put_u64(out, 48, p.attributes);
    for (i, u) in p.name.encode_utf16().enumerate() {
        out[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
}

struct HeaderFields {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    entries_crc: u32,
}

/// The GPT header (one block):
/// 0 signature "EFI PART", 8 revision, 12 header size, 16 header CRC32 (over
/// `header size` bytes with this field zero), 20 reserved, 24 MyLBA,
/// 32 AlternateLBA, 40 FirstUsableLBA, 48 LastUsableLBA, 56 DiskGUID,
/// 72 PartitionEntryLBA, 80 NumberOfPartitionEntries, 84 SizeOfPartitionEntry,
/// 88 PartitionEntryArrayCRC32; the rest of the block is zero.
fn encode_header(h: &HeaderFields, out: &mut [u8]) {
    out[0..8].copy_from_slice(GPT_SIGNATURE);
    put_u32(out, 8, GPT_REVISION);
    put_u32(out, 12, HEADER_SIZE);
    put_u64(out, 24, h.my_lba);
    put_u64(out, 32, h.alternate_lba);
    put_u64(out, 40, h.first_usable);
    put_u64(out, 48, h.last_usable);
    out[56..72].copy_from_slice(&h.disk_guid.0);
    put_u64(out, 72, h.entries_lba);
    put_u32(out, 80, ENTRY_COUNT);
    put_u32(out, 84, ENTRY_SIZE);
    put_u32(out, 88, h.entries_crc);
    let crc = crc32(&out[..HEADER_SIZE as usize]);
    put_u32(out, 16, crc);
}

/// Write a GPT disk holding `parts` in order (partition numbers 1, 2, ...).
pub fn write_disk(disk_guid: Guid, parts: &[PartitionSpec]) -> Result<Vec<u8>> {
    ensure!(
        parts.len() <= ENTRY_COUNT as usize,
        "too many partitions: {} (at most {ENTRY_COUNT})",
        parts.len()
    );
    // Place the partitions.
    let mut ranges = Vec::with_capacity(parts.len());
    let mut next = FIRST_PARTITION_LBA;
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        let units = p.name.encode_utf16().count();
        ensure!(
            units <= NAME_UNITS,
            "partition {n} name {:?} is {units} UTF-16 units long (at most {NAME_UNITS})",
            p.name
        );
        ensure!(
            !p.name.contains('\0'),
            "partition {n} name {:?} contains NUL",
            p.name
        );
        ensure!(
            !p.type_guid.is_zero(),
            "partition {n} ({:?}) has the zero type GUID (means unused)",
            p.name
        );
        for (j, q) in parts[..i].iter().enumerate() {
            ensure!(
                q.unique_guid != p.unique_guid,
                "partitions {} and {n} share the unique GUID {}",
                j + 1,
                p.unique_guid
            );
        }
        let first = align_up(next, PARTITION_ALIGN_LBA)?;
        let bytes = align_up((p.data.len() as u64).max(1), PARTITION_ALIGN_LBA * SECTOR)?;
        let last = first + bytes / SECTOR - 1;
        ranges.push((first, last));
        next = last + 1;
    }
    let total = align_up(next + ENTRY_ARRAY_SECTORS + 1, DISK_ALIGN_LBA)?;
    let len: usize = (total * SECTOR)
        .try_into()
        .context("disk too large for memory")?;
    let mut disk = vec![0u8; len];

    // Partition entry array (identical for primary and backup).
    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (i, (p, &(first, last))) in parts.iter().zip(&ranges).enumerate() {
        let off = i * ENTRY_SIZE as usize;
        encode_entry(p, first, last, &mut entries[off..off + ENTRY_SIZE as usize]);
        let (a, b) = (
            (first * SECTOR) as usize,
            (first * SECTOR) as usize + p.data.len(),
        );
        disk[a..b].copy_from_slice(p.data);
    }
    let entries_crc = crc32(&entries);

    // Protective MBR (legacy MBR layout: partition table at 446, signature at 510).
    // Entry: boot indicator 0, starting CHS 0x000200, OS type 0xEE, ending CHS,
    // starting LBA 1, size in LBA (capped at 0xFFFFFFFF).
    {
        let pe = &mut disk[446..462];
        pe[0] = 0;
        pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        pe[4] = 0xEE;
        pe[5..8].copy_from_slice(&chs(total - 1));
        put_u32(pe, 8, 1);
        put_u32(pe, 12, (total - 1).min(0xFFFF_FFFF) as u32);
        disk[510] = 0x55;
        disk[511] = 0xAA;
    }

    let first_usable = 2 + ENTRY_ARRAY_SECTORS;
    let last_usable = total - 2 - ENTRY_ARRAY_SECTORS;
    let backup_entries_lba = total - 1 - ENTRY_ARRAY_SECTORS;
    let s = SECTOR as usize;
    let primary = HeaderFields {
        my_lba: 1,
        alternate_lba: total - 1,
        first_usable,
        last_usable,
        disk_guid,
        entries_lba: 2,
        entries_crc,
    };
    let backup = HeaderFields {
        my_lba: total - 1,
        alternate_lba: 1,
        entries_lba: backup_entries_lba,
        ..primary
    };
    encode_header(&primary, &mut disk[s..2 * s]);
    disk[2 * s..2 * s + entries.len()].copy_from_slice(&entries);
    let be = backup_entries_lba as usize * s;
    disk[be..be + entries.len()].copy_from_slice(&entries);
    encode_header(&backup, &mut disk[len - s..]);
    Ok(disk)
}

// ---------------------------------------------------------------------------
// Reader

/// One used partition entry read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// 1-based slot number in the entry array.
    pub index: u32,
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub attributes: u64,
    /// First LBA of the partition.
    pub first_lba: u64,
    /// Last LBA of the partition (inclusive).
    pub last_lba: u64,
}

impl PartitionInfo {
    /// The partition's bytes within the disk image.
    pub fn byte_range(&self) -> Range<usize> {
        let start = self.first_lba.saturating_mul(SECTOR);
        let end = self.last_lba.saturating_add(1).saturating_mul(SECTOR);
        let conv = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        conv(start)..conv(end)
    }
}

/// What [`read_disk`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    pub disk_guid: Guid,
    pub partitions: Vec<PartitionInfo>,
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], off: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[off..off + 16]);
    Guid(g)
}

/// A verified header plus its verified entry array.
struct Header<'a> {
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
    entries: &'a [u8],
}

fn sector(disk: &[u8], lba: u64) -> Option<&[u8]> {
    let start = usize::try_from(lba.checked_mul(SECTOR)?).ok()?;
    disk.get(start..start.checked_add(SECTOR as usize)?)
}

fn read_header<'a>(disk: &'a [u8], lba: u64, which: &str) -> Result<Header<'a>> {
    let total = disk.len() as u64 / SECTOR;
    let blk = sector(disk, lba).with_context(|| {
        format!("{which} GPT header: LBA {lba} is beyond the end of the disk ({total} blocks)")
    })?;
    ensure!(
        &blk[0..8] == GPT_SIGNATURE,
        "{which} GPT header at LBA {lba}: bad signature {:02x?} (expected \"EFI PART\")",
        &blk[0..8]
    );
    let size = get_u32(blk, 12);
    ensure!(
        (HEADER_SIZE..=SECTOR as u32).contains(&size),
        "{which} GPT header at LBA {lba}: header size {size} out of range {HEADER_SIZE}..=512"
    );
    let stored = get_u32(blk, 16);
    let mut copy = blk[..size as usize].to_vec();
    copy[16..20].fill(0);
    let computed = crc32(&copy);
    ensure!(
        stored == computed,
        "{which} GPT header at LBA {lba}: header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
    );
    let my_lba = get_u64(blk, 24);
    ensure!(
        my_lba == lba,
        "{which} GPT header at LBA {lba}: MyLBA field says {my_lba}"
    );
    let first_usable = get_u64(blk, 40);
    let last_usable = get_u64(blk, 48);
    ensure!(
        first_usable <= last_usable.saturating_add(1) && last_usable < total,
        "{which} GPT header: usable range {first_usable}..={last_usable} invalid for a disk of {total} blocks"
    );
    let entries_lba = get_u64(blk, 72);
    let entry_count = get_u32(blk, 80);
    let entry_size = get_u32(blk, 84);
    ensure!(
        entry_size >= 128 && entry_size.is_power_of_two(),
        "{which} GPT header: partition entry size {entry_size} is not 128 × 2^n"
    );
    let array_len = entry_count as u64 * entry_size as u64;
    let start = entries_lba.checked_mul(SECTOR);
    let entries = start
        .and_then(|s| Some((s, s.checked_add(array_len)?)))
        .and_then(|(s, e)| disk.get(usize::try_from(s).ok()?..usize::try_from(e).ok()?))
        .with_context(|| {
            format!(
                "{which} GPT partition entry array ({entry_count} × {entry_size} bytes at LBA {entries_lba}) is beyond the end of the disk"
            )
        })?;
    let entries_crc = get_u32(blk, 88);
    let computed = crc32(entries);
    ensure!(
        entries_crc == computed,
        "{which} GPT partition entry array CRC mismatch: header says {entries_crc:#010x}, computed {computed:#010x}"
    );
    Ok(Header {
        alternate_lba: get_u64(blk, 32),
        first_usable,
        last_usable,
        disk_guid: guid_at(blk, 56),
        entry_count,
        entry_size,
        entries_crc,
        entries,
    })
}

/// Read and verify a GPT disk: the protective MBR's signature and 0xEE
/// partition, both headers' CRCs, both entry arrays' CRCs, that the backup
/// agrees with the primary, and that partitions lie in the usable range
/// without overlapping.
pub fn read_disk(disk: &[u8]) -> Result<DiskInfo> {
    let mbr = disk.get(..512).with_context(|| {
        format!(
            "disk is {} bytes, too small for a protective MBR",
            disk.len()
        )
    })?;
    ensure!(
        mbr[510] == 0x55 && mbr[511] == 0xAA,
        "protective MBR: bad boot signature {:02x} {:02x} (expected 55 aa)",
        mbr[510],
        mbr[511]
    );
    ensure!(
        (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE),
        "protective MBR: no partition of type 0xEE (not a GPT disk)"
    );
    let primary = read_header(disk, 1, "primary")?;
    let backup = read_header(disk, primary.alternate_lba, "backup")?;
    ensure!(
        backup.alternate_lba == 1,
        "backup GPT header: AlternateLBA is {} (expected 1)",
        backup.alternate_lba
    );
    let mismatch = |what: &str, p: String, b: String| -> Result<()> {
        if p != b {
            bail!("backup GPT header does not match primary: {what} is {b} in the backup, {p} in the primary")
        }
        Ok(())
    };
    mismatch(
        "disk GUID",
        primary.disk_guid.to_string(),
        backup.disk_guid.to_string(),
    )?;
    mismatch(
        "first usable LBA",
        primary.first_usable.to_string(),
        backup.first_usable.to_string(),
    )?;
    mismatch(
        "last usable LBA",
        primary.last_usable.to_string(),
        backup.last_usable.to_string(),
    )?;
    mismatch(
        "entry count",
        primary.entry_count.to_string(),
        backup.entry_count.to_string(),
    )?;
    mismatch(
        "entry size",
        primary.entry_size.to_string(),
        backup.entry_size.to_string(),
    )?;
    mismatch(
        "entry array CRC",
        format!("{:#010x}", primary.entries_crc),
        format!("{:#010x}", backup.entries_crc),
    )?;
    ensure!(
        primary.entries == backup.entries,
        "backup GPT partition entry array differs from the primary"
    );

    let mut partitions = Vec::new();
    for (i, e) in primary
        .entries
        .chunks_exact(primary.entry_size as usize)
        .enumerate()
    {
        let index = i as u32 + 1;
        let type_guid = guid_at(e, 0);
        if type_guid.is_zero() {
            continue;
        }
        let first_lba = get_u64(e, 32);
        let last_lba = get_u64(e, 40);
        ensure!(
            first_lba <= last_lba,
            "GPT partition {index}: first LBA {first_lba} is after last LBA {last_lba}"
        );
        ensure!(
            first_lba >= primary.first_usable && last_lba <= primary.last_usable,
            "GPT partition {index}: LBAs {first_lba}..={last_lba} outside the usable range {}..={}",
            primary.first_usable,
            primary.last_usable
        );
        let units: Vec<u16> = e[56..56 + 2 * NAME_UNITS]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16(&units)
            .with_context(|| format!("GPT partition {index}: name is not valid UTF-16"))?;
        partitions.push(PartitionInfo {
            index,
            name,
            type_guid,
            unique_guid: guid_at(e, 16),
            attributes: get_u64(e, 48),
            first_lba,
            last_lba,
        });
    }
    let mut by_start: Vec<&PartitionInfo> = partitions.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for w in by_start.windows(2) {
        ensure!(
            w[0].last_lba < w[1].first_lba,
            "GPT partitions {} and {} overlap",
            w[0].index,
            w[1].index
        );
    }
    Ok(DiskInfo {
        disk_guid: primary.disk_guid,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use std::process::Command;

    fn g(s: &str) -> Guid {
        Guid::parse(s).unwrap()
    }

    fn sample_parts<'a>(esp: &'a [u8], root: &'a [u8]) -> Vec<PartitionSpec<'a>> {
        vec![
            PartitionSpec {
                name: "ESP".into(),
                type_guid: g(ESP_TYPE),
                unique_guid: Guid::from_hash(&[1; 32]),
                attributes: 0,
                data: esp,
            },
            PartitionSpec {
                name: "layer-base".into(),
                type_guid: g(LINUX_DATA_TYPE),
                unique_guid: Guid::from_hash(&[2; 32]),
                attributes: 1 << 60,
                data: root,
            },
        ]
    }

    fn sample() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let esp: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let root: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8 + 1).collect();
        let disk = write_disk(Guid::from_hash(&[9; 32]), &sample_parts(&esp, &root)).unwrap();
        (disk, esp, root)
    }

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_and_disk_order() {
        let esp = g(ESP_TYPE);
        assert_eq!(
            esp.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(esp.to_string(), ESP_TYPE);
        assert_eq!(
            g(&LINUX_DATA_TYPE.to_lowercase()).to_string(),
            LINUX_DATA_TYPE
        );
        assert!(Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93").is_err());
        assert!(Guid::parse("C12A7328+F81F-11D2-BA4B-00A0C93EC93B").is_err());
        assert!(Guid::parse("G12A7328-F81F-11D2-BA4B-00A0C93EC93B").is_err());
        assert!(Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC9é").is_err());
    }

    #[test]
    fn guid_from_hash_sets_version_and_variant() {
        let mut d = [0xFFu8; 32];
        d[0] = 0x12;
        let s = Guid::from_hash(&d).to_string();
        assert_eq!(&s[..2], "12");
        assert_eq!(&s[14..15], "4", "version nibble in {s}");
        assert!(
            matches!(&s[19..20], "8" | "9" | "A" | "B"),
            "variant in {s}"
        );
        assert_eq!(s, "12FFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF");
        assert_ne!(Guid::from_hash(&[1; 32]), Guid::from_hash(&[2; 32]));
    }

    #[test]
    fn round_trip_and_layout() {
        let (disk, esp, root) = sample();
        assert!(disk.len().is_multiple_of(1 << 20));
        let info = read_disk(&disk).unwrap();
        assert_eq!(info.disk_guid, Guid::from_hash(&[9; 32]));
        assert_eq!(info.partitions.len(), 2);
        let p1 = &info.partitions[0];
        let p2 = &info.partitions[1];
        assert_eq!((p1.index, p2.index), (1, 2));
        assert_eq!(p1.name, "ESP");
        assert_eq!(p2.name, "layer-base");
        assert_eq!(p1.type_guid, g(ESP_TYPE));
        assert_eq!(p2.type_guid, g(LINUX_DATA_TYPE));
        assert_eq!(p2.attributes, 1 << 60);
        assert_eq!(p1.first_lba, 2048);
        // 1,000,000 bytes rounded up to 4 KiB = 245 × 4096 = 1960 sectors.
        assert_eq!(p1.last_lba, 2048 + 1960 - 1);
        assert_eq!(p2.first_lba, 2048 + 1960);
        assert_eq!(p2.first_lba % 8, 0);
        assert_eq!(p2.last_lba - p2.first_lba + 1, 16); // 5000 -> 8192 bytes
        assert_eq!(&disk[p1.byte_range()][..esp.len()], &esp[..]);
        assert!(disk[p1.byte_range()][esp.len()..].iter().all(|&b| b == 0));
        assert_eq!(&disk[p2.byte_range()][..root.len()], &root[..]);
        // Backup header is the last block, and points back to LBA 1.
        let last = &disk[disk.len() - 512..];
        assert_eq!(&last[..8], b"EFI PART");
        assert_eq!(get_u64(last, 32), 1);
        // Protective MBR size field.
        assert_eq!(get_u32(&disk, 446 + 12) as usize, disk.len() / 512 - 1);
        assert_eq!(disk[446 + 4], 0xEE);
    }

    #[test]
    fn deterministic() {
        assert_eq!(sample().0, sample().0);
    }

    #[test]
    fn empty_disk_and_empty_partition() {
        let d = write_disk(Guid::from_hash(&[3; 32]), &[]).unwrap();
        assert!(read_disk(&d).unwrap().partitions.is_empty());
        let parts = [PartitionSpec {
            name: String::new(),
            type_guid: g(LINUX_DATA_TYPE),
            unique_guid: Guid::from_hash(&[4; 32]),
            attributes: 0,
            data: &[],
        }];
        let d = write_disk(Guid::from_hash(&[3; 32]), &parts).unwrap();
        let info = read_disk(&d).unwrap();
        assert_eq!(
            info.partitions[0].last_lba - info.partitions[0].first_lba,
            7
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let mk = |name: &str, t: Guid, u: u8| PartitionSpec {
            name: name.into(),
            type_guid: t,
            unique_guid: Guid::from_hash(&[u; 32]),
            attributes: 0,
            data: b"x",
        };
        let dg = Guid::from_hash(&[0; 32]);
        assert!(write_disk(dg, &[mk(&"n".repeat(37), g(ESP_TYPE), 1)]).is_err());
        assert!(write_disk(dg, &[mk(&"n".repeat(36), g(ESP_TYPE), 1)]).is_ok());
        assert!(write_disk(dg, &[mk("a", Guid::ZERO, 1)]).is_err());
        assert!(write_disk(dg, &[mk("a", g(ESP_TYPE), 1), mk("b", g(ESP_TYPE), 1)]).is_err());
    }

    fn err_of(disk: &[u8]) -> String {
        format!("{:#}", read_disk(disk).unwrap_err())
    }

    #[test]
    fn corruption_is_reported() {
        let (disk, _, _) = sample();
        let len = disk.len();
        let flip = |off: usize| {
            let mut d = disk.clone();
            d[off] ^= 0x40;
            d
        };
        let e = err_of(&flip(2 * 512 + 60)); // primary entry array, partition 1 name
        assert!(
            e.contains("primary") && e.contains("entry array CRC"),
            "{e}"
        );
        let e = err_of(&flip(512 + 60)); // primary header, disk GUID
        assert!(e.contains("primary") && e.contains("header CRC"), "{e}");
        let e = err_of(&flip(len - 512 + 60)); // backup header
        assert!(e.contains("backup") && e.contains("header CRC"), "{e}");
        let e = err_of(&flip(len - 33 * 512 + 200)); // backup entry array
        assert!(e.contains("backup") && e.contains("entry array CRC"), "{e}");
        let e = err_of(&flip(510));
        assert!(e.contains("MBR"), "{e}");
        let e = err_of(&flip(512));
        assert!(e.contains("signature"), "{e}");
        let e = err_of(&disk[..len - 512]);
        assert!(e.contains("backup"), "{e}");
        // A backup that is self-consistent but disagrees with the primary.
        let other = write_disk(
            Guid::from_hash(&[8; 32]),
            &sample_parts(&[1u8; 1_000_000], &[2u8; 5000]),
        )
        .unwrap();
        assert_eq!(other.len(), len);
        let mut mixed = disk.clone();
        mixed[len - 33 * 512..].copy_from_slice(&other[len - 33 * 512..]);
        let e = err_of(&mixed);
        assert!(
            e.contains("does not match primary") && e.contains("disk GUID"),
            "{e}"
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let (disk, _, _) = sample();
        let head = &disk[..34 * 512];
        // Deterministic pseudo-random corruption of the metadata region.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut d = disk.clone();
            let off = (x % head.len() as u64) as usize;
            d[off] = (x >> 32) as u8;
            let _ = read_disk(&d);
            let _ = read_disk(&d[..(x >> 40) as usize % d.len()]);
        }
        // Headers whose fields point far away.
        let mut d = disk.clone();
        put_u64(&mut d[512..1024], 72, u64::MAX / 2);
        put_u32(&mut d[512..1024], 80, u32::MAX);
        let crc = {
            let mut h = d[512..512 + 92].to_vec();
            h[16..20].fill(0);
            crc32(&h)
        };
        put_u32(&mut d[512..1024], 16, crc);
        assert!(err_of(&d).contains("beyond the end"));
        assert!(read_disk(&[]).is_err());
    }

    #[test]
    fn cross_check_sfdisk_and_sgdisk() {
        let (disk, _, _) = sample();
        let info = read_disk(&disk).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &disk).unwrap();
        if require_tool("sfdisk") {
            let out = Command::new("sfdisk")
                .arg("--json")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let t = &v["partitiontable"];
            assert_eq!(t["label"], "gpt");
            assert_eq!(t["id"], info.disk_guid.to_string());
            assert_eq!(t["firstlba"], 34);
            assert_eq!(t["lastlba"], (disk.len() / 512 - 34) as u64);
            let ps = t["partitions"].as_array().unwrap();
            assert_eq!(ps.len(), 2);
            for (p, q) in info.partitions.iter().zip(ps) {
                assert_eq!(q["start"], p.first_lba);
                assert_eq!(q["size"], p.last_lba - p.first_lba + 1);
                assert_eq!(q["type"], p.type_guid.to_string());
                assert_eq!(q["uuid"], p.unique_guid.to_string());
                assert_eq!(q["name"], p.name.as_str());
            }
        }
        if require_tool("sgdisk") {
            let out = Command::new("sgdisk")
                .arg("-v")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("No problems found"), "{text}");
            let out = Command::new("sgdisk")
                .arg("-p")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("Disk identifier (GUID): {}", info.disk_guid)),
                "{text}"
            );
            assert!(text.contains("layer-base"), "{text}");
        }
    }

    #[test]
    fn reads_a_disk_made_by_sgdisk() {
        if !require_tool("sgdisk") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 8 << 20]).unwrap();
        let out = Command::new("sgdisk")
            .args([
                "-U",
                "11111111-2222-4333-8444-555555555555",
                "-n",
                "1:2048:+1M",
                "-t",
                "1:EF00",
                "-c",
                "1:EFI system",
                "-u",
                "1:AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE",
                "-n",
                "3:4096:+2M",
                "-t",
                "3:8300",
                "-c",
                "3:data",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let disk = std::fs::read(&path).unwrap();
        let info = read_disk(&disk).unwrap();
        assert_eq!(
            info.disk_guid.to_string(),
            "11111111-2222-4333-8444-555555555555"
        );
        assert_eq!(info.partitions.len(), 2);
        let p1 = &info.partitions[0];
        assert_eq!(p1.index, 1);
        assert_eq!(p1.name, "EFI system");
        assert_eq!(p1.type_guid, g(ESP_TYPE));
        assert_eq!(
            p1.unique_guid.to_string(),
            "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"
        );
        assert_eq!((p1.first_lba, p1.last_lba), (2048, 4095));
        let p3 = &info.partitions[1];
        assert_eq!(p3.index, 3);
        assert_eq!(p3.type_guid, g(LINUX_DATA_TYPE));
        assert_eq!((p3.first_lba, p3.last_lba), (4096, 4096 + 4096 - 1));
    }
}
