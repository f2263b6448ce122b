//! arm64 images built on this x86-64 machine without running arm64 code: a static C app
//! cross-compiled for aarch64, and the Python and jar examples on arm64 runtimes, boot under
//! qemu-system-aarch64 + AAVMF (TCG) and answer; the build is reproducible; dm-verity and
//! the transplanted-layer refusal hold; an x86-64 binary in an arm64 manifest is refused.

use crate::support::*;
use fuse::arch::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether an arm64 image can be built here: the cross compiler for the test app and a fuse
/// built with the arm64 init (a visible skip otherwise, a failure under CI).
pub(crate) fn arm64_build_tools() -> bool {
    require_tool("aarch64-linux-gnu-gcc")
        && require(
            fuse::plan::init_for(Arch::Arm64).is_ok(),
            "this fuse was built without the arm64 init (scripts/setup.sh installs its toolchain)",
        )
}

/// [`arm64_build_tools`], and QEMU and AAVMF to boot arm64 images.
fn arm64_tools() -> bool {
    arm64_build_tools()
        && require_tool("qemu-system-aarch64")
        && require(
            fuse::vm::firmware(Arch::Arm64).is_ok(),
            "AAVMF (package qemu-efi-aarch64) is not installed",
        )
}

/// `src` cross-compiled static for aarch64 into `out`.
fn aarch64_static(src: &Path, out: &Path) {
    let st = Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("aarch64-linux-gnu-gcc");
    assert!(st.success(), "aarch64-linux-gnu-gcc -static failed");
}

/// examples/hello's manifest for arm64 (no kernel named: the architecture's default).
fn arm64_manifest(app: &Path) {
    let text = std::fs::read_to_string(repo_root().join("examples/hello/fuse.toml")).unwrap();
    let text = text
        .replace(
            "version = \"1.0.0\"",
            "version = \"1.0.0\"\narch = \"arm64\"",
        )
        .replace("kernel = \"linux-image-amd64\"\n", "");
    assert!(text.contains("arch = \"arm64\""));
    std::fs::write(app.join("fuse.toml"), text).unwrap();
}

pub(crate) struct Arm64Hello {
    pub(crate) app: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) digest: String,
    pub(crate) json: serde_json::Value,
}

/// The hello example cross-compiled for aarch64 and built as an arm64 image (with
/// `--verify`: a second build without any unit cache gives the same bytes), once per run.
pub(crate) fn arm64_hello() -> &'static Arm64Hello {
    static B: OnceLock<Arm64Hello> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tmp_root().join("arm64-hello");
        let _ = std::fs::remove_dir_all(&dir);
        let app = dir.join("app");
        std::fs::create_dir_all(&app).unwrap();
        aarch64_static(
            &repo_root().join("examples/hello/hello.c"),
            &app.join("hello"),
        );
        arm64_manifest(&app);
        let b = build(&app, &["--verify"], &[]);
        Arm64Hello {
            app,
            image: b.image,
            digest: b.digest,
            json: b.json,
        }
    })
}

