//! A container image as the app: its layers flattened into one file system (whiteouts
//! applied, hostile entries refused) and split into image-layer groups, its config parsed,
//! its user and program resolved. Pure functions over bytes: no network, no host files.
//!
//! [`flatten`] reads each layer blob (gzip, zstd or plain tar, told apart by their magic
//! bytes, whatever the media type says), applies the layers bottom to top into one merged
//! view as an overlay mount would show it, and cuts that view into at most `max_groups`
//! groups (one per container layer, the lowest merged into the first group beyond that),
//! each a self-contained tree. The rules, following the OCI image spec's layer section
//! (image-spec/layer.md) and what Docker's and containerd's appliers do:
//!
//! - `.wh.NAME` deletes NAME and everything under it that a *lower* layer wrote;
//!   `.wh..wh..opq` in a directory hides everything lower layers wrote under it. Entries of
//!   the whiteout's own layer stay wherever they come in the tar, before or after the
//!   whiteout. Other `.wh..wh.*` names (AUFS bookkeeping) are ignored. No whiteout file is
//!   ever in the output.
//! - A later entry of a path replaces the earlier one; a directory over a directory keeps
//!   the children, anything else over a directory removes its subtree.
//! - Missing ancestor directories are created as 0755 root:root directories.
//! - A hard link becomes a copy of its target's data and metadata; the target must already
//!   be a regular file of the merged view (from a lower layer or earlier in the same tar).
//! - Mode keeps its 0o7777 bits; uid and gid come from the header (PAX `uid`/`gid` honoured
//!   by the `tar` crate); mtimes, xattrs and PAX records other than path/linkpath/size/uid/
//!   gid are dropped (the image is built with fixed times).
//!
//! Refused, with the layer digest and the entry path in the error: absolute paths, `..`
//! components, an entry (or a whiteout) below a symlink or a non-directory of the merged
//! view, hard links to missing files, directories or with absolute/`..` targets, device
//! nodes, FIFOs, sparse and unknown entry types, `.wh.`, `.wh..` and `.wh...`, non-UTF-8
//! paths, a truncated or corrupt tar, gzip or zstd stream, a tar stream whose sha256 is not
//! the config's diff_id, and anything past [`Limits`]: the file bytes (hard-link copies
//! included) and the entries of all layers together, and whiteouts that would look at more
//! than 16 entries of the merged view per allowed entry (a layer whiting out its own large
//! tree again and again). The decompressed stream itself is
//! capped while it is read (the file budget plus 4 KiB of headers per allowed entry, and at
//! most 1 MiB after the tar's end), so a decompression bomb stops at the cap instead of
//! being inflated first; memory is bounded by the file budget (the files are held in
//! memory) plus the largest tar header. Symlink *targets* may be absolute or contain `..`: they resolve inside the
//! guest's root at run time.
//!
//! [`parse_config`] reads an OCI image config or the Docker v1 config of a `docker save`
//! archive; [`resolve_user`] turns `User` into uid:gid through the image's own
//! /etc/passwd and /etc/group as Docker does; [`resolve_program`] finds argv\[0\] along PATH
//! at build time, because fuse's init execs an absolute path without a PATH search.

use crate::digest::hex;
use crate::tree::{MAX_DEPTH, MAX_PATH};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

/// One container layer blob as fetched (bottom to top).
#[derive(Clone, Copy, Debug)]
pub struct LayerInput<'a> {
    /// `sha256:` of the blob (compressed bytes), named in every error about the layer.
    pub digest: &'a str,
    /// The descriptor's media type (informational: the compression is found by magic).
    pub media_type: &'a str,
    pub bytes: &'a [u8],
    /// rootfs.diff_ids\[i\] from the config: sha256 of the uncompressed tar; checked when given.
    pub diff_id: Option<&'a str>,
}

/// Caps on what all layers of one image may hold together.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Uncompressed bytes of regular files, hard-link copies included, over all layers.
    pub max_total_bytes: u64,
    /// Tar entries (whiteouts and directories included) over all layers.
    pub max_entries: usize,
}

impl Default for Limits {
    /// 4 GiB of files (all held in memory) and [`crate::tree::MAX_ENTRIES`] entries.
    fn default() -> Self {
        Limits {
            max_total_bytes: 4 << 30,
            max_entries: crate::tree::MAX_ENTRIES,
        }
    }
}

/// The signals the init can stop an app with (a container's `StopSignal`), with their
/// numbers in Linux's generic numbering (x86-64, arm64); fuse-init's `STOP_SIGNALS` has
/// the same names (a test checks).
pub const STOP_SIGNALS: &[(&str, u8)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGABRT", 6),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];

/// A container's `StopSignal` as Docker reads it (`SIGINT`, `INT`, `sigint` or `2`), as the
/// name the boot plan carries; `None` for SIGTERM, the init's default. A signal not in
/// [`STOP_SIGNALS`] is refused.
pub fn stop_signal(s: &str) -> Result<Option<&'static str>> {
    let t = s.trim();
    let found = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u8>()
            .ok()
            .and_then(|n| STOP_SIGNALS.iter().find(|(_, k)| *k == n))
    } else {
        let up = t.to_ascii_uppercase();
        let name = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        STOP_SIGNALS.iter().find(|(k, _)| *k == name)
    };
    match found {
        Some(("SIGTERM", _)) => Ok(None),
        Some((name, _)) => Ok(Some(name)),
        None => bail!(
            "StopSignal {:?} is not a signal fuse-init stops an app with (one of {}, or its number)",
            crate::util::text::one_line(s),
            STOP_SIGNALS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Bytes of tar headers, padding and extension records allowed per entry, on top of the
/// file bytes, in the cap on the decompressed stream.
const STREAM_BYTES_PER_ENTRY: u64 = 4096;

/// Bytes accepted after a layer's end-of-archive blocks (tar writers pad to a record of
/// 10 KiB; anything longer is refused rather than inflated).
const MAX_TRAILING: u64 = 1 << 20;

/// Entries of the merged view that whiteouts may look at, per allowed entry: a deleted
/// tree is looked at once; only a layer whiting out its own large trees again and again
/// reaches this.
const SCAN_PER_ENTRY: u64 = 16;

/// What an entry of the merged file system is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsKind {
    Dir,
    /// The file's bytes (shared between hard-link copies).
    File(Arc<Vec<u8>>),
    /// The link target, as written in the layer (may be absolute or hold `..`).
    Symlink(String),
}

/// One path of the merged file system with its final metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsEntry {
    /// Relative, normalized, no leading `/`: `usr/bin/python3`.
    pub path: String,
    pub kind: FsKind,
    /// The 0o7777 bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One image-layer's share of the container's file system.
///
/// Each final entry is in the group of the container layer that last wrote it; the group
/// also holds the ancestor directories of its entries (with their final metadata), so it is
/// a tree of its own. Entries are sorted by path (byte order), no whiteouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsGroup {
    /// Digests of the container layers merged into this group, bottom to top.
    pub layers: Vec<String>,
    pub entries: Vec<FsEntry>,
}

/// An entry of the merged view, with the index of the layer that last wrote it.
#[derive(Clone, Debug)]
struct Node {
    kind: FsKind,
    mode: u32,
    uid: u32,
    gid: u32,
    layer: usize,
}

impl Node {
    fn root_dir(layer: usize) -> Node {
        Node {
            kind: FsKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            layer,
        }
    }
}

/// The merged view while layers are applied, and what the limits have left.
struct Merge {
    map: BTreeMap<String, Node>,
    entries_left: usize,
    bytes_left: u64,
    stream_left: u64,
    /// Entries whiteouts may still look at, of `scan_total`.
    scan_left: u64,
    scan_total: u64,
}

