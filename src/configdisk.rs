//! The config disk: boot-time configuration for hypervisors without QEMU's fw_cfg. A raw
//! disk holding one bare FAT file system (no partition table: a "superfloppy", which Linux
//! reads as a whole-disk file system) with the volume label `FUSECONFIG` and the env file
//! as `/env`. The init finds it by the label in the FAT boot sector. Deterministic: the same
//! env file gives the same bytes (serial number from the content, 1980 timestamps).

use crate::digest::sha256_hex;
use crate::format::fat;
use crate::tree::{Node, Tree};
use anyhow::{Context, Result};

/// FAT volume label the init looks for.
pub const LABEL: &str = "FUSECONFIG";
/// The env file's name in the FAT root directory.
pub const ENV_FILE: &str = "env";
/// Smallest disk written: 1 MiB (FAT12), a size every hypervisor accepts.
pub const MIN_SIZE: u64 = 1 << 20;

/// The config disk for `env` (an env file, already checked).
pub fn write(env: &[u8]) -> Result<Vec<u8>> {
    let mut t = Tree::new();
    t.insert(ENV_FILE, Node::file(env.to_vec(), 0o600))?;
    let h = sha256_hex(env);
    let volume_id = u32::from_str_radix(h.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    let mut disk = fat::write(
        &t,
        &fat::Options {
            volume_label: LABEL.into(),
            volume_id,
            min_size: MIN_SIZE,
        },
    )
    .context("cannot write the config disk's FAT file system")?;
    // Whole MiB: some hypervisors and image converters want aligned disk sizes.
    let size = disk.len().div_ceil(1 << 20) * (1 << 20);
    disk.resize(size, 0);
    Ok(disk)
}

/// The env file on a config disk (to check one): the FAT root's `env`.
pub fn read(disk: &[u8]) -> Result<Vec<u8>> {
    let t = fat::read(disk).context("the config disk is not a FAT file system")?;
    t.get(ENV_FILE)
        .and_then(|n| n.data())
        .map(<[u8]>::to_vec)
        .with_context(|| format!("the config disk has no /{ENV_FILE}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use crate::testutil::require_tool as have;

    #[test]
    fn label_and_env_file_round_trip_and_are_deterministic() {
        let env = b"GREETING=disk\nSECRET=x\n";
        let d = write(env).unwrap();
        assert_eq!(d.len() as u64 % (1 << 20), 0);
        assert_eq!(d, write(env).unwrap());
        assert_ne!(d, write(b"GREETING=other\n").unwrap());
        assert_eq!(read(&d).unwrap(), env);
        // FAT12/16 extended BPB: signature 0x29 at 38, label at 43..54 (what the init reads).
        assert_eq!(d[38], 0x29);
        assert_eq!(&d[43..54], b"FUSECONFIG ");
        assert_eq!(&d[510..512], &[0x55, 0xaa]);
    }

    #[test]
    fn reference_tools_see_the_label_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg.img");
        std::fs::write(&p, write(b"A=1\n").unwrap()).unwrap();
        if have("blkid") {
            let out = Command::new("blkid")
                .args(["-p", "-o", "export"])
                .arg(&p)
                .output()
                .unwrap();
            let t = String::from_utf8_lossy(&out.stdout);
            assert!(t.contains("LABEL=FUSECONFIG"), "blkid: {t}");
            assert!(t.contains("TYPE=vfat"), "blkid: {t}");
        }
        if have("mtype") {
            let out = Command::new("mtype")
                .arg("-i")
                .arg(&p)
                .arg("::env")
                .output()
                .unwrap();
            assert_eq!(
                out.stdout,
                b"A=1\n",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if have("fsck.fat") {
            let out = Command::new("fsck.fat").arg("-n").arg(&p).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
