//! Which 512 KiB blocks an EBS snapshot must receive (pure): an image is cut into EBS
//! direct's blocks; without a parent snapshot a block is sent when it is not all zeros (a
//! new snapshot reads zeros where nothing was written); with a parent (the snapshot of the
//! environment's current digest, whose image fuse holds locally) a block is sent when it
//! differs from the parent's block at the same index, zeros included (a block the parent
//! had and the new image clears must be overwritten, or the child would inherit it), over
//! the longer of the two images. Checksums are what the API wants: SHA256 of each block,
//! base64; CompleteSnapshot's is the linear aggregation (SHA256 over the blocks' raw
//! digests in block-index order, base64).

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// EBS direct's block size.
pub const BLOCK: usize = 512 * 1024;
const GIB: u64 = 1 << 30;

/// The upload plan of one image against an optional parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Blocks of the new snapshot's data (the longer of image and parent, in blocks).
    pub total: u64,
    /// Block indexes to send, ascending.
    pub send: Vec<u64>,
    /// Blocks not sent because they are zeros (and zeros in the parent, if any).
    pub skipped_zero: u64,
    /// Blocks not sent because the parent holds the same bytes.
    pub skipped_unchanged: u64,
}

/// Block `i` of `disk`, zero-padded to [`BLOCK`] (an all-zero block past its end).
pub fn block(disk: &[u8], i: u64) -> Vec<u8> {
    let start = (i as usize).saturating_mul(BLOCK).min(disk.len());
    let end = start.saturating_add(BLOCK).min(disk.len());
    let mut b = disk[start..end].to_vec();
    b.resize(BLOCK, 0);
    b
}

fn slice(disk: &[u8], i: u64) -> &[u8] {
    let start = (i as usize).saturating_mul(BLOCK).min(disk.len());
    &disk[start..start.saturating_add(BLOCK).min(disk.len())]
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Whether two blocks hold the same bytes once zero-padded to [`BLOCK`].
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n] && is_zero(&a[n..]) && is_zero(&b[n..])
}

/// The plan for `image` over `parent` (`None`: a snapshot without a parent).
pub fn plan(image: &[u8], parent: Option<&[u8]>) -> Plan {
    let len = image.len().max(parent.map_or(0, <[u8]>::len));
    let total = len.div_ceil(BLOCK) as u64;
    let mut p = Plan {
        total,
        ..Plan::default()
    };
    for i in 0..total {
        let b = slice(image, i);
        match parent.map(|par| slice(par, i)) {
            None if is_zero(b) => p.skipped_zero += 1,
            None => p.send.push(i),
            Some(old) if same(b, old) && is_zero(b) => p.skipped_zero += 1,
            Some(old) if same(b, old) => p.skipped_unchanged += 1,
            Some(_) => p.send.push(i),
        }
    }
    p
}

/// SHA256 of a (padded) block.
pub fn checksum(block: &[u8]) -> [u8; 32] {
    Sha256::digest(block).into()
}

pub fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// CompleteSnapshot's checksum: SHA256 over the sent blocks' digests in index order, base64.
pub fn linear_aggregate<'a>(digests_in_order: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests_in_order {
        h.update(d);
    }
    b64(&h.finalize())
}

/// The snapshot's volume size in GiB (EBS sizes volumes in whole GiB, at least 1).
pub fn volume_gib(len: u64) -> u64 {
    len.div_ceil(GIB).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(blocks: &[u8]) -> Vec<u8> {
        blocks.iter().flat_map(|&v| vec![v; BLOCK]).collect()
    }

    #[test]
    fn without_parent_only_non_zero_blocks() {
        let img = disk(&[1, 0, 2, 0]);
        let p = plan(&img, None);
        assert_eq!((p.total, p.send.clone()), (4, vec![0, 2]));
        assert_eq!((p.skipped_zero, p.skipped_unchanged), (2, 0));
        // A partial last block counts and is padded.
        let mut short = img.clone();
        short.extend_from_slice(&[5; 100]);
        assert_eq!(plan(&short, None).send, vec![0, 2, 4]);
        assert_eq!(block(&short, 4).len(), BLOCK);
        assert_eq!(
            &block(&short, 4)[..101],
            &[[5u8; 100].as_slice(), &[0]].concat()[..]
        );
    }

    #[test]
    fn with_parent_changed_blocks_and_cleared_ones() {
        let old = disk(&[1, 1, 0, 3, 4]);
        let new = disk(&[1, 2, 0, 0]);
        let p = plan(&new, Some(&old));
        // 1 changed, 3 cleared, 4 beyond the new image's end but in the parent: cleared.
        assert_eq!(p.send, vec![1, 3, 4]);
        assert_eq!((p.total, p.skipped_zero, p.skipped_unchanged), (5, 1, 1));
        assert!(plan(&new, Some(&new)).send.is_empty());
    }

    #[test]
    fn checksums_are_base64_sha256_and_linear() {
        let b = block(&[], 0);
        let d = checksum(&b);
        assert_eq!(b64(&d), b64(&Sha256::digest(vec![0u8; BLOCK])));
        let mut h = Sha256::new();
        h.update(d);
        h.update([7u8; 32]);
        assert_eq!(linear_aggregate([&d, &[7u8; 32]]), b64(&h.finalize()));
        assert_eq!(
            (volume_gib(1), volume_gib(GIB), volume_gib(GIB + 1)),
            (1, 1, 2)
        );
    }
}
