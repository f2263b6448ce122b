//! `fuse inspect` on real images: summary and JSON, verification (a flipped byte names its
//! layer, exit 2), comparisons of rebuilds (exit 0 identical / 1 changed, only the app layer
//! changed), and the SPDX SBOM validated against the official SPDX 2.3 JSON schema with
//! its file lists checked against the layers read back.

use crate::support::*;
use fuse::format::{gpt, squashfs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn inspect(args: &[&Path], flags: &[&str]) -> Output {
    let mut a: Vec<&str> = vec!["inspect"];
    a.extend(args.iter().map(|p| p.to_str().unwrap()));
    a.extend(flags);
    fuse(&a, &[])
}

/// Partitions of a disk by name: (start, end) in bytes.
fn partitions(disk: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    gpt::read_disk(disk)
        .unwrap()
        .partitions
        .iter()
        .map(|p| (p.name.clone(), p.byte_range()))
        .collect()
}

/// The example rebuilt from scratch in another directory, once: unchanged and with a
/// changed app binary. (The two extra builds this module needs.)
struct Rebuilds {
    same: PathBuf,
    changed: PathBuf,
    _dir: tempfile::TempDir,
}

fn rebuilds() -> &'static Rebuilds {
    static R: OnceLock<Rebuilds> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("inspect-")
            .tempdir()
            .unwrap();
        let same = example_app(&dir.path().join("same"));
        let changed = example_app(&dir.path().join("changed"));
        let mut bytes = std::fs::read(changed.join("hello")).unwrap();
        bytes.extend_from_slice(b"\0trailing change");
        std::fs::write(changed.join("hello"), bytes).unwrap();
        for app in [&same, &changed] {
            let out = fuse(&["build", app.to_str().unwrap()], &[]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        Rebuilds {
            same: same.join("fuse-out/hello-1.0.0.img"),
            changed: changed.join("fuse-out/hello-1.0.0.img"),
            _dir: dir,
        }
    })
}

#[test]
fn inspect_summarises_and_verifies_the_example() {
    let b = shared_image();
    let out = inspect(&[&b.image], &[]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 0, "{t}{}", text(&out.stderr));
    for want in [
        b.digest.as_str(),
        "hello 1.0.0",
        "verified  GPT, ESP and UKI, 2 layer digests, the image.json beside it (digest and content)",
        "entrypoint  /app/hello",
        "GREETING=world",
        "HTTP GET / answers 2xx",
        "fuse-base",
        "fuse-app",
        "linux-image-",
        "console=ttyS0,115200",
    ] {
        assert!(t.contains(want), "{want:?} not in:\n{t}");
    }

    let out = inspect(&[&b.image], &["--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fuse_inspect"], 1);
    assert_eq!(v["digest"], b.digest.as_str());
    assert_eq!(v["verification"]["ok"], true);
    // The metadata is the embedded copy plus digest and size: the beside copy exactly.
    let beside: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.json).unwrap()).unwrap();
    assert_eq!(v["metadata"], beside);
    // The kernel's licence comes from its DEP-5 copyright file.
    let lic = beside["kernel"]["package"]["license"]
        .as_str()
        .unwrap_or("");
    assert!(lic.contains("GPL-2"), "kernel licence {lic:?}");
}

