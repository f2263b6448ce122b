//! VMDK hosted sparse extents (VMware's "Virtual Disk Format 5.0"): `monolithicSparse` (one
//! file, descriptor embedded, grain tables preallocated, uncompressed grains; for VMware
//! Workstation/Fusion, VirtualBox, QEMU) and `streamOptimized` (deflate-compressed grains with
//! markers, grain directory at the end; the disk format inside an OVA). All-zero grains are
//! left unallocated. Writers and reader are pure; the CID comes from the image digest.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};

/// "KDMV" as the little-endian u32 0x564d444b.
pub const MAGIC: &[u8; 4] = b"KDMV";
const SECTOR: u64 = 512;
/// Grain: 128 sectors, 64 KiB.
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table (a table is 2 KiB, four sectors).
const GTES: u64 = 512;
const GT_SECTORS: u64 = GTES * 4 / SECTOR;
/// The embedded descriptor's space, in sectors (10 KiB).
const DESCRIPTOR_SECTORS: u64 = 20;
const FLAG_NL_DETECT: u32 = 1;
const FLAG_REDUNDANT_GT: u32 = 1 << 1;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// gdOffset in the header of a stream-optimized extent: the real one is in the footer.
const GD_AT_END: u64 = u64::MAX;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// The SparseExtentHeader fields fuse writes.
struct Header {
    version: u32,
    flags: u32,
    capacity: u64,
    descriptor_offset: u64,
    descriptor_size: u64,
    rgd_offset: u64,
    gd_offset: u64,
    overhead: u64,
    compress: u16,
}

