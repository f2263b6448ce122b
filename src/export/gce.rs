//! Google Compute Engine image: `disk.raw` alone in a GNU ("oldgnu") tar, gzip'ed, as
//! `gcloud compute images create --source-uri` takes it. GCE wants the disk in whole GiB, so
//! `disk.raw` is the image followed by zeros up to the next GiB, written as a GNU sparse
//! entry (what `tar --format=oldgnu -S` writes, and GCE's documentation uses): the archive
//! holds the image's bytes and a map, not the zeros. Readers cut the padding at the image's
//! own GPT length, so the digest stays the image's. gzip header without name and with mtime
//! 0, so the same image gives the same file.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};

/// The one file name GCE accepts inside the archive.
pub const DISK_RAW: &str = "disk.raw";
const GIB: u64 = 1 << 30;

/// The size `disk.raw` gets for an image of `len` bytes: a whole GiB.
pub fn padded_size(len: u64) -> u64 {
    len.div_ceil(GIB).max(1) * GIB
}

/// The oldgnu header of a sparse `disk.raw`: one data region (the image, `data` bytes from
/// offset 0) and the empty region at `real` that marks where the file ends.
fn sparse_header(data: u64, real: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_path(DISK_RAW).context("tar entry name")?;
    h.set_size(data);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::GNUSparse);
    let g = h.as_gnu_mut().context("not a GNU header")?;
    g.sparse[0].set_offset(0);
    g.sparse[0].set_length(data);
    g.sparse[1].set_offset(real);
    g.sparse[1].set_length(0);
    g.set_real_size(real);
    h.set_cksum();
    Ok(h)
}

/// The uncompressed tar of `raw` as a `disk.raw` of whole GiB.
fn tar_of(raw: &[u8]) -> Result<Vec<u8>> {
    let data = (raw.len() as u64).div_ceil(512) * 512;
    let mut body = raw.to_vec();
    body.resize(data as usize, 0);
    let h = sparse_header(data, padded_size(data))?;
    let mut b = tar::Builder::new(Vec::with_capacity(body.len() + 2048));
    b.append(&h, &body[..])
        .context("cannot add disk.raw to the tar archive")?;
    b.into_inner().context("cannot finish the tar archive")
}

/// The `.tar.gz` of `raw`.
pub fn write(raw: &[u8]) -> Result<Vec<u8>> {
    let tar = tar_of(raw)?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::new(6),
        );
    gz.write_all(&tar).context("gzip")?;
    gz.finish().context("gzip")
}

/// True for gzip data.
pub fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// The most bytes of zero padding allowed after the image in `disk.raw` (GCE wants whole
/// GiB: the padding fills up to the next one).
const MAX_PADDING: u64 = GIB;
/// The most image bytes per byte of input (beyond a fixed allowance): a fuse disk is
/// mostly compressed file systems, so a larger ratio is a crafted bomb.
const EXPANSION: u64 = 16;
const ALLOWANCE: u64 = 64 << 20;

/// `disk.raw` from a gzip'ed (or plain) tar, checked to be what every other reader (GNU tar,
/// GCE's importer, multi-member gzip readers) sees too: exactly one gzip member, exactly one
/// tar member named exactly `disk.raw`, nothing after it but the end-of-archive zero blocks.
/// The member is a regular file (type '0') or the sparse entry [`write`] makes (type 'S':
/// one data region from offset 0, then a hole up to the real size), nothing else. Zero
/// padding after the image (whose end the GPT's backup header gives) is checked while
/// streaming and left out of the result, so memory is bounded by the image and time by the
/// input (at most [`MAX_PADDING`] of padding).
pub fn read(file: &[u8]) -> Result<Vec<u8>> {
    let budget = (file.len() as u64).saturating_mul(EXPANSION) + ALLOWANCE;
    if is_gzip(file) {
        let mut rest = file;
        let raw = {
            let mut gz = flate2::bufread::GzDecoder::new(&mut rest);
            let raw = read_tar(&mut gz, budget)?;
            // Drain what is left of the member (its trailer and CRC check).
            let mut tail = [0u8; 1];
            ensure!(
                gz.read(&mut tail).context("gzip")? == 0,
                "data after the tar archive inside the gzip stream"
            );
            raw
        };
        ensure!(
            rest.is_empty(),
            "{} bytes after the first gzip member (a GCE image is exactly one member)",
            rest.len()
        );
        Ok(raw)
    } else {
        let mut r = file;
        read_tar(&mut r, budget)
    }
}

