//! qcow2 version 3 (qemu's docs/interop/qcow2.txt): 64 KiB clusters, 16-bit refcounts, no
//! backing file, no compression. Guest clusters that are all zero are left unallocated
//! (they read as zero), so the file holds only the image's data. Writer and reader are pure.
//!
//! Layout written, in clusters: header | refcount table | L1 table | refcount blocks |
//! L2 tables | data clusters, each guest cluster's data in guest order.

use anyhow::{ensure, Context, Result};

/// "QFI\xfb".
pub const MAGIC: &[u8; 4] = b"QFI\xfb";
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// refcount_order 4: 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
/// Length of the version 3 header structure written (fields up to refcount_order and
/// header_length; no compression_type field).
const HEADER_LENGTH: u32 = 104;
/// L1/L2 entry bit 63: the cluster's refcount is exactly one ("COPIED").
const COPIED: u64 = 1 << 63;
/// L2 entry bit 62: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (standard clusters, version 3): the cluster reads as zeros.
const ZERO: u64 = 1;
/// Bits 9-55 of an L1/L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn div_up(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Where each metadata area starts and how long it is, in clusters.
struct Layout {
    refcount_table: u64,
    refcount_table_clusters: u64,
    l1: u64,
    refcount_blocks: u64,
    refcount_block_count: u64,
    l2: u64,
    data: u64,
    total: u64,
}

