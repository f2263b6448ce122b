//! squashfs 4.0: a deterministic writer and a bounds-checked reader for the read-only
//! layer file systems the Linux kernel mounts.
//!
//! # On-disk layout written (all integers little-endian)
//!
//! | part            | contents                                                        |
//! |-----------------|-----------------------------------------------------------------|
//! | superblock      | 96 bytes at offset 0 (see [`Superblock`])                       |
//! | data            | file data blocks and fragment blocks, files in path order       |
//! | inode table     | metadata blocks holding the inodes                              |
//! | directory table | metadata blocks holding the directory listings                  |
//! | fragment table  | metadata blocks of 16-byte fragment entries, then a u64 index   |
//! | id table        | metadata blocks of u32 uids/gids, then a u64 index              |
//! | padding         | zeros up to a multiple of 4 KiB (`bytes_used` excludes it)      |
//!
//! A *metadata block* is a 2-byte header followed by at most 8 KiB of data: the header's
//! low 15 bits are the stored length, bit 15 (0x8000) says "stored uncompressed". Tables
//! are streams of such blocks, each holding 8 KiB of the uncompressed stream (the last one
//! less). An *inode reference* is `(block start relative to the table start) << 16 |
//! offset inside the uncompressed block`.
//!
//! # Choices made by the writer
//!
//! - The root directory is implicit in a [`Tree`]: it is written with mode 0755,
//!   uid/gid 0 and mtime = [`Options::mkfs_time`]. [`read`] drops it again.
//! - Inode numbers are 1..=n in inode-table order: for each directory, first its
//!   subdirectories (recursively, in name order), then its other children in name
//!   order, then the directory itself. The root is therefore inode n; its parent is
//!   recorded as n + 1, as mksquashfs does.
//! - Tail packing: files smaller than one block are packed into shared fragment
//!   blocks; bigger files keep their tail as a short last block (mksquashfs' default).
//! - Identical file contents are stored once (both inodes point at the same blocks).
//! - A data or metadata block whose compressed form is not smaller is stored raw
//!   (data: bit 24 of its size word; metadata: bit 15 of its header).
//! - No export table, no xattrs, no sparse blocks, no compressor options block (the
//!   xz dictionary is the block size, which is the kernel's default expectation).
//! - The id table holds every uid/gid in ascending order.
//! - Data blocks are compressed on several threads; each block is compressed on its
//!   own, so the bytes do not depend on the thread count.
//!
//! # Reader
//!
//! [`read`] reads every structure with bounds checks, refuses directory cycles,
//! unsorted or duplicate names and unsupported inode types (block devices, fifos and
//! sockets cannot be represented in a [`Tree`]), and caps the total decompressed size at
//! 64 MiB + 64 x the image size, so hostile bytes give an error, never a panic or an
//! unbounded allocation. It also reads images made by mksquashfs (gzip or xz): sparse
//! blocks, tail fragments, extended inodes and directory indexes are understood;
//! xattrs and the export table are ignored; hard links come back as separate entries
//! sharing one contents buffer.

use crate::tree::{Kind, Node, Tree};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// "hsqs" read as a little-endian u32.
pub const MAGIC: u32 = 0x7371_7368;
/// Size of the superblock at offset 0.
const SUPERBLOCK_SIZE: usize = 96;
/// Uncompressed size of a full metadata block.
const METADATA_SIZE: usize = 8192;
/// Metadata block header bit: the block is stored uncompressed.
const META_UNCOMPRESSED: u16 = 0x8000;
/// Data block / fragment size word bit: the block is stored uncompressed.
const DATA_UNCOMPRESSED: u32 = 1 << 24;
/// "Absent" value for optional table starts (xattr, export).
const INVALID_BLOCK: u64 = u64::MAX;
/// File inode `fragment` value meaning "no fragment".
const NO_FRAGMENT: u32 = u32::MAX;
/// Inode `xattr` value meaning "no extended attributes".
const NO_XATTR: u32 = u32::MAX;
/// At most this many entries follow one directory header.
const DIR_MAX_ENTRIES: usize = 256;
/// Longest name a directory entry can hold.
const NAME_MAX: usize = 256;
/// Longest symlink target the kernel accepts (PAGE_SIZE).
const SYMLINK_MAX: usize = 4096;
/// Fragment entries per metadata block (16 bytes each).
const FRAGMENT_ENTRIES_PER_BLOCK: usize = METADATA_SIZE / 16;
/// Ids per metadata block (4 bytes each).
const IDS_PER_BLOCK: usize = METADATA_SIZE / 4;

// Inode types (the `inode_type` field of every inode header).
const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLKDEV: u16 = 4;
const T_CHRDEV: u16 = 5;
const T_FIFO: u16 = 6;
const T_SOCKET: u16 = 7;
const T_LDIR: u16 = 8;
const T_LFILE: u16 = 9;
const T_LSYMLINK: u16 = 10;
const T_LBLKDEV: u16 = 11;
const T_LCHRDEV: u16 = 12;
const T_LFIFO: u16 = 13;
const T_LSOCKET: u16 = 14;

// Superblock flags.
/// Duplicate files were detected and stored once.
const FLAG_DUPLICATES: u16 = 0x0040;
/// The image holds no xattrs.
const FLAG_NO_XATTRS: u16 = 0x0200;

/// Squashfs compressor ids (superblock `compression`).
const COMP_GZIP: u16 = 1;
const COMP_XZ: u16 = 4;
const COMP_ZSTD: u16 = 6;

/// The zstd level of data and metadata blocks (each block one frame whose window is the
/// block itself, as the kernel's decoder, sized to the block size, requires).
const ZSTD_LEVEL: i32 = 19;

/// Memory limit given to the xz decoder (the kernel's own is the block size).
const XZ_DECODER_MEMLIMIT: u64 = 64 << 20;

/// Block compressor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A zlib stream (RFC 1950), squashfs compressor id 1 ("gzip").
    Gzip,
    /// An xz stream with one LZMA2 filter and a CRC32 check, squashfs compressor id 4.
    Xz,
    /// One zstd frame with its content size, squashfs compressor id 6.
    Zstd,
}

impl Compression {
    fn id(self) -> u16 {
        match self {
            Compression::Gzip => COMP_GZIP,
            Compression::Xz => COMP_XZ,
            Compression::Zstd => COMP_ZSTD,
        }
    }
}

/// Writer options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub compression: Compression,
    /// Data block size: a power of two from 4 KiB to 1 MiB (default 128 KiB).
    pub block_size: u32,
    /// Superblock creation time, also used as the root directory's mtime.
    pub mkfs_time: u32,
    /// Compression threads (0: the machine's parallelism, at most 8). The bytes do not
    /// depend on it.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            compression: Compression::Xz,
            block_size: 131072,
            mkfs_time: 0,
            threads: 0,
        }
    }
}

/// The 96-byte superblock at offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Superblock {
    /// Number of inodes (including the root).
    inodes: u32,
    /// Creation time, seconds since the epoch.
    mkfs_time: u32,
    /// Data block size (power of two, 4 KiB..=1 MiB).
    block_size: u32,
    /// Number of entries in the fragment table.
    fragments: u32,
    /// Compressor id (1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd).
    compression: u16,
    /// log2(block_size).
    block_log: u16,
    /// Feature flags (FLAG_*).
    flags: u16,
    /// Number of entries in the id table.
    no_ids: u16,
    /// Format version: 4.0.
    major: u16,
    minor: u16,
    /// Inode reference of the root directory.
    root_inode: u64,
    /// Bytes used by the file system (without the padding).
    bytes_used: u64,
    /// Absolute offset of the id table's u64 index.
    id_table_start: u64,
    /// Absolute offset of the xattr id table, or INVALID_BLOCK.
    xattr_id_table_start: u64,
    /// Absolute offset of the first inode table metadata block.
    inode_table_start: u64,
    /// Absolute offset of the first directory table metadata block.
    directory_table_start: u64,
    /// Absolute offset of the fragment table's u64 index.
    fragment_table_start: u64,
    /// Absolute offset of the export (inode lookup) table's index, or INVALID_BLOCK.
    lookup_table_start: u64,
}

impl Superblock {
    fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.inodes.to_le_bytes());
        b.extend_from_slice(&self.mkfs_time.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.fragments.to_le_bytes());
        for v in [
            self.compression,
            self.block_log,
            self.flags,
            self.no_ids,
            self.major,
            self.minor,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.root_inode,
            self.bytes_used,
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.lookup_table_start,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out.copy_from_slice(&b);
        out
    }

    fn parse(image: &[u8]) -> Result<Superblock> {
        let head = image.get(..SUPERBLOCK_SIZE).ok_or_else(|| {
            anyhow!(
                "image is {} bytes, shorter than the {SUPERBLOCK_SIZE}-byte superblock",
                image.len()
            )
        })?;
        let mut c = Cur::new(head, "superblock");
        let magic = c.u32()?;
        ensure!(
            magic == MAGIC,
            "bad squashfs magic: expected {MAGIC:#010x} (\"hsqs\"), got {magic:#010x}"
        );
        let sb = Superblock {
            inodes: c.u32()?,
            mkfs_time: c.u32()?,
            block_size: c.u32()?,
            fragments: c.u32()?,
            compression: c.u16()?,
            block_log: c.u16()?,
            flags: c.u16()?,
            no_ids: c.u16()?,
            major: c.u16()?,
            minor: c.u16()?,
            root_inode: c.u64()?,
            bytes_used: c.u64()?,
            id_table_start: c.u64()?,
            xattr_id_table_start: c.u64()?,
            inode_table_start: c.u64()?,
            directory_table_start: c.u64()?,
            fragment_table_start: c.u64()?,
            lookup_table_start: c.u64()?,
        };
        ensure!(
            (sb.major, sb.minor) == (4, 0),
            "unsupported squashfs version: expected 4.0, got {}.{}",
            sb.major,
            sb.minor
        );
        check_block_size(sb.block_size)?;
        ensure!(
            sb.block_size == 1 << sb.block_log.min(31),
            "superblock block_log {} does not match block_size {}",
            sb.block_log,
            sb.block_size
        );
        ensure!(
            [COMP_GZIP, COMP_XZ, COMP_ZSTD].contains(&sb.compression),
            "unsupported squashfs compressor id {} (only 1 = gzip, 4 = xz and 6 = zstd are read)",
            sb.compression
        );
        ensure!(
            sb.bytes_used <= image.len() as u64,
            "superblock bytes_used {} exceeds the image size {}",
            sb.bytes_used,
            image.len()
        );
        ensure!(
            (sb.root_inode & 0xFFFF) < METADATA_SIZE as u64,
            "root inode offset {} is outside an 8 KiB metadata block",
            sb.root_inode & 0xFFFF
        );
        ensure!(
            SUPERBLOCK_SIZE as u64 <= sb.inode_table_start
                && sb.inode_table_start < sb.directory_table_start
                && sb.directory_table_start <= sb.bytes_used,
            "table offsets out of order: inode table {}, directory table {}, bytes used {}",
            sb.inode_table_start,
            sb.directory_table_start,
            sb.bytes_used
        );
        ensure!(sb.no_ids > 0, "superblock says the id table is empty");
        Ok(sb)
    }
}

