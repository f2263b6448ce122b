//! Binary packages (`.deb`), read in memory into a [`Tree`].
//!
//! A .deb (deb(5)) is an `ar` archive: the magic `!<arch>\n`, then members,
//! each a 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10
//! decimal, terminator `` `\n ``) followed by `size` bytes and one padding
//! byte when `size` is odd. The members are, in order:
//! - `debian-binary`: the format version, `2.0\n`;
//! - `control.tar[.gz|.xz|.zst]`: the control file and maintainer scripts;
//! - `data.tar[.gz|.xz|.zst]`: the files to install, paths relative to `/`
//!   (usually written `./usr/...`).
//!
//! Members whose name starts with `_` are ignored, as are members after the
//! data member. Hostile content is refused with an error naming the member
//! and the path: `..` components, symlinks whose target climbs above the root
//! (absolute targets are kept: they resolve inside the image at run time),
//! hard links to missing or non-regular files, device nodes and FIFOs, paths
//! below a symlink or file, duplicate paths, and more decompressed data than
//! the limits allow.

use super::packages::parse_deb822;
use crate::tree::{Kind, Node, Tree};
use anyhow::{anyhow, bail, Context, Result};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::rc::Rc;

/// A .deb read into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deb {
    /// The fields of the `control` file.
    pub control: BTreeMap<String, String>,
    /// Every regular file of the control archive (`control`, `md5sums`,
    /// `conffiles`, maintainer scripts, ...), by name.
    pub control_files: BTreeMap<String, Vec<u8>>,
    /// The data archive as a tree (hard links resolved into copies).
    pub data: Tree,
}

/// Caps against decompression bombs and absurd archives.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum decompressed size of the data tar stream, and of the sum of
    /// the sizes of its files (hard-link copies included).
    pub max_data_bytes: u64,
    /// Maximum decompressed size of the control tar stream.
    pub max_control_bytes: u64,
    /// Maximum number of entries in the data archive.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_data_bytes: 2 << 30,
            max_control_bytes: 64 << 20,
            max_entries: 1_000_000,
        }
    }
}

/// Read a .deb with the default [`Limits`] (2 GiB of data).
pub fn read_deb(bytes: &[u8]) -> Result<Deb> {
    read_deb_with_limits(bytes, &Limits::default())
}

struct ArMember<'a> {
    name: String,
    data: &'a [u8],
}

fn parse_ar(bytes: &[u8]) -> Result<Vec<ArMember<'_>>> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !bytes.starts_with(MAGIC) {
        bail!("not a .deb: bad ar magic (expected \"!<arch>\\n\")");
    }
    let mut pos = MAGIC.len();
    let mut out = Vec::new();
    while pos < bytes.len() {
        let Some(hdr) = bytes.get(pos..pos + 60) else {
            bail!(
                "truncated .deb: ar member header at offset {pos} has {} of 60 bytes",
                bytes.len() - pos
            );
        };
        if &hdr[58..60] != b"`\n" {
            bail!("corrupt .deb: bad ar member header at offset {pos}");
        }
        let name = std::str::from_utf8(&hdr[..16])
            .map_err(|_| anyhow!("corrupt .deb: ar member name at offset {pos} is not UTF-8"))?
            .trim_end_matches(' ')
            .trim_end_matches('/')
            .to_string();
        let size_s = std::str::from_utf8(&hdr[48..58])
            .unwrap_or("")
            .trim_end_matches(' ');
        let size: usize = size_s
            .parse()
            .map_err(|_| anyhow!("corrupt .deb: ar member {name:?} has a bad size {size_s:?}"))?;
        let start = pos + 60;
        let avail = bytes.len() - start;
        if size > avail {
            bail!("truncated .deb: ar member {name:?} says {size} bytes but only {avail} remain");
        }
        out.push(ArMember {
            name,
            data: &bytes[start..start + size],
        });
        pos = start + size + (size & 1);
    }
    Ok(out)
}

