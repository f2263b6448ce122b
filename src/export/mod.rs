//! Export: the raw disk wrapped in the formats hypervisors and clouds import (qcow2, VMDK,
//! OVA, fixed VHD, GCE's tar.gz), each a pure, deterministic function of the raw bytes
//! (identifiers derived from the image digest, no time stamps), and the readers that give
//! the raw bytes back, so the image digest stays the identity through every conversion.

pub mod gce;
pub mod ova;
pub mod qcow2;
pub mod tarball;
pub mod vhd;
pub mod vmdk;

use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::path::Path;

/// The formats `fuse export` writes and `inspect`/`run` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// The GPT disk itself.
    Raw,
    /// qcow2 version 3 (QEMU, KVM, Proxmox, OpenStack).
    Qcow2,
    /// VMDK monolithicSparse (VMware Workstation/Fusion, VirtualBox).
    Vmdk,
    /// OVF + stream-optimized VMDK + manifest in a tar (vSphere, VirtualBox import).
    Ova,
    /// Fixed VHD, size a whole MiB (Hyper-V, Azure).
    Vhd,
    /// `disk.raw` in a gzip'ed GNU tar (Google Compute Engine).
    Gce,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Ova,
        Format::Vhd,
        Format::Gce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Vhd => "vhd",
            Format::Gce => "gce",
        }
    }

    pub fn parse(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .with_context(|| {
                format!(
                    "unknown format {s:?} (expected one of {})",
                    Format::ALL.map(|f| f.name()).join(", ")
                )
            })
    }

    /// The file name extension fuse gives the format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Raw => "img",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Vhd => "vhd",
            Format::Gce => "tar.gz",
        }
    }

    /// QEMU's block driver for the format, when QEMU reads it in place.
    pub fn qemu_driver(self) -> Option<&'static str> {
        match self {
            Format::Raw => Some("raw"),
            Format::Qcow2 => Some("qcow2"),
            Format::Vmdk => Some("vmdk"),
            Format::Vhd => Some("vpc"),
            Format::Ova | Format::Gce => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 16 bytes derived from the image digest for one purpose (an RFC 9562 version 8 UUID:
/// custom, not random), so identifiers are the same for the same image.
pub fn uuid_bytes(digest: &[u8; 32], purpose: &str) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    h.update(b"fuse export uuid\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(digest);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// [`uuid_bytes`] in the usual 8-4-4-4-12 form.
pub fn uuid_from(digest: &[u8; 32], purpose: &str) -> String {
    let h = crate::digest::hex(&uuid_bytes(digest, purpose));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The image digest as bytes.
pub fn digest_of(raw: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(raw).into()
}

/// `raw` in `format`. `base` names the files inside formats that hold more than one
/// (OVA) or name themselves (VMDK's extent line): `<name>-<version>`.
pub fn export(format: Format, raw: &[u8], base: &str) -> Result<Vec<u8>> {
    let digest = digest_of(raw);
    match format {
        Format::Raw => Ok(raw.to_vec()),
        Format::Qcow2 => qcow2::write(raw),
        Format::Vmdk => vmdk::write_sparse(raw, &format!("{base}.vmdk"), &digest),
        Format::Ova => ova::write(raw, base, &digest),
        Format::Vhd => vhd::write(raw, &digest),
        Format::Gce => gce::write(raw),
    }
}

/// What an image file holds, whatever its format.
pub struct Opened {
    pub format: Format,
    /// The raw disk: its sha256 is the image digest.
    pub raw: Vec<u8>,
    /// The digest the wrapper itself records (the OVA's descriptor), if any.
    pub recorded_digest: Option<String>,
}

/// The format of `bytes`, from magic numbers: qcow2, VMDK, gzip (GCE), tar (OVA when it
/// holds an .ovf, else GCE), a VHD footer, a GPT (raw).
pub fn detect(bytes: &[u8]) -> Result<Format> {
    if bytes.starts_with(qcow2::MAGIC) {
        return Ok(Format::Qcow2);
    }
    if bytes.starts_with(vmdk::MAGIC) {
        return Ok(Format::Vmdk);
    }
    if gce::is_gzip(bytes) {
        return Ok(Format::Gce);
    }
    if tarball::is_tar(bytes) {
        let ovf = tarball::read(bytes, |n| n.ends_with(".ovf"))?;
        return Ok(if ovf.is_empty() {
            Format::Gce
        } else {
            Format::Ova
        });
    }
    if vhd::is_vhd(bytes) {
        return Ok(Format::Vhd);
    }
    if bytes.get(512..520) == Some(b"EFI PART") {
        return Ok(Format::Raw);
    }
    bail!("not a disk image fuse knows (raw GPT, qcow2, VMDK, OVA, VHD or GCE tar.gz)")
}

/// The raw disk inside `bytes`, whatever its format.
pub fn open(bytes: Vec<u8>) -> Result<Opened> {
    let format = detect(&bytes)?;
    let (raw, recorded_digest) = match format {
        Format::Raw => (bytes, None),
        Format::Qcow2 => (qcow2::read(&bytes)?, None),
        Format::Vmdk => (vmdk::read(&bytes)?, None),
        Format::Ova => {
            let o = ova::read(&bytes)?;
            (o.raw, o.recorded_digest)
        }
        Format::Vhd => (without_padding(vhd::read(&bytes)?).to_vec(), None),
        Format::Gce => (gce::read(&bytes)?, None),
    };
    Ok(Opened {
        format,
        raw,
        recorded_digest,
    })
}

/// The image inside a disk that was padded with zeros after it (the VHD and GCE exports
/// pad to the sizes clouds ask for): when the primary GPT header's backup LBA names a
/// sector before the end that holds the backup header, and only zeros follow it, the disk
/// up to that sector; else the whole disk.
pub fn without_padding(raw: &[u8]) -> &[u8] {
    let end = raw
        .get(512..520)
        .filter(|m| *m == b"EFI PART")
        .and_then(|_| raw.get(512 + 32..512 + 40))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|lba| lba.checked_add(1)?.checked_mul(512))
        .and_then(|e| usize::try_from(e).ok());
    match end {
        Some(e)
            if e < raw.len()
                && e >= 1024
                && raw.get(e - 512..e - 504) == Some(b"EFI PART")
                && raw[e..].iter().all(|&b| b == 0) =>
        {
            &raw[..e]
        }
        _ => raw,
    }
}

/// Reads an image file of any format and returns its raw disk.
pub fn detect_and_open(path: &Path) -> Result<Opened> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    let o = open(bytes).with_context(|| format!("cannot read the image {}", path.display()))?;
    if o.format != Format::Raw {
        tracing::debug!(
            "{}: {} image, raw disk of {} bytes",
            path.display(),
            o.format,
            o.raw.len()
        );
    }
    Ok(o)
}

/// `<stem>.json` beside an image file of any format (the build's image.json copy), with
/// the format's extension (`.tar.gz` included) taken off.
pub fn beside_json(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".tar.gz") {
        Some(stem) => path.with_file_name(format!("{stem}.json")),
        None => path.with_extension("json"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sparse disk-like buffer: data in the first cluster, one byte in the sixth, and the
    /// last byte set (a partial last cluster when `len` is not a multiple of 64 KiB). A GPT
    /// signature at 512 so format detection sees a raw disk.
    pub fn sample(len: usize) -> Vec<u8> {
        let mut raw = vec![0u8; len];
        raw[..100].copy_from_slice(&[7u8; 100]);
        raw[512..520].copy_from_slice(b"EFI PART");
        if len > 5 * 65536 + 3 {
            raw[5 * 65536 + 3] = 1;
        }
        raw[len - 1] = 9;
        raw
    }

    #[test]
    fn every_format_is_detected_and_reads_back() {
        let raw = sample(2 * 1024 * 1024);
        for f in Format::ALL {
            let bytes = export(f, &raw, "hello-1.0.0").unwrap();
            assert_eq!(detect(&bytes).unwrap(), f, "{f}");
            let o = open(bytes.clone()).unwrap();
            assert_eq!(o.format, f);
            assert_eq!(o.raw, raw, "{f}");
            assert_eq!(export(f, &raw, "hello-1.0.0").unwrap(), bytes, "{f}");
            assert_eq!(Format::parse(f.name()).unwrap(), f);
        }
        assert!(detect(&[0u8; 4096]).is_err());
        assert!(Format::parse("vdi").is_err());
    }

    #[test]
    fn uuids_are_derived_and_marked_version_8() {
        let u = uuid_from(&[1; 32], "vmdk");
        assert_eq!(u, uuid_from(&[1; 32], "vmdk"));
        assert_ne!(u, uuid_from(&[2; 32], "vmdk"));
        assert_ne!(u, uuid_from(&[1; 32], "vhd"));
        assert_eq!(&u[14..15], "8");
    }

    #[test]
    fn beside_json_strips_the_format_extension() {
        assert_eq!(
            beside_json(Path::new("/o/hello-1.0.0.tar.gz")),
            Path::new("/o/hello-1.0.0.json")
        );
        assert_eq!(
            beside_json(Path::new("/o/hello-1.0.0.qcow2")),
            Path::new("/o/hello-1.0.0.json")
        );
    }
}
