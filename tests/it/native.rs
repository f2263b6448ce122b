//! Native code inside apps, built here from fixtures/ (no network): a Python app whose
//! vendored dependency has a compiled extension (libstdc++, libgomp, a bundled library
//! found through $ORIGIN), the same app from a virtualenv made by the host's Python, a
//! Node app with an N-API addon linking zlib, and a Spring Boot-style fat jar whose nested
//! jar carries JNI code linking zlib. Each image boots once and answers HTTP.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn data(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// The fastmath package as `pip install --target <site>` lays out a manylinux wheel:
/// `fastmath/` with the extension, `fastmath.libs/` with the library it bundles.
fn install_fastmath(site: &Path) {
    let pkg = site.join("fastmath");
    let libs = site.join("fastmath.libs");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::create_dir_all(&libs).unwrap();
    run_ok(
        Command::new("gcc")
            .args([
                "-shared",
                "-fPIC",
                "-O2",
                "-Wl,-soname,libfmhelper.so",
                "-o",
            ])
            .arg(libs.join("libfmhelper.so"))
            .arg(data("native/helper.c")),
    );
    run_ok(
        Command::new("g++")
            .args([
                "-shared",
                "-fPIC",
                "-O2",
                "-fopenmp",
                "-I/usr/include/python3.11",
                "-o",
            ])
            .arg(pkg.join("_core.cpython-311-x86_64-linux-gnu.so"))
            .arg(data("native/fastmath.cpp"))
            .arg(format!("-L{}", libs.display()))
            .args(["-lfmhelper", "-Wl,-rpath,$ORIGIN/../fastmath.libs"]),
    );
    std::fs::write(
        pkg.join("__init__.py"),
        "from ._core import parallel_sum, describe\n",
    )
    .unwrap();
}

fn python_manifest(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join("app/data")).unwrap();
    std::fs::copy(data("native/server.py"), dir.join("app/server.py")).unwrap();
    std::fs::write(dir.join("app/data/seed.txt"), "shipped with the image\n").unwrap();
    std::fs::write(
        dir.join("fuse.toml"),
        format!(
            "[image]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[app]\nkind = \"python\"\npath = \"app\"\n\
             args = [\"server.py\"]\nport = 8080\nwritable = [\"/app/data\"]\n\n[runtime]\npython = \"3.11\"\n"
        ),
    )
    .unwrap();
}

