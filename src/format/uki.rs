//! Unified Kernel Images: a systemd EFI stub (a PE32+ image) with the kernel,
//! initramfs, command line and os-release appended as extra PE sections.
//!
//! Layout of a PE32+ image (Microsoft PE/COFF specification), as far as we use it:
//!
//! * DOS header: `MZ` at 0; `e_lfanew` (u32 at 0x3c) = file offset of the PE signature.
//! * `PE\0\0` signature, then the 20-byte COFF file header:
//!   `Machine` u16 @0, `NumberOfSections` u16 @2, `TimeDateStamp` u32 @4,
//!   `PointerToSymbolTable` u32 @8, `NumberOfSymbols` u32 @12,
//!   `SizeOfOptionalHeader` u16 @16, `Characteristics` u16 @18.
//! * Optional header (PE32+: `Magic` 0x20b): `SizeOfInitializedData` u32 @8,
//!   `SectionAlignment` u32 @32 (alignment of sections in memory),
//!   `FileAlignment` u32 @36 (alignment of raw data in the file),
//!   `SizeOfImage` u32 @56 (memory size of the loaded image, multiple of
//!   SectionAlignment), `SizeOfHeaders` u32 @60 (headers + section table,
//!   rounded to FileAlignment), `CheckSum` u32 @64, `NumberOfRvaAndSizes` u32 @108,
//!   then that many data directories (u32 address, u32 size) from @112; directory
//!   4 is the certificate table, whose address is a *file offset*.
//! * Section table right after the optional header, 40 bytes per section:
//!   `Name` [u8; 8] @0 (NUL padded), `VirtualSize` u32 @8 (size in memory),
//!   `VirtualAddress` u32 @12 (RVA), `SizeOfRawData` u32 @16 (multiple of
//!   FileAlignment), `PointerToRawData` u32 @20 (file offset), relocation and
//!   line-number pointers/counts (@24..@36, zero in images), `Characteristics` u32 @36.
//!
//! [`build`] appends `.osrel`, `.cmdline`, `.linux`, `.initrd` above every
//! section of the stub in memory and after the stub's last byte in the file, so
//! anything the stub carries past its sections (e.g. a COFF symbol table or debug
//! data) stays where it is. The result is deterministic.

use anyhow::{bail, ensure, Context, Result};

/// Section characteristics of the appended sections:
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
pub const SECTION_FLAGS: u32 = 0x4000_0040;

const PE32PLUS_MAGIC: u16 = 0x20b;
const SECTION_HEADER_LEN: usize = 40;
const COFF_HEADER_LEN: usize = 20;
/// Index of the certificate table among the data directories.
pub(crate) const CERT_DIRECTORY: usize = 4;
/// Offset of `CheckSum` inside the optional header.
pub(crate) const OPT_CHECKSUM: usize = 64;

/// The payload of a UKI, one slice per section.
pub struct Sections<'a> {
    /// os-release of the image (`.osrel`).
    pub osrel: &'a [u8],
    /// Kernel command line (`.cmdline`).
    pub cmdline: &'a [u8],
    /// The kernel's bzImage (`.linux`).
    pub linux: &'a [u8],
    /// The (compressed) initramfs (`.initrd`).
    pub initrd: &'a [u8],
}

