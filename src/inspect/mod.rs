//! `fuse inspect`: what is inside an image and what changed between two, answered from the
//! image's own bytes (GPT, FAT and squashfs are parsed by fuse, never mounted). Pure
//! functions over bytes and image.json values; the command only reads files and prints.
//!
//! - [`verify`]: read an image and verify it (digest, GPT CRCs, ESP, UKI, layer digests).
//! - [`diff`]: compare two verified images.
//! - [`sbom`]: SPDX 2.3 and CycloneDX 1.5 documents.
//! - [`render`]: the human-readable text.

pub mod diff;
pub mod render;
pub mod sbom;
pub mod verify;

pub use verify::{Image, VerificationFailed};

use crate::disk::ImageMeta;
use crate::export;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Version of the `--json` output structure (docs/inspect.md); bumped on incompatible change.
pub const JSON_FORMAT: u32 = 1;

/// `fuse inspect IMAGE --json`.
#[derive(Serialize)]
pub struct InspectJson<'a> {
    pub fuse_inspect: u32,
    pub file: &'a str,
    pub digest: &'a str,
    pub size: u64,
    pub verification: Verification<'a>,
    pub partitions: &'a [verify::Partition],
    /// The export format the raw disk was read from (absent for a raw image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapper: Option<&'a verify::Wrapper>,
    /// The UKI's Secure Boot signatures (empty: unsigned), each with the problems found
    /// verifying it (empty: verified).
    pub secure_boot: &'a [crate::sign::SignatureReport],
    /// image.json as embedded, with `digest` and `disk_size` from the bytes (null when it
    /// could not be read).
    pub metadata: Option<&'a ImageMeta>,
}

#[derive(Serialize)]
pub struct Verification<'a> {
    pub ok: bool,
    pub checked: &'a [String],
    pub problems: &'a [verify::Problem],
}

impl<'a> InspectJson<'a> {
    pub fn new(file: &'a str, img: &'a Image) -> InspectJson<'a> {
        InspectJson {
            fuse_inspect: JSON_FORMAT,
            file,
            digest: &img.digest,
            size: img.size,
            verification: Verification {
                ok: img.report.ok(),
                checked: &img.report.checked,
                problems: &img.report.problems,
            },
            partitions: &img.partitions,
            wrapper: img.wrapper.as_ref(),
            secure_boot: &img.signatures,
            metadata: img.meta.as_ref(),
        }
    }
}

/// `fuse inspect OLD NEW --json`.
#[derive(Serialize)]
pub struct DiffJson<'a> {
    pub fuse_inspect: u32,
    #[serde(flatten)]
    pub diff: &'a diff::ImageDiff,
}

/// Which SBOM to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbomFormat {
    Spdx,
    CycloneDx,
}

/// The SBOM of a verified image. Reads every layer's file system back from its partition
/// and checks its file list against image.json first (problems go to the image's report,
/// and then no document is made).
pub fn sbom(disk: &[u8], img: &mut Image, format: SbomFormat) -> Option<serde_json::Value> {
    let meta = img.meta.clone()?;
    if !img.report.ok() {
        return None;
    }
    let mut report = std::mem::take(&mut img.report);
    let mut trees = Vec::new();
    for l in &meta.layers {
        if let Some(t) = verify::check_layer_files(disk, img, l, &mut report) {
            trees.push((l, t));
        }
    }
    img.report = report;
    if !img.report.ok() {
        return None;
    }
    let layers: Vec<sbom::LayerContent> = trees
        .iter()
        .map(|(l, t)| sbom::LayerContent { meta: l, tree: t })
        .collect();
    Some(match format {
        SbomFormat::Spdx => sbom::spdx(&meta, &layers),
        SbomFormat::CycloneDx => sbom::cyclonedx(&meta, &layers),
    })
}

