//! dm-verity hash trees (format 1, as the kernel's dm-verity target and `veritysetup` use
//! them): a pure function of a layer's file-system bytes, and a verifier for `inspect`.
//!
//! A layer partition holds, each part starting on a 4096-byte boundary:
//!
//! ```text
//! [ file system (squashfs), zero-padded to 4096 ] [ verity superblock, one 4096 block ] [ hash tree ]
//!   data blocks 0 .. data_blocks                    at hash_offset                      at hash_offset + 4096
//! ```
//!
//! The hash tree (Linux `Documentation/admin-guide/device-mapper/verity.rst`):
//! * data and hash blocks are 4096 bytes; sha256 digests (32 bytes) are packed 128 to a
//!   hash block, each hash block zero-padded at its end;
//! * the digest of a block is `sha256(salt || block)` (format 1; format 0 put the salt last);
//! * level 0 holds the digests of the data blocks, level i+1 those of level i's blocks;
//!   there are as many levels as it takes for the top one to fit in one block (none when
//!   there is a single data block);
//! * on disk the top level comes first, then each level below it;
//! * the root hash is the digest of the top level's single block (of the data block itself
//!   when there is only one).
//!
//! The superblock is `veritysetup`'s (so `veritysetup verify` can check a partition with the
//! root hash alone); the kernel never reads it and nothing trusts it: the root hash and
//! parameters travel in the boot plan, inside the UKI. All integers little-endian:
//! `signature "verity\0\0"` @0, `version` u32 = 1 @8, `hash_type` u32 = 1 @12, `uuid`
//! [16] @16, `algorithm` [32] NUL-padded @32, `data_block_size` u32 @64,
//! `hash_block_size` u32 @68, `data_blocks` u64 @72, `salt_size` u16 @80, pad [6],
//! `salt` [256] @88, pad to 512 bytes; the rest of its block is zero.

use crate::digest::hex;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Data and hash block size.
pub const BLOCK: usize = 4096;
/// sha256 digests per hash block.
const PER_BLOCK: usize = BLOCK / 32;
/// Bytes of the superblock structure (the rest of its block is zero).
#[cfg(test)]
const SB_LEN: usize = 512;
const SB_MAGIC: &[u8; 8] = b"verity\0\0";

/// Everything a reader needs to check a layer partition, as image.json and the boot plan
/// record it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerityParams {
    /// dm-verity hash format: always 1.
    pub format: u32,
    /// Hash algorithm: always "sha256".
    pub algorithm: String,
    /// Data and hash block size in bytes: always 4096.
    pub block_size: u32,
    /// Number of data blocks (the file system, zero-padded to whole blocks).
    pub data_blocks: u64,
    /// Byte offset of the verity superblock inside the partition (= data_blocks * 4096);
    /// the hash tree starts one block later.
    pub hash_offset: u64,
    /// Salt, hex.
    pub salt: String,
    /// Root hash, hex.
    pub root_hash: String,
}

impl VerityParams {
    /// The hash tree's first block, in 4096-byte blocks from the partition start (the
    /// dm-verity table's `hash_start_block`: past the superblock).
    pub fn hash_start_block(&self) -> u64 {
        self.hash_offset / BLOCK as u64 + 1
    }

    /// Bytes of the whole partition: data, superblock, hash tree.
    pub fn partition_size(&self) -> u64 {
        self.hash_offset + BLOCK as u64 + tree_blocks(self.data_blocks) as u64 * BLOCK as u64
    }
}

/// The salt of a layer: derived from its content, so the output stays deterministic and
/// two layers never share one.
pub fn salt_for(data: &[u8]) -> [u8; 32] {
    let content = Sha256::digest(data);
    Sha256::new()
        .chain_update(b"fuse dm-verity salt\0")
        .chain_update(content)
        .finalize()
        .into()
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(block)
        .finalize()
        .into()
}

/// Blocks per level, level 0 (hashing data) first, as the kernel computes them.
fn level_sizes(data_blocks: u64) -> Vec<usize> {
    let mut levels = 0u32;
    while data_blocks > 0 && 7 * levels < 64 && (data_blocks - 1) >> (7 * levels) != 0 {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = 7 * (i + 1);
            (data_blocks.div_ceil(1u64 << shift.min(63))) as usize
        })
        .collect()
}

fn tree_blocks(data_blocks: u64) -> usize {
    level_sizes(data_blocks).iter().sum()
}

/// The digests of consecutive blocks packed into hash blocks (zero-padded).
fn pack(digests: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(digests.len().div_ceil(PER_BLOCK) * BLOCK);
    for d in digests {
        out.extend_from_slice(d);
    }
    out.resize(digests.len().div_ceil(PER_BLOCK) * BLOCK, 0);
    out
}