fn build(dir: &Path, name: &str) -> serde_json::Value {
    let out = fuse(&["build", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&std::fs::read(dir.join(format!("fuse-out/{name}-1.0.0.json"))).unwrap())
        .unwrap()
}

fn packages(meta: &serde_json::Value) -> Vec<String> {
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["packages"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Boots the image once and GETs `/` until it answers; prints the time to the answer.
fn boot(dir: &Path, name: &str, timeout: u64) -> String {
    let start = Instant::now();
    let mut vm = Vm::boot(&dir.join(format!("fuse-out/{name}-1.0.0.img")), 8080, &[]);
    let body = vm.get_until_ok("/", Duration::from_secs(timeout));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    eprintln!(
        "BOOT {name}: answered HTTP {:.1} s after QEMU started",
        start.elapsed().as_secs_f64()
    );
    body
}

/// Python.h of the distribution's Python 3.11 (the image's), to compile the extension.
fn have_python_headers() -> bool {
    require_tool("g++")
        && require(
            Path::new("/usr/include/python3.11/Python.h").is_file(),
            "python3-dev (/usr/include/python3.11/Python.h)",
        )
}

fn check_python_answer(body: &str) {
    assert!(body.contains("sum=5000050000"), "{body}");
    assert!(body.contains("helper=bundled-fmhelper"), "{body}");
    assert!(body.contains("omp_threads="), "{body}");
    assert!(body.contains("python=3.11."), "{body}");
    assert!(body.contains("uid=1000"), "{body}");
    assert!(body.contains("seed=shipped with the image"), "{body}");
    assert!(body.contains("wrote data/visits.log"), "{body}");
}

#[test]
fn python_app_with_a_compiled_extension_vendored_with_pip_target() {
    if !have_python_headers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    python_manifest(dir.path(), "pynative");
    install_fastmath(&dir.path().join("app/vendor"));
    let meta = build(dir.path(), "pynative");
    let pkgs = packages(&meta);
    for p in ["libstdc++6", "libgomp1", "libgcc-s1"] {
        assert!(
            pkgs.contains(&p.to_string()),
            "{p} not in the image: {pkgs:?}"
        );
    }
    let lock = std::fs::read_to_string(dir.path().join("fuse.lock")).unwrap();
    for want in [
        "\"libgomp.so.1\"",
        "\"libstdc++.so.6\"",
        "name = \"libgomp1\"",
        "name = \"libstdc++6\"",
        "libgomp.so.1 GOMP_",
    ] {
        assert!(lock.contains(want), "fuse.lock lacks {want}:\n{lock}");
    }
    assert!(
        !lock.contains("libfmhelper"),
        "the bundled library was looked for in the archive:\n{lock}"
    );
    let out = fuse(
        &[
            "inspect",
            dir.path()
                .join("fuse-out/pynative-1.0.0.img")
                .to_str()
                .unwrap(),
        ],
        &[],
    );
    let shown = text(&out.stdout);
    assert!(
        shown.contains("libgomp1") && shown.contains("libstdc++6"),
        "{shown}"
    );
    let body = boot(dir.path(), "pynative", 300);
    check_python_answer(&body);
    assert!(body.contains("prefix=/usr"), "{body}");
}

#[test]
fn python_app_from_a_virtualenv_runs_on_the_images_python() {
    if !have_python_headers() || !require_tool("python3.11") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    python_manifest(dir.path(), "pyvenv");
    let venv = dir.path().join("app/.venv");
    // A venv made by a Python 3.11 of this machine (python3-venv), then pointed at a
    // Python the image does not have, as a venv made on another build machine is.
    run_ok(
        Command::new("python3.11")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv),
    );
    let elsewhere = "/opt/build-machine/python/bin";
    for name in ["python", "python3", "python3.11"] {
        let link = venv.join("bin").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("{elsewhere}/python3.11"), &link).unwrap();
    }
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == "home" => format!("home = {elsewhere}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(venv.join("pyvenv.cfg"), cfg).unwrap();
    let site = venv.join("lib/python3.11/site-packages");
    std::fs::create_dir_all(&site).unwrap();
    install_fastmath(&site);
    let meta = build(dir.path(), "pyvenv");
    assert_eq!(meta["app"]["argv"][0], "/app/.venv/bin/python3.11");
    assert!(packages(&meta).contains(&"libgomp1".to_string()));
    let body = boot(dir.path(), "pyvenv", 300);
    check_python_answer(&body);
    assert!(body.contains("prefix=/app/.venv"), "{body}");

    // A venv for another minor version is refused, naming both.
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let other: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("version") {
                "version = 3.12.1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(venv.join("pyvenv.cfg"), other).unwrap();
    let out = fuse(&["build", dir.path().to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("virtualenv for Python 3.12") && e.contains("runs Python 3.11"),
        "{e}"
    );
}

/// node-gyp: Debian's (node-gyp + libnode-dev), else the one npm bundles when nodejs
/// comes from NodeSource (which conflicts with libnode-dev and ships the headers itself).
fn node_gyp() -> Option<Command> {
    let headers = Path::new("/usr/include/node/common.gypi").is_file();
    if have_tool("node-gyp") && headers {
        return Some(Command::new("node-gyp"));
    }
    let bundled = Path::new("/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js");
    if bundled.is_file() && headers && have_tool("node") {
        let mut c = Command::new("node");
        c.arg(bundled);
        return Some(c);
    }
    require_tool("node-gyp");
    require(headers, "libnode-dev (/usr/include/node/common.gypi)");
    None
}

#[test]
fn node_app_with_a_native_addon_linking_zlib() {
    let Some(mut gyp) = node_gyp() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let addon = app.join("node_modules/zaddon");
    std::fs::create_dir_all(&addon).unwrap();
    for f in ["zaddon.c", "binding.gyp"] {
        std::fs::copy(data(&format!("native/{f}")), addon.join(f)).unwrap();
    }
    // Offline: the headers and common.gypi of libnode-dev (or of the installed nodejs)
    // under /usr/include/node, not a download.
    run_ok(
        gyp.arg("rebuild")
            .arg("--nodedir=/usr")
            .current_dir(&addon)
            .env("npm_config_offline", "true"),
    );
    std::fs::write(
        addon.join("package.json"),
        r#"{"name": "zaddon", "main": "build/Release/zaddon.node"}"#,
    )
    .unwrap();
    std::fs::copy(data("native/server.js"), app.join("server.js")).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name": "z", "main": "server.js"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fuse.toml"),
        "[image]\nname = \"nodenative\"\nversion = \"1.0.0\"\n\n[app]\nkind = \"node\"\npath = \"app\"\nport = 8080\n",
    )
    .unwrap();
    let meta = build(dir.path(), "nodenative");
    assert!(packages(&meta).contains(&"zlib1g".to_string()));
    let lock = std::fs::read_to_string(dir.path().join("fuse.lock")).unwrap();
    assert!(lock.contains("\"libz.so.1\""), "{lock}");
    let body = boot(dir.path(), "nodenative", 300);
    // crc32("hello") = 0x3610a686
    assert!(body.contains("crc32=907060870"), "{body}");
    assert!(body.contains("zlib=1."), "{body}");
}

/// One Java boot for both: the fat jar's manifest also has `Class-Path: lib/extra.jar`, a
/// jar beside it whose class uses java.sql (a module nothing else in the app needs).
/// app.path is the fat jar; fuse brings lib/extra.jar along and the trimmed JRE keeps
/// java.sql because the analysis read it.
#[test]
fn spring_boot_style_fat_jar_with_jni_in_a_nested_jar_and_a_class_path_sibling() {
    if !require_tool("javac") || !require_tool("jar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new(data("fatjar/build.sh")).arg(dir.path().join("dist")));
    std::fs::write(
        dir.path().join("fuse.toml"),
        "[image]\nname = \"fatjar\"\nversion = \"1.0.0\"\n\n[app]\nkind = \"jar\"\npath = \"dist/fat.jar\"\nport = 8080\n",
    )
    .unwrap();
    let meta = build(dir.path(), "fatjar");
    assert!(packages(&meta).contains(&"zlib1g".to_string()));
    let lock = std::fs::read_to_string(dir.path().join("fuse.lock")).unwrap();
    assert!(lock.contains("\"libz.so.1\""), "{lock}");
    let modules: Vec<&str> = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["java_modules"].as_array())
        .flatten()
        .filter_map(|m| m.as_str())
        .collect();
    assert!(
        modules.contains(&"java.sql") && modules.contains(&"jdk.httpserver"),
        "{modules:?}"
    );
    let body = boot(dir.path(), "fatjar", 400);
    assert!(
        body.contains("hello fuse from a nested jar (zlib 1."),
        "{body}"
    );
    assert!(body.contains("release=2026-11-29"), "{body}");
    assert!(body.contains("java=17."), "{body}");
}