/// A numeric header field: octal digits (NUL or space ended), or GNU's base-256 (first byte
/// 0x80, the rest big-endian) for values too large for the octal digits.
fn number(field: &[u8], what: &str) -> Result<u64> {
    if field.first().is_some_and(|&b| b == 0x80) {
        return field[1..]
            .iter()
            .try_fold(0u64, |a, &b| a.checked_mul(256)?.checked_add(b as u64))
            .with_context(|| format!("tar header {what} overflows"));
    }
    let t: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    ensure!(
        !t.is_empty() && t.iter().all(|b| (b'0'..=b'7').contains(b)),
        "tar header {what} is not an octal number"
    );
    t.iter()
        .try_fold(0u64, |a, &b| {
            a.checked_mul(8)?.checked_add((b - b'0') as u64)
        })
        .with_context(|| format!("tar header {what} overflows"))
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf)
        .with_context(|| format!("the archive ends inside {what}"))
}

/// Checks that `r` yields only zero bytes until its end; reads at most `limit` bytes.
fn only_zeros(r: &mut impl Read, limit: u64, what: &str) -> Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut left = limit;
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("cannot read {what}"))?;
        if n == 0 {
            return Ok(());
        }
        ensure!(buf[..n].iter().all(|&b| b == 0), "non-zero bytes in {what}");
        left = left
            .checked_sub(n as u64)
            .with_context(|| format!("more than {limit} bytes of {what}"))?;
    }
}

/// The size of `disk.raw` as every reader sees it (the data plus a sparse entry's trailing
/// hole), from the member's header `h` whose stored data is `size` bytes. Only the sparse
/// map [`write`] makes is taken: data from 0 to `size`, a zero-length region at the real
/// size, no other region, no extension header.
fn real_size(h: &[u8; 512], size: u64) -> Result<u64> {
    if h[156] == b'0' {
        return Ok(size);
    }
    ensure!(
        &h[257..265] == b"ustar  \0",
        "{DISK_RAW} is a sparse member without a GNU header"
    );
    // oldgnu: sparse[4] of (offset[12], numbytes[12]) at 386, isextended at 482,
    // realsize[12] at 483.
    let region = |i: usize| -> Result<(u64, u64)> {
        let at = 386 + 24 * i;
        Ok((
            number(&h[at..at + 12], "sparse offset")?,
            number(&h[at + 12..at + 24], "sparse length")?,
        ))
    };
    let real = number(&h[483..495], "real size")?;
    ensure!(
        region(0)? == (0, size) && region(1)? == (real, 0) && real >= size,
        "{DISK_RAW}'s sparse map is not one data region from 0 and a hole to its end"
    );
    ensure!(
        h[386 + 48..483].iter().all(|&b| b == 0),
        "{DISK_RAW}'s sparse map has more than two regions"
    );
    Ok(real)
}

