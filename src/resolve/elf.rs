//! ELF dynamic-linking facts: the interpreter (PT_INTERP) and the DT_NEEDED sonames of an
//! ELF64 little-endian object, and the library closure of a binary inside a file tree.

use crate::tree::{Kind, Tree};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// What an ELF object needs from the dynamic linker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// PT_INTERP, e.g. "/lib64/ld-linux-x86-64.so.2"; None for static binaries and most libraries.
    pub interpreter: Option<String>,
    /// DT_NEEDED sonames in file order.
    pub needed: Vec<String>,
    /// DT_RUNPATH / DT_RPATH entries.
    pub runpath: Vec<String>,
}

impl Dynamic {
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

fn rd<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    let end = off.checked_add(N).context("ELF offset overflow")?;
    Ok(b.get(off..end).context("ELF truncated")?.try_into()?)
}
fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(rd(b, o)?))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(rd(b, o)?))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(rd(b, o)?))
}

/// Is this an ELF file at all?
pub fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

/// Whether an ELF file is something the dynamic linker loads (`e_type` ET_EXEC or
/// ET_DYN): relocatable objects (`.o` files build systems leave behind, e.g. node-gyp's
/// `build/Release/obj.target`) and core dumps need no libraries. An unreadable type counts
/// as loadable, so that reading the object reports what is wrong with it.
pub fn is_loadable(b: &[u8]) -> bool {
    let ty = match (b.get(5), b.get(0x10..0x12)) {
        (Some(1), Some(t)) => u16::from_le_bytes([t[0], t[1]]),
        (Some(2), Some(t)) => u16::from_be_bytes([t[0], t[1]]),
        _ => return true,
    };
    !matches!(ty, 1 | 4)
}

/// Longest name read from a string table (a soname, a version, a runpath): PATH_MAX.
const MAX_NAME: usize = 4096;
/// Most bytes of names one object's dynamic section may make fuse copy, all entries
/// together: N entries naming one long string would otherwise copy it N times (a 320 KB
/// file made 2.1 GB). Real objects stay under a few KiB.
const MAX_NAMES_TOTAL: usize = 1 << 20;

fn cstr(b: &[u8], off: usize) -> Result<String> {
    let s = b.get(off..).context("string offset beyond the file")?;
    let s = &s[..s.len().min(MAX_NAME + 1)];
    let end = s.iter().position(|&c| c == 0).with_context(|| {
        if s.len() > MAX_NAME {
            format!("a name in the string table is longer than {MAX_NAME} bytes")
        } else {
            "unterminated string".to_string()
        }
    })?;
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// Read the dynamic-linking facts of an ELF64 LE x86-64 object (runpath entries with
/// `$ORIGIN` left out: they point into the object's own directory).
pub fn dynamic(b: &[u8]) -> Result<Dynamic> {
    let o = object(b)?;
    if !o.class64 || !o.little_endian {
        bail!("not a 64-bit little-endian ELF file");
    }
    Ok(Dynamic {
        interpreter: o.interpreter,
        needed: o.needed,
        runpath: o
            .runpath
            .into_iter()
            .filter(|p| !p.contains("$ORIGIN") && !p.contains("${ORIGIN}"))
            .collect(),
    })
}

/// ELF `e_machine` of x86-64 (each architecture's: [`crate::arch::Arch::elf_machine`]).
pub const EM_X86_64: u16 = 62;

/// A readable name of an ELF `e_machine` value.
pub fn machine_name(machine: u16) -> String {
    crate::arch::elf_machine_name(machine)
}

/// What decides whether one ELF object can run in the image: its platform, what it asks
/// of the dynamic linker, and the symbol versions it needs and defines. For objects that
/// are not 64-bit little-endian only the platform fields are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    /// ELFCLASS64?
    pub class64: bool,
    /// ELFDATA2LSB?
    pub little_endian: bool,
    /// `e_machine` (62: x86-64).
    pub machine: u16,
    /// PT_INTERP.
    pub interpreter: Option<String>,
    /// DT_SONAME.
    pub soname: Option<String>,
    /// DT_NEEDED in file order.
    pub needed: Vec<String>,
    /// DT_RUNPATH entries, else DT_RPATH's, verbatim (`$ORIGIN` kept).
    pub runpath: Vec<String>,
    /// `.gnu.version_r`: (library file name, version name) pairs, e.g.
    /// ("libc.so.6", "GLIBC_2.34").
    pub version_needs: Vec<(String, String)>,
    /// `.gnu.version_d`: the version names this object defines (its own name first).
    pub version_defs: Vec<String>,
}

