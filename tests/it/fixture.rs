//! A small Debian archive made by the tests: packages built with dpkg-deb (plus the real
//! kernel and EFI stub taken from the shared cache), a Packages index, a Release signed by a
//! throw-away gpg key, served over HTTP on loopback by a server that can be stopped.

use crate::support::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Archive {
    pub dir: tempfile::TempDir,
    gnupg: PathBuf,
    paragraphs: Vec<String>,
    /// The Release says `Acquire-By-Hash: yes` (no by-hash copies are written).
    pub by_hash: bool,
}

/// Create a throw-away signing key in `home`; returns its exported public keyring.
/// The path of the HTTP GET request on `s` (request line read, headers skipped).
pub fn request_path(s: &std::net::TcpStream) -> String {
    let mut r = BufReader::new(s.try_clone().expect("clone the test server's socket"));
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    line.split_whitespace().nth(1).unwrap_or("/").to_string()
}

pub fn gpg_key(home: &Path, name: &str) -> Vec<u8> {
    std::fs::create_dir_all(home).unwrap();
    let mut perms = std::fs::metadata(home).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(home, perms).unwrap();
    run_ok(Command::new("gpg").env("GNUPGHOME", home).args([
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        &format!("{name} <{name}@test.invalid>"),
        "ed25519",
        "sign",
        "never",
    ]));
    let out = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--export"])
        .output()
        .unwrap();
    assert!(!out.stdout.is_empty());
    out.stdout
}

impl Archive {
    /// An empty archive with its own signing key; the keyring is at `keyring()`.
    pub fn new() -> Archive {
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        let keyring = gpg_key(&gnupg, "fuse-test-archive");
        std::fs::write(dir.path().join("keyring.gpg"), keyring).unwrap();
        std::fs::create_dir_all(dir.path().join("www/debian/pool/main")).unwrap();
        Archive {
            dir,
            gnupg,
            paragraphs: Vec::new(),
            by_hash: false,
        }
    }

    pub fn keyring(&self) -> PathBuf {
        self.dir.path().join("keyring.gpg")
    }

    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn add_bytes(&mut self, file: &str, deb: &[u8], control: &str) -> String {
        let rel = format!("pool/main/{file}");
        std::fs::write(self.www().join("debian").join(&rel), deb).unwrap();
        let sha = fuse::digest::sha256_hex(deb);
        self.paragraphs.push(format!(
            "{}\nFilename: {rel}\nSize: {}\nSHA256: {sha}\n",
            control.trim_end(),
            deb.len()
        ));
        sha
    }

