//! Verified layers: finds each layer's partition by its GPT partition GUID (read from the
//! disks' own GPTs), sets it up as a dm-verity device with the device-mapper ioctls on
//! `/dev/mapper/control` (no dmsetup, no libdevmapper), and reads it once end to end so a
//! corrupted block stops the boot before anything runs from it.
//!
//! Device-mapper ioctl protocol (`linux/dm-ioctl.h`): every call passes a buffer that starts
//! with `struct dm_ioctl` (312 bytes: `version[3]` u32 @0, `data_size` u32 @12,
//! `data_start` u32 @16, `target_count` u32 @20, `open_count` i32 @24, `flags` u32 @28,
//! `event_nr` u32 @32, padding @36, `dev` u64 @40, `name[128]` @48, `uuid[129]` @176,
//! `data[7]` @305). `DM_TABLE_LOAD` appends one `struct dm_target_spec` (40 bytes:
//! `sector_start` u64, `length` u64 in 512-byte sectors, `status` i32, `next` u32,
//! `target_type[16]`) followed by the target's parameter string.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::LayerVerity;

const DM_IOCTL_LEN: usize = 312;
const DM_TARGET_SPEC_LEN: usize = 40;
const DM_NAME_OFF: usize = 48;
const DM_NAME_LEN: usize = 128;
/// `_IOWR(0xfd, nr, struct dm_ioctl)`: direction 3 << 30, size 312 << 16, type 0xfd << 8.
const fn dm_ioctl_nr(nr: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_LEN as u32) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u32 = dm_ioctl_nr(3);
const DM_DEV_SUSPEND: u32 = dm_ioctl_nr(6);
const DM_TABLE_LOAD: u32 = dm_ioctl_nr(9);
const DM_READONLY_FLAG: u32 = 1;
/// The device-mapper control device (misc major 10, minor 236).
const CONTROL: &str = "/dev/mapper/control";

/// A layer partition found by GUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `/dev/vda2`
    pub dev: PathBuf,
    /// `254:2`
    pub majmin: String,
}

/// The unique GUIDs of a GPT's partitions, by partition number (1-based, as Linux numbers
/// them: entry index + 1). `disk` is the start of the disk (at least LBA 1 and the entry
/// array), `sector` its logical block size. Pure.
pub fn gpt_partuuids(disk: &[u8], sector: usize) -> Result<BTreeMap<u32, String>> {
    let hdr = disk
        .get(sector..sector + 92)
        .context("disk too short for a GPT header")?;
    if &hdr[0..8] != b"EFI PART" {
        bail!("no GPT");
    }
    let u32_at = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let entries_lba = u64::from_le_bytes(hdr[72..80].try_into()?);
    let count = u32_at(80) as usize;
    let size = u32_at(84) as usize;
    if size < 128 || count > 1024 {
        bail!("unusual GPT entry array ({count} entries of {size} bytes)");
    }
    let start = (entries_lba as usize)
        .checked_mul(sector)
        .context("GPT entries beyond reach")?;
    let mut out = BTreeMap::new();
    for i in 0..count {
        let e = disk
            .get(start + i * size..start + i * size + 128)
            .context("disk too short for the GPT entries")?;
        if e[0..16].iter().all(|&b| b == 0) {
            continue; // unused entry
        }
        out.insert(i as u32 + 1, guid_string(&e[16..32]));
    }
    Ok(out)
}

/// A GPT GUID as text: the first three fields are stored little-endian.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// One block device as sysfs shows it.
#[derive(Debug, Clone, Default)]
struct SysBlock {
    name: String,
    devname: String,
    partn: Option<u32>,
    is_disk: bool,
    majmin: String,
    /// For partitions: the disk's sysfs name.
    parent: Option<String>,
}

