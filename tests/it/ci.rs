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
    let meta: fuse::disk::ImageMeta =
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

/// The pipeline of docs/ci.md against Debian's docker-registry on loopback: lock, build
/// `--locked --json`, `fuse test --json` (exit 0), push, pull by manifest digest, promote to
/// the first environment with a registry tag.
#[test]
fn the_documented_pipeline_builds_tests_pushes_by_digest_and_promotes() {
    use crate::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    let app = example_app(dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("fuse-envs.toml"),
        "order = [\"test\", \"prod\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| Fuse::new(args).dir(&project).data(&data).output();
    // The lock is committed with the app: --locked without it is an error (2).
    let out = run(&["build", app.to_str().unwrap(), "--locked", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    ok(&run(&["lock", app.to_str().unwrap()]), "fuse lock");
    // build --locked --json
    let b = build_with(
        Fuse::new(["build", app.to_str().unwrap(), "--locked"])
            .dir(&project)
            .data(&data),
    );
    let image = b.image.to_str().unwrap().to_string();
    let digest = b.digest.clone();
    assert_eq!(b.json["lock"]["changed"], false);
    // fuse test --json
    let t = Instant::now();
    let out = run(&[
        "test",
        &image,
        "--json",
        "--timeout",
        "300",
        "--boot-budget",
        "600s",
    ]);
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
    assert_eq!(v["digest"], digest.as_str());
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
    // push by digest, pull by digest, promote to the first environment.
    let reg = Registry::start();
    let repo = format!("127.0.0.1:{}/team/hello", reg.port);
    let pushed = ok(
        &run(&["push", &image, &format!("{repo}:commit-1"), "--insecure"]),
        "push",
    );
    let mut lines = pushed.lines();
    let by_digest = lines.next().unwrap().to_string();
    assert_eq!(lines.next(), Some(digest.as_str()));
    let manifest_digest = by_digest.rsplit_once('@').unwrap().1.to_string();
    assert!(manifest_digest.starts_with("sha256:"), "{by_digest}");
    let pulled = dir.path().join("pulled");
    let out = fuse_with(
        &data,
        &[
            "pull",
            &format!("{repo}@{manifest_digest}"),
            "--insecure",
            "--out",
            pulled.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out, "pull by digest");
    assert_eq!(
        std::fs::read(pulled.join("hello-1.0.0.img")).unwrap(),
        std::fs::read(&image).unwrap(),
        "the pulled image is the tested one"
    );
    ok(
        &run(&[
            "promote",
            &image,
            "test",
            "--registry",
            &repo,
            "--insecure",
            "--who",
            "ci",
        ]),
        "promote to test",
    );
    let envs: serde_json::Value =
        serde_json::from_str(&ok(&run(&["envs", "--json"]), "envs")).unwrap();
    assert!(envs.to_string().contains(&digest), "{envs}");
    let tagged = dir.path().join("tagged");
    ok(
        &fuse_with(
            &data,
            &[
                "pull",
                &format!("{repo}:test"),
                "--insecure",
                "--out",
                tagged.to_str().unwrap(),
            ],
            &[],
        ),
        "pull the test tag",
    );
    assert_eq!(
        sha256_file(&tagged.join("hello-1.0.0.img")),
        digest,
        "the registry's test tag points at the tested digest"
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

/// `fuse build --json` (and `--verify`) of a fresh copy of the example: (exit code, stdout
/// JSON, stderr, app dir).
fn build_json(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, serde_json::Value, String, PathBuf) {
    let app = example_app(dir);
    let mut args = vec!["build", app.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = fuse(&args, env);
    let stderr = text(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{stderr}",
            text(&out.stdout)
        )
    });
    (out.status.code(), v, stderr, app)
}

#[test]
fn build_json_describes_the_image_and_verify_proves_it_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (code, v, stderr, app) = build_json(dir.path(), &["--verify"], &[]);
    let took = t.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["name"], "hello");
    // Checked against the image's bytes and its image.json.
    let img = PathBuf::from(v["image"].as_str().unwrap());
    assert_eq!(img, app.join("fuse-out/hello-1.0.0.img"));
    assert_eq!(v["digest"], sha256_file(&img).as_str());
    assert_eq!(v["size"], std::fs::metadata(&img).unwrap().len());
    let meta: fuse::disk::ImageMeta =
        serde_json::from_slice(&std::fs::read(v["image_json"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(meta.digest.as_deref(), v["digest"].as_str());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), meta.layers.len());
    for (j, l) in layers.iter().zip(&meta.layers) {
        assert_eq!(j["name"], l.name.as_str());
        assert_eq!(j["partition"], l.partition.as_str());
        assert_eq!(j["size"], l.size);
        assert_eq!(j["digest"], l.digest.as_str());
        assert!(
            ["built", "local-cache", "registry-cache"].contains(&j["source"].as_str().unwrap()),
            "{j}"
        );
    }
    // The partitions really hold those bytes.
    let disk = std::fs::read(&img).unwrap();
    let gpt = fuse::format::gpt::read_disk(&disk).unwrap();
    for l in &meta.layers {
        let p = gpt
            .partitions
            .iter()
            .find(|p| p.name == l.partition)
            .unwrap();
        let bytes = &disk[p.byte_range()][..l.size as usize];
        assert_eq!(
            fuse::digest::sha256_hex(bytes),
            l.digest.trim_start_matches("sha256:")
        );
    }
    let lock = std::fs::read(app.join("fuse.lock")).unwrap();
    assert_eq!(
        v["lock"]["digest"],
        format!("sha256:{}", fuse::digest::sha256_hex(&lock)).as_str()
    );
    assert_eq!(
        meta.inputs
            .lock_sha256
            .as_deref()
            .map(|s| s.trim_start_matches("sha256:")),
        Some(fuse::digest::sha256_hex(&lock).as_str())
    );
    assert!(v["lock"]["changed"].is_boolean());
    let ms = v["duration_ms"].as_u64().unwrap();
    assert!(ms > 0 && ms < took.as_millis() as u64, "{ms}");
    assert_eq!(v["budget"]["exceeded"], false);
    // --verify: a second build without unit caches, byte-identical.
    assert_eq!(v["verify"]["reproducible"], true, "{}", v["verify"]);
    assert_eq!(v["verify"]["second_digest"], v["digest"]);
    assert_eq!(v["verify"]["copied_sources"], true);
    eprintln!(
        "build --verify: build {} ms, second build + compare {} ms",
        ms, v["verify"]["duration_ms"]
    );
    // A second run of the same build: every layer from the local cache, the lock unchanged.
    let out = fuse(&["build", app.to_str().unwrap(), "--json", "--locked"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["digest"], v["digest"]);
    assert_eq!(again["lock"]["changed"], false);
    for l in again["layers"].as_array().unwrap() {
        assert_eq!(l["source"], "local-cache", "{l}");
    }
}

#[test]
fn verify_names_the_layer_and_file_that_differ_and_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v, stderr, _) = build_json(
        dir.path(),
        &["--verify"],
        &[("FUSE_TEST_VERIFY_PERTURB", "hello")],
    );
    assert_eq!(code, Some(4), "{stderr}");
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["verify"]["reproducible"], false);
    let d = &v["verify"]["difference"];
    assert_eq!(d["partition"], "fuse-app", "{d}");
    assert_eq!(d["layer"], "app", "{d}");
    assert_eq!(d["files"][0]["path"], "/app/hello", "{d}");
    assert!(
        d["files"][0]["what"].as_str().unwrap().contains("sha256"),
        "{d}"
    );
    assert!(
        stderr.contains("NOT reproducible")
            && stderr.contains("layer app")
            && stderr.contains("/app/hello"),
        "{stderr}"
    );
}

#[test]
fn compare_names_the_first_differing_layer_and_files_of_two_images() {
    let a = std::fs::read(&shared_image().image).unwrap();
    let b = std::fs::read(&crate::registry::changed_image().image).unwrap();
    let d = fuse::build::repro::compare(&a, &b)
        .unwrap()
        .expect("the images differ");
    assert_eq!(d.layer.as_deref(), Some("app"), "{d:?}");
    assert_eq!(d.files.len(), 1, "{d:?}");
    assert_eq!(d.files[0].path, "/app/hello");
    assert!(d.partitions.contains(&"fuse-esp".to_string()), "{d:?}");
    assert_eq!(fuse::build::repro::compare(&a, &a).unwrap(), None);
}