    /// A package built with dpkg-deb holding `files` (path, contents); returns its sha256.
    pub fn add_package(
        &mut self,
        name: &str,
        version: &str,
        depends: &str,
        files: &[(&str, &[u8])],
    ) -> String {
        let build = self.dir.path().join(format!("build-{name}-{version}"));
        std::fs::create_dir_all(build.join("DEBIAN")).unwrap();
        let mut control = format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: fuse tests <t@test.invalid>\nDescription: fuse test package {name}\n"
        );
        if !depends.is_empty() {
            control.push_str(&format!("Depends: {depends}\n"));
        }
        std::fs::write(build.join("DEBIAN/control"), &control).unwrap();
        for (path, data) in files {
            let p = build.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        let deb = self.dir.path().join(format!("{name}_{version}_amd64.deb"));
        run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zxz", "--build"])
                .arg(&build)
                .arg(&deb),
        );
        let bytes = std::fs::read(&deb).unwrap();
        self.add_bytes(&format!("{name}_{version}_amd64.deb"), &bytes, &control)
    }

    /// A raw .deb (e.g. hand-made hostile ones) under `control`'s package name.
    pub fn add_raw(&mut self, file: &str, deb: &[u8], control: &str) -> String {
        self.add_bytes(file, deb, control)
    }

    /// Copy a real package from the shared test cache, with its control fields.
    pub fn add_cached(&mut self, sha256: &str) {
        let bytes = std::fs::read(cache_dir().join("sha256").join(sha256))
            .expect("package in the shared cache");
        let deb = fuse::archive::read_deb(&bytes).unwrap();
        let control: String = deb
            .control
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        let name = &deb.control["Package"];
        self.add_bytes(&format!("{name}.deb"), &bytes, &control);
    }

    /// The kernel and the EFI stub of the shared example build (real packages).
    pub fn add_kernel_and_stub(&mut self) {
        let b = shared_image();
        let lock = fuse::resolve::lock::Lock::load(&b.lock_file())
            .unwrap()
            .unwrap();
        self.add_cached(&lock.kernel.sha256);
        self.add_cached(&lock.stub.sha256);
        // The meta-package the manifest names, as the real archive has it.
        let depends = format!("{} (= {})", lock.kernel.name, lock.kernel.version);
        self.add_package("linux-image-amd64", "1.0", &depends, &[]);
    }

    /// Write Packages, Release and InRelease (signed with `signer`'s key, or the archive's
    /// own when None), with an optional Valid-Until.
    pub fn publish(&self, valid_until: Option<&str>, signer: Option<&Path>) {
        let dists = self.www().join("debian/dists/bookworm");
        let bin = dists.join("main/binary-amd64");
        std::fs::create_dir_all(&bin).unwrap();
        let packages = self.paragraphs.join("\n");
        std::fs::write(bin.join("Packages"), &packages).unwrap();
        let mut release = String::from(
            "Origin: fuse-test\nLabel: fuse-test\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n",
        );
        if let Some(v) = valid_until {
            release.push_str(&format!("Valid-Until: {v}\n"));
        }
        if self.by_hash {
            release.push_str("Acquire-By-Hash: yes\n");
        }
        release.push_str("Architectures: amd64\nComponents: main\nSHA256:\n");
        release.push_str(&format!(
            " {} {} main/binary-amd64/Packages\n",
            fuse::digest::sha256_hex(packages.as_bytes()),
            packages.len()
        ));
        std::fs::write(dists.join("Release"), &release).unwrap();
        let home = signer
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.gnupg.clone());
        let _ = std::fs::remove_file(dists.join("InRelease"));
        run_ok(
            Command::new("gpg")
                .env("GNUPGHOME", &home)
                .args([
                    "--batch",
                    "--yes",
                    "--digest-algo",
                    "SHA256",
                    "--clearsign",
                    "-o",
                ])
                .arg(dists.join("InRelease"))
                .arg(dists.join("Release")),
        );
    }

    /// Change the published Packages after signing, keeping its size, to break its hash.
    pub fn tamper_packages(&self) {
        let p = self
            .www()
            .join("debian/dists/bookworm/main/binary-amd64/Packages");
        // Same size, different bytes: only the hash can tell.
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("Version: 1.0", "Version: 9.0", 1);
        std::fs::write(p, t).unwrap();
    }
}

/// A static-file HTTP server on loopback over a directory; stops when dropped or asked.
/// Files listed in `truncate` are sent half-way with their full Content-Length.
pub struct Server {
    pub url: String,
    stop: Arc<AtomicBool>,
    pub truncate: Arc<Mutex<BTreeSet<String>>>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let truncate: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s2, t2, r2, root) = (
            stop.clone(),
            truncate.clone(),
            requests.clone(),
            root.to_path_buf(),
        );
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let path = request_path(&s);
                r2.lock().unwrap().push(path.clone());
                let file = root.join(path.trim_start_matches('/'));
                match std::fs::read(&file) {
                    Ok(b) if !path.contains("..") => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        );
                        let cut = if t2.lock().unwrap().contains(&path) {
                            b.len() / 2
                        } else {
                            b.len()
                        };
                        let _ = s.write_all(&b[..cut]);
                    }
                    _ => {
                        let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
        });
        Server {
            url,
            stop,
            truncate,
            requests,
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A copy of the static example whose manifest points at `mirror` with `keyring` and asks
/// for `packages`.
pub fn app_with(dir: &Path, mirror: &str, keyring: &Path, packages: &[&str]) -> PathBuf {
    let app = example_app(dir);
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let manifest = std::fs::read_to_string(app.join("fuse.toml"))
        .unwrap()
        .replace(
            "[system]\n",
            &format!(
                "[system]\nmirror = \"{mirror}/debian\"\nkeyring = \"{}\"\npackages = [{}]\n",
                keyring.display(),
                list.join(", ")
            ),
        );
    std::fs::write(app.join("fuse.toml"), manifest).unwrap();
    app
}