/// `a + b`, or an error instead of an overflow.
fn add(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).context("ELF offset overflow")
}

/// Reads an ELF object's [`Object`] facts. Hostile input gives an error, never a panic.
pub fn object(b: &[u8]) -> Result<Object> {
    if !is_elf(b) {
        bail!("not an ELF file");
    }
    let mut out = Object {
        class64: b.get(4) == Some(&2),
        little_endian: b.get(5) == Some(&1),
        ..Object::default()
    };
    if !out.little_endian {
        out.machine = u16::from_be_bytes(rd(b, 0x12)?);
        return Ok(out);
    }
    out.machine = u16_at(b, 0x12)?;
    if !out.class64 {
        return Ok(out);
    }
    let phoff = u64_at(b, 0x20)? as usize;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    if phentsize < 56 {
        bail!("bad ELF program header size {phentsize}");
    }
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic_seg = None;
    for i in 0..phnum {
        let h = phoff
            .checked_add(i.checked_mul(phentsize).context("ELF header overflow")?)
            .context("ELF header overflow")?;
        let ty = u32_at(b, h)?;
        let off = u64_at(b, add(h, 8)?)? as usize;
        let vaddr = u64_at(b, add(h, 16)?)?;
        let filesz = u64_at(b, add(h, 32)?)? as usize;
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic_seg = Some((off, filesz)),
            3 => {
                let s = b
                    .get(off..off.checked_add(filesz).context("overflow")?)
                    .context("PT_INTERP beyond the file")?;
                let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
                out.interpreter = Some(String::from_utf8_lossy(&s[..end]).into_owned());
            }
            _ => {}
        }
    }
    let Some((doff, dsize)) = dynamic_seg else {
        return Ok(out);
    };
    let mut needed_offs = Vec::new();
    let mut rpath_offs = Vec::new();
    let mut runpath_offs = Vec::new();
    let mut soname_off = None;
    let (mut strtab_vaddr, mut verneed, mut verneednum, mut verdef, mut verdefnum) =
        (None, None, 0, None, 0);
    let mut i = 0;
    while i + 16 <= dsize {
        let at = doff.checked_add(i).context("overflow")?;
        let tag = u64_at(b, at)?;
        let val = u64_at(b, add(at, 8)?)?;
        match tag {
            0 => break,
            1 => needed_offs.push(val as usize),
            5 => strtab_vaddr = Some(val),
            14 => soname_off = Some(val as usize),
            15 => rpath_offs.push(val as usize),
            29 => runpath_offs.push(val as usize),
            0x6fff_fffc => verdef = Some(val),
            0x6fff_fffd => verdefnum = val as usize,
            0x6fff_fffe => verneed = Some(val),
            0x6fff_ffff => verneednum = val as usize,
            _ => {}
        }
        i += 16;
    }
    if needed_offs.is_empty()
        && rpath_offs.is_empty()
        && runpath_offs.is_empty()
        && soname_off.is_none()
        && verneed.is_none()
        && verdef.is_none()
    {
        return Ok(out);
    }
    let to_offset = |vaddr: u64| -> Result<usize> {
        loads
            .iter()
            .find(|(va, _, sz)| vaddr >= *va && vaddr - va < *sz as u64)
            .and_then(|(va, off, _)| usize::try_from(vaddr - va).ok()?.checked_add(*off))
            .context("a dynamic-section address is outside every loaded segment")
    };
    let strtab = to_offset(strtab_vaddr.context("DT_NEEDED without DT_STRTAB")?)?;
    let copied = std::cell::Cell::new(0usize);
    let string = |o: usize| -> Result<String> {
        let s = cstr(b, strtab.checked_add(o).context("overflow")?)?;
        copied.set(copied.get() + s.len() + 1);
        if copied.get() > MAX_NAMES_TOTAL {
            bail!("the dynamic section names more than {MAX_NAMES_TOTAL} bytes of strings");
        }
        Ok(s)
    };
    for o in needed_offs {
        out.needed.push(string(o)?);
    }
    if let Some(o) = soname_off {
        out.soname = Some(string(o)?);
    }
    // DT_RUNPATH, when present, makes the dynamic linker ignore DT_RPATH.
    let paths = if runpath_offs.is_empty() {
        rpath_offs
    } else {
        runpath_offs
    };
    for o in paths {
        for p in string(o)?.split(':') {
            if !p.is_empty() {
                out.runpath.push(p.to_string());
            }
        }
    }
    if let Some(v) = verneed {
        // Elf64_Verneed {vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32};
        // Elf64_Vernaux {vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32}.
        let mut at = to_offset(v)?;
        for _ in 0..verneednum.min(4096) {
            let cnt = u16_at(b, add(at, 2)?)? as usize;
            let file = string(u32_at(b, add(at, 4)?)? as usize)?;
            let mut aux = at
                .checked_add(u32_at(b, add(at, 8)?)? as usize)
                .context("overflow")?;
            for _ in 0..cnt.min(4096) {
                let name = string(u32_at(b, add(aux, 8)?)? as usize)?;
                // The file name is copied once more for each of its versions.
                copied.set(copied.get() + file.len());
                if copied.get() > MAX_NAMES_TOTAL {
                    bail!("`.gnu.version_r` names more than {MAX_NAMES_TOTAL} bytes of strings");
                }
                out.version_needs.push((file.clone(), name));
                let next = u32_at(b, add(aux, 12)?)? as usize;
                if next == 0 {
                    break;
                }
                aux = aux.checked_add(next).context("overflow")?;
            }
            let next = u32_at(b, add(at, 12)?)? as usize;
            if next == 0 {
                break;
            }
            at = at.checked_add(next).context("overflow")?;
        }
    }
    if let Some(v) = verdef {
        // Elf64_Verdef {vd_version u16, vd_flags u16, vd_ndx u16, vd_cnt u16, vd_hash u32,
        // vd_aux u32, vd_next u32}; Elf64_Verdaux {vda_name u32, vda_next u32}. The first
        // aux entry names the version; later ones its parents.
        let mut at = to_offset(v)?;
        for _ in 0..verdefnum.min(4096) {
            let cnt = u16_at(b, add(at, 6)?)? as usize;
            if cnt > 0 {
                let aux = at
                    .checked_add(u32_at(b, add(at, 12)?)? as usize)
                    .context("overflow")?;
                out.version_defs.push(string(u32_at(b, aux)? as usize)?);
            }
            let next = u32_at(b, add(at, 16)?)? as usize;
            if next == 0 {
                break;
            }
            at = at.checked_add(next).context("overflow")?;
        }
    }
    Ok(out)
}

