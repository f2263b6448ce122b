//! Shared helpers: the example app, a shared download cache, running `fuse`, booting with
//! plain QEMU + OVMF, and talking HTTP to a booted image.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// One download cache for the whole test run (the kernel package is large).
pub fn cache_dir() -> PathBuf {
    tmp_root().join("fuse-cache")
}

/// The example app compiled once (gcc -static), as examples/hello/build.sh does.
pub fn hello_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tmp_root().join("hello-src");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("hello");
        let st = Command::new("gcc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&out)
            .arg(repo_root().join("examples/hello/hello.c"))
            .status()
            .expect("gcc is needed to build the example app");
        assert!(st.success(), "gcc -static failed (is libc6-dev installed?)");
        out
    })
    .clone()
}

/// A copy of examples/hello (manifest + freshly built app) in `dir`.
pub fn example_app(dir: &Path) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/fuse.toml"),
        app.join("fuse.toml"),
    )
    .unwrap();
    std::fs::copy(hello_binary(), app.join("hello")).unwrap();
    app
}

/// The local image store used by the tests' builds (never the user's own).
pub fn data_dir() -> PathBuf {
    tmp_root().join("fuse-data")
}

/// Run the fuse binary with the shared cache.
pub fn fuse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fuse"));
    c.args(args)
        .env("FUSE_CACHE_DIR", cache_dir())
        .env("FUSE_DATA_DIR", data_dir())
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("cannot run fuse")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The example image, built once per test run and shared (read-only) by the tests.
pub struct Built {
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
}

pub fn shared_image() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tmp_root().join("shared-build");
        let _ = std::fs::remove_dir_all(&dir);
        let app = example_app(&dir);
        let out = fuse(&["build", app.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "fuse build failed:\n{}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let digest = stdout.lines().last().unwrap_or("").to_string();
        Built {
            image: app.join("fuse-out/hello-1.0.0.img"),
            json: app.join("fuse-out/hello-1.0.0.json"),
            digest,
        }
    })
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        fuse::manifest::hex(&sha2::Sha256::digest(std::fs::read(p).unwrap()))
    )
}

// The same helpers as the unit tests' `crate::testutil` (one source file): a test whose
// tool is missing fails under env CI and otherwise reports a visible skip.
#[allow(dead_code)]
#[path = "../../src/testutil.rs"]
mod testutil;
#[allow(unused_imports)]
pub use testutil::{have_tool, require, require_tool, skip};

/// A VM booted with plain QEMU + OVMF (no `fuse run`), console captured.
pub struct Vm {
    pub child: Child,
    pub console: Arc<Mutex<String>>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Boot `image` read-only with the app's `guest_port` forwarded to a free loopback port.
    pub fn boot(image: &Path, guest_port: u16, extra: &[String]) -> Vm {
        let disk = [
            "-drive".to_string(),
            format!("if=virtio,format=raw,readonly=on,file={}", image.display()),
        ];
        Vm::boot_devices(&disk, "virtio-net-pci", guest_port, extra)
    }

    /// [`Vm::boot`] with another OVMF build (e.g. the Secure Boot one): `code` and a
    /// template of its variable store (copied, QEMU writes it).
    pub fn boot_firmware(
        image: &Path,
        guest_port: u16,
        extra: &[String],
        code: &str,
        vars_template: &str,
    ) -> Vm {
        let disk = [
            "-drive".to_string(),
            format!("if=virtio,format=raw,readonly=on,file={}", image.display()),
        ];
        Vm::boot_full(
            &disk,
            "virtio-net-pci",
            guest_port,
            extra,
            code,
            vars_template,
        )
    }

    /// Boot with the boot disk given as QEMU arguments (`disk`: its -drive and -device
    /// arguments) and a NIC of model `nic` on user networking, the app's `guest_port`
    /// forwarded to a free loopback port.
    pub fn boot_devices(disk: &[String], nic: &str, guest_port: u16, extra: &[String]) -> Vm {
        Vm::boot_full(
            disk,
            nic,
            guest_port,
            extra,
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        )
    }

    fn boot_full(
        disk: &[String],
        nic: &str,
        guest_port: u16,
        extra: &[String],
        code: &str,
        vars_template: &str,
    ) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("vars.fd");
        std::fs::copy(vars_template, &vars).expect("OVMF (package ovmf) is needed");
        let port = fuse::vm::free_port().unwrap();
        let accel = if fuse::vm::kvm_works() { "kvm" } else { "tcg" };
        eprintln!("booting {disk:?} with -accel {accel}, NIC {nic}");
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                accel,
                "-m",
                "512",
                "-display",
                "none",
                "-nodefaults",
            ])
            .args(["-no-reboot", "-serial", "stdio"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .args(disk)
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{guest_port}"
            ))
            .args(["-device", &format!("{nic},netdev=n0")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (package qemu-system-x86) is needed");
        let console = Arc::new(Mutex::new(String::new()));
        let c2 = console.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let l = String::from_utf8_lossy(&line).into_owned();
                eprintln!("console| {}", l.trim_end());
                c2.lock().unwrap().push_str(&l);
                c2.lock().unwrap().push('\n');
            }
        });
        Vm {
            child,
            console,
            port,
            _dir: dir,
        }
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// GET `path` until an HTTP 200 answer arrives or `timeout` passes; the body.
    pub fn get_until_ok(&mut self, path: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            if let Some((200, body)) = http_get(self.port, path) {
                return Some(body);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }

    /// Wait until the console contains `needle` (or QEMU exits, or `timeout` passes).
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console().contains(needle) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.console().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    }

    /// Wait for QEMU to exit (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
