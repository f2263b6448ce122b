//! Hostile input: each a clear error, exit status 2, and no image written.

use crate::fixture::Server;
use crate::support::*;
use std::path::Path;

fn assert_refused(out: &std::process::Output, app: &Path, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, stderr:\n{err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(
        !app.join("fuse-out").exists(),
        "an output was written despite the error"
    );
}

#[test]
fn malformed_manifests_are_refused_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = example_app(dir.path());
    let good = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    for (bad, needle) in [
        (
            good.replace("port = 8080", "port = 8080\nlisten = 1"),
            "unknown field `listen`",
        ),
        (
            good.replace("name = \"hello\"", "name = \"Hello World\""),
            "fuse.toml:2: `image.name`",
        ),
        (
            good.replace("kind = \"binary\"", "kind = \"exe\""),
            "`app.kind`",
        ),
        (
            good.replace("[app]", "[app\n"),
            "fuse.toml:5: invalid table header",
        ),
    ] {
        std::fs::write(app.join("fuse.toml"), bad).unwrap();
        let out = fuse(&["build", app.to_str().unwrap()], &[]);
        assert_refused(&out, &app, needle);
    }
}

#[test]
fn a_tampered_cached_package_is_refused() {
    let b = shared_image();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&b.json).unwrap()).unwrap();
    let stub_sha = meta["boot"]["stub"]["sha256"].as_str().unwrap().to_string();
    // A private copy of the cache, with the EFI stub's .deb changed by one byte.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(cache_dir())
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success());
    // Without the built units, so the build needs the package (a cached UKI would not).
    for e in std::fs::read_dir(cache.join("named")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("unit-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let blob = cache.join("sha256").join(&stub_sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let app = example_app(dir.path());
    let out = fuse(
        &["build", app.to_str().unwrap()],
        &[("FUSE_CACHE_DIR", cache.to_str().unwrap())],
    );
    assert_refused(&out, &app, &format!("expected sha256 {stub_sha}"));
}

/// The real InRelease as last fetched from the host's mirror (cached by the shared build).
fn real_inrelease() -> Vec<u8> {
    shared_image();
    let named = cache_dir().join("named");
    let entry = std::fs::read_dir(&named)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("inrelease-"))
        .expect("the shared build cached an InRelease");
    std::fs::read(entry.path()).unwrap()
}

fn build_against(
    inrelease: Vec<u8>,
    extra: &[&str],
) -> (tempfile::TempDir, std::path::PathBuf, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let dists = dir.path().join("www/debian/dists/bookworm");
    std::fs::create_dir_all(&dists).unwrap();
    std::fs::write(dists.join("InRelease"), inrelease).unwrap();
    let server = Server::start(&dir.path().join("www"));
    let mirror = format!("{}/debian", server.url);
    let app = example_app(dir.path());
    let mut args = vec!["build", app.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = fuse(&args, &[("FUSE_MIRROR", &mirror)]);
    (dir, app, out)
}

#[test]
fn an_index_whose_signature_does_not_verify_is_refused() {
    let text_in = String::from_utf8(real_inrelease()).unwrap();
    // Change the signed text but keep the signature.
    let tampered = text_in.replacen("Components: main", "Components: main evil", 1);
    assert_ne!(tampered, text_in);
    let (_d, app, out) = build_against(tampered.into_bytes(), &[]);
    assert_refused(&out, &app, "signature");
}

#[test]
fn an_unsigned_index_is_refused() {
    let text_in = String::from_utf8(real_inrelease()).unwrap();
    // The plain Release body, without the OpenPGP armor.
    let body = text_in
        .split("\n\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n\n");
    let body = body
        .split("-----BEGIN PGP SIGNATURE-----")
        .next()
        .unwrap()
        .to_string();
    let (_d, app, out) = build_against(body.into_bytes(), &[]);
    assert_refused(&out, &app, "InRelease");
}
