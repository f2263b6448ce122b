//! Shared helpers: the example app, a shared download cache, running `fuse`, booting with
//! plain QEMU + OVMF, and talking HTTP to a booted image.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A string no earlier test run used (nanoseconds since the epoch): for an edit whose
/// build must not find its units in the cache that `target/tmp` keeps across runs.
pub fn run_nonce() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default()
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
        gcc_static(
            &repo_root().join("examples/hello/hello.c"),
            &dir.join("hello"),
        )
    })
    .clone()
}

/// `src` (C) compiled static (gcc -static -Os -s) into `out`.
pub fn gcc_static(src: &Path, out: &Path) -> PathBuf {
    let st = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("gcc is needed to build the test apps");
    assert!(st.success(), "gcc -static failed (is libc6-dev installed?)");
    out.to_path_buf()
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

/// How the tests run `fuse` (the one place that starts the binary): its arguments, then
/// environment, working directory, image store, a shell prefix. Defaults: the shared
/// download cache and image store, no SOURCE_DATE_EPOCH, no registry credentials of the host.
pub struct Fuse {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    shell: Option<String>,
}

impl Fuse {
    pub fn new<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Fuse {
        Fuse {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            dir: None,
            shell: None,
        }
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Fuse {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Fuse {
        self.env.push((k.into(), v.as_ref().to_owned()));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Fuse {
        env.iter().fold(self, |f, (k, v)| f.env(k, v))
    }

    pub fn dir(mut self, dir: &Path) -> Fuse {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Its own image store, and a Docker config there (no credentials of the host).
    pub fn data(self, data: &Path) -> Fuse {
        self.env("FUSE_DATA_DIR", data).env("DOCKER_CONFIG", data)
    }

    /// Run through `sh -c "PREFIX; exec fuse ARGS"` (`umask 077`, `ulimit -f 1`).
    pub fn shell(mut self, prefix: &str) -> Fuse {
        self.shell = Some(prefix.to_string());
        self
    }

    pub fn command(&self) -> Command {
        let bin = env!("CARGO_BIN_EXE_fuse");
        let mut c = match &self.shell {
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(&self.args)
            .env("FUSE_CACHE_DIR", cache_dir())
            .env("FUSE_DATA_DIR", data_dir())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("FUSE_REGISTRY_USERNAME")
            .env_remove("FUSE_REGISTRY_PASSWORD");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    pub fn output(&self) -> Output {
        self.command().output().expect("cannot run fuse")
    }

    /// Started with stdout collected line by line (`fuse run`: the console), stderr shown.
    pub fn spawn(&self) -> Running {
        let (child, console, reader) = spawn_collected(&mut self.command(), "fuse run");
        Running {
            child,
            console,
            reader: Some(reader),
        }
    }
}

/// Run the fuse binary with the shared cache and image store.
pub fn fuse(args: &[&str], env: &[(&str, &str)]) -> Output {
    Fuse::new(args).envs(env).output()
}

/// Run fuse with its own image store and no Docker credentials of the host.
pub fn fuse_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Fuse::new(args).data(data).envs(env).output()
}

/// As [`fuse_with`], in the project directory `dir`, as user `tester` (the ledger's "who").
pub fn fuse_in(dir: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Fuse::new(args)
        .dir(dir)
        .data(data)
        .env("USER", "tester")
        .envs(env)
        .output()
}

/// stdout of a command that must have succeeded (else its whole output in the panic).
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Run another program (gcc, dpkg-deb, gpg, qemu-img...): (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// [`run`] that must succeed.
pub fn run_ok(cmd: &mut Command) -> String {
    let (ok, out) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}");
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What `fuse build --json` gave: the digest, stderr (the log) and the `--json` document.
pub struct Build {
    pub digest: String,
    pub stderr: String,
    pub json: serde_json::Value,
    pub image: PathBuf,
}

/// `fuse build --json APP ARGS...` run by `f` (environment, directories): it must succeed.
pub fn build_with(f: Fuse) -> Build {
    let f = Fuse {
        args: f
            .args
            .into_iter()
            .chain([OsString::from("--json")])
            .collect(),
        ..f
    };
    let out = f.output();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "fuse build failed:\n{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("build --json printed no JSON ({e}):\n{}", text(&out.stdout)));
    let digest = json["digest"]
        .as_str()
        .expect("--json has the digest")
        .to_string();
    let image = PathBuf::from(json["image"].as_str().expect("--json has the image"));
    assert_eq!(
        sha256_file(&image),
        digest,
        "the image does not hash to its digest"
    );
    Build {
        digest,
        stderr,
        json,
        image,
    }
}

/// `fuse build --json APP ARGS...` with `env`.
pub fn build(app: &Path, args: &[&str], env: &[(&str, &str)]) -> Build {
    let mut a = vec!["build", app.to_str().unwrap()];
    a.extend_from_slice(args);
    build_with(Fuse::new(a).envs(env))
}

/// `fuse build` with a download cache of its own and extra environment; (digest, stderr).
pub fn build_in(app: &Path, cache: &Path, env: &[(&str, &str)]) -> (String, String) {
    let b = build(
        app,
        &[],
        &[&[("FUSE_CACHE_DIR", cache.to_str().unwrap())], env].concat(),
    );
    (b.digest, b.stderr)
}

/// A private download cache: hard links to the shared cache's blobs and records (written
/// files replace links by rename, so the shared cache is never modified through them).
pub fn private_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("cache");
    for sub in ["sha256", "named"] {
        let from = cache_dir().join(sub);
        let to = cache.join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::hard_link(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    cache
}

/// The source each unit came from, as the build logs it (`layer base: local-cache (...)`).
pub fn sources(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("INFO ")?.trim();
            let (unit, rest) = l.split_once(": ")?;
            let source = rest.split_whitespace().next()?;
            ["built", "local-cache", "registry-cache"]
                .contains(&source)
                .then(|| (unit.to_string(), source.to_string()))
        })
        .collect()
}

/// The example image, built once per test run and shared (read-only) by the tests.
pub struct Built {
    /// The app directory (manifest, fuse.lock, fuse-out/).
    pub app: PathBuf,
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
}

impl Built {
    pub fn lock_file(&self) -> PathBuf {
        self.app.join("fuse.lock")
    }
}

pub fn shared_image() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| example_image("shared-build", |_| {}))
}

/// The example app copied into a fresh `name` folder of the test tmp dir, changed by
/// `edit`, and built.
pub fn example_image(name: &str, edit: impl FnOnce(&Path)) -> Built {
    let dir = tmp_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let app = example_app(&dir);
    edit(&app);
    let b = build(&app, &[], &[]);
    Built {
        app,
        json: b.image.with_extension("json"),
        image: b.image,
        digest: b.digest,
    }
}

/// The byte range of GPT partition `name` in a raw image.
pub fn partition(disk: &[u8], name: &str) -> std::ops::Range<usize> {
    fuse::format::gpt::read_disk(disk)
        .unwrap()
        .partitions
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no partition {name}"))
        .byte_range()
}

pub fn sha256_file(p: &Path) -> String {
    format!(
        "sha256:{}",
        fuse::digest::sha256_hex(&std::fs::read(p).unwrap())
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
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            fuse::vm::cpu_model(accel),
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
        .args(extra);
        let (child, console, _) = spawn_collected(&mut qemu, "console");
        Vm {
            child,
            console,
            port,
            _dir: dir,
        }
    }

    /// Boot an arm64 `image` as `fuse run` does (qemu-system-aarch64, virt, AAVMF, TCG),
    /// read-only, the app's `guest_port` forwarded to a free loopback port.
    pub fn boot_arm64(image: &Path, guest_port: u16) -> Vm {
        use fuse::arch::Arch;
        let dir = tempfile::tempdir().unwrap();
        let (code, template) =
            fuse::vm::firmware(Arch::Arm64).expect("AAVMF (package qemu-efi-aarch64) is needed");
        let vars = dir.path().join("vars.fd");
        std::fs::copy(&template, &vars).unwrap();
        let port = fuse::vm::free_port().unwrap();
        let forwards = [(port, guest_port)];
        let spec = fuse::vm::BootSpec {
            arch: Arch::Arm64,
            image,
            vars: &vars,
            code: &code,
            accel: "tcg",
            memory_mib: 512,
            forwards: &forwards,
            config: None,
        };
        let qemu = fuse::vm::qemu_binary_for(Arch::Arm64)
            .expect("qemu-system-aarch64 (package qemu-system-arm) is needed");
        let mut cmd = fuse::vm::command(&qemu, &spec);
        eprintln!("booting {} under {}", image.display(), qemu.display());
        let (child, console, _) = spawn_collected(&mut cmd, "console");
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
        get_until_ok(&mut self.child, self.port, path, timeout)
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

    /// Wait until the console contains one of `needles` or QEMU exits (true if either),
    /// asking `path` of the app's port all the while: any answer fails the test.
    pub fn wait_stop_unanswered(
        &mut self,
        needles: &[&str],
        path: &str,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let c = self.console();
            if needles.iter().any(|n| c.contains(n)) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if let Some((status, body)) = http_get(self.port, path) {
                panic!("the VM answered {path}: {status} {body:?}; console:\n{c}");
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

/// `cmd` started with stdin empty, stderr shown, and its stdout read line by line into a
/// shared text (echoed to stderr under `label`); the reader thread ends with the stream.
fn spawn_collected(
    cmd: &mut Command,
    label: &'static str,
) -> (Child, Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let t2 = text.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let l = String::from_utf8_lossy(&line).into_owned();
            eprintln!("{label}| {}", l.trim_end());
            let mut t = t2.lock().unwrap();
            t.push_str(&l);
            t.push('\n');
        }
    });
    (child, text, reader)
}

/// GET `path` on loopback `port` until an HTTP 200 answer arrives, `child` exits or
/// `timeout` passes; the body.
pub fn get_until_ok(child: &mut Child, port: u16, path: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if let Some((200, body)) = http_get(port, path) {
            return Some(body);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// A running `fuse` ([`Fuse::spawn`]): the process and its stdout so far.
pub struct Running {
    pub child: Child,
    console: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// [`get_until_ok`] on this process.
    pub fn get_until_ok(&mut self, port: u16, path: &str, timeout: Duration) -> Option<String> {
        get_until_ok(&mut self.child, port, path, timeout)
    }

    /// Wait up to `timeout` for the process to end: its status and whole stdout (`None`
    /// when it did not end; it is then killed).
    pub fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.console())
    }
}

impl Drop for Running {
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
