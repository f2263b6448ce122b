//! The CI step: `fuse test` (exit 0 healthy, 1 never healthy, 3 over the boot budget),
//! `[budget]` (exit 3 from `fuse build`, the image still written), exit 2 on errors.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A static app that prints a line and exits with 3 at once.
fn crash_binary(dir: &Path) -> PathBuf {
    let src = dir.join("crash.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"crash: giving up at start\"); return 3; }\n",
    )
    .unwrap();
    let out = dir.join("crash");
    let st = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed");
    assert!(st.success(), "gcc -static failed");
    out
}

/// The image of an app that exits at start, built with a `[budget]` it exceeds: the build's
/// output (exit code 3 expected) and the app directory.
struct OverBudget {
    app: PathBuf,
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

fn over_budget_image() -> &'static OverBudget {
    static B: OnceLock<OverBudget> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tmp_root().join("ci-over-budget");
        let _ = std::fs::remove_dir_all(&dir);
        let app = dir.join("app");
        std::fs::create_dir_all(&app).unwrap();
        crash_binary(&app);
        std::fs::write(
            app.join("fuse.toml"),
            "[image]\nname = \"crash\"\nversion = \"1.0.0\"\n\n\
             [app]\nkind = \"binary\"\npath = \"crash\"\nport = 8080\n\n\
             [health]\nhttp = \"/\"\n\n\
             [budget]\nimage = \"1 MB\"\nlayers.app = \"1 MiB\"\nlayers.base = \"1 B\"\nboot = \"600s\"\n",
        )
        .unwrap();
        let out = fuse(&["build", app.to_str().unwrap()], &[]);
        OverBudget {
            app,
            status: out.status.code(),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
        }
    })
}

#[test]
fn a_build_over_its_size_budget_writes_the_image_and_exits_3_naming_each_budget() {
    let b = over_budget_image();
    assert_eq!(b.status, Some(3), "stderr:\n{}", b.stderr);
    let img = b.app.join("fuse-out/crash-1.0.0.img");
    assert!(
        img.is_file(),
        "the image must be written even when over budget"
    );
    let size = std::fs::metadata(&img).unwrap().len();
    assert_eq!(
        b.stdout.lines().last().unwrap(),
        sha256_file(&img),
        "the digest is still the last stdout line"
    );
    let over: Vec<&str> = b
        .stderr
        .lines()
        .filter(|l| l.contains("over budget: budget "))
        .collect();
    assert_eq!(
        over.len(),
        2,
        "image and layers.base are over:\n{}",
        b.stderr
    );
    assert!(
        over.iter().any(|l| l.contains("budget image:")
            && l.contains(&format!("({size} bytes)"))
            && l.contains("1 MB (1000000 bytes)")),
        "{over:?}"
    );
    let meta: fuse::image::ImageMeta =
        serde_json::from_slice(&std::fs::read(b.app.join("fuse-out/crash-1.0.0.json")).unwrap())
            .unwrap();
    let base = meta.layers.iter().find(|l| l.name == "base").unwrap();
    assert!(
        over.iter().any(|l| l.contains("budget layers.base:")
            && l.contains(&format!("({} bytes)", base.size))
            && l.contains("1 B (1 bytes)")),
        "{over:?}"
    );
    assert!(
        !b.stderr.contains("over budget: budget layers.app"),
        "the app layer is within 1 MiB:\n{}",
        b.stderr
    );
}

#[test]
fn a_bad_budget_unit_is_an_error_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = example_app(dir.path());
    let mut m = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    let line = m.lines().count() + 3; // a blank line, [budget], then the key
    m.push_str("\n[budget]\nimage = \"40 megabytes\"\n");
    std::fs::write(app.join("fuse.toml"), m).unwrap();
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("fuse.toml:{line}:")) && err.contains("budget.image"),
        "{err}"
    );
    assert!(!app.join("fuse-out").exists(), "nothing is built");
}

#[test]
fn fuse_test_passes_on_the_example_and_reports_json() {
    let b = shared_image();
    let t = Instant::now();
    let out = fuse(
        &[
            "test",
            b.image.to_str().unwrap(),
            "--json",
            "--timeout",
            "300",
            "--boot-budget",
            "600s",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            text(&out.stdout)
        )
    });
    assert_eq!(v["schema"], 1);
    assert_eq!(v["result"], "pass");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["digest"], b.digest.as_str());
    assert_eq!(v["name"], "hello");
    let ms = v["time_to_healthy_ms"].as_u64().unwrap();
    assert!(
        ms > 0 && ms < t.elapsed().as_millis() as u64,
        "time to healthy {ms} ms"
    );
    assert_eq!(v["budget"]["budget"], "boot");
    assert_eq!(v["budget"]["limit_value"], 600_000);
    assert_eq!(v["budget"]["actual"], ms);
    assert_eq!(v["budget"]["exceeded"], false);
    assert!(
        ["powerdown", "quit", "killed"].contains(&v["stop"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["failure"].is_null());
    eprintln!(
        "fuse test: healthy after {ms} ms with {}, stopped by {}",
        v["accel"], v["stop"]
    );
}

#[test]
fn fuse_test_over_the_boot_budget_exits_3() {
    let b = shared_image();
    let out = fuse(
        &[
            "test",
            b.image.to_str().unwrap(),
            "--timeout",
            "300",
            "--boot-budget",
            "1ms",
        ],
        &[],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("healthy after "), "{stdout}");
    assert!(
        stderr.contains("budget boot:") && stderr.contains("is over the limit of 1ms (1 ms)"),
        "{stderr}"
    );
}

#[test]
fn fuse_test_fails_with_1_within_its_timeout_when_the_app_exits_at_start() {
    let b = over_budget_image();
    let img = b.app.join("fuse-out/crash-1.0.0.img");
    assert!(img.is_file(), "build failed:\n{}", b.stderr);
    let timeout = 240;
    let t = Instant::now();
    let out = fuse(
        &[
            "test",
            img.to_str().unwrap(),
            "--json",
            "--timeout",
            &timeout.to_string(),
        ],
        &[],
    );
    let took = t.elapsed();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        took < Duration::from_secs(timeout),
        "took {took:?}: the test must fail as soon as the VM stops"
    );
    // The console's last lines on stderr: the app's own words and the init's report.
    assert!(stderr.contains("crash: giving up at start"), "{stderr}");
    assert!(
        stderr.contains("fuse-init: app exited with code 3"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["result"], "fail");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["healthy"], false);
    assert_eq!(v["app_exit_code"], 3);
    assert_eq!(v["stop"], "exited");
    assert!(
        v["failure"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{v}"
    );
    // The boot budget came from the manifest the image was built from (found beside it).
    assert!(
        v["budget_source"]
            .as_str()
            .is_some_and(|s| s.ends_with("fuse.toml")),
        "{v}"
    );
    eprintln!("fuse test failed as expected after {took:?}");
}

#[test]
fn fuse_test_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let out = fuse(&["test", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = fuse(
        &[
            "test",
            shared_image().image.to_str().unwrap(),
            "--boot-budget",
            "20 sec",
        ],
        &[],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--boot-budget") && err.contains("sec"),
        "{err}"
    );
}