/// The numeric parts of a symbol version such as `GLIBC_2.34` or `GLIBCXX_3.4.30` after
/// the given prefix and `_`: `[2, 34]`; None when the name has another prefix.
pub fn version_numbers(name: &str, prefix: &str) -> Option<Vec<u32>> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('_')?;
    rest.split('.').map(|p| p.parse().ok()).collect()
}

/// The directories the dynamic linker searches on Debian, in order: amd64's and arm64's
/// multiarch directories (a tree of one architecture's packages holds only its own).
pub const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

/// Resolve a path inside a tree, following symlinks (absolute or relative) up to 40 hops.
pub fn follow<'a>(tree: &'a Tree, path: &str) -> Option<(String, &'a crate::tree::Node)> {
    let mut p = crate::tree::normalize(path).ok()?;
    for _ in 0..40 {
        // Resolve symlinks in the parent directories too (e.g. /lib -> usr/lib on merged-/usr).
        let mut resolved = String::new();
        let mut parts = p.split('/').peekable();
        let mut redirected = None;
        while let Some(c) = parts.next() {
            let cur = if resolved.is_empty() {
                c.to_string()
            } else {
                format!("{resolved}/{c}")
            };
            match tree.get(&cur) {
                Some(n) => match &n.kind {
                    Kind::Symlink(t) => {
                        let base = resolved.clone();
                        let target = if t.starts_with('/') {
                            t.clone()
                        } else {
                            format!("{base}/{t}")
                        };
                        let rest: Vec<&str> = parts.collect();
                        let joined = if rest.is_empty() {
                            target
                        } else {
                            format!("{target}/{}", rest.join("/"))
                        };
                        redirected = Some(joined);
                        break;
                    }
                    _ => resolved = cur,
                },
                None => return None,
            }
            if parts.peek().is_none() {
                return tree.get(&resolved).map(|n| (resolved.clone(), n));
            }
        }
        match redirected {
            Some(r) => p = normalize_dots(&r)?,
            None => return None,
        }
    }
    None
}