#[test]
fn arm64_static_app_is_reproducible_boots_under_aavmf_and_answers() {
    if !arm64_tools() {
        return;
    }
    let h = arm64_hello();
    eprintln!("arm64 hello: {} ({})", h.digest, h.image.display());
    assert_eq!(h.json["verify"]["reproducible"], true, "{}", h.json);
    assert_eq!(h.json["verify"]["second_digest"], h.digest.as_str());
    // image.json, the lock and inspect say arm64; the boot pieces are arm64's.
    let disk = std::fs::read(&h.image).unwrap();
    let meta = fuse::disk::read_meta(&disk).unwrap();
    assert_eq!(meta.arch, Arch::Arm64);
    assert!(
        meta.kernel.package.name.starts_with("linux-image-"),
        "{:?}",
        meta.kernel
    );
    assert!(
        meta.kernel.release.ends_with("-arm64"),
        "{}",
        meta.kernel.release
    );
    let lock = std::fs::read_to_string(h.app.join("fuse.lock")).unwrap();
    assert!(lock.contains("arch = \"arm64\""), "{lock}");
    assert!(
        !lock.contains("amd64"),
        "an amd64 package in the arm64 lock:\n{lock}"
    );
    let uki = fuse::disk::read_esp_file(&disk, "EFI/BOOT/BOOTAA64.EFI").unwrap();
    let pe = u32::from_le_bytes(uki[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&uki[pe..pe + 4], b"PE\0\0");
    assert_eq!(
        u16::from_le_bytes([uki[pe + 4], uki[pe + 5]]),
        0xaa64,
        "the UKI is not an arm64 PE"
    );
    assert!(fuse::disk::read_esp_file(&disk, fuse::disk::ESP_BOOT_PATH).is_err());
    let linux = fuse::format::uki::read_sections(&uki)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == ".linux")
        .unwrap()
        .1;
    assert_eq!(
        &linux[0x38..0x3c],
        b"ARM\x64",
        "the kernel is not an arm64 Image"
    );
    let out = fuse(&["inspect", h.image.to_str().unwrap()], &[]);
    let shown = ok(&out, "fuse inspect");
    assert!(shown.contains("arch      arm64"), "{shown}");
    let out = fuse(
        &["inspect", h.image.to_str().unwrap(), "--sbom", "cyclonedx"],
        &[],
    );
    let cdx: serde_json::Value = serde_json::from_str(&ok(&out, "fuse inspect --sbom")).unwrap();
    let props = cdx["metadata"]["component"]["properties"]
        .as_array()
        .unwrap();
    assert!(
        props
            .iter()
            .any(|p| p["name"] == "fuse:image:arch" && p["value"] == "arm64"),
        "{props:?}"
    );

    // Every export format carries the arm64 image: each verifies and says arm64.
    let exports = tempfile::tempdir().unwrap();
    for format in ["qcow2", "vmdk", "ova", "vhd", "gce", "raw"] {
        let dir = exports.path().join(format);
        let o = fuse(
            &[
                "export",
                h.image.to_str().unwrap(),
                "--format",
                format,
                "--out",
                dir.to_str().unwrap(),
            ],
            &[],
        );
        let printed = ok(&o, &format!("fuse export --format {format}"));
        let out = printed
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let shown = ok(
            &fuse(&["inspect", &out], &[]),
            &format!("fuse inspect of the {format} export"),
        );
        assert!(
            shown.contains("arch      arm64") && shown.contains(&h.digest),
            "{format}: {shown}"
        );
    }

    // fuse test picks qemu-system-aarch64 + AAVMF and waits for the app's answer.
    let out = fuse(
        &[
            "test",
            h.image.to_str().unwrap(),
            "--json",
            "--timeout",
            "420",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "fuse test failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "pass", "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["digest"], h.digest.as_str());
    eprintln!(
        "arm64 static: healthy after {} ms; phases {}",
        v["time_to_healthy_ms"], v["phases"]
    );
}

#[test]
fn arm64_tampered_and_transplanted_layers_never_serve() {
    if !arm64_tools() {
        return;
    }
    let h = arm64_hello();
    let disk = std::fs::read(&h.image).unwrap();
    let meta = fuse::disk::read_meta(&disk).unwrap();
    let app_meta = meta.layers.iter().find(|l| l.name == "app").unwrap();
    assert!(
        app_meta.verity.is_some(),
        "the arm64 app layer has no verity tree"
    );
    let app = partition(&disk, "fuse-app");
    let dir = tempfile::tempdir().unwrap();

    // One byte flipped in the app layer's file system.
    let mut flipped = disk.clone();
    flipped[app.start + app_meta.size as usize / 2] ^= 0x01;
    let flipped_path = dir.path().join("flipped.img");
    std::fs::write(&flipped_path, &flipped).unwrap();

    // Another arm64 build's app layer written over this image's app partition.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let src = dir.path().join("other.c");
    let c = std::fs::read_to_string(repo_root().join("examples/hello/hello.c")).unwrap();
    std::fs::write(&src, c.replace("hello, %s", "other, %s")).unwrap();
    aarch64_static(&src, &other.join("hello"));
    arm64_manifest(&other);
    let b = build(&other, &[], &[]);
    let other_disk = std::fs::read(&b.image).unwrap();
    let other_part = &other_disk[partition(&other_disk, "fuse-app")];
    let mut swapped = disk.clone();
    let n = other_part.len().min(app.len());
    swapped[app.start..app.start + n].copy_from_slice(&other_part[..n]);
    assert_ne!(swapped, disk);
    let swapped_path = dir.path().join("swapped.img");
    std::fs::write(&swapped_path, &swapped).unwrap();

    // Both boot side by side; neither may ever answer, both must stop.
    let runs: Vec<_> = [flipped_path, swapped_path]
        .into_iter()
        .map(|p| {
            std::thread::spawn(move || {
                let mut vm = Vm::boot_arm64(&p, 8080);
                let stopped = vm.wait_stop_unanswered(
                    &["Kernel panic - not syncing", "fuse-init: FATAL: "],
                    "/",
                    Duration::from_secs(420),
                );
                (p, stopped, vm.console())
            })
        })
        .collect();
    for r in runs {
        let (p, stopped, console) = r.join().unwrap();
        assert!(
            stopped,
            "{} did not stop by itself; console:\n{console}",
            p.display()
        );
        assert!(
            console.contains("fuse-init: FATAL: layer app failed verification")
                || console.contains("Kernel panic - not syncing: dm-verity device corrupted"),
            "{}: no verity refusal of layer app; console:\n{console}",
            p.display()
        );
        assert!(!console.contains("fuse-init: app exited"), "{console}");
    }
}

#[test]
fn an_x86_64_binary_in_an_arm64_manifest_is_refused_naming_both_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(hello_binary(), app.join("hello")).unwrap();
    arm64_manifest(&app);
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "an x86-64 binary built as arm64:\n{err}"
    );
    assert!(
        err.contains("/app/hello") && err.contains("x86-64") && err.contains("AArch64"),
        "{err}"
    );
    assert!(!app.join("fuse-out").exists(), "an image was written");
}

