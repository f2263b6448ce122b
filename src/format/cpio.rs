//! cpio "newc" (magic `070701`) archives: the format of a Linux initramfs.
//!
//! Each member is a 110-byte ASCII header, the NUL-terminated path name, padding
//! so that header + name end on a 4-byte boundary, then the data (file contents
//! or symlink target), padded to 4 bytes. The archive ends with a member named
//! `TRAILER!!!`. Header fields, in order, each 8 upper-case hex digits after the
//! 6-byte magic:
//!
//! | field       | meaning                                                  |
//! |-------------|----------------------------------------------------------|
//! | `ino`       | inode number; members with equal `ino` are hard links    |
//! | `mode`      | full `st_mode`: file type bits and permission bits       |
//! | `uid`/`gid` | owner                                                    |
//! | `nlink`     | link count                                               |
//! | `mtime`     | modification time, seconds since the epoch (32 bits)     |
//! | `filesize`  | length of the data that follows the name                 |
//! | `devmajor`/`devminor`   | device holding the file (we write 0)         |
//! | `rdevmajor`/`rdevminor` | device number of a character/block device    |
//! | `namesize`  | length of the name including its terminating NUL         |
//! | `check`     | 0 for `070701`; byte sum of the data for `070702`         |
//!
//! The writer is deterministic: members in [`Tree`] order (parents before
//! children), inode numbers 1, 2, 3, ... in that order, device numbers 0.
//! The implicit root directory is not stored (the kernel's rootfs exists already).

use crate::tree::{normalize, Kind, Node, Tree};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Magic of the "new ASCII" format without checksums (what we write).
const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of the same format with a data checksum in `check` (read only).
const MAGIC_CRC: &[u8; 6] = b"070702";
/// Header length: 6 bytes of magic plus 13 fields of 8 hex digits.
const HEADER_LEN: usize = 6 + 13 * 8;
/// Name of the member that ends an archive.
const TRAILER: &str = "TRAILER!!!";

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The 13 numeric header fields of one member.
#[derive(Default, Clone, Copy, Debug)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    devmajor: u32,
    devminor: u32,
    rdevmajor: u32,
    rdevminor: u32,
    namesize: u32,
    check: u32,
}