/// A reader that fails once more than `left` bytes come out of `inner`.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? > 0 {
                self.exceeded.set(true);
                return Err(std::io::Error::other("decompressed size limit exceeded"));
            }
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A decompressing, size-capped reader over an ar member named `<base>.tar<ext>`.
fn open_tar<'a>(
    member: &ArMember<'a>,
    base: &str,
    cap: u64,
    exceeded: Rc<Cell<bool>>,
) -> Result<Box<dyn Read + 'a>> {
    let ext = member
        .name
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix(".tar"))
        .unwrap_or("?");
    let data = member.data;
    let inner: Box<dyn Read + 'a> = match ext {
        "" => Box::new(data),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(data)),
        ".xz" => {
            // Bound the decoder's memory (dictionary) use as well.
            let stream = liblzma::stream::Stream::new_stream_decoder(
                256 << 20,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| anyhow!("{}: cannot start xz decoder: {e}", member.name))?;
            Box::new(liblzma::read::XzDecoder::new_stream(data, stream))
        }
        ".zst" => Box::new(
            zstd::stream::read::Decoder::new(data)
                .with_context(|| format!("{}: cannot start zstd decoder", member.name))?,
        ),
        _ => bail!(
            "ar member {:?}: unsupported compression (expected .tar, .tar.gz, .tar.xz or .tar.zst)",
            member.name
        ),
    };
    Ok(Box::new(Capped {
        inner,
        left: cap,
        exceeded,
    }))
}

fn tar_error(
    member: &str,
    what: &str,
    e: std::io::Error,
    exceeded: &Cell<bool>,
    cap: u64,
) -> anyhow::Error {
    if exceeded.get() {
        anyhow!(
            "{member}: decompressed size exceeds the limit of {cap} bytes (decompression bomb?)"
        )
    } else {
        anyhow!("{member}: {what}: {e}")
    }
}

