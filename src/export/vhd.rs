//! Fixed VHD (Microsoft's "Virtual Hard Disk Image Format Specification"): the disk's bytes,
//! zero-padded to a whole MiB and to at least 20 MiB (Azure refuses a virtual size that is
//! not a multiple of 1 MiB or is under 20 MiB), followed by the 512-byte footer. The padding
//! lies outside the image: readers cut it at the image's own GPT length
//! ([`crate::export::cut_padding`]), so the digest is the image's. The footer's unique id comes from the image digest and
//! its time stamp is 0 (1 January 2000), so the same image gives the same file.

use anyhow::{ensure, Context, Result};

pub const COOKIE: &[u8; 8] = b"conectix";
const FOOTER: usize = 512;
const MIB: u64 = 1024 * 1024;
/// Azure's smallest disk: 20 MiB of data (then the footer).
pub const MIN_SIZE: u64 = 20 * MIB;
/// Disk type 2: fixed hard disk.
const FIXED: u32 = 2;
/// Creator application. qemu's vpc driver decides by this field whether the disk size is
/// the footer's current size ("qem2", "win ", ...) or its CHS geometry (anything else),
/// which is rounded down; "qem2" is the value that says "current size", which is what this
/// footer holds and what Hyper-V and Azure read.
const CREATOR_APP: &[u8; 4] = b"qem2";
/// Creator host OS: "Wi2k", the value Hyper-V writes.
const CREATOR_HOST: &[u8; 4] = b"Wi2k";

/// The CHS geometry of the spec's appendix for a disk of `sectors` 512-byte sectors.
pub fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The footer for a fixed disk of `size` bytes.
fn footer(size: u64, digest: &[u8; 32]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[0..8].copy_from_slice(COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // file format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    f[24..28].copy_from_slice(&0u32.to_be_bytes()); // time stamp
    f[28..32].copy_from_slice(CREATOR_APP);
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(CREATOR_HOST);
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = geometry(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&FIXED.to_be_bytes());
    f[68..84].copy_from_slice(&super::uuid::uuid_bytes(digest, "vhd"));
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// One's complement of the byte sum of the footer without its checksum field.
fn checksum(f: &[u8]) -> u32 {
    let sum = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &b)| a.wrapping_add(b as u32));
    !sum
}

/// The data size of the VHD of a raw disk of `len` bytes: a whole MiB, at least [`MIN_SIZE`].
pub fn padded_size(len: u64) -> u64 {
    (len.div_ceil(MIB) * MIB).max(MIN_SIZE)
}

/// The fixed VHD of `raw`.
pub fn write(raw: &[u8], digest: &[u8; 32]) -> Result<Vec<u8>> {
    let size = padded_size(raw.len() as u64);
    let mut out = Vec::with_capacity(size as usize + FOOTER);
    out.extend_from_slice(raw);
    out.resize(size as usize, 0);
    out.extend_from_slice(&footer(size, digest));
    Ok(out)
}

/// True when `file` ends in a VHD footer.
pub fn is_vhd(file: &[u8]) -> bool {
    file.len() >= FOOTER && &file[file.len() - FOOTER..file.len() - FOOTER + 8] == COOKIE
}

/// The sectors QEMU's vpc driver gives a disk with this footer: the current size when the
/// creator application is one it trusts for that ("win ", "qem2", "d2v ", "CTXS", "tap\0")
/// or the geometry is the maximum, else cylinders x heads x sectors per track.
fn qemu_sectors(f: &[u8]) -> Result<u64> {
    let current = u64::from_be_bytes(f.get(48..56).context("VHD footer")?.try_into()?) / 512;
    let creator = f.get(28..32).context("VHD footer")?;
    let chs = u64::from(u16::from_be_bytes(
        f.get(56..58).context("VHD footer")?.try_into()?,
    )) * u64::from(f[58])
        * u64::from(f[59]);
    let trusts_size = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"]
        .iter()
        .any(|c| &c[..] == creator);
    Ok(if trusts_size || chs == 65535 * 16 * 255 {
        current
    } else {
        chs
    })
}