/// The single `disk.raw` member of a tar stream (see [`read`]).
fn read_tar(r: &mut impl Read, budget: u64) -> Result<Vec<u8>> {
    let mut h = [0u8; 512];
    read_exact_or(r, &mut h, "the first header")?;
    let sum = number(&h[148..156], "checksum")?;
    let got: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    ensure!(
        sum == got,
        "tar header checksum is {sum}, the header sums to {got}"
    );
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    ensure!(
        &h[..name_end] == DISK_RAW.as_bytes() && h[name_end..100].iter().all(|&b| b == 0),
        "the archive's member is {:?}, not exactly {DISK_RAW} (a GCE image holds only {DISK_RAW})",
        String::from_utf8_lossy(&h[..name_end])
    );
    ensure!(
        h[156] == b'0' || h[156] == b'S',
        "{DISK_RAW} is a tar member of type {:?}, not a regular file ('0') or the sparse one fuse writes ('S')",
        h[156] as char
    );
    ensure!(
        h[157..257].iter().all(|&b| b == 0),
        "{DISK_RAW} has a link name"
    );
    if &h[257..263] == b"ustar\0" {
        ensure!(
            h[345..500].iter().all(|&b| b == 0),
            "{DISK_RAW} has a ustar name prefix"
        );
    } else {
        ensure!(
            &h[257..265] == b"ustar  \0",
            "not a ustar or GNU tar header"
        );
    }
    let size = number(&h[124..136], "size")?;
    let real = real_size(&h, size)?;
    // The image's end: the GPT's backup header is its last sector, inside the stored data.
    let mut head = vec![0u8; size.min(1024) as usize];
    read_exact_or(r, &mut head, DISK_RAW)?;
    // A regular disk.raw whose GPT's backup header is not inside it describes no padding:
    // then the whole member is the disk. A sparse one is always a padded image.
    let image_end = match super::padding::gpt_len(&head).filter(|&e| e <= size) {
        Some(e) => e,
        None if real == size => size,
        None => bail!("{DISK_RAW} is sparse but its GPT does not end inside its data"),
    };
    ensure!(
        real - image_end <= MAX_PADDING,
        "{DISK_RAW} is {real} bytes, {} of them after the {image_end}-byte disk its GPT describes",
        real - image_end
    );
    ensure!(
        image_end <= budget,
        "{DISK_RAW} holds a {image_end}-byte disk: implausible for this archive's size"
    );
    let mut raw = Vec::with_capacity(usize::try_from(image_end)?);
    raw.extend_from_slice(&head);
    let mut data = r.take(size - head.len() as u64);
    (&mut data)
        .take(image_end - head.len() as u64)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read {DISK_RAW}"))?;
    ensure!(
        raw.len() as u64 == image_end,
        "the archive ends inside {DISK_RAW}"
    );
    only_zeros(&mut data, MAX_PADDING, "the padding after the image's end")?;
    ensure!(data.limit() == 0, "the archive ends inside {DISK_RAW}");
    let r = data.into_inner();
    // Padding of the member to 512 bytes, then end-of-archive blocks: zeros only.
    only_zeros(r, 1 << 20, "the end of the archive")?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{tarball, tests::sample};

    #[test]
    fn round_trip_padded_to_a_gib_sparse() {
        let raw = sample(1024 * 1024);
        let g = write(&raw).unwrap();
        assert!(is_gzip(&g));
        assert!(g.len() < 200_000, "{} bytes", g.len());
        assert_eq!(write(&raw).unwrap(), g);
        assert_eq!(read(&g).unwrap(), raw);
        // gzip header: no name flag, mtime 0
        assert_eq!(g[3] & 0x08, 0);
        assert_eq!(&g[4..8], &[0, 0, 0, 0]);
        // The tar crate reads disk.raw back as a whole GiB.
        let t = tar_of(&raw).unwrap();
        let mut a = tar::Archive::new(&t[..]);
        let e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.size(), GIB);
        let other = tarball::write(&[("x.raw", &raw)], tarball::Flavour::Gnu).unwrap();
        assert!(read(&other).is_err());
    }

    #[test]
    fn data_after_the_image_is_an_error() {
        let raw = sample(1024 * 1024);
        let mut longer = raw.clone();
        longer.resize(2 * 1024 * 1024, 0);
        longer[1024 * 1024 + 7] = 1;
        let t = tarball::write(&[(DISK_RAW, &longer)], tarball::Flavour::Gnu).unwrap();
        assert!(format!("{:#}", read(&t).unwrap_err()).contains("after the image's end"));
        assert_eq!(padded_size(GIB + 1), 2 * GIB);
        assert_eq!(padded_size(5), GIB);
    }

    /// Fixes a hand-edited header's checksum.
    fn fix_sum(t: &mut [u8]) {
        t[148..156].fill(b' ');
        let sum: u32 = t[..512].iter().map(|&b| b as u32).sum();
        t[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    /// Only the sparse map fuse writes is taken: one more region (data GNU tar would put
    /// elsewhere in disk.raw), an extension header, a hole that is not at the end or a
    /// real size more than a GiB past the image are refused.
    #[test]
    fn a_sparse_disk_raw_other_than_fuses_is_refused() {
        let raw = sample(1024 * 1024);
        let good = tar_of(&raw).unwrap();
        assert_eq!(read(&good).unwrap(), raw);
        type Edit = (&'static str, fn(&mut [u8]));
        let edits: [Edit; 4] = [
            ("more than two regions", |t| {
                t[386 + 48..386 + 60].copy_from_slice(b"00000000010\0");
                t[386 + 60..386 + 72].copy_from_slice(b"00000000001\0");
            }),
            ("more than two regions", |t| t[482] = 1),
            ("sparse map", |t| {
                t[386..398].copy_from_slice(b"00000001000\0");
            }),
            ("after the", |t| {
                // real size and the terminating region: 3 GiB
                t[386 + 24..386 + 36].copy_from_slice(b"30000000000\0");
                t[483..495].copy_from_slice(b"30000000000\0");
            }),
        ];
        for (needle, edit) in edits {
            let mut t = good.clone();
            edit(&mut t);
            fix_sum(&mut t);
            let e = format!("{:#}", read(&gz(&t)).unwrap_err());
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        z.write_all(b).unwrap();
        z.finish().unwrap()
    }

    /// One tar member with a hand-set name and type (the checksum fixed up).
    fn member(name: &[u8], kind: u8, data: &[u8]) -> Vec<u8> {
        let mut t = tarball::write(&[("x", data)], tarball::Flavour::Gnu).unwrap();
        t[..100].fill(0);
        t[..name.len()].copy_from_slice(name);
        t[156] = kind;
        if kind == b'2' {
            t[157..165].copy_from_slice(b"/etc/pwd");
        }
        fix_sum(&mut t);
        t
    }

    /// Finding 4: what other tar and gzip readers would see differently is refused.
    #[test]
    fn anything_but_one_member_disk_raw_in_one_gzip_member_is_refused() {
        let raw = sample(1024 * 1024);
        let good = write(&raw).unwrap();
        // A second gzip member (multi-member readers see another disk).
        let mut two = good.clone();
        two.extend_from_slice(&write(&sample(2048 * 1024)).unwrap());
        assert!(format!("{:#}", read(&two).unwrap_err()).contains("gzip member"));
        for (name, kind, needle) in [
            (&b".//disk.raw"[..], b'0', "not exactly"),
            (&b"./disk.raw"[..], b'0', "not exactly"),
            (&b"disk.raw"[..], b'7', "not a regular file"),
            (&b"disk.raw"[..], b'2', "not a regular file"),
            (&b"disk.raw"[..], b'0', ""),
        ] {
            let t = gz(&member(name, kind, &raw));
            match read(&t) {
                Ok(r) => assert!(needle.is_empty() && r == raw),
                Err(e) => assert!(
                    !needle.is_empty() && format!("{e:#}").contains(needle),
                    "{e:#}"
                ),
            }
        }
        // A second member after disk.raw.
        let mut t = member(b"disk.raw", b'0', &raw);
        let n = t.len() - 1024;
        t.truncate(n);
        t.extend_from_slice(&member(b"disk.raw", b'0', &sample(2048 * 1024)));
        assert!(read(&gz(&t)).is_err());
    }

    /// A disk padded with zeros after its backup GPT (GCE wants whole GiB) reads back as
    /// the image itself; non-zero bytes there are refused.
    #[test]
    fn zero_padding_after_the_gpt_is_left_out() {
        let mut raw = sample(1024 * 1024);
        let lba = (raw.len() / 512 - 1) as u64;
        raw[512 + 32..512 + 40].copy_from_slice(&lba.to_le_bytes());
        let n = raw.len();
        raw[n - 512..n - 504].copy_from_slice(b"EFI PART");
        let mut padded = raw.clone();
        padded.resize(3 * 1024 * 1024, 0);
        assert_eq!(read(&write(&padded).unwrap()).unwrap(), raw);
        padded[2 * 1024 * 1024] = 1;
        assert!(read(&write(&padded).unwrap()).is_err());
    }

    /// Finding 8: a 1.5 MB tar.gz of a 1.5 GiB disk.raw expanded in memory (1.65 GB, 6.7 s).
    #[test]
    fn a_gzip_bomb_is_refused_quickly() {
        let t0 = std::time::Instant::now();
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        let mut h = tar::Header::new_gnu();
        h.set_path(DISK_RAW).unwrap();
        h.set_size(3 << 29);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        z.write_all(h.as_bytes()).unwrap();
        // Only the first MiB of the 1.5 GiB is given: the header alone must be refused,
        // before anything is inflated.
        z.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 16 << 20);
        let t = std::time::Instant::now();
        let e = format!("{:#}", read(&bomb).unwrap_err());
        assert!(e.contains("implausible"), "{e}");
        assert!(
            t.elapsed().as_secs() < 3,
            "{:?} (made in {:?})",
            t.elapsed(),
            t0.elapsed()
        );
    }
}
