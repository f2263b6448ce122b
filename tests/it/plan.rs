//! The plan and the unit cache: a no-op build reads no package (they are gone from the
//! download cache, the mirror is unreachable, the digest is the same); an app change
//! rebuilds the app layer only; a swapped cache blob or record is detected and rebuilt.

use crate::support::*;
use std::path::{Path, PathBuf};

fn plan_json(app: &Path, cache: &Path) -> serde_json::Value {
    let out = fuse(
        &["build", "--plan", app.to_str().unwrap()],
        &[("FUSE_CACHE_DIR", cache.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--plan prints JSON")
}

fn record_sha(cache: &Path, key: &str) -> String {
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join(format!("named/unit-{key}"))).unwrap())
            .unwrap();
    assert_eq!(rec["key"], key);
    rec["sha256"].as_str().unwrap().to_string()
}

/// Replace a file in the private cache without touching the shared inode it links to.
fn replace(path: &Path, bytes: &[u8]) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn no_op_build_reads_no_package_app_change_rebuilds_app_only_swaps_are_rebuilt() {
    let shared = shared_image();
    let dir = tempfile::tempdir().unwrap();
    let cache = private_cache(dir.path());
    let app = example_app(dir.path());
    let lock_file = shared.lock_file();
    std::fs::copy(&lock_file, app.join("fuse.lock")).unwrap();
    let lock = fuse::resolve::lock::Lock::load(&lock_file)
        .unwrap()
        .unwrap();

    // The plan is printed without building, with a key per unit.
    let plan = plan_json(&app, &cache);
    let layer_names: Vec<&str> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(layer_names, ["base", "app"]);
    for unit in ["kernel", "initramfs", "uki"] {
        assert_eq!(plan[unit]["key"].as_str().unwrap().len(), 64, "{unit}");
    }
    assert!(!app.join("fuse-out").exists(), "--plan built something");

    // No-op: every package gone from the download cache, the mirror unreachable.
    let (first, _) = build_in(&app, &cache, &[]);
    assert_eq!(first, shared.digest);
    for p in lock.packages.iter().chain([&lock.kernel, &lock.stub]) {
        let _ = std::fs::remove_file(cache.join("sha256").join(&p.sha256));
    }
    let offline = [("FUSE_MIRROR", "http://127.0.0.1:9/debian")];
    // The output holds what the image key gave: nothing is built, read or rewritten.
    let img = app.join("fuse-out/hello-1.0.0.img");
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    let (again, err) = build_in(&app, &cache, &offline);
    assert_eq!(again, shared.digest, "no-op build changed the image");
    assert!(err.contains("image: up to date"), "{err}");
    assert!(
        sources(&err).is_empty(),
        "no-op build built something:
{err}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), mtime);
    // An edited output is not up to date: written again, from the unit cache.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&img, &bytes).unwrap();
    let (again, err) = build_in(&app, &cache, &offline);
    assert_eq!(again, shared.digest, "no-op build changed the image");
    assert!(!err.contains("image: up to date"), "{err}");
    let srcs = sources(&err);
    assert_eq!(srcs.len(), 5, "{err}");
    assert!(
        srcs.iter().all(|(_, s)| s == "local-cache"),
        "no-op build built something: {srcs:?}"
    );

    // Only the app changed: the app layer is built, and the initramfs and UKI that hold its
    // dm-verity root hash (from the cached kernel and EFI stub: nothing is fetched); the
    // rest comes from the cache (the ESP, which holds image.json, is always written).
    let mut bin = std::fs::read(app.join("hello")).unwrap();
    bin.extend_from_slice(b"\0changed");
    std::fs::write(app.join("hello"), &bin).unwrap();
    let (changed, err) = build_in(&app, &cache, &offline);
    assert_ne!(changed, shared.digest);
    for (unit, source) in sources(&err) {
        let want = if ["layer app", "initramfs", "uki"].contains(&unit.as_str()) {
            "built"
        } else {
            "local-cache"
        };
        assert_eq!(source, want, "{unit}:\n{err}");
    }

    // A blob swapped for other bytes behind the base layer's record: detected, rebuilt.
    std::fs::copy(hello_binary(), app.join("hello")).unwrap();
    for p in lock.packages.iter().chain([&lock.kernel, &lock.stub]) {
        std::fs::hard_link(
            cache_dir().join("sha256").join(&p.sha256),
            cache.join("sha256").join(&p.sha256),
        )
        .unwrap();
    }
    let plan = plan_json(&app, &cache);
    let base_key = plan["layers"][0]["key"].as_str().unwrap();
    let app_key = plan["layers"][1]["key"].as_str().unwrap();
    let base_blob = cache.join("sha256").join(record_sha(&cache, base_key));
    let app_blob = std::fs::read(cache.join("sha256").join(record_sha(&cache, app_key))).unwrap();
    replace(&base_blob, &app_blob);
    std::fs::remove_file(&img).unwrap(); // else the image key's record is enough
    let (rebuilt, err) = build_in(&app, &cache, &[]);
    assert_eq!(rebuilt, shared.digest);
    assert!(err.contains("WARN") && err.contains("corrupt"), "{err}");
    assert!(
        sources(&err).contains(&("layer base".into(), "built".into())),
        "{err}"
    );

    // A record copied from another key: refused, rebuilt.
    let app_record = std::fs::read(cache.join(format!("named/unit-{app_key}"))).unwrap();
    replace(&cache.join(format!("named/unit-{base_key}")), &app_record);
    std::fs::remove_file(&img).unwrap();
    let (rebuilt, err) = build_in(&app, &cache, &[]);
    assert_eq!(rebuilt, shared.digest);
    assert!(err.contains("WARN"), "{err}");
    assert!(
        sources(&err).contains(&("layer base".into(), "built".into())),
        "{err}"
    );
}