fn check_block_size(bs: u32) -> Result<()> {
    ensure!(
        bs.is_power_of_two() && (4096..=1 << 20).contains(&bs),
        "squashfs block size must be a power of two from 4096 to 1048576, got {bs}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Compressor {
    kind: Compression,
    block_size: u32,
    /// Threads compressing blocks at once ([`Options::threads`]).
    threads: usize,
}

impl Compressor {
    /// Compress one block; `None` when the result would not be smaller (store it raw).
    fn compress(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        if data.is_empty() {
            return Ok(None);
        }
        let out = match self.kind {
            Compression::Gzip => {
                let mut e = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 64),
                    flate2::Compression::best(),
                );
                e.write_all(data).context("zlib compression failed")?;
                e.finish().context("zlib compression failed")?
            }
            Compression::Xz => xz_compress(data, self.block_size)?,
            Compression::Zstd => {
                zstd::bulk::compress(data, ZSTD_LEVEL).context("zstd compression failed")?
            }
        };
        Ok(if out.len() < data.len() {
            Some(out)
        } else {
            None
        })
    }
}

/// One xz stream: LZMA2 (preset 9, dictionary = block size so the kernel's
/// preallocated decoder accepts it) and a CRC32 check.
fn xz_compress(data: &[u8], dict_size: u32) -> Result<Vec<u8>> {
    use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let mut opts = LzmaOptions::new_preset(9).context("xz preset 9")?;
    opts.dict_size(dict_size);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let mut s = Stream::new_stream_encoder(&filters, Check::Crc32)
        .context("cannot set up the xz encoder")?;
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 256);
    loop {
        let consumed = usize::try_from(s.total_in()).context("xz input position")?;
        let rest = data.get(consumed..).unwrap_or_default();
        if out.len() == out.capacity() {
            out.reserve(4096);
        }
        match s
            .process_vec(rest, &mut out, Action::Finish)
            .context("xz compression failed")?
        {
            Status::StreamEnd => return Ok(out),
            _ => continue,
        }
    }
}

/// Decompress one block of at most `limit` bytes.
fn decompress(kind: u16, input: &[u8], limit: usize) -> Result<Vec<u8>> {
    match kind {
        COMP_GZIP => inflate(input, limit),
        COMP_XZ => unxz(input, limit),
        COMP_ZSTD => zstd::bulk::decompress(input, limit)
            .map_err(|e| anyhow!("corrupt zstd block ({} bytes): {e}", input.len())),
        other => bail!("unsupported compressor id {other}"),
    }
}

fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut d = Decompress::new(true);
    let mut out = Vec::with_capacity(limit + 1);
    loop {
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let pos = usize::try_from(in_before).context("zlib input position")?;
        let rest = input.get(pos..).unwrap_or_default();
        let st = d
            .decompress_vec(rest, &mut out, FlushDecompress::Finish)
            .map_err(|e| anyhow!("corrupt zlib block: {e}"))?;
        ensure!(
            out.len() <= limit,
            "zlib block decompresses to more than {limit} bytes"
        );
        if st == Status::StreamEnd {
            return Ok(out);
        }
        if (d.total_in(), d.total_out()) == (in_before, out_before) {
            bail!("truncated zlib block ({} bytes)", input.len());
        }
    }
}

fn unxz(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    use liblzma::stream::{Action, Status, Stream};
    let mut s = Stream::new_stream_decoder(XZ_DECODER_MEMLIMIT, 0)
        .context("cannot set up the xz decoder")?;
    let mut out = Vec::with_capacity(limit + 1);
    loop {
        let (in_before, out_before) = (s.total_in(), s.total_out());
        let pos = usize::try_from(in_before).context("xz input position")?;
        let rest = input.get(pos..).unwrap_or_default();
        let st = s
            .process_vec(rest, &mut out, Action::Finish)
            .map_err(|e| anyhow!("corrupt xz block: {e}"))?;
        ensure!(
            out.len() <= limit,
            "xz block decompresses to more than {limit} bytes"
        );
        if matches!(st, Status::StreamEnd) {
            return Ok(out);
        }
        if (s.total_in(), s.total_out()) == (in_before, out_before) {
            bail!("truncated xz block ({} bytes)", input.len());
        }
    }
}

/// What one compression thread returns: (job index, compressed bytes or None = raw).
type Compressed = Result<Vec<(usize, Option<Vec<u8>>)>>;

/// Compress `jobs` on a few threads; element i of the result belongs to job i.
fn compress_all(comp: Compressor, jobs: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
    let threads = match comp.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8),
        n => n,
    }
    .min(jobs.len().max(1));
    if threads == 1 {
        return jobs.iter().map(|j| comp.compress(j)).collect();
    }
    let next = AtomicUsize::new(0);
    let parts: Vec<Compressed> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Compressed {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, comp.compress(job)?));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a compression thread panicked")))
            })
            .collect()
    });
    let mut results: Vec<Option<Option<Vec<u8>>>> = vec![None; jobs.len()];
    for part in parts {
        for (i, r) in part? {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| anyhow!("block {i} was never compressed")))
        .collect()
}

// ---------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------

/// A stream of metadata blocks being written: full 8 KiB blocks are compressed as soon
/// as they fill, so the position of what is written next is always known.
struct MetaWriter {
    comp: Compressor,
    /// Store every block uncompressed (tests use it to patch tables in place).
    raw: bool,
    /// Finished (header + stored bytes) blocks.
    out: Vec<u8>,
    /// Start of each finished block inside `out`.
    block_starts: Vec<u64>,
    /// The block being filled (< 8 KiB).
    buf: Vec<u8>,
}

impl MetaWriter {
    fn new(comp: Compressor, raw: bool) -> MetaWriter {
        MetaWriter {
            comp,
            raw,
            out: Vec::new(),
            block_starts: Vec::new(),
            buf: Vec::with_capacity(METADATA_SIZE),
        }
    }

    /// Where the next byte goes: (block start relative to the table, offset in block).
    fn pos(&self) -> (u64, u16) {
        // buf.len() < METADATA_SIZE (8192) always holds between writes.
        (self.out.len() as u64, self.buf.len() as u16)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = METADATA_SIZE - self.buf.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.buf.len() == METADATA_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.block_starts.push(self.out.len() as u64);
        let compressed = if self.raw {
            None
        } else {
            self.comp.compress(&self.buf)?
        };
        match compressed {
            // The header's low 15 bits: stored length (< 8 KiB here).
            Some(c) => {
                self.out.extend_from_slice(&(c.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&c);
            }
            None => {
                let header = self.buf.len() as u16 | META_UNCOMPRESSED;
                self.out.extend_from_slice(&header.to_le_bytes());
                self.out.extend_from_slice(&self.buf);
            }
        }
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>)> {
        self.flush()?;
        Ok((self.out, self.block_starts))
    }
}

/// One node of the tree being written (index 0 is the root).
struct WNode<'a> {
    name: &'a str,
    node: &'a Node,
    parent: usize,
    children: Vec<usize>,
}

/// Where a file's data went.
#[derive(Clone, Debug, Default)]
struct FileData {
    /// Absolute offset of the first data block (0 when there is none).
    start: u64,
    /// Size word of each block: stored length | DATA_UNCOMPRESSED when raw.
    blocks: Vec<u32>,
    /// Fragment index, or NO_FRAGMENT.
    fragment: u32,
    /// Offset of the tail inside the uncompressed fragment block.
    frag_offset: u32,
}

/// How a file's contents are planned before compression.
enum Plan {
    Empty,
    /// Pieces `first..first + count` of the data area.
    Blocks {
        first: usize,
        count: usize,
    },
    Fragment {
        index: u32,
        offset: u32,
    },
}

/// One compressed unit of the data area.
enum Piece<'a> {
    Block(&'a [u8]),
    Fragment(usize),
}

/// Write `tree` as a squashfs 4.0 image (padded to a multiple of 4 KiB).
pub fn write(tree: &Tree, opts: &Options) -> Result<Vec<u8>> {
    write_impl(tree, opts, false)
}

