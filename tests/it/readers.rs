//! Crafted export files read by `fuse inspect`, `export`, `run` and `test` (issue 25's
//! audit): each refused with exit 2 and a message, never a panic, within 3 s and 256 MiB of
//! address space. The inputs are made here, in code, from fuse's own writers and then damaged.

use crate::support::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A GPT-looking raw disk of `len` bytes (a multiple of 512): data in its first sectors,
/// the rest zero; its primary header at LBA 1 names the last sector as the backup's, so
/// readers that cut padding find the image's end.
fn raw(len: usize) -> Vec<u8> {
    let mut r = vec![0u8; len];
    r[..100].fill(7);
    r[512..520].copy_from_slice(b"EFI PART");
    r[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
    r[512 + 32..512 + 40].copy_from_slice(&(len as u64 / 512 - 1).to_le_bytes());
    r[len - 1] = 9;
    r
}

/// `fuse ARGS` under a 256 MiB address-space limit; (exit code, stderr, time taken).
fn fuse_bounded(args: &[&str]) -> (Option<i32>, String, Duration) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fuse"));
    c.args(args)
        .env("FUSE_CACHE_DIR", cache_dir())
        .env("FUSE_DATA_DIR", data_dir());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256 << 20,
                rlim_max: 256 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let out = c.output().expect("cannot run fuse");
    (out.status.code(), text(&out.stderr), t.elapsed())
}

/// `inspect`, `export`, `run` and `test` of `bytes` (written as `name`) all exit 2 with
/// `needle` in the message, within 3 s (run and test before QEMU starts), and export
/// writes nothing.
fn refused(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
    let f = dir.join(name);
    std::fs::write(&f, bytes).unwrap();
    let out = dir.join(format!("out-{name}"));
    for args in [
        vec!["inspect", f.to_str().unwrap()],
        vec![
            "export",
            f.to_str().unwrap(),
            "--format",
            "raw",
            "--out",
            out.to_str().unwrap(),
        ],
        vec!["run", f.to_str().unwrap()],
        vec!["test", f.to_str().unwrap()],
    ] {
        let (code, err, took) = fuse_bounded(&args);
        assert_eq!(code, Some(2), "{name}: {args:?}: {err}");
        assert!(err.contains(needle), "{name}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            took < Duration::from_secs(3),
            "{name}: {args:?} took {took:?}"
        );
        eprintln!("{name}: {} refused in {:.2}s", args[0], took.as_secs_f64());
    }
    assert!(
        std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_none()),
        "{name}: export wrote something"
    );
}

fn le32_at(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Finding 7: a 64-byte KDMV file panicked inspect and export.
#[test]
fn a_64_byte_kdmv_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"KDMV");
    f[4] = 1;
    refused(dir.path(), "short.vmdk", &f, "VMDK");
}

/// Finding 3: a parent in the embedded descriptor (QEMU would read a host file).
#[test]
fn a_vmdk_naming_a_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = fuse::export::vmdk::write_sparse(&raw(1 << 20), "x.vmdk", &[1; 32]).unwrap();
    let mut bad = v.clone();
    let hint = b"parentFileNameHint=\"/etc/passwd\"\n";
    let at = 512 + fuse::export::vmdk::read_descriptor(&v).unwrap().len();
    bad[at..at + hint.len()].copy_from_slice(hint);
    refused(dir.path(), "parent.vmdk", &bad, "parent");
}

