//! Building the example: digest identity, reproducibility, size, and the reference readers.

use crate::support::*;
use std::process::Command;

#[test]
fn printed_digest_is_sha256_of_the_image_and_json_agrees() {
    let b = shared_image();
    assert!(
        b.digest.starts_with("sha256:") && b.digest.len() == 71,
        "last stdout line: {:?}",
        b.digest
    );
    assert_eq!(sha256_file(&b.image), b.digest);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&b.json).unwrap()).unwrap();
    assert_eq!(meta["digest"], b.digest.as_str());
    assert_eq!(
        meta["disk_size"],
        std::fs::metadata(&b.image).unwrap().len()
    );
    // The embedded copy is the same metadata without the self-referencing fields.
    let embedded = fuse::disk::read_meta(&std::fs::read(&b.image).unwrap()).unwrap();
    assert_eq!(embedded.digest, None);
    let mut beside: fuse::disk::ImageMeta = serde_json::from_value(meta).unwrap();
    beside.digest = None;
    beside.disk_size = None;
    assert_eq!(embedded, beside);
}

#[test]
fn same_inputs_give_identical_bytes_across_dirs_umask_and_tz() {
    let reference = shared_image();
    let mut digests = Vec::new();
    for (umask, tz, lang) in [
        ("022", "UTC", "C"),
        ("077", "Pacific/Kiritimati", "de_DE.UTF-8"),
    ] {
        let dir = tempfile::Builder::new()
            .prefix(&format!("repro-{umask}-"))
            .tempdir()
            .unwrap();
        let app = example_app(dir.path());
        let out = Fuse::new(["build".as_ref(), app.as_os_str(), "--out".as_ref()])
            .args([dir.path().join("elsewhere")])
            .shell(&format!("umask {umask}"))
            .env("TZ", tz)
            .env("LANG", lang)
            .output();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let img = dir.path().join("elsewhere/hello-1.0.0.img");
        let digest = text(&out.stdout).lines().last().unwrap().to_string();
        assert_eq!(sha256_file(&img), digest);
        assert_eq!(
            std::fs::read(&img).unwrap(),
            std::fs::read(&reference.image).unwrap(),
            "bytes differ"
        );
        digests.push(digest);
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], reference.digest);
}

#[test]
fn a_changed_app_changes_only_the_app_layer() {
    let reference = shared_image();
    let dir = tempfile::tempdir().unwrap();
    let app = example_app(dir.path());
    let mut bytes = std::fs::read(app.join("hello")).unwrap();
    bytes.extend_from_slice(b"\0trailing change");
    std::fs::write(app.join("hello"), bytes).unwrap();
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = text(&out.stdout).lines().last().unwrap().to_string();
    assert_ne!(digest, reference.digest);
    let a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reference.json).unwrap()).unwrap();
    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("fuse-out/hello-1.0.0.json")).unwrap())
            .unwrap();
    assert_eq!(a["layers"][0]["name"], "base");
    assert_eq!(
        a["layers"][0]["digest"], b["layers"][0]["digest"],
        "base layer changed"
    );
    assert_ne!(
        a["layers"][1]["digest"], b["layers"][1]["digest"],
        "app layer did not change"
    );
}

/// Partition (start, size) in bytes and name, as the reference tool sfdisk sees them.
fn sfdisk_partitions(img: &std::path::Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "sfdisk: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn reference_tools_read_the_image() {
    let b = shared_image();
    if !require_tool("sfdisk") {
        return;
    }
    let parts = sfdisk_partitions(&b.image);
    let names: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(names, ["fuse-esp", "fuse-base", "fuse-app"]);
    if require_tool("sgdisk") {
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(&b.image)
            .output()
            .unwrap();
        let t = text(&out.stdout);
        assert!(t.contains("No problems found"), "sgdisk -v:\n{t}");
    }
    let img = std::fs::read(&b.image).unwrap();
    let dir = tempfile::tempdir().unwrap();
    if require_tool("mdir") {
        let esp = format!("{}@@{}", b.image.display(), parts[0].0);
        let out = Command::new("mdir")
            .args(["-i", &esp, "::/EFI/BOOT"])
            .output()
            .unwrap();
        assert!(
            text(&out.stdout).contains("BOOTX64"),
            "mdir: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let out = Command::new("mtype")
            .args(["-i", &esp, "::/fuse/image.json"])
            .output()
            .unwrap();
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("mtype gives image.json");
        assert_eq!(meta["name"], "hello");
    }
    if require_tool("fsck.fat") {
        let esp = dir.path().join("esp.img");
        std::fs::write(
            &esp,
            &img[parts[0].0 as usize..(parts[0].0 + parts[0].1) as usize],
        )
        .unwrap();
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(&esp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fsck.fat: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    if require_tool("unsquashfs") {
        let app = dir.path().join("app.sqfs");
        std::fs::write(
            &app,
            &img[parts[2].0 as usize..(parts[2].0 + parts[2].1) as usize],
        )
        .unwrap();
        let x = dir.path().join("x");
        let out = Command::new("unsquashfs")
            .arg("-d")
            .arg(&x)
            .arg(&app)
            .output()
            .unwrap();
        assert!(out.status.success(), "unsquashfs: {}", text(&out.stderr));
        assert_eq!(
            std::fs::read(x.join("app/hello")).unwrap(),
            std::fs::read(hello_binary()).unwrap()
        );
        let base = dir.path().join("base.sqfs");
        std::fs::write(
            &base,
            &img[parts[1].0 as usize..(parts[1].0 + parts[1].1) as usize],
        )
        .unwrap();
        let out = Command::new("unsquashfs")
            .arg("-lln")
            .arg(&base)
            .output()
            .unwrap();
        let listing = text(&out.stdout);
        assert!(
            listing.contains("squashfs-root/etc/passwd")
                && listing.contains("squashfs-root/var/lib/dpkg/status"),
            "{listing}"
        );
    }
}
