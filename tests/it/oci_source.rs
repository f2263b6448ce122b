//! Container images as fuse reads them (`fuse::oci::source`): pushed to the real
//! `docker-registry` and fetched by tag, by digest and offline from the cache; images made by
//! `umoci` read from their OCI layout, and the same image copied by `skopeo` to a
//! docker-archive and to the registry (OCI and Docker schema 2) reads back the same.

use crate::registry::Registry;
use crate::support::*;
use fuse::digest::sha256_hex;
use fuse::oci::source::{self, Fetched, Options, Source};
use fuse::store::Store;
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A handmade single-layer image: (manifest, config, layer).
fn image(arch: &str, docker: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let plain = tar_of("app", format!("the {arch} app").as_bytes());
    let layer = gzip(&plain);
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/app"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&plain)]}
    }))
    .unwrap();
    let (mt, ct, lt) = if docker {
        (
            source::DOCKER_MANIFEST,
            source::DOCKER_CONFIG,
            source::DOCKER_LAYER,
        )
    } else {
        (
            fuse::oci::MANIFEST_TYPE,
            source::OCI_CONFIG,
            source::LAYER_GZIP,
        )
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": ct, "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": lt, "digest": digest(&layer), "size": layer.len()}]
    }))
    .unwrap();
    (manifest, config, layer)
}

fn opts(arch: &str, offline: bool) -> Options<'_> {
    Options {
        arch,
        insecure: true,
        username: None,
        offline,
    }
}

fn err(r: anyhow::Result<Fetched>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn registry_images_fetch_by_tag_and_digest_then_offline_from_the_cache() {
    let reg = Registry::start();
    let host = format!("127.0.0.1:{}", reg.port);
    let r = fuse::oci::Reference::parse(&format!("{host}/team/app:multi")).unwrap();
    let c = fuse::oci::client::connect(&r, true, None, true).unwrap();
    // Two OCI indexes' worth: amd64 + arm64 (OCI), amd64 + arm64 (Docker schema 2).
    let mut lists = Vec::new();
    let mut images = std::collections::BTreeMap::new();
    for docker in [false, true] {
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let (m, cfg, layer) = image(arch, docker);
            for b in [&cfg, &layer] {
                c.upload_blob(&digest(b), b).unwrap();
            }
            let mt = if docker {
                source::DOCKER_MANIFEST
            } else {
                fuse::oci::MANIFEST_TYPE
            };
            c.put_manifest_as(&digest(&m), &m, mt).unwrap();
            entries.push(json!({
                "mediaType": mt, "digest": digest(&m), "size": m.len(),
                "platform": {"architecture": arch, "os": "linux"}
            }));
            images.insert((docker, arch), (m, cfg, layer));
        }
        let lt = if docker {
            source::DOCKER_LIST
        } else {
            source::OCI_INDEX
        };
        let list =
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": lt, "manifests": entries}))
                .unwrap();
        let tag = if docker { "docker" } else { "multi" };
        c.put_manifest_as(tag, &list, lt).unwrap();
        lists.push(list);
    }

    let check = |f: &Fetched, docker: bool, arch: &str| {
        let (m, cfg, layer) = &images[&(docker, arch)];
        assert_eq!(f.manifest_digest, digest(m));
        assert_eq!(f.config_digest, digest(cfg));
        assert_eq!(&f.config, cfg);
        assert_eq!(f.layers.len(), 1);
        assert_eq!(&f.layers[0].bytes, layer);
        assert_eq!(f.layers[0].digest, digest(layer));
        assert_eq!(
            f.layers[0].media_type,
            if docker {
                source::DOCKER_LAYER
            } else {
                source::LAYER_GZIP
            }
        );
        assert_eq!(
            f.pinned.as_deref(),
            Some(format!("{host}/team/app@{}", digest(m)).as_str())
        );
    };
    // By tag, each architecture, OCI and Docker.
    let cache = tempfile::tempdir().unwrap();
    let store = Store::open(cache.path()).unwrap();
    for (docker, tag) in [(false, "multi"), (true, "docker")] {
        for arch in ["amd64", "arm64"] {
            let src = source::parse_source(&format!("{host}/team/app:{tag}")).unwrap();
            let f = source::fetch(&src, &store, &opts(arch, false)).unwrap();
            check(&f, docker, arch);
        }
    }
    let src = source::parse_source(&format!("{host}/team/app:multi")).unwrap();
    let e = err(source::fetch(&src, &store, &opts("riscv64", false)));
    assert!(e.contains("linux/amd64, linux/arm64"), "{e}");

    // By the pinned digest into a fresh cache, and by the index's digest.
    let fresh = tempfile::tempdir().unwrap();
    let store2 = Store::open(fresh.path()).unwrap();
    let (m, _, layer) = &images[&(false, "amd64")];
    let pinned = format!("{host}/team/app@{}", digest(m));
    let by_digest = source::parse_source(&pinned).unwrap();
    check(
        &source::fetch(&by_digest, &store2, &opts("amd64", false)).unwrap(),
        false,
        "amd64",
    );
    let by_index = source::parse_source(&format!("{host}/team/app@{}", digest(&lists[1]))).unwrap();
    check(
        &source::fetch(&by_index, &store2, &opts("arm64", false)).unwrap(),
        true,
        "arm64",
    );

    // A blob the registry serves corrupted: refused, not cached.
    let bad_cache = tempfile::tempdir().unwrap();
    let store3 = Store::open(bad_cache.path()).unwrap();
    let file = reg.blob_file(&digest(layer));
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::write(&file, &bad).unwrap();
    let e = err(source::fetch(&by_digest, &store3, &opts("amd64", false)));
    assert!(
        e.contains(&digest(layer)) && e.contains("does not match"),
        "{e}"
    );
    assert!(store3.get(&sha256_hex(layer)).unwrap().is_none());
    assert!(!store3.blob_path(&sha256_hex(&bad)).exists());
    std::fs::write(&file, &good).unwrap();

    // The registry gone: the pinned image comes from the cache, offline or not.
    drop(reg);
    for offline in [true, false] {
        let f = source::fetch(&by_digest, &store2, &opts("amd64", offline)).unwrap();
        check(&f, false, "amd64");
        let f = source::fetch(&by_index, &store2, &opts("arm64", offline)).unwrap();
        check(&f, true, "arm64");
    }
    // A tag offline, and a digest never fetched, are errors naming why.
    let e = err(source::fetch(&src, &store2, &opts("amd64", true)));
    assert!(e.contains("offline") && e.contains("multi"), "{e}");
    let other = format!("{host}/team/app@{}", digest(&images[&(true, "amd64")].0));
    let e = err(source::fetch(
        &source::parse_source(&other).unwrap(),
        &store2,
        &opts("amd64", true),
    ));
    assert!(e.contains("not in the cache"), "{e}");
}