/// Applies the container layers bottom to top and splits the result into at most
/// `max_groups` groups, bottom to top (see the module header for the rules and what is
/// refused). No layers give no groups; `max_groups` = 0 with layers is an error.
pub fn flatten(layers: &[LayerInput], max_groups: usize, limits: &Limits) -> Result<Vec<FsGroup>> {
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    ensure!(
        max_groups > 0,
        "cannot split {} container layers into 0 groups",
        layers.len()
    );
    let scan_total = (limits.max_entries as u64).saturating_mul(SCAN_PER_ENTRY);
    let mut m = Merge {
        map: BTreeMap::new(),
        entries_left: limits.max_entries,
        bytes_left: limits.max_total_bytes,
        stream_left: limits
            .max_total_bytes
            .saturating_add((limits.max_entries as u64).saturating_mul(STREAM_BYTES_PER_ENTRY)),
        scan_left: scan_total,
        scan_total,
    };
    for (i, layer) in layers.iter().enumerate() {
        apply_layer(&mut m, i, layer, limits)?;
    }

    let n = layers.len();
    let groups = max_groups.min(n);
    let group_of = |layer: usize| layer.saturating_sub(n - groups);
    let mut out: Vec<(Vec<String>, BTreeMap<&str, &Node>)> =
        (0..groups).map(|_| (Vec::new(), BTreeMap::new())).collect();
    for (i, l) in layers.iter().enumerate() {
        out[group_of(i)].0.push(l.digest.to_string());
    }
    for (path, node) in &m.map {
        let g = &mut out[group_of(node.layer)].1;
        g.insert(path.as_str(), node);
        for (i, _) in path.match_indices('/') {
            let a = &path[..i];
            if !g.contains_key(a) {
                // Invariant of the merged view: every ancestor is a directory in it.
                let an = m
                    .map
                    .get_key_value(a)
                    .ok_or_else(|| anyhow!("internal: {path} has no parent {a}"))?;
                g.insert(an.0.as_str(), an.1);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(layers, entries)| FsGroup {
            layers,
            entries: entries
                .into_iter()
                .map(|(p, n)| FsEntry {
                    path: p.to_string(),
                    kind: n.kind.clone(),
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                })
                .collect(),
        })
        .collect())
}

/// A reader that hashes what passes through and fails once more than `left` bytes come
/// out of `inner` (the decompressor is never asked for more than one byte past the cap).
struct Capped<R> {
    inner: R,
    left: u64,
    hasher: Sha256,
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
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// How a layer blob is compressed, from its first bytes.
fn compression(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else {
        "tar"
    }
}

/// Normalizes a path inside a layer: `./` and `.` and repeated `/` dropped; an absolute
/// path, a `..` component, a newline or NUL, or a path past [`MAX_PATH`]/[`MAX_DEPTH`] is
/// an error. The empty string is the root.
fn layer_path(raw: &str) -> Result<String> {
    if raw.starts_with('/') {
        bail!("absolute path");
    }
    if raw.contains(['\n', '\0']) {
        bail!("path contains a newline or NUL");
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("path has a \"..\" component"),
            c => parts.push(c),
        }
    }
    ensure!(
        parts.len() <= MAX_DEPTH,
        "path is deeper than {MAX_DEPTH} components"
    );
    let p = parts.join("/");
    ensure!(p.len() <= MAX_PATH, "path is longer than {MAX_PATH} bytes");
    Ok(p)
}

/// The key range of everything strictly below `dir` ("" = the whole tree).
fn subtree_keys(map: &BTreeMap<String, Node>, dir: &str) -> Vec<String> {
    if dir.is_empty() {
        return map.keys().cloned().collect();
    }
    // Every "dir/..." sorts between "dir/" and "dir0" ('0' follows '/').
    map.range(format!("{dir}/")..format!("{dir}0"))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Deletes what layers below `layer` wrote under `dir` (and `dir` itself with
/// `include_dir`), keeping the entries of `layer` and the directories above them. Each
/// entry looked at is taken from `m.scan_left` (a layer repeating whiteouts over a large
/// tree of its own would otherwise cost entries x tree size).
fn remove_lower(m: &mut Merge, dir: &str, include_dir: bool, layer: usize) -> Result<()> {
    let range: Box<dyn Iterator<Item = (&String, &Node)>> = if dir.is_empty() {
        Box::new(m.map.iter())
    } else {
        // Every "dir/..." sorts between "dir/" and "dir0" ('0' follows '/').
        Box::new(m.map.range(format!("{dir}/")..format!("{dir}0")))
    };
    let mut lower: Vec<&str> = Vec::new();
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut visited = 0u64;
    for (k, n) in range {
        visited += 1;
        if visited > m.scan_left {
            bail!(
                "the whiteouts of the container's layers look at more than {} entries \
                 (hostile layer?)",
                m.scan_total
            );
        }
        if n.layer >= layer {
            let mut a = k.as_str();
            while keep.insert(a) {
                match a.rfind('/') {
                    Some(i) if a.len() > dir.len() => a = &a[..i],
                    _ => break,
                }
            }
        } else {
            lower.push(k);
        }
    }
    m.scan_left -= visited;
    if include_dir && m.map.get(dir).is_some_and(|n| n.layer < layer) {
        lower.push(dir);
    }
    let gone: Vec<String> = lower
        .into_iter()
        .filter(|k| !keep.contains(k))
        .map(str::to_string)
        .collect();
    for k in gone {
        m.map.remove(&k);
    }
    Ok(())
}

/// Refuses a path of which an ancestor in the merged view is not a directory (a symlink
/// used as a parent could point anywhere).
fn check_parents(map: &BTreeMap<String, Node>, path: &str) -> Result<()> {
    for (i, _) in path.match_indices('/') {
        let a = &path[..i];
        match map.get(a).map(|n| &n.kind) {
            Some(FsKind::Symlink(t)) => {
                bail!("its parent {a} is a symlink (to {t:?}): refused as an escape")
            }
            Some(FsKind::File(_)) => bail!("its parent {a} is not a directory"),
            Some(FsKind::Dir) | None => {}
        }
    }
    Ok(())
}

/// Creates the missing ancestors of `path` as 0755 root:root directories of `layer`.
fn make_parents(map: &mut BTreeMap<String, Node>, path: &str, layer: usize) {
    for (i, _) in path.match_indices('/') {
        let a = &path[..i];
        if !map.contains_key(a) {
            map.insert(a.to_string(), Node::root_dir(layer));
        }
    }
}

/// Puts `node` at `path`: a directory over a directory keeps the children, anything else
/// over a directory removes its subtree.
fn put(map: &mut BTreeMap<String, Node>, path: &str, node: Node) {
    let was_dir = matches!(map.get(path).map(|n| &n.kind), Some(FsKind::Dir));
    if was_dir && node.kind != FsKind::Dir {
        for k in subtree_keys(map, path) {
            map.remove(&k);
        }
    }
    map.insert(path.to_string(), node);
}

fn apply_layer(m: &mut Merge, idx: usize, layer: &LayerInput, limits: &Limits) -> Result<()> {
    let digest = layer.digest;
    let kind = compression(layer.bytes);
    let data = layer.bytes;
    let inner: Box<dyn Read + '_> = match kind {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(data)),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::with_buffer(data)
                .with_context(|| format!("layer {digest}: cannot start the zstd decoder"))?,
        ),
        _ => Box::new(data),
    };
    let exceeded = Rc::new(Cell::new(false));
    let cap = m.stream_left;
    let reader = Capped {
        inner,
        left: cap,
        hasher: Sha256::new(),
        exceeded: exceeded.clone(),
    };
    let stream_err = |what: &str, e: std::io::Error| -> anyhow::Error {
        if exceeded.get() {
            anyhow!(
                "layer {digest}: the decompressed {kind} stream exceeds {cap} bytes, what is \
                 left of the limit of {} file bytes and {} entries (decompression bomb?)",
                limits.max_total_bytes,
                limits.max_entries
            )
        } else {
            anyhow!("layer {digest}: corrupt or truncated {kind} stream: {what}: {e}")
        }
    };
    let mut ar = tar::Archive::new(reader);
    {
        let entries = ar.entries().map_err(|e| stream_err("reading the tar", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_err("reading a tar header", e))?;
            if m.entries_left == 0 {
                bail!(
                    "layer {digest}: more than {} entries in the container's layers (tar bomb?)",
                    limits.max_entries
                );
            }
            m.entries_left -= 1;
            let raw_bytes = entry.path_bytes().into_owned();
            let raw = String::from_utf8(raw_bytes).map_err(|e| {
                anyhow!(
                    "layer {digest}: {:?}: path is not UTF-8",
                    String::from_utf8_lossy(e.as_bytes())
                )
            })?;
            apply_entry(m, idx, &mut entry, &raw, limits).map_err(|e| {
                match e.downcast::<StreamError>() {
                    Ok(StreamError(io)) => stream_err(&format!("reading {raw}"), io),
                    Err(e) => anyhow!("layer {digest}: {raw}: {e:#}"),
                }
            })?;
        }
    }
    // The rest of the stream (end-of-archive blocks, record padding) belongs to the diff_id
    // too; more than MAX_TRAILING bytes of it is not a tar writer's padding.
    let mut reader = ar.into_inner();
    let trailing = std::io::copy(
        &mut (&mut reader).take(MAX_TRAILING + 1),
        &mut std::io::sink(),
    )
    .map_err(|e| stream_err("reading past the end of the tar", e))?;
    ensure!(
        trailing <= MAX_TRAILING,
        "layer {digest}: more than {MAX_TRAILING} bytes follow the end of the tar archive"
    );
    m.stream_left = reader.left;
    let got = format!("sha256:{}", hex(&reader.hasher.finalize()));
    if let Some(want) = layer.diff_id {
        ensure!(
            want == got,
            "layer {digest}: the uncompressed tar has digest {got}, but the config's diff_id \
             for it is {want}"
        );
    }
    Ok(())
}

/// An I/O error of the layer's stream while reading an entry's data (a truncated stream or
/// the cap), told apart from a refused entry.
#[derive(Debug)]
struct StreamError(std::io::Error);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamError {}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| anyhow!("{what} {:?} is not UTF-8", String::from_utf8_lossy(bytes)))
}

