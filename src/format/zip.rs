//! Reading zip archives (jars, wars) from memory: the central directory's entries and
//! their data, stored (method 0) or deflated (method 8). Enough for scanning an app's
//! archives; not a general zip library (no zip64, no encryption).

use anyhow::{bail, Context, Result};
use std::io::Read;

/// The largest entry this reader inflates (a nested jar or a native library).
pub const MAX_ENTRY: u64 = 512 << 20;

/// One central-directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// 0 stored, 8 deflated.
    pub method: u16,
    pub compressed_size: u64,
    pub size: u64,
    /// Offset of the local file header.
    local: usize,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }
}

fn le16(b: &[u8], o: usize) -> Result<u16> {
    let s = b.get(o..o + 2).context("zip truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], o: usize) -> Result<u32> {
    let s = b.get(o..o + 4).context("zip truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Does `data` start like a zip archive (a local file header)?
pub fn is_zip(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04")
}

/// Every entry of the central directory, in archive order.
pub fn entries(zip: &[u8]) -> Result<Vec<Entry>> {
    if zip.len() < 22 {
        bail!("not a zip archive (too short)");
    }
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes.
    let lo = zip.len().saturating_sub(22 + 65535);
    let eocd = (lo..=zip.len() - 22)
        .rev()
        .find(|&i| zip[i..i + 4] == *b"PK\x05\x06")
        .context("not a zip archive (no end of central directory)")?;
    let count = le16(zip, eocd + 10)? as usize;
    let mut at = le32(zip, eocd + 16)? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        if zip.get(at..at + 4) != Some(&b"PK\x01\x02"[..]) {
            bail!("zip central directory is corrupt");
        }
        let nlen = le16(zip, at + 28)? as usize;
        let name = zip.get(at + 46..at + 46 + nlen).context("zip truncated")?;
        out.push(Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            method: le16(zip, at + 10)?,
            compressed_size: u64::from(le32(zip, at + 20)?),
            size: u64::from(le32(zip, at + 24)?),
            local: le32(zip, at + 42)? as usize,
        });
        at += 46 + nlen + le16(zip, at + 30)? as usize + le16(zip, at + 32)? as usize;
    }
    check_no_overlap(zip, &out)?;
    Ok(out)
}

/// Each entry's local header and data must be its own: central-directory entries sharing
/// (or overlapping) one local entry would make a small archive fan out into many copies
/// of the same bytes (a 17 KB jar of jars took 9.8 s to scan, a 34 KB one over a minute).
/// No archiver writes such a thing.
fn check_no_overlap(zip: &[u8], entries: &[Entry]) -> Result<()> {
    let mut spans = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let data = raw(zip, e)?;
        // `data` is a slice of `zip`: its end is where the entry ends.
        let end = data.as_ptr() as usize - zip.as_ptr() as usize + data.len();
        spans.push((e.local, end, i));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (w[0], w[1]);
        if start < end {
            bail!(
                "zip entries {} and {} overlap (one local entry named twice): a crafted archive",
                entries[a].name,
                entries[b].name
            );
        }
    }
    Ok(())
}

/// A total budget of inflated bytes for reading one archive and the archives nested in it:
/// without it a stored jar in a jar in a jar, each under [`MAX_ENTRY`], made a 510 KB file
/// allocate 2 GB. Proportional to the outer archive's size (real jars of jars inflate to
/// a few times their size), never below a floor that any small real app fits in.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    total: u64,
}

impl Budget {
    /// The budget for an archive of `input_len` bytes: 128 MiB + 16 × its size.
    pub fn for_input(input_len: usize) -> Budget {
        let total = (128u64 << 20).saturating_add((input_len as u64).saturating_mul(16));
        Budget { left: total, total }
    }

    /// An entry's whole data ([`read`]), charged to the budget; an error once the archive
    /// and its nested archives would inflate to more than the budget.
    pub fn read(&mut self, zip: &[u8], e: &Entry) -> Result<Vec<u8>> {
        if e.size > MAX_ENTRY {
            bail!("zip entry {} is too large ({} bytes)", e.name, e.size);
        }
        let limit = MAX_ENTRY.min(self.left);
        let out = read_prefix(zip, e, limit + 1)?;
        let n = out.len() as u64;
        if n > limit {
            if limit < MAX_ENTRY {
                bail!(
                    "zip entry {}: the archive and the archives inside it inflate to more than \
                     {} bytes in all (a crafted archive?)",
                    e.name,
                    self.total
                );
            }
            bail!(
                "zip entry {} inflates to more than {MAX_ENTRY} bytes",
                e.name
            );
        }
        self.left -= n;
        Ok(out)
    }
}