/// Finding 8: shared qcow2 clusters and VMDK grains, and a gzip whose disk.raw claims
/// 1.5 GiB, expanded small files into gigabytes.
#[test]
fn expansion_bombs_are_refused_quickly_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // qcow2: every L2 entry of a 64 MiB disk pointing at the one data cluster.
    let q = fuse::export::qcow2::write(&raw(64 << 20)).unwrap();
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be(&q, 40) as usize;
    let l2 = (be(&q, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let first = be(&q, l2);
    let mut bad = q.clone();
    for j in 0..1024 {
        bad[l2 + j * 8..l2 + j * 8 + 8].copy_from_slice(&first.to_be_bytes());
    }
    refused(dir.path(), "shared.qcow2", &bad, "referenced twice");
    let mut huge = q.clone();
    huge[24..32].copy_from_slice(&1_840_000_000u64.to_be_bytes());
    refused(dir.path(), "huge.qcow2", &huge, "implausible");
    // vmdk: every grain table entry pointing at the first grain.
    let v = fuse::export::vmdk::write_sparse(&raw(32 << 20), "x.vmdk", &[1; 32]).unwrap();
    let le = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let gd = u64::from_le_bytes(v[56..64].try_into().unwrap()) as usize * 512;
    let gt = le(&v, gd) as usize * 512;
    let first = le(&v, gt);
    let mut bad = v.clone();
    for e in 0..512 {
        le32_at(&mut bad, gt + e * 4, first);
    }
    refused(dir.path(), "shared.vmdk", &bad, "referenced twice");
    // gce: a tar.gz whose disk.raw says 1.5 GiB.
    use std::io::Write;
    let mut h = tar::Header::new_gnu();
    h.set_path("disk.raw").unwrap();
    h.set_size(3 << 29);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    z.write_all(h.as_bytes()).unwrap();
    z.write_all(&vec![0u8; 4 << 20]).unwrap();
    refused(
        dir.path(),
        "bomb.tar.gz",
        &z.finish().unwrap(),
        "implausible",
    );
}

/// Finding 4: what another gzip or tar reader would see differently.
#[test]
fn gce_archives_other_readers_see_differently_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = raw(1 << 20);
    let good = fuse::export::gce::write(&disk).unwrap();
    let mut two = good.clone();
    two.extend_from_slice(&fuse::export::gce::write(&raw(2 << 20)).unwrap());
    refused(dir.path(), "two.tar.gz", &two, "gzip member");
    let member = |name: &str, kind: tar::EntryType| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(if kind == tar::EntryType::Symlink {
            0
        } else {
            disk.len() as u64
        });
        h.set_mode(0o644);
        h.set_entry_type(kind);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        if kind == tar::EntryType::Symlink {
            b.append(&h, &[][..]).unwrap();
        } else {
            b.append(&h, &disk[..]).unwrap();
        }
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        use std::io::Write;
        z.write_all(&b.into_inner().unwrap()).unwrap();
        z.finish().unwrap()
    };
    refused(
        dir.path(),
        "dotslash.tar.gz",
        &member(".//disk.raw", tar::EntryType::Regular),
        "not exactly disk.raw",
    );
    refused(
        dir.path(),
        "contiguous.tar.gz",
        &member("disk.raw", tar::EntryType::Continuous),
        "not a regular file",
    );
    refused(
        dir.path(),
        "symlink.tar.gz",
        &member("disk.raw", tar::EntryType::Symlink),
        "not a regular file",
    );
}

/// Finding 5: duplicate OVA members, and a manifest that leaves the disk out.
#[test]
fn ova_duplicates_and_partial_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = raw(1 << 20);
    let ova = fuse::export::ova::write(&disk, "hello-1.0.0", &[2; 32]).unwrap();
    let entries = fuse::export::tarball::read(&ova[..], |_| true).unwrap();
    let pack = |e: &[(String, Vec<u8>)]| {
        let v: Vec<(&str, &[u8])> = e.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        fuse::export::tarball::write(&v, fuse::export::tarball::Flavour::Ustar).unwrap()
    };
    let mut dup = entries.clone();
    let other = fuse::export::vmdk::write_stream(&raw(2 << 20), "x", &[3; 32]).unwrap();
    dup.push((entries[2].0.clone(), other));
    refused(dir.path(), "dup.ova", &pack(&dup), "appears twice");
    let mut partial = entries.clone();
    let mf = String::from_utf8(partial[1].1.clone()).unwrap();
    partial[1].1 = (mf.lines().next().unwrap().to_string() + "\n").into_bytes();
    refused(dir.path(), "partial.ova", &pack(&partial), "does not list");
}

/// Finding 12: a stream-optimized VMDK whose footer's capacity differs from its header's
/// (QEMU reads the footer's), and a VHD whose creator makes QEMU size it by CHS.
#[test]
fn wrappers_whose_fields_change_the_disk_qemu_sees_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = fuse::export::vmdk::write_stream(&raw(1 << 20), "x.vmdk", &[1; 32]).unwrap();
    let mut bad = v.clone();
    let footer = v.len() - 1024;
    let cap = u64::from_le_bytes(v[footer + 12..footer + 20].try_into().unwrap());
    bad[footer + 12..footer + 20].copy_from_slice(&(cap + 128).to_le_bytes());
    refused(dir.path(), "footer.vmdk", &bad, "footer disagrees");
    let vhd = fuse::export::vhd::write(&raw(20 << 20), &[1; 32]).unwrap();
    let n = vhd.len() - 512;
    let mut bad = vhd.clone();
    bad[n + 28..n + 32].copy_from_slice(b"vpc ");
    bad[n + 64..n + 68].fill(0);
    let sum = !bad[n..].iter().fold(0u32, |a, &b| a.wrapping_add(b as u32));
    bad[n + 64..n + 68].copy_from_slice(&sum.to_be_bytes());
    refused(dir.path(), "chs.vhd", &bad, "QEMU see");
}