impl Header {
    fn fields(&self) -> [u32; 13] {
        [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ]
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Append one member (header, name, padding, data, padding) to `out`.
fn push_member(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    debug_assert_eq!(out.len() % 4, 0);
    out.extend_from_slice(MAGIC_NEWC);
    for f in h.fields() {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Serialise `tree` as an uncompressed newc archive (the caller compresses it).
///
/// Errors if a value does not fit the format's 32-bit fields (mtime after
/// 2106, files of 4 GiB or more) or a name contains a NUL byte.
pub fn write(tree: &Tree) -> Result<Vec<u8>> {
    // Link count of a directory: 2 ("." and its entry in the parent) plus one
    // ".." per subdirectory.
    let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
    for (path, node) in tree.iter() {
        if node.kind == Kind::Dir {
            if let Some((parent, _)) = path.rsplit_once('/') {
                *subdirs.entry(parent).or_insert(0) += 1;
            }
        }
    }

    let mut out = Vec::new();
    let mut ino: u32 = 0;
    for (path, node) in tree.iter() {
        if path.as_bytes().contains(&0) {
            bail!("cpio: path {path:?} contains a NUL byte");
        }
        ino = ino
            .checked_add(1)
            .context("cpio: more than 2^32-1 entries")?;
        let mtime = u32::try_from(node.mtime).with_context(|| {
            format!(
                "cpio: mtime {} of {path:?} does not fit the format's 32-bit field",
                node.mtime
            )
        })?;
        let (data, nlink, rdev): (&[u8], u32, (u32, u32)) = match &node.kind {
            Kind::Dir => (&[], 2 + subdirs.get(path).copied().unwrap_or(0), (0, 0)),
            Kind::File(d) => (d.as_slice(), 1, (0, 0)),
            Kind::Symlink(t) => (t.as_bytes(), 1, (0, 0)),
            Kind::CharDev { major, minor } => (&[], 1, (*major, *minor)),
        };
        let filesize = u32::try_from(data.len()).with_context(|| {
            format!(
                "cpio: {path:?} is {} bytes, more than the format's 32-bit size field allows",
                data.len()
            )
        })?;
        let h = Header {
            ino,
            mode: node.st_mode(),
            uid: node.uid,
            gid: node.gid,
            nlink,
            mtime,
            filesize,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
            namesize: u32::try_from(path.len() + 1).context("cpio: path too long")?,
            ..Header::default()
        };
        push_member(&mut out, &h, path, data);
    }
    let trailer = Header {
        nlink: 1,
        namesize: (TRAILER.len() + 1) as u32,
        ..Header::default()
    };
    push_member(&mut out, &trailer, TRAILER, &[]);
    Ok(out)
}

fn round4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

fn parse_hex(field: &[u8], what: &str, offset: usize) -> Result<u32> {
    let s = std::str::from_utf8(field)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| {
            format!("cpio: header at offset {offset}: field {what} is not 8 hex digits: {field:?}")
        })?;
    u32::from_str_radix(s, 16)
        .with_context(|| format!("cpio: header at offset {offset}: bad {what} {s:?}"))
}

/// Parse a newc (`070701`) or newc-with-checksum (`070702`) archive into a tree.
///
/// Concatenated archives (as the kernel accepts them, separated by NUL
/// padding) are read one after the other. `.` entries are ignored; leading
/// `/` and `./` are stripped. Hard links (regular files sharing an inode,
/// whose data is stored with only one of the names) get the data on every
/// name. Block devices, FIFOs and sockets are refused: [`Tree`] cannot hold
/// them. Every length is bounds-checked: malformed input gives an error.
pub fn read(archive: &[u8]) -> Result<Tree> {
    read_archives(archive, false).map(|(t, _)| t)
}

/// The first archive of `archive` (up to its trailer and the NULs after it) and the offset
/// where what follows starts (a compressed archive in an initramfs, say).
pub fn read_first(archive: &[u8]) -> Result<(Tree, usize)> {
    read_archives(archive, true)
}

fn read_archives(archive: &[u8], first_only: bool) -> Result<(Tree, usize)> {
    let mut tree = Tree::new();
    // (devmajor, devminor, ino) -> paths of regular-file members sharing it.
    let mut links: BTreeMap<(u32, u32, u32), Vec<String>> = BTreeMap::new();
    let mut pos = 0usize;
    let mut saw_trailer = false;
    loop {
        if saw_trailer {
            // Between concatenated archives (and at the end) only NULs.
            while pos < archive.len() && archive[pos] == 0 {
                pos += 1;
            }
            if pos >= archive.len() || first_only {
                break;
            }
            saw_trailer = false;
        }
        let hdr = archive
            .get(pos..pos + HEADER_LEN)
            .with_context(|| format!("cpio: truncated header at offset {pos} (no trailer)"))?;
        let magic = &hdr[..6];
        let crc = if magic == MAGIC_NEWC {
            false
        } else if magic == MAGIC_CRC {
            true
        } else {
            bail!(
                "cpio: bad magic at offset {pos}: expected \"070701\" or \"070702\", got {:?}",
                String::from_utf8_lossy(magic)
            );
        };
        const NAMES: [&str; 13] = [
            "ino",
            "mode",
            "uid",
            "gid",
            "nlink",
            "mtime",
            "filesize",
            "devmajor",
            "devminor",
            "rdevmajor",
            "rdevminor",
            "namesize",
            "check",
        ];
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            *v = parse_hex(&hdr[6 + 8 * i..14 + 8 * i], NAMES[i], pos)?;
        }
        let h = Header {
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            filesize: f[6],
            devmajor: f[7],
            devminor: f[8],
            rdevmajor: f[9],
            rdevminor: f[10],
            namesize: f[11],
            check: f[12],
        };
        let name_start = pos + HEADER_LEN;
        let namesize = h.namesize as usize;
        if namesize == 0 {
            bail!("cpio: header at offset {pos}: namesize is 0 (must count the NUL)");
        }
        let name_raw = archive
            .get(name_start..name_start + namesize)
            .with_context(|| format!("cpio: name of member at offset {pos} runs past the end"))?;
        let (name_bytes, nul) = name_raw.split_at(namesize - 1);
        if nul != [0] || name_bytes.contains(&0) {
            bail!("cpio: name of member at offset {pos} is not NUL-terminated where namesize says");
        }
        let name = std::str::from_utf8(name_bytes)
            .with_context(|| format!("cpio: name of member at offset {pos} is not UTF-8"))?;
        let data_start = round4(name_start + namesize).context("cpio: offset overflow")?;
        let data_end = data_start
            .checked_add(h.filesize as usize)
            .context("cpio: offset overflow")?;
        let data = archive.get(data_start..data_end).with_context(|| {
            format!(
                "cpio: data of {name:?} ({} bytes at offset {data_start}) runs past the end ({} bytes)",
                h.filesize,
                archive.len()
            )
        })?;
        let next = round4(data_end).context("cpio: offset overflow")?;
        if crc {
            let sum = data.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
            if sum != h.check {
                bail!(
                    "cpio: checksum of {name:?}: expected {:08X}, got {sum:08X}",
                    h.check
                );
            }
        }
        pos = next;

        if name == TRAILER {
            saw_trailer = true;
            continue;
        }
        if name == "." || name == "./" || name == "/" {
            continue;
        }
        let path = normalize(name).with_context(|| format!("cpio: bad member name {name:?}"))?;
        let kind = match h.mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(Arc::new(data.to_vec())),
            S_IFLNK => Kind::Symlink(
                String::from_utf8(data.to_vec())
                    .with_context(|| format!("cpio: symlink target of {name:?} is not UTF-8"))?,
            ),
            S_IFCHR => Kind::CharDev {
                major: h.rdevmajor,
                minor: h.rdevminor,
            },
            t => bail!(
                "cpio: {name:?} has unsupported file type {t:o} (mode {:o})",
                h.mode
            ),
        };
        if h.mode & S_IFMT == S_IFREG && h.nlink > 1 {
            let group = links.entry((h.devmajor, h.devminor, h.ino)).or_default();
            group.push(path.clone());
            if !data.is_empty() {
                // GNU cpio stores the data with the last link: give it to all.
                let shared = Arc::new(data.to_vec());
                for p in group.iter() {
                    if let Some(n) = tree.get(p).cloned() {
                        if matches!(n.kind, Kind::File(_)) {
                            let mut n = n;
                            n.kind = Kind::File(shared.clone());
                            tree.insert(p, n)?;
                        }
                    }
                }
            }
        }
        let node = Node {
            kind,
            mode: h.mode & 0o7777,
            uid: h.uid,
            gid: h.gid,
            mtime: u64::from(h.mtime),
        };
        tree.insert(&path, node)
            .with_context(|| format!("cpio: cannot add member {name:?}"))?;
    }
    Ok((tree, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample() -> Tree {
        let mut t = Tree::new();
        let mut init = Node::file(b"#!/bin/sh\necho hi\n".to_vec(), 0o755);
        init.mtime = 1_700_000_000;
        t.insert("init", init).unwrap();
        t.insert("dev", Node::dir(0o755)).unwrap();
        t.insert("dev/console", Node::char_dev(5, 1, 0o600))
            .unwrap();
        t.insert("lib/modules/a.ko", Node::file(vec![0xAB; 1001], 0o644))
            .unwrap();
        t.insert("lib/modules/empty", Node::file(Vec::new(), 0o644))
            .unwrap();
        t.insert("bin/sh", Node::symlink("busybox")).unwrap();
        let mut owned = Node::file(b"x".to_vec(), 0o4750);
        owned.uid = 1000;
        owned.gid = 100;
        owned.mtime = 42;
        t.insert("bin/suid", owned).unwrap();
        t.insert("tmp", Node::dir(0o1777)).unwrap();
        t
    }

    /// Parse headers independently of `read` and return (offset, name, fields).
    fn members(a: &[u8]) -> Vec<(usize, String, Vec<u32>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "member at unaligned offset {pos}");
            assert_eq!(&a[pos..pos + 6], b"070701");
            let f: Vec<u32> = (0..13)
                .map(|i| {
                    let s = std::str::from_utf8(&a[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                    u32::from_str_radix(s, 16).unwrap()
                })
                .collect();
            let ns = f[11] as usize;
            let name = std::str::from_utf8(&a[pos + 110..pos + 110 + ns - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[pos + 110 + ns - 1], 0, "name not NUL-terminated");
            let data = (pos + 110 + ns + 3) & !3;
            out.push((pos, name.clone(), f.clone()));
            pos = (data + f[6] as usize + 3) & !3;
            if name == "TRAILER!!!" {
                assert_eq!(pos, a.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let a = write(&t).unwrap();
        let back = read(&a).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn deterministic_and_laid_out_as_specified() {
        let t = sample();
        let a = write(&t).unwrap();
        assert_eq!(a, write(&t.clone()).unwrap());
        let m = members(&a);
        let names: Vec<&str> = m.iter().map(|x| x.1.as_str()).collect();
        let expected: Vec<&str> = t.iter().map(|(p, _)| p).chain(["TRAILER!!!"]).collect();
        assert_eq!(names, expected);
        for (i, (_, name, f)) in m.iter().enumerate() {
            if name == "TRAILER!!!" {
                assert_eq!(f[0], 0);
                continue;
            }
            let node = t.get(name).unwrap();
            assert_eq!(f[0] as usize, i + 1, "inode of {name}");
            assert_eq!(f[1], node.st_mode(), "mode of {name}");
            assert_eq!((f[2], f[3]), (node.uid, node.gid));
            assert_eq!(u64::from(f[5]), node.mtime);
            assert_eq!(u64::from(f[6]), node.size());
            assert_eq!((f[7], f[8]), (0, 0));
            assert_eq!(f[12], 0);
        }
        // dev/console is 5:1; "lib" has one subdirectory (modules), so nlink 3.
        let console = m.iter().find(|x| x.1 == "dev/console").unwrap();
        assert_eq!((console.2[9], console.2[10]), (5, 1));
        assert_eq!(m.iter().find(|x| x.1 == "lib").unwrap().2[4], 3);
        assert_eq!(m.iter().find(|x| x.1 == "lib/modules").unwrap().2[4], 2);
        // The very first header, byte for byte ("bin", dir 0755, ino 1, nlink 2).
        assert_eq!(
            &a[..110],
            concat!(
                "070701", "00000001", "000041ED", "00000000", "00000000", "00000002", "00000000",
                "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000"
            )
            .as_bytes()
        );
        assert_eq!(&a[110..116], b"bin\0\0\0");
    }

    #[test]
    fn refuses_values_that_do_not_fit() {
        let mut t = Tree::new();
        let mut n = Node::file(Vec::new(), 0o644);
        n.mtime = 1 << 33;
        t.insert("f", n).unwrap();
        let e = write(&t).unwrap_err().to_string();
        assert!(e.contains("mtime"), "{e}");
    }

    #[test]
    fn reader_never_panics_on_damage() {
        let a = write(&sample()).unwrap();
        for len in 0..a.len() {
            // Every strict prefix lacks the trailer (or part of it): an error.
            assert!(read(&a[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..3000 {
            let mut b = a.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed >> 8) as usize % b.len();
                b[i] = (seed >> 3) as u8;
            }
            let _ = read(&b);
        }
        assert!(read(b"070701FFFFFFFF").is_err());
    }

    #[test]
    fn reads_concatenated_archives_and_checksums() {
        let mut t1 = Tree::new();
        t1.insert("a", Node::file(b"1".to_vec(), 0o644)).unwrap();
        let mut t2 = Tree::new();
        t2.insert("b", Node::file(b"22".to_vec(), 0o644)).unwrap();
        let mut a = write(&t1).unwrap();
        a.extend_from_slice(&[0; 512]);
        a.extend_from_slice(&write(&t2).unwrap());
        let back = read(&a).unwrap();
        assert_eq!(back.get("a").unwrap().data(), Some(&b"1"[..]));
        assert_eq!(back.get("b").unwrap().data(), Some(&b"22"[..]));

        // 070702: check = byte sum of the data.
        let mut c = write(&t2).unwrap();
        c[5] = b'2';
        assert!(read(&c).unwrap_err().to_string().contains("checksum"));
        let sum = format!("{:08X}", u32::from(b'2') * 2);
        c[102..110].copy_from_slice(sum.as_bytes());
        assert_eq!(read(&c).unwrap(), t2);
    }

    fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    #[test]
    fn gnu_cpio_lists_names_and_modes() {
        if !crate::testutil::require_tool("cpio") {
            return;
        }
        let t = sample();
        let a = write(&t).unwrap();
        let out = run_with_stdin(Command::new("cpio").args(["-itvn", "--quiet"]), &a);
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), t.len(), "{listing}");
        for ((path, node), line) in t.iter().zip(&lines) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let ty = match node.kind {
                Kind::Dir => 'd',
                Kind::File(_) => '-',
                Kind::Symlink(_) => 'l',
                Kind::CharDev { .. } => 'c',
            };
            let mut perms = String::from(ty);
            for (i, c) in "rwxrwxrwx".chars().enumerate() {
                perms.push(if node.mode & (0o400 >> i) != 0 {
                    c
                } else {
                    '-'
                });
            }
            if node.mode & 0o4000 != 0 {
                perms.replace_range(3..4, if node.mode & 0o100 != 0 { "s" } else { "S" });
            }
            if node.mode & 0o1000 != 0 {
                perms.replace_range(9..10, if node.mode & 0o001 != 0 { "t" } else { "T" });
            }
            assert_eq!(cols[0], perms, "mode of {path}: {line}");
            assert_eq!(cols[2], node.uid.to_string(), "{line}");
            assert_eq!(cols[3], node.gid.to_string(), "{line}");
            match &node.kind {
                Kind::Symlink(target) => {
                    assert!(line.ends_with(&format!(" {path} -> {target}")), "{line}")
                }
                Kind::CharDev { major, minor } => {
                    assert_eq!(cols[4], format!("{major},"), "{line}");
                    assert_eq!(cols[5], minor.to_string(), "{line}");
                    assert!(line.ends_with(&format!(" {path}")), "{line}");
                }
                _ => {
                    assert_eq!(cols[4], node.size().to_string(), "{line}");
                    assert!(line.ends_with(&format!(" {path}")), "{line}");
                }
            }
        }
    }

    #[test]
    fn gnu_cpio_extracts_same_bytes() {
        use std::os::unix::fs::PermissionsExt;
        if !crate::testutil::require_tool("cpio") {
            return;
        }
        let mut t = sample();
        // mknod may be forbidden in a container: leave devices out here.
        t.remove("dev/console");
        let a = write(&t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        run_with_stdin(
            Command::new("cpio")
                .args(["-idm", "--quiet", "--no-absolute-filenames"])
                .current_dir(dir.path()),
            &a,
        );
        for (path, node) in t.iter() {
            let p = dir.path().join(path);
            let md = std::fs::symlink_metadata(&p).unwrap();
            match &node.kind {
                Kind::File(d) => {
                    assert_eq!(&std::fs::read(&p).unwrap(), d.as_ref(), "{path}");
                    assert_eq!(md.permissions().mode() & 0o7777, node.mode, "{path}");
                }
                Kind::Symlink(target) => {
                    assert_eq!(
                        std::fs::read_link(&p).unwrap().to_str(),
                        Some(target.as_str())
                    )
                }
                Kind::Dir => assert!(md.is_dir(), "{path}"),
                Kind::CharDev { .. } => unreachable!(),
            }
        }
    }

    #[test]
    fn reads_gnu_cpio_output_including_hard_links() {
        if !crate::testutil::require_tool("cpio") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), b"hello").unwrap();
        std::fs::hard_link(d.join("sub/f"), d.join("g")).unwrap();
        std::os::unix::fs::symlink("sub/f", d.join("l")).unwrap();
        let out = run_with_stdin(
            Command::new("cpio")
                .args(["-o", "-H", "newc", "--quiet"])
                .current_dir(d),
            b"sub\nsub/f\ng\nl\n",
        );
        let t = read(&out.stdout).unwrap();
        assert_eq!(t.get("sub/f").unwrap().data(), Some(&b"hello"[..]));
        assert_eq!(t.get("g").unwrap().data(), Some(&b"hello"[..]));
        assert_eq!(t.get("l").unwrap().kind, Kind::Symlink("sub/f".into()));
        assert_eq!(t.get("sub").unwrap().kind, Kind::Dir);
    }
}