/// A copy of examples/NAME in `dir`, built with its build.sh, made arm64.
fn arm64_example(name: &str, dir: &Path) -> PathBuf {
    let app = dir.join(name);
    let st = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("examples").join(name))
        .arg(&app)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(app.join("fuse-out"));
    let _ = std::fs::remove_file(app.join("fuse.lock"));
    let st = Command::new(app.join("build.sh")).status().unwrap();
    assert!(st.success(), "examples/{name}/build.sh failed");
    let m = app.join("fuse.toml");
    let text = std::fs::read_to_string(&m).unwrap().replacen(
        "version = \"1.0.0\"",
        "version = \"1.0.0\"\narch = \"arm64\"",
        1,
    );
    std::fs::write(&m, text).unwrap();
    app
}

#[test]
fn arm64_python_and_jar_apps_pass_fuse_test_on_arm64_runtimes() {
    if !arm64_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let apps: Vec<PathBuf> = ["python-hello", "jar-hello"]
        .iter()
        .map(|n| arm64_example(n, dir.path()))
        .collect();
    let mut images = Vec::new();
    for app in &apps {
        let b = build(app, &[], &[]);
        let meta = fuse::disk::read_meta(&std::fs::read(&b.image).unwrap()).unwrap();
        assert_eq!(meta.arch, Arch::Arm64);
        let runtime = meta.layers.iter().find(|l| l.name == "runtime").unwrap();
        assert!(
            runtime
                .packages
                .iter()
                .all(|p| p.arch == "arm64" || p.arch == "all"),
            "{:?}",
            runtime.packages
        );
        if meta.app.kind == "jar" {
            assert_eq!(
                meta.app.argv[0],
                "/usr/lib/jvm/java-17-openjdk-arm64/bin/java"
            );
        }
        images.push(b.image);
    }
    // Both boot side by side under fuse test.
    let runs: Vec<_> = images
        .into_iter()
        .map(|img| {
            std::thread::spawn(move || {
                let out = fuse(
                    &["test", img.to_str().unwrap(), "--json", "--timeout", "600"],
                    &[],
                );
                (img, out)
            })
        })
        .collect();
    for r in runs {
        let (img, out) = r.join().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "fuse test {} failed:\n{stderr}",
            img.display()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["healthy"], true, "{v}");
        eprintln!(
            "arm64 {}: healthy after {} ms; phases {}",
            v["name"], v["time_to_healthy_ms"], v["phases"]
        );
    }
}