impl Budget {
    /// An entry's whole data as [`Budget::read`], inflated no further than the size its
    /// central directory header says: an entry inflating to more (or less) is an error
    /// (a size bomb hiding behind a small declared size costs nothing past it).
    pub fn read_exact(&mut self, zip: &[u8], e: &Entry) -> Result<Vec<u8>> {
        if e.size > MAX_ENTRY {
            bail!("zip entry {} is too large ({} bytes)", e.name, e.size);
        }
        if e.size > self.left {
            bail!(
                "zip entry {}: the archive inflates to more than {} bytes in all (a crafted \
                 archive?)",
                e.name,
                self.total
            );
        }
        let out = read_prefix(zip, e, e.size + 1)?;
        if out.len() as u64 != e.size {
            bail!(
                "zip entry {} inflates to {} bytes, its header says {}",
                e.name,
                if out.len() as u64 > e.size {
                    "more than that".to_string()
                } else {
                    out.len().to_string()
                },
                e.size
            );
        }
        self.left -= e.size;
        Ok(out)
    }
}

/// The compressed bytes of an entry.
fn raw<'a>(zip: &'a [u8], e: &Entry) -> Result<&'a [u8]> {
    if zip.get(e.local..e.local + 4) != Some(&b"PK\x03\x04"[..]) {
        bail!("zip local header of {} is corrupt", e.name);
    }
    let start =
        e.local + 30 + le16(zip, e.local + 26)? as usize + le16(zip, e.local + 28)? as usize;
    let end = start
        .checked_add(usize::try_from(e.compressed_size)?)
        .context("zip size overflow")?;
    zip.get(start..end)
        .with_context(|| format!("zip entry {} runs past the end of the archive", e.name))
}

/// Up to `limit` bytes of an entry's data (all of it when it is shorter).
pub fn read_prefix(zip: &[u8], e: &Entry, limit: u64) -> Result<Vec<u8>> {
    let data = raw(zip, e)?;
    let mut out = Vec::new();
    match e.method {
        0 => out.extend_from_slice(&data[..data.len().min(limit as usize)]),
        8 => {
            flate2::read::DeflateDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .with_context(|| format!("cannot inflate {}", e.name))?;
        }
        m => bail!(
            "zip entry {} uses compression method {m} (only 0 and 8 are read)",
            e.name
        ),
    }
    Ok(out)
}

/// An entry's whole data; refuses entries over [`MAX_ENTRY`].
pub fn read(zip: &[u8], e: &Entry) -> Result<Vec<u8>> {
    if e.size > MAX_ENTRY {
        bail!("zip entry {} is too large ({} bytes)", e.name, e.size);
    }
    let out = read_prefix(zip, e, MAX_ENTRY + 1)?;
    if out.len() as u64 > MAX_ENTRY {
        bail!(
            "zip entry {} inflates to more than {MAX_ENTRY} bytes",
            e.name
        );
    }
    Ok(out)
}