fn layout(l1_entries: u64, l2_count: u64, data_count: u64) -> Layout {
    let per_refblock = CLUSTER * 8 / (1 << REFCOUNT_ORDER);
    let l1_clusters = div_up(l1_entries * 8, CLUSTER).max(1);
    // The refcount structures cover themselves: grow them until they do.
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + l1_clusters + rb + l2_count + data_count;
        let need_rb = div_up(total, per_refblock);
        let need_rt = div_up(need_rb * 8, CLUSTER).max(1);
        if need_rb <= rb && need_rt <= rt {
            break;
        }
        rb = rb.max(need_rb);
        rt = rt.max(need_rt);
    }
    let refcount_table = 1;
    let l1 = refcount_table + rt;
    let refcount_blocks = l1 + l1_clusters;
    let l2 = refcount_blocks + rb;
    let data = l2 + l2_count;
    Layout {
        refcount_table,
        refcount_table_clusters: rt,
        l1,
        refcount_blocks,
        refcount_block_count: rb,
        l2,
        data,
        total: data + data_count,
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The qcow2 file holding `raw` as its guest disk.
pub fn write(raw: &[u8]) -> Result<Vec<u8>> {
    let size = raw.len() as u64;
    let l2_entries = CLUSTER / 8;
    let guest_clusters = div_up(size, CLUSTER);
    let l1_entries = div_up(guest_clusters, l2_entries).max(1);
    let chunk = |i: u64| {
        let s = (i * CLUSTER) as usize;
        &raw[s..(s + CLUSTER as usize).min(raw.len())]
    };
    let allocated: Vec<bool> = (0..guest_clusters)
        .map(|i| chunk(i).iter().any(|&b| b != 0))
        .collect();
    let data_count = allocated.iter().filter(|&&a| a).count() as u64;
    // An L2 table only for the L1 entries that map any data.
    let l2_used: Vec<bool> = (0..l1_entries)
        .map(|t| {
            let first = t * l2_entries;
            let last = ((t + 1) * l2_entries).min(guest_clusters);
            (first..last).any(|i| allocated[i as usize])
        })
        .collect();
    let l2_count = l2_used.iter().filter(|&&u| u).count() as u64;
    let lay = layout(l1_entries, l2_count, data_count);
    let total_bytes = usize::try_from(lay.total * CLUSTER).context("image too large")?;
    let mut out = vec![0u8; total_bytes];

    // Header (all fields big-endian).
    out[0..4].copy_from_slice(MAGIC);
    put_u32(&mut out, 4, 3); // version
    put_u64(&mut out, 8, 0); // backing_file_offset
    put_u32(&mut out, 16, 0); // backing_file_size
    put_u32(&mut out, 20, CLUSTER_BITS);
    put_u64(&mut out, 24, size);
    put_u32(&mut out, 32, 0); // crypt_method: none
    put_u32(&mut out, 36, l1_entries as u32);
    put_u64(&mut out, 40, lay.l1 * CLUSTER);
    put_u64(&mut out, 48, lay.refcount_table * CLUSTER);
    put_u32(&mut out, 56, lay.refcount_table_clusters as u32);
    put_u32(&mut out, 60, 0); // nb_snapshots
    put_u64(&mut out, 64, 0); // snapshots_offset
    put_u64(&mut out, 72, 0); // incompatible_features
    put_u64(&mut out, 80, 0); // compatible_features
    put_u64(&mut out, 88, 0); // autoclear_features
    put_u32(&mut out, 96, REFCOUNT_ORDER);
    put_u32(&mut out, 100, HEADER_LENGTH);
    // Header extensions: only the end marker (type 0, length 0), already zero.

    // Refcount table: one entry per refcount block.
    for b in 0..lay.refcount_block_count {
        let at = (lay.refcount_table * CLUSTER + b * 8) as usize;
        put_u64(&mut out, at, (lay.refcount_blocks + b) * CLUSTER);
    }
    // Refcounts: every cluster of the file is used exactly once.
    for c in 0..lay.total {
        let at = (lay.refcount_blocks * CLUSTER + c * 2) as usize;
        out[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    // L1, L2 and data.
    let mut next_l2 = lay.l2;
    let mut next_data = lay.data;
    for t in 0..l1_entries {
        if !l2_used[t as usize] {
            continue;
        }
        let l2_at = next_l2;
        next_l2 += 1;
        put_u64(
            &mut out,
            (lay.l1 * CLUSTER + t * 8) as usize,
            (l2_at * CLUSTER) | COPIED,
        );
        for j in 0..l2_entries {
            let g = t * l2_entries + j;
            if g >= guest_clusters || !allocated[g as usize] {
                continue;
            }
            let host = next_data;
            next_data += 1;
            put_u64(
                &mut out,
                (l2_at * CLUSTER + j * 8) as usize,
                (host * CLUSTER) | COPIED,
            );
            let src = chunk(g);
            let dst = (host * CLUSTER) as usize;
            out[dst..dst + src.len()].copy_from_slice(src);
        }
    }
    debug_assert_eq!(next_data, lay.total);
    Ok(out)
}

fn be32(b: &[u8], at: u64) -> Result<u32> {
    let at = usize::try_from(at)?;
    Ok(u32::from_be_bytes(
        b.get(at..at.checked_add(4).context("qcow2 offset overflows")?)
            .context("qcow2 truncated")?
            .try_into()?,
    ))
}

fn be64(b: &[u8], at: u64) -> Result<u64> {
    let at = usize::try_from(at)?;
    Ok(u64::from_be_bytes(
        b.get(at..at.checked_add(8).context("qcow2 offset overflows")?)
            .context("qcow2 truncated")?
            .try_into()?,
    ))
}

/// The most guest bytes a qcow2 may describe per byte of file (beyond a fixed allowance):
/// unallocated clusters cost nothing in the file, so the virtual size is capped to keep a
/// small crafted file from asking for gigabytes.
const EXPANSION: u64 = 16;
const ALLOWANCE: u64 = 64 << 20;

/// The guest disk of a qcow2 file (version 2 or 3; no backing file, encryption,
/// compression, external data file or sub-clusters). Memory and time are bounded by the
/// file's size: the virtual size is at most [`EXPANSION`] times the file plus
/// [`ALLOWANCE`], and no cluster (L2 table or data) is referenced twice.
pub fn read(file: &[u8]) -> Result<Vec<u8>> {
    ensure!(file.get(..4) == Some(MAGIC), "not a qcow2 file");
    let version = be32(file, 4)?;
    ensure!(
        version == 2 || version == 3,
        "qcow2 version {version} is not supported"
    );
    ensure!(
        be64(file, 8)? == 0,
        "qcow2 with a backing file is not a whole image"
    );
    let cluster_bits = be32(file, 20)?;
    ensure!(
        (9..=21).contains(&cluster_bits),
        "qcow2 cluster_bits {cluster_bits} out of range"
    );
    let cluster = 1u64 << cluster_bits;
    let size = be64(file, 24)?;
    ensure!(be32(file, 32)? == 0, "encrypted qcow2 is not supported");
    let l1_entries = be32(file, 36)? as u64;
    let l1_offset = be64(file, 40)?;
    if version == 3 {
        let incompatible = be64(file, 72)?;
        // bit 0 dirty, bit 1 corrupt: refuse; bit 2 external data, bit 4 extended L2: unsupported.
        ensure!(
            incompatible == 0,
            "qcow2 incompatible features {incompatible:#x} are not supported"
        );
    }
    ensure!(
        size <= (file.len() as u64).saturating_mul(EXPANSION) + ALLOWANCE,
        "qcow2 virtual size {size} is implausible for a {}-byte file",
        file.len()
    );
    let size_usize = usize::try_from(size).context("qcow2 virtual size too large")?;
    let l2_entries = cluster / 8;
    let tables = size.div_ceil(cluster * l2_entries);
    ensure!(
        l1_entries >= tables,
        "qcow2 L1 table too small for the virtual size"
    );
    let mut raw = vec![0u8; size_usize];
    let guest_clusters = size.div_ceil(cluster);
    let mut seen = std::collections::HashSet::new();
    for t in 0..tables {
        let l1e = be64(file, l1_offset.saturating_add(t * 8))?;
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        ensure!(
            l2_off.is_multiple_of(cluster),
            "qcow2 L2 table offset {l2_off} is not cluster-aligned"
        );
        ensure!(
            seen.insert(l2_off),
            "qcow2 cluster at {l2_off} is referenced twice"
        );
        for j in 0..l2_entries {
            let g = t * l2_entries + j;
            if g >= guest_clusters {
                break;
            }
            let e = be64(file, l2_off + j * 8)?;
            ensure!(
                e & COMPRESSED == 0,
                "compressed qcow2 clusters are not supported"
            );
            let host = e & OFFSET_MASK;
            if host == 0 || (version == 3 && e & ZERO != 0) {
                continue;
            }
            ensure!(
                host.is_multiple_of(cluster),
                "qcow2 data cluster offset {host} is not cluster-aligned"
            );
            ensure!(
                seen.insert(host),
                "qcow2 cluster at {host} is referenced twice"
            );
            let start = (g * cluster) as usize;
            let len = (cluster as usize).min(size_usize - start);
            let src = file
                .get(host as usize..(host as usize).saturating_add(len))
                .with_context(|| format!("qcow2 data cluster at {host} beyond the file"))?;
            raw[start..start + len].copy_from_slice(src);
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::export::tests::sample;

    #[test]
    fn round_trip_leaves_zero_clusters_out() {
        let raw = sample(3 * 1024 * 1024 + 512);
        let q = write(&raw).unwrap();
        assert_eq!(read(&q).unwrap(), raw);
        // header, refcount table, L1, refcount block, one L2, three data clusters
        assert_eq!(q.len() as u64, 8 * CLUSTER);
        assert_eq!(write(&raw).unwrap(), q);
    }

    #[test]
    fn refcount_structures_cover_themselves() {
        let l = layout(1, 1, 40_000);
        // 40,000+ clusters need two refcount blocks of 32768 entries
        assert_eq!(l.refcount_block_count, 2);
        assert_eq!(l.total, l.data + 40_000);
    }

    /// Finding 8: a 192 KiB qcow2 whose L2 entries all point at one cluster expanded to
    /// 1.84 GB in 4.7 s.
    #[test]
    fn clusters_referenced_twice_and_huge_sizes_are_refused() {
        let raw = sample(8 << 20);
        let q = write(&raw).unwrap();
        let l1 = be64(&q, 40).unwrap();
        let l2 = be64(&q, l1).unwrap() & OFFSET_MASK;
        let first = be64(&q, l2).unwrap();
        assert_ne!(first, 0);
        let mut bad = q.clone();
        for j in 0..(8 << 20) / CLUSTER {
            let at = (l2 + j * 8) as usize;
            bad[at..at + 8].copy_from_slice(&first.to_be_bytes());
        }
        let e = format!("{:#}", read(&bad).unwrap_err());
        assert!(e.contains("referenced twice"), "{e}");
        // A virtual size of 1.84 GB in a file of a few hundred KiB.
        let mut big = q.clone();
        big[24..32].copy_from_slice(&1_840_000_000u64.to_be_bytes());
        let t = std::time::Instant::now();
        assert!(format!("{:#}", read(&big).unwrap_err()).contains("implausible"));
        assert!(t.elapsed().as_secs() < 3);
        // An L1 table of 2^32 entries is not walked entry by entry.
        let mut wide = q.clone();
        wide[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(read(&wide).unwrap(), raw);
        // Offsets near u64::MAX: errors, never panics.
        let mut far = q.clone();
        far[40..48].copy_from_slice(&(u64::MAX - 3).to_be_bytes());
        assert!(read(&far).is_err());
    }

    #[test]
    fn reader_refuses_what_it_does_not_know() {
        assert!(read(b"nope").is_err());
        let mut q = write(&sample(65536 * 2)).unwrap();
        q[72 + 7] = 1; // dirty bit
        assert!(read(&q).is_err());
        let q = write(&sample(65536 * 2)).unwrap();
        assert!(read(&q[..200]).is_err());
    }
}