/// A numeric header field as the `tar` crate reads it (octal, GNU base-256, PAX override),
/// except that a blank field (all NUL or spaces) is 0, as Go's archive/tar reads it (the
/// reader Docker and containerd apply layers with).
fn numeric_field(parsed: std::io::Result<u64>, raw: &[u8], what: &str) -> Result<u64> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(anyhow!("bad {what}: {e}")),
    }
}

/// Applies one tar entry (`raw` = its path as written) to the merged view.
fn apply_entry<R: Read>(
    m: &mut Merge,
    idx: usize,
    entry: &mut tar::Entry<'_, R>,
    raw: &str,
    limits: &Limits,
) -> Result<()> {
    let et = entry.header().entry_type();
    if et.is_pax_global_extensions() {
        return Ok(());
    }
    let path = layer_path(raw)?;
    if path.is_empty() {
        ensure!(et.is_dir(), "the root is not a directory");
        return Ok(());
    }
    let (parent, base) = match path.rsplit_once('/') {
        Some((p, b)) => (p, b),
        None => ("", path.as_str()),
    };
    check_parents(&m.map, &path)?;

    if let Some(name) = base.strip_prefix(".wh.") {
        if name == ".wh..opq" {
            make_parents(&mut m.map, &path, idx);
            remove_lower(m, parent, false, idx)?;
        } else if name.starts_with(".wh.") {
            // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not part of the file system.
        } else {
            ensure!(
                !matches!(name, "" | "." | ".."),
                "whiteout of {name:?} is malformed"
            );
            let target = if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}/{name}")
            };
            remove_lower(m, &target, true, idx)?;
        }
        return Ok(());
    }

    let hdr = entry.header();
    let old = hdr.as_old();
    let mode = numeric_field(hdr.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let uid = u32::try_from(numeric_field(hdr.uid(), &old.uid, "uid")?)
        .map_err(|_| anyhow!("uid does not fit in 32 bits"))?;
    let gid = u32::try_from(numeric_field(hdr.gid(), &old.gid, "gid")?)
        .map_err(|_| anyhow!("gid does not fit in 32 bits"))?;
    use tar::EntryType as T;
    let node = match et {
        T::Regular | T::Continuous => {
            let size = entry.size();
            if size > m.bytes_left {
                bail!(
                    "a file of {size} bytes goes past the limit of {} file bytes in the \
                     container's layers (tar bomb?)",
                    limits.max_total_bytes
                );
            }
            m.bytes_left -= size;
            let mut data = Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
            (&mut *entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(StreamError)?;
            if data.len() as u64 != size {
                return Err(StreamError(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} of {size} bytes of file data", data.len()),
                ))
                .into());
            }
            Node {
                kind: FsKind::File(Arc::new(data)),
                mode,
                uid,
                gid,
                layer: idx,
            }
        }
        T::Directory => Node {
            kind: FsKind::Dir,
            mode,
            uid,
            gid,
            layer: idx,
        },
        T::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("symlink without a target"))?;
            let target = utf8(&target, "symlink target")?;
            ensure!(!target.is_empty(), "symlink with an empty target");
            ensure!(
                !target.contains('\0') && target.len() <= MAX_PATH,
                "symlink target is longer than {MAX_PATH} bytes or holds a NUL"
            );
            Node {
                kind: FsKind::Symlink(target),
                mode,
                uid,
                gid,
                layer: idx,
            }
        }
        T::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("hard link without a target"))?;
            let target = utf8(&target, "hard link target")?;
            let t =
                layer_path(&target).map_err(|e| anyhow!("hard link to {target:?} refused: {e}"))?;
            let Some(n) = m.map.get(&t) else {
                bail!("hard link to {target:?}, which is not in the layers so far");
            };
            let FsKind::File(data) = &n.kind else {
                bail!("hard link to {target:?}, which is not a regular file");
            };
            let size = data.len() as u64;
            if size > m.bytes_left {
                bail!(
                    "a hard-link copy of {size} bytes goes past the limit of {} file bytes \
                     in the container's layers (tar bomb?)",
                    limits.max_total_bytes
                );
            }
            m.bytes_left -= size;
            Node {
                layer: idx,
                ..n.clone()
            }
        }
        T::Char | T::Block => bail!("device node refused (the image's /dev comes from fuse)"),
        T::Fifo => bail!("FIFO refused"),
        T::GNUSparse => bail!("GNU sparse file: not supported"),
        other => bail!("unsupported tar entry type {:?}", other.as_byte() as char),
    };
    make_parents(&mut m.map, &path, idx);
    put(&mut m.map, &path, node);
    Ok(())
}