impl Header {
    /// The 512-byte little-endian header sector.
    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&self.version.to_le_bytes());
        h[8..12].copy_from_slice(&self.flags.to_le_bytes());
        h[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
        h[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        h[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        h[44..48].copy_from_slice(&(GTES as u32).to_le_bytes());
        h[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        h[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        h[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        h[72] = 0; // uncleanShutdown
                   // The newline-corruption test characters.
        h[73] = b'\n';
        h[74] = b' ';
        h[75] = b'\r';
        h[76] = b'\n';
        h[77..79].copy_from_slice(&self.compress.to_le_bytes());
        h
    }
}

/// The embedded descriptor text for an extent of `capacity` sectors named `file_name`.
fn descriptor(create_type: &str, capacity: u64, file_name: &str, digest: &[u8; 32]) -> String {
    let cid = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    // CID 0xffffffff means "no parent" in parentCID; avoid it as a disk's own CID.
    let cid = if cid == u32::MAX { 0xfffffffe } else { cid };
    let cylinders = (capacity / (16 * 63)).clamp(1, 16383);
    let uuid = super::uuid::uuid_from(digest, "vmdk");
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create_type}\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{file_name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n\
         ddb.uuid.image = \"{uuid}\"\n"
    )
}

fn capacity_of(raw: &[u8]) -> Result<u64> {
    ensure!(
        (raw.len() as u64).is_multiple_of(SECTOR),
        "the raw image is {} bytes, not a whole number of 512-byte sectors",
        raw.len()
    );
    Ok(raw.len() as u64 / SECTOR)
}

fn grain_of(raw: &[u8], g: u64) -> &[u8] {
    let s = (g * GRAIN) as usize;
    &raw[s..(s + GRAIN as usize).min(raw.len())]
}

fn put_u32(b: &mut [u8], at: u64, v: u32) {
    let at = at as usize;
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A `monolithicSparse` VMDK of `raw`; `file_name` is the name the descriptor's extent line
/// gives (the file's own name).
pub fn write_sparse(raw: &[u8], file_name: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
    let capacity = capacity_of(raw)?;
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let tables = grains.div_ceil(GTES).max(1);
    let gd_sectors = (tables * 4).div_ceil(SECTOR);
    let rgd = 1 + DESCRIPTOR_SECTORS;
    let rgts = rgd + gd_sectors;
    let gd = rgts + tables * GT_SECTORS;
    let gts = gd + gd_sectors;
    let overhead = (gts + tables * GT_SECTORS).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let used: Vec<u64> = (0..grains)
        .filter(|&g| grain_of(raw, g).iter().any(|&b| b != 0))
        .collect();
    let total = overhead + used.len() as u64 * GRAIN_SECTORS;
    let mut out = vec![0u8; usize::try_from(total * SECTOR).context("image too large")?];
    let header = Header {
        version: 1,
        flags: FLAG_NL_DETECT | FLAG_REDUNDANT_GT,
        capacity,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        rgd_offset: rgd,
        gd_offset: gd,
        overhead,
        compress: 0,
    };
    out[..SECTOR as usize].copy_from_slice(&header.bytes());
    let desc = descriptor("monolithicSparse", capacity, file_name, digest);
    ensure!(
        desc.len() as u64 <= DESCRIPTOR_SECTORS * SECTOR,
        "VMDK descriptor too long"
    );
    out[SECTOR as usize..SECTOR as usize + desc.len()].copy_from_slice(desc.as_bytes());
    for t in 0..tables {
        put_u32(
            &mut out,
            rgd * SECTOR + t * 4,
            (rgts + t * GT_SECTORS) as u32,
        );
        put_u32(&mut out, gd * SECTOR + t * 4, (gts + t * GT_SECTORS) as u32);
    }
    for (i, &g) in used.iter().enumerate() {
        let sector = overhead + i as u64 * GRAIN_SECTORS;
        let sector32 = u32::try_from(sector).context("VMDK larger than 2 TiB")?;
        let (t, e) = (g / GTES, g % GTES);
        put_u32(&mut out, (rgts + t * GT_SECTORS) * SECTOR + e * 4, sector32);
        put_u32(&mut out, (gts + t * GT_SECTORS) * SECTOR + e * 4, sector32);
        let src = grain_of(raw, g);
        let at = (sector * SECTOR) as usize;
        out[at..at + src.len()].copy_from_slice(src);
    }
    Ok(out)
}

/// A metadata marker sector: value (sectors of what follows), size 0, type.
fn marker(value: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    m[0..8].copy_from_slice(&value.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn pad_to_sector(out: &mut Vec<u8>) {
    let rem = out.len() % SECTOR as usize;
    if rem != 0 {
        out.resize(out.len() + SECTOR as usize - rem, 0);
    }
}

/// A `streamOptimized` VMDK of `raw` (zlib-compressed grains, deterministic level 6).
pub fn write_stream(raw: &[u8], file_name: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
    let capacity = capacity_of(raw)?;
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let tables = grains.div_ceil(GTES).max(1);
    let mut header = Header {
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: GRAIN_SECTORS,
        compress: 1,
    };
    let mut out = header.bytes();
    let desc = descriptor("streamOptimized", capacity, file_name, digest);
    ensure!(
        desc.len() as u64 <= DESCRIPTOR_SECTORS * SECTOR,
        "VMDK descriptor too long"
    );
    out.extend_from_slice(desc.as_bytes());
    out.resize((GRAIN_SECTORS * SECTOR) as usize, 0);
    let mut gd = vec![0u8; (tables * 4).div_ceil(SECTOR) as usize * SECTOR as usize];
    for t in 0..tables {
        let mut gt = vec![0u8; (GT_SECTORS * SECTOR) as usize];
        let mut any = false;
        for e in 0..GTES {
            let g = t * GTES + e;
            if g >= grains {
                break;
            }
            let src = grain_of(raw, g);
            if src.iter().all(|&b| b == 0) {
                continue;
            }
            any = true;
            let sector = u32::try_from(out.len() as u64 / SECTOR).context("VMDK too large")?;
            put_u32(&mut gt, e * 4, sector);
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            z.write_all(src)?;
            let data = z.finish()?;
            out.extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&data);
            pad_to_sector(&mut out);
        }
        if any {
            out.extend_from_slice(&marker(GT_SECTORS, MARKER_GT));
            let at = u32::try_from(out.len() as u64 / SECTOR).context("VMDK too large")?;
            put_u32(&mut gd, t * 4, at);
            out.extend_from_slice(&gt);
        }
    }
    out.extend_from_slice(&marker(gd.len() as u64 / SECTOR, MARKER_GD));
    header.gd_offset = out.len() as u64 / SECTOR;
    out.extend_from_slice(&gd);
    out.extend_from_slice(&marker(1, MARKER_FOOTER));
    out.extend_from_slice(&header.bytes());
    out.extend_from_slice(&marker(0, MARKER_EOS));
    Ok(out)
}

fn le32(b: &[u8], at: u64) -> Result<u32> {
    let at = usize::try_from(at)?;
    Ok(u32::from_le_bytes(
        b.get(at..at.checked_add(4).context("VMDK offset overflows")?)
            .context("VMDK truncated")?
            .try_into()?,
    ))
}

fn le64(b: &[u8], at: u64) -> Result<u64> {
    let at = usize::try_from(at)?;
    Ok(u64::from_le_bytes(
        b.get(at..at.checked_add(8).context("VMDK offset overflows")?)
            .context("VMDK truncated")?
            .try_into()?,
    ))
}

fn le16(b: &[u8], at: u64) -> Result<u16> {
    let at = usize::try_from(at)?;
    Ok(u16::from_le_bytes(
        b.get(at..at.checked_add(2).context("VMDK offset overflows")?)
            .context("VMDK truncated")?
            .try_into()?,
    ))
}

/// A SparseExtentHeader as read (at the start of the file, or in a stream-optimized
/// extent's footer).
#[derive(Debug, PartialEq, Eq)]
struct ReadHeader {
    version: u32,
    flags: u32,
    capacity: u64,
    grain_sectors: u64,
    descriptor_offset: u64,
    descriptor_size: u64,
    gtes: u32,
    rgd_offset: u64,
    gd_offset: u64,
    overhead: u64,
    compress: u16,
}

impl ReadHeader {
    fn parse(file: &[u8], at: u64) -> Result<ReadHeader> {
        let sector = file
            .get(usize::try_from(at)?..)
            .and_then(|b| b.get(..SECTOR as usize))
            .context("VMDK truncated (no whole header sector)")?;
        ensure!(
            sector.get(..4) == Some(MAGIC),
            "not a VMDK sparse extent header"
        );
        Ok(ReadHeader {
            version: le32(sector, 4)?,
            flags: le32(sector, 8)?,
            capacity: le64(sector, 12)?,
            grain_sectors: le64(sector, 20)?,
            descriptor_offset: le64(sector, 28)?,
            descriptor_size: le64(sector, 36)?,
            gtes: le32(sector, 44)?,
            rgd_offset: le64(sector, 48)?,
            gd_offset: le64(sector, 56)?,
            overhead: le64(sector, 64)?,
            compress: le16(sector, 77)?,
        })
    }
}

/// Bytes of the descriptor area QEMU reads (it reads 20 sectors from the descriptor
/// offset, whatever the header's descriptor size, and searches the text with strstr).
fn descriptor_area(file: &[u8]) -> Result<&[u8]> {
    ensure!(file.get(..4) == Some(MAGIC), "not a VMDK sparse extent");
    let off = le64(file, 28)?;
    if off == 0 {
        return Ok(&[]);
    }
    let len = le64(file, 36)?.max(DESCRIPTOR_SECTORS);
    let start = off.saturating_mul(SECTOR).min(file.len() as u64);
    let end = off
        .saturating_add(len)
        .saturating_mul(SECTOR)
        .min(file.len() as u64);
    file.get(start as usize..end as usize)
        .context("VMDK descriptor beyond the file")
}

/// The embedded descriptor text of a hosted sparse extent.
pub fn read_descriptor(file: &[u8]) -> Result<String> {
    let bytes = descriptor_area(file)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Refuses a descriptor with anything that would make another reader (QEMU, VMware) read
/// bytes other than this file's grains: a parent (`parentFileNameHint`, which QEMU finds
/// anywhere in the descriptor area, or a `parentCID` other than ffffffff), more than one
/// extent, an extent of another kind or size than the header's, or control characters.
fn check_descriptor(file: &[u8], capacity: u64) -> Result<()> {
    let area = descriptor_area(file)?;
    let hint = b"parentFileNameHint";
    ensure!(
        !area
            .windows(hint.len())
            .any(|w| w.eq_ignore_ascii_case(hint)),
        "VMDK descriptor names a parent disk (parentFileNameHint): not a whole image"
    );
    let text = read_descriptor(file)?;
    let mut extents = 0;
    for line in text.lines() {
        let l = line.trim();
        ensure!(
            !l.chars().any(|c| c.is_control() && c != '\t' && c != '\r'),
            "VMDK descriptor line {l:?} has control characters"
        );
        if let Some((k, v)) = l.split_once('=') {
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.eq_ignore_ascii_case("parentCID") {
                ensure!(
                    v.eq_ignore_ascii_case("ffffffff"),
                    "VMDK descriptor has parentCID={v} (a parent disk): not a whole image"
                );
            }
            if k.eq_ignore_ascii_case("createType") {
                ensure!(
                    v == "monolithicSparse" || v == "streamOptimized",
                    "VMDK createType {v:?} is not a single-file sparse disk"
                );
            }
        }
        let mut words = l.split_whitespace();
        if matches!(words.next(), Some("RW" | "RDONLY" | "NOACCESS")) {
            extents += 1;
            let size = words.next().and_then(|s| s.parse::<u64>().ok());
            let kind = words.next();
            ensure!(
                size == Some(capacity) && kind == Some("SPARSE"),
                "VMDK extent line {l:?} does not describe this file's {capacity} sectors"
            );
        }
    }
    ensure!(
        extents <= 1,
        "VMDK with {extents} extents is not a single-file disk"
    );
    Ok(())
}

/// The most guest bytes a VMDK may describe per byte of file (beyond a fixed allowance):
/// sparse grains cost nothing in the file, so the virtual size is capped to keep a small
/// crafted file from asking for gigabytes.
const EXPANSION: u64 = 16;
const ALLOWANCE: u64 = 64 << 20;

/// The guest disk of a single-file hosted sparse VMDK (monolithicSparse or streamOptimized).
/// Memory and time are bounded by the file's size: the virtual size is at most
/// [`EXPANSION`] times the file plus [`ALLOWANCE`], and no grain is referenced twice.
pub fn read(file: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        file.get(..4) == Some(MAGIC),
        "not a VMDK sparse extent (a descriptor-only VMDK with separate extent files is not supported)"
    );
    let mut h = ReadHeader::parse(file, 0)?;
    ensure!(
        (1..=3).contains(&h.version),
        "VMDK version {} is not supported",
        h.version
    );
    if h.gd_offset == GD_AT_END {
        // The footer: a footer marker, a copy of the header with the real gdOffset, EOS.
        // QEMU takes the whole header from the footer: every field but gdOffset must agree.
        ensure!(
            file.len() >= 3 * SECTOR as usize && file.len().is_multiple_of(SECTOR as usize),
            "stream-optimized VMDK truncated (not whole sectors)"
        );
        let footer = file.len() as u64 - 2 * SECTOR;
        ensure!(
            le32(file, footer - SECTOR + 12)? == MARKER_FOOTER,
            "stream-optimized VMDK without its footer marker"
        );
        ensure!(
            le32(file, footer + SECTOR + 12)? == MARKER_EOS && le64(file, footer + SECTOR)? == 0,
            "stream-optimized VMDK without its end-of-stream marker"
        );
        let f = ReadHeader::parse(file, footer)
            .context("stream-optimized VMDK footer has no header")?;
        let gd = f.gd_offset;
        ensure!(
            ReadHeader {
                gd_offset: GD_AT_END,
                ..f
            } == h,
            "stream-optimized VMDK footer disagrees with its header (capacity {} vs {}): \
             readers would see different disks",
            f.capacity,
            h.capacity
        );
        h.gd_offset = gd;
    }
    let ReadHeader {
        flags,
        capacity,
        grain_sectors,
        gtes,
        gd_offset,
        compress,
        ..
    } = h;
    let gtes = gtes as u64;
    ensure!(
        (1..=2048).contains(&grain_sectors) && (1..=65536).contains(&gtes),
        "VMDK grain size {grain_sectors} or table size {gtes} out of range"
    );
    check_descriptor(file, capacity)?;
    // QEMU decides compression by compressAlgorithm and markers by the flag: both must say
    // the same as the flags fuse reads.
    let compressed = flags & FLAG_COMPRESSED != 0;
    ensure!(
        (compressed && compress == 1) || (!compressed && compress == 0),
        "VMDK compression {compress} with flags {flags:#x} is not supported"
    );
    ensure!(
        compressed == (flags & FLAG_MARKERS != 0),
        "VMDK with flags {flags:#x}: compressed grains without markers (or the reverse) are not supported"
    );
    let cap_bytes = capacity
        .checked_mul(SECTOR)
        .context("VMDK capacity overflows")?;
    ensure!(
        cap_bytes <= (file.len() as u64).saturating_mul(EXPANSION) + ALLOWANCE,
        "VMDK capacity {capacity} sectors is implausible for a {}-byte file",
        file.len()
    );
    let size = usize::try_from(cap_bytes).context("VMDK too large")?;
    let grain = (grain_sectors * SECTOR) as usize;
    let mut raw = vec![0u8; size];
    let grains = capacity.div_ceil(grain_sectors);
    let tables = grains.div_ceil(gtes);
    let mut seen_tables = std::collections::HashSet::new();
    let mut seen_grains = std::collections::HashSet::new();
    for t in 0..tables {
        let gt = le32(file, gd_offset.saturating_mul(SECTOR).saturating_add(t * 4))? as u64;
        if gt == 0 {
            continue;
        }
        ensure!(
            seen_tables.insert(gt),
            "VMDK grain table at sector {gt} is referenced twice"
        );
        for e in 0..gtes {
            let g = t * gtes + e;
            if g >= grains {
                break;
            }
            let gte = le32(file, (gt * SECTOR).saturating_add(e * 4))? as u64;
            if gte == 0 || (gte == 1 && flags & FLAG_ZERO_GRAIN != 0) {
                continue;
            }
            ensure!(
                seen_grains.insert(gte),
                "VMDK grain at sector {gte} is referenced twice"
            );
            let start = g as usize * grain;
            let len = grain.min(size - start);
            let at = gte * SECTOR;
            if compressed {
                let lba = le64(file, at)?;
                ensure!(
                    lba == g * grain_sectors,
                    "VMDK grain marker says LBA {lba}, the grain table {}",
                    g * grain_sectors
                );
                let n = le32(file, at + 8)? as u64;
                let data = file
                    .get((at + 12) as usize..(at + 12 + n) as usize)
                    .context("VMDK compressed grain beyond the file")?;
                let mut buf = Vec::with_capacity(grain);
                flate2::read::ZlibDecoder::new(data)
                    .take(grain as u64 + 1)
                    .read_to_end(&mut buf)
                    .with_context(|| format!("VMDK grain at sector {gte} does not inflate"))?;
                ensure!(
                    buf.len() <= grain,
                    "VMDK grain at sector {gte} inflates beyond a grain"
                );
                let n = buf.len().min(len);
                raw[start..start + n].copy_from_slice(&buf[..n]);
            } else {
                let src = file
                    .get(at as usize..(at as usize).saturating_add(len))
                    .context("VMDK grain beyond the file")?;
                raw[start..start + len].copy_from_slice(src);
            }
        }
    }
    if raw.is_empty() {
        bail!("VMDK of capacity 0");
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample;

    #[test]
    fn sparse_round_trip() {
        let raw = sample(40 * 1024 * 1024);
        let d = [5u8; 32];
        let v = write_sparse(&raw, "x.vmdk", &d).unwrap();
        assert_eq!(read(&v).unwrap(), raw);
        assert_eq!(write_sparse(&raw, "x.vmdk", &d).unwrap(), v);
        assert!(read_descriptor(&v)
            .unwrap()
            .contains("createType=\"monolithicSparse\""));
        // three grains hold data; the rest is metadata
        assert!(v.len() < 4 * 65536 + 65536);
    }

    #[test]
    fn stream_round_trip() {
        let raw = sample(40 * 1024 * 1024);
        let d = [5u8; 32];
        let v = write_stream(&raw, "x.vmdk", &d).unwrap();
        assert_eq!(read(&v).unwrap(), raw);
        assert_eq!(write_stream(&raw, "x.vmdk", &d).unwrap(), v);
        assert_eq!(v.len() % 512, 0);
        let mut bad = v.clone();
        let n = bad.len();
        bad[n - 512 + 12] = 7; // break the end-of-stream marker
        assert!(read(&bad).is_err());
    }

    /// Finding 7: a 64-byte file starting with KDMV panicked (index out of bounds).
    #[test]
    fn a_short_kdmv_file_is_an_error_not_a_panic() {
        for len in [4, 64, 78, 79, 511, 512, 513, 1024] {
            let mut f = vec![0u8; len];
            f[..4].copy_from_slice(MAGIC);
            if len >= 8 {
                f[4] = 1;
            }
            assert!(read(&f).is_err(), "{len}");
            let _ = read_descriptor(&f);
        }
        // A header whose offsets point anywhere: errors, never panics.
        let v = write_sparse(&sample(1 << 20), "x.vmdk", &[1; 32]).unwrap();
        for at in [12, 20, 28, 36, 44, 56, 64] {
            let mut bad = v.clone();
            bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let _ = read(&bad);
        }
    }

    fn with_descriptor(v: &[u8], from: &str, to: &str) -> Vec<u8> {
        let mut bad = v.to_vec();
        let desc = read_descriptor(v).unwrap().replace(from, to);
        assert!(desc.len() <= (DESCRIPTOR_SECTORS * SECTOR) as usize);
        let at = SECTOR as usize;
        bad[at..at + (DESCRIPTOR_SECTORS * SECTOR) as usize].fill(0);
        bad[at..at + desc.len()].copy_from_slice(desc.as_bytes());
        bad
    }

    /// Finding 3: QEMU follows a parent named in the descriptor; fuse ignored it.
    #[test]
    fn a_descriptor_naming_a_parent_is_refused() {
        let v = write_sparse(&sample(1 << 20), "x.vmdk", &[1; 32]).unwrap();
        assert!(read(&v).is_ok());
        let hint = with_descriptor(
            &v,
            "createType",
            "parentFileNameHint=\"/etc/host.vmdk\"\ncreateType",
        );
        let e = format!("{:#}", read(&hint).unwrap_err());
        assert!(e.contains("parent"), "{e}");
        let cid = with_descriptor(&v, "parentCID=ffffffff", "parentCID=12345678");
        assert!(format!("{:#}", read(&cid).unwrap_err()).contains("parentCID"));
        // QEMU finds the hint with strstr, even past a NUL or in a comment.
        let mut hidden = v.clone();
        let at = SECTOR as usize + 2048;
        hidden[at..at + 27].copy_from_slice(b"#parentFileNameHint=\"a.vmdk");
        assert!(read(&hidden).is_err());
        let two = with_descriptor(&v, "# The Disk Data Base", "RW 8 FLAT \"/dev/sda\" 0\n#");
        assert!(read(&two).is_err());
        let flat = with_descriptor(&v, "SPARSE", "FLAT");
        assert!(read(&flat).is_err());
    }

    /// Finding 12: QEMU reads a stream-optimized extent's header from the footer.
    #[test]
    fn a_footer_that_disagrees_with_the_header_is_refused() {
        let v = write_stream(&sample(1 << 20), "x.vmdk", &[1; 32]).unwrap();
        assert!(read(&v).is_ok());
        let footer = v.len() - 2 * SECTOR as usize;
        let mut bad = v.clone();
        let cap = le64(&bad, footer as u64 + 12).unwrap();
        bad[footer + 12..footer + 20].copy_from_slice(&(cap * 2).to_le_bytes());
        let e = format!("{:#}", read(&bad).unwrap_err());
        assert!(e.contains("footer disagrees"), "{e}");
        let mut bad = v.clone();
        bad[77] = 0; // header says uncompressed, footer compressed
        assert!(read(&bad).is_err());
    }

    /// Finding 8: grains referenced twice expanded a small file into gigabytes.
    #[test]
    fn shared_grains_and_implausible_capacities_are_refused() {
        let raw = sample(4 << 20);
        let v = write_sparse(&raw, "x.vmdk", &[1; 32]).unwrap();
        // Point every grain table entry of the first table at the first data grain.
        let mut bad = v.clone();
        let gd = le64(&v, 56).unwrap();
        let gt = le32(&v, gd * SECTOR).unwrap() as u64;
        let first = le32(&v, gt * SECTOR).unwrap();
        for e in 0..64u64 {
            put_u32(&mut bad, gt * SECTOR + e * 4, first);
        }
        let e = format!("{:#}", read(&bad).unwrap_err());
        assert!(e.contains("referenced twice"), "{e}");
        // A capacity far beyond what the file could hold.
        let mut big = v.clone();
        big[12..20].copy_from_slice(&(1u64 << 32).to_le_bytes());
        let t = std::time::Instant::now();
        assert!(read(&big).is_err());
        assert!(t.elapsed().as_secs() < 3);
    }

    #[test]
    fn odd_sizes_are_refused() {
        assert!(write_sparse(&[0u8; 513], "x", &[0; 32]).is_err());
        assert!(read(b"KDMV").is_err());
    }
}
