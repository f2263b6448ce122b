//! fuse.lock and hostile archives, against a test archive served on loopback.

use crate::fixture::{app_with, gpg_key, Archive, Server};
use crate::support::*;
use std::path::Path;

fn build_with_cache(app: &Path, cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", app.to_str().unwrap()];
    args.extend_from_slice(extra);
    fuse(&args, &[("FUSE_CACHE_DIR", cache.to_str().unwrap())])
}

fn digest_of(out: &std::process::Output) -> String {
    assert!(out.status.success(), "build failed:\n{}", text(&out.stderr));
    text(&out.stdout).lines().last().unwrap().to_string()
}

/// A Release that offers by-hash on a mirror without the by-hash copies (seen for trixie's
/// Contents): the index is fetched by name, and checked against the Release all the same.
#[test]
fn indexes_missing_by_hash_are_fetched_by_name() {
    let mut a = Archive::new();
    a.by_hash = true;
    a.add_kernel_and_stub();
    a.add_package(
        "libfoo1",
        "1.0",
        "",
        &[("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo")],
    );
    a.publish(None, None);
    let server = Server::start(&a.www());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let app = app_with(dir.path(), &server.url, &a.keyring(), &["libfoo1"]);
    let out = build_with_cache(&app, &cache, &[]);
    let err = text(&out.stderr);
    assert!(digest_of(&out).starts_with("sha256:"), "{err}");
    assert!(
        err.contains("by-hash/SHA256/") && err.contains("HTTP 404"),
        "{err}"
    );
    // by name, a Packages file that does not match the Release is still refused
    std::fs::remove_file(app.join("fuse.lock")).unwrap();
    a.tamper_packages();
    let out = build_with_cache(&app, &dir.path().join("cache2"), &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not match InRelease"), "{err}");
}

#[test]
fn a_locked_build_needs_no_network_and_a_changed_manifest_fails_locked() {
    let mut a = Archive::new();
    a.add_kernel_and_stub();
    a.add_package(
        "libbar1",
        "1.0",
        "",
        &[("usr/lib/x86_64-linux-gnu/libbar.so.1", b"bar")],
    );
    a.add_package(
        "libfoo1",
        "1.0",
        "libbar1 (>= 1.0)",
        &[("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo")],
    );
    a.add_package("unrelated", "1.0", "", &[("usr/share/unrelated", b"x")]);
    a.publish(None, None);
    let server = Server::start(&a.www());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let app = app_with(dir.path(), &server.url, &a.keyring(), &["libfoo1"]);

    let first = digest_of(&build_with_cache(&app, &cache, &[]));
    let lock = std::fs::read_to_string(app.join("fuse.lock")).unwrap();
    assert!(
        lock.contains("name = \"libfoo1\"") && lock.contains("name = \"libbar1\""),
        "{lock}"
    );
    assert!(!lock.contains("unrelated"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("fuse-out/hello-1.0.0.json")).unwrap())
            .unwrap();
    let pkgs: Vec<&str> = meta["layers"][0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pkgs, ["libbar1", "libfoo1"]);
    let files = meta["layers"][0]["files"].as_array().unwrap();
    assert!(files
        .iter()
        .any(|f| f["path"] == "/usr/lib/x86_64-linux-gnu/libfoo.so.1"));

    // The mirror goes away: the lock and the warm cache are enough, with the same result.
    let served = server.requests.lock().unwrap().len();
    server.stop();
    assert!(served > 0);
    let second = digest_of(&build_with_cache(&app, &cache, &[]));
    assert_eq!(first, second);
    let locked = digest_of(&build_with_cache(&app, &cache, &["--locked"]));
    assert_eq!(first, locked);

    // A manifest that asks for more than the lock pins: --locked says what differs.
    let m = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        m.replace(
            "packages = [\"libfoo1\"]",
            "packages = [\"libfoo1\", \"libbaz\"]",
        ),
    )
    .unwrap();
    let out = build_with_cache(&app, &cache, &["--locked"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("package libbaz is in the manifest but not in the lock"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("fuse.lock")).unwrap(),
        lock,
        "--locked changed the lock"
    );
}

/// A .deb made by hand (dpkg-deb refuses to build these), with data entries given as raw
/// tar headers: (name bytes, type flag, link target, contents).
fn raw_deb(name: &str, entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    fn tar_gz(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, ty, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(tar::EntryType::new(*ty));
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }
    let control = format!("Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@test.invalid>\nDescription: hostile\n");
    let control_tgz = tar_gz(&[("./control", b'0', "", control.as_bytes())]);
    let data_tgz = tar_gz(entries);
    let mut ar = b"!<arch>\n".to_vec();
    for (member, data) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", control_tgz),
        ("data.tar.gz", data_tgz),
    ] {
        ar.extend_from_slice(
            format!(
                "{member:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                0,
                0,
                0,
                "100644",
                data.len()
            )
            .as_bytes(),
        );
        ar.extend_from_slice(&data);
        if data.len() % 2 == 1 {
            ar.push(b'\n');
        }
    }
    ar
}