/// One entry by name, its whole data ([`read`]); None when the archive has no such entry.
pub fn entry(zip: &[u8], name: &str) -> Result<Option<Vec<u8>>> {
    match entries(zip)?.into_iter().find(|e| e.name == name) {
        Some(e) => read(zip, &e).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A zip with one stored and one deflated entry, written by hand.
    pub fn make(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data, deflate) in entries {
            let body = if *deflate {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            } else {
                data.to_vec()
            };
            let method: u16 = if *deflate { 8 } else { 0 };
            let local = out.len() as u32;
            out.extend_from_slice(b"PK\x03\x04");
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]); // time, date, crc (not checked)
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&body);
            central.extend_from_slice(b"PK\x01\x02");
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            central.extend_from_slice(&(body.len() as u32).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&local.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_at = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06");
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_at.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn lists_and_reads_stored_and_deflated_entries() {
        let z = make(&[
            ("a/", b"", false),
            ("a/stored.txt", b"hello stored", false),
            ("a/deflated.txt", &b"hello deflated ".repeat(50), true),
        ]);
        assert!(is_zip(&z));
        let es = entries(&z).unwrap();
        let names: Vec<&str> = es.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a/", "a/stored.txt", "a/deflated.txt"]);
        assert!(es[0].is_dir());
        assert_eq!(read(&z, &es[1]).unwrap(), b"hello stored");
        assert_eq!(read(&z, &es[2]).unwrap(), b"hello deflated ".repeat(50));
        assert_eq!(read_prefix(&z, &es[2], 5).unwrap(), b"hello");
        assert_eq!(es[2].size, 750);
    }

    #[test]
    fn reads_a_jar_made_by_the_jdk_when_available() {
        let jar = std::fs::read("/usr/share/java/tomcat10-servlet-api.jar");
        if !crate::testutil::require(
            jar.is_ok(),
            "/usr/share/java/tomcat10-servlet-api.jar (package libtomcat10-java)",
        ) {
            return;
        }
        let bytes = jar.unwrap();
        let es = entries(&bytes).unwrap();
        let mf = es
            .iter()
            .find(|e| e.name == "META-INF/MANIFEST.MF")
            .unwrap();
        let text = read(&bytes, mf).unwrap();
        assert!(String::from_utf8_lossy(&text).contains("Manifest-Version"));
    }

    /// A zip whose central directory names the one local entry of `inner` (stored) `n`
    /// times, under distinct names.
    pub fn fan_out(inner: &[u8], n: usize) -> Vec<u8> {
        let mut z = make(&[("a.jar", inner, false)]);
        let eocd = z.len() - 22;
        let cd_at = u32::from_le_bytes(z[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        let one = z[cd_at..eocd].to_vec();
        z.truncate(cd_at);
        let mut central = Vec::new();
        for i in 0..n {
            let mut c = one.clone();
            // same length name "a.jar" -> "NNNNN" digits would change lengths: keep 5 bytes
            let name = format!("{:01}.jar", i % 10);
            c.truncate(46);
            c[28..30].copy_from_slice(&(name.len() as u16).to_le_bytes());
            c.extend_from_slice(name.as_bytes());
            central.extend_from_slice(&c);
        }
        z.extend_from_slice(&central);
        z.extend_from_slice(b"PK\x05\x06");
        z.extend_from_slice(&[0; 4]);
        z.extend_from_slice(&(n as u16).to_le_bytes());
        z.extend_from_slice(&(n as u16).to_le_bytes());
        z.extend_from_slice(&(central.len() as u32).to_le_bytes());
        z.extend_from_slice(&(cd_at as u32).to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z
    }

    #[test]
    fn entries_sharing_one_local_entry_are_refused() {
        let inner = make(&[("x.class", b"\xca\xfe\xba\xbe", false)]);
        let z = fan_out(&inner, 200);
        let e = format!("{:#}", entries(&z).unwrap_err());
        assert!(e.contains("overlap"), "{e}");
        // One name for one local entry is fine.
        assert_eq!(entries(&fan_out(&inner, 1)).unwrap().len(), 1);
    }

    #[test]
    fn the_budget_bounds_what_nested_reads_inflate_in_all() {
        let big = vec![0u8; 4 << 20];
        let z = make(&[("a", &big, true), ("b", &big, true), ("c", &big, true)]);
        let es = entries(&z).unwrap();
        let mut b = Budget {
            left: 10 << 20,
            total: 10 << 20,
        };
        assert_eq!(b.read(&z, &es[0]).unwrap().len(), 4 << 20);
        assert_eq!(b.read(&z, &es[1]).unwrap().len(), 4 << 20);
        let e = format!("{:#}", b.read(&z, &es[2]).unwrap_err());
        assert!(e.contains("in all"), "{e}");
        assert_eq!(Budget::for_input(1 << 20).total, (128 << 20) + (16 << 20));
    }

    #[test]
    fn read_exact_inflates_no_further_than_the_declared_size() {
        let z = make(&[("a", &[7u8; 1000], true), ("b", b"0123", false)]);
        let es = entries(&z).unwrap();
        let mut b = Budget::for_input(z.len());
        assert_eq!(b.read_exact(&z, &es[0]).unwrap(), [7u8; 1000]);
        // the central directory says 10 bytes for a: refused, only 11 inflated
        let mut lie = z.clone();
        let eocd = lie.len() - 22;
        let cd = u32::from_le_bytes(lie[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        lie[cd + 24..cd + 28].copy_from_slice(&10u32.to_le_bytes());
        let es = entries(&lie).unwrap();
        let e = format!("{:#}", b.read_exact(&lie, &es[0]).unwrap_err());
        assert!(e.contains("header says 10"), "{e}");
        // more than the budget left
        let mut small = Budget { left: 3, total: 3 };
        let e = format!("{:#}", small.read_exact(&z, &es[1]).unwrap_err());
        assert!(e.contains("in all"), "{e}");
    }

    #[test]
    fn hostile_zips_are_errors() {
        assert!(entries(b"PK").is_err());
        assert!(entries(&[0u8; 100]).is_err());
        let mut z = make(&[("x", b"data", false)]);
        let n = z.len();
        z[n - 6] = 0xff; // central directory offset beyond the end
        assert!(entries(&z).is_err());
    }
}
