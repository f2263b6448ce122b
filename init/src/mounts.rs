//! Mounts: the early API file systems, the layers, the overlay root and its API mounts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::sys::{mkdir_p, mount};

/// Where each layer is mounted read-only: `/run/layers/<name>`.
pub const LAYERS_DIR: &str = "/run/layers";
/// The tmpfs holding the overlay's writable `upper/` and `work/` directories.
pub const OVERLAY_DIR: &str = "/run/overlay";
/// The app's root file system (the overlay); the app is chrooted here.
pub const NEWROOT: &str = "/newroot";

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs) in the initramfs.
pub fn early() -> Result<()> {
    for dir in ["/proc", "/sys", "/dev", "/run"] {
        mkdir_p(dir, 0o755)?;
    }
    mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, "")?;
    if let Err(e) = mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755") {
        // The kernel may have mounted it already (CONFIG_DEVTMPFS_MOUNT on some setups).
        if !is_mount_point("/dev") {
            return Err(e);
        }
    }
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    Ok(())
}

/// True when `path` is listed as a mount point in `/proc/self/mounts`.
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| mount_points(&t).iter().any(|m| m == path))
        .unwrap_or(false)
}

/// The mount directory of layer `name`.
pub fn layer_dir(name: &str) -> String {
    format!("{LAYERS_DIR}/{name}")
}

/// overlayfs `lowerdir=` value for `layers` given bottom-to-top: the top layer comes first,
/// entries separated by `:`.
pub fn lowerdir(layers: &[String]) -> String {
    layers
        .iter()
        .rev()
        .map(|l| layer_dir(l))
        .collect::<Vec<_>>()
        .join(":")
}

/// The full overlayfs option string for `layers` (bottom-to-top).
pub fn overlay_options(layers: &[String]) -> String {
    format!(
        "lowerdir={},upperdir={OVERLAY_DIR}/upper,workdir={OVERLAY_DIR}/work",
        lowerdir(layers)
    )
}