fn refused(
    a: &Archive,
    packages: &[&str],
    needle: &str,
    not_cached: Option<&str>,
    truncate: Option<&str>,
) {
    let server = Server::start(&a.www());
    if let Some(t) = truncate {
        server.truncate.lock().unwrap().insert(t.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let app = app_with(dir.path(), &server.url, &a.keyring(), packages);
    let out = build_with_cache(&app, &cache, &[]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a refusal containing {needle:?}:\n{err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!app.join("fuse-out").exists(), "an image was written");
    assert!(!app.join("fuse.lock").exists(), "a lock was written");
    if let Some(sha) = not_cached {
        assert!(
            !cache.join("sha256").join(sha).exists(),
            "the refused package is in the cache"
        );
    }
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_cached() {
    let mut a = Archive::new();
    a.add_kernel_and_stub();
    let dotdot = a.add_raw(
        "evil-path.deb",
        &raw_deb(
            "evil-path",
            &[("./usr/../../etc/cron.d/evil", b'0', "", b"* * * * * root x")],
        ),
        "Package: evil-path\nVersion: 1.0\nArchitecture: amd64\n",
    );
    let link = a.add_raw(
        "evil-link.deb",
        &raw_deb(
            "evil-link",
            &[("./usr/lib/shadow", b'2', "../../../../../etc/shadow", b"")],
        ),
        "Package: evil-link\nVersion: 1.0\nArchitecture: amd64\n",
    );
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let big = a.add_package("big", "1.0", "", &[("usr/share/big/noise", &noise)]);

    // A good archive first: each hostile package on its own.
    a.publish(None, None);
    refused(&a, &["evil-path"], "..", Some(&dotdot), None);
    refused(&a, &["evil-link"], "escapes", Some(&link), None);
    refused(
        &a,
        &["big"],
        "truncated download",
        Some(&big),
        Some("/debian/pool/main/big_1.0_amd64.deb"),
    );

    // Expired Valid-Until.
    a.publish(Some("Sat, 01 Jan 2000 00:00:00 UTC"), None);
    refused(&a, &[], "expired", None, None);

    // Signed by a key that is not in the keyring.
    let other = a.dir.path().join("other-gnupg");
    gpg_key(&other, "somebody-else");
    a.publish(None, Some(&other));
    refused(&a, &[], "signature", None, None);

    // The Packages index does not match the hash the signed Release gives.
    a.publish(None, None);
    a.tamper_packages();
    refused(&a, &[], "does not match InRelease", None, None);
}

#[test]
fn lock_update_moves_one_package_and_inspect_names_both_versions() {
    let mut a = Archive::new();
    a.add_kernel_and_stub();
    a.add_package(
        "libfoo1",
        "1.0",
        "",
        &[("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo 1.0")],
    );
    a.publish(None, None);
    let server = Server::start(&a.www());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let app = app_with(dir.path(), &server.url, &a.keyring(), &["libfoo1"]);
    digest_of(&build_with_cache(&app, &cache, &[]));
    let old = dir.path().join("old.img");
    std::fs::copy(app.join("fuse-out/hello-1.0.0.img"), &old).unwrap();

    // The archive moves on; the lock keeps the build where it was until asked to move.
    a.add_package(
        "libfoo1",
        "1.1",
        "",
        &[("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo 1.1, longer")],
    );
    a.publish(None, None);
    let same = digest_of(&build_with_cache(&app, &cache, &[]));
    assert_eq!(
        same,
        sha256_file(&old),
        "the lock did not hold the package at 1.0"
    );
    let cache_env = [("FUSE_CACHE_DIR", cache.to_str().unwrap())];
    let out = fuse(&["lock", app.to_str().unwrap(), "--update"], &cache_env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(app.join("fuse.lock"))
        .unwrap()
        .contains("version = \"1.1\""));
    digest_of(&build_with_cache(&app, &cache, &[]));
    let new = app.join("fuse-out/hello-1.0.0.img");

    let out = fuse(
        &["inspect", old.to_str().unwrap(), new.to_str().unwrap()],
        &cache_env,
    );
    let human = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{human}{}", text(&out.stderr));
    let line = human
        .lines()
        .find(|l| l.contains("libfoo1"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(line.contains("1.0") && line.contains("1.1"), "{line}");
    let out = fuse(
        &[
            "inspect",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
            "--json",
        ],
        &cache_env,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "base")
        .unwrap();
    let changed = &base["packages"]["changed"][0];
    assert_eq!(changed["name"], "libfoo1");
    assert_eq!(changed["from"], "1.0");
    assert_eq!(changed["to"], "1.1");
}
