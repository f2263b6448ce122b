//! Export: the raw disk wrapped in the formats hypervisors and clouds import (qcow2, VMDK,
//! OVA, fixed VHD, GCE's tar.gz), each a pure, deterministic function of the raw bytes
//! (identifiers derived from the image digest, no time stamps), and the readers that give
//! the raw bytes back, so the image digest stays the identity through every conversion.

pub mod gce;
pub mod ova;
pub mod padding;
pub mod qcow2;
pub mod tarball;
pub mod uuid;
pub mod vhd;
pub mod vmdk;

pub use padding::{cut_padding, gpt_len};
pub use uuid::{digest_of, uuid_bytes, uuid_from};

use anyhow::{bail, Context, Result};
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
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The drivers the hardware a format is meant for needs, as (what, any of these modules):
/// the OVA's descriptors ask for a SATA disk and a vmxnet3 (VMware) or e1000 (VirtualBox)
/// NIC; a VMDK is attached to SATA by VMware and VirtualBox; a raw disk goes to bare metal
/// or a hypervisor emulating SATA and Intel NICs; VHD to Hyper-V and Azure; GCE's disk to
/// virtio-scsi or NVMe with gVNIC or virtio-net; qcow2 to virtio (docs/targets.md, "Drivers").
fn needed_drivers(format: Format) -> &'static [(&'static str, &'static [&'static str])] {
    match format {
        Format::Ova => &[
            ("its SATA disk", &["ahci"]),
            (
                "its NIC (vmxnet3 in VMware, e1000 in VirtualBox)",
                &["vmxnet3", "e1000"],
            ),
        ],
        Format::Vmdk => &[("a SATA disk (VMware's and VirtualBox's default)", &["ahci"])],
        Format::Raw => &[
            ("a SATA disk", &["ahci"]),
            ("an Intel NIC", &["e1000", "e1000e"]),
        ],
        Format::Vhd => &[
            ("Hyper-V's disk", &["hv_storvsc"]),
            ("Hyper-V's NIC", &["hv_netvsc"]),
        ],
        Format::Gce => &[
            ("GCE's disk", &["virtio_scsi", "nvme"]),
            ("GCE's NIC", &["gve", "virtio_net"]),
        ],
        Format::Qcow2 => &[
            ("a virtio disk", &["virtio_blk", "virtio_scsi"]),
            ("a virtio NIC", &["virtio_net"]),
        ],
    }
}

/// What `format`'s hardware needs that `modules` (image.json's `kernel.modules`, the
/// drivers the kernel package brought into the initramfs) lacks: one line per device.
/// A driver built into the kernel is not listed there; Debian's kernels build none of
/// these in, and its cloud flavour has no SATA or Intel NIC driver at all.
pub fn missing_drivers(format: Format, modules: &[String]) -> Vec<String> {
    needed_drivers(format)
        .iter()
        .filter(|(_, any)| !any.iter().any(|m| modules.iter().any(|h| h == m)))
        .map(|(what, any)| format!("{what} needs {}", any.join(" or ")))
        .collect()
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
        Format::Vhd => (cut_padding(vhd::read(&bytes)?.to_vec()), None),
        Format::Gce => (gce::read(&bytes)?, None),
    };
    Ok(Opened {
        format,
        raw,
        recorded_digest,
    })
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
    #[test]
    fn a_kernel_without_sata_and_intel_nic_drivers_is_named_for_the_formats_that_need_them() {
        let generic: Vec<String> = [
            "virtio_blk",
            "virtio_net",
            "virtio_scsi",
            "nvme",
            "ahci",
            "e1000",
            "e1000e",
            "vmxnet3",
            "hv_storvsc",
            "hv_netvsc",
            "gve",
        ]
        .map(String::from)
        .to_vec();
        for f in Format::ALL {
            assert!(missing_drivers(f, &generic).is_empty(), "{f}");
        }
        let cloud: Vec<String> = generic
            .iter()
            .filter(|m| !["ahci", "e1000", "e1000e"].contains(&m.as_str()))
            .cloned()
            .collect();
        let ova = missing_drivers(Format::Ova, &cloud);
        assert_eq!(ova.len(), 1, "{ova:?}");
        assert!(
            ova[0].contains("SATA") && ova[0].contains("ahci"),
            "{ova:?}"
        );
        assert_eq!(missing_drivers(Format::Raw, &cloud).len(), 2);
        for f in [Format::Qcow2, Format::Vhd, Format::Gce] {
            assert!(missing_drivers(f, &cloud).is_empty(), "{f}");
        }
        assert_eq!(missing_drivers(Format::Qcow2, &[]).len(), 2);
    }

    use super::*;

    /// A sparse disk-like buffer: data in the first cluster, one byte in the sixth, and the
    /// last byte set (a partial last cluster when `len` is not a multiple of 64 KiB). A GPT
    /// signature at 512 so format detection sees a raw disk.
    pub fn sample(len: usize) -> Vec<u8> {
        let mut raw = vec![0u8; len];
        raw[..100].copy_from_slice(&[7u8; 100]);
        raw[512..520].copy_from_slice(b"EFI PART");
        raw[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
        let last = (len as u64).div_ceil(512) - 1;
        raw[512 + 32..512 + 40].copy_from_slice(&last.to_le_bytes());
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
    fn padding_is_cut_at_the_gpt_length_only_when_it_is_zeros() {
        let raw = sample(3 * 1024 * 1024);
        assert_eq!(gpt_len(&raw), Some(raw.len() as u64));
        let mut padded = raw.clone();
        padded.resize(raw.len() + 4096, 0);
        assert_eq!(cut_padding(padded.clone()), raw);
        let n = padded.len();
        padded[n - 1] = 1;
        assert_eq!(cut_padding(padded.clone()).len(), n);
        assert_eq!(cut_padding(vec![0; 4096]).len(), 4096);
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