/// The parts of an image config that fuse carries over to the app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// GOARCH-style (`amd64`, `arm64`); empty when missing.
    pub architecture: String,
    pub os: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `Env` in order; a name given twice keeps its last value, at its last place.
    pub env: Vec<(String, String)>,
    /// `User` as written (`name`, `uid`, `uid:gid`, `name:group`); None when empty.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// The TCP ports of `ExposedPorts`, ascending, without duplicates (UDP and SCTP dropped).
    pub exposed_ports: Vec<u16>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `rootfs.diff_ids`, bottom to top: `sha256:` of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
}

/// Largest image config accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A JSON string list that Docker also accepts as one string (`"Cmd": "run"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum StrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RawRun>,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRun {
    #[serde(rename = "Entrypoint")]
    entrypoint: Option<StrList>,
    #[serde(rename = "Cmd")]
    cmd: Option<StrList>,
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
    #[serde(rename = "User")]
    user: Option<String>,
    #[serde(rename = "WorkingDir")]
    working_dir: Option<String>,
    #[serde(rename = "ExposedPorts")]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "StopSignal")]
    stop_signal: Option<String>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, Option<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRootfs {
    diff_ids: Option<Vec<String>>,
}

fn list(v: Option<StrList>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(StrList::One(s)) => vec![s],
        Some(StrList::Many(v)) => v,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Parses an OCI image config (application/vnd.oci.image.config.v1+json) or a Docker v1
/// image config (what `docker save` writes): missing or null fields are empty. Refused: more
/// than [`MAX_CONFIG_BYTES`], an `Env` entry without `=` or with an empty name, an exposed
/// port that is not `N`, `N/tcp`, `N/udp` or `N/sctp` with 1 <= N <= 65535, a diff_id that
/// is not `sha256:<64 hex>`.
pub fn parse_config(bytes: &[u8]) -> Result<ContainerConfig> {
    ensure!(
        bytes.len() <= MAX_CONFIG_BYTES,
        "image config is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
        bytes.len()
    );
    let raw: RawConfig =
        serde_json::from_slice(bytes).context("image config is not a valid config JSON")?;
    let run = raw.config.unwrap_or_default();

    let mut env: Vec<(String, String)> = Vec::new();
    for e in run.env.unwrap_or_default() {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| anyhow!("image config: Env entry {e:?} has no '='"))?;
        ensure!(
            !k.is_empty(),
            "image config: Env entry {e:?} has an empty name"
        );
        env.retain(|(old, _)| old != k);
        env.push((k.to_string(), v.to_string()));
    }

    let mut ports = BTreeSet::new();
    for key in run.exposed_ports.unwrap_or_default().into_keys() {
        let (num, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let port: u16 =
            num.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                anyhow!("image config: exposed port {key:?} is not a port number")
            })?;
        match proto.to_ascii_lowercase().as_str() {
            "tcp" => {
                ports.insert(port);
            }
            "udp" | "sctp" => {}
            _ => bail!("image config: exposed port {key:?} has an unknown protocol"),
        }
    }

    let diff_ids = raw.rootfs.and_then(|r| r.diff_ids).unwrap_or_default();
    for d in &diff_ids {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        ensure!(
            ok,
            "image config: diff_id {d:?} is not sha256:<64 lower-case hex>"
        );
    }

    Ok(ContainerConfig {
        architecture: raw.architecture.unwrap_or_default(),
        os: raw.os.unwrap_or_default(),
        entrypoint: list(run.entrypoint),
        cmd: list(run.cmd),
        env,
        user: non_empty(run.user),
        working_dir: non_empty(run.working_dir),
        exposed_ports: ports.into_iter().collect(),
        stop_signal: non_empty(run.stop_signal),
        labels: run
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        diff_ids,
    })
}

/// The `name:x:id:...` lines of /etc/passwd or /etc/group: (name, id, the passwd gid).
/// Comments, blank and malformed lines are skipped, as libc and Docker skip them.
fn id_lines(bytes: &[u8]) -> Vec<(String, u32, Option<u32>)> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.trim().parse().ok()?;
            let gid = f.get(3).and_then(|g| g.trim().parse().ok());
            Some((f[0].to_string(), id, gid))
        })
        .collect()
}

fn numeric(s: &str) -> Option<Result<u32>> {
    s.bytes().all(|b| b.is_ascii_digit()).then(|| {
        s.parse::<u32>()
            .map_err(|_| anyhow!("user id {s:?} is out of range"))
    })
}

/// Resolves the config's `User` the way Docker does, through the image's own /etc/passwd
/// and /etc/group (their bytes, when the image has them): `name` and `uid` take the gid of
/// their passwd entry (a uid not in passwd gets gid 0); `uid:gid`, `name:gid`,
/// `uid:group` and `name:group` take the group given. None or "" is root (0:0). A name not
/// found is an error naming it and saying whether the file exists.
pub fn resolve_user(
    user: Option<&str>,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
) -> Result<(u32, u32)> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    ensure!(
        !u.is_empty() && g != Some(""),
        "User {user:?} is malformed (expected name, uid, uid:gid or name:group)"
    );
    let users = passwd.map(id_lines).unwrap_or_default();
    let (uid, passwd_gid) = match numeric(u) {
        Some(uid) => {
            let uid = uid?;
            let gid = users.iter().find(|x| x.1 == uid).and_then(|x| x.2);
            (uid, gid)
        }
        None => {
            let found = users.iter().find(|x| x.0 == u).ok_or_else(|| {
                anyhow!(
                    "User {user:?}: no user {u:?} in the image's /etc/passwd{}",
                    if passwd.is_some() {
                        ""
                    } else {
                        " (the image has no /etc/passwd)"
                    }
                )
            })?;
            let gid = found
                .2
                .ok_or_else(|| anyhow!("User {user:?}: /etc/passwd entry of {u:?} has no gid"))?;
            (found.1, Some(gid))
        }
    };
    let gid = match g {
        None => passwd_gid.unwrap_or(0),
        Some(g) => match numeric(g) {
            Some(gid) => gid.with_context(|| format!("User {user:?}"))?,
            None => {
                let groups = group.map(id_lines).unwrap_or_default();
                groups
                    .iter()
                    .find(|x| x.0 == g)
                    .map(|x| x.1)
                    .ok_or_else(|| {
                        anyhow!(
                            "User {user:?}: no group {g:?} in the image's /etc/group{}",
                            if group.is_some() {
                                ""
                            } else {
                                " (the image has no /etc/group)"
                            }
                        )
                    })?
            }
        },
    };
    Ok((uid, gid))
}