/// The hash tree of `data` (zero-padded to whole blocks) with `salt`: returns the root hash
/// and the tree as stored on disk (top level first). Pure.
pub fn hash_tree(data: &[u8], salt: &[u8]) -> ([u8; 32], Vec<u8>) {
    let blocks = data.len().div_ceil(BLOCK).max(1);
    let mut digests: Vec<[u8; 32]> = (0..blocks)
        .map(|i| {
            let start = i * BLOCK;
            match data.get(start..start + BLOCK) {
                Some(b) => hash_block(salt, b),
                None => {
                    // the final partial block, zero-padded
                    let mut last = [0u8; BLOCK];
                    let rest = data.get(start..).unwrap_or(&[]);
                    last[..rest.len()].copy_from_slice(rest);
                    hash_block(salt, &last)
                }
            }
        })
        .collect();
    let mut levels: Vec<Vec<u8>> = Vec::new();
    while digests.len() > 1 {
        let packed = pack(&digests);
        digests = packed.chunks(BLOCK).map(|b| hash_block(salt, b)).collect();
        levels.push(packed);
    }
    let root = digests[0];
    let mut tree = Vec::with_capacity(levels.iter().map(Vec::len).sum());
    for l in levels.iter().rev() {
        tree.extend_from_slice(l);
    }
    (root, tree)
}

/// The superblock block `veritysetup` writes (see the module documentation).
fn superblock(data_blocks: u64, salt: &[u8], uuid: [u8; 16]) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(SB_MAGIC);
    sb[8..12].copy_from_slice(&1u32.to_le_bytes());
    sb[12..16].copy_from_slice(&1u32.to_le_bytes());
    sb[16..32].copy_from_slice(&uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    sb
}

