//! Real apps: a graceful stop on the ACPI power button (from `fuse run` on Ctrl-C and from
//! QEMU's `system_powerdown`), the stop timeout ending an app that ignores SIGTERM, and
//! `[app] writable` directories. One image, booted once per configuration.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The stop timeout of the lifecycle image (short, so the SIGKILL test is quick).
const STOP_TIMEOUT: u64 = 6;

/// fixtures/lifecycle.c compiled static.
fn lifecycle_binary(dir: &Path) -> PathBuf {
    gcc_static(
        &repo_root().join("fixtures/lifecycle.c"),
        &dir.join("lifecycle"),
    )
}

/// The lifecycle image, built once: stop_timeout 6 s, /app/logs and /var/lib/lifecycle
/// writable.
fn lifecycle_image() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = tmp_root().join("apps-lifecycle");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        lifecycle_binary(&dir);
        std::fs::write(
            dir.join("fuse.toml"),
            format!(
                r#"[image]
name = "lifecycle"
version = "1.0.0"

[app]
kind = "binary"
path = "lifecycle"
port = 8080
stop_timeout = {STOP_TIMEOUT}
writable = ["/var/lib/lifecycle", "/app/logs"]

[health]
http = "/"
"#
            ),
        )
        .unwrap();
        let out = fuse(&["build", dir.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("fuse-out/lifecycle-1.0.0.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["app"]["stop_timeout"], STOP_TIMEOUT);
        assert_eq!(
            meta["app"]["writable"],
            serde_json::json!(["/app/logs", "/var/lib/lifecycle"])
        );
        let modules = meta["kernel"]["modules"].to_string();
        assert!(
            modules.contains("\"button\"") && modules.contains("\"evdev\""),
            "the power button's modules are missing: {modules}"
        );
        dir.join("fuse-out/lifecycle-1.0.0.img")
    })
}

#[test]
fn fuse_run_stops_the_app_gracefully_on_ctrl_c_and_writable_dirs_are_writable() {
    let image = lifecycle_image();
    let port = fuse::vm::free_port().unwrap();
    let mut running = Fuse::new(["run".as_ref(), image.as_os_str()])
        .args(["-p", &format!("{port}:8080")])
        .env("FUSE_DATA_DIR", data_dir())
        .spawn();
    let Some(body) = running.get_until_ok(port, "/", Duration::from_secs(300)) else {
        panic!("no answer; console:\n{}", running.console());
    };
    assert!(body.contains("uid=1000\n"), "{body}");
    assert!(body.contains("write /app/logs/hits.log: ok"), "{body}");
    assert!(body.contains("write /tmp/hits.log: ok"), "{body}");
    assert!(
        !body.contains("write /app/not-writable: ok"),
        "/app is writable without being listed: {body}"
    );
    // The second request appends to the same file: the tmpfs keeps what the app wrote.
    let second = http_get(port, "/").expect("second request").1;
    assert!(second.contains("write /app/logs/hits.log: ok"), "{second}");

    // Ctrl-C: fuse run presses the power button; the app drains and exits 0.
    let pressed = Instant::now();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGINT) };
    let (status, console) = running.finish(Duration::from_secs(120));
    let took = pressed.elapsed();
    let Some(status) = status else {
        panic!("fuse run did not end after Ctrl-C; console:\n{console}");
    };
    eprintln!("Ctrl-C to power off: {:.1}s", took.as_secs_f64());
    for want in [
        "watching /dev/input/event",
        "power button: stopping the app: SIGTERM",
        "lifecycle: got SIGTERM, draining",
        "lifecycle: drained, exiting",
        "app stopped",
        "fuse-init: app exited with code 0",
        "fuse-init: powering off",
        "/app/logs: writable tmpfs for uid 1000",
    ] {
        assert!(
            console.contains(want),
            "missing {want:?}; console:\n{console}"
        );
    }
    assert!(!console.contains("sending SIGKILL"), "{console}");
    assert_eq!(status.code(), Some(0), "console:\n{console}");
    assert!(
        took < Duration::from_secs(STOP_TIMEOUT + 60),
        "stopping took {took:?}"
    );
}

#[test]
fn an_app_ignoring_sigterm_is_killed_at_the_stop_timeout() {
    let image = lifecycle_image();
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let extra = [
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp.display()),
        "-fw_cfg".to_string(),
        "name=opt/fuse/env,string=IGNORE_TERM=1".to_string(),
    ];
    let mut vm = Vm::boot(image, 8080, &extra);
    let body = vm.get_until_ok("/", Duration::from_secs(300));
    assert!(body.is_some(), "no answer; console:\n{}", vm.console());
    let pressed = Instant::now();
    fuse::vm::qmp(&qmp, "system_powerdown").unwrap();
    assert!(
        vm.wait_exit(Duration::from_secs(STOP_TIMEOUT + 120)),
        "the VM did not power off; console:\n{}",
        vm.console()
    );
    let took = pressed.elapsed();
    let console = vm.console();
    eprintln!(
        "system_powerdown to power off, app ignoring SIGTERM: {:.1}s (stop_timeout {STOP_TIMEOUT}s)",
        took.as_secs_f64()
    );
    for want in [
        "power button: stopping the app: SIGTERM",
        "lifecycle: ignoring SIGTERM",
        &format!(
            "app still running {STOP_TIMEOUT} s after SIGTERM (stop_timeout): sending SIGKILL"
        ),
        "fuse-init: app killed by signal 9 (SIGKILL)",
        "fuse-init: powering off",
    ] {
        assert!(
            console.contains(want),
            "missing {want:?}; console:\n{console}"
        );
    }
    assert!(took >= Duration::from_secs(STOP_TIMEOUT), "{took:?}");
}

#[test]
fn writable_paths_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app"), b"\x7fELF").unwrap();
    for (value, want) in [
        (r#"writable = ["logs"]"#, "not an absolute path"),
        (r#"writable = ["/etc/app"]"#, "inside /etc"),
        (r#"writable = ["/app/../x"]"#, "`..`"),
        (r#"stop_timeout = 0"#, "app.stop_timeout"),
    ] {
        std::fs::write(
            dir.path().join("fuse.toml"),
            format!(
                "[image]\nname = \"x\"\nversion = \"1\"\n\n[app]\nkind = \"binary\"\npath = \"app\"\nport = 8080\n{value}\n"
            ),
        )
        .unwrap();
        let out = fuse(&["build", dir.path().to_str().unwrap()], &[]);
        assert!(!out.status.success(), "{value} was accepted");
        let e = text(&out.stderr);
        assert!(
            e.contains(want) && e.contains("fuse.toml:9"),
            "{value}: {e}"
        );
    }
}
