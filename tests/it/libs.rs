//! A dynamically linked C app (zlib + OpenSSL) built by the test: fuse finds its libraries
//! from its ELF headers alone, and the image boots and answers with zlib-computed values.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_dynamic_c_app_gets_exactly_its_libraries_and_boots() {
    if !std::path::Path::new("/usr/include/zlib.h").exists()
        || !std::path::Path::new("/usr/include/openssl/ssl.h").exists()
    {
        panic!("zlib1g-dev and libssl-dev are needed (scripts/setup.sh installs them)");
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("zhello");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(
        repo_root().join("examples/zhello/fuse.toml"),
        app.join("fuse.toml"),
    )
    .unwrap();
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(app.join("zhello"))
        .arg(repo_root().join("examples/zhello/zhello.c"))
        .args(["-lz", "-lssl", "-lcrypto"])
        .status()
        .unwrap();
    assert!(st.success());
    let manifest = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    assert!(
        !manifest.contains("packages ="),
        "the manifest must not list packages"
    );

    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("fuse-out/zhello-1.0.0.json")).unwrap())
            .unwrap();
    let base = &meta["layers"][0];
    let mut pkgs: Vec<&str> = base["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    pkgs.sort();
    // libssl3 and zlib1g for the app's DT_NEEDED, libc6 for libc and the interpreter, and
    // their Depends closure in bookworm: nothing else (no Recommends, no Essential set).
    assert_eq!(
        pkgs,
        ["gcc-12-base", "libc6", "libgcc-s1", "libssl3", "zlib1g"]
    );
    eprintln!("libraries layer: {} bytes", base["size"]);
    let files: Vec<&str> = base["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        !files.iter().any(|f| f.starts_with("/usr/share/man/")),
        "dead weight in the layer"
    );
    // The dpkg status in the layer lists exactly the image's packages (plus the kernel).
    let img = std::fs::read(app.join("fuse-out/zhello-1.0.0.img")).unwrap();
    let disk = fuse::format::gpt::read_disk(&img).unwrap();
    let part = disk
        .partitions
        .iter()
        .find(|p| p.name == "fuse-base")
        .unwrap();
    let layer = fuse::format::squashfs::read(&img[part.byte_range()]).unwrap();
    let status = String::from_utf8(
        layer
            .get("var/lib/dpkg/status")
            .unwrap()
            .data()
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let mut listed: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("Package: "))
        .collect();
    listed.retain(|p| !p.starts_with("linux-image-"));
    listed.sort();
    assert_eq!(listed, pkgs);
    assert!(layer.get("usr/lib/x86_64-linux-gnu/libssl.so.3").is_some());

    let mut vm = Vm::boot(&app.join("fuse-out/zhello-1.0.0.img"), 8080, &[]);
    let body = vm.get_until_ok("/", Duration::from_secs(240));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    let mut crc = flate2::Crc::new();
    crc.update(b"hello, fuse");
    assert!(body.contains(&format!("crc32={:08x}", crc.sum())), "{body}");
    let sha = fuse::digest::sha256_hex(b"hello, fuse");
    assert!(body.contains(&format!("sha256={sha}")), "{body}");
    assert!(body.starts_with("uid=1000 "), "{body}");
}