/// The PATH fuse's init gives the app when the environment sets none (init/src/app.rs's
/// `DEFAULT_PATH`; a unit test keeps the two equal).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The absolute path the init will exec for `argv0`: an absolute argv0 as is (once
/// `is_exec` accepts it); a bare name looked up along `path_env` (the app's PATH, else
/// [`DEFAULT_PATH`]), the first directory where `is_exec` accepts it winning; relative and
/// empty PATH entries are skipped. `is_exec` gets an absolute path (`/usr/bin/python3`) and
/// answers whether the flattened file system has an executable regular file there (or a
/// symlink resolving to one). A relative argv0 containing `/` is refused: the init does
/// no PATH search and has no working directory to resolve it against at build time.
pub fn resolve_program(
    argv0: &str,
    path_env: Option<&str>,
    is_exec: impl Fn(&str) -> bool,
) -> Result<String> {
    ensure!(!argv0.is_empty(), "the program (argv[0]) is empty");
    if argv0.starts_with('/') {
        ensure!(
            is_exec(argv0),
            "the program {argv0:?} is not an executable file in the container's file system"
        );
        return Ok(argv0.to_string());
    }
    if argv0.contains('/') {
        bail!(
            "the program {argv0:?} is a relative path: fuse's init runs argv[0] as an \
             absolute path, so write it from the root (e.g. \"/app/{}\")",
            argv0.trim_start_matches("./")
        );
    }
    let path = path_env.unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let full = format!("{}/{argv0}", dir.trim_end_matches('/'));
        if is_exec(&full) {
            return Ok(full);
        }
    }
    bail!("the program {argv0:?} is not an executable file in any directory of PATH={path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tar entry for the test layers.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        FileMode(&'a str, &'a [u8], u32, u64, u64),
        Dir(&'a str),
        DirMode(&'a str, u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dev(&'a str, tar::EntryType),
    }

    fn header(path: &str, t: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        // set_path refuses `..` and absolute paths: write the name field directly.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match *e {
                E::File(p, d) => {
                    let mut h = header(p, tar::EntryType::Regular, d.len() as u64, 0o644);
                    h.set_cksum();
                    b.append(&h, d).unwrap();
                }
                E::FileMode(p, d, mode, uid, gid) => {
                    let mut h = header(p, tar::EntryType::Regular, d.len() as u64, mode);
                    h.set_uid(uid);
                    h.set_gid(gid);
                    h.set_cksum();
                    b.append(&h, d).unwrap();
                }
                E::Dir(p) | E::DirMode(p, _) => {
                    let mode = if let E::DirMode(_, m) = e { *m } else { 0o755 };
                    let mut h = header(p, tar::EntryType::Directory, 0, mode);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
                E::Sym(p, t) | E::Hard(p, t) => {
                    let ty = if matches!(e, E::Sym(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    let mut h = header(p, ty, 0, 0o777);
                    let ln = &mut h.as_old_mut().linkname;
                    ln.fill(0);
                    ln[..t.len()].copy_from_slice(t.as_bytes());
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
                E::Dev(p, t) => {
                    let mut h = header(p, t, 0, 0o600);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zst(b: &[u8]) -> Vec<u8> {
        zstd::encode_all(b, 3).unwrap()
    }

    fn digest_of(b: &[u8]) -> String {
        format!("sha256:{}", crate::digest::sha256_hex(b))
    }

    fn inputs(blobs: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
        blobs.iter().map(|b| (digest_of(b), b.clone())).collect()
    }

    fn run(blobs: &[Vec<u8>], groups: usize) -> Result<Vec<FsGroup>> {
        run_limits(blobs, groups, &Limits::default())
    }

    fn run_limits(blobs: &[Vec<u8>], groups: usize, limits: &Limits) -> Result<Vec<FsGroup>> {
        let named = inputs(blobs);
        let layers: Vec<LayerInput> = named
            .iter()
            .map(|(d, b)| LayerInput {
                digest: d,
                media_type: "application/vnd.oci.image.layer.v1.tar",
                bytes: b,
                diff_id: None,
            })
            .collect();
        flatten(&layers, groups, limits)
    }

    fn paths(g: &FsGroup) -> Vec<&str> {
        g.entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn all_paths(gs: &[FsGroup]) -> BTreeSet<String> {
        gs.iter()
            .flat_map(|g| g.entries.iter().map(|e| e.path.clone()))
            .collect()
    }

    fn find<'a>(g: &'a FsGroup, p: &str) -> Option<&'a FsEntry> {
        g.entries.iter().find(|e| e.path == p)
    }

    fn data(e: &FsEntry) -> &[u8] {
        match &e.kind {
            FsKind::File(d) => d,
            k => panic!("{} is {k:?}", e.path),
        }
    }

    #[test]
    fn single_layer_all_compressions() {
        let t = tar_of(&[
            E::Dir("./"),
            E::Dir("./etc/"),
            E::FileMode("./etc/hostname", b"box\n", 0o4755, 1000, 1001),
            E::Sym("./bin", "usr/bin"),
            E::File("./usr/bin/app", b"\x7fELF"),
        ]);
        for blob in [t.clone(), gz(&t), zst(&t)] {
            let g = run(&[blob], 8).unwrap();
            assert_eq!(g.len(), 1);
            assert_eq!(
                paths(&g[0]),
                [
                    "bin",
                    "etc",
                    "etc/hostname",
                    "usr",
                    "usr/bin",
                    "usr/bin/app"
                ]
            );
            let h = find(&g[0], "etc/hostname").unwrap();
            assert_eq!(
                (data(h), h.mode, h.uid, h.gid),
                (&b"box\n"[..], 0o4755, 1000, 1001)
            );
            assert_eq!(
                find(&g[0], "bin").unwrap().kind,
                FsKind::Symlink("usr/bin".into())
            );
            // usr and usr/bin were never in the tar: 0755 root directories.
            let usr = find(&g[0], "usr/bin").unwrap();
            assert_eq!((&usr.kind, usr.mode, usr.uid), (&FsKind::Dir, 0o755, 0));
        }
    }

    /// One PAX record: "LEN key=value\n", LEN counting itself.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn long_names_through_gnu_and_pax() {
        let long = format!("opt/{}/{}", "d".repeat(120), "f".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(3);
        h.set_mode(0o600);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "opt/link", &long).unwrap();
        // A PAX header: a long path and a uid past the 7 octal digits of ustar.
        let pax_path = format!("srv/{}", "p".repeat(200));
        let mut recs = pax_record("path", &pax_path);
        recs.extend(pax_record("uid", "3000000"));
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_path("PaxHeaders/x").unwrap();
        x.set_size(recs.len() as u64);
        x.set_cksum();
        b.append(&x, &recs[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_path("short").unwrap();
        h.set_size(2);
        h.set_mode(0o640);
        h.set_cksum();
        b.append(&h, &b"pp"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let g = run(&[t], 1).unwrap();
        assert_eq!(data(find(&g[0], &long).unwrap()), b"abc");
        assert_eq!(
            find(&g[0], "opt/link").unwrap().kind,
            FsKind::Symlink(long.clone())
        );
        let p = find(&g[0], &pax_path).unwrap();
        assert_eq!((data(p), p.uid, p.mode), (&b"pp"[..], 3_000_000, 0o640));
        assert!(find(&g[0], "short").is_none());
    }

    #[test]
    fn whiteout_deletes_lower_file_and_tree() {
        let l0 = tar_of(&[
            E::File("etc/keep", b"k"),
            E::File("etc/gone", b"g"),
            E::File("var/cache/a/b", b"b"),
            E::File("var/cache/c", b"c"),
        ]);
        let l1 = gz(&tar_of(&[
            E::File("etc/.wh.gone", b""),
            E::File("var/.wh.cache", b""),
            E::File("etc/new", b"n"),
        ]));
        let g = run(&[l0, l1], 8).unwrap();
        let all = all_paths(&g);
        assert!(all.contains("etc/keep") && all.contains("etc/new"));
        for p in ["etc/gone", "var/cache", "var/cache/a/b", "var/cache/c"] {
            assert!(!all.contains(p), "{p} should be deleted: {all:?}");
        }
        assert!(all.iter().all(|p| !p.contains(".wh.")), "{all:?}");
        // var itself stays (only its child was whited out).
        assert!(all.contains("var"));
    }

    #[test]
    fn whiteout_spares_its_own_layer_in_any_order() {
        let l0 = tar_of(&[E::File("a/x", b"old"), E::File("b", b"old")]);
        // The upper layer writes a/ anew and b, before and after their whiteouts.
        let l1 = tar_of(&[
            E::File("a/y", b"new"),
            E::File(".wh.a", b""),
            E::File(".wh.b", b""),
            E::File("b", b"new"),
        ]);
        let g = run(&[l0, l1], 8).unwrap();
        let all = all_paths(&g);
        assert!(!all.contains("a/x"), "{all:?}");
        assert_eq!(data(find(&g[1], "a/y").unwrap()), b"new");
        assert_eq!(data(find(&g[1], "b").unwrap()), b"new");
    }

    #[test]
    fn opaque_dir_hides_lower_keeps_upper() {
        let l0 = tar_of(&[
            E::Dir("app/"),
            E::File("app/old.py", b"old"),
            E::File("app/lib/old2.py", b"old"),
            E::File("other", b"o"),
        ]);
        for l1 in [
            tar_of(&[
                E::DirMode("app/", 0o750),
                E::File("app/.wh..wh..opq", b""),
                E::File("app/new.py", b"new"),
            ]),
            // The marker after the layer's own entries changes nothing.
            tar_of(&[
                E::DirMode("app/", 0o750),
                E::File("app/new.py", b"new"),
                E::File("app/.wh..wh..opq", b""),
            ]),
        ] {
            let g = run(&[l0.clone(), zst(&l1)], 8).unwrap();
            let all = all_paths(&g);
            assert!(
                !all.contains("app/old.py") && !all.contains("app/lib"),
                "{all:?}"
            );
            assert!(all.contains("other"));
            assert_eq!(paths(&g[1]), ["app", "app/new.py"]);
            assert_eq!(find(&g[1], "app").unwrap().mode, 0o750);
            assert!(find(&g[0], "app").is_none(), "app was rewritten by layer 1");
        }
    }

    #[test]
    fn replaced_file_lives_in_the_upper_group_only() {
        let l0 = tar_of(&[
            E::File("usr/bin/tool", b"v1"),
            E::File("usr/bin/other", b"o"),
        ]);
        let l1 = tar_of(&[E::File("usr/bin/tool", b"v2")]);
        let g = run(&[l0, l1], 8).unwrap();
        assert_eq!(g.len(), 2);
        assert!(find(&g[0], "usr/bin/tool").is_none());
        assert_eq!(data(find(&g[1], "usr/bin/tool").unwrap()), b"v2");
        // The upper group carries its ancestors (a tree of its own), not the lower's files.
        assert_eq!(paths(&g[1]), ["usr", "usr/bin", "usr/bin/tool"]);
        assert_eq!(paths(&g[0]), ["usr", "usr/bin", "usr/bin/other"]);
        // Every final path is in exactly one group as a non-ancestor: the files.
        let files: Vec<&str> = g
            .iter()
            .flat_map(|g| g.entries.iter())
            .filter(|e| e.kind != FsKind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(files, ["usr/bin/other", "usr/bin/tool"]);
    }

    #[test]
    fn replacement_rules_for_directories() {
        let l0 = tar_of(&[
            E::DirMode("d/", 0o700),
            E::File("d/child", b"c"),
            E::File("e/child", b"c"),
        ]);
        let l1 = tar_of(&[E::DirMode("d/", 0o755), E::Sym("e", "/tmp")]);
        let g = run(&[l0, l1], 8).unwrap();
        let all = all_paths(&g);
        assert!(all.contains("d/child"), "a dir over a dir keeps children");
        assert!(
            !all.contains("e/child"),
            "a symlink over a dir drops its subtree"
        );
        assert_eq!(find(&g[1], "d").unwrap().mode, 0o755);
        // The ancestor copy in the lower group has the final metadata.
        assert_eq!(find(&g[0], "d").unwrap().mode, 0o755);
    }

    #[test]
    fn hard_link_copies_data_and_metadata() {
        let l0 = tar_of(&[E::FileMode("usr/bin/perl5.36", b"PERL", 0o755, 0, 2)]);
        let l1 = tar_of(&[
            E::File("usr/lib/x", b"X"),
            E::Hard("usr/bin/perl", "usr/bin/perl5.36"),
            E::Hard("./usr/lib/y", "./usr/lib/x"),
        ]);
        let g = run(&[l0, l1], 8).unwrap();
        let perl = find(&g[1], "usr/bin/perl").unwrap();
        assert_eq!((data(perl), perl.mode, perl.gid), (&b"PERL"[..], 0o755, 2));
        assert_eq!(data(find(&g[1], "usr/lib/y").unwrap()), b"X");
    }

    fn refused(blobs: &[Vec<u8>], path: &str) -> String {
        let e = format!("{:#}", run(blobs, 8).unwrap_err());
        let d = digest_of(blobs.last().unwrap());
        assert!(e.contains(&d), "{e:?} should name the layer {d}");
        assert!(e.contains(path), "{e:?} should name {path}");
        e
    }

    #[test]
    fn hostile_layers_are_refused_with_digest_and_path() {
        let base = tar_of(&[E::Sym("evil", "/etc"), E::Dir("dir/")]);
        let cases: Vec<(Vec<E>, &str)> = vec![
            (vec![E::File("../escape", b"x")], "../escape"),
            (vec![E::File("a/../../escape", b"x")], "a/../../escape"),
            (vec![E::File("/etc/passwd", b"x")], "/etc/passwd"),
            (vec![E::File("evil/passwd", b"x")], "evil/passwd"),
            (vec![E::File("evil/sub/deep", b"x")], "evil/sub/deep"),
            (vec![E::Hard("hlink1", "missing")], "hlink1"),
            (vec![E::Hard("hlink2", "../outside")], "hlink2"),
            (vec![E::Hard("hlink3", "/etc/shadow")], "hlink3"),
            (vec![E::Hard("hlink4", "dir")], "hlink4"),
            (vec![E::Dev("dev/sda", tar::EntryType::Block)], "dev/sda"),
            (vec![E::Dev("dev/mem", tar::EntryType::Char)], "dev/mem"),
            (vec![E::Dev("fifo", tar::EntryType::Fifo)], "fifo"),
            (vec![E::File(".wh...", b"")], ".wh..."),
            (vec![E::File("dir/.wh..", b"")], "dir/.wh.."),
            (vec![E::File("x/../.wh.etc", b"")], "x/../.wh.etc"),
            (vec![E::File("evil/.wh.passwd", b"")], "evil/.wh.passwd"),
        ];
        for (entries, path) in cases {
            let upper = tar_of(&entries);
            let e = refused(&[base.clone(), upper], path);
            assert!(!e.contains("internal"), "{e}");
        }
        // The parent symlink inside the same layer, written earlier in it.
        let one = gz(&tar_of(&[E::Sym("lib", "/"), E::File("lib/x", b"x")]));
        let e = refused(&[one], "lib/x");
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn symlink_targets_may_be_absolute_or_climb() {
        let t = tar_of(&[E::Sym("a", "/etc/passwd"), E::Sym("b/c", "../../../x")]);
        let g = run(&[t], 1).unwrap();
        assert_eq!(
            find(&g[0], "b/c").unwrap().kind,
            FsKind::Symlink("../../../x".into())
        );
    }

    #[test]
    fn corrupt_and_truncated_streams_are_refused() {
        let mut big = vec![0u8; 20_000];
        for (i, b) in big.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let t = tar_of(&[E::File("f", &big), E::File("g", b"g")]);
        let cut_tar = t[..5000].to_vec();
        let z = gz(&t);
        let cut_gz = z[..z.len() / 2].to_vec();
        let zs = zst(&t);
        let cut_zst = zs[..zs.len() / 2].to_vec();
        let mut bad_sum = t.clone();
        bad_sum[0] ^= 0x20; // the first header's name: checksum no longer matches
        let mut bad_crc = z.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1; // the gzip trailer's CRC32
        for blob in [cut_tar, cut_gz, cut_zst, bad_sum, bad_crc] {
            let e = format!("{:#}", run(std::slice::from_ref(&blob), 1).unwrap_err());
            assert!(e.contains(&digest_of(&blob)), "{e}");
        }
    }

    #[test]
    fn tar_bombs_stop_at_the_limit() {
        let limits = Limits {
            max_total_bytes: 1 << 20,
            max_entries: 100,
        };
        // One file of 8 MiB of zeros: refused at its header, before its data is read.
        let zeros = vec![0u8; 8 << 20];
        let one = gz(&tar_of(&[E::File("zeros", &zeros)]));
        assert!(one.len() < 64 << 10);
        let e = format!(
            "{:#}",
            run_limits(std::slice::from_ref(&one), 1, &limits).unwrap_err()
        );
        assert!(
            e.contains(&digest_of(&one)) && e.contains("zeros") && e.contains("limit"),
            "{e}"
        );
        // Many small files over two layers: the budget is the image's, not the layer's.
        let chunk = vec![1u8; 300 << 10];
        let l0 = zst(&tar_of(&[E::File("a", &chunk), E::File("b", &chunk)]));
        let l1 = zst(&tar_of(&[E::File("c", &chunk), E::File("d", &chunk)]));
        let e = format!(
            "{:#}",
            run_limits(&[l0, l1.clone()], 1, &limits).unwrap_err()
        );
        assert!(e.contains(&digest_of(&l1)) && e.contains(" d:"), "{e}");
        // Too many entries.
        let names: Vec<String> = (0..150).map(|i| format!("f{i}")).collect();
        let many: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
        let e = format!(
            "{:#}",
            run_limits(&[tar_of(&many)], 1, &limits).unwrap_err()
        );
        assert!(e.contains("more than 100 entries"), "{e}");
        // Zeros past the tar's end: stopped after 1 MiB, not drained.
        let mut t = tar_of(&[E::File("small", b"s")]);
        t.extend(std::iter::repeat_n(0u8, 32 << 20));
        let blob = gz(&t);
        let e = format!(
            "{:#}",
            run_limits(std::slice::from_ref(&blob), 1, &limits).unwrap_err()
        );
        assert!(
            e.contains(&digest_of(&blob)) && e.contains("follow the end"),
            "{e}"
        );
        // Headers past the cap on the decompressed stream (1 MiB + 100 * 4 KiB): a PAX
        // header of 2 MiB is cut off at the cap by the decompressor's reader.
        let mut b = tar::Builder::new(Vec::new());
        let recs = pax_record("comment", &"c".repeat(2 << 20));
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_path("PaxHeaders/x").unwrap();
        x.set_size(recs.len() as u64);
        x.set_cksum();
        b.append(&x, &recs[..]).unwrap();
        let mut h = header("after", tar::EntryType::Regular, 0, 0o644);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let blob = zst(&b.into_inner().unwrap());
        let e = format!(
            "{:#}",
            run_limits(std::slice::from_ref(&blob), 1, &limits).unwrap_err()
        );
        assert!(
            e.contains(&digest_of(&blob)) && e.contains("exceeds 1458176 bytes"),
            "{e}"
        );
    }

    #[test]
    fn repeated_whiteouts_over_a_large_own_tree_are_bounded() {
        let limits = Limits {
            max_total_bytes: 1 << 20,
            max_entries: 2000,
        };
        let names: Vec<String> = (0..500).map(|i| format!("d/f{i}")).collect();
        let mut entries: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
        entries.extend((0..1000).map(|_| E::File("d/.wh..wh..opq", b"")));
        let blob = tar_of(&entries);
        let e = format!(
            "{:#}",
            run_limits(std::slice::from_ref(&blob), 1, &limits).unwrap_err()
        );
        assert!(
            e.contains(&digest_of(&blob)) && e.contains("look at more than 32000"),
            "{e}"
        );
        // One marker over the same tree is fine.
        entries.truncate(501);
        run_limits(&[tar_of(&entries)], 1, &limits).unwrap();
    }

    #[test]
    fn diff_id_is_checked() {
        let t = tar_of(&[E::File("f", b"f")]);
        let z = gz(&t);
        let good = digest_of(&t);
        let bad = digest_of(b"other");
        for (diff, ok) in [(good.as_str(), true), (bad.as_str(), false)] {
            let layers = [LayerInput {
                digest: "sha256:feed",
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
                bytes: &z,
                diff_id: Some(diff),
            }];
            let r = flatten(&layers, 1, &Limits::default());
            if ok {
                r.unwrap();
            } else {
                let e = format!("{:#}", r.unwrap_err());
                assert!(
                    e.contains(&good) && e.contains(&bad) && e.contains("sha256:feed"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn more_layers_than_groups_merge_at_the_bottom() {
        let blobs: Vec<Vec<u8>> = (0..5)
            .map(|i| tar_of(&[E::File(&format!("l{i}"), b"x")]))
            .collect();
        let g = run(&blobs, 3).unwrap();
        assert_eq!(g.len(), 3);
        let d: Vec<String> = blobs.iter().map(|b| digest_of(b)).collect();
        assert_eq!(g[0].layers, d[..3]);
        assert_eq!(g[1].layers, d[3..4]);
        assert_eq!(g[2].layers, d[4..]);
        assert_eq!(paths(&g[0]), ["l0", "l1", "l2"]);
        assert_eq!(paths(&g[1]), ["l3"]);
        assert_eq!(paths(&g[2]), ["l4"]);
        // Fewer layers than groups: one group each.
        assert_eq!(run(&blobs[..2], 8).unwrap().len(), 2);
    }

    #[test]
    fn deterministic() {
        let l0 = gz(&tar_of(&[
            E::File("z", b"z"),
            E::File("a/b", b"b"),
            E::File("m/n/o", b"o"),
        ]));
        let l1 = tar_of(&[E::File("m/.wh.n", b""), E::File("b/c", b"c")]);
        let a = run(&[l0.clone(), l1.clone()], 2).unwrap();
        let b = run(&[l0, l1], 2).unwrap();
        assert_eq!(a, b);
        for g in &a {
            let p = paths(g);
            let mut s = p.clone();
            s.sort();
            assert_eq!(p, s);
        }
    }

    #[test]
    fn parse_oci_config() {
        let c = parse_config(
            br#"{"architecture":"amd64","os":"linux",
            "config":{"User":"app:app","Env":["PATH=/usr/local/bin:/usr/bin","A=1","A=2","EQ=x=y"],
              "Entrypoint":["/usr/bin/python3","app.py"],"Cmd":["--port","8080"],
              "WorkingDir":"/srv","ExposedPorts":{"9000/tcp":{},"8080":{},"53/udp":{}},
              "StopSignal":"SIGINT","Labels":{"org.opencontainers.image.version":"1.2"}},
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},
            "history":[{"created_by":"x"}]}"#,
        )
        .unwrap();
        assert_eq!((c.architecture.as_str(), c.os.as_str()), ("amd64", "linux"));
        assert_eq!(c.entrypoint, ["/usr/bin/python3", "app.py"]);
        assert_eq!(c.cmd, ["--port", "8080"]);
        assert_eq!(
            c.env,
            [
                ("PATH".to_string(), "/usr/local/bin:/usr/bin".to_string()),
                ("A".into(), "2".into()),
                ("EQ".into(), "x=y".into())
            ]
        );
        assert_eq!(c.user.as_deref(), Some("app:app"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.exposed_ports, [8080, 9000]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.labels["org.opencontainers.image.version"], "1.2");
        assert_eq!(c.diff_ids.len(), 1);
    }

    #[test]
    fn parse_docker_v1_config() {
        // What `docker save` writes: nulls, container_config, a string Cmd.
        let c = parse_config(
            br##"{"architecture":"amd64","config":{"Hostname":"","User":"","Env":null,
              "Cmd":"/bin/sh","Entrypoint":null,"WorkingDir":"","Labels":null,
              "ExposedPorts":null,"OnBuild":null},
              "container_config":{"Cmd":["/bin/sh","-c","#(nop) CMD"]},
              "docker_version":"24.0.0","os":"linux","rootfs":{"type":"layers","diff_ids":null}}"##,
        )
        .unwrap();
        assert_eq!(c.cmd, ["/bin/sh"]);
        assert!(c.entrypoint.is_empty() && c.env.is_empty() && c.labels.is_empty());
        assert_eq!((c.user, c.working_dir, c.stop_signal), (None, None, None));
        assert!(c.exposed_ports.is_empty() && c.diff_ids.is_empty());
        // An empty object is an empty config.
        assert_eq!(parse_config(b"{}").unwrap(), ContainerConfig::default());
    }

    #[test]
    fn parse_config_refusals() {
        for (bad, what) in [
            (&br#"{"config":{"Env":["NOEQUALS"]}}"#[..], "NOEQUALS"),
            (br#"{"config":{"Env":["=v"]}}"#, "empty name"),
            (
                br#"{"config":{"ExposedPorts":{"http/tcp":{}}}}"#,
                "http/tcp",
            ),
            (br#"{"config":{"ExposedPorts":{"70000/tcp":{}}}}"#, "70000"),
            (br#"{"config":{"ExposedPorts":{"0":{}}}}"#, "\"0\""),
            (br#"{"rootfs":{"diff_ids":["md5:00"]}}"#, "md5:00"),
            (b"[1,2]", "JSON"),
        ] {
            let e = format!("{:#}", parse_config(bad).unwrap_err());
            assert!(e.contains(what), "{e} should name {what}");
        }
        let mut huge = br#"{"config":{"Labels":{"a":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_CONFIG_BYTES));
        huge.extend(br#""}}}"#);
        assert!(format!("{:#}", parse_config(&huge).unwrap_err()).contains("bytes"));
    }

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\n\
        app:x:1000:1001::/home/app:/bin/sh\nweb:x:33:33::/var/www:/usr/sbin/nologin\n";
    const GROUP: &[u8] = b"root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    #[test]
    fn users() {
        let r = |u: Option<&str>| resolve_user(u, Some(PASSWD), Some(GROUP));
        assert_eq!(r(None).unwrap(), (0, 0));
        assert_eq!(r(Some("")).unwrap(), (0, 0));
        assert_eq!(r(Some("app")).unwrap(), (1000, 1001));
        assert_eq!(
            r(Some("1000")).unwrap(),
            (1000, 1001),
            "uid in passwd: its gid"
        );
        assert_eq!(
            r(Some("4242")).unwrap(),
            (4242, 0),
            "uid not in passwd: gid 0"
        );
        assert_eq!(r(Some("1000:7")).unwrap(), (1000, 7));
        assert_eq!(r(Some("app:staff")).unwrap(), (1000, 50));
        assert_eq!(r(Some("web:0")).unwrap(), (33, 0));
        assert_eq!(r(Some("5:staff")).unwrap(), (5, 50));
        let e = format!("{:#}", r(Some("nobody")).unwrap_err());
        assert!(e.contains("\"nobody\"") && !e.contains("has no"), "{e}");
        let e = format!("{:#}", r(Some("app:wheel")).unwrap_err());
        assert!(e.contains("\"wheel\""), "{e}");
        let e = format!("{:#}", resolve_user(Some("app"), None, None).unwrap_err());
        assert!(
            e.contains("\"app\"") && e.contains("has no /etc/passwd"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            resolve_user(Some("1:g"), Some(PASSWD), None).unwrap_err()
        );
        assert!(e.contains("has no /etc/group"), "{e}");
        // Numeric users need no passwd at all.
        assert_eq!(
            resolve_user(Some("65534:65534"), None, None).unwrap(),
            (65534, 65534)
        );
        assert!(resolve_user(Some("99999999999"), None, None).is_err());
        assert!(resolve_user(Some("app:"), Some(PASSWD), None).is_err());
    }

    #[test]
    fn programs() {
        let fs = ["/usr/bin/python3", "/usr/local/bin/app", "/opt/bin/tool"];
        let is = |p: &str| fs.contains(&p);
        assert_eq!(
            resolve_program("python3", None, is).unwrap(),
            "/usr/bin/python3"
        );
        assert_eq!(
            resolve_program("app", None, is).unwrap(),
            "/usr/local/bin/app"
        );
        assert_eq!(
            resolve_program("tool", Some("relative:/opt/bin/:/usr/bin"), is).unwrap(),
            "/opt/bin/tool"
        );
        assert_eq!(
            resolve_program("/opt/bin/tool", None, is).unwrap(),
            "/opt/bin/tool"
        );
        let e = format!("{:#}", resolve_program("tool", None, is).unwrap_err());
        assert!(e.contains("\"tool\"") && e.contains(DEFAULT_PATH), "{e}");
        let e = format!("{:#}", resolve_program("./run.sh", None, is).unwrap_err());
        assert!(e.contains("relative path"), "{e}");
        assert!(resolve_program("/missing", None, is).is_err());
        assert!(resolve_program("", None, is).is_err());
    }

    #[test]
    fn stop_signals_by_name_or_number() {
        assert_eq!(stop_signal("SIGINT").unwrap(), Some("SIGINT"));
        assert_eq!(stop_signal("quit").unwrap(), Some("SIGQUIT"));
        assert_eq!(stop_signal("SIGWINCH").unwrap(), Some("SIGWINCH"));
        assert_eq!(stop_signal("10").unwrap(), Some("SIGUSR1"));
        assert_eq!(stop_signal("sigterm").unwrap(), None);
        assert_eq!(stop_signal("15").unwrap(), None);
        for bad in [
            "SIGFOO",
            "SIGSTOP",
            "19",
            "0",
            "300",
            "",
            "SIGRTMIN+3",
            "SIG INT",
        ] {
            let e = format!("{:#}", stop_signal(bad).unwrap_err());
            assert!(
                e.contains("StopSignal") && e.contains("SIGUSR2"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn stop_signals_are_the_inits() {
        let init = include_str!("../../init/src/app.rs");
        for (name, _) in STOP_SIGNALS {
            assert!(
                init.contains(&format!("(\"{name}\", libc::{name})")),
                "init/src/app.rs's STOP_SIGNALS lacks {name}"
            );
        }
        let table = init
            .split_once("pub const STOP_SIGNALS")
            .and_then(|(_, t)| t.split_once("];"))
            .map(|(t, _)| t)
            .expect("init/src/app.rs has STOP_SIGNALS");
        assert_eq!(
            table.matches(", libc::SIG").count(),
            STOP_SIGNALS.len(),
            "init/src/app.rs's STOP_SIGNALS has signals oci::container::STOP_SIGNALS lacks"
        );
    }

    #[test]
    fn default_path_is_the_inits() {
        let init = include_str!("../../init/src/app.rs");
        assert!(
            init.contains(&format!(
                "pub const DEFAULT_PATH: &str = \"{DEFAULT_PATH}\";"
            )),
            "init/src/app.rs's DEFAULT_PATH changed: update oci::container::DEFAULT_PATH"
        );
    }
}