fn umoci_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let img = format!("{}:1.0", layout.display());
    run_ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_ok(Command::new("umoci").args(["new", "--image", &img]));
    // unpack + repack (umoci 0.4.7's `insert` writes a layer tar cut short after the file's
    // bytes: no padding, no end-of-archive blocks).
    let bundle = dir.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &img])
            .arg(&bundle),
    );
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::write(bundle.join("rootfs/bin/app"), "#!/bin/sh\necho hello\n").unwrap();
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle),
    );
    run_ok(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--architecture",
        "amd64",
        "--os",
        "linux",
        "--config.entrypoint",
        "/bin/app",
        "--config.cmd",
        "world",
        "--config.env",
        "GREETING=hi",
        "--config.user",
        "1000:1000",
    ]));
    layout
}

/// The members of a layer (decompressed when gzip).
fn layer_files(l: &source::LayerBlob) -> Vec<String> {
    let tar = if l.media_type.ends_with("gzip") {
        gunzip(&l.bytes)
    } else {
        l.bytes.clone()
    };
    let mut a = tar::Archive::new(tar.as_slice());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn umoci_layouts_and_their_skopeo_copies_read_the_same() {
    if !require_tool("umoci") || !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = umoci_layout(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let store = Store::open(cache.path()).unwrap();
    let o = opts("amd64", true);

    // The layout, by tag and (one image in it) without.
    let src = source::parse_source(&format!("oci-layout:{}:1.0", layout.display())).unwrap();
    let f = source::fetch(&src, &store, &o).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(f.manifest_digest, index["manifests"][0]["digest"]);
    assert_eq!(f.config_digest, digest(&f.config));
    let config: serde_json::Value = serde_json::from_slice(&f.config).unwrap();
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/app"]));
    assert_eq!(config["config"]["User"], "1000:1000");
    assert_eq!(f.layers.len(), 1);
    assert_eq!(f.layers[0].media_type, source::LAYER_GZIP);
    assert!(
        layer_files(&f.layers[0]).contains(&"bin/app".to_string()),
        "{:?}",
        layer_files(&f.layers[0])
    );
    let untagged = Source::Layout {
        dir: layout.clone(),
        tag: None,
    };
    assert_eq!(
        source::fetch(&untagged, &store, &o)
            .unwrap()
            .manifest_digest,
        f.manifest_digest
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
    assert_eq!(diff_ids, [json!(digest(&gunzip(&f.layers[0].bytes)))]);

    // skopeo's docker-archive: same config; the layer stored uncompressed, its digest the
    // config's diff_id.
    let archive = dir.path().join("image.tar");
    run_ok(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:1.0", layout.display()),
        &format!("docker-archive:{}:example/app:1.0", archive.display()),
    ]));
    let a = source::fetch(&Source::DockerArchive(archive.clone()), &store, &o).unwrap();
    assert_eq!(a.config_digest, f.config_digest);
    assert_eq!(a.manifest_digest, a.config_digest);
    assert_eq!(a.layers.len(), 1);
    assert_eq!(a.layers[0].media_type, source::LAYER_TAR);
    assert_eq!(json!(a.layers[0].digest), diff_ids[0]);
    assert_eq!(a.layers[0].bytes, gunzip(&f.layers[0].bytes));
    // Nothing from local sources went into the cache.
    assert_eq!(
        std::fs::read_dir(cache.path().join("sha256"))
            .unwrap()
            .count(),
        0
    );

    // skopeo to the registry, as OCI and as Docker schema 2.
    let reg = Registry::start();
    let host = format!("127.0.0.1:{}", reg.port);
    for (format, tag) in [("oci", "oci"), ("v2s2", "v2s2")] {
        run_ok(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            "--format",
            format,
            &format!("oci:{}:1.0", layout.display()),
            &format!("docker://{host}/team/umoci:{tag}"),
        ]));
        let src = source::parse_source(&format!("{host}/team/umoci:{tag}")).unwrap();
        let r = source::fetch(&src, &store, &opts("amd64", false)).unwrap();
        assert_eq!(r.config_digest, f.config_digest, "{format}");
        assert_eq!(r.layers.len(), 1);
        assert_eq!(r.layers[0].bytes, f.layers[0].bytes, "{format}");
        assert_eq!(
            r.layers[0].media_type,
            if format == "oci" {
                source::LAYER_GZIP
            } else {
                source::DOCKER_LAYER
            }
        );
        if format == "oci" {
            assert_eq!(r.manifest_digest, f.manifest_digest);
        }
        // Pinned, it reads back offline.
        let pinned = source::parse_source(r.pinned.as_deref().unwrap()).unwrap();
        let p = source::fetch(&pinned, &store, &opts("amd64", true)).unwrap();
        assert_eq!(p.manifest_digest, r.manifest_digest);
    }
}

