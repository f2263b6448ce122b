//! Zip archives (jars and wars) read entry by entry: the central directory, each local
//! header, stored or deflated data. Bounded: an entry may not inflate past 256 MiB.

use anyhow::{bail, Context, Result};
use std::io::Read;

const MAX_ENTRY: usize = 256 << 20;

fn le16(b: &[u8], o: usize) -> Result<usize> {
    let s = b.get(o..o + 2).context("zip truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
}
fn le32(b: &[u8], o: usize) -> Result<usize> {
    let s = b.get(o..o + 4).context("zip truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// One entry of the central directory.
pub struct ZipEntry<'a> {
    pub name: String,
    method: usize,
    size: usize,
    data: &'a [u8],
}

impl ZipEntry<'_> {
    /// The entry's bytes, inflated.
    pub fn read(&self) -> Result<Vec<u8>> {
        if self.size > MAX_ENTRY {
            bail!("{} is too large ({} bytes)", self.name, self.size);
        }
        match self.method {
            0 => Ok(self.data.to_vec()),
            8 => {
                let mut out = Vec::with_capacity(self.size);
                flate2::read::DeflateDecoder::new(self.data)
                    .take(MAX_ENTRY as u64 + 1)
                    .read_to_end(&mut out)
                    .with_context(|| format!("cannot inflate {}", self.name))?;
                if out.len() > MAX_ENTRY {
                    bail!("{} inflates past {MAX_ENTRY} bytes", self.name);
                }
                Ok(out)
            }
            m => bail!(
                "{} uses compression method {m} (only 0 and 8 are read)",
                self.name
            ),
        }
    }
}

/// Is `b` a zip archive (local header magic)?
pub fn is_zip(b: &[u8]) -> bool {
    b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06")
}

/// Every file entry of a zip archive (directories skipped), in central-directory order.
pub fn entries(zip: &[u8]) -> Result<Vec<ZipEntry<'_>>> {
    if zip.len() < 22 {
        bail!("not a zip archive (too short)");
    }
    let lo = zip.len().saturating_sub(22 + 65535);
    let eocd = (lo..=zip.len() - 22)
        .rev()
        .find(|&i| zip[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .context("not a zip archive (no end of central directory)")?;
    let count = le16(zip, eocd + 10)?;
    let mut at = le32(zip, eocd + 16)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if zip.get(at..at + 4) != Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
            bail!("zip central directory is corrupt at byte {at}");
        }
        let method = le16(zip, at + 10)?;
        let csize = le32(zip, at + 20)?;
        let size = le32(zip, at + 24)?;
        let nlen = le16(zip, at + 28)?;
        let xlen = le16(zip, at + 30)?;
        let clen = le16(zip, at + 32)?;
        let local = le32(zip, at + 42)?;
        let name = zip.get(at + 46..at + 46 + nlen).context("zip truncated")?;
        let name = String::from_utf8_lossy(name).into_owned();
        at += 46 + nlen + xlen + clen;
        if name.ends_with('/') {
            continue;
        }
        if zip.get(local..local + 4) != Some(&[0x50, 0x4b, 0x03, 0x04][..]) {
            bail!("zip local header of {name} is corrupt");
        }
        let start = local + 30 + le16(zip, local + 26)? + le16(zip, local + 28)?;
        let data = zip
            .get(start..start.checked_add(csize).context("zip size overflow")?)
            .with_context(|| format!("zip entry {name} lies beyond the end of the archive"))?;
        out.push(ZipEntry {
            name,
            method,
            size,
            data,
        });
    }
    Ok(out)
}