/// Reads an image file of any format fuse exports (the raw disk inside it) and its beside
/// copy of image.json (`<stem>.json`), then verifies. Never fails on what verification
/// finds (that is in the report): only when the file cannot be read or unwrapped.
/// `inspect`, `run` and `test` read images through it.
pub fn load(path: &Path) -> Result<(export::Opened, Image)> {
    let t = Instant::now();
    let file_size = std::fs::metadata(path)
        .with_context(|| format!("cannot read the image {}", path.display()))?
        .len();
    let opened = export::detect_and_open(path)?;
    let disk = &opened.raw;
    let beside_path = export::beside_json(path);
    let beside = if beside_path != path && beside_path.is_file() {
        let b = std::fs::read(&beside_path)
            .with_context(|| format!("cannot read {}", beside_path.display()))?;
        let name = beside_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((name, b))
    } else {
        None
    };
    let mut img = verify::read(
        disk,
        beside.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    if opened.format != export::Format::Raw {
        img.report.check(format!(
            "{} container read: raw disk of {} bytes",
            opened.format,
            disk.len()
        ));
        if let Some(recorded) = &opened.recorded_digest {
            img.report.check(format!(
                "digest recorded in the {} container",
                opened.format
            ));
            if *recorded != img.digest {
                img.report.fail(
                    format!("{} container", opened.format),
                    format!(
                        "records {recorded}, the raw disk inside it is {}",
                        img.digest
                    ),
                );
            }
        }
        img.wrapper = Some(verify::Wrapper {
            format: opened.format.name().into(),
            file_size,
        });
    }
    tracing::debug!(
        "{}: read and verified in {:.3}s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok((opened, img))
}

#[cfg(test)]
pub(crate) mod fixture;

#[cfg(test)]
mod tests {
    use super::fixture::{self, partition};
    use super::*;
    use crate::digest::sha256_hex;

    fn read(disk: &[u8], beside: &[u8]) -> Image {
        verify::read(disk, Some(("hello-1.0.0.json", beside)))
    }

    fn parts(img: &Image) -> Vec<&str> {
        img.report
            .problems
            .iter()
            .map(|p| p.part.as_str())
            .collect()
    }

    /// Finding 2: what boots is the boot plan inside the UKI; a plan changed to run
    /// /bin/sh as root (image.json's UKI and initramfs digests fixed to match) showed
    /// `user 1000:1000` and exited 0.
    #[test]
    fn a_boot_plan_that_differs_from_image_json_fails_naming_the_field() {
        let good = fixture::build(b"app", |_| {});
        let img = verify::read(&good.disk, None);
        assert!(img.report.ok(), "{:?}", img.report.problems);
        let f = fixture::build_full(
            b"app",
            fixture::app_tree(b"app"),
            |p| {
                p.app.uid = 0;
                p.app.gid = 0;
                p.app.argv = vec!["/bin/sh".into()];
                p.app.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
                p.app.stop_signal = Some("SIGKILL".into());
            },
            |_| {},
        );
        let img = verify::read(&f.disk, None);
        let text = format!("{:?}", img.report.problems);
        for field in ["app user", "app.argv", "app.env", "app.stop_signal"] {
            assert!(text.contains(field), "{field}: {text}");
        }
        assert!(img.verified("x").is_err());
        // A verity root in the plan that is not the layer's.
        let f = fixture::build_full(
            b"app",
            fixture::app_tree(b"app"),
            |p| {
                p.verity.get_mut("app").unwrap().root_hash = "0".repeat(64);
            },
            |_| {},
        );
        let text = format!("{:?}", verify::read(&f.disk, None).report.problems);
        assert!(text.contains("verity of layer app"), "{text}");
        // The kernel command line.
        let f = fixture::build(b"app", |m| m.kernel.cmdline = "init=/bin/sh".into());
        let text = format!("{:?}", verify::read(&f.disk, None).report.problems);
        assert!(text.contains("kernel command line"), "{text}");
    }

    /// Finding 2: a file list in image.json missing `/app/hello` showed `FILES 0`, exit 0.
    #[test]
    fn a_file_list_that_differs_from_the_squashfs_fails() {
        let f = fixture::build(b"app", |m| {
            let l = m.layers.iter_mut().find(|l| l.name == "app").unwrap();
            l.files
                .retain(|f| f.path != "/app/hello" && f.path != "app/hello");
        });
        let img = verify::read(&f.disk, None);
        assert!(
            parts(&img).contains(&"layer app"),
            "{:?}",
            img.report.problems
        );
    }

    /// A later archive in the initramfs would replace the plan when the kernel unpacks it.
    #[test]
    fn a_core_that_replaces_the_boot_plan_is_refused() {
        let f = fixture::build(b"app", |_| {});
        let plan = crate::layers::BootPlan {
            format: 1,
            hostname: "x".into(),
            modules: vec![],
            device_modules: vec![],
            layers: vec![],
            fs_type: "squashfs".into(),
            verity: Default::default(),
            app: crate::layers::AppPlan {
                argv: vec![],
                workdir: "/".into(),
                env: Default::default(),
                uid: 0,
                gid: 0,
                env_args: None,
                stop_timeout: 30,
                stop_signal: None,
                writable: vec![],
            },
        };
        let initrd = fixture::boot_initrd(&plan, &[("fuse/boot.json", b"{}")]);
        assert!(verify::core_leaves_plan_alone(
            &initrd[crate::format::cpio::read_first(&initrd).unwrap().1..]
        )
        .is_err());
        // The core builds make (it creates the `fuse` directory too) is fine.
        let initrd = fixture::boot_initrd(&plan, &[]);
        assert!(verify::core_leaves_plan_alone(
            &initrd[crate::format::cpio::read_first(&initrd).unwrap().1..]
        )
        .is_ok());
        // A `fuse` that is not that plain directory: a file, a world-writable directory.
        for node in [
            crate::tree::Node::file(b"x".to_vec(), 0o644),
            crate::tree::Node::dir(0o777),
        ] {
            let mut core = crate::tree::Tree::new();
            core.insert("fuse", node).unwrap();
            let core = crate::disk::write_initramfs(&core).unwrap();
            assert!(verify::core_leaves_plan_alone(&core).is_err());
        }
        drop(f);
    }

    /// Finding 1: image.json's name and version go into file names (export), the VMDK
    /// descriptor and the terminal; an image whose embedded image.json names `../../x`, a
    /// newline or a terminal escape fails verification (and so every command refuses it).
    #[test]
    fn unsafe_names_and_versions_fail_verification() {
        for (name, version) in [
            ("../../x", "1.0.0"),
            ("/abs", "1.0.0"),
            ("hello", "1.0\nparentFileNameHint=\"x\""),
            ("hello\u{1b}[2J", "1.0.0"),
            ("hello", ""),
        ] {
            let f = fixture::build(b"app", |m| {
                m.name = name.into();
                m.version = version.into();
            });
            let img = verify::read(&f.disk, None);
            assert!(img.verified("x").is_err(), "{name:?} {version:?}");
            assert!(parts(&img).contains(&"image.json"), "{:?}", img.report);
            assert!(crate::disk::read_meta(&f.disk).is_err());
        }
    }

    /// The defect: a layer of directories nested thousands deep, in an image whose digests
    /// are all consistent, made `inspect --sbom` take time cubic in the depth (170 s and
    /// 481 MB at depth 12000). The squashfs reader refuses it at the tree's depth limit.
    #[test]
    fn a_deeply_nested_layer_is_a_problem_not_a_hang() {
        let mut deep = crate::tree::Tree::new();
        let mut p = String::from("app");
        for _ in 0..1000 {
            deep.insert_unchecked(p.clone(), crate::tree::Node::dir(0o755));
            p.push_str("/d");
        }
        let f = fixture::build_with(b"app v1", deep, |_| {});
        // Plain verification reads every layer's squashfs now (its listing is compared
        // with image.json), so the depth limit is met there.
        let mut img = verify::read(&f.disk, None);
        assert!(!img.report.ok());
        assert!(sbom(&f.disk, &mut img, SbomFormat::Spdx).is_none());
        let all = format!("{:?}", img.report.problems);
        assert!(all.contains("nested deeper than 256"), "{all}");
    }

    /// The defect: inspect verified each layer on a thread of its own, so an image.json
    /// listing 40,000 layers exhausted the threads (EAGAIN, then an abort). The checks run
    /// on a bounded pool: the process's thread count stays near where it was.
    #[test]
    fn an_image_json_with_many_layers_uses_a_bounded_number_of_threads() {
        fn threads() -> usize {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap()
        }
        let f = fixture::build(b"app v1", |m| {
            let l = m.layers[1].clone();
            m.layers.extend((0..20_000).map(|i| crate::disk::LayerMeta {
                name: format!("x{i}"),
                partition: format!("fuse-x{i}"),
                files: vec![],
                ..l.clone()
            }));
        });
        let before = threads();
        let done = std::sync::atomic::AtomicBool::new(false);
        let peak = std::thread::scope(|s| {
            let watch = s.spawn(|| {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    peak = peak.max(threads());
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                peak
            });
            let img = verify::read(&f.disk, None);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(!img.report.ok());
            assert!(parts(&img).contains(&"gpt"), "{:?}", parts(&img));
            assert_eq!(
                img.report
                    .problems
                    .iter()
                    .filter(|p| p.part.starts_with("layer x"))
                    .count(),
                20_000
            );
            watch.join().unwrap()
        });
        // Other tests run beside this one: allow for their threads, not for 20,000.
        assert!(
            peak < before + 100,
            "{before} threads before, {peak} during"
        );
    }

    #[test]
    fn a_good_image_verifies_and_reads_back_its_metadata() {
        let f = fixture::build(b"app v1", |_| {});
        let img = read(&f.disk, &f.beside);
        assert!(img.report.ok(), "{:?}", img.report.problems);
        assert_eq!(img.digest, format!("sha256:{}", sha256_hex(&f.disk)));
        assert_eq!(img.meta.as_ref(), Some(&f.meta));
        let names: Vec<&str> = img.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["fuse-esp", "fuse-base", "fuse-app"]);
        assert!(img.verified("x").is_ok());
        // Without the beside copy it verifies too, and says less.
        let alone = verify::read(&f.disk, None);
        assert!(alone.report.ok());
        assert!(alone.report.checked.len() < img.report.checked.len());
    }

    #[test]
    fn a_flipped_byte_in_a_layer_names_that_layer() {
        let f = fixture::build(b"app v1", |_| {});
        let mut disk = f.disk.clone();
        let app = partition(&disk, "fuse-app");
        disk[app.start + 10] ^= 0x40;
        let img = verify::read(&disk, None);
        // the digest and the dm-verity root hash both fail
        assert_eq!(
            parts(&img),
            ["layer app", "layer app"],
            "{:?}",
            img.report.problems
        );
        assert!(img.report.problems[0].problem.contains("digest mismatch"));
        assert!(img.report.problems[1]
            .problem
            .contains("verity root hash mismatch"));
        let err = img.verified("copy.img").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("copy.img failed verification"), "{text}");
        assert!(text.contains("layer app: digest mismatch"), "{text}");
        // The typed error survives anyhow, so callers can tell it from other failures.
        let any: anyhow::Error = err.into();
        assert!(any.downcast_ref::<VerificationFailed>().is_some());

        // With the beside copy, the disk digest no longer matches it either.
        let img = read(&disk, &f.beside);
        assert_eq!(
            parts(&img),
            ["layer app", "layer app", "beside hello-1.0.0.json"]
        );
    }

    #[test]
    fn a_damaged_verity_tree_names_the_layer() {
        // an incompressible app, so the layer has many blocks and a hash tree
        let app: Vec<u8> = (0..40_000u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        let f = fixture::build(&app, |_| {});
        let v = f.meta.layers[1].verity.clone().unwrap();
        assert!(v.data_blocks > 1);
        let app = partition(&f.disk, "fuse-app");
        // a byte in the hash tree (after the superblock): the data still matches its digest
        let mut disk = f.disk.clone();
        disk[app.start + v.hash_offset as usize + 4096 + 3] ^= 1;
        let img = verify::read(&disk, None);
        assert_eq!(parts(&img), ["layer app"], "{:?}", img.report.problems);
        assert!(img.report.problems[0].problem.contains("verity"));
        // a root hash that image.json records differently
        let f = fixture::build(b"app v1", |m| {
            m.layers[1].verity.as_mut().unwrap().root_hash = "0".repeat(64)
        });
        let img = verify::read(&f.disk, None);
        // The boot plan in the UKI holds the true root: image.json differs from it too.
        assert_eq!(
            parts(&img),
            ["uki", "layer app"],
            "{:?}",
            img.report.problems
        );
        assert!(img.report.problems[1]
            .problem
            .contains("verity root hash mismatch"));
    }

    #[test]
    fn a_damaged_uki_or_gpt_is_reported() {
        let f = fixture::build(b"app v1", |_| {});
        let needle = b"stand-in for a unified";
        let at = f
            .disk
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut disk = f.disk.clone();
        disk[at] ^= 1;
        assert_eq!(parts(&verify::read(&disk, None)), ["uki"]);

        let mut disk = f.disk.clone();
        disk[1024 + 40] ^= 1; // the first partition entry's first LBA
        let img = verify::read(&disk, None);
        assert_eq!(parts(&img), ["gpt"]);
        assert!(img.meta.is_none());
        assert!(img.verified("x").is_err());
    }

    #[test]
    fn a_changed_byte_outside_the_partitions_is_reported() {
        let f = fixture::build(b"app v1", |_| {});
        let app = partition(&f.disk, "fuse-app");
        for at in [
            2 * 512 + 128 * 128 + 5, // after the primary entry array, before the ESP
            app.end + 7,             // after the last partition, before the backup array
        ] {
            let mut disk = f.disk.clone();
            disk[at] = 0x5a;
            let img = verify::read(&disk, None);
            assert_eq!(parts(&img), ["disk"], "offset {at}");
            assert!(
                img.report.problems[0]
                    .problem
                    .contains(&format!("non-zero byte at offset {at}")),
                "{:?}",
                img.report.problems
            );
        }
    }

    #[test]
    fn a_beside_copy_that_disagrees_is_reported() {
        let f = fixture::build(b"app v1", |_| {});
        let other = fixture::build(b"app v2", |_| {});
        let img = read(&f.disk, &other.beside);
        assert_eq!(
            parts(&img),
            [
                "beside hello-1.0.0.json",
                "beside hello-1.0.0.json",
                "beside hello-1.0.0.json"
            ][..img.report.problems.len()]
        );
        let all = img
            .report
            .problems
            .iter()
            .map(|p| p.problem.clone())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all.contains("records digest"), "{all}");
        assert!(
            all.contains("differs from the image.json embedded"),
            "{all}"
        );
        let img = read(&f.disk, b"{ not json");
        assert_eq!(parts(&img), ["beside hello-1.0.0.json"]);
    }

    #[test]
    fn diff_of_two_fixtures() {
        let a = fixture::build(b"app v1", |_| {});
        let b = fixture::build(b"app v1 with more bytes", |_| {});
        let (ia, ib) = (verify::read(&a.disk, None), verify::read(&b.disk, None));
        let (ma, mb) = (ia.verified("a").unwrap(), ib.verified("b").unwrap());
        let d = diff::diff("a.img", ma, "b.img", mb);
        assert!(!d.identical);
        let st: Vec<(&str, diff::Status)> = d
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.status))
            .collect();
        assert_eq!(
            st,
            [
                ("base", diff::Status::Unchanged),
                ("app", diff::Status::Changed)
            ]
        );
        let m = &d.layers[1].files.modified;
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].path.as_str(), m[0].size_delta), ("/app/hello", 16));
        let text = render::diff(&d);
        assert!(text.contains("/app/hello  6 -> 22 bytes (+16)"), "{text}");
        assert!(!text.contains("identical"), "{text}");
        let same = diff::diff("a.img", ma, "a2.img", ma);
        assert!(same.identical);
        assert!(render::diff(&same).contains("identical"));
        // The summary of one image names what matters.
        let s = render::summary("a.img", &ia, ma);
        for want in [
            ia.digest.as_str(),
            "/app/hello",
            "PORT=8080",
            "HTTP GET /",
            "libc6",
            "fuse-app",
        ] {
            assert!(s.contains(want), "{want:?} not in:\n{s}");
        }
    }

    fn regular_files(t: &crate::tree::Tree) -> Vec<(String, String)> {
        t.iter()
            .filter_map(|(p, n)| n.data().map(|d| (format!("./{p}"), sha256_hex(d))))
            .collect()
    }

    #[test]
    fn spdx_lists_the_files_each_layer_really_holds() {
        let f = fixture::build(b"app v1", |_| {});
        let mut img = verify::read(&f.disk, None);
        let doc = sbom(&f.disk, &mut img, SbomFormat::Spdx).expect("an SBOM");
        assert!(img.report.ok());
        let again = sbom(&f.disk, &mut verify::read(&f.disk, None), SbomFormat::Spdx).unwrap();
        assert_eq!(
            serde_json::to_vec(&doc).unwrap(),
            serde_json::to_vec(&again).unwrap(),
            "not deterministic"
        );
        let files = doc["files"].as_array().unwrap();
        for (layer, tree) in [
            ("base", fixture::base_tree()),
            ("app", fixture::app_tree(b"app v1")),
        ] {
            let pkg = doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["SPDXID"] == format!("SPDXRef-Layer-{layer}"))
                .unwrap();
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
            assert_eq!(listed, regular_files(&tree), "layer {layer}");
        }
        let libc = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "libc6")
            .unwrap();
        assert_eq!(
            libc["licenseDeclared"],
            "LGPL-2.1-or-later AND GPL-2.0-only"
        );
        assert_eq!(
            libc["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");

        let cdx = sbom(
            &f.disk,
            &mut verify::read(&f.disk, None),
            SbomFormat::CycloneDx,
        )
        .unwrap();
        assert_eq!(cdx["bomFormat"], "CycloneDX");
        let app = cdx["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "layer app")
            .unwrap();
        assert_eq!(app["components"][0]["name"], "/app/hello");
        assert_eq!(
            app["components"][0]["hashes"][1]["content"],
            sha256_hex(b"app v1")
        );
    }

    #[test]
    fn a_containers_own_packages_are_in_both_sboms_in_the_layer_holding_its_database() {
        use crate::disk::{ContainerPackage, ContainerPackages, ContainerSource};
        let f = fixture::build(b"app v1", |m| {
            m.app.container = Some(ContainerSource {
                reference: "127.0.0.1:5000/team/web:v1".into(),
                pinned: None,
                manifest_digest: format!("sha256:{}", "c".repeat(64)),
                config_digest: format!("sha256:{}", "d".repeat(64)),
                user: "web".into(),
                stop_signal: None,
                labels: Default::default(),
                layers: vec![],
                packages: vec![
                    ContainerPackages {
                        kind: "deb".into(),
                        path: "/var/lib/dpkg/status".into(),
                        layer: "app".into(),
                        vendor: "debian".into(),
                        distro: Some("debian-12".into()),
                        installed: vec![ContainerPackage {
                            name: "python3".into(),
                            version: "3.11.2-1+b1".into(),
                            arch: "amd64".into(),
                            source: Some("python3-defaults".into()),
                            license: None,
                        }],
                    },
                    ContainerPackages {
                        kind: "apk".into(),
                        path: "/lib/apk/db/installed".into(),
                        layer: "base".into(),
                        vendor: "alpine".into(),
                        distro: None,
                        installed: vec![ContainerPackage {
                            name: "musl".into(),
                            version: "1.2.4_git20230717-r4".into(),
                            arch: "x86_64".into(),
                            source: Some("musl".into()),
                            license: Some("MIT".into()),
                        }],
                    },
                ],
            });
        });
        let mut img = verify::read(&f.disk, None);
        let doc = sbom(&f.disk, &mut img, SbomFormat::Spdx).expect("an SBOM");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/spdx-schema-2.3.json");
        let schema: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let musl = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "musl")
            .expect("musl in the SPDX document");
        assert_eq!(
            musl["externalRefs"][0]["referenceLocator"],
            "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64"
        );
        assert!(doc["relationships"].as_array().unwrap().iter().any(|r| {
            r["spdxElementId"] == "SPDXRef-Layer-base" && r["relatedSpdxElement"] == musl["SPDXID"]
        }));
        let py = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "python3")
            .expect("python3 in the SPDX document");
        assert_eq!(py["versionInfo"], "3.11.2-1+b1");
        assert_eq!(
            py["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12"
        );
        assert!(py.get("checksums").is_none(), "{py}");
        let contained = doc["relationships"].as_array().unwrap().iter().any(|r| {
            r["spdxElementId"] == "SPDXRef-Layer-app"
                && r["relatedSpdxElement"] == py["SPDXID"]
                && r["relationshipType"] == "CONTAINS"
        });
        assert!(contained, "{}", doc["relationships"]);

        let cdx = sbom(
            &f.disk,
            &mut verify::read(&f.disk, None),
            SbomFormat::CycloneDx,
        )
        .unwrap();
        let app = cdx["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "layer app")
            .unwrap();
        let py = app["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "python3")
            .expect("python3 in the app layer's components");
        assert_eq!(py["version"], "3.11.2-1+b1");
    }

    #[test]
    fn spdx_is_refused_when_image_json_lies_about_a_layers_files() {
        let f = fixture::build(b"app v1", |m| {
            m.layers[0].files.retain(|f| f.path != "/etc/passwd");
        });
        // Plain verification compares the listing now (finding 2 of issue 25).
        let mut img = verify::read(&f.disk, None);
        assert!(!img.report.ok());
        assert!(sbom(&f.disk, &mut img, SbomFormat::Spdx).is_none());
        assert_eq!(parts(&img), ["layer base"]);
        assert!(
            img.report.problems[0]
                .problem
                .contains("/etc/passwd is in the file system, not in image.json"),
            "{:?}",
            img.report.problems
        );
    }

    #[test]
    fn spdx_of_the_fixture_validates_against_the_official_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/spdx-schema-2.3.json");
        let schema: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let f = fixture::build(b"app v1", |_| {});
        let doc = sbom(&f.disk, &mut verify::read(&f.disk, None), SbomFormat::Spdx).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // Every LicenseRef used is defined in the document, as SPDX requires.
        let defined: Vec<&str> = doc["hasExtractedLicensingInfos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["licenseId"].as_str().unwrap())
            .collect();
        assert_eq!(defined, ["LicenseRef-public-domain"]);
        let stub = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "systemd-boot-efi")
            .unwrap();
        assert_eq!(
            stub["licenseDeclared"],
            "LGPL-2.1-or-later AND LicenseRef-public-domain"
        );
    }
}
