//! A Flask + numpy 2.x app with its wheels from PyPI (a virtualenv made by pip), as a new
//! user would write it: current wheels need more than QEMU's default CPU model (x86-64-v1),
//! so it answers only because `fuse test` and `fuse run` give the guest a CPU like the
//! clouds' (`-cpu max` under TCG). One image, built once, booted by both commands.

use crate::support::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SERVER: &str = r#"import numpy as np
from flask import Flask

app = Flask(__name__)


@app.get("/")
def root():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    m = np.linalg.inv(np.array([[2.0, 1.0], [1.0, 3.0]]))
    return f"numpy {np.__version__} sum={a.sum():.0f} inv00={m[0, 0]:.1f}\n"


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8080)
"#;

/// The app directory with its venv (flask, numpy>=2 from PyPI) and the built image, once.
fn image() -> Option<&'static (tempfile::TempDir, PathBuf)> {
    static I: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    I.get_or_init(|| {
        if !require_tool("python3.11") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("server.py"), SERVER).unwrap();
        std::fs::write(
            dir.path().join("fuse.toml"),
            "[image]\nname = \"flasknp\"\nversion = \"1.0.0\"\n\n[app]\nkind = \"python\"\n\
             path = \"app\"\nargs = [\"server.py\"]\nport = 8080\n\n[runtime]\npython = \"3.11\"\n\n\
             [health]\nhttp = \"/\"\n",
        )
        .unwrap();
        let venv = app.join(".venv");
        let st = Command::new("python3.11")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        if !require(st.success(), "python3.11 -m venv (package python3-venv)") {
            return None;
        }
        let st = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary",
                ":all:",
                "flask",
                "numpy>=2,<3",
            ])
            .status()
            .unwrap();
        if !require(st.success(), "pip install flask numpy from PyPI") {
            return None;
        }
        let out = fuse(&["build", dir.path().to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let img = dir.path().join("fuse-out/flasknp-1.0.0.img");
        Some((dir, img))
    })
    .as_ref()
}

fn check_answer(body: &str) {
    assert!(body.starts_with("numpy 2."), "{body}");
    assert!(body.contains("sum=66 inv00=0.6"), "{body}");
}

#[test]
fn flask_numpy_app_passes_fuse_test() {
    let Some((_dir, img)) = image() else { return };
    let out = fuse(
        &["test", img.to_str().unwrap(), "--json", "--timeout", "600"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "pass");
    // The phases add up to the time to healthy (each from the console, none missing).
    let p = &v["phases"];
    let sum: u64 = ["firmware_ms", "kernel_ms", "init_ms", "app_ms"]
        .iter()
        .map(|k| p[k].as_u64().unwrap_or_else(|| panic!("no {k}: {v}")))
        .sum();
    let total = v["time_to_healthy_ms"].as_u64().unwrap();
    assert!(
        sum.abs_diff(total) < 1500,
        "phases {sum} ms vs {total} ms: {v}"
    );
    for step in ["modules", "layers", "network", "config"] {
        assert!(p["init_steps"][step].is_u64(), "no init step {step}: {v}");
    }
    eprintln!("flask+numpy: {}", p);
}

#[test]
fn flask_numpy_app_answers_under_fuse_run() {
    let Some((_dir, img)) = image() else { return };
    let port = fuse::vm::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .args(["run", img.to_str().unwrap(), "-p", &format!("{port}:8080")])
        .env("FUSE_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut body = None;
    while Instant::now() < deadline && body.is_none() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("fuse run ended ({st}) before the app answered");
        }
        if let Some((200, b)) = http_get(port, "/") {
            body = Some(b);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Ctrl-C: the power button; the app is stopped and the VM powers off.
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let stopped = wait_child(&mut child, Duration::from_secs(120));
    let body = body.expect("no answer from the Flask app under fuse run");
    check_answer(&body);
    assert!(stopped, "fuse run did not end after Ctrl-C");
}

fn wait_child(c: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}