/// Normalise a path inside a tar: strip `./` and `/`, drop `.` and empty
/// components; `None` for the root itself; `..` or a newline is an error.
fn entry_path(p: &str) -> Result<Option<String>> {
    if p.contains('\n') {
        bail!("path contains a newline");
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("path has a \"..\" component"),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Refuse a symlink target that climbs above the root, computed from the
/// link's directory (or from the root for an absolute target).
fn check_symlink(path: &str, target: &str) -> Result<()> {
    if target.is_empty() {
        bail!("empty symlink target");
    }
    if target.contains('\n') {
        bail!("symlink target contains a newline");
    }
    let mut depth: i64 = if target.starts_with('/') {
        0
    } else {
        path.matches('/').count() as i64
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    bail!("symlink target {target:?} escapes the root");
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn utf8(bytes: std::borrow::Cow<'_, [u8]>, what: &str) -> Result<String> {
    String::from_utf8(bytes.into_owned()).map_err(|e| {
        anyhow!(
            "{what} {:?} is not UTF-8",
            String::from_utf8_lossy(e.as_bytes())
        )
    })
}

fn read_control(member: &ArMember<'_>, limits: &Limits) -> Result<BTreeMap<String, Vec<u8>>> {
    let exceeded = Rc::new(Cell::new(false));
    let cap = limits.max_control_bytes;
    let reader = open_tar(member, "control", cap, exceeded.clone())?;
    let name = &member.name;
    let mut ar = tar::Archive::new(reader);
    let mut files = BTreeMap::new();
    let entries = ar
        .entries()
        .map_err(|e| tar_error(name, "reading tar", e, &exceeded, cap))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(name, "reading tar", e, &exceeded, cap))?;
        let raw = utf8(entry.path_bytes(), "path").with_context(|| name.to_string())?;
        let Some(path) = entry_path(&raw).with_context(|| format!("{name}: {raw:?}"))? else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| tar_error(name, &format!("reading {path}"), e, &exceeded, cap))?;
        if files.insert(path.clone(), buf).is_some() {
            bail!("{name}: {path} appears twice");
        }
    }
    Ok(files)
}

fn read_data(member: &ArMember<'_>, limits: &Limits) -> Result<Tree> {
    let exceeded = Rc::new(Cell::new(false));
    let cap = limits.max_data_bytes;
    let reader = open_tar(member, "data", cap, exceeded.clone())?;
    let name = member.name.as_str();
    let mut ar = tar::Archive::new(reader);
    let mut tree = Tree::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut total: u64 = 0;
    let entries = ar
        .entries()
        .map_err(|e| tar_error(name, "reading tar", e, &exceeded, cap))?;
    for (count, entry) in entries.enumerate() {
        if count >= limits.max_entries {
            bail!("{name}: more than {} entries", limits.max_entries);
        }
        let mut entry = entry.map_err(|e| tar_error(name, "reading tar", e, &exceeded, cap))?;
        let raw = utf8(entry.path_bytes(), "path").with_context(|| name.to_string())?;
        let ctx = |what: &str| format!("{name}: {raw}: {what}");
        let et = entry.header().entry_type();
        if et.is_pax_global_extensions() {
            continue;
        }
        let Some(path) = entry_path(&raw).map_err(|e| anyhow!("{}", ctx(&e.to_string())))? else {
            // The root directory itself: implicit in a Tree.
            continue;
        };
        let hdr = entry.header();
        let mode = hdr
            .mode()
            .map_err(|e| anyhow!("{}", ctx(&format!("bad mode: {e}"))))?
            & 0o7777;
        let uid = hdr
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| anyhow!("{}", ctx("bad uid")))?;
        let gid = hdr
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| anyhow!("{}", ctx("bad gid")))?;
        let mtime = hdr
            .mtime()
            .map_err(|e| anyhow!("{}", ctx(&format!("bad mtime: {e}"))))?;
        let mut node = if et.is_dir() {
            Node::dir(mode)
        } else if et.is_file() || et.is_contiguous() {
            let size = entry.size();
            total = total.saturating_add(size);
            if total > cap {
                bail!(
                    "{}",
                    ctx(&format!(
                        "files add up to more than the limit of {cap} bytes (decompression bomb?)"
                    ))
                );
            }
            let mut buf = Vec::with_capacity(usize::try_from(size.min(16 << 20)).unwrap_or(0));
            entry
                .read_to_end(&mut buf)
                .map_err(|e| tar_error(name, &format!("reading {raw}"), e, &exceeded, cap))?;
            if buf.len() as u64 != size {
                bail!(
                    "{}",
                    ctx(&format!("truncated: {} of {size} bytes", buf.len()))
                );
            }
            Node::file(buf, mode)
        } else if et.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("{}", ctx("symlink without a target")))?;
            let target = utf8(target, "symlink target").with_context(|| ctx("bad symlink"))?;
            check_symlink(&path, &target).with_context(|| ctx("refused symlink"))?;
            Node::symlink(target)
        } else if et.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("{}", ctx("hard link without a target")))?;
            let target = utf8(target, "hard link target").with_context(|| ctx("bad hard link"))?;
            let tpath = entry_path(&target)
                .with_context(|| ctx(&format!("hard link to {target:?}")))?
                .ok_or_else(|| anyhow!("{}", ctx("hard link to the root directory")))?;
            match tree.get(&tpath) {
                Some(
                    t @ Node {
                        kind: Kind::File(d),
                        ..
                    },
                ) => {
                    total = total.saturating_add(d.len() as u64);
                    if total > cap {
                        bail!(
                            "{}",
                            ctx(&format!(
                                "files add up to more than the limit of {cap} bytes"
                            ))
                        );
                    }
                    // A hard link shares its target's inode, so its metadata too.
                    t.clone()
                }
                Some(_) => bail!(
                    "{}",
                    ctx(&format!(
                        "hard link to {target:?}, which is not a regular file"
                    ))
                ),
                None => bail!(
                    "{}",
                    ctx(&format!(
                        "hard link to {target:?}, which is not earlier in the archive"
                    ))
                ),
            }
        } else if et.is_character_special() || et.is_block_special() || et.is_fifo() {
            bail!(
                "{}",
                ctx("device nodes and FIFOs are not allowed in packages")
            );
        } else {
            bail!("{}", ctx(&format!("unsupported tar entry type {et:?}")));
        };
        if !et.is_hard_link() {
            node.uid = uid;
            node.gid = gid;
            node.mtime = mtime;
        }
        let is_dir = node.kind == Kind::Dir;
        if !seen.insert(path.clone()) {
            let again_dir = is_dir && tree.get(&path).is_some_and(|n| n.kind == Kind::Dir);
            if !again_dir {
                bail!("{}", ctx("path appears twice in the archive"));
            }
        }
        tree.insert(&path, node).map_err(|e| {
            anyhow!(
                "{}",
                ctx(&format!(
                    "{e} (a path below a symlink or a file is refused)"
                ))
            )
        })?;
    }
    Ok(tree)
}