fn sys_blocks() -> Vec<SysBlock> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let Ok(uevent) = std::fs::read_to_string(path.join("uevent")) else {
            continue;
        };
        let mut b = SysBlock {
            name: name.clone(),
            ..Default::default()
        };
        for line in uevent.lines() {
            match line.split_once('=') {
                Some(("DEVNAME", v)) => b.devname = v.to_string(),
                Some(("PARTN", v)) => b.partn = v.parse().ok(),
                Some(("DEVTYPE", v)) => b.is_disk = v == "disk",
                _ => {}
            }
        }
        b.majmin = std::fs::read_to_string(path.join("dev"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if b.partn.is_some() {
            b.parent = std::fs::canonicalize(&path).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            });
        }
        if crate::block::valid_devname(&b.devname) {
            out.push(b);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads the first `len` bytes of a block device.
fn read_head(dev: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Every partition GUID on every disk: GUID -> (partition device, major:minor).
fn scan_guids() -> BTreeMap<String, Vec<Found>> {
    let blocks = sys_blocks();
    let mut out: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for disk in blocks.iter().filter(|b| b.is_disk) {
        let sector: usize = std::fs::read_to_string(format!(
            "/sys/class/block/{}/queue/logical_block_size",
            disk.name
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512);
        // Header at LBA 1, entries usually at LBA 2: 128 entries of 128 bytes.
        let Ok(head) = read_head(&Path::new("/dev").join(&disk.devname), 2 * sector + 32768) else {
            continue;
        };
        let Ok(guids) = gpt_partuuids(&head, sector) else {
            continue;
        };
        for (g, f) in partitions_of(disk, &blocks, &guids) {
            out.entry(g).or_default().push(f);
        }
    }
    out
}

/// The partitions of `disk` whose GPT entry has a GUID in `guids` (by partition number).
/// A partition shows in sysfs (its uevent) a moment before its `dev` attribute: one without
/// major:minor yet is left out, and the next poll finds it whole.
fn partitions_of(
    disk: &SysBlock,
    blocks: &[SysBlock],
    guids: &BTreeMap<u32, String>,
) -> Vec<(String, Found)> {
    blocks
        .iter()
        .filter(|b| b.parent.as_deref() == Some(disk.name.as_str()) && !b.majmin.is_empty())
        .filter_map(|part| {
            let g = part.partn.and_then(|n| guids.get(&n))?;
            Some((
                g.clone(),
                Found {
                    dev: Path::new("/dev").join(&part.devname),
                    majmin: part.majmin.clone(),
                },
            ))
        })
        .collect()
}

/// Polls until every layer's partition (by GUID) is present, or `timeout` passes.
pub fn find_partitions(
    layers: &[String],
    verity: &BTreeMap<String, LayerVerity>,
    timeout: Duration,
    interval: Duration,
) -> Result<BTreeMap<String, Found>> {
    let start = Instant::now();
    loop {
        let guids = scan_guids();
        let mut found = BTreeMap::new();
        for l in layers {
            let v = verity
                .get(l)
                .with_context(|| format!("boot.json: no verity entry for layer {l}"))?;
            if let Some(f) = guids
                .get(&v.partuuid)
                .and_then(|c| c.iter().find(|f| f.dev.exists()))
            {
                if guids.get(&v.partuuid).map_or(0, Vec::len) > 1 {
                    crate::log!(
                        "warning: more than one partition has GUID {} (layer {l}); using {} (verity checks its content)",
                        v.partuuid,
                        f.dev.display()
                    );
                }
                found.insert(l.clone(), f.clone());
            }
        }
        if found.len() == layers.len() {
            return Ok(found);
        }
        if start.elapsed() >= timeout {
            let missing: Vec<String> = layers
                .iter()
                .filter(|l| !found.contains_key(*l))
                .map(|l| {
                    format!(
                        "{l} (GUID {})",
                        verity.get(l).map(|v| v.partuuid.as_str()).unwrap_or("?")
                    )
                })
                .collect();
            bail!(
                "no partition for layer {} after {}s; partition GUIDs seen: {}",
                missing.join(", "),
                timeout.as_secs(),
                guids.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        std::thread::sleep(interval);
    }
}

/// The dm-verity table line (format 1, sha256, 4096-byte blocks, data and hash tree on the
/// same partition).
pub fn table(majmin: &str, v: &LayerVerity) -> String {
    format!(
        "1 {majmin} {majmin} 4096 4096 {} {} sha256 {} {}",
        v.data_blocks, v.hash_start_block, v.root_hash, v.salt
    )
}

/// A `struct dm_ioctl` buffer for device `name` with `extra` bytes of payload room.
fn dm_buf(name: &str, extra: usize) -> Result<Vec<u64>> {
    if name.len() >= DM_NAME_LEN {
        bail!("device-mapper name {name:?} too long");
    }
    let len = (DM_IOCTL_LEN + extra).div_ceil(8) * 8;
    let mut words = vec![0u64; len / 8];
    let b = bytes_mut(&mut words);
    b[0..4].copy_from_slice(&4u32.to_le_bytes()); // interface version 4.0.0
    b[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_LEN as u32).to_le_bytes());
    b[DM_NAME_OFF..DM_NAME_OFF + name.len()].copy_from_slice(name.as_bytes());
    Ok(words)
}

fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 storage reinterpreted as bytes (alignment 8 >= 1, same length in bytes).
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

fn dm_ioctl(ctl: &std::fs::File, req: u32, buf: &mut [u64], what: &str) -> Result<()> {
    // SAFETY: buf is a writable dm_ioctl buffer of at least the data_size it declares.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), req as libc::c_ulong, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(anyhow!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn open_control() -> Result<std::fs::File> {
    if !Path::new(CONTROL).exists() {
        crate::sys::mkdir_p("/dev/mapper", 0o755)?;
        let path = crate::sys::cstring(CONTROL)?;
        // SAFETY: valid C string; makedev of constants.
        let r =
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 236)) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                bail!("creating {CONTROL}: {e} (is the dm_mod module loaded?)");
            }
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .with_context(|| format!("opening {CONTROL} (is the dm_mod module loaded?)"))
}

/// Creates the read-only dm-verity device `fuse-<layer>` over `part`; returns its node
/// (`/dev/dm-N`).
pub fn create(layer: &str, part: &Found, v: &LayerVerity) -> Result<PathBuf> {
    if part.majmin.is_empty() {
        bail!("{}: no major:minor in sysfs", part.dev.display());
    }
    let ctl = open_control()?;
    let name = format!("fuse-{layer}");
    let mut buf = dm_buf(&name, 0)?;
    dm_ioctl(&ctl, DM_DEV_CREATE, &mut buf, "DM_DEV_CREATE")?;
    let dev = u64::from_le_bytes(bytes_mut(&mut buf)[40..48].try_into()?);
    // huge_encode_dev: minor low 8 bits, major, then the minor's upper bits.
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;

    let params = table(&part.majmin, v);
    let mut buf = dm_buf(&name, DM_TARGET_SPEC_LEN + params.len() + 1)?;
    {
        let b = bytes_mut(&mut buf);
        b[20..24].copy_from_slice(&1u32.to_le_bytes()); // target_count
        b[28..32].copy_from_slice(&DM_READONLY_FLAG.to_le_bytes());
        let s = DM_IOCTL_LEN;
        b[s..s + 8].copy_from_slice(&0u64.to_le_bytes());
        b[s + 8..s + 16].copy_from_slice(&(v.data_blocks * 8).to_le_bytes());
        b[s + 24..s + 30].copy_from_slice(b"verity");
        let p = s + DM_TARGET_SPEC_LEN;
        b[p..p + params.len()].copy_from_slice(params.as_bytes());
    }
    dm_ioctl(&ctl, DM_TABLE_LOAD, &mut buf, "DM_TABLE_LOAD (verity)")?;

    let mut buf = dm_buf(&name, 0)?;
    dm_ioctl(&ctl, DM_DEV_SUSPEND, &mut buf, "DM_DEV_SUSPEND (resume)")?;

    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    let start = Instant::now();
    while !node.exists() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !node.exists() {
        let path = crate::sys::cstring(&node.to_string_lossy())?;
        // SAFETY: valid C string.
        let r = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(major, minor),
            )
        };
        if r < 0 {
            bail!(
                "creating {}: {}",
                node.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(node)
}

/// Reads a verity device end to end (direct I/O, so the page cache keeps nothing): any
/// block whose hash does not match fails with EIO. Returns the bytes read.
pub fn read_all(dev: &Path) -> Result<u64> {
    const CHUNK: usize = 1 << 20;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("opening {}", dev.display()))?;
    // O_DIRECT needs an aligned buffer: u64 storage plus an offset to a 4096 boundary.
    let mut store = vec![0u64; (CHUNK + 4096) / 8];
    let base = store.as_mut_ptr() as usize;
    let skip = (4096 - base % 4096) % 4096;
    let mut total = 0u64;
    loop {
        // SAFETY: [base+skip, base+skip+CHUNK) lies inside `store`.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                (base + skip) as *mut libc::c_void,
                CHUNK,
                total as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("reading {} at byte {total}: {e}", dev.display());
        }
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Sets up every layer as a verity device and reads each once; a failure names the layer
/// (`layer <name> failed verification: ...`). Returns layer -> `/dev/dm-N`.
pub fn setup_all(
    layers: &[String],
    verity: &BTreeMap<String, LayerVerity>,
    parts: &BTreeMap<String, Found>,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for l in layers {
        let (Some(v), Some(p)) = (verity.get(l), parts.get(l)) else {
            bail!("layer {l}: no partition or verity parameters");
        };
        let dev = create(l, p, v)
            .with_context(|| format!("setting up layer {l} as a dm-verity device"))?;
        out.insert(l.clone(), dev);
    }
    for l in layers {
        let dev = &out[l];
        let t = Instant::now();
        let n = read_all(dev).with_context(|| format!("layer {l} failed verification"))?;
        crate::log!(
            "layer {l}: verified {} bytes on {} in {} ms",
            n,
            dev.display(),
            t.elapsed().as_millis()
        );
    }
    // One line with every layer's verity root, printed only once all of them verified: the
    // identity gate of `fuse deploy` compares it with the image's image.json.
    crate::log!("{}", roots_line(layers, verity));
    Ok(out)
}

/// `verity roots: NAME=ROOT ...` in layer order (the line `fuse deploy` reads).
pub fn roots_line(layers: &[String], verity: &BTreeMap<String, LayerVerity>) -> String {
    let roots: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                "{l}={}",
                verity.get(l).map(|v| v.root_hash.as_str()).unwrap_or("?")
            )
        })
        .collect();
    format!("verity roots: {}", roots.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_major_minor_yet_is_not_found() {
        let disk = SysBlock {
            name: "vda".into(),
            devname: "vda".into(),
            is_disk: true,
            majmin: "254:0".into(),
            ..Default::default()
        };
        let part = |n: u32, majmin: &str| SysBlock {
            name: format!("vda{n}"),
            devname: format!("vda{n}"),
            partn: Some(n),
            majmin: majmin.into(),
            parent: Some("vda".into()),
            ..Default::default()
        };
        let guids: BTreeMap<u32, String> = [(2, "g2".to_string()), (4, "g4".to_string())].into();
        let blocks = vec![disk.clone(), part(2, "254:2"), part(4, "")];
        let found = partitions_of(&disk, &blocks, &guids);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "g2");
        assert_eq!(found[0].1.majmin, "254:2");
        let blocks = vec![disk.clone(), part(2, "254:2"), part(4, "254:4")];
        assert_eq!(partitions_of(&disk, &blocks, &guids).len(), 2);
    }

    #[test]
    fn ioctl_numbers_match_the_header() {
        // From linux/dm-ioctl.h with sizeof(struct dm_ioctl) == 312 on x86_64.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn table_line() {
        let v = LayerVerity {
            partuuid: "x".into(),
            data_blocks: 66,
            hash_start_block: 67,
            root_hash: "ab".into(),
            salt: "cd".into(),
        };
        assert_eq!(
            table("254:3", &v),
            "1 254:3 254:3 4096 4096 66 67 sha256 ab cd"
        );
    }

    #[test]
    fn reads_partition_guids_from_a_gpt() {
        let mut disk = vec![0u8; 512 * 34];
        disk[512..520].copy_from_slice(b"EFI PART");
        disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        // entry 2 (partition 3) in use, with GUID bytes 0..16
        let e = 1024 + 2 * 128;
        disk[e] = 1;
        for i in 0..16 {
            disk[e + 16 + i] = i as u8;
        }
        let g = gpt_partuuids(&disk, 512).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[&3], "03020100-0504-0706-0809-0a0b0c0d0e0f");
        assert!(gpt_partuuids(&disk[..600], 512).is_err());
        assert!(gpt_partuuids(&vec![0u8; 2048], 512).is_err());
    }
}
