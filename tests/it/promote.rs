//! The local image store and promotion: tags, addressing by digest prefix, concurrent
//! writers, gc; promotion order, the ledger, and tagging in a registry by digest.

use crate::registry::{changed_image, Registry};
use crate::support::*;

#[test]
fn store_tags_prefixes_concurrent_writers_rm_and_gc() {
    let a = shared_image();
    let data = tempfile::tempdir().unwrap();
    let img = a.image.to_str().unwrap();
    // Eight processes tag at once: every tag survives (index updates are locked).
    let children: Vec<_> = (0..8)
        .map(|i| {
            Fuse::new(["tag", img, &format!("hello:c{i}")])
                .env("FUSE_DATA_DIR", data.path())
                .command()
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        ok(&out, "concurrent fuse tag");
    }
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&fuse_with(data.path(), &["ls", "--json"], &[]), "ls")).unwrap();
    let rows = ls.as_array().unwrap();
    let mut versions: Vec<&str> = rows
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        ["1.0.0", "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    );
    for r in rows {
        assert_eq!(r["digest"], a.digest.as_str());
        assert_eq!(r["name"], "hello");
        assert_eq!(r["size"], std::fs::metadata(&a.image).unwrap().len());
    }
    let table = ok(&fuse_with(data.path(), &["ls"], &[]), "ls");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains(&a.digest[..19]) && table.contains("MiB"),
        "{table}"
    );

    // Address by unique digest prefix; the store's bytes are the image's.
    let b = changed_image();
    ok(
        &fuse_with(
            data.path(),
            &["tag", b.image.to_str().unwrap(), "hello:two"],
            &[],
        ),
        "tag B",
    );
    let prefix = &a.digest[7..19];
    let out = ok(
        &fuse_with(data.path(), &["tag", prefix, "hello:by-prefix"], &[]),
        "tag by prefix",
    );
    assert_eq!(out.trim(), format!("hello:by-prefix {}", a.digest));
    let out = fuse_with(data.path(), &["tag", "hello", "hello:x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("versions in the store"),
        "{}",
        text(&out.stderr)
    );
    // Unknown references fail clearly, for run too (before QEMU is ever started).
    let out = fuse_with(data.path(), &["run", "nothing:here"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("neither an image file nor in the local store"),
        "{}",
        text(&out.stderr)
    );

    // rm a tag keeps the bytes; gc deletes images no tag refers to.
    for t in ["hello:1.0.0", "hello:by-prefix"].iter().chain(&[
        "hello:c0", "hello:c1", "hello:c2", "hello:c3", "hello:c4", "hello:c5", "hello:c6",
        "hello:c7",
    ]) {
        ok(&fuse_with(data.path(), &["rm", t], &[]), "rm tag");
    }
    let blob_a = data.path().join("images/sha256").join(&a.digest[7..]);
    assert!(blob_a.is_file());
    let out = ok(
        &fuse_with(data.path(), &["gc", "--dry-run"], &[]),
        "gc --dry-run",
    );
    assert!(out.contains(&a.digest), "{out}");
    assert!(blob_a.is_file());
    let out = ok(&fuse_with(data.path(), &["gc"], &[]), "gc");
    assert!(out.contains(&a.digest) && !out.contains(&b.digest), "{out}");
    assert!(!blob_a.exists());
    assert_eq!(
        sha256_file(&data.path().join("images/sha256").join(&b.digest[7..])),
        b.digest
    );
    // rm by digest prefix removes the image and its tags.
    let out = ok(
        &fuse_with(data.path(), &["rm", &b.digest[..16]], &[]),
        "rm digest",
    );
    assert!(
        out.contains("untagged hello:two") && out.contains(&format!("deleted {}", b.digest)),
        "{out}"
    );
}

#[test]
fn promotion_follows_the_order_and_the_ledger_records_digests() {
    let a = shared_image();
    let b = changed_image();
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (p, d) = (project.path(), data.path());
    std::fs::write(p.join("fuse-envs.toml"), "order = [\"test\", \"prod\"]\n").unwrap();
    std::fs::write(p.join("test.env"), "GREETING=test\nDB_PASSWORD=hunter2\n").unwrap();
    let cfg_digest = sha256_file(&p.join("test.env"));
    ok(
        &fuse_in(p, d, &["tag", a.image.to_str().unwrap(), "hello:a"], &[]),
        "tag",
    );

    // Straight to prod: refused, nothing recorded.
    let out = fuse_in(p, d, &["promote", "hello:a", "prod"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("never promoted to test"),
        "{}",
        text(&out.stderr)
    );
    // test, then prod.
    let out = ok(
        &fuse_in(
            p,
            d,
            &[
                "promote", "hello:a", "test", "--config", "test.env", "--who", "alice",
            ],
            &[],
        ),
        "promote test",
    );
    assert!(out.contains(&a.digest) && out.contains("to test"), "{out}");
    let out = ok(
        &fuse_in(p, d, &["promote", &a.digest, "prod"], &[]),
        "promote prod",
    );
    assert!(out.contains("to prod (from test)"), "{out}");
    // An image never promoted to test cannot go to prod.
    let out = fuse_in(p, d, &["promote", b.image.to_str().unwrap(), "prod"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("never promoted to test") && stderr.contains(&b.digest),
        "{stderr}"
    );
    // Not in the order: refused.
    let out = fuse_in(p, d, &["promote", "hello:a", "staging"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // Without the project file (another directory), no order applies.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = fuse_in(elsewhere.path(), d, &["envs", "--json"], &[]);
    assert!(
        serde_json::from_str::<serde_json::Value>(&ok(&out, "envs elsewhere")).unwrap()["history"]
            .as_array()
            .unwrap()
            .len()
            == 2,
        "the default ledger is the data dir's"
    );

    // The ledger: two lines, append-only JSON, digests, who, from, config digest.
    let ledger = std::fs::read_to_string(d.join("ledger.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{ledger}");
    assert_eq!(lines[0]["env"], "test");
    assert_eq!(lines[0]["who"], "alice");
    assert_eq!(lines[0]["config"], cfg_digest.as_str());
    assert_eq!(lines[1]["env"], "prod");
    assert_eq!(lines[1]["who"], "tester");
    assert_eq!(lines[1]["from"], "test");
    for l in &lines {
        assert_eq!(l["digest"], a.digest.as_str());
        assert_eq!(l["image"], "hello");
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
    }
    assert!(!ledger.contains("hunter2"));

    let envs = ok(&fuse_in(p, d, &["envs"], &[]), "envs");
    assert!(envs.contains("order: test -> prod"), "{envs}");
    let current: Vec<&str> = envs.lines().filter(|l| l.starts_with("hello ")).collect();
    assert_eq!(current.len(), 2, "{envs}");
    assert!(
        current[0].contains("test") && current[0].contains(&a.digest),
        "{envs}"
    );
    assert!(
        current[1].contains("prod") && current[1].contains(&a.digest),
        "{envs}"
    );
    assert!(
        envs.contains(&format!("-> prod {} from test", a.digest)),
        "{envs}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&fuse_in(p, d, &["envs", "--json"], &[]), "envs --json")).unwrap();
    assert_eq!(j["current"].as_array().unwrap().len(), 2);
    assert_eq!(j["history"].as_array().unwrap().len(), 2);

    // gc keeps what an environment runs even when no tag refers to it.
    ok(&fuse_in(p, d, &["rm", "hello:a"], &[]), "rm");
    ok(&fuse_in(p, d, &["rm", "hello:1.0.0"], &[]), "rm");
    ok(&fuse_in(p, d, &["gc"], &[]), "gc");
    assert!(
        d.join("images/sha256").join(&a.digest[7..]).is_file(),
        "gc removed the image prod runs"
    );
}

#[test]
fn promote_tags_the_registry_by_digest() {
    let a = shared_image();
    let reg = Registry::start();
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (p, d) = (project.path(), data.path());
    let repo = format!("127.0.0.1:{}/hello", reg.port);
    let img = a.image.to_str().unwrap();
    // Not pushed yet: refused, with the way out.
    let out = fuse_in(
        p,
        d,
        &["promote", img, "test", "--registry", &repo, "--insecure"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("push it first"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !d.join("ledger.jsonl").exists()
            || std::fs::read_to_string(d.join("ledger.jsonl"))
                .unwrap()
                .is_empty()
    );

    let pushed = ok(
        &fuse_in(p, d, &["push", img, &repo, "--insecure"], &[]),
        "push",
    );
    let manifest_ref = pushed.lines().next().unwrap().to_string();
    let manifest_digest = manifest_ref.rsplit('@').next().unwrap().to_string();
    let out = ok(
        &fuse_in(
            p,
            d,
            &["promote", img, "test", "--registry", &repo, "--insecure"],
            &[],
        ),
        "promote --registry",
    );
    assert!(
        out.contains(&format!("tagged {repo}:test@{manifest_digest}")),
        "{out}"
    );
    // The registry's "test" tag is that manifest, and pulling it gives the image.
    let mut resp = ureq::get(&format!(
        "http://127.0.0.1:{}/v2/hello/manifests/test",
        reg.port
    ))
    .header("Accept", fuse::oci::MANIFEST_TYPE)
    .call()
    .unwrap();
    let body = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(
        format!("sha256:{}", fuse::digest::sha256_hex(&body)),
        manifest_digest
    );
    let out_dir = tempfile::tempdir().unwrap();
    let pulled = ok(
        &fuse_in(
            p,
            d,
            &[
                "pull",
                &format!("{repo}:test"),
                "--insecure",
                "--out",
                out_dir.path().to_str().unwrap(),
            ],
            &[],
        ),
        "pull test",
    );
    assert_eq!(pulled.lines().last().unwrap(), a.digest);
    assert_eq!(
        sha256_file(&out_dir.path().join("hello-1.0.0.img")),
        a.digest
    );
    let ledger = std::fs::read_to_string(d.join("ledger.jsonl")).unwrap();
    assert!(
        ledger.contains(&format!("{repo}:test@{manifest_digest}")),
        "{ledger}"
    );
}

/// The defect: `promote --registry` moved the registry tag before the ledger line was
/// written, so a full disk (or a crash) left a tag move no ledger records. The ledger line
/// is written first; here the write fails (a file-size limit below the ledger's size) and
/// the tag must not have moved.
#[test]
fn promote_writes_the_ledger_line_before_moving_the_registry_tag() {
    let a = shared_image();
    let reg = Registry::start();
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (p, d) = (project.path(), data.path());
    let repo = format!("127.0.0.1:{}/hello", reg.port);
    let img = a.image.to_str().unwrap();
    ok(
        &fuse_in(p, d, &["push", img, &repo, "--insecure"], &[]),
        "push",
    );
    // A ledger already larger than the limit: any append fails with EFBIG.
    let line = r#"{"time":"2024-01-01T00:00:00Z","who":"t","image":"other","version":"1","env":"test","digest":"sha256:00","from":null,"config":null,"registry":null}"#;
    let ledger = d.join("ledger.jsonl");
    std::fs::write(&ledger, format!("{line}\n").repeat(100)).unwrap();
    let before = std::fs::read(&ledger).unwrap();
    let out = Fuse::new(["promote", img, "test", "--registry", &repo, "--insecure"])
        .shell("ulimit -f 1")
        .dir(p)
        .data(d)
        .env("USER", "tester")
        .output();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot append to the ledger"), "{err}");
    assert_eq!(
        std::fs::read(&ledger).unwrap(),
        before,
        "the ledger changed"
    );
    let status = match ureq::get(&format!(
        "http://127.0.0.1:{}/v2/hello/manifests/test",
        reg.port
    ))
    .header("Accept", fuse::oci::MANIFEST_TYPE)
    .call()
    {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(c)) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, 404, "the registry tag moved without a ledger line");
    // Without the limit the same promotion goes through and is recorded.
    ok(
        &fuse_in(
            p,
            d,
            &["promote", img, "test", "--registry", &repo, "--insecure"],
            &[],
        ),
        "promote",
    );
    assert_eq!(fuse::ledger::read(&ledger).unwrap().len(), 101);
}

/// An image pushed by a fuse before the manifests carried `vnd.fuse.image.arch` (the same
/// manifest without that annotation) is still found by `promote --registry`, and pulls.
#[test]
fn promote_finds_a_manifest_pushed_before_the_arch_annotation() {
    let a = shared_image();
    let reg = Registry::start();
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (p, d) = (project.path(), data.path());
    let repo = format!("127.0.0.1:{}/hello", reg.port);
    let disk = std::fs::read(&a.image).unwrap();
    let mut art = fuse::oci::artifact(&disk, false).unwrap();
    let (old_bytes, old_digest) = art.manifest_without_arch().unwrap();
    let old: serde_json::Value = serde_json::from_slice(&old_bytes).unwrap();
    assert!(old["annotations"].get(fuse::oci::ANN_ARCH).is_none());
    assert_ne!(old_digest, art.manifest_digest);
    art.manifest_bytes = old_bytes;
    art.manifest_digest = old_digest.clone();
    let r = fuse::oci::Reference::parse(&format!("{repo}:old")).unwrap();
    let c = fuse::oci::client::Client::new(&r, true, None, true);
    fuse::commands::registry::push_artifact(&c, &art, &disk, "old").unwrap();
    let out = ok(
        &fuse_in(
            p,
            d,
            &[
                "promote",
                a.image.to_str().unwrap(),
                "test",
                "--registry",
                &repo,
                "--insecure",
            ],
            &[],
        ),
        "promote --registry of an old push",
    );
    assert!(
        out.contains(&format!("tagged {repo}:test@{old_digest}")),
        "{out}"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let pulled = ok(
        &fuse_in(
            p,
            d,
            &[
                "pull",
                &format!("{repo}:test"),
                "--arch",
                "amd64",
                "--insecure",
                "--out",
                out_dir.path().to_str().unwrap(),
            ],
            &[],
        ),
        "pull the old manifest with --arch (checked from image.json)",
    );
    assert_eq!(pulled.lines().last().unwrap(), a.digest);
}