/// Read a .deb with explicit [`Limits`].
pub fn read_deb_with_limits(bytes: &[u8], limits: &Limits) -> Result<Deb> {
    let members = parse_ar(bytes)?;
    let mut it = members.iter().filter(|m| !m.name.starts_with('_'));
    let Some(first) = it.next() else {
        bail!("not a .deb: the ar archive is empty");
    };
    if first.name != "debian-binary" {
        bail!(
            "not a .deb: first ar member is {:?}, expected \"debian-binary\"",
            first.name
        );
    }
    let ver = String::from_utf8_lossy(first.data);
    if !ver.starts_with("2.") {
        bail!(
            "unsupported .deb format version {:?} (expected 2.x)",
            ver.trim()
        );
    }
    let mut control_files = None;
    let mut data = None;
    for m in it {
        if m.name.starts_with("control.tar") {
            if control_files.is_some() {
                bail!("corrupt .deb: a second control member {:?}", m.name);
            }
            control_files = Some(read_control(m, limits)?);
        } else if m.name.starts_with("data.tar") {
            if control_files.is_none() {
                bail!("corrupt .deb: {:?} comes before the control member", m.name);
            }
            data = Some(read_data(m, limits)?);
            break;
        } else {
            bail!("corrupt .deb: unexpected ar member {:?}", m.name);
        }
    }
    let Some(control_files) = control_files else {
        bail!("corrupt .deb: no control.tar member");
    };
    let Some(data) = data else {
        bail!("corrupt .deb: no data.tar member");
    };
    let control_text = control_files
        .get("control")
        .ok_or_else(|| anyhow!("corrupt .deb: the control archive has no control file"))?;
    let control_text = std::str::from_utf8(control_text).context("control file is not UTF-8")?;
    let mut paras = parse_deb822(control_text).context("control file")?;
    if paras.len() != 1 {
        bail!("control file has {} paragraphs, expected 1", paras.len());
    }
    Ok(Deb {
        control: paras.remove(0),
        control_files,
        data,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// One raw tar entry for test archives (written without the tar crate's
    /// path checks, so hostile names can be made).
    pub(crate) struct E<'a> {
        pub path: &'a str,
        /// tar typeflag: b'0' file, b'1' hard link, b'2' symlink, b'3' char
        /// device, b'5' directory, b'6' FIFO.
        pub typ: u8,
        pub mode: u32,
        pub data: &'a [u8],
        pub link: &'a str,
    }

    pub(crate) fn file<'a>(path: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            path,
            typ: b'0',
            mode: 0o644,
            data,
            link: "",
        }
    }
    pub(crate) fn dir(path: &str) -> E<'_> {
        E {
            path,
            typ: b'5',
            mode: 0o755,
            data: b"",
            link: "",
        }
    }
    pub(crate) fn symlink<'a>(path: &'a str, to: &'a str) -> E<'a> {
        E {
            path,
            typ: b'2',
            mode: 0o777,
            data: b"",
            link: to,
        }
    }
    pub(crate) fn hardlink<'a>(path: &'a str, to: &'a str) -> E<'a> {
        E {
            path,
            typ: b'1',
            mode: 0o644,
            data: b"",
            link: to,
        }
    }

    pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_ustar();
            {
                let u = h.as_ustar_mut().unwrap();
                u.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
                u.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
                u.typeflag = [e.typ];
            }
            h.set_mode(e.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(e.data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    pub(crate) fn compress(ext: &str, data: &[u8]) -> Vec<u8> {
        match ext {
            "" => data.to_vec(),
            ".gz" => {
                let mut w =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            ".xz" => {
                let mut w = liblzma::write::XzEncoder::new(Vec::new(), 6);
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            ".zst" => zstd::encode_all(data, 3).unwrap(),
            _ => panic!("{ext}"),
        }
    }

    pub(crate) fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            let hdr = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                data.len()
            );
            assert_eq!(hdr.len(), 60);
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    const CONTROL: &[u8] = b"Package: hello\nVersion: 1.0-1\nArchitecture: amd64\n\
        Maintainer: Someone <someone@example.invalid>\nDescription: greeting\n more text\n";

    pub(crate) fn deb_of(ext: &str, data_entries: &[E]) -> Vec<u8> {
        let control = tar_of(&[
            dir("./"),
            file("./control", CONTROL),
            file("./md5sums", b"x  usr/bin/hello\n"),
        ]);
        let data = tar_of(data_entries);
        ar_of(&[
            ("debian-binary", b"2.0\n"),
            (&format!("control.tar{ext}"), &compress(ext, &control)),
            (&format!("data.tar{ext}"), &compress(ext, &data)),
        ])
    }

    fn good_entries() -> Vec<E<'static>> {
        vec![
            dir("./"),
            dir("./usr/"),
            dir("./usr/bin/"),
            E {
                path: "./usr/bin/hello",
                typ: b'0',
                mode: 0o4755,
                data: b"#!/bin/sh\necho hi\n",
                link: "",
            },
            hardlink("./usr/bin/hello-again", "./usr/bin/hello"),
            symlink("./usr/bin/hi", "hello"),
            symlink("./usr/bin/alt", "/etc/alternatives/alt"),
            symlink("./usr/bin/up", "../../etc/x"),
            file("./etc/hello.conf", b"conf\n"),
        ]
    }

    #[test]
    fn reads_good_debs_in_every_compression() {
        for ext in ["", ".gz", ".xz", ".zst"] {
            let deb = read_deb(&deb_of(ext, &good_entries())).unwrap();
            assert_eq!(deb.control["Package"], "hello");
            assert_eq!(deb.control["Description"], "greeting\n more text");
            assert!(deb.control_files.contains_key("md5sums"));
            let t = &deb.data;
            let hello = t.get("usr/bin/hello").unwrap();
            assert_eq!(hello.data().unwrap(), b"#!/bin/sh\necho hi\n");
            assert_eq!(hello.mode, 0o4755);
            assert_eq!(hello.mtime, 1_700_000_000);
            assert_eq!(t.get("usr/bin/hello-again"), Some(hello));
            assert_eq!(
                t.get("usr/bin/hi").unwrap().kind,
                Kind::Symlink("hello".into())
            );
            assert_eq!(
                t.get("usr/bin/alt").unwrap().kind,
                Kind::Symlink("/etc/alternatives/alt".into())
            );
            assert_eq!(t.get("usr/bin").unwrap().kind, Kind::Dir);
            // etc was not declared: created as a parent.
            assert_eq!(t.get("etc").unwrap().kind, Kind::Dir);
            let paths: Vec<&str> = t.iter().map(|(p, _)| p).collect();
            assert_eq!(
                paths,
                [
                    "etc",
                    "etc/hello.conf",
                    "usr",
                    "usr/bin",
                    "usr/bin/alt",
                    "usr/bin/hello",
                    "usr/bin/hello-again",
                    "usr/bin/hi",
                    "usr/bin/up"
                ]
            );
        }
    }

    fn err_of(entries: &[E]) -> String {
        format!("{:#}", read_deb(&deb_of(".gz", entries)).unwrap_err())
    }

    #[test]
    fn refuses_hostile_data() {
        let cases: Vec<(Vec<E>, &str)> = vec![
            (vec![file("./usr/../../etc/passwd", b"x")], "\"..\""),
            (
                vec![symlink("./usr/lib/evil", "../../../etc/shadow")],
                "escapes the root",
            ),
            (
                vec![symlink("./evil", "/../../etc/shadow")],
                "escapes the root",
            ),
            (
                vec![hardlink("./usr/bin/x", "./usr/bin/missing")],
                "not earlier in the archive",
            ),
            (
                vec![dir("./d"), hardlink("./usr/bin/x", "./d")],
                "not a regular file",
            ),
            (
                vec![E {
                    path: "./dev/null",
                    typ: b'3',
                    mode: 0o666,
                    data: b"",
                    link: "",
                }],
                "device nodes",
            ),
            (
                vec![E {
                    path: "./run/fifo",
                    typ: b'6',
                    mode: 0o644,
                    data: b"",
                    link: "",
                }],
                "FIFOs",
            ),
            (
                vec![symlink("./lib", "usr/lib"), file("./lib/x.so", b"x")],
                "below a symlink",
            ),
            (vec![file("./a", b"1"), file("./a", b"2")], "appears twice"),
            (vec![file("./a\nb", b"1")], "newline"),
        ];
        for (entries, want) in cases {
            let e = err_of(&entries);
            assert!(e.contains(want), "expected {want:?} in: {e}");
            assert!(
                e.contains("data.tar.gz"),
                "error should name the member: {e}"
            );
        }
        // A directory declared twice is fine.
        read_deb(&deb_of(
            ".gz",
            &[dir("./a"), file("./a/x", b""), dir("./a/")],
        ))
        .unwrap();
    }

    #[test]
    fn refuses_bad_containers() {
        let good = deb_of(".xz", &good_entries());
        assert!(read_deb(b"!<arch\n")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let e = read_deb(&good[..good.len() - 10]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = read_deb(&good[..8 + 30]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Corrupt compressed data (flip bytes in the middle of data.tar.xz).
        let mut bad = good.clone();
        let n = bad.len();
        for b in &mut bad[n - 60..n - 40] {
            *b ^= 0x55;
        }
        assert!(read_deb(&bad).is_err());
        // Wrong member order and unknown members.
        let control = compress(".gz", &tar_of(&[file("./control", CONTROL)]));
        let data = compress(".gz", &tar_of(&[file("./x", b"x")]));
        let swapped = ar_of(&[
            ("debian-binary", b"2.0\n"),
            ("data.tar.gz", &data),
            ("control.tar.gz", &control),
        ]);
        assert!(read_deb(&swapped).is_err());
        let nobin = ar_of(&[("control.tar.gz", &control), ("data.tar.gz", &data)]);
        assert!(read_deb(&nobin).is_err());
        let bz2 = ar_of(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control),
            ("data.tar.bz2", &data),
        ]);
        assert!(read_deb(&bz2)
            .unwrap_err()
            .to_string()
            .contains("unsupported compression"));
        let ok = ar_of(&[
            ("debian-binary", b"2.0\n"),
            ("_gpgorigin", b"sig"),
            ("control.tar.gz", &control),
            ("data.tar.gz", &data),
        ]);
        assert_eq!(
            read_deb(&ok)
                .unwrap()
                .data
                .get("x")
                .unwrap()
                .data()
                .unwrap(),
            b"x"
        );
        let nocontrol = ar_of(&[
            ("debian-binary", b"2.0\n"),
            (
                "control.tar.gz",
                &compress(".gz", &tar_of(&[file("./md5sums", b"")])),
            ),
            ("data.tar.gz", &data),
        ]);
        assert!(read_deb(&nocontrol)
            .unwrap_err()
            .to_string()
            .contains("no control file"));
    }

    #[test]
    fn refuses_decompression_bombs() {
        let big = vec![0u8; 1 << 20];
        let deb = deb_of(".xz", &[file("./zeros", &big)]);
        assert!(
            deb.len() < 20_000,
            "test input should be small: {}",
            deb.len()
        );
        let limits = Limits {
            max_data_bytes: 512 << 10,
            ..Limits::default()
        };
        let e = format!("{:#}", read_deb_with_limits(&deb, &limits).unwrap_err());
        assert!(e.contains("limit") && e.contains("data.tar.xz"), "{e}");
        // Hard-link copies count too.
        let small = vec![1u8; 100 << 10];
        let deb = deb_of(
            ".gz",
            &[
                file("./a", &small),
                hardlink("./b", "./a"),
                hardlink("./c", "./a"),
                hardlink("./d", "./a"),
                hardlink("./e", "./a"),
                hardlink("./f", "./a"),
            ],
        );
        let e = format!("{:#}", read_deb_with_limits(&deb, &limits).unwrap_err());
        assert!(e.contains("limit"), "{e}");
        read_deb(&deb).unwrap();
    }

    /// Build real packages with dpkg-deb and read them back.
    #[test]
    fn cross_check_with_dpkg_deb() {
        if !crate::testutil::require_tool("dpkg-deb") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pkg");
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc/hello")).unwrap();
        std::fs::write(root.join("DEBIAN/control"), CONTROL).unwrap();
        std::fs::write(root.join("usr/bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(
            root.join("usr/share/doc/hello/long-name-".to_string() + &"x".repeat(120)),
            b"long",
        )
        .unwrap();
        std::os::unix::fs::symlink("hello", root.join("usr/bin/hi")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/alt", root.join("usr/bin/alt")).unwrap();
        std::fs::hard_link(root.join("usr/bin/hello"), root.join("usr/bin/hello2")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("usr/bin/hello"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for z in ["gzip", "xz", "zstd", "none"] {
            let out = tmp.path().join(format!("hello-{z}.deb"));
            let st = std::process::Command::new("dpkg-deb")
                .args(["--root-owner-group", &format!("-Z{z}"), "--build"])
                .arg(&root)
                .arg(&out)
                .output()
                .unwrap();
            let made = crate::testutil::require(
                st.status.success(),
                &format!(
                    "dpkg-deb -Z{z} failed: {}",
                    String::from_utf8_lossy(&st.stderr).trim()
                ),
            );
            if !made {
                continue;
            }
            let deb = read_deb(&std::fs::read(&out).unwrap()).unwrap();
            assert_eq!(deb.control["Package"], "hello");
            let t = &deb.data;
            let hello = t.get("usr/bin/hello").unwrap();
            assert_eq!(hello.data().unwrap(), b"#!/bin/sh\necho hi\n");
            assert_eq!(hello.mode, 0o755);
            assert_eq!((hello.uid, hello.gid), (0, 0));
            assert_eq!(t.get("usr/bin/hello2").unwrap().data(), hello.data());
            assert_eq!(
                t.get("usr/bin/hi").unwrap().kind,
                Kind::Symlink("hello".into())
            );
            assert_eq!(
                t.get("usr/bin/alt").unwrap().kind,
                Kind::Symlink("/etc/alternatives/alt".into())
            );
            let long = format!("usr/share/doc/hello/long-name-{}", "x".repeat(120));
            assert_eq!(t.get(&long).unwrap().data().unwrap(), b"long");
            // Same path list as dpkg-deb's own listing.
            let list = std::process::Command::new("dpkg-deb")
                .arg("-c")
                .arg(&out)
                .output()
                .unwrap();
            let mut theirs: Vec<String> = String::from_utf8(list.stdout)
                .unwrap()
                .lines()
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(5)
                        .map(|p| p.trim_start_matches("./").trim_end_matches('/').to_string())
                })
                .filter(|p| !p.is_empty())
                .collect();
            theirs.sort();
            let ours: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
            assert_eq!(ours, theirs, "-Z{z}");
        }
    }

    /// Read every .deb in FUSE_TEST_DEB_DIR (manual check against real packages).
    #[test]
    #[ignore = "manual check of real packages: set FUSE_TEST_DEB_DIR and run with --ignored"]
    fn real_debs_from_env() {
        let dir = std::env::var("FUSE_TEST_DEB_DIR")
            .expect("FUSE_TEST_DEB_DIR names a directory of .deb files");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "deb") {
                let deb = read_deb(&std::fs::read(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                eprintln!(
                    "{}: {} {} entries, {} bytes",
                    p.display(),
                    deb.control["Package"],
                    deb.data.len(),
                    deb.data.iter().map(|(_, n)| n.size()).sum::<u64>()
                );
                compare_with_dpkg_deb_extract(&p, &deb.data);
                n += 1;
            }
        }
        assert!(n > 0, "no .deb in {dir}");
    }

    /// Extract `deb` with `dpkg-deb -x` and check every path, kind, mode,
    /// content and symlink target against `tree`.
    fn compare_with_dpkg_deb_extract(deb: &std::path::Path, tree: &Tree) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(tmp.path())
            .status()
            .is_ok_and(|s| s.success());
        if !crate::testutil::require(ok, &format!("dpkg-deb -x {} failed", deb.display())) {
            return;
        }
        for (path, node) in tree.iter() {
            let fs_path = tmp.path().join(path);
            let md = std::fs::symlink_metadata(&fs_path).unwrap_or_else(|e| panic!("{path}: {e}"));
            match &node.kind {
                Kind::Dir => assert!(md.is_dir(), "{path}"),
                Kind::File(d) => {
                    assert!(md.is_file(), "{path}");
                    assert_eq!(&std::fs::read(&fs_path).unwrap(), d.as_ref(), "{path}");
                    assert_eq!(md.permissions().mode() & 0o7777, node.mode, "{path}");
                }
                Kind::Symlink(t) => {
                    assert_eq!(
                        std::fs::read_link(&fs_path).unwrap().to_str(),
                        Some(t.as_str())
                    );
                }
                Kind::CharDev { .. } => panic!("{path}: device node"),
            }
        }
        let mut count = 0;
        let mut stack = vec![tmp.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                count += 1;
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        assert_eq!(count, tree.len(), "{}: entry count", deb.display());
    }
}