/// A layer partition: the file system zero-padded to 4096, the superblock, the hash tree.
/// Deterministic: the salt and the superblock's UUID derive from `fs`.
pub fn partition(fs: &[u8]) -> (Vec<u8>, VerityParams) {
    let salt = salt_for(fs);
    let (root, tree) = hash_tree(fs, &salt);
    let data_blocks = fs.len().div_ceil(BLOCK).max(1) as u64;
    let hash_offset = data_blocks * BLOCK as u64;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&Sha256::digest(root)[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // RFC 4122 version 4 layout, content-derived
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let mut out = Vec::with_capacity(hash_offset as usize + BLOCK + tree.len());
    out.extend_from_slice(fs);
    out.resize(hash_offset as usize, 0);
    out.extend_from_slice(&superblock(data_blocks, &salt, uuid));
    out.extend_from_slice(&tree);
    let params = VerityParams {
        format: 1,
        algorithm: "sha256".into(),
        block_size: BLOCK as u32,
        data_blocks,
        hash_offset,
        salt: hex(&salt),
        root_hash: hex(&root),
    };
    (out, params)
}

/// Checks a partition's bytes against `params` (from a trusted place): recomputes the
/// hash tree over the data blocks and compares the root hash and the stored tree. Fails
/// saying what differs. Bytes past the tree (GPT alignment) are ignored.
pub fn verify(part: &[u8], params: &VerityParams) -> Result<()> {
    ensure!(
        params.format == 1 && params.algorithm == "sha256" && params.block_size == BLOCK as u32,
        "unsupported verity parameters: format {}, {}, block size {}",
        params.format,
        params.algorithm,
        params.block_size
    );
    ensure!(
        params.hash_offset == params.data_blocks * BLOCK as u64,
        "verity hash offset {} is not right after the {} data blocks",
        params.hash_offset,
        params.data_blocks
    );
    let salt = unhex(&params.salt).context("verity salt is not hex")?;
    let data = part
        .get(..params.hash_offset as usize)
        .context("partition is shorter than its verity data area")?;
    let (root, tree) = hash_tree(data, &salt);
    if hex(&root) != params.root_hash {
        bail!(
            "verity root hash mismatch: expected {}, got {} from the data",
            params.root_hash,
            hex(&root)
        );
    }
    let start = params.hash_start_block() as usize * BLOCK;
    let stored = part
        .get(start..start + tree.len())
        .context("partition is shorter than its verity hash tree")?;
    if stored != tree.as_slice() {
        bail!("the stored verity hash tree does not match the data (root hash matches)");
    }
    Ok(())
}

/// Reads the superblock at `hash_offset` (untrusted: for display and cross-checks).
#[cfg(test)]
pub fn read_superblock(part: &[u8], hash_offset: u64) -> Result<(u64, Vec<u8>)> {
    let sb = part
        .get(hash_offset as usize..hash_offset as usize + SB_LEN)
        .context("no verity superblock: partition too short")?;
    ensure!(
        &sb[0..8] == SB_MAGIC,
        "no verity superblock at {hash_offset}"
    );
    let data_blocks = u64::from_le_bytes(sb[72..80].try_into()?);
    let salt_size = u16::from_le_bytes(sb[80..82].try_into()?) as usize;
    ensure!(salt_size <= 256, "verity superblock salt size {salt_size}");
    Ok((data_blocks, sb[88..88 + salt_size].to_vec()))
}

pub fn unhex(s: &str) -> Result<Vec<u8>> {
    ensure!(s.len().is_multiple_of(2), "odd length");
    (0..s.len() / 2)
        .map(|i| {
            u8::from_str_radix(s.get(i * 2..i * 2 + 2).context("not ASCII")?, 16)
                .context("not a hex digit")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    #[test]
    fn levels_follow_the_kernel() {
        assert_eq!(level_sizes(1), Vec::<usize>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128), vec![128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
    }

    #[test]
    fn a_two_level_tree_by_hand() {
        // 129 data blocks: level 0 has 2 blocks, level 1 one; stored top level first.
        let d = data(129 * BLOCK - 100, 7);
        let salt = [9u8; 32];
        let (root, tree) = hash_tree(&d, &salt);
        assert_eq!(tree.len(), 3 * BLOCK);
        let mut padded = d.clone();
        padded.resize(129 * BLOCK, 0);
        let l0: Vec<[u8; 32]> = padded.chunks(BLOCK).map(|b| hash_block(&salt, b)).collect();
        let l0 = pack(&l0);
        assert_eq!(&tree[BLOCK..], &l0[..]);
        let l1 = pack(
            &l0.chunks(BLOCK)
                .map(|b| hash_block(&salt, b))
                .collect::<Vec<_>>(),
        );
        assert_eq!(&tree[..BLOCK], &l1[..]);
        assert_eq!(root, hash_block(&salt, &l1));
        // format 1: salt first
        let manual: [u8; 32] = Sha256::new()
            .chain_update(salt)
            .chain_update(&l1)
            .finalize()
            .into();
        assert_eq!(root, manual);
    }

    #[test]
    fn one_block_has_no_tree_and_its_hash_is_the_root() {
        let d = data(100, 1);
        let (root, tree) = hash_tree(&d, b"s");
        assert!(tree.is_empty());
        let mut b = d.clone();
        b.resize(BLOCK, 0);
        assert_eq!(root, hash_block(b"s", &b));
    }

    #[test]
    fn partition_is_deterministic_verifies_and_catches_a_flip() {
        let d = data(300 * BLOCK + 5, 3);
        let (part, p) = partition(&d);
        assert_eq!(part.len() as u64, p.partition_size());
        assert_eq!(p.data_blocks, 301);
        assert_eq!(p.hash_offset % BLOCK as u64, 0);
        assert_eq!(partition(&d), (part.clone(), p.clone()));
        verify(&part, &p).unwrap();
        let (blocks, salt) = read_superblock(&part, p.hash_offset).unwrap();
        assert_eq!((blocks, hex(&salt)), (301, p.salt.clone()));
        let mut bad = part.clone();
        bad[150 * BLOCK + 17] ^= 1;
        let e = format!("{:#}", verify(&bad, &p).unwrap_err());
        assert!(e.contains("root hash mismatch"), "{e}");
        let mut bad_tree = part.clone();
        let last = bad_tree.len() - 1;
        bad_tree[last - 40] ^= 1;
        assert!(verify(&bad_tree, &p).is_err());
        // another layer: another salt
        assert_ne!(partition(&data(BLOCK, 4)).1.salt, p.salt);
    }

    /// Cross-check with the reference implementation: `veritysetup verify` on a file.
    #[test]
    fn veritysetup_accepts_the_partition() {
        if !crate::testutil::require_tool("veritysetup") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (len, seed) in [(100usize, 1u8), (2 * BLOCK, 2), (129 * BLOCK + 1, 3)] {
            let (part, p) = partition(&data(len, seed));
            let f = dir.path().join(format!("p{len}"));
            std::fs::write(&f, &part).unwrap();
            let run = |root: &str| {
                std::process::Command::new("veritysetup")
                    .arg("verify")
                    .arg(&f)
                    .arg(&f)
                    .arg(root)
                    .arg(format!("--hash-offset={}", p.hash_offset))
                    .output()
                    .unwrap()
            };
            let ok = run(&p.root_hash);
            assert!(
                ok.status.success(),
                "len {len}: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
            let mut wrong = p.root_hash.clone().into_bytes();
            wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
            assert!(!run(std::str::from_utf8(&wrong).unwrap()).status.success());
        }
    }
}