/// [`write`], optionally with every metadata block stored uncompressed.
fn write_impl(tree: &Tree, opts: &Options, raw_metadata: bool) -> Result<Vec<u8>> {
    check_block_size(opts.block_size)?;
    let comp = Compressor {
        kind: opts.compression,
        block_size: opts.block_size,
        threads: opts.threads,
    };

    let root = Node {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: u64::from(opts.mkfs_time),
    };
    let nodes = index_tree(tree, &root)?;
    let n_inodes = u32::try_from(nodes.len())
        .ok()
        .filter(|n| *n < u32::MAX)
        .ok_or_else(|| anyhow!("too many files for squashfs: {}", nodes.len()))?;

    // --- Id table: every uid/gid, ascending. ---
    let id_set: BTreeSet<u32> = nodes
        .iter()
        .flat_map(|n| [n.node.uid, n.node.gid])
        .collect();
    let ids: Vec<u32> = id_set.into_iter().collect();
    let no_ids = u16::try_from(ids.len()).map_err(|_| {
        anyhow!(
            "squashfs holds at most 65535 distinct uids/gids, got {}",
            ids.len()
        )
    })?;
    let id_index = |id: u32| -> Result<u16> {
        let i = ids
            .binary_search(&id)
            .map_err(|_| anyhow!("internal: id {id} missing from the id table"))?;
        u16::try_from(i).context("id index")
    };

    // --- Inode order and numbers (see the module docs). ---
    let order = inode_order(&nodes);
    let mut number = vec![0u32; nodes.len()];
    for (k, &i) in order.iter().enumerate() {
        if let Some(slot) = number.get_mut(i) {
            *slot = k as u32 + 1;
        }
    }

    // --- Data blocks and fragment blocks, right after the superblock. ---
    let mut image = vec![0u8; SUPERBLOCK_SIZE];
    let data = write_data(&nodes, comp, &mut image)?;

    // --- Inode and directory tables, children before parents. ---
    let mut inodes = MetaWriter::new(comp, raw_metadata);
    let mut dirs = MetaWriter::new(comp, raw_metadata);
    let mut inode_ref: Vec<(u64, u16)> = vec![(0, 0); nodes.len()];
    for &i in &order {
        let wn = &nodes[i];
        let node = wn.node;
        let mtime = u32::try_from(node.mtime).map_err(|_| {
            anyhow!(
                "mtime {} of {:?} does not fit squashfs' 32-bit time",
                node.mtime,
                path_of(&nodes, i)
            )
        })?;
        // Common inode header: inode_type, mode (permission bits), uid and gid (id
        // table indexes), mtime, inode_number.
        let header = |ty: u16| -> Result<Vec<u8>> {
            let mut h = Vec::with_capacity(64);
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(&((node.mode & 0o7777) as u16).to_le_bytes());
            h.extend_from_slice(&id_index(node.uid)?.to_le_bytes());
            h.extend_from_slice(&id_index(node.gid)?.to_le_bytes());
            h.extend_from_slice(&mtime.to_le_bytes());
            h.extend_from_slice(&number[i].to_le_bytes());
            Ok(h)
        };
        let (ty, body) = match &node.kind {
            Kind::Dir => {
                let listing = write_listing(&mut dirs, &nodes, i, &inode_ref, &number)?;
                let subdirs = wn
                    .children
                    .iter()
                    .filter(|&&c| nodes[c].node.kind == Kind::Dir)
                    .count() as u32;
                let parent_number = if i == 0 {
                    n_inodes + 1
                } else {
                    number[wn.parent]
                };
                dir_inode_body(&listing, 2 + subdirs, parent_number)?
            }
            Kind::File(contents) => {
                let fd = data.file_of[i]
                    .and_then(|f| data.files.get(f))
                    .ok_or_else(|| anyhow!("internal: file without data"))?;
                file_inode_body(fd, contents.len() as u64)
            }
            Kind::Symlink(target) => {
                // struct squashfs_symlink_inode: nlink, target size, target
                let mut b = Vec::with_capacity(8 + target.len());
                b.extend_from_slice(&1u32.to_le_bytes());
                b.extend_from_slice(&(target.len() as u32).to_le_bytes());
                b.extend_from_slice(target.as_bytes());
                (T_SYMLINK, b)
            }
            Kind::CharDev { major, minor } => {
                // struct squashfs_dev_inode: nlink, rdev in the kernel's new_encode_dev form
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&1u32.to_le_bytes());
                let rdev = (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12);
                b.extend_from_slice(&rdev.to_le_bytes());
                (T_CHRDEV, b)
            }
        };
        let mut ino = header(ty)?;
        ino.extend_from_slice(&body);
        inode_ref[i] = inodes.pos();
        inodes.write(&ino)?;
    }
    let root_ref = inode_ref[0];
    let (inode_table, _) = inodes.finish()?;
    let (dir_table, _) = dirs.finish()?;

    let inode_table_start = image.len() as u64;
    image.extend_from_slice(&inode_table);
    let directory_table_start = image.len() as u64;
    image.extend_from_slice(&dir_table);

    // --- Fragment table: entries {start u64, size u32, unused u32}, then the index. ---
    let mut frags = MetaWriter::new(comp, raw_metadata);
    for (start, word) in &data.fragments {
        let mut e = Vec::with_capacity(16);
        e.extend_from_slice(&start.to_le_bytes());
        e.extend_from_slice(&word.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        frags.write(&e)?;
    }
    let fragment_table_start = append_indexed_table(&mut image, frags)?;

    // --- Id table: u32 ids, then the index. ---
    let mut idw = MetaWriter::new(comp, raw_metadata);
    for id in &ids {
        idw.write(&id.to_le_bytes())?;
    }
    let id_table_start = append_indexed_table(&mut image, idw)?;
    let bytes_used = image.len() as u64;

    let sb = Superblock {
        inodes: n_inodes,
        mkfs_time: opts.mkfs_time,
        block_size: opts.block_size,
        fragments: u32::try_from(data.fragments.len()).context("too many fragments")?,
        compression: opts.compression.id(),
        block_log: opts.block_size.trailing_zeros() as u16,
        flags: FLAG_DUPLICATES | FLAG_NO_XATTRS,
        no_ids,
        major: 4,
        minor: 0,
        root_inode: (root_ref.0 << 16) | u64::from(root_ref.1),
        bytes_used,
        id_table_start,
        xattr_id_table_start: INVALID_BLOCK,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        lookup_table_start: INVALID_BLOCK,
    };
    image[..SUPERBLOCK_SIZE].copy_from_slice(&sb.to_bytes());
    let padded = image.len().div_ceil(4096) * 4096;
    image.resize(padded, 0);
    Ok(image)
}

/// The part of a directory inode after the common header: a basic
/// `squashfs_dir_inode` when it fits, else a `squashfs_ldir_inode` plus its index.
fn dir_inode_body(listing: &Listing, nlink: u32, parent: u32) -> Result<(u16, Vec<u8>)> {
    let file_size = listing.size + 3;
    let start_block =
        u32::try_from(listing.start.0).context("directory table larger than 4 GiB")?;
    let mut b = Vec::with_capacity(24);
    if listing.index.is_empty() && file_size <= 0xFFFF {
        // start_block, nlink, file_size (u16), offset, parent_inode
        b.extend_from_slice(&start_block.to_le_bytes());
        b.extend_from_slice(&nlink.to_le_bytes());
        b.extend_from_slice(&(file_size as u16).to_le_bytes());
        b.extend_from_slice(&listing.start.1.to_le_bytes());
        b.extend_from_slice(&parent.to_le_bytes());
        return Ok((T_DIR, b));
    }
    // nlink, file_size, start_block, parent_inode, i_count, offset, xattr, then the
    // index entries: listing offset, directory block, name size - 1, name
    b.extend_from_slice(&nlink.to_le_bytes());
    b.extend_from_slice(&file_size.to_le_bytes());
    b.extend_from_slice(&start_block.to_le_bytes());
    b.extend_from_slice(&parent.to_le_bytes());
    let count = u16::try_from(listing.index.len())
        .context("directory index has more than 65535 entries")?;
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&listing.start.1.to_le_bytes());
    b.extend_from_slice(&NO_XATTR.to_le_bytes());
    for (index, block, name) in &listing.index {
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&block.to_le_bytes());
        b.extend_from_slice(&(name.len() as u32 - 1).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
    }
    Ok((T_LDIR, b))
}