/// `fuse build` with extra arguments; (digest, stderr).
fn build_args(app: &Path, cache: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let b = build(
        app,
        args,
        &[&[("FUSE_CACHE_DIR", cache.to_str().unwrap())], env].concat(),
    );
    (b.digest, b.stderr)
}

#[test]
fn a_registry_cache_builds_a_new_machine_without_packages_and_refuses_bad_blobs() {
    let shared = shared_image();
    let lock_file = shared.lock_file();
    let reg = crate::registry::Registry::start();
    let cache_ref = format!("127.0.0.1:{}/team/fuse-cache", reg.port);
    let with_registry = ["--cache-registry", cache_ref.as_str(), "--insecure"];
    let offline = [
        ("FUSE_MIRROR", "http://127.0.0.1:9/debian"),
        ("DOCKER_CONFIG", "/nonexistent"),
    ];

    // Machine A: a warm cache; every unit the registry lacks is pushed.
    let a = tempfile::tempdir().unwrap();
    let cache_a = private_cache(a.path());
    let app_a = example_app(a.path());
    std::fs::copy(&lock_file, app_a.join("fuse.lock")).unwrap();
    let (digest_a, err) = build_args(&app_a, &cache_a, &with_registry, &offline);
    assert_eq!(digest_a, shared.digest);
    assert!(err.contains("pushed 5 units"), "{err}");

    // Machine B: nothing cached, the mirror unreachable, --locked: the same image, every
    // unit from the registry, no package downloaded.
    let b = tempfile::tempdir().unwrap();
    let cache_b = b.path().join("cache");
    let app_b = example_app(b.path());
    std::fs::copy(&lock_file, app_b.join("fuse.lock")).unwrap();
    let mut args = with_registry.to_vec();
    args.push("--locked");
    let (digest_b, err) = build_args(&app_b, &cache_b, &args, &offline);
    assert_eq!(digest_b, shared.digest);
    let srcs = sources(&err);
    assert_eq!(srcs.len(), 5, "{err}");
    assert!(
        srcs.iter().all(|(_, s)| s == "registry-cache"),
        "{srcs:?}\n{err}"
    );
    let lock = fuse::resolve::lock::Lock::load(&lock_file)
        .unwrap()
        .unwrap();
    for p in lock.packages.iter().chain([&lock.kernel, &lock.stub]) {
        assert!(
            !cache_b.join("sha256").join(&p.sha256).exists(),
            "machine B downloaded {}",
            p.name
        );
    }
    assert!(err.contains("pushed 0 units"), "{err}");

    // A registry blob whose bytes changed: refused with a warning, the unit built locally,
    // the image the same.
    let plan = plan_json(&app_a, &cache_a);
    let app_key = plan["layers"][1]["key"].as_str().unwrap();
    let blob = reg.blob_file(&format!("sha256:{}", record_sha(&cache_a, app_key)));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let c = tempfile::tempdir().unwrap();
    let cache_c = c.path().join("cache");
    let app_c = example_app(c.path());
    std::fs::copy(&lock_file, app_c.join("fuse.lock")).unwrap();
    let (digest_c, err) = build_args(&app_c, &cache_c, &args, &offline);
    assert_eq!(digest_c, shared.digest);
    assert!(
        err.contains("WARN")
            && err.contains("refused")
            && err.contains("does not match its digest"),
        "{err}"
    );
    for (unit, source) in sources(&err) {
        let want = if unit == "layer app" {
            "built"
        } else {
            "registry-cache"
        };
        assert_eq!(source, want, "{unit}:\n{err}");
    }

    // Who can push to the cache repository forges units whose own records are consistent
    // (bytes = record sha256): a UKI whose boot plan is another app's, an app layer whose
    // file list leaves out the app. The image they make does not verify, so a machine with
    // packages but no units refuses them and builds the clean image locally.
    let forger = fuse::cache::registry::RegistryCache::open(&cache_ref, true, None).unwrap();
    let plan = plan_json(&app_a, &cache_a);
    let uki_key = plan["uki"]["key"].as_str().unwrap().to_string();
    let base_key = plan["layers"][0]["key"].as_str().unwrap().to_string();
    let unit_of = |cache: &Path, key: &str| -> (serde_json::Value, Vec<u8>) {
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cache.join(format!("named/unit-{key}"))).unwrap(),
        )
        .unwrap();
        let bytes =
            std::fs::read(cache.join("sha256").join(rec["sha256"].as_str().unwrap())).unwrap();
        (rec, bytes)
    };
    let push = |key: &str, rec: &serde_json::Value, bytes: &[u8]| {
        forger
            .put(key, &serde_json::to_vec(rec).unwrap(), bytes)
            .unwrap();
    };
    // The other app: the same binary started with other arguments (another boot plan).
    let other = tempfile::tempdir().unwrap();
    let app_x = example_app(other.path());
    std::fs::copy(&lock_file, app_x.join("fuse.lock")).unwrap();
    let toml = std::fs::read_to_string(app_x.join("fuse.toml")).unwrap();
    std::fs::write(
        app_x.join("fuse.toml"),
        toml.replace("args = []", "args = [\"--forged\"]"),
    )
    .unwrap();
    assert!(std::fs::read_to_string(app_x.join("fuse.toml"))
        .unwrap()
        .contains("--forged"));
    let (digest_x, _) = build_args(&app_x, &cache_a, &[], &offline);
    assert_ne!(digest_x, shared.digest);
    let x_uki_key = plan_json(&app_x, &cache_a)["uki"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (good_uki, good_uki_bytes) = unit_of(&cache_a, &uki_key);
    let (good_base, good_base_bytes) = unit_of(&cache_a, &base_key);
    let machine_with_packages = || {
        let d = tempfile::tempdir().unwrap();
        let cache = private_cache(d.path());
        for e in std::fs::read_dir(cache.join("named")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("unit-") || name.starts_with("image-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let app = example_app(d.path());
        std::fs::copy(&lock_file, app.join("fuse.lock")).unwrap();
        (d, app, cache)
    };
    let (mut forged_uki, x_uki_bytes) = unit_of(&cache_a, &x_uki_key);
    forged_uki["key"] = serde_json::json!(uki_key);
    push(&uki_key, &forged_uki, &x_uki_bytes);
    let (_d1, app_d1, cache_d1) = machine_with_packages();
    let (digest_d1, err) = build_args(&app_d1, &cache_d1, &with_registry, &offline);
    assert_eq!(digest_d1, shared.digest, "the forged UKI was used:\n{err}");
    assert!(
        err.contains("WARN") && err.contains("does not verify") && err.contains("boot plan"),
        "{err}"
    );
    // Nothing of the forgery stays trusted in the local cache: a build without the
    // registry takes every unit from it and gives the same image.
    std::fs::remove_file(app_d1.join("fuse-out/hello-1.0.0.img")).unwrap();
    let (again, err) = build_args(&app_d1, &cache_d1, &[], &offline);
    assert_eq!(again, shared.digest, "{err}");
    push(&uki_key, &good_uki, &good_uki_bytes);

    // (The app layer's blob was corrupted in the registry above: the base layer it is.)
    let mut forged_base = good_base.clone();
    let files = forged_base["meta"]["files"].as_array_mut().unwrap();
    let gone = files
        .iter()
        .rposition(|f| f["type"] == "file")
        .expect("the base layer holds files");
    let gone = files.remove(gone)["path"].as_str().unwrap().to_string();
    push(&base_key, &forged_base, &good_base_bytes);
    let (_d2, app_d2, cache_d2) = machine_with_packages();
    let (digest_d2, err) = build_args(&app_d2, &cache_d2, &with_registry, &offline);
    assert_eq!(digest_d2, shared.digest, "{err}");
    assert!(
        err.contains("does not verify") && err.contains("layer base") && err.contains(&gone),
        "{gone}: {err}"
    );
    push(&base_key, &good_base, &good_base_bytes);
}

/// `FUSE_JOBS` is the number of threads a cold build works on (no unit cached: every layer,
/// the kernel unit, the initramfs and its core built), seen from outside the program: the
/// peak number of threads of the fuse process, sampled from /proc/<pid>/task while it
/// builds, is 1 with FUSE_JOBS=1 and 2 with FUSE_JOBS=2 (the packages are in the download
/// cache, so nothing is downloaded); the bytes are the same, and a bad value is an error.
#[test]
fn fuse_jobs_sets_the_build_threads_and_the_bytes_do_not_depend_on_them() {
    let shared = shared_image();
    let lock_file = shared.lock_file();
    let mut digests = Vec::new();
    for jobs in [1usize, 2] {
        let dir = tempfile::tempdir().unwrap();
        let cache = private_cache(dir.path());
        // Packages and indexes only: no built unit, no image record.
        for e in std::fs::read_dir(cache.join("named")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("unit-") || name.starts_with("image-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let app = example_app(dir.path());
        std::fs::copy(&lock_file, app.join("fuse.lock")).unwrap();
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let started = std::time::Instant::now();
        let mut child = Fuse::new(["build".as_ref(), app.as_os_str(), "--json".as_ref()])
            .env("FUSE_CACHE_DIR", &cache)
            .env("FUSE_JOBS", jobs.to_string())
            .command()
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
        let (mut peak, mut samples) = (0, 0);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if let Ok(rd) = std::fs::read_dir(&tasks) {
                peak = peak.max(rd.count());
                samples += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        let err = std::fs::read_to_string(&err).unwrap();
        assert!(status.success(), "build failed:\n{err}");
        eprintln!(
            "FUSE_JOBS={jobs}: peak {peak} threads over {samples} samples, {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let units: Vec<&serde_json::Value> = ["layers", "boot"]
            .iter()
            .flat_map(|k| json[k].as_array().unwrap())
            .collect();
        assert_eq!(units.len(), 5, "{json}");
        assert!(units.iter().all(|u| u["source"] == "built"), "{json}");
        assert_eq!(peak, jobs, "FUSE_JOBS={jobs}: peak threads\n{err}");
        digests.push(json["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(digests[0], digests[1], "the worker count changed the bytes");
    assert_eq!(digests[0], shared.digest);
    for bad in ["0", "two", "65"] {
        let out = fuse(
            &["build", shared.app.to_str().unwrap()],
            &[("FUSE_JOBS", bad)],
        );
        assert_eq!(out.status.code(), Some(2), "FUSE_JOBS={bad}");
        assert!(
            text(&out.stderr).contains("FUSE_JOBS"),
            "{}",
            text(&out.stderr)
        );
    }
}