/// Normalise a path that may contain `..` (clamped at the root, as the kernel does).
fn normalize_dots(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("/"))
    }
}

/// Find `soname` in the library directories of `tree` (plus `runpath`).
pub fn find_library(tree: &Tree, soname: &str, runpath: &[String]) -> Option<String> {
    runpath
        .iter()
        .map(|d| d.trim_start_matches('/').to_string())
        .chain(LIB_DIRS.iter().map(|d| d.to_string()))
        .find_map(|d| {
            follow(tree, &format!("{d}/{soname}"))
                .filter(|(_, n)| n.data().is_some())
                .map(|(p, _)| p)
        })
}

/// Walk the library closure of `root` (an ELF's dynamic facts) through `tree`: the sonames
/// that are not found there, and the files that were.
pub fn missing_libraries(
    tree: &Tree,
    root: &Dynamic,
) -> Result<(BTreeSet<String>, BTreeMap<String, String>)> {
    let mut missing = BTreeSet::new();
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut todo: Vec<(String, Vec<String>)> = root
        .needed
        .iter()
        .map(|n| (n.clone(), root.runpath.clone()))
        .collect();
    if let Some(interp) = &root.interpreter {
        if follow(tree, interp).is_none() {
            missing.insert(interp.clone());
        }
    }
    while let Some((soname, runpath)) = todo.pop() {
        if found.contains_key(&soname) || missing.contains(&soname) {
            continue;
        }
        match find_library(tree, &soname, &runpath) {
            None => {
                missing.insert(soname);
            }
            Some(path) => {
                let data = tree.get(&path).and_then(|n| n.data()).unwrap_or(&[]);
                let d =
                    dynamic(data).with_context(|| format!("cannot read /{path} (for {soname})"))?;
                for n in &d.needed {
                    todo.push((n.clone(), d.runpath.clone()));
                }
                found.insert(soname, path);
            }
        }
    }
    Ok((missing, found))
}