/// `fuse lock` pins the digest a tag resolves to; once the tag is pointed at another image,
/// `fuse build --locked` refuses, naming the tag and both digests, before building anything;
/// `fuse lock` (no --locked) takes the new digest.
#[test]
fn locked_refuses_a_container_tag_that_moved() {
    let reg = Registry::start();
    let host = format!("127.0.0.1:{}", reg.port);
    let tagged = format!("{host}/team/moving:v1");
    let r = fuse::oci::Reference::parse(&tagged).unwrap();
    let c = fuse::oci::client::connect(&r, true, None, true).unwrap();
    // Two amd64 images (OCI and Docker media types: different manifests), the tag on each in turn.
    let push = |docker: bool| -> String {
        let (m, cfg, layer) = image("amd64", docker);
        for b in [&cfg, &layer] {
            c.upload_blob(&digest(b), b).unwrap();
        }
        let mt = if docker {
            source::DOCKER_MANIFEST
        } else {
            fuse::oci::MANIFEST_TYPE
        };
        c.put_manifest_as("v1", &m, mt).unwrap();
        digest(&m)
    };
    let first = push(false);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        format!(
            "[image]\nname = \"moving\"\nversion = \"1\"\n\n[app]\nkind = \"oci\"\nimage = \"{tagged}\"\n\
             port = 8080\n\n[system]\ndistribution = \"debian/bookworm\"\nkernel = \"linux-image-amd64\"\n"
        ),
    )
    .unwrap();
    let lock = app.join("fuse.lock");
    let locked = |want: &str| {
        let text = std::fs::read_to_string(&lock).unwrap();
        let pinned = text
            .lines()
            .skip_while(|l| l.trim() != "[app]")
            .find_map(|l| l.trim().strip_prefix("sha256 = "))
            .unwrap_or_else(|| panic!("no [app] sha256 in:\n{text}"));
        assert_eq!(pinned.trim_matches('"'), want.trim_start_matches("sha256:"));
    };
    ok(
        &Fuse::new(["lock".as_ref(), app.as_os_str()]).output(),
        "fuse lock",
    );
    locked(&first);

    let second = push(true);
    assert_ne!(first, second);
    let out = Fuse::new(["build".as_ref(), app.as_os_str(), "--locked".as_ref()]).output();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&tagged) && err.contains(&first) && err.contains(&second),
        "{err}"
    );
    assert!(err.contains("--locked"), "{err}");
    assert!(!app.join("fuse-out").exists());
    locked(&first);

    // Without --locked the lock follows the tag.
    ok(
        &Fuse::new(["lock".as_ref(), app.as_os_str()]).output(),
        "fuse lock",
    );
    locked(&second);
}