/// The part of a file inode after the common header: a basic `squashfs_reg_inode`
/// when the data start and size fit 32 bits, else a `squashfs_lreg_inode`.
fn file_inode_body(fd: &FileData, size: u64) -> (u16, Vec<u8>) {
    let mut b = Vec::with_capacity(40 + 4 * fd.blocks.len());
    let ty = match (u32::try_from(fd.start), u32::try_from(size)) {
        (Ok(start), Ok(size)) => {
            // start_block, fragment, offset, file_size
            b.extend_from_slice(&start.to_le_bytes());
            b.extend_from_slice(&fd.fragment.to_le_bytes());
            b.extend_from_slice(&fd.frag_offset.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            T_FILE
        }
        _ => {
            // start_block, file_size, sparse bytes, nlink, fragment, offset, xattr
            b.extend_from_slice(&fd.start.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&fd.fragment.to_le_bytes());
            b.extend_from_slice(&fd.frag_offset.to_le_bytes());
            b.extend_from_slice(&NO_XATTR.to_le_bytes());
            T_LFILE
        }
    };
    // Then the block list: one size word per data block.
    for w in &fd.blocks {
        b.extend_from_slice(&w.to_le_bytes());
    }
    (ty, b)
}

/// The tree as an indexed hierarchy: index 0 is the root, children in name order.
fn index_tree<'a>(tree: &'a Tree, root: &'a Node) -> Result<Vec<WNode<'a>>> {
    let mut nodes: Vec<WNode> = vec![WNode {
        name: "",
        node: root,
        parent: 0,
        children: Vec::new(),
    }];
    let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
    by_path.insert("", 0);
    for (path, node) in tree.iter() {
        let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = *by_path
            .get(parent_path)
            .ok_or_else(|| anyhow!("tree entry {path:?} has no parent directory"))?;
        let parent_node = nodes
            .get(parent)
            .ok_or_else(|| anyhow!("internal: bad parent index"))?;
        ensure!(
            parent_node.node.kind == Kind::Dir,
            "tree entry {path:?}: parent {parent_path:?} is not a directory"
        );
        ensure!(
            !name.is_empty() && name.len() <= NAME_MAX,
            "name {name:?} of {path:?} must be 1 to {NAME_MAX} bytes long"
        );
        ensure!(
            !name.contains('\0') && name != "." && name != "..",
            "invalid file name in {path:?}"
        );
        check_node(path, node)?;
        let idx = nodes.len();
        nodes.push(WNode {
            name,
            node,
            parent,
            children: Vec::new(),
        });
        if let Some(p) = nodes.get_mut(parent) {
            p.children.push(idx);
        }
        by_path.insert(path, idx);
    }
    Ok(nodes)
}

/// Where the data area put each file and fragment.
struct DataArea {
    /// For each node: index into `files` (files only; duplicates share one).
    file_of: Vec<Option<usize>>,
    files: Vec<FileData>,
    /// Fragment table entries: (absolute start, size word).
    fragments: Vec<(u64, u32)>,
}

/// Plan every file's blocks and fragments (files in path order, identical contents
/// once), compress them and append them to `image`.
fn write_data(nodes: &[WNode], comp: Compressor, image: &mut Vec<u8>) -> Result<DataArea> {
    let bs = comp.block_size as usize;
    let mut pieces: Vec<Piece> = Vec::new();
    let mut frag_bufs: Vec<Vec<u8>> = Vec::new();
    let mut open_frag: Vec<u8> = Vec::new();
    let mut plans: Vec<Plan> = Vec::new();
    let mut file_of: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for (i, wn) in nodes.iter().enumerate() {
        let Kind::File(data) = &wn.node.kind else {
            continue;
        };
        let data: &[u8] = data.as_slice();
        if let Some(&p) = seen.get(data) {
            file_of[i] = Some(p);
            continue;
        }
        let plan = if data.is_empty() {
            Plan::Empty
        } else if data.len() < bs {
            if open_frag.len() + data.len() > bs {
                pieces.push(Piece::Fragment(frag_bufs.len()));
                frag_bufs.push(std::mem::take(&mut open_frag));
            }
            let offset = open_frag.len() as u32;
            open_frag.extend_from_slice(data);
            Plan::Fragment {
                index: u32::try_from(frag_bufs.len()).context("too many fragments")?,
                offset,
            }
        } else {
            let first = pieces.len();
            pieces.extend(data.chunks(bs).map(Piece::Block));
            Plan::Blocks {
                first,
                count: pieces.len() - first,
            }
        };
        seen.insert(data, plans.len());
        file_of[i] = Some(plans.len());
        plans.push(plan);
    }
    if !open_frag.is_empty() {
        pieces.push(Piece::Fragment(frag_bufs.len()));
        frag_bufs.push(std::mem::take(&mut open_frag));
    }
    let jobs: Vec<&[u8]> = pieces
        .iter()
        .map(|p| match p {
            Piece::Block(d) => Ok(*d),
            Piece::Fragment(i) => frag_bufs
                .get(*i)
                .map(|v| v.as_slice())
                .ok_or_else(|| anyhow!("internal: fragment {i} missing")),
        })
        .collect::<Result<_>>()?;
    let compressed = compress_all(comp, &jobs)?;

    let mut piece_at: Vec<(u64, u32)> = Vec::with_capacity(pieces.len());
    let mut fragment_entries: Vec<(u64, u32)> = Vec::with_capacity(frag_bufs.len());
    for (job, c) in jobs.iter().zip(compressed) {
        let start = image.len() as u64;
        let word = match c {
            Some(c) => {
                image.extend_from_slice(&c);
                c.len() as u32
            }
            None => {
                image.extend_from_slice(job);
                job.len() as u32 | DATA_UNCOMPRESSED
            }
        };
        piece_at.push((start, word));
    }
    for (p, at) in pieces.iter().zip(&piece_at) {
        if let Piece::Fragment(_) = p {
            fragment_entries.push(*at);
        }
    }
    let files: Vec<FileData> = plans
        .iter()
        .map(|p| match *p {
            Plan::Empty => Ok(FileData {
                fragment: NO_FRAGMENT,
                ..FileData::default()
            }),
            Plan::Blocks { first, count } => {
                let at = piece_at
                    .get(first..first + count)
                    .ok_or_else(|| anyhow!("internal: block range"))?;
                Ok(FileData {
                    start: at.first().map(|a| a.0).unwrap_or(0),
                    blocks: at.iter().map(|a| a.1).collect(),
                    fragment: NO_FRAGMENT,
                    frag_offset: 0,
                })
            }
            Plan::Fragment { index, offset } => Ok(FileData {
                start: 0,
                blocks: Vec::new(),
                fragment: index,
                frag_offset: offset,
            }),
        })
        .collect::<Result<_>>()?;

    Ok(DataArea {
        file_of,
        files,
        fragments: fragment_entries,
    })
}

fn check_node(path: &str, node: &Node) -> Result<()> {
    match &node.kind {
        Kind::Symlink(t) => {
            ensure!(
                t.len() <= SYMLINK_MAX && !t.contains('\0'),
                "symlink {path:?}: target must be at most {SYMLINK_MAX} bytes without NUL"
            );
        }
        Kind::CharDev { major, minor } => {
            ensure!(
                *major <= 0xFFF && *minor <= 0xF_FFFF,
                "char device {path:?}: {major}:{minor} does not fit (major <= 4095, minor <= 1048575)"
            );
        }
        Kind::Dir | Kind::File(_) => {}
    }
    Ok(())
}

fn path_of(nodes: &[WNode], mut i: usize) -> String {
    let mut parts = Vec::new();
    while i != 0 {
        let Some(n) = nodes.get(i) else { break };
        parts.push(n.name);
        i = n.parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Append a finished metadata table plus its u64 index of absolute block starts;
/// returns the index's absolute offset (what the superblock records).
fn append_indexed_table(image: &mut Vec<u8>, table: MetaWriter) -> Result<u64> {
    let base = image.len() as u64;
    let (bytes, starts) = table.finish()?;
    image.extend_from_slice(&bytes);
    let index_start = image.len() as u64;
    for s in starts {
        image.extend_from_slice(&(base + s).to_le_bytes());
    }
    Ok(index_start)
}

/// The inode-table order: per directory, subdirectories first (recursively), then
/// the other children, then the directory itself. Iterative, so deep trees cannot
/// overflow the stack.
fn inode_order(nodes: &[WNode]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    // (directory, position of the next child to consider)
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some(top) = stack.last_mut() {
        let (dir, next) = *top;
        let children = nodes.get(dir).map(|n| n.children.as_slice()).unwrap_or(&[]);
        let sub = children
            .iter()
            .enumerate()
            .skip(next)
            .find(|(_, &c)| nodes.get(c).is_some_and(|n| n.node.kind == Kind::Dir));
        match sub {
            Some((pos, &c)) => {
                top.1 = pos + 1;
                stack.push((c, 0));
            }
            None => {
                stack.pop();
                order.extend(
                    children
                        .iter()
                        .copied()
                        .filter(|&c| nodes.get(c).is_some_and(|n| n.node.kind != Kind::Dir)),
                );
                order.push(dir);
            }
        }
    }
    order
}

struct Listing {
    /// Where the listing starts in the directory table (block, offset).
    start: (u64, u16),
    /// Its size in bytes (the inode's file_size is this + 3).
    size: u32,
    /// Directory index: (offset of a header in the listing, its metadata block, first name).
    index: Vec<(u32, u32, String)>,
}

/// Write the listing of directory `d`: runs of at most 256 entries that share an
/// inode metadata block and whose inode numbers are within an i16 of the run's base.
fn write_listing(
    dirs: &mut MetaWriter,
    nodes: &[WNode],
    d: usize,
    inode_ref: &[(u64, u16)],
    number: &[u32],
) -> Result<Listing> {
    let start = dirs.pos();
    let children = &nodes[d].children;
    let mut size: u32 = 0;
    let mut index = Vec::new();
    let mut last_indexed_block = start.0;
    let mut k = 0;
    while k < children.len() {
        let first = children[k];
        let block = inode_ref[first].0;
        let base = number[first];
        let mut end = k + 1;
        while end < children.len()
            && end - k < DIR_MAX_ENTRIES
            && inode_ref[children[end]].0 == block
            && i16::try_from(i64::from(number[children[end]]) - i64::from(base)).is_ok()
        {
            end += 1;
        }
        let here = dirs.pos();
        if here.0 != last_indexed_block {
            index.push((
                size,
                u32::try_from(here.0).context("directory table larger than 4 GiB")?,
                nodes[first].name.to_string(),
            ));
            last_indexed_block = here.0;
        }
        // struct squashfs_dir_header: count - 1, inode block, base inode number
        let mut b = Vec::with_capacity(12 + (end - k) * 24);
        b.extend_from_slice(&((end - k - 1) as u32).to_le_bytes());
        b.extend_from_slice(
            &u32::try_from(block)
                .context("inode table larger than 4 GiB")?
                .to_le_bytes(),
        );
        b.extend_from_slice(&base.to_le_bytes());
        for &c in &children[k..end] {
            // struct squashfs_dir_entry: offset, inode delta, basic type, name size - 1, name
            let n = &nodes[c];
            let ty = match n.node.kind {
                Kind::Dir => T_DIR,
                Kind::File(_) => T_FILE,
                Kind::Symlink(_) => T_SYMLINK,
                Kind::CharDev { .. } => T_CHRDEV,
            };
            let delta = (i64::from(number[c]) - i64::from(base)) as i16;
            b.extend_from_slice(&inode_ref[c].1.to_le_bytes());
            b.extend_from_slice(&delta.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(n.name.len() as u16 - 1).to_le_bytes());
            b.extend_from_slice(n.name.as_bytes());
        }
        dirs.write(&b)?;
        size = size
            .checked_add(b.len() as u32)
            .filter(|s| *s <= u32::MAX - 3)
            .ok_or_else(|| anyhow!("directory {:?} is too large", path_of(nodes, d)))?;
        k = end;
    }
    Ok(Listing { start, size, index })
}

// ---------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------

/// A bounds-checked little-endian cursor.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Cur<'a> {
        Cur { b, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            bail!(
                "{} truncated: need {n} bytes at offset {}, only {} left",
                self.what,
                self.pos,
                self.b.len().saturating_sub(self.pos)
            );
        };
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.b.len()
    }
}

/// Caps the total number of bytes the reader materialises.
struct Budget {
    left: u64,
}

impl Budget {
    fn take(&mut self, n: u64, what: &str) -> Result<()> {
        ensure!(
            n <= self.left,
            "{what}: the image expands to more than 64 MiB + 64 x its size; refusing"
        );
        self.left -= n;
        Ok(())
    }
}

/// A whole metadata table, decompressed into one buffer.
struct MetaTable {
    data: Vec<u8>,
    /// Block start (relative to the table) -> offset of its bytes in `data`.
    blocks: BTreeMap<u64, usize>,
}

impl MetaTable {
    /// Resolve a (block, offset) reference to a position in `data`.
    fn resolve(&self, block: u64, offset: usize, what: &str) -> Result<usize> {
        let Some(&at) = self.blocks.get(&block) else {
            bail!("{what}: no metadata block starts at table offset {block}");
        };
        let len = self
            .blocks
            .range(block + 1..)
            .next()
            .map(|(_, &next)| next)
            .unwrap_or(self.data.len())
            - at;
        ensure!(
            offset < len,
            "{what}: offset {offset} is outside its {len}-byte metadata block"
        );
        Ok(at + offset)
    }

    fn cursor(&self, pos: usize, what: &'static str) -> Result<Cur<'_>> {
        let b = self
            .data
            .get(pos..)
            .ok_or_else(|| anyhow!("{what}: position {pos} outside the table"))?;
        Ok(Cur::new(b, what))
    }
}

/// The parts of an inode the reader uses.
struct Inode {
    ty: u16,
    mode: u16,
    uid: u16,
    gid: u16,
    mtime: u32,
    body: Body,
}

enum Body {
    Dir {
        start_block: u32,
        offset: u16,
        file_size: u32,
    },
    File(FileRef),
    Symlink(Vec<u8>),
    CharDev(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FileRef {
    start: u64,
    size: u64,
    fragment: u32,
    frag_offset: u32,
    blocks: Vec<u32>,
}

struct Reader<'a> {
    image: &'a [u8],
    sb: Superblock,
    budget: Budget,
    inodes: MetaTable,
    dirs: MetaTable,
    ids: Vec<u32>,
    frag_meta: BTreeMap<u64, Vec<u8>>,
    frag_blocks: BTreeMap<u32, Arc<Vec<u8>>>,
    contents: BTreeMap<FileRef, Arc<Vec<u8>>>,
    listing_bytes: u64,
}

/// Read a squashfs 4.0 image (gzip or xz) back into a [`Tree`]: directories, regular
/// files with their contents, symlinks and character devices, with mode, uid, gid
/// and mtime. The root directory's own metadata is not part of a [`Tree`].
pub fn read(image: &[u8]) -> Result<Tree> {
    let mut r = Reader::open(image)?;
    r.tree()
}

impl<'a> Reader<'a> {
    fn open(full: &'a [u8]) -> Result<Reader<'a>> {
        let sb = Superblock::parse(full)?;
        let image = full
            .get(..sb.bytes_used as usize)
            .ok_or_else(|| anyhow!("bytes_used beyond the image"))?;
        let mut budget = Budget {
            left: (64u64 << 20).saturating_add((image.len() as u64).saturating_mul(64)),
        };

        // Where the directory table ends: at the first block of whichever table follows.
        let mut ends = vec![sb.bytes_used, sb.id_table_start];
        ends.push(read_u64(image, sb.id_table_start, "id table index")?);
        if sb.fragments > 0 {
            ends.push(sb.fragment_table_start);
            ends.push(read_u64(
                image,
                sb.fragment_table_start,
                "fragment table index",
            )?);
        }
        if sb.lookup_table_start != INVALID_BLOCK {
            ends.push(sb.lookup_table_start);
            ends.push(read_u64(
                image,
                sb.lookup_table_start,
                "export table index",
            )?);
        }
        if sb.xattr_id_table_start != INVALID_BLOCK {
            ends.push(sb.xattr_id_table_start);
            ends.push(read_u64(image, sb.xattr_id_table_start, "xattr id table")?);
        }
        let dir_end = ends.into_iter().min().unwrap_or(sb.bytes_used);
        ensure!(
            dir_end >= sb.directory_table_start,
            "directory table start {} lies after the next table ({dir_end})",
            sb.directory_table_start
        );

        let inodes = load_table(
            image,
            sb.compression,
            sb.inode_table_start,
            sb.directory_table_start,
            &mut budget,
            "inode table",
        )?;
        let dirs = load_table(
            image,
            sb.compression,
            sb.directory_table_start,
            dir_end,
            &mut budget,
            "directory table",
        )?;

        // Id table: a u64 index of metadata blocks holding u32 ids.
        let no_ids = usize::from(sb.no_ids);
        let mut ids = Vec::with_capacity(no_ids);
        for blk in 0..no_ids.div_ceil(IDS_PER_BLOCK) {
            let index_pos = sb
                .id_table_start
                .checked_add(8 * blk as u64)
                .ok_or_else(|| anyhow!("id table index offset overflows"))?;
            let pos = read_u64(image, index_pos, "id table index")?;
            let (data, _) = meta_block(image, sb.compression, pos, sb.bytes_used, "id table")?;
            budget.take(data.len() as u64, "id table")?;
            let want = (no_ids - ids.len()).min(IDS_PER_BLOCK);
            let mut c = Cur::new(&data, "id table block");
            for _ in 0..want {
                ids.push(c.u32()?);
            }
        }

        Ok(Reader {
            image,
            sb,
            budget,
            inodes,
            dirs,
            ids,
            frag_meta: BTreeMap::new(),
            frag_blocks: BTreeMap::new(),
            contents: BTreeMap::new(),
            listing_bytes: 0,
        })
    }

    fn id(&self, idx: u16) -> Result<u32> {
        self.ids.get(usize::from(idx)).copied().ok_or_else(|| {
            anyhow!(
                "id index {idx} is outside the {}-entry id table",
                self.ids.len()
            )
        })
    }

    fn inode(&self, reference: u64) -> Result<Inode> {
        let pos = self.inodes.resolve(
            reference >> 16,
            (reference & 0xFFFF) as usize,
            "inode reference",
        )?;
        let mut c = self.inodes.cursor(pos, "inode")?;
        let ty = c.u16()?;
        let mode = c.u16()?;
        let uid = c.u16()?;
        let gid = c.u16()?;
        let mtime = c.u32()?;
        let _number = c.u32()?;
        let bs = u64::from(self.sb.block_size);
        let body = match ty {
            T_DIR => {
                let start_block = c.u32()?;
                let _nlink = c.u32()?;
                let file_size = u32::from(c.u16()?);
                let offset = c.u16()?;
                let _parent = c.u32()?;
                Body::Dir {
                    start_block,
                    offset,
                    file_size,
                }
            }
            T_LDIR => {
                let _nlink = c.u32()?;
                let file_size = c.u32()?;
                let start_block = c.u32()?;
                let _parent = c.u32()?;
                let _i_count = c.u16()?;
                let offset = c.u16()?;
                let _xattr = c.u32()?;
                Body::Dir {
                    start_block,
                    offset,
                    file_size,
                }
            }
            T_FILE | T_LFILE => {
                let (start, fragment, frag_offset, size) = if ty == T_FILE {
                    let start = u64::from(c.u32()?);
                    let fragment = c.u32()?;
                    let frag_offset = c.u32()?;
                    let size = u64::from(c.u32()?);
                    (start, fragment, frag_offset, size)
                } else {
                    let start = c.u64()?;
                    let size = c.u64()?;
                    let _sparse = c.u64()?;
                    let _nlink = c.u32()?;
                    let fragment = c.u32()?;
                    let frag_offset = c.u32()?;
                    let _xattr = c.u32()?;
                    (start, fragment, frag_offset, size)
                };
                let count = if fragment == NO_FRAGMENT {
                    size.div_ceil(bs)
                } else {
                    size / bs
                };
                let list_len = usize::try_from(count)
                    .ok()
                    .and_then(|n| n.checked_mul(4))
                    .ok_or_else(|| anyhow!("file size {size} is absurd"))?;
                let raw = c.take(list_len)?;
                let blocks = raw
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect();
                Body::File(FileRef {
                    start,
                    size,
                    fragment,
                    frag_offset,
                    blocks,
                })
            }
            T_SYMLINK | T_LSYMLINK => {
                let _nlink = c.u32()?;
                let len = c.u32()? as usize;
                ensure!(
                    len <= SYMLINK_MAX,
                    "symlink target of {len} bytes exceeds {SYMLINK_MAX}"
                );
                Body::Symlink(c.take(len)?.to_vec())
            }
            T_CHRDEV | T_LCHRDEV => {
                let _nlink = c.u32()?;
                Body::CharDev(c.u32()?)
            }
            T_BLKDEV | T_LBLKDEV => bail!("block device inodes are not supported"),
            T_FIFO | T_LFIFO => bail!("fifo inodes are not supported"),
            T_SOCKET | T_LSOCKET => bail!("socket inodes are not supported"),
            other => bail!("unknown inode type {other}"),
        };
        Ok(Inode {
            ty,
            mode,
            uid,
            gid,
            mtime,
            body,
        })
    }

    /// The entries of a directory listing: (name, inode reference, entry type).
    fn listing(
        &mut self,
        start_block: u32,
        offset: u16,
        file_size: u32,
    ) -> Result<Vec<(String, u64, u16)>> {
        let len = file_size.saturating_sub(3) as usize;
        let mut out: Vec<(String, u64, u16)> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        self.listing_bytes += len as u64;
        ensure!(
            self.listing_bytes <= self.dirs.data.len() as u64,
            "directory listings overlap or exceed the directory table"
        );
        let pos = self.dirs.resolve(
            u64::from(start_block),
            usize::from(offset),
            "directory listing",
        )?;
        let bytes = pos
            .checked_add(len)
            .and_then(|end| self.dirs.data.get(pos..end))
            .ok_or_else(|| {
                anyhow!("directory listing of {len} bytes runs past the directory table")
            })?;
        let mut c = Cur::new(bytes, "directory listing");
        while !c.is_empty() {
            let count = c.u32()? as usize + 1;
            ensure!(
                count <= DIR_MAX_ENTRIES,
                "directory header claims {count} entries (at most {DIR_MAX_ENTRIES})"
            );
            let block = u64::from(c.u32()?);
            let _base = c.u32()?;
            for _ in 0..count {
                let off = c.u16()?;
                let _delta = c.u16()?;
                let ty = c.u16()?;
                let name_len = usize::from(c.u16()?) + 1;
                ensure!(
                    name_len <= NAME_MAX,
                    "directory entry name of {name_len} bytes exceeds {NAME_MAX}"
                );
                ensure!(
                    usize::from(off) < METADATA_SIZE,
                    "directory entry inode offset {off} is outside a metadata block"
                );
                let name = std::str::from_utf8(c.take(name_len)?)
                    .map_err(|_| anyhow!("directory entry name is not UTF-8"))?;
                ensure!(
                    name != "." && name != ".." && !name.contains(['/', '\0']),
                    "invalid directory entry name {name:?}"
                );
                if let Some((prev, _, _)) = out.last() {
                    ensure!(
                        prev.as_str() < name,
                        "directory entries not sorted or duplicated: {prev:?} then {name:?}"
                    );
                }
                out.push((name.to_string(), (block << 16) | u64::from(off), ty));
            }
        }
        Ok(out)
    }

    fn fragment_block(&mut self, index: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.frag_blocks.get(&index) {
            return Ok(b.clone());
        }
        ensure!(
            index < self.sb.fragments,
            "fragment {index} is outside the {}-entry fragment table",
            self.sb.fragments
        );
        let i = index as usize;
        let index_pos = self
            .sb
            .fragment_table_start
            .checked_add(8 * (i / FRAGMENT_ENTRIES_PER_BLOCK) as u64)
            .ok_or_else(|| anyhow!("fragment table index offset overflows"))?;
        let meta_pos = read_u64(self.image, index_pos, "fragment table index")?;
        if !self.frag_meta.contains_key(&meta_pos) {
            let (data, _) = meta_block(
                self.image,
                self.sb.compression,
                meta_pos,
                self.sb.bytes_used,
                "fragment table",
            )?;
            self.budget.take(data.len() as u64, "fragment table")?;
            self.frag_meta.insert(meta_pos, data);
        }
        let meta = self
            .frag_meta
            .get(&meta_pos)
            .ok_or_else(|| anyhow!("fragment table block vanished"))?;
        let entry = meta
            .get((i % FRAGMENT_ENTRIES_PER_BLOCK) * 16..)
            .ok_or_else(|| anyhow!("fragment entry {index} is outside its metadata block"))?;
        let mut c = Cur::new(entry, "fragment entry");
        let start = c.u64()?;
        let word = c.u32()?;
        let data = self.data_block(start, word, self.sb.block_size as usize, None)?;
        self.budget.take(data.len() as u64, "fragment block")?;
        let data = Arc::new(data);
        self.frag_blocks.insert(index, data.clone());
        Ok(data)
    }

    /// Read one data block described by a size word at `start`; `expect` is its exact
    /// uncompressed length when known.
    fn data_block(
        &self,
        start: u64,
        word: u32,
        limit: usize,
        expect: Option<usize>,
    ) -> Result<Vec<u8>> {
        ensure!(
            word >> 25 == 0,
            "data block size word {word:#x} has unknown bits set"
        );
        let len = (word & (DATA_UNCOMPRESSED - 1)) as usize;
        ensure!(
            len <= self.sb.block_size as usize,
            "data block of {len} bytes is bigger than the block size"
        );
        let bytes = usize::try_from(start)
            .ok()
            .and_then(|s| Some(s..s.checked_add(len)?))
            .and_then(|r| self.image.get(r))
            .ok_or_else(|| anyhow!("data block at {start} (+{len}) lies outside the image"))?;
        let data = if word & DATA_UNCOMPRESSED != 0 {
            bytes.to_vec()
        } else {
            decompress(self.sb.compression, bytes, limit)
                .with_context(|| format!("data block at offset {start}"))?
        };
        if let Some(n) = expect {
            ensure!(
                data.len() == n,
                "data block at offset {start}: expected {n} bytes, got {}",
                data.len()
            );
        }
        Ok(data)
    }

    fn file_contents(&mut self, f: &FileRef) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.contents.get(f) {
            return Ok(c.clone());
        }
        self.budget.take(f.size, "file contents")?;
        let bs = self.sb.block_size as usize;
        let size = usize::try_from(f.size).context("file too large for memory")?;
        let mut out = Vec::with_capacity(size);
        let mut pos = f.start;
        for &word in &f.blocks {
            let expect = (size - out.len()).min(bs);
            if word == 0 {
                // A sparse block: all zeros, nothing stored.
                out.resize(out.len() + expect, 0);
                continue;
            }
            let block = self.data_block(pos, word, bs, Some(expect))?;
            out.extend_from_slice(&block);
            pos = pos.saturating_add(u64::from(word & (DATA_UNCOMPRESSED - 1)));
        }
        if f.fragment != NO_FRAGMENT {
            let tail = size - out.len();
            let frag = self.fragment_block(f.fragment)?;
            let off = f.frag_offset as usize;
            let piece = off
                .checked_add(tail)
                .and_then(|end| frag.get(off..end))
                .ok_or_else(|| {
                    anyhow!(
                        "file tail of {tail} bytes at offset {off} lies outside fragment {} ({} bytes)",
                        f.fragment,
                        frag.len()
                    )
                })?;
            out.extend_from_slice(piece);
        }
        ensure!(
            out.len() == size,
            "file data is {} bytes, inode says {size}",
            out.len()
        );
        let out = Arc::new(out);
        self.contents.insert(f.clone(), out.clone());
        Ok(out)
    }

    fn node(&mut self, ino: &Inode, path: &str) -> Result<Node> {
        let kind = match &ino.body {
            Body::Dir { .. } => Kind::Dir,
            Body::File(f) => Kind::File(
                self.file_contents(f)
                    .with_context(|| format!("reading file {path:?}"))?,
            ),
            Body::Symlink(t) => Kind::Symlink(
                String::from_utf8(t.clone())
                    .map_err(|_| anyhow!("symlink {path:?}: target is not UTF-8"))?,
            ),
            Body::CharDev(rdev) => Kind::CharDev {
                major: (rdev >> 8) & 0xFFF,
                minor: (rdev & 0xFF) | ((rdev >> 12) & 0xF_FF00),
            },
        };
        Ok(Node {
            kind,
            mode: u32::from(ino.mode & 0o7777),
            uid: self.id(ino.uid)?,
            gid: self.id(ino.gid)?,
            mtime: u64::from(ino.mtime),
        })
    }

    fn tree(&mut self) -> Result<Tree> {
        let root_ref = self.sb.root_inode;
        let root = self.inode(root_ref).context("reading the root inode")?;
        let Body::Dir {
            start_block,
            offset,
            file_size,
        } = root.body
        else {
            bail!("the root inode is not a directory (type {})", root.ty);
        };
        let mut tree = Tree::new();
        let mut visited: BTreeSet<u64> = BTreeSet::from([root_ref]);
        let mut stack: Vec<(String, u32, u16, u32)> =
            vec![(String::new(), start_block, offset, file_size)];
        while let Some((dir, start_block, offset, file_size)) = stack.pop() {
            let entries = self
                .listing(start_block, offset, file_size)
                .with_context(|| format!("reading directory \"/{dir}\""))?;
            for (name, reference, ety) in entries {
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let ino = self
                    .inode(reference)
                    .with_context(|| format!("reading the inode of {path:?}"))?;
                let basic = if ino.ty > 7 { ino.ty - 7 } else { ino.ty };
                ensure!(
                    ety == basic,
                    "{path:?}: directory entry type {ety} does not match inode type {}",
                    ino.ty
                );
                let node = self.node(&ino, &path)?;
                if let Body::Dir {
                    start_block,
                    offset,
                    file_size,
                } = ino.body
                {
                    ensure!(
                        visited.insert(reference),
                        "directory {path:?} refers back to an already visited directory (cycle or hard-linked directory)"
                    );
                    stack.push((path.clone(), start_block, offset, file_size));
                }
                tree.insert(&path, node)
                    .with_context(|| format!("adding {path:?} to the tree"))?;
            }
        }
        Ok(tree)
    }
}

fn read_u64(image: &[u8], pos: u64, what: &'static str) -> Result<u64> {
    let b = usize::try_from(pos)
        .ok()
        .and_then(|p| image.get(p..p.checked_add(8)?))
        .ok_or_else(|| anyhow!("{what}: offset {pos} lies outside the image"))?;
    Cur::new(b, what).u64()
}

/// Read the metadata block at absolute `pos` (which must end by `end`); returns its
/// uncompressed bytes and the position after it.
fn meta_block(
    image: &[u8],
    comp: u16,
    pos: u64,
    end: u64,
    what: &'static str,
) -> Result<(Vec<u8>, u64)> {
    let slice = |from: u64, to: u64| -> Option<&[u8]> {
        if to > end {
            return None;
        }
        image.get(usize::try_from(from).ok()?..usize::try_from(to).ok()?)
    };
    let header_end = pos.saturating_add(2);
    let h = slice(pos, header_end).ok_or_else(|| {
        anyhow!("{what}: metadata block header at {pos} lies outside its table (ends at {end})")
    })?;
    let header = u16::from_le_bytes([h[0], h[1]]);
    let len = u64::from(header & !META_UNCOMPRESSED);
    ensure!(
        (1..=METADATA_SIZE as u64).contains(&len),
        "{what}: metadata block at {pos} has invalid length {len}"
    );
    let data_end = header_end + len;
    let bytes = slice(header_end, data_end).ok_or_else(|| {
        anyhow!("{what}: metadata block at {pos} ({len} bytes) runs past its table end {end}")
    })?;
    let data = if header & META_UNCOMPRESSED != 0 {
        bytes.to_vec()
    } else {
        decompress(comp, bytes, METADATA_SIZE)
            .with_context(|| format!("{what}: metadata block at offset {pos}"))?
    };
    Ok((data, data_end))
}

/// Decompress the whole metadata table [start, end).
fn load_table(
    image: &[u8],
    comp: u16,
    start: u64,
    end: u64,
    budget: &mut Budget,
    what: &'static str,
) -> Result<MetaTable> {
    ensure!(
        end <= image.len() as u64 && start <= end,
        "{what}: range {start}..{end} lies outside the image"
    );
    let mut t = MetaTable {
        data: Vec::new(),
        blocks: BTreeMap::new(),
    };
    let mut pos = start;
    while pos < end {
        let (data, next) = meta_block(image, comp, pos, end, what)?;
        budget.take(data.len() as u64, what)?;
        t.blocks.insert(pos - start, t.data.len());
        t.data.extend_from_slice(&data);
        pos = next;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;
    use std::process::Command;

    /// Incompressible bytes (xorshift64*).
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Compressible text.
    fn text(n: usize, salt: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 64);
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(
                format!("{salt} line {i} of some text {}\n", i * 7919 % 1013).as_bytes(),
            );
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn with(mut n: Node, uid: u32, gid: u32, mtime: u64) -> Node {
        n.uid = uid;
        n.gid = gid;
        n.mtime = mtime;
        n
    }

    /// Nested dirs, multi-block files, an exactly-one-block file, incompressible data,
    /// empty and small files, duplicates, symlinks, char devices, a 2000-entry
    /// directory, non-root owners, special mode bits and varied mtimes.
    fn sample_tree() -> Tree {
        let mut t = Tree::new();
        let mut put = |p: &str, n: Node| t.insert(p, n).unwrap();
        put("etc", with(Node::dir(0o755), 0, 0, 1_700_000_000));
        put(
            "etc/hostname",
            with(Node::file(b"fuse\n".to_vec(), 0o644), 0, 0, 1),
        );
        put("etc/empty", with(Node::file(Vec::new(), 0o600), 0, 0, 0));
        put(
            "etc/shadow",
            with(Node::file(b"root:*:1::::::\n".to_vec(), 0o640), 0, 42, 5),
        );
        put("tmp", with(Node::dir(0o1777), 0, 0, 7));
        put(
            "usr/share/doc/deep/er/still/deeper",
            with(Node::dir(0o700), 0, 0, 9),
        );
        put(
            "usr/share/doc/deep/er/still/deeper/f",
            with(Node::file(text(100, "deep"), 0o444), 0, 0, 10),
        );
        put(
            "usr/lib/big.txt",
            with(Node::file(text(300_000, "big"), 0o644), 0, 0, 11),
        );
        put(
            "usr/lib/exact",
            with(Node::file(text(131_072, "exact"), 0o644), 0, 0, 12),
        );
        put(
            "usr/lib/random.bin",
            with(Node::file(noise(200_000, 1), 0o644), 0, 0, 13),
        );
        put(
            "usr/lib/random-small",
            with(Node::file(noise(5000, 2), 0o644), 0, 0, 14),
        );
        put(
            "usr/lib/zeros",
            with(Node::file(vec![0u8; 300_000], 0o644), 0, 0, 15),
        );
        put(
            "usr/lib/dup1",
            with(Node::file(text(140_000, "dup"), 0o644), 0, 0, 16),
        );
        put(
            "usr/lib/dup2",
            with(Node::file(text(140_000, "dup"), 0o755), 0, 0, 17),
        );
        put(
            "usr/lib/smalldup1",
            with(Node::file(b"same".to_vec(), 0o644), 0, 0, 16),
        );
        put(
            "usr/lib/smalldup2",
            with(Node::file(b"same".to_vec(), 0o644), 0, 0, 16),
        );
        put(
            "usr/bin/suid",
            with(Node::file(text(2000, "suid"), 0o4755), 0, 0, 18),
        );
        put(
            "usr/bin/sgid",
            with(Node::file(text(2000, "sgid"), 0o2711), 0, 50, 18),
        );
        put("usr/bin/sh", with(Node::symlink("dash"), 0, 0, 19));
        put(
            "usr/bin/dash",
            with(Node::file(text(20_000, "dash"), 0o755), 0, 0, 19),
        );
        put("lib", with(Node::symlink("usr/lib"), 0, 0, 20));
        put(
            "abs",
            with(Node::symlink("/etc/hostname"), 0, 0, u64::from(u32::MAX)),
        );
        put("dev/console", with(Node::char_dev(5, 1, 0o600), 0, 5, 21));
        put(
            "dev/odd",
            with(Node::char_dev(300, 70_000, 0o660), 0, 6, 22),
        );
        put("home/user", with(Node::dir(0o700), 1000, 1000, 23));
        put(
            "home/user/notes",
            with(Node::file(text(3000, "notes"), 0o600), 1000, 100, 24),
        );
        put(
            "srv/nobody",
            with(Node::file(b"x".to_vec(), 0o644), 65534, 65534, 25),
        );
        for i in 0..2000u32 {
            let p = format!("big/entry-with-a-rather-long-name-to-fill-blocks-{i:05}");
            let n = match i % 11 {
                0 => Node::dir(0o755),
                1 => Node::symlink(format!("target-{i}")),
                _ => Node::file(format!("content of entry {i}\n").into_bytes(), 0o644),
            };
            put(&p, with(n, i % 3, i % 5, u64::from(i)));
        }
        put("big", with(Node::dir(0o755), 0, 0, 26));
        t
    }

    fn opts(compression: Compression) -> Options {
        Options {
            compression,
            block_size: 131072,
            mkfs_time: 1_234_567,
            threads: 0,
        }
    }

    /// Compare trees entry by entry so a failure names the first differing path.
    fn assert_same(got: &Tree, want: &Tree) {
        let g: Vec<_> = got.iter().collect();
        let w: Vec<_> = want.iter().collect();
        for ((gp, gn), (wp, wn)) in g.iter().zip(&w) {
            assert_eq!(gp, wp, "paths differ");
            assert!(
                gn == wn,
                "{gp}: got {:?} mode {:o} {}:{} t{} size {}, want {:?} mode {:o} {}:{} t{} size {}",
                std::mem::discriminant(&gn.kind),
                gn.mode,
                gn.uid,
                gn.gid,
                gn.mtime,
                gn.size(),
                std::mem::discriminant(&wn.kind),
                wn.mode,
                wn.uid,
                wn.gid,
                wn.mtime,
                wn.size()
            );
        }
        assert_eq!(g.len(), w.len(), "entry counts differ");
    }

    fn find_inode(r: &mut Reader, path: &str) -> Inode {
        let mut ino = r.inode(r.sb.root_inode).unwrap();
        let mut reference = r.sb.root_inode;
        for part in path.split('/') {
            let Body::Dir {
                start_block,
                offset,
                file_size,
            } = ino.body
            else {
                panic!("{path}: not a directory on the way");
            };
            let entries = r.listing(start_block, offset, file_size).unwrap();
            reference = entries.iter().find(|e| e.0 == part).unwrap().1;
            ino = r.inode(reference).unwrap();
        }
        let _ = reference;
        ino
    }

    #[test]
    fn round_trip_gzip_xz_and_zstd() {
        let t = sample_tree();
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let img = write(&t, &opts(c)).unwrap();
            assert_eq!(img.len() % 4096, 0, "{c:?}: image not padded to 4 KiB");
            assert_same(&read(&img).unwrap(), &t);
        }
    }

    #[test]
    fn round_trip_small_blocks_and_empty_tree() {
        let t = sample_tree();
        let o = Options {
            compression: Compression::Gzip,
            block_size: 4096,
            mkfs_time: 0,
            threads: 0,
        };
        assert_same(&read(&write(&t, &o).unwrap()).unwrap(), &t);
        let empty = Tree::new();
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let img = write(&empty, &opts(c)).unwrap();
            assert_eq!(img.len(), 4096);
            assert!(read(&img).unwrap().is_empty());
        }
    }

    #[test]
    fn output_is_deterministic() {
        let t = sample_tree();
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let a = write(&t, &opts(c)).unwrap();
            let b = write(&t.clone(), &opts(c)).unwrap();
            assert!(a == b, "{c:?}: two writes of the same tree differ");
        }
    }

    #[test]
    fn superblock_and_tables_are_sane() {
        let t = sample_tree();
        let img = write(&t, &opts(Compression::Xz)).unwrap();
        let sb = Superblock::parse(&img).unwrap();
        assert_eq!(sb.inodes as usize, t.len() + 1);
        assert_eq!(sb.mkfs_time, 1_234_567);
        assert_eq!((sb.block_size, sb.block_log), (131072, 17));
        assert_eq!(sb.compression, COMP_XZ);
        assert_eq!(
            (sb.xattr_id_table_start, sb.lookup_table_start),
            (INVALID_BLOCK, INVALID_BLOCK)
        );
        // ids: 0 1 2 3 4 5 6 42 50 100 1000 65534
        assert_eq!(sb.no_ids, 12);
        assert!(img.len() as u64 - sb.bytes_used < 4096);
        // The id index ends the file system: one u64 per id metadata block.
        assert_eq!(sb.id_table_start + 8, sb.bytes_used);
        // Small files share fragment blocks: ~1800 small files, far fewer fragments.
        assert!(
            sb.fragments > 0 && sb.fragments < 20,
            "fragments: {}",
            sb.fragments
        );
        let mut r = Reader::open(&img).unwrap();
        assert_eq!(r.ids, [0, 1, 2, 3, 4, 5, 6, 42, 50, 100, 1000, 65534]);
        // The root is the last inode; its data.
        let root = r.inode(sb.root_inode).unwrap();
        assert_eq!(root.mtime, 1_234_567);
        assert_eq!(root.mode, 0o755);
        let Body::File(f) = find_inode(&mut r, "usr/lib/big.txt").body else {
            panic!("big.txt is not a file")
        };
        assert_eq!((f.blocks.len(), f.fragment), (3, NO_FRAGMENT));
        assert!(f
            .blocks
            .iter()
            .all(|w| w & DATA_UNCOMPRESSED == 0 && *w < 131072));
    }

    #[test]
    fn incompressible_blocks_are_stored_raw_and_duplicates_once() {
        let t = sample_tree();
        let img = write(&t, &opts(Compression::Gzip)).unwrap();
        let mut r = Reader::open(&img).unwrap();
        let Body::File(f) = find_inode(&mut r, "usr/lib/random.bin").body else {
            panic!("not a file")
        };
        assert_eq!(
            f.blocks,
            [
                131072 | DATA_UNCOMPRESSED,
                (200_000 - 131072) | DATA_UNCOMPRESSED
            ]
        );
        let Body::File(d1) = find_inode(&mut r, "usr/lib/dup1").body else {
            panic!()
        };
        let Body::File(d2) = find_inode(&mut r, "usr/lib/dup2").body else {
            panic!()
        };
        assert_eq!(d1, d2, "identical contents should share their blocks");
        let Body::File(s1) = find_inode(&mut r, "usr/lib/smalldup1").body else {
            panic!()
        };
        let Body::File(s2) = find_inode(&mut r, "usr/lib/smalldup2").body else {
            panic!()
        };
        assert_ne!(s1.fragment, NO_FRAGMENT);
        assert_eq!(s1, s2);
    }

    #[test]
    fn large_directory_has_extended_inode_with_valid_index() {
        let t = sample_tree();
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let img = write(&t, &opts(c)).unwrap();
            let mut r = Reader::open(&img).unwrap();
            let ino = find_inode(&mut r, "big");
            assert_eq!(ino.ty, T_LDIR);
            let Body::Dir {
                start_block,
                offset,
                file_size,
            } = ino.body
            else {
                panic!()
            };
            assert!(
                file_size > 0xFFFF,
                "listing should exceed 64 KiB: {file_size}"
            );
            let entries = r.listing(start_block, offset, file_size).unwrap();
            assert_eq!(entries.len(), 2000);
            // Locate the inode again to parse its index (after the 40-byte fixed part).
            let root = r.inode(r.sb.root_inode).unwrap();
            let Body::Dir {
                start_block: rs,
                offset: ro,
                file_size: rf,
            } = root.body
            else {
                panic!()
            };
            let big_ref = r
                .listing(rs, ro, rf)
                .unwrap()
                .into_iter()
                .find(|e| e.0 == "big")
                .unwrap()
                .1;
            let pos = r
                .inodes
                .resolve(big_ref >> 16, (big_ref & 0xFFFF) as usize, "t")
                .unwrap();
            let mut cur = r.inodes.cursor(pos + 32, "t").unwrap();
            let i_count = cur.u16().unwrap();
            cur.take(6).unwrap();
            assert!(i_count as usize >= (file_size as usize - 3) / METADATA_SIZE);
            let listing_pos = r
                .dirs
                .resolve(u64::from(start_block), usize::from(offset), "t")
                .unwrap();
            let mut last = 0;
            for _ in 0..i_count {
                let index = cur.u32().unwrap() as usize;
                let block = cur.u32().unwrap();
                let name_len = cur.u32().unwrap() as usize + 1;
                let name = std::str::from_utf8(cur.take(name_len).unwrap())
                    .unwrap()
                    .to_string();
                assert!(index > last || last == 0);
                last = index;
                // The kernel seeks to (block, (offset + index) % 8192) and reads a header
                // there whose first entry is `name`.
                let at = r
                    .dirs
                    .resolve(
                        u64::from(block),
                        (usize::from(offset) + index) % METADATA_SIZE,
                        "t",
                    )
                    .unwrap();
                assert_eq!(
                    at,
                    listing_pos + index,
                    "index entry {name} points elsewhere"
                );
                let mut h = r.dirs.cursor(at, "t").unwrap();
                let count = h.u32().unwrap() + 1;
                assert!(count as usize <= DIR_MAX_ENTRIES);
                h.take(8 + 6).unwrap();
                let len = h.u16().unwrap() as usize + 1;
                assert_eq!(std::str::from_utf8(h.take(len).unwrap()).unwrap(), name);
            }
        }
    }

    #[test]
    fn writer_rejects_what_squashfs_cannot_hold() {
        let mut t = Tree::new();
        t.insert("f", with(Node::file(b"x".to_vec(), 0o644), 0, 0, 1 << 32))
            .unwrap();
        assert!(write(&t, &Options::default()).is_err());
        let mut t = Tree::new();
        t.insert("c", Node::char_dev(4096, 0, 0o600)).unwrap();
        assert!(write(&t, &Options::default()).is_err());
        let mut t = Tree::new();
        t.insert(&"n".repeat(257), Node::file(Vec::new(), 0o644))
            .unwrap();
        assert!(write(&t, &Options::default()).is_err());
        for bs in [0, 1000, 2048, 1 << 21] {
            let o = Options {
                block_size: bs,
                ..Options::default()
            };
            assert!(write(&Tree::new(), &o).is_err(), "block size {bs} accepted");
        }
        let o = Options::default();
        assert_eq!(
            (o.compression, o.block_size, o.mkfs_time),
            (Compression::Xz, 131072, 0)
        );
    }

    fn small_tree() -> Tree {
        let mut t = Tree::new();
        t.insert("d/e", Node::dir(0o755)).unwrap();
        t.insert("d/f", Node::file(text(300, "f"), 0o644)).unwrap();
        t.insert("d/big", Node::file(text(9000, "b"), 0o644))
            .unwrap();
        t.insert("l", Node::symlink("d/f")).unwrap();
        t.insert("c", with(Node::char_dev(1, 3, 0o666), 7, 8, 9))
            .unwrap();
        t
    }

    #[test]
    fn hostile_headers_and_truncation_are_errors() {
        let t = small_tree();
        let o = Options {
            block_size: 4096,
            ..opts(Compression::Gzip)
        };
        let img = write(&t, &o).unwrap();
        assert_same(&read(&img).unwrap(), &t);
        let sb = Superblock::parse(&img).unwrap();
        assert!(read(&[]).is_err());
        assert!(read(&img[..95]).is_err());
        let patched = |at: usize, bytes: &[u8]| {
            let mut v = img.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        assert!(read(&patched(0, b"hsqt")).is_err(), "bad magic");
        assert!(
            read(&patched(28, &3u16.to_le_bytes())).is_err(),
            "version 3"
        );
        assert!(read(&patched(20, &2u16.to_le_bytes())).is_err(), "lzma");
        assert!(
            read(&patched(12, &8192u32.to_le_bytes())).is_err(),
            "block_log mismatch"
        );
        assert!(
            read(&patched(32, &(0x1_0000_0000u64 | 9000).to_le_bytes())).is_err(),
            "root offset"
        );
        assert!(
            read(&patched(40, &u64::MAX.to_le_bytes())).is_err(),
            "bytes_used"
        );
        // Every truncation, also with bytes_used patched to match, is an error.
        for len in 0..sb.bytes_used as usize {
            let cut = &img[..len];
            assert!(read(cut).is_err(), "truncated to {len} accepted");
            if len >= SUPERBLOCK_SIZE {
                let mut v = cut.to_vec();
                v[40..48].copy_from_slice(&(len as u64).to_le_bytes());
                assert!(
                    read(&v).is_err(),
                    "truncated to {len} (bytes_used patched) accepted"
                );
            }
        }
        // Cutting only the padding is fine.
        assert!(read(&img[..sb.bytes_used as usize]).is_ok());
    }

    /// Flip bytes everywhere: whatever happens, no panic and no runaway allocation.
    #[test]
    fn corrupted_images_never_panic() {
        let t = small_tree();
        for (c, raw, stride) in [
            (Compression::Gzip, true, 1),
            (Compression::Gzip, false, 1),
            (Compression::Xz, true, 3),
            (Compression::Xz, false, 3),
        ] {
            let o = Options {
                block_size: 4096,
                ..opts(c)
            };
            let img = write_impl(&t, &o, raw).unwrap();
            assert_same(&read(&img).unwrap(), &t);
            let used = Superblock::parse(&img).unwrap().bytes_used as usize;
            let mut errors = 0;
            let mut tries = 0;
            for at in (0..used).step_by(stride) {
                for x in [0x01u8, 0x80, 0xFF] {
                    let mut v = img.clone();
                    v[at] ^= x;
                    tries += 1;
                    if read(&v).is_err() {
                        errors += 1;
                    }
                }
            }
            assert!(
                errors > tries / 4,
                "{c:?} raw={raw}: only {errors}/{tries} corruptions detected"
            );
        }
    }

    #[test]
    fn directory_cycle_is_an_error() {
        let mut t = Tree::new();
        t.insert("d/e", Node::dir(0o755)).unwrap();
        let img = write_impl(&t, &Options::default(), true).unwrap();
        assert_same(&read(&img).unwrap(), &t);
        let sb = Superblock::parse(&img).unwrap();
        // Directory table: d's listing comes first (children before parents), right
        // after the 2-byte block header: header (12 bytes) then the entry for "e".
        let dt = sb.directory_table_start as usize;
        let mut v = img.clone();
        assert_eq!(&v[dt + 2 + 12 + 8..dt + 2 + 12 + 9], b"e");
        let root_block = (sb.root_inode >> 16) as u32;
        let root_offset = (sb.root_inode & 0xFFFF) as u16;
        v[dt + 2 + 4..dt + 2 + 8].copy_from_slice(&root_block.to_le_bytes());
        v[dt + 2 + 12..dt + 2 + 14].copy_from_slice(&root_offset.to_le_bytes());
        let err = read(&v).unwrap_err();
        assert!(format!("{err:#}").contains("already visited"), "{err:#}");
    }

    #[test]
    fn absurd_file_size_is_an_error_without_allocating() {
        let mut t = Tree::new();
        t.insert("f", Node::file(b"0123456789".to_vec(), 0o644))
            .unwrap();
        let img = write_impl(&t, &Options::default(), true).unwrap();
        let sb = Superblock::parse(&img).unwrap();
        // The file's inode is first in the inode table; file_size is at +28.
        let at = sb.inode_table_start as usize + 2 + 28;
        assert_eq!(&img[at..at + 4], &10u32.to_le_bytes());
        for size in [u32::MAX, 1 << 20, 11] {
            let mut v = img.clone();
            v[at..at + 4].copy_from_slice(&size.to_le_bytes());
            assert!(read(&v).is_err(), "file_size {size} accepted");
        }
    }

    // ----- cross-checks with squashfs-tools -----

    fn running_as_root() -> bool {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("probe");
        std::fs::write(&f, b"").unwrap();
        std::fs::metadata(&f).unwrap().uid() == 0
    }

    fn perm_string(n: &Node) -> String {
        let ty = match n.kind {
            Kind::Dir => 'd',
            Kind::File(_) => '-',
            Kind::Symlink(_) => 'l',
            Kind::CharDev { .. } => 'c',
        };
        let m = n.mode;
        let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
        let special = |x: u32, special: u32, set: char| match (m & x != 0, m & special != 0) {
            (true, true) => set,
            (false, true) => set.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        };
        [
            ty,
            bit(0o400, 'r'),
            bit(0o200, 'w'),
            special(0o100, 0o4000, 's'),
            bit(0o040, 'r'),
            bit(0o020, 'w'),
            special(0o010, 0o2000, 's'),
            bit(0o004, 'r'),
            bit(0o002, 'w'),
            special(0o001, 0o1000, 't'),
        ]
        .iter()
        .collect()
    }

    /// `unsquashfs -lln`: every path with its permissions, numeric owner, size (or
    /// major,minor) and symlink target.
    fn check_listing(img: &Path, t: &Tree) {
        let out = Command::new("unsquashfs")
            .arg("-lln")
            .arg(img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unsquashfs -lln failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut seen = BTreeMap::new();
        for line in stdout.lines().filter(|l| l.contains("squashfs-root")) {
            let tok: Vec<&str> = line.split_whitespace().collect();
            let date = 2 + tok[2..]
                .iter()
                .position(|s| s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-')
                .unwrap();
            let size = tok[2..date].join("");
            let rest = tok[date + 2..].join(" ");
            let (path, target) = match rest.split_once(" -> ") {
                Some((p, t)) => (p.to_string(), Some(t.to_string())),
                None => (rest, None),
            };
            let path = path
                .strip_prefix("squashfs-root")
                .unwrap()
                .trim_start_matches('/')
                .to_string();
            seen.insert(path, (tok[0].to_string(), tok[1].to_string(), size, target));
        }
        let root = seen.remove("").expect("root missing from the listing");
        assert_eq!(root.0, "drwxr-xr-x");
        assert_eq!(
            seen.len(),
            t.len(),
            "unsquashfs lists a different number of entries"
        );
        for (p, n) in t.iter() {
            let (perm, owner, size, target) = seen.get(p).unwrap_or_else(|| panic!("{p} missing"));
            assert_eq!(perm, &perm_string(n), "{p}");
            assert_eq!(owner, &format!("{}/{}", n.uid, n.gid), "{p}");
            match &n.kind {
                Kind::File(d) => assert_eq!(size, &d.len().to_string(), "{p}"),
                Kind::Symlink(s) => assert_eq!(target.as_deref(), Some(s.as_str()), "{p}"),
                Kind::CharDev { major, minor } => {
                    // unsquashfs' listing prints rdev >> 8, rdev & 0xff of the on-disk
                    // word (exact only for minor < 256); extraction decodes it fully.
                    let rdev = (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12);
                    assert_eq!(size, &format!("{},{}", rdev >> 8, rdev & 0xFF), "{p}")
                }
                Kind::Dir => {}
            }
        }
    }

    /// `unsquashfs -d`: contents, targets, modes, mtimes (and owners/devices as root).
    fn check_extraction(img: &Path, t: &Tree, root: bool) {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("x");
        let out = Command::new("unsquashfs")
            .args(["-no-progress", "-d"])
            .arg(&out_dir)
            .arg(img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unsquashfs -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut count = 0;
        let mut stack = vec![out_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                count += 1;
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        assert_eq!(count, t.len(), "extracted entry count");
        for (p, n) in t.iter() {
            let fp = out_dir.join(p);
            let m = std::fs::symlink_metadata(&fp).unwrap_or_else(|e| panic!("{p}: {e}"));
            match &n.kind {
                Kind::Dir => assert!(m.is_dir(), "{p}"),
                Kind::File(d) => {
                    assert!(std::fs::read(&fp).unwrap() == **d, "{p}: contents differ")
                }
                Kind::Symlink(s) => assert_eq!(
                    std::fs::read_link(&fp).unwrap().to_str(),
                    Some(s.as_str()),
                    "{p}"
                ),
                Kind::CharDev { major, minor } => {
                    assert!(m.file_type().is_char_device(), "{p}");
                    let rdev = m.rdev();
                    let got_major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
                    let got_minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
                    assert_eq!(
                        (got_major, got_minor),
                        (u64::from(*major), u64::from(*minor)),
                        "{p}"
                    );
                }
            }
            if !matches!(n.kind, Kind::Symlink(_)) {
                assert_eq!(m.mode() & 0o7777, n.mode, "{p}: mode");
            }
            assert_eq!(m.mtime() as u64, n.mtime, "{p}: mtime");
            if root {
                assert_eq!((m.uid(), m.gid()), (n.uid, n.gid), "{p}: owner");
            }
        }
    }

    #[test]
    fn unsquashfs_reads_our_images() {
        if !require_tool("unsquashfs") {
            return;
        }
        let root = running_as_root();
        let t = sample_tree();
        let dir = tempfile::tempdir().unwrap();
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let img = dir.path().join(format!("{c:?}.sqfs"));
            std::fs::write(&img, write(&t, &opts(c)).unwrap()).unwrap();
            let s = Command::new("unsquashfs")
                .arg("-s")
                .arg(&img)
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&s.stdout);
            assert!(s.contains("Found a valid SQUASHFS 4:0 superblock"), "{s}");
            assert!(
                s.contains(&format!("Number of inodes {}", t.len() + 1)),
                "{s}"
            );
            check_listing(&img, &t);
            if root {
                check_extraction(&img, &t, true);
            } else {
                let mut t2 = t.clone();
                let devs: Vec<String> = t2
                    .iter()
                    .filter(|(_, n)| matches!(n.kind, Kind::CharDev { .. }))
                    .map(|(p, _)| p.to_string())
                    .collect();
                if devs.is_empty() {
                    check_extraction(&img, &t2, false);
                } else {
                    for d in devs {
                        t2.remove(&d);
                    }
                    crate::testutil::skip(
                        "unsquashfs extraction check (needs root for devices and owners)",
                    );
                }
            }
        }
    }

    /// Materialise `t` under `dir` (root only: owners and device nodes).
    fn materialise(t: &Tree, dir: &Path) {
        for (p, n) in t.iter() {
            let fp = dir.join(p);
            match &n.kind {
                Kind::Dir => std::fs::create_dir_all(&fp).unwrap(),
                Kind::File(d) => std::fs::write(&fp, d.as_slice()).unwrap(),
                Kind::Symlink(s) => std::os::unix::fs::symlink(s, &fp).unwrap(),
                Kind::CharDev { major, minor } => {
                    let st = Command::new("mknod")
                        .arg(&fp)
                        .arg("c")
                        .arg(major.to_string())
                        .arg(minor.to_string())
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
            }
            std::os::unix::fs::lchown(&fp, Some(n.uid), Some(n.gid)).unwrap();
        }
        // Permissions after ownership (chown clears setuid bits).
        for (p, n) in t.iter() {
            if !matches!(n.kind, Kind::Symlink(_)) {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(n.mode))
                    .unwrap();
            }
        }
    }

    #[test]
    fn reads_mksquashfs_images() {
        if !require_tool("mksquashfs") {
            return;
        }
        if !running_as_root() {
            crate::testutil::skip(
                "reading mksquashfs images (needs root to create owners and devices)",
            );
            return;
        }
        let mut t = sample_tree();
        t.clamp_mtimes(0);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        materialise(&t, &src);
        for (comp, bs) in [("gzip", "131072"), ("xz", "131072"), ("xz", "4096")] {
            let img = dir.path().join(format!("{comp}-{bs}.sqfs"));
            let out = Command::new("mksquashfs")
                .arg(&src)
                .arg(&img)
                .args([
                    "-comp",
                    comp,
                    "-b",
                    bs,
                    "-noappend",
                    "-no-xattrs",
                    "-all-time",
                    "0",
                    "-quiet",
                    "-no-progress",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mksquashfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let image = std::fs::read(&img).unwrap();
            assert_same(&read(&image).unwrap(), &t);
        }
    }
}
