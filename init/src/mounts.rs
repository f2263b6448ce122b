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
    fn unescape_leaves_odd_escapes_alone() {
        assert_eq!(unescape_mount_field("a\\0"), "a\\0");
        assert_eq!(unescape_mount_field("a\\999b"), "a\\999b");
        assert_eq!(unescape_mount_field("tab\\011x"), "tab\tx");
    }
}