/// Mounts each layer's device read-only, then the overlay (tmpfs upper) at [`NEWROOT`].
/// `devices` maps layer name to its block device path.
pub fn root(layers: &[String], fs_type: &str, devices: &BTreeMap<String, PathBuf>) -> Result<()> {
    for name in layers {
        let dev = devices
            .get(name)
            .with_context(|| format!("no device found for layer {name}"))?;
        let dir = layer_dir(name);
        mkdir_p(&dir, 0o755)?;
        let dev = dev.to_string_lossy();
        mount(&dev, &dir, fs_type, libc::MS_RDONLY, "")
            .with_context(|| format!("mounting layer {name}"))?;
    }
    mkdir_p(OVERLAY_DIR, 0o755)?;
    mount(
        "tmpfs",
        OVERLAY_DIR,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    // The overlay's root directory takes its owner and mode from upper/: root, 0755.
    mkdir_p(&format!("{OVERLAY_DIR}/upper"), 0o755)?;
    mkdir_p(&format!("{OVERLAY_DIR}/work"), 0o755)?;
    mkdir_p(NEWROOT, 0o755)?;
    mount("overlay", NEWROOT, "overlay", 0, &overlay_options(layers))
        .context("mounting the root overlay")?;
    Ok(())
}

/// Mounts proc, sysfs, devtmpfs (+ devpts, /dev/shm), /tmp and /run inside [`NEWROOT`],
/// creating the mount points in the (writable) overlay when missing.
pub fn api_in_newroot() -> Result<()> {
    let p = |s: &str| format!("{NEWROOT}{s}");
    for (dir, mode) in [
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/dev", 0o755),
        ("/tmp", 0o1777),
        ("/run", 0o755),
    ] {
        mkdir_p(&p(dir), mode)?;
    }
    mount("proc", &p("/proc"), "proc", NOSUID_NODEV_NOEXEC, "")?;
    mount("sysfs", &p("/sys"), "sysfs", NOSUID_NODEV_NOEXEC, "")?;
    mount(
        "devtmpfs",
        &p("/dev"),
        "devtmpfs",
        libc::MS_NOSUID,
        "mode=0755",
    )?;
    mkdir_p(&p("/dev/pts"), 0o755)?;
    mount(
        "devpts",
        &p("/dev/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mkdir_p(&p("/dev/shm"), 0o1777)?;
    mount(
        "tmpfs",
        &p("/dev/shm"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    mount(
        "tmpfs",
        &p("/tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    mount(
        "tmpfs",
        &p("/run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    Ok(())
}

/// Where a writable directory's tmpfs is filled before it is moved into place.
const WRITABLE_STAGING: &str = "/run/fuse-writable";

/// Makes `dir` (absolute, inside [`NEWROOT`], checked by `config::check_writable`) a tmpfs
/// owned by `uid`:`gid`: a new tmpfs is filled with a copy of what the image has there
/// (owned by the app user), then moved onto the directory. Refuses a path through a
/// symlink (it would lead outside the new root). Returns how many entries were copied.
pub fn writable(dir: &str, uid: u32, gid: u32) -> Result<usize> {
    let target = format!("{NEWROOT}{dir}");
    let mut prefix = String::from(NEWROOT);
    for c in dir.trim_start_matches('/').split('/') {
        prefix.push('/');
        prefix.push_str(c);
        match std::fs::symlink_metadata(&prefix) {
            Ok(m) if m.file_type().is_symlink() => {
                anyhow::bail!("{} is a symlink in the image", &prefix[NEWROOT.len()..])
            }
            Ok(m) if !m.is_dir() => {
                anyhow::bail!(
                    "{} is not a directory in the image",
                    &prefix[NEWROOT.len()..]
                )
            }
            _ => {}
        }
    }
    mkdir_p(&target, 0o755)?;
    let staging = format!(
        "{WRITABLE_STAGING}/{}",
        dir.trim_start_matches('/').replace('/', "_")
    );
    mkdir_p(&staging, 0o700)?;
    mount(
        "tmpfs",
        &staging,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=0755,uid={uid},gid={gid}"),
    )?;
    let copied = copy_tree(
        std::path::Path::new(&target),
        std::path::Path::new(&staging),
        uid,
        gid,
    )
    .with_context(|| format!("copying the image's {dir} into its tmpfs"))?;
    mount(&staging, &target, "", libc::MS_MOVE, "")?;
    Ok(copied)
}

/// Copies the directory tree `from` into the existing directory `to` (files, directories,
/// symlinks; modes kept, owner set to `uid`:`gid`). Returns the number of entries copied.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, uid: u32, gid: u32) -> Result<usize> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut n = 0;
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta =
            std::fs::symlink_metadata(&src).with_context(|| format!("stat {}", src.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let t =
                std::fs::read_link(&src).with_context(|| format!("readlink {}", src.display()))?;
            std::os::unix::fs::symlink(&t, &dst)
                .with_context(|| format!("symlink {}", dst.display()))?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst).with_context(|| format!("mkdir {}", dst.display()))?;
            n += copy_tree(&src, &dst, uid, gid)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        } else {
            continue;
        }
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .with_context(|| format!("chmod {}", dst.display()))?;
        }
        std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", dst.display()))?;
        n += 1;
    }
    Ok(n)
}

/// Decodes the octal escapes (`\040` for space, ...) the kernel uses in `/proc/mounts`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = oct
                        .iter()
                        .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in `/proc/mounts` text, in mount order.
pub fn mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape_mount_field)
        .collect()
}

/// Of `points` (mount order), the ones init made for the app's root, in the order to
/// unmount them (children before parents).
pub fn teardown_order(points: &[String]) -> Vec<String> {
    let ours = |p: &str| {
        [NEWROOT, LAYERS_DIR, OVERLAY_DIR]
            .iter()
            .any(|base| p == *base || p.starts_with(&format!("{base}/")))
    };
    points.iter().rev().filter(|p| ours(p)).cloned().collect()
}

/// Best-effort unmount of everything under the new root, the overlay and the layers.
/// Returns how many mount points could not be unmounted (they are read-only or synced).
pub fn unmount_all() -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return 0;
    };
    let mut failed = 0;
    for point in teardown_order(&mount_points(&text)) {
        let Ok(c) = crate::sys::cstring(&point) else {
            failed += 1;
            continue;
        };
        // SAFETY: c is a valid C string.
        let ok = unsafe { libc::umount2(c.as_ptr(), 0) } == 0
            // SAFETY: as above; lazy detach as a fallback for a busy mount.
            || unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0;
        if !ok {
            failed += 1;
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lowerdir_puts_top_layer_first() {
        assert_eq!(
            lowerdir(&names(&["base", "app"])),
            "/run/layers/app:/run/layers/base"
        );
        assert_eq!(
            lowerdir(&names(&["base", "runtime", "server", "app"])),
            "/run/layers/app:/run/layers/server:/run/layers/runtime:/run/layers/base"
        );
        assert_eq!(lowerdir(&names(&["only"])), "/run/layers/only");
    }

    #[test]
    fn overlay_options_are_complete() {
        assert_eq!(
            overlay_options(&names(&["base", "app"])),
            "lowerdir=/run/layers/app:/run/layers/base,\
             upperdir=/run/overlay/upper,workdir=/run/overlay/work"
        );
    }

    #[test]
    fn parses_proc_mounts_and_orders_teardown() {
        let text = "rootfs / rootfs rw 0 0\n\
            proc /proc proc rw 0 0\n\
            /dev/vda1 /run/layers/base squashfs ro 0 0\n\
            /dev/vda2 /run/layers/app squashfs ro 0 0\n\
            tmpfs /run/overlay tmpfs rw 0 0\n\
            overlay /newroot overlay rw 0 0\n\
            proc /newroot/proc proc rw 0 0\n\
            tmpfs /newroot/with\\040space tmpfs rw 0 0\n\
            tmpfs /newrootx tmpfs rw 0 0\n";
        let points = mount_points(text);
        assert_eq!(points[7], "/newroot/with space");
        assert_eq!(
            teardown_order(&points),
            names(&[
                "/newroot/with space",
                "/newroot/proc",
                "/newroot",
                "/run/overlay",
                "/run/layers/app",
                "/run/layers/base",
            ])
        );
    }

    #[test]
    fn copy_tree_copies_files_dirs_links_with_modes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let base = std::env::temp_dir().join(format!("fuse-init-copy-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("seed.txt"), b"seed").unwrap();
        std::fs::write(from.join("sub/run.sh"), b"#!/bin/sh").unwrap();
        std::fs::set_permissions(
            from.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("seed.txt", from.join("link")).unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let n = copy_tree(&from, &to, uid, gid).unwrap();
        assert_eq!(n, 4);
        assert_eq!(std::fs::read(to.join("seed.txt")).unwrap(), b"seed");
        let m = std::fs::metadata(to.join("sub/run.sh")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o750);
        assert_eq!(m.uid(), uid);
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap().to_str(),
            Some("seed.txt")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unescape_leaves_odd_escapes_alone() {
        assert_eq!(unescape_mount_field("a\\0"), "a\\0");
        assert_eq!(unescape_mount_field("a\\999b"), "a\\999b");
        assert_eq!(unescape_mount_field("tab\\011x"), "tab\tx");
    }
}
