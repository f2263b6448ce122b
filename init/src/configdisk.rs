//! The config disk: a FAT file system labelled `FUSECONFIG` holding `/env`, on a whole disk
//! or a partition. Found by reading the first sector of every block device and checking the
//! FAT boot sector's volume label (FAT12/16: offset 43, FAT32: offset 71), then mounted
//! read-only (vfat, codepage 437, ASCII I/O charset: the NLS modules the image ships) just
//! long enough to read the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::block::{parse_uevent, scan, valid_devname};
use crate::sys::{cstring, mkdir_p, mount};

/// The volume label that marks a config disk.
pub const LABEL: &str = "FUSECONFIG";
/// The env file's name on it.
pub const ENV_FILE: &str = "env";
/// Where it is mounted while being read.
pub const MOUNT_DIR: &str = "/run/fuseconfig";
/// Largest env file read.
const MAX_ENV: u64 = 1 << 20;

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

/// The volume label in a FAT boot sector (trailing spaces removed), or `None` when the
/// sector is not a FAT boot sector with an extended BPB. Pure.
pub fn fat_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xaa] {
        return None;
    }
    if sector[0] != 0xeb && sector[0] != 0xe9 {
        return None; // no x86 jump: an MBR or something else, not a FAT boot sector
    }
    let bytes_per_sector = u16_at(sector, 11);
    if ![512, 1024, 2048, 4096].contains(&bytes_per_sector) || sector[13] == 0 {
        return None;
    }
    // FAT32: no fixed root directory and a zero 16-bit FAT size; its extended BPB is at 64.
    let fat32 = u16_at(sector, 17) == 0 && u16_at(sector, 22) == 0;
    let (sig, label) = if fat32 { (66, 71) } else { (38, 43) };
    if sector[sig] != 0x29 {
        return None;
    }
    let raw = &sector[label..label + 11];
    Some(String::from_utf8_lossy(raw).trim_end().to_string())
}

/// Device names (under /dev) worth probing, from `(sysfs name, uevent)` pairs: not loop,
/// RAM, zram or optical devices. Pure.
pub fn candidates(devices: &[(String, String)]) -> Vec<String> {
    devices
        .iter()
        .filter_map(|(_, text)| parse_uevent(text).devname)
        .filter(|d| valid_devname(d))
        .filter(|d| {
            !["loop", "ram", "zram", "sr"]
                .iter()
                .any(|p| d.starts_with(p))
        })
        .collect()
}

fn first_sector(dev: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(dev).ok()?;
    let mut b = vec![0u8; 512];
    f.read_exact(&mut b).ok()?;
    Some(b)
}

/// The first block device whose FAT label is [`LABEL`].
pub fn find() -> Option<PathBuf> {
    for dev in candidates(&scan()) {
        let path = Path::new("/dev").join(&dev);
        if let Some(sector) = first_sector(&path) {
            if fat_label(&sector).as_deref() == Some(LABEL) {
                return Some(path);
            }
        }
    }
    None
}

/// Whether an NVMe controller is present (`/sys/class/nvme`): its namespaces, and so a
/// config disk on it, may appear after its driver has loaded.
pub fn nvme_present() -> bool {
    std::fs::read_dir("/sys/class/nvme").is_ok_and(|mut d| d.next().is_some())
}

/// Mounts `dev` read-only, reads `/env`, unmounts.
pub fn read_env(dev: &Path) -> Result<Vec<u8>> {
    mkdir_p(MOUNT_DIR, 0o700)?;
    mount(
        &dev.to_string_lossy(),
        MOUNT_DIR,
        "vfat",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "codepage=437,iocharset=ascii,fmask=0077,dmask=0077",
    )
    .context("mounting the config disk")?;
    let path = format!("{MOUNT_DIR}/{ENV_FILE}");
    let data = std::fs::File::open(&path).and_then(|f| {
        let mut d = Vec::new();
        f.take(MAX_ENV + 1).read_to_end(&mut d)?;
        Ok(d)
    });
    if let Ok(c) = cstring(MOUNT_DIR) {
        // SAFETY: c is a valid C string.
        unsafe { libc::umount2(c.as_ptr(), 0) };
    }
    let data = data.with_context(|| format!("reading /{ENV_FILE} on the config disk"))?;
    if data.len() as u64 > MAX_ENV {
        bail!("/{ENV_FILE} on the config disk is larger than {MAX_ENV} bytes");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16-style boot sector with the given label, as mkfs.fat lays it out.
    fn fat16_sector(label: &[u8; 11]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        s[3..11].copy_from_slice(b"mkfs.fat");
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[17..19].copy_from_slice(&512u16.to_le_bytes()); // root entries
        s[22..24].copy_from_slice(&8u16.to_le_bytes()); // sectors per FAT
        s[38] = 0x29;
        s[43..54].copy_from_slice(label);
        s[54..62].copy_from_slice(b"FAT16   ");
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn reads_fat12_16_and_fat32_labels() {
        assert_eq!(
            fat_label(&fat16_sector(b"FUSECONFIG ")).as_deref(),
            Some(LABEL)
        );
        assert_eq!(
            fat_label(&fat16_sector(b"FUSE-ESP   ")).as_deref(),
            Some("FUSE-ESP")
        );
        let mut s32 = vec![0u8; 512];
        s32[0] = 0xeb;
        s32[11..13].copy_from_slice(&512u16.to_le_bytes());
        s32[13] = 1;
        s32[36..40].copy_from_slice(&1000u32.to_le_bytes()); // 32-bit FAT size
        s32[66] = 0x29;
        s32[71..82].copy_from_slice(b"FUSECONFIG ");
        s32[510] = 0x55;
        s32[511] = 0xaa;
        assert_eq!(fat_label(&s32).as_deref(), Some(LABEL));
    }

    #[test]
    fn refuses_what_is_not_a_fat_boot_sector() {
        let good = fat16_sector(b"FUSECONFIG ");
        let mut mbr = good.clone();
        mbr[0] = 0x00; // protective MBR / partition table: no jump instruction
        assert_eq!(fat_label(&mbr), None);
        let mut nosig = good.clone();
        nosig[510] = 0;
        assert_eq!(fat_label(&nosig), None);
        let mut noext = good.clone();
        noext[38] = 0; // no extended BPB: no label field
        assert_eq!(fat_label(&noext), None);
        let mut badbps = good.clone();
        badbps[11..13].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(fat_label(&badbps), None);
        assert_eq!(fat_label(&good[..100]), None);
    }

    #[test]
    fn probes_disks_and_partitions_but_not_loop_or_optical() {
        let devs = vec![
            ("loop0".to_string(), "DEVNAME=loop0\n".to_string()),
            ("sr0".to_string(), "DEVNAME=sr0\n".to_string()),
            ("vda".to_string(), "DEVNAME=vda\nDEVTYPE=disk\n".to_string()),
            (
                "vda1".to_string(),
                "DEVNAME=vda1\nPARTNAME=fuse-esp\n".to_string(),
            ),
            ("vdb".to_string(), "DEVNAME=vdb\nDEVTYPE=disk\n".to_string()),
            ("x".to_string(), "DEVNAME=../x\n".to_string()),
        ];
        assert_eq!(candidates(&devs), ["vda", "vda1", "vdb"]);
    }
}
