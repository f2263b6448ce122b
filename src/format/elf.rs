//! ELF program notes: the x86-64 micro-architecture level an object declares it needs
//! (`GNU_PROPERTY_X86_ISA_1_NEEDED` in its `.note.gnu.property`), and the level a CPU has
//! from its `/proc/cpuinfo` flags.

/// `NT_GNU_PROPERTY_TYPE_0`.
const NT_GNU_PROPERTY_TYPE_0: u32 = 5;
/// `GNU_PROPERTY_X86_ISA_1_NEEDED` (binutils >= 2.36): bit 0 baseline, 1 v2, 2 v3, 3 v4.
const GNU_PROPERTY_X86_ISA_1_NEEDED: u32 = 0xc000_8002;
const PT_NOTE: u32 = 4;
/// Program headers read at most (hostile input stays bounded).
const MAX_PHDRS: usize = 256;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The x86-64 level (1..=4) a 64-bit little-endian x86-64 ELF object says it needs, or
/// None when it is not such an object or has no ISA-needed property.
pub fn x86_64_level_needed(elf: &[u8]) -> Option<u8> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    if u16_at(elf, 18)? != 62 {
        return None; // EM_X86_64
    }
    let phoff = usize::try_from(u64_at(elf, 32)?).ok()?;
    let phentsize = usize::from(u16_at(elf, 54)?);
    let phnum = usize::from(u16_at(elf, 56)?).min(MAX_PHDRS);
    if phentsize < 56 {
        return None;
    }
    let mut level = None;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_NOTE {
            continue;
        }
        let off = usize::try_from(u64_at(elf, ph + 8)?).ok()?;
        let size = usize::try_from(u64_at(elf, ph + 32)?).ok()?;
        let align = u64_at(elf, ph + 48)?.max(4) as usize;
        let Some(notes) = elf.get(off..off.checked_add(size)?) else {
            continue;
        };
        if let Some(l) = notes_level(notes, align.min(8)) {
            level = Some(level.map_or(l, |x: u8| x.max(l)));
        }
    }
    level
}

fn notes_level(notes: &[u8], align: usize) -> Option<u8> {
    let pad = |n: usize| n.div_ceil(align) * align;
    let mut at = 0;
    let mut level = None;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let ntype = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        // Offsets are aligned (name and descriptor start on `align` boundaries of the
        // segment), not lengths: 12 + "GNU\0" = 16 is already 8-aligned.
        let desc_at = pad(name_at.checked_add(namesz)?);
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if ntype == NT_GNU_PROPERTY_TYPE_0 && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
            let mut p = 0;
            while p + 8 <= desc.len() {
                let pr_type = u32_at(desc, p)?;
                let datasz = u32_at(desc, p + 4)? as usize;
                if pr_type == GNU_PROPERTY_X86_ISA_1_NEEDED && datasz >= 4 {
                    let bits = u32_at(desc, p + 8)? & 0xf;
                    if bits != 0 {
                        let l = (32 - bits.leading_zeros()) as u8;
                        level = Some(level.map_or(l, |x: u8| x.max(l)));
                    }
                }
                p = p.checked_add(8 + datasz.div_ceil(8) * 8)?;
            }
        }
        at = pad(desc_at.checked_add(descsz)?);
    }
    level
}

/// The x86-64 level (1..=4) of a CPU from the `flags` line of `/proc/cpuinfo`.
pub fn host_x86_64_level(cpuinfo: &str) -> u8 {
    let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
        return 1;
    };
    let has: std::collections::BTreeSet<&str> = flags.split_whitespace().collect();
    let all = |fs: &[&str]| fs.iter().all(|f| has.contains(f));
    let v2 = all(&["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"]);
    let v3 = v2
        && all(&[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
        ]);
    let v4 = v3 && all(&["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]);
    1 + u8::from(v2) + u8::from(v3) + u8::from(v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 header with one PT_NOTE holding a GNU property note.
    fn elf_with_isa(bits: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&16u32.to_le_bytes());
        note.extend_from_slice(&NT_GNU_PROPERTY_TYPE_0.to_le_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&GNU_PROPERTY_X86_ISA_1_NEEDED.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&bits.to_le_bytes());
        note.extend_from_slice(&[0; 4]);
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        let at = e.len() as u64;
        e[ph + 8..ph + 16].copy_from_slice(&at.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e[ph + 48..ph + 56].copy_from_slice(&8u64.to_le_bytes());
        e.extend_from_slice(&note);
        e
    }

    #[test]
    fn isa_needed_is_the_highest_bit() {
        assert_eq!(x86_64_level_needed(&elf_with_isa(0b0001)), Some(1));
        assert_eq!(x86_64_level_needed(&elf_with_isa(0b0111)), Some(3));
        assert_eq!(x86_64_level_needed(&elf_with_isa(0b0010)), Some(2));
        assert_eq!(x86_64_level_needed(&elf_with_isa(0)), None);
        assert_eq!(x86_64_level_needed(b"#!/bin/sh\n"), None);
        let mut cut = elf_with_isa(4);
        cut.truncate(130);
        assert_eq!(x86_64_level_needed(&cut), None);
    }

    #[test]
    fn host_level_from_flags() {
        assert_eq!(host_x86_64_level("flags : fpu sse sse2"), 1);
        let v2 = "flags : cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3";
        assert_eq!(host_x86_64_level(v2), 2);
        let v3 = format!("{v2} avx avx2 bmi1 bmi2 f16c fma abm movbe xsave");
        assert_eq!(host_x86_64_level(&v3), 3);
    }
}