/// The disk of a fixed VHD (the footer checked). Refused when another reader would see
/// other bytes: QEMU sizing the disk by its CHS geometry to other than the current size,
/// or taking a copy of a footer at the start of the file for a dynamic disk's.
pub fn read(file: &[u8]) -> Result<&[u8]> {
    ensure!(is_vhd(file), "no VHD footer (cookie \"conectix\")");
    let f = &file[file.len() - FOOTER..];
    let stored = u32::from_be_bytes(f[64..68].try_into()?);
    ensure!(
        stored == checksum(f),
        "VHD footer checksum is {stored:#010x}, the footer sums to {:#010x}",
        checksum(f)
    );
    let kind = u32::from_be_bytes(f[60..64].try_into()?);
    ensure!(
        kind == FIXED,
        "VHD disk type {kind} is not supported (only fixed disks, type 2)"
    );
    let size = u64::from_be_bytes(f[48..56].try_into()?);
    let data = file.len() - FOOTER;
    ensure!(
        size == data as u64,
        "VHD current size {size} does not match the {data} bytes before the footer"
    );
    let seen = qemu_sectors(f)?.saturating_mul(512);
    ensure!(
        seen == size,
        "VHD creator {:?} with geometry {}x{}x{} makes QEMU see a {seen}-byte disk, the footer says {size}",
        String::from_utf8_lossy(&f[28..32]),
        u16::from_be_bytes([f[56], f[57]]),
        f[58],
        f[59]
    );
    ensure!(
        data < FOOTER || &file[..8] != COOKIE,
        "the VHD's disk starts with a footer cookie (QEMU would read it as a dynamic disk)"
    );
    file.get(..data).context("VHD truncated")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trip_and_padding() {
        let raw = vec![3u8; 1024 * 1024 + 512];
        let v = write(&raw, &[1; 32]).unwrap();
        assert_eq!(v.len(), 20 * 1024 * 1024 + 512);
        assert_eq!(padded_size(21 * MIB + 1), 22 * MIB);
        let back = read(&v).unwrap();
        assert_eq!(&back[..raw.len()], &raw[..]);
        assert!(back[raw.len()..].iter().all(|&b| b == 0));
        let mut bad = v.clone();
        let n = bad.len();
        bad[n - 512 + 50] ^= 1;
        assert!(format!("{:#}", read(&bad).unwrap_err()).contains("checksum"));
    }

    /// Finding 12: a creator QEMU does not trust for the size makes it size the disk by
    /// CHS, rounded down (the backup GPT cut off).
    #[test]
    fn a_footer_qemu_would_size_differently_is_refused() {
        let raw = vec![3u8; 20 * 1024 * 1024];
        let v = write(&raw, &[1; 32]).unwrap();
        assert!(read(&v).is_ok());
        let n = v.len() - FOOTER;
        let mut bad = v.clone();
        bad[n + 28..n + 32].copy_from_slice(b"vpc ");
        let sum = checksum(&bad[n..]);
        bad[n + 64..n + 68].copy_from_slice(&sum.to_be_bytes());
        // 602 x 4 x 17 sectors = 20.0 MiB - 20 KiB: QEMU would see less.
        let e = format!("{:#}", read(&bad).unwrap_err());
        assert!(e.contains("QEMU see"), "{e}");
        // The same creator with a geometry that multiplies to the size is fine.
        let mut ok = v.clone();
        ok[n + 28..n + 32].copy_from_slice(b"vpc ");
        ok[n + 56..n + 58].copy_from_slice(&640u16.to_be_bytes());
        ok[n + 58] = 4;
        ok[n + 59] = 16;
        let sum = checksum(&ok[n..]);
        ok[n + 64..n + 68].copy_from_slice(&sum.to_be_bytes());
        assert!(read(&ok).is_ok());
        // A footer cookie at the start: QEMU would take the file for a dynamic disk.
        let mut dynamic = v.clone();
        dynamic[..8].copy_from_slice(COOKIE);
        assert!(read(&dynamic).is_err());
    }

    #[test]
    fn geometry_follows_the_spec_table() {
        // 20 MiB: 40960 sectors -> 17 sectors per track, 4 heads, 602 cylinders
        assert_eq!(geometry(40960), (602, 4, 17));
        // the maximum
        assert_eq!(geometry(u64::MAX / 1024), (65535, 16, 255));
    }
}