#[test]
fn a_flipped_byte_in_a_layer_fails_verification_naming_the_layer() {
    let b = shared_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = std::fs::read(&b.image).unwrap();
    let parts = partitions(&disk);
    let meta = fuse::disk::read_meta(&disk).unwrap();
    for (layer, offset_in) in [("app", 0.5), ("base", 0.1)] {
        let mut d = disk.clone();
        let range = &parts
            .iter()
            .find(|p| p.0 == format!("fuse-{layer}"))
            .unwrap()
            .1;
        let size = meta.layers.iter().find(|l| l.name == layer).unwrap().size as usize;
        let at = range.start + (size as f64 * offset_in) as usize;
        d[at] ^= 0x01;
        let copy = dir.path().join(format!("flipped-{layer}.img"));
        std::fs::write(&copy, &d).unwrap();
        for flags in [&[][..], &["--json"][..]] {
            let out = inspect(&[&copy], flags);
            let (o, e) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(code(&out), 2, "{o}{e}");
            let other = if layer == "app" { "base" } else { "app" };
            assert!(
                e.contains(&format!("layer {layer}: digest mismatch")),
                "stderr:\n{e}"
            );
            assert!(!e.contains(&format!("layer {other}:")), "stderr:\n{e}");
            if flags.is_empty() {
                assert!(o.contains("FAILED"), "{o}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&o).unwrap();
                assert_eq!(v["verification"]["ok"], false);
                assert_eq!(
                    v["verification"]["problems"][0]["part"],
                    format!("layer {layer}")
                );
            }
        }
    }
    // Comparing two damaged images names both, each problem with its file.
    let (fa, fb) = (
        dir.path().join("flipped-app.img"),
        dir.path().join("flipped-base.img"),
    );
    let out = inspect(&[&fa, &fb], &[]);
    let e = text(&out.stderr);
    assert_eq!(code(&out), 2, "{e}");
    for want in [
        format!("{}: layer app: digest mismatch", fa.display()),
        format!("{}: layer base: digest mismatch", fb.display()),
    ] {
        assert!(e.contains(&want), "{want:?} not in:\n{e}");
    }
    // A copy beside a stale image.json: the beside copy's digest no longer matches.
    let copy = dir.path().join("hello-1.0.0.img");
    std::fs::write(&copy, &disk).unwrap();
    let mut beside: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.json).unwrap()).unwrap();
    beside["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(dir.path().join("hello-1.0.0.json"), beside.to_string()).unwrap();
    let out = inspect(&[&copy], &[]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("beside hello-1.0.0.json: records digest sha256:000"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn identical_rebuilds_compare_identical() {
    let b = shared_image();
    let r = rebuilds();
    let out = inspect(&[&b.image, &r.same], &[]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 0, "{t}{}", text(&out.stderr));
    assert!(t.contains("identical"), "{t}");
    let out = inspect(&[&b.image, &r.same], &["--json"]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identical"], true);
    assert_eq!(v["differences"], 0);
}

#[test]
fn a_changed_app_shows_as_the_only_changed_layer() {
    let b = shared_image();
    let r = rebuilds();
    let out = inspect(&[&b.image, &r.changed], &[]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 1, "{t}{}", text(&out.stderr));
    let row = |name: &str| {
        t.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{t}"))
            .to_string()
    };
    assert!(row("layer app ").contains("changed"), "{t}");
    assert!(row("layer base ").contains("unchanged"), "{t}");
    // The UKI changes with the app: it holds the app layer's dm-verity root hash.
    assert!(!row("boot (UKI) ").contains("unchanged"), "{t}");
    let old_size = std::fs::metadata(hello_binary()).unwrap().len();
    let new_size = old_size + b"\0trailing change".len() as u64;
    let want = format!("~ /app/hello  {old_size} -> {new_size} bytes (+16)");
    assert!(t.contains(&want), "{want:?} not in:\n{t}");
    assert!(!t.contains("kernel\n"), "kernel reported changed:\n{t}");

    let out = inspect(&[&b.image, &r.changed], &["--json"]);
    assert_eq!(code(&out), 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identical"], false);
    let layers = v["layers"].as_array().unwrap();
    let status: Vec<(&str, &str)> = layers
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, [("base", "unchanged"), ("app", "changed")]);
    let m = &layers[1]["files"]["modified"];
    assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m[0]["path"], "/app/hello");
    assert_eq!(m[0]["size_delta"], 16);
    assert_eq!(v["kernel"]["changed"], false);
    assert_eq!(
        v["boot"]["changed"], true,
        "the UKI holds the app's root hash"
    );
    // The app digest changed (and with it fuse.lock's record of it); nothing else did.
    let inputs: Vec<&str> = v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert!(inputs.contains(&"app_sha256"), "{inputs:?}");
    assert!(
        inputs
            .iter()
            .all(|f| *f == "app_sha256" || *f == "lock_sha256"),
        "{inputs:?}"
    );
}

#[test]
fn spdx_sbom_validates_and_lists_what_each_layer_holds() {
    let b = shared_image();
    let out = inspect(&[&b.image], &["--sbom", "spdx"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The official SPDX 2.3 JSON schema (fixtures/README.md says where it comes from).
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("fixtures/spdx-schema-2.3.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "SPDX output is invalid:\n{}",
        errors.join("\n")
    );
    // The validator really validates: SPDX's own example passes, a broken copy fails.
    let example: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("fixtures/SPDXJSONExample-v2.3.spdx.json")).unwrap(),
    )
    .unwrap();
    assert!(validator.is_valid(&example));
    let mut broken = doc.clone();
    broken["packages"][0]
        .as_object_mut()
        .unwrap()
        .remove("downloadLocation");
    broken["files"][0]["checksums"] = serde_json::json!([]);
    assert!(!validator.is_valid(&broken));

    // Each layer's file list is what its file system holds, read back from the partition.
    let disk = std::fs::read(&b.image).unwrap();
    let parts = partitions(&disk);
    let meta = fuse::disk::read_meta(&disk).unwrap();
    let files = doc["files"].as_array().unwrap();
    for l in &meta.layers {
        let range = &parts.iter().find(|p| p.0 == l.partition).unwrap().1;
        let tree = squashfs::read(&disk[range.start..range.start + l.size as usize]).unwrap();
        let mut real: Vec<(String, String)> = tree
            .iter()
            .filter_map(|(p, n)| {
                n.data()
                    .map(|d| (format!("./{p}"), fuse::digest::sha256_hex(d)))
            })
            .collect();
        real.sort();
        assert!(!real.is_empty());
        let pkg = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["SPDXID"] == format!("SPDXRef-Layer-{}", l.name))
            .unwrap_or_else(|| panic!("no package for layer {}", l.name));
        let mut listed: Vec<(String, String)> = pkg["hasFiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let f = files.iter().find(|f| &f["SPDXID"] == id).unwrap();
                let sha = f["checksums"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["algorithm"] == "SHA256")
                    .unwrap()["checksumValue"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (f["fileName"].as_str().unwrap().to_string(), sha)
            })
            .collect();
        listed.sort();
        assert_eq!(listed, real, "layer {}", l.name);
    }
    // Cross-check the app layer's listing with the reference tool.
    if require_tool("unsquashfs") {
        let dir = tempfile::tempdir().unwrap();
        let l = meta.layers.iter().find(|l| l.name == "app").unwrap();
        let range = &parts.iter().find(|p| p.0 == l.partition).unwrap().1;
        let fs = dir.path().join("app.sqfs");
        std::fs::write(&fs, &disk[range.clone()]).unwrap();
        let out = Command::new("unsquashfs")
            .arg("-lc")
            .arg(&fs)
            .output()
            .unwrap();
        let mut want: Vec<String> = text(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("squashfs-root/"))
            .map(|p| format!("./{p}"))
            .collect();
        want.sort();
        let mut got: Vec<String> = files
            .iter()
            .filter(|f| {
                f["SPDXID"]
                    .as_str()
                    .unwrap()
                    .starts_with("SPDXRef-File-app-")
            })
            .map(|f| f["fileName"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want);
    }
    // The image and its packages carry their identity.
    let image = &doc["packages"][0];
    assert_eq!(image["SPDXID"], "SPDXRef-Image");
    assert_eq!(
        format!(
            "sha256:{}",
            image["checksums"][0]["checksumValue"].as_str().unwrap()
        ),
        b.digest
    );
    assert!(doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap_or("")
            .starts_with("pkg:deb/debian/linux-image-")));

    // Deterministic for the same image; CycloneDX too.
    let again = inspect(&[&b.image], &["--sbom", "spdx"]);
    assert_eq!(again.stdout, out.stdout);
    let c1 = inspect(&[&b.image], &["--sbom", "cyclonedx"]);
    let c2 = inspect(&[&b.image], &["--sbom", "cyclonedx"]);
    assert_eq!(code(&c1), 0, "{}", text(&c1.stderr));
    assert_eq!(c1.stdout, c2.stdout);
    let cdx: serde_json::Value = serde_json::from_slice(&c1.stdout).unwrap();
    assert_eq!(cdx["specVersion"], "1.5");
    assert_eq!(
        cdx["metadata"]["component"]["hashes"][0]["content"],
        b.digest.trim_start_matches("sha256:")
    );
    let props = cdx["metadata"]["component"]["properties"]
        .as_array()
        .unwrap();
    assert!(
        props
            .iter()
            .any(|p| p["name"] == "fuse:image:arch" && p["value"] == "amd64"),
        "{props:?}"
    );
}
