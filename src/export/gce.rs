//! Google Compute Engine image: `disk.raw` alone in a GNU ("oldgnu") tar, gzip'ed, as
//! `gcloud compute images create --source-uri` takes it. gzip header without name and with
//! mtime 0, so the same image gives the same file.

use super::tarball;
use anyhow::{ensure, Context, Result};
use std::io::Write;

/// The one file name GCE accepts inside the archive.
pub const DISK_RAW: &str = "disk.raw";

/// The `.tar.gz` of `raw`.
pub fn write(raw: &[u8]) -> Result<Vec<u8>> {
    let tar = tarball::write(&[(DISK_RAW, raw)], tarball::Flavour::Gnu)?;
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

/// `disk.raw` from a gzip'ed (or plain) tar.
pub fn read(file: &[u8]) -> Result<Vec<u8>> {
    let want = |n: &str| n == DISK_RAW;
    let entries = if is_gzip(file) {
        tarball::read(flate2::read::GzDecoder::new(file), want)?
    } else {
        tarball::read(file, want)?
    };
    ensure!(
        entries.len() == 1,
        "the archive holds {} files named {DISK_RAW} (a GCE image holds exactly one)",
        entries.len()
    );
    Ok(entries.into_iter().next().map(|e| e.1).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample;

    #[test]
    fn round_trip() {
        let raw = sample(1024 * 1024);
        let g = write(&raw).unwrap();
        assert!(is_gzip(&g));
        assert_eq!(write(&raw).unwrap(), g);
        assert_eq!(read(&g).unwrap(), raw);
        // gzip header: no name flag, mtime 0
        assert_eq!(g[3] & 0x08, 0);
        assert_eq!(&g[4..8], &[0, 0, 0, 0]);
        let other = tarball::write(&[("x.raw", &raw)], tarball::Flavour::Gnu).unwrap();
        assert!(read(&other).is_err());
    }
}
