//! Authenticode over PE32+ images (Microsoft "Windows Authenticode Portable Executable
//! Signature Format"; what UEFI Secure Boot checks): the image digest, and the certificate
//! table that carries a signature. Pure.
//!
//! The digest is sha256 over, in order: the headers up to the optional header's
//! `CheckSum`; the headers after it up to the certificate table's data-directory entry
//! (directory 4); the headers after that entry up to `SizeOfHeaders`; every section's raw
//! data (`SizeOfRawData` bytes at `PointerToRawData`, sorted by file offset, empty ones
//! skipped); then, when the file is longer than the bytes hashed so far plus the
//! certificate table, the bytes from that count to the start of the certificate table.
//! (That last step uses the *count* of hashed bytes as an offset, as EDK2 and sbsigntools
//! do.)
//!
//! The certificate table sits at the end of the file on an 8-byte boundary; its directory
//! entry holds its *file offset* and size. It is a list of `WIN_CERTIFICATE`s:
//! `dwLength` u32 (header included, padding excluded), `wRevision` u16 = 0x0200,
//! `wCertificateType` u16 = 2 (PKCS#7 SignedData), the DER bytes, zero padding to 8.

use crate::format::uki::{self, Pe};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// File offset of the certificate table's data-directory entry, if the image has one.
fn cert_dir(pe: &Pe) -> Option<usize> {
    (pe.number_of_rva_and_sizes as usize > uki::CERT_DIRECTORY)
        .then(|| pe.opt + 112 + 8 * uki::CERT_DIRECTORY)
}

/// (offset, size) of the certificate table, or None when the image is unsigned.
pub fn cert_table(image: &[u8]) -> Result<Option<(usize, usize)>> {
    let pe = Pe::parse(image)?;
    let Some(dir) = cert_dir(&pe) else {
        return Ok(None);
    };
    let off = uki::rd32(image, dir)? as usize;
    let size = uki::rd32(image, dir + 4)? as usize;
    if size == 0 {
        return Ok(None);
    }
    ensure!(
        off.checked_add(size).is_some_and(|e| e <= image.len()),
        "PE: certificate table ({size} bytes at {off:#x}) runs past the end of the file ({:#x})",
        image.len()
    );
    Ok(Some((off, size)))
}

/// The Authenticode sha256 digest of a PE32+ image (signed or not).
pub fn digest(image: &[u8]) -> Result<[u8; 32]> {
    let pe = Pe::parse(image)?;
    let ck = pe.opt + uki::OPT_CHECKSUM;
    let headers = pe.size_of_headers as usize;
    ensure!(
        headers <= image.len() && ck + 4 <= headers,
        "PE: SizeOfHeaders {headers:#x} is inconsistent with the file"
    );
    let mut h = Sha256::new();
    h.update(&image[..ck]);
    match cert_dir(&pe) {
        Some(dir) => {
            ensure!(
                dir + 8 <= headers,
                "PE: data directories past SizeOfHeaders"
            );
            h.update(&image[ck + 4..dir]);
            h.update(&image[dir + 8..headers]);
        }
        None => h.update(&image[ck + 4..headers]),
    }
    let mut hashed = headers;
    let mut sections: Vec<_> = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data != 0)
        .collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    for s in sections {
        let start = s.pointer_to_raw_data as usize;
        let data = image
            .get(start..start + s.size_of_raw_data as usize)
            .with_context(|| format!("PE: section at {start:#x} runs past the end"))?;
        h.update(data);
        hashed += data.len();
    }
    let cert_size = cert_table(image)?.map_or(0, |(_, s)| s);
    if image.len() > hashed {
        match image.len().checked_sub(cert_size) {
            Some(end) if end >= hashed => h.update(&image[hashed..end]),
            _ => bail!("PE: the certificate table overlaps the hashed data"),
        }
    }
    Ok(h.finalize().into())
}

