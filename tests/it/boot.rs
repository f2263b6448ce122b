//! Boot tests: the booted system proves itself by answering HTTP on a forwarded port, as an
//! unprivileged user, and by powering off with the app's exit code on the console.

use crate::support::*;
use std::time::Duration;

#[test]
fn example_boots_with_plain_qemu_and_ovmf_and_answers_http() {
    let b = shared_image();
    let mut vm = Vm::boot(&b.image, 8080, &[]);
    let body = vm.get_until_ok("/", Duration::from_secs(240));
    let console = vm.console();
    let body = body.unwrap_or_else(|| panic!("no HTTP answer from the image; console:\n{console}"));
    assert!(body.starts_with("hello, world from uid "), "{body}");
    let uid: u32 = body.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the app runs as root");
    assert_eq!(uid, 1000);
    // The app exits with 3: the init reports it and powers the machine off.
    let _ = http_get(vm.port, "/exit?code=3");
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the VM did not power off; console:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("fuse-init: app exited with code 3"),
        "{console}"
    );
}

#[test]
fn fuse_run_injects_config_without_changing_the_image_or_printing_secrets() {
    let b = shared_image();
    let before = sha256_file(&b.image);
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("test.env");
    std::fs::write(
        &env,
        "# test environment\nGREETING=test-env\nDB_PASSWORD=s3cret-value\n",
    )
    .unwrap();
    let port = fuse::vm::free_port().unwrap();
    let mut running = Fuse::new([
        "run".as_ref(),
        b.image.as_os_str(),
        "--config".as_ref(),
        env.as_os_str(),
    ])
    .args(["-p", &format!("{port}:8080")])
    .spawn();
    let body = running
        .get_until_ok(port, "/", Duration::from_secs(240))
        .unwrap_or_else(|| panic!("no answer via fuse run; console:\n{}", running.console()));
    assert!(body.starts_with("hello, test-env from uid 1000"), "{body}");
    let _ = http_get(port, "/exit?code=7");
    let (status, console) = running.finish(Duration::from_secs(120));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "fuse run exits with the app's code; console:\n{console}"
    );
    assert!(
        !console.contains("s3cret-value"),
        "a config value was printed on the console"
    );
    assert_eq!(sha256_file(&b.image), before, "booting changed the image");
}

/// The cloud flavour of Debian's kernel (`[system] kernel = "linux-image-cloud-amd64"`:
/// LZ4-compressed, virtio, NVMe, ENA, gVNIC and Hyper-V drivers, no SATA or Intel NICs)
/// builds into an image that passes `fuse test`, with every boot phase reported.
#[test]
fn cloud_kernel_image_passes_fuse_test() {
    let b = example_image("cloud-kernel", |app| {
        let m = app.join("fuse.toml");
        let t = std::fs::read_to_string(&m).unwrap().replace(
            "kernel = \"linux-image-amd64\"",
            "kernel = \"linux-image-cloud-amd64\"",
        );
        assert!(t.contains("linux-image-cloud-amd64"), "{t}");
        std::fs::write(&m, t).unwrap();
    });
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&b.json).unwrap()).unwrap();
    let kernel = meta["kernel"]["package"]["name"].as_str().unwrap_or("");
    assert!(
        kernel.starts_with("linux-image-") && kernel.ends_with("-cloud-amd64"),
        "{kernel}"
    );
    let out = fuse(
        &[
            "test",
            b.image.to_str().unwrap(),
            "--json",
            "--accel",
            "tcg",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    assert!(out.status.success(), "{v}");
    assert_eq!(v["result"], "pass", "{v}");
    for k in ["firmware_ms", "kernel_ms", "init_ms", "app_ms"] {
        assert!(v["phases"][k].is_u64(), "no {k}: {v}");
    }
    eprintln!("cloud kernel: {}", v["phases"]);
    // Exported for hardware it has no driver for (an OVA's SATA disk), it is named; for
    // virtio (qcow2), not.
    let out_dir = tempfile::tempdir().unwrap();
    for (format, warned) in [("ova", true), ("qcow2", false)] {
        let out = fuse(
            &[
                "export",
                b.image.to_str().unwrap(),
                "--format",
                format,
                "--out",
                out_dir.path().to_str().unwrap(),
            ],
            &[],
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(
            err.contains("SATA disk needs ahci") && err.contains(kernel),
            warned,
            "{format}: {err}"
        );
    }
}