/// From a Contents index (lines `path<ws>section/package[,section/package...]`), the packages
/// that ship each file name in the library directories: file name -> packages.
pub fn contents_libraries(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((path, pkgs)) = line.rsplit_once(|c: char| c.is_whitespace()) else {
            continue;
        };
        let path = path.trim_end();
        let Some((dir, file)) = path.rsplit_once('/') else {
            continue;
        };
        if !LIB_DIRS.contains(&dir) || !file.contains(".so") {
            continue;
        }
        let set = out.entry(file.to_string()).or_default();
        for p in pkgs.split(',') {
            if let Some(name) = p.rsplit('/').next() {
                set.insert(name.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn reads_a_real_dynamic_binary_when_available() {
        // /bin/sh on the build host is a dynamic ELF; cross-check with readelf when installed.
        let Ok(b) = std::fs::read("/bin/sh") else {
            return;
        };
        let d = dynamic(&b).unwrap();
        assert!(
            d.interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{d:?}"
        );
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        if crate::testutil::require_tool("readelf") {
            let out = std::process::Command::new("readelf")
                .args(["-d", "/bin/sh"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let theirs: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("(NEEDED)"))
                .filter_map(|l| l.split('[').nth(1)?.split(']').next())
                .collect();
            assert_eq!(d.needed, theirs);
        }
    }

    #[test]
    fn hostile_elf_is_an_error_not_a_panic() {
        assert!(dynamic(b"not elf").is_err());
        let mut b = b"\x7fELF\x02\x01".to_vec();
        b.resize(64, 0);
        b[0x20] = 0xff; // phoff beyond the file
        b[0x36] = 56;
        b[0x38] = 1;
        assert!(dynamic(&b).is_err());
        if let Ok(real) = std::fs::read("/bin/sh") {
            for cut in [64usize, 200, 1000, real.len() / 2] {
                let _ = dynamic(&real[..cut.min(real.len())]);
            }
        }
    }

    /// An ELF64 object whose one PT_LOAD maps the whole file at address 0, with a
    /// PT_DYNAMIC of `dynamic` (tag, value) pairs and `strtab` at the end.
    fn crafted(dynamic: &[(u64, u64)], strtab: &[u8], extra: &[u8]) -> Vec<u8> {
        let dyn_off = 64 + 2 * 56;
        let dyn_len = (dynamic.len() + 1) * 16;
        let str_off = dyn_off + dyn_len;
        let total = str_off + strtab.len() + extra.len();
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x10] = 3; // ET_DYN
        b[0x12] = 62;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let ph = |ty: u32, off: usize, len: usize| {
            let mut h = vec![0u8; 56];
            h[0..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&(off as u64).to_le_bytes());
            h[16..24].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            h
        };
        b.extend(ph(1, 0, total));
        b.extend(ph(2, dyn_off, dyn_len));
        for (t, v) in dynamic {
            let v = if *t == 5 { str_off as u64 } else { *v };
            b.extend(t.to_le_bytes());
            b.extend(v.to_le_bytes());
        }
        b.extend([0u8; 16]);
        b.extend(strtab);
        b.extend(extra);
        b
    }

    #[test]
    fn one_long_name_named_many_times_is_bounded() {
        // 20000 DT_NEEDED entries all naming one 64 KiB string: 1.3 GB of copies before.
        let mut strtab = vec![0u8];
        strtab.extend(vec![b'a'; 4000]);
        strtab.push(0);
        strtab.extend(vec![b'b'; 64 << 10]);
        strtab.push(0);
        let long_off = 4002u64;
        let mut dynv = vec![(5u64, 0u64)];
        dynv.extend(std::iter::repeat_n((1u64, long_off), 20000));
        let t = std::time::Instant::now();
        let e = format!("{:#}", object(&crafted(&dynv, &strtab, &[])).unwrap_err());
        assert!(e.contains("longer than"), "{e}");
        // Names under the length cap, named many times: the total is bounded.
        let mut dynv = vec![(5u64, 0u64)];
        dynv.extend(std::iter::repeat_n((1u64, 1u64), 20000));
        let e = format!("{:#}", object(&crafted(&dynv, &strtab, &[])).unwrap_err());
        assert!(e.contains("bytes of strings"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
        // A few ordinary entries still read.
        let o = object(&crafted(&[(5, 0), (1, 1), (1, 1)], &strtab, &[])).unwrap();
        assert_eq!(o.needed.len(), 2);
    }

    #[test]
    fn version_needs_naming_one_file_many_times_are_bounded() {
        // One Elf64_Verneed with 4096 Vernaux entries, all pointing at the same one (each
        // `vna_next` = 0 would stop: here every aux is a separate 16-byte record naming
        // the same 4000-byte version), under 4096 Verneeds chained to the same record.
        let mut strtab = vec![0u8];
        strtab.extend(vec![b'a'; 4000]);
        strtab.push(0);
        let aux_count = 4096usize;
        // Verneed at the start of `extra`: vn_cnt = aux_count, vn_file = 1, vn_aux = 16,
        // vn_next = 0 (its loop count is DT_VERNEEDNUM's).
        let mut extra = Vec::new();
        extra.extend(1u16.to_le_bytes());
        extra.extend((aux_count as u16).to_le_bytes());
        extra.extend(1u32.to_le_bytes());
        extra.extend(16u32.to_le_bytes());
        extra.extend(0u32.to_le_bytes());
        for i in 0..aux_count {
            extra.extend(0u32.to_le_bytes());
            extra.extend(0u16.to_le_bytes());
            extra.extend(0u16.to_le_bytes());
            extra.extend(1u32.to_le_bytes()); // vna_name
            let next: u32 = if i + 1 == aux_count { 0 } else { 16 };
            extra.extend(next.to_le_bytes());
        }
        let base = crafted(&[(5, 0)], &strtab, &[]).len() + 2 * 16;
        let dynv = [(5u64, 0u64), (0x6fff_fffe, base as u64), (0x6fff_ffff, 1)];
        let b = crafted(&dynv, &strtab, &extra);
        let t = std::time::Instant::now();
        let e = format!("{:#}", object(&b).unwrap_err());
        assert!(e.contains("bytes of strings"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn follow_resolves_relative_absolute_and_parent_symlinks() {
        let mut t = Tree::new();
        t.insert(
            "usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            Node::file(b"z".to_vec(), 0o644),
        )
        .unwrap();
        t.insert(
            "usr/lib/x86_64-linux-gnu/libz.so.1",
            Node::symlink("libz.so.1.2.13"),
        )
        .unwrap();
        t.insert("lib", Node::symlink("usr/lib")).unwrap();
        t.insert(
            "lib64/ld.so",
            Node::symlink("/lib/x86_64-linux-gnu/libz.so.1"),
        )
        .unwrap();
        assert_eq!(
            follow(&t, "lib/x86_64-linux-gnu/libz.so.1").unwrap().0,
            "usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
        );
        assert_eq!(
            follow(&t, "/lib64/ld.so").unwrap().0,
            "usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
        );
        assert!(follow(&t, "lib/nope").is_none());
        assert_eq!(
            find_library(&t, "libz.so.1", &[]).unwrap(),
            "usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
        );
    }

    #[test]
    fn symlink_loops_end() {
        let mut t = Tree::new();
        t.insert("a", Node::symlink("b")).unwrap();
        t.insert("b", Node::symlink("a")).unwrap();
        assert!(follow(&t, "a").is_none());
    }

    #[test]
    fn contents_index_maps_libraries_to_packages() {
        let text = "usr/lib/x86_64-linux-gnu/libz.so.1                          libs/zlib1g\n\
                    usr/lib/x86_64-linux-gnu/libcrypto.so.3                     libs/libssl3,libs/libssl3-dbg\n\
                    usr/bin/zcat                                                utils/gzip\n\
                    lib64/ld-linux-x86-64.so.2                                  libs/libc6\n";
        let m = contents_libraries(text);
        assert_eq!(m["libz.so.1"].iter().collect::<Vec<_>>(), ["zlib1g"]);
        assert_eq!(m["libcrypto.so.3"].len(), 2);
        assert!(m.contains_key("ld-linux-x86-64.so.2"));
        assert!(!m.contains_key("zcat"));
    }
}
