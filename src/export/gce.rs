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
/// The most a `disk.raw` may hold when it has no GPT to say where the image ends.
const MAX_UNCUT: u64 = 64 * GIB;

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

/// `disk.raw` from a gzip'ed (or plain) tar, cut at the image's GPT length.
pub fn read(file: &[u8]) -> Result<Vec<u8>> {
    if is_gzip(file) {
        read_tar(flate2::read::GzDecoder::new(file))
    } else {
        read_tar(file)
    }
}

fn read_tar<R: Read>(r: R) -> Result<Vec<u8>> {
    let mut a = tar::Archive::new(r);
    let mut found = None;
    for e in a.entries().context("not a tar archive")? {
        let e = e.context("bad tar entry")?;
        let kind = e.header().entry_type();
        let name = e.path().context("bad tar entry name")?;
        if name.to_string_lossy().trim_start_matches("./") != DISK_RAW {
            continue;
        }
        ensure!(
            kind == tar::EntryType::Regular || kind == tar::EntryType::GNUSparse,
            "{DISK_RAW} is not a regular file in the archive"
        );
        ensure!(
            found.is_none(),
            "the archive holds more than one {DISK_RAW} (a GCE image holds exactly one)"
        );
        found = Some(read_disk(e)?);
    }
    found.with_context(|| format!("the archive holds no {DISK_RAW} (a GCE image holds one)"))
}

/// The image from the `disk.raw` stream: up to its GPT length; what follows must be zeros.
fn read_disk(mut e: impl Read) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    (&mut e)
        .take(1024)
        .read_to_end(&mut head)
        .context(DISK_RAW)?;
    let limit = super::padding::gpt_len(&head).unwrap_or(MAX_UNCUT);
    let mut disk = head;
    (&mut e)
        .take(limit.saturating_sub(disk.len() as u64))
        .read_to_end(&mut disk)
        .context(DISK_RAW)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = disk.len() as u64;
    loop {
        let n = e.read(&mut buf).context(DISK_RAW)?;
        if n == 0 {
            return Ok(disk);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            bail!(
                "{DISK_RAW} holds data at byte {} after the image's end ({} bytes, from its GPT)",
                at + i as u64,
                disk.len()
            );
        }
        at += n as u64;
    }
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
}