/// `image` (unsigned) with `pkcs7` (DER SignedData) appended as its certificate table; the
/// checksum is recomputed. The Authenticode digest is unchanged by this.
pub fn embed(image: &[u8], pkcs7: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        cert_table(image)?.is_none(),
        "PE image is already signed (it has a certificate table)"
    );
    let pe = Pe::parse(image)?;
    let dir = cert_dir(&pe).context("PE has no certificate table directory entry")?;
    let mut out = image.to_vec();
    out.resize(out.len().div_ceil(8) * 8, 0);
    let off = out.len();
    let len = 8 + pkcs7.len();
    out.extend_from_slice(&u32::try_from(len)?.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(pkcs7);
    out.resize(out.len().div_ceil(8) * 8, 0);
    let size = out.len() - off;
    uki::wr32(&mut out, dir, u32::try_from(off).context("PE over 4 GiB")?);
    uki::wr32(&mut out, dir + 4, u32::try_from(size)?);
    let ck = pe.opt + uki::OPT_CHECKSUM;
    uki::wr32(&mut out, ck, 0);
    let sum = uki::pe_checksum(&out, ck);
    uki::wr32(&mut out, ck, sum);
    Ok(out)
}

/// The PKCS#7 SignedData blobs in the certificate table (empty when unsigned).
pub fn signatures(image: &[u8]) -> Result<Vec<Vec<u8>>> {
    let Some((off, size)) = cert_table(image)? else {
        return Ok(Vec::new());
    };
    let table = &image[off..off + size];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= table.len() {
        let len = u32::from_le_bytes(table[pos..pos + 4].try_into()?) as usize;
        let kind = u16::from_le_bytes(table[pos + 6..pos + 8].try_into()?);
        ensure!(
            len >= 8 && pos + len <= table.len(),
            "PE: WIN_CERTIFICATE of {len} bytes at {pos} does not fit the certificate table"
        );
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            out.push(table[pos + 8..pos + len].to_vec());
        }
        pos += len.div_ceil(8) * 8;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny PE32+ with one section and 16 data directories.
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 56..opt + 60].copy_from_slice(&0x2000u32.to_le_bytes());
        b[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let sec = opt + 240;
        b[sec..sec + 5].copy_from_slice(b".text");
        b[sec + 8..sec + 12].copy_from_slice(&0x100u32.to_le_bytes());
        b[sec + 12..sec + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        b[sec + 16..sec + 20].copy_from_slice(&0x200u32.to_le_bytes());
        b[sec + 20..sec + 24].copy_from_slice(&0x200u32.to_le_bytes());
        for (i, x) in b[0x200..0x400].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn digest_skips_checksum_and_cert_entry_and_survives_embedding() {
        let pe = tiny_pe();
        let d = digest(&pe).unwrap();
        // By hand: the three header pieces, then the section.
        let opt = 0x84 + 20;
        let ck = opt + 64;
        let dir = opt + 112 + 32;
        let mut h = Sha256::new();
        h.update(&pe[..ck]);
        h.update(&pe[ck + 4..dir]);
        h.update(&pe[dir + 8..0x200]);
        h.update(&pe[0x200..0x400]);
        assert_eq!(d, <[u8; 32]>::from(h.finalize()));

        let mut changed = pe.clone();
        changed[ck] ^= 0xff; // checksum: not covered
        assert_eq!(digest(&changed).unwrap(), d);
        changed[0x300] ^= 1; // section data: covered
        assert_ne!(digest(&changed).unwrap(), d);

        let signed = embed(&pe, b"not really pkcs7").unwrap();
        assert_eq!(signed.len() % 8, 0);
        assert_eq!(digest(&signed).unwrap(), d);
        assert_eq!(
            signatures(&signed).unwrap(),
            vec![b"not really pkcs7".to_vec()]
        );
        assert!(signatures(&pe).unwrap().is_empty());
        assert!(embed(&signed, b"x").is_err());
        // Trailing data after the sections is covered; the certificate table is not.
        let mut trailing = pe.clone();
        trailing.extend_from_slice(&[7u8; 8]);
        let dt = digest(&trailing).unwrap();
        assert_ne!(dt, d);
        assert_eq!(digest(&embed(&trailing, b"sig").unwrap()).unwrap(), dt);
    }
}