fn rd16(b: &[u8], off: usize) -> Result<u16> {
    let s = b
        .get(off..off.checked_add(2).context("offset overflow")?)
        .with_context(|| {
            format!(
                "PE: 2 bytes at offset {off:#x} are past the end ({:#x})",
                b.len()
            )
        })?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn rd32(b: &[u8], off: usize) -> Result<u32> {
    let s = b
        .get(off..off.checked_add(4).context("offset overflow")?)
        .with_context(|| {
            format!(
                "PE: 4 bytes at offset {off:#x} are past the end ({:#x})",
                b.len()
            )
        })?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn wr16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// One entry of the section table.
#[derive(Clone, Debug)]
pub(crate) struct SectionHeader {
    pub(crate) name: [u8; 8],
    pub(crate) virtual_size: u32,
    pub(crate) virtual_address: u32,
    pub(crate) size_of_raw_data: u32,
    pub(crate) pointer_to_raw_data: u32,
}

impl SectionHeader {
    fn name(&self) -> String {
        let end = self.name.iter().position(|&c| c == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// The parts of a PE32+ image's headers we need, with their file offsets.
pub(crate) struct Pe {
    /// Offset of the COFF file header (just after `PE\0\0`).
    pub(crate) coff: usize,
    /// Offset of the optional header.
    pub(crate) opt: usize,
    /// Offset of the section table.
    pub(crate) sections_off: usize,
    pub(crate) sections: Vec<SectionHeader>,
    pub(crate) section_alignment: u32,
    pub(crate) file_alignment: u32,
    pub(crate) size_of_image: u32,
    pub(crate) size_of_headers: u32,
    pub(crate) number_of_rva_and_sizes: u32,
}

impl Pe {
    pub(crate) fn parse(b: &[u8]) -> Result<Pe> {
        ensure!(
            b.get(..2) == Some(b"MZ"),
            "not a PE image: expected DOS magic \"MZ\" at offset 0"
        );
        let lfanew = rd32(b, 0x3c).context("PE: truncated DOS header")? as usize;
        ensure!(
            b.get(lfanew..lfanew.saturating_add(4)) == Some(b"PE\0\0"),
            "not a PE image: expected signature \"PE\\0\\0\" at offset {lfanew:#x} (e_lfanew)"
        );
        let coff = lfanew + 4;
        let nsections = rd16(b, coff + 2).context("PE: truncated COFF header")? as usize;
        let size_of_optional_header = rd16(b, coff + 16)? as usize;
        let opt = coff + COFF_HEADER_LEN;
        let magic = rd16(b, opt).context("PE: missing optional header")?;
        ensure!(
            magic == PE32PLUS_MAGIC,
            "PE: optional header magic is {magic:#x}, expected {PE32PLUS_MAGIC:#x} (PE32+); \
             only 64-bit EFI stubs are supported"
        );
        let number_of_rva_and_sizes = rd32(b, opt + 108)?;
        let dirs_end = 112u64 + 8 * u64::from(number_of_rva_and_sizes);
        ensure!(
            size_of_optional_header as u64 >= dirs_end,
            "PE: SizeOfOptionalHeader {size_of_optional_header} is too small for \
             {number_of_rva_and_sizes} data directories (needs {dirs_end})"
        );
        ensure!(
            b.len() >= opt + size_of_optional_header,
            "PE: optional header runs past the end of the file"
        );
        let section_alignment = rd32(b, opt + 32)?;
        let file_alignment = rd32(b, opt + 36)?;
        for (what, v) in [
            ("SectionAlignment", section_alignment),
            ("FileAlignment", file_alignment),
        ] {
            ensure!(
                v.is_power_of_two(),
                "PE: {what} is {v:#x}, expected a power of two"
            );
        }
        let sections_off = opt + size_of_optional_header;
        let mut sections = Vec::with_capacity(nsections.min(1024));
        for i in 0..nsections {
            let o = sections_off + i * SECTION_HEADER_LEN;
            let raw = b
                .get(o..o + SECTION_HEADER_LEN)
                .with_context(|| format!("PE: section header {i} runs past the end"))?;
            let mut name = [0u8; 8];
            name.copy_from_slice(&raw[..8]);
            sections.push(SectionHeader {
                name,
                virtual_size: rd32(raw, 8)?,
                virtual_address: rd32(raw, 12)?,
                size_of_raw_data: rd32(raw, 16)?,
                pointer_to_raw_data: rd32(raw, 20)?,
            });
        }
        Ok(Pe {
            coff,
            opt,
            sections_off,
            sections,
            section_alignment,
            file_alignment,
            size_of_image: rd32(b, opt + 56)?,
            size_of_headers: rd32(b, opt + 60)?,
            number_of_rva_and_sizes,
        })
    }
}

/// The PE image checksum (what `CheckSumMappedFile` computes): the one's-complement
/// style 16-bit sum of the file with the `CheckSum` field taken as zero, plus the
/// file length.
pub fn pe_checksum(b: &[u8], checksum_offset: usize) -> u32 {
    let byte = |i: usize| -> u64 {
        if (checksum_offset..checksum_offset.saturating_add(4)).contains(&i) {
            0
        } else {
            b.get(i).copied().map_or(0, u64::from)
        }
    };
    let mut sum: u64 = 0;
    for i in (0..b.len()).step_by(2) {
        sum += byte(i) | (byte(i + 1) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

/// Build a UKI: `stub` with `.osrel`, `.cmdline`, `.linux`, `.initrd` appended
/// (in that order; an empty `.osrel`, `.cmdline` or `.initrd` is left out).
///
/// The new sections go above all of the stub's sections in memory (each at
/// the next multiple of SectionAlignment) and after the stub's last byte in the
/// file (each at the next multiple of FileAlignment). NumberOfSections,
/// SizeOfImage, SizeOfInitializedData and the checksum are updated; the
/// certificate table (a signature over the stub, invalid once sections are
/// added) is dropped. Errors if the stub is not PE32+, already has one of
/// these sections, or has no room for four more section headers.
pub fn build(stub: &[u8], sections: &Sections) -> Result<Vec<u8>> {
    let pe = Pe::parse(stub).context("parsing the EFI stub")?;
    ensure!(
        !sections.linux.is_empty(),
        "UKI: the kernel (.linux) is empty"
    );
    let wanted: Vec<(&str, &[u8])> = [
        (".osrel", sections.osrel),
        (".cmdline", sections.cmdline),
        (".linux", sections.linux),
        (".initrd", sections.initrd),
    ]
    .into_iter()
    .filter(|(_, d)| !d.is_empty())
    .collect();
    for s in &pe.sections {
        if wanted.iter().any(|(n, _)| s.name() == *n) {
            bail!(
                "EFI stub already has a {} section (is it already a UKI?)",
                s.name()
            );
        }
    }

    let mut out = stub.to_vec();

    // Drop the certificate table: zero its directory, and cut its bytes if
    // they are the tail of the file (where signing tools put them).
    if pe.number_of_rva_and_sizes as usize > CERT_DIRECTORY {
        let dir = pe.opt + 112 + 8 * CERT_DIRECTORY;
        let cert_off = rd32(&out, dir)? as usize;
        let cert_len = rd32(&out, dir + 4)? as usize;
        if cert_len != 0 && cert_off.checked_add(cert_len) == Some(out.len()) {
            let data_end = pe
                .sections
                .iter()
                .map(|s| s.pointer_to_raw_data as usize + s.size_of_raw_data as usize)
                .chain([
                    pe.size_of_headers as usize,
                    pe.sections_off + (pe.sections.len() + 4) * SECTION_HEADER_LEN,
                ])
                .max()
                .unwrap_or(0);
            if cert_off >= data_end {
                out.truncate(cert_off);
            }
        }
        wr32(&mut out, dir, 0);
        wr32(&mut out, dir + 4, 0);
    }

    // Room for the new section headers between the table and the first raw data.
    let old_table_end = pe.sections_off + pe.sections.len() * SECTION_HEADER_LEN;
    let new_table_end = old_table_end + wanted.len() * SECTION_HEADER_LEN;
    let first_data = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data != 0 && s.pointer_to_raw_data != 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(usize::MAX);
    let limit = first_data.min(pe.size_of_headers as usize);
    ensure!(
        new_table_end <= limit,
        "EFI stub has no room for {} more section headers: the section table would end at \
         {new_table_end:#x}, but headers end at {limit:#x} (SizeOfHeaders {:#x}, first section data at {first_data:#x})",
        wanted.len(),
        pe.size_of_headers
    );
    let gap = out
        .get(old_table_end..new_table_end)
        .context("EFI stub is shorter than its own headers")?;
    if gap.iter().any(|&b| b != 0) {
        // Header padding the linker filled (the arm64 stub of gnu-efi's crt0 pads its header
        // page with NOP instructions) may be overwritten only when nothing points into it:
        // not the entry point, not a data directory (the header area's RVAs are its file
        // offsets); the section data start at or after `limit`, checked above.
        let gap_range = old_table_end as u64..new_table_end as u64;
        let overlaps =
            |start: u64, len: u64| start < gap_range.end && gap_range.start < start + len.max(1);
        let entry = u64::from(rd32(&out, pe.opt + 16)?);
        ensure!(
            !overlaps(entry, 1),
            "EFI stub's entry point {entry:#x} lies right after its section table; refusing to overwrite it"
        );
        for i in 0..pe.number_of_rva_and_sizes.min(16) as usize {
            let d = pe.opt + 112 + 8 * i;
            let (rva, size) = (u64::from(rd32(&out, d)?), u64::from(rd32(&out, d + 4)?));
            ensure!(
                size == 0 || !overlaps(rva, size),
                "EFI stub has non-zero bytes after its section table ({old_table_end:#x}..{new_table_end:#x}) \
                 that data directory {i} points into; refusing to overwrite them"
            );
        }
        tracing::debug!(
            "EFI stub: header padding {old_table_end:#x}..{new_table_end:#x} (unreferenced) becomes section headers"
        );
    }

    let sa = u64::from(pe.section_alignment);
    let fa = u64::from(pe.file_alignment);
    let mut next_va = u64::from(pe.size_of_image);
    for s in &pe.sections {
        let size = s.virtual_size.max(s.size_of_raw_data);
        next_va = next_va.max(u64::from(s.virtual_address) + u64::from(size));
    }
    next_va = align_up(next_va, sa);
    let mut next_raw = align_up(out.len() as u64, fa);

    let mut added_initialized: u64 = 0;
    let mut headers = Vec::new();
    for (name, data) in &wanted {
        let len = data.len() as u64;
        let raw_size = align_up(len, fa);
        out.resize(next_raw as usize, 0);
        out.extend_from_slice(data);
        out.resize((next_raw + raw_size) as usize, 0);
        let to32 = |v: u64, what: &str| {
            u32::try_from(v).with_context(|| {
                format!("UKI: {what} of section {name} ({v:#x}) does not fit in 32 bits")
            })
        };
        let mut h = [0u8; SECTION_HEADER_LEN];
        h[..name.len()].copy_from_slice(name.as_bytes());
        wr32(&mut h, 8, to32(len, "VirtualSize")?);
        wr32(&mut h, 12, to32(next_va, "VirtualAddress")?);
        wr32(&mut h, 16, to32(raw_size, "SizeOfRawData")?);
        wr32(&mut h, 20, to32(next_raw, "PointerToRawData")?);
        wr32(&mut h, 36, SECTION_FLAGS);
        headers.extend_from_slice(&h);
        added_initialized += raw_size;
        next_va = align_up(next_va + len, sa);
        next_raw += raw_size;
    }
    out[old_table_end..new_table_end].copy_from_slice(&headers);

    let nsections = pe.sections.len() + wanted.len();
    wr16(
        &mut out,
        pe.coff + 2,
        u16::try_from(nsections).context("UKI: more than 65535 sections")?,
    );
    let size_of_image =
        u32::try_from(next_va).context("UKI: SizeOfImage does not fit in 32 bits")?;
    wr32(&mut out, pe.opt + 56, size_of_image);
    let init = u64::from(rd32(&out, pe.opt + 8)?) + added_initialized;
    wr32(
        &mut out,
        pe.opt + 8,
        u32::try_from(init).context("UKI: SizeOfInitializedData does not fit in 32 bits")?,
    );
    let ck_off = pe.opt + OPT_CHECKSUM;
    wr32(&mut out, ck_off, 0);
    let ck = pe_checksum(&out, ck_off);
    wr32(&mut out, ck_off, ck);
    Ok(out)
}

/// Every section of a PE32+ image as (name, data), in section-table order.
///
/// The data is the section's raw data trimmed to its VirtualSize (its exact
/// length for the sections [`build`] adds); when VirtualSize is 0 or exceeds
/// the raw data, the raw data as stored. Bounds-checked: a malformed image is
/// an error, never a panic.
pub fn read_sections(pe: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let p = Pe::parse(pe)?;
    let mut out = Vec::with_capacity(p.sections.len());
    for s in &p.sections {
        let raw_len = if s.virtual_size == 0 {
            s.size_of_raw_data
        } else {
            s.virtual_size.min(s.size_of_raw_data)
        } as usize;
        let start = s.pointer_to_raw_data as usize;
        let data = if raw_len == 0 {
            &[][..]
        } else {
            pe.get(start..start.saturating_add(raw_len)).with_context(|| {
                format!(
                    "PE: data of section {} ({raw_len:#x} bytes at {start:#x}) runs past the end ({:#x})",
                    s.name(),
                    pe.len()
                )
            })?
        };
        out.push((s.name(), data.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// A small synthetic PE32+ EFI application: .text and .data, a fake COFF
    /// symbol table after the last section, and a certificate table at the end.
    pub(crate) fn synthetic(with_cert: bool) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        wr32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        wr16(&mut b, coff, 0x8664); // Machine: x86-64
        wr16(&mut b, coff + 2, 2); // NumberOfSections
        wr32(&mut b, coff + 8, 0x800); // PointerToSymbolTable
        wr32(&mut b, coff + 12, 3); // NumberOfSymbols
        wr16(&mut b, coff + 16, 240); // SizeOfOptionalHeader
        wr16(&mut b, coff + 18, 0x206);
        let opt = coff + 20;
        wr16(&mut b, opt, 0x20b);
        wr32(&mut b, opt + 4, 0x200); // SizeOfCode
        wr32(&mut b, opt + 8, 0x200); // SizeOfInitializedData
        wr32(&mut b, opt + 16, 0x1000); // AddressOfEntryPoint
        wr32(&mut b, opt + 32, 0x1000); // SectionAlignment
        wr32(&mut b, opt + 36, 0x200); // FileAlignment
        wr32(&mut b, opt + 56, 0x3000); // SizeOfImage
        wr32(&mut b, opt + 60, 0x400); // SizeOfHeaders
        wr32(&mut b, opt + 64, 0xdead); // CheckSum (wrong on purpose)
        wr16(&mut b, opt + 68, 10); // Subsystem: EFI application
        wr32(&mut b, opt + 108, 16); // NumberOfRvaAndSizes
        let sec = opt + 240;
        for (i, (name, vs, va, raw, ptr, flags)) in [
            (
                ".text",
                0x123u32,
                0x1000u32,
                0x200u32,
                0x400u32,
                0x6000_0020u32,
            ),
            (".data", 0x1ff, 0x2000, 0x200, 0x600, 0xc000_0040),
        ]
        .into_iter()
        .enumerate()
        {
            let h = sec + i * 40;
            b[h..h + name.len()].copy_from_slice(name.as_bytes());
            wr32(&mut b, h + 8, vs);
            wr32(&mut b, h + 12, va);
            wr32(&mut b, h + 16, raw);
            wr32(&mut b, h + 20, ptr);
            wr32(&mut b, h + 36, flags);
        }
        b.resize(0x800, 0);
        for (i, v) in b[0x400..0x800].iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8 | 1;
        }
        // "Symbol table": 3 * 18 bytes plus a string table, not file-aligned.
        b.extend((0..60u8).map(|i| i ^ 0x5a));
        if with_cert {
            let off = b.len() as u32;
            b.extend_from_slice(&[0xC5; 24]);
            wr32(&mut b, opt + 112 + 8 * 4, off);
            wr32(&mut b, opt + 112 + 8 * 4 + 4, 24);
        }
        b
    }

    fn payload() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            b"ID=test\n".to_vec(),
            b"console=ttyS0 panic=-1".to_vec(),
            (0..5000u32).map(|i| (i % 253) as u8).collect(),
            vec![0x1f, 0x8b, 8, 0, 1, 2, 3],
        )
    }

    fn secs<'a>(p: &'a (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)) -> Sections<'a> {
        Sections {
            osrel: &p.0,
            cmdline: &p.1,
            linux: &p.2,
            initrd: &p.3,
        }
    }

    #[test]
    fn builds_from_synthetic_stub() {
        let stub = synthetic(true);
        let p = payload();
        let uki = build(&stub, &secs(&p)).unwrap();
        assert_eq!(uki, build(&stub, &secs(&p)).unwrap(), "not deterministic");

        let got = read_sections(&uki).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [".text", ".data", ".osrel", ".cmdline", ".linux", ".initrd"]
        );
        assert_eq!(got[2].1, p.0);
        assert_eq!(got[3].1, p.1);
        assert_eq!(got[4].1, p.2);
        assert_eq!(got[5].1, p.3);
        assert_eq!(got[..2], read_sections(&stub).unwrap()[..]);

        let pe = Pe::parse(&uki).unwrap();
        assert_eq!(rd16(&uki, pe.coff + 2).unwrap(), 6);
        // Stub bytes (headers aside) up to the end of the symbol table are unchanged.
        let stub_end = stub.len() - 24;
        assert_eq!(uki[0x400..stub_end], stub[0x400..stub_end]);
        assert_eq!(
            rd32(&uki, pe.coff + 8).unwrap(),
            0x800,
            "symbol table moved"
        );
        // Certificate directory zeroed, its bytes gone.
        assert_eq!(rd32(&uki, pe.opt + 112 + 32).unwrap(), 0);
        assert_eq!(rd32(&uki, pe.opt + 112 + 36).unwrap(), 0);
        assert!(!uki.windows(24).any(|w| w == [0xC5; 24]));

        let mut prev_va_end = 0x3000u64;
        let mut prev_raw_end = stub_end as u64;
        for (s, want) in pe.sections[2..].iter().zip([&p.0, &p.1, &p.2, &p.3]) {
            assert_eq!(s.virtual_size as usize, want.len());
            assert_eq!(s.virtual_address % 0x1000, 0);
            assert!(u64::from(s.virtual_address) >= prev_va_end, "overlap");
            assert_eq!(s.pointer_to_raw_data % 0x200, 0);
            assert_eq!(s.size_of_raw_data % 0x200, 0);
            assert!(s.size_of_raw_data as usize >= want.len());
            assert!(
                u64::from(s.pointer_to_raw_data) >= prev_raw_end,
                "raw overlap"
            );
            prev_va_end = u64::from(s.virtual_address) + u64::from(s.virtual_size);
            prev_raw_end = u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data);
        }
        // Compact placement: .osrel right above the stub's image, in order.
        let vas: Vec<u32> = pe.sections[2..].iter().map(|s| s.virtual_address).collect();
        assert_eq!(vas, [0x3000, 0x4000, 0x5000, 0x7000]);
        assert_eq!(uki.len() as u64, prev_raw_end);
        for i in 2..6 {
            let h = pe.sections_off + i * 40;
            assert_eq!(rd32(&uki, h + 36).unwrap(), SECTION_FLAGS);
        }
        assert_eq!(pe.size_of_image, 0x8000);
        // 0x200 (stub) + 0x200 + 0x200 + 0x1400 (5000 bytes) + 0x200.
        assert_eq!(rd32(&uki, pe.opt + 8).unwrap(), 0x200 + 0x1a00);
        let ck = rd32(&uki, pe.opt + 64).unwrap();
        assert_eq!(ck, pe_checksum(&uki, pe.opt + 64));
        assert_ne!(ck, 0xdead);
    }

    #[test]
    fn checksum_matches_hand_computation() {
        // Words 0x0201, [checksum skipped], 0x0605, 0x0007 (odd tail) + length 9.
        let b = [1u8, 2, 0xff, 0xff, 0xff, 0xff, 5, 6, 7];
        assert_eq!(pe_checksum(&b, 2), 0x0201 + 0x0605 + 0x0007 + 9);
        // Carries fold back into the low 16 bits.
        let c = [0xffu8, 0xff, 0x02, 0x00, 0, 0, 0, 0];
        assert_eq!(pe_checksum(&c, 4), 0x0002 + 8);
    }

    #[test]
    fn leaves_out_empty_optional_sections() {
        let p = (Vec::new(), b"quiet".to_vec(), vec![1u8; 10], Vec::new());
        let uki = build(&synthetic(false), &secs(&p)).unwrap();
        let names: Vec<String> = read_sections(&uki)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(names, [".text", ".data", ".cmdline", ".linux"]);
        let none = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        assert!(build(&synthetic(false), &secs(&none)).is_err());
    }

    #[test]
    fn refuses_bad_stubs() {
        let p = payload();
        let good = synthetic(false);
        let err = |b: &[u8]| format!("{:#}", build(b, &secs(&p)).unwrap_err());

        let mut b = good.clone();
        b[0] = b'X';
        assert!(err(&b).contains("MZ"), "{}", err(&b));

        let mut b = good.clone();
        b[0x81] = b'X';
        assert!(err(&b).contains("PE\\0\\0"), "{}", err(&b));

        let mut b = good.clone();
        wr16(&mut b, 0x84 + 20, 0x10b);
        assert!(err(&b).contains("PE32+"), "{}", err(&b));

        // No room: headers end at 0x400, table at 0x188 + 2*40; 14 sections fill it.
        let mut b = good.clone();
        wr16(&mut b, 0x84 + 2, 14);
        for i in 2..14 {
            let h = 0x188 + i * 40;
            b[h..h + 4].copy_from_slice(b".pad");
        }
        assert!(err(&b).contains("no room"), "{}", err(&b));

        // Already a UKI.
        let uki = build(&good, &secs(&p)).unwrap();
        assert!(err(&uki).contains("already"), "{}", err(&uki));
    }

    #[test]
    fn header_padding_after_the_table_is_reused_only_when_unreferenced() {
        let p = payload();
        // Table ends at 0x188 + 2*40 = 0x1d8; fill the rest of the header page with NOPs
        // (arm64's `d503201f`), as the arm64 stub's crt0 does.
        let mut b = synthetic(false);
        for (i, v) in b[0x1d8..0x400].iter_mut().enumerate() {
            *v = [0x1f, 0x20, 0x03, 0xd5][i % 4];
        }
        let uki = build(&b, &secs(&p)).unwrap();
        let names: Vec<String> = read_sections(&uki)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert!(names.contains(&".linux".to_string()), "{names:?}");
        // A data directory (the debug one, 6) pointing into that padding: refused.
        let opt = 0x84 + 20;
        wr32(&mut b, opt + 112 + 8 * 6, 0x200);
        wr32(&mut b, opt + 112 + 8 * 6 + 4, 0x1c);
        let e = format!("{:#}", build(&b, &secs(&p)).unwrap_err());
        assert!(e.contains("data directory 6"), "{e}");
        // The entry point there: refused.
        wr32(&mut b, opt + 112 + 8 * 6 + 4, 0);
        wr32(&mut b, opt + 16, 0x1e0);
        let e = format!("{:#}", build(&b, &secs(&p)).unwrap_err());
        assert!(e.contains("entry point"), "{e}");
    }

    #[test]
    fn reader_never_panics_on_damage() {
        let p = payload();
        let uki = build(&synthetic(true), &secs(&p)).unwrap();
        for len in 0..0x400 {
            assert!(read_sections(&uki[..len]).is_err());
        }
        let mut seed = 0xC0FFEEu32;
        for _ in 0..5000 {
            let mut b = uki.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // Damage the headers, where the offsets live.
                let i = (seed >> 8) as usize % 0x300;
                b[i] = (seed >> 3) as u8;
            }
            let _ = read_sections(&b);
            let _ = build(&b, &secs(&p));
        }
        let mut b = uki.clone();
        wr32(&mut b, 0x188 + 4 * 40 + 16, 0xffff_fe00);
        wr32(&mut b, 0x188 + 4 * 40 + 20, 0xffff_fe00);
        assert!(read_sections(&b).is_err());
    }

    fn real_stub() -> Option<Vec<u8>> {
        let path = std::env::var_os("FUSE_TEST_EFI_STUB")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/systemd/boot/efi/linuxx64.efi.stub"));
        let ok = crate::testutil::require(
            path.is_file(),
            &format!(
                "no EFI stub at {} (package systemd-boot-efi, or set FUSE_TEST_EFI_STUB)",
                path.display()
            ),
        );
        ok.then(|| std::fs::read(&path).unwrap())
    }

    #[test]
    fn real_stub_checksum_and_objdump() {
        let Some(stub) = real_stub() else { return };
        let pe = Pe::parse(&stub).unwrap();
        let stored = rd32(&stub, pe.opt + 64).unwrap();
        if stored != 0 {
            assert_eq!(
                pe_checksum(&stub, pe.opt + 64),
                stored,
                "our checksum disagrees with the stub's own"
            );
        }
        let p = payload();
        let uki = build(&stub, &secs(&p)).unwrap();
        let got = read_sections(&uki).unwrap();
        let n = pe.sections.len();
        assert_eq!(got[..n], read_sections(&stub).unwrap()[..]);
        assert_eq!(got[n..].len(), 4);
        assert_eq!(
            uki[pe.size_of_headers as usize..stub.len()],
            stub[pe.size_of_headers as usize..],
            "stub data after the headers changed"
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("uki.efi");
        std::fs::write(&f, &uki).unwrap();
        if !crate::testutil::require_tool("objdump") {
            return;
        }
        let out = Command::new("objdump").arg("-h").arg(&f).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let upe = Pe::parse(&uki).unwrap();
        for (i, s) in upe.sections.iter().enumerate().skip(n) {
            // "  8 .osrel   00000008  0000000000019400  0000000000019400  00014600  2**2"
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(s.name().as_str()))
                .unwrap_or_else(|| panic!("objdump does not list {}:\n{text}", s.name()));
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cols[0], i.to_string(), "{line}");
            assert_eq!(
                u64::from_str_radix(cols[2], 16).unwrap(),
                got[i].1.len() as u64,
                "{line}"
            );
            assert_eq!(
                u64::from_str_radix(cols[3], 16).unwrap(),
                u64::from(s.virtual_address),
                "{line}"
            );
            assert_eq!(
                u64::from_str_radix(cols[5], 16).unwrap(),
                u64::from(s.pointer_to_raw_data),
                "{line}"
            );
        }
    }
}
