//! Builds that survive each other, SIGKILL and full disks, against the tests' own archive
//! (the real kernel and stub copied from the shared cache) served on loopback by a server
//! that sends large files slowly and logs when each request started and ended.
//!
//! One cold-cache run serves several checks (cold downloads are the expensive part):
//! three builds at once on one cold cache, then a second cold cache killed while
//! downloading, while building units and while writing the image, built again to the
//! clean digest; then (as root) full output and cache file systems.

use crate::fixture::{app_with, Archive};
use crate::support::*;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request: path, when it started, when its last byte was sent.
type Log = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

/// A static-file server, one thread per connection, sending files over 1 MiB in 256 KiB
/// pieces 4 ms apart (a 70 MB kernel package takes about a second): downloads overlap
/// when nothing stops them.
struct SlowServer {
    url: String,
    log: Log,
    stop: Arc<AtomicBool>,
}

impl SlowServer {
    fn start(root: PathBuf) -> SlowServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (root, log) = (root.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let mut s = s;
                    let path = crate::fixture::request_path(&s);
                    let start = Instant::now();
                    match std::fs::read(root.join(path.trim_start_matches('/'))) {
                        Ok(b) if !path.contains("..") => {
                            let _ = write!(
                                s,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b.len()
                            );
                            for piece in b.chunks(256 << 10) {
                                if s.write_all(piece).is_err() {
                                    break;
                                }
                                if b.len() > 1 << 20 {
                                    std::thread::sleep(Duration::from_millis(4));
                                }
                            }
                        }
                        _ => {
                            let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        }
                    }
                    log.lock().unwrap().push((path, start, Instant::now()));
                });
            }
        });
        SlowServer { url, log, stop }
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn spawn_build(app: &Path, cache: &Path, env: &[(&str, &str)], extra: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fuse"));
    c.arg("build")
        .arg(app)
        .args(extra)
        .env("FUSE_CACHE_DIR", cache)
        .env("FUSE_DATA_DIR", data_dir())
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("cannot run fuse")
}

fn digest(out: std::process::Output) -> String {
    assert!(out.status.success(), "build failed:\n{}", text(&out.stderr));
    text(&out.stdout).lines().last().unwrap().to_string()
}

/// Wait until `cond` holds (polling), or panic after `limit` naming `what`.
fn wait_for(what: &str, limit: Duration, child: &mut Child, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the build ended ({st}) before {what}:\n{err}");
        }
        assert!(t.elapsed() < limit, "{what} did not happen in {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill9(mut child: Child) {
    // SAFETY: kill with a pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let st = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every blob of a cache hashes to its name (nothing truncated is trusted).
fn assert_cache_verified(cache: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(cache.join("sha256")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".tmp-"),
            "temp file {name} left in the cache"
        );
        let got = sha256_file(&e.path());
        assert_eq!(
            got,
            format!("sha256:{name}"),
            "cached blob {name} is corrupt"
        );
        n += 1;
    }
    assert!(n > 0);
}

fn file_with_len(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(suffix)
                    && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// A tmpfs of `size` mounted on a new directory under `root`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(root: &Path, name: &str, size: &str) -> Tmpfs {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn builds_survive_each_other_sigkill_and_full_disks() {
    let mut a = Archive::new();
    a.add_kernel_and_stub();
    a.add_package("fuse-extra", "1.0", "", &[("usr/share/fuse-extra/x", b"x")]);
    a.publish(None, None);
    let server = SlowServer::start(a.www());
    let dir = tempfile::tempdir().unwrap();
    let app = |name: &str, packages: &[&str]| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        app_with(&d, &server.url, &a.keyring(), packages)
    };

    // 1. Three builds at once on one cold cache: two of one app, one of another.
    let cache = dir.path().join("cache-shared");
    let (a1, a2, b) = (app("a1", &[]), app("a2", &[]), app("b", &["fuse-extra"]));
    let started = Instant::now();
    let kids: Vec<Child> = [&a1, &a2, &b]
        .iter()
        .map(|app| spawn_build(app, &cache, &[], &[]))
        .collect();
    let outs: Vec<_> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    eprintln!(
        "three cold builds at once: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let digests: Vec<String> = outs.into_iter().map(digest).collect();
    assert_eq!(digests[0], digests[1], "the same app, two digests");
    assert_ne!(digests[0], digests[2]);
    let clean = digests[0].clone();
    // No file was downloaded twice at the same time (InRelease is asked by every build).
    let log = server.log.lock().unwrap().clone();
    for (i, (p, s1, e1)) in log.iter().enumerate() {
        if p.ends_with("InRelease") {
            continue;
        }
        for (q, s2, e2) in &log[i + 1..] {
            assert!(
                p != q || e1 <= s2 || e2 <= s1,
                "{p} was downloaded twice at the same time"
            );
        }
    }
    let lock = fuse::resolve::lock::Lock::load(&a1.join("fuse.lock"))
        .unwrap()
        .unwrap();
    let kernel_gets = log
        .iter()
        .filter(|(p, ..)| p.ends_with(&format!("/{}.deb", lock.kernel.name)))
        .count();
    assert_eq!(
        kernel_gets, 1,
        "the kernel package was downloaded {kernel_gets} times"
    );
    assert_cache_verified(&cache);

    // 2. A second cold cache, one build killed at three points, then built again.
    let cache2 = dir.path().join("cache-killed");
    let c = app("c", &[]);
    let out = c.join("fuse-out");
    // While downloading: the kernel's partial file has bytes.
    let mut k = spawn_build(&c, &cache2, &[], &[]);
    wait_for(
        "a partial download",
        Duration::from_secs(300),
        &mut k,
        || file_with_len(&cache2.join("partial"), ".part"),
    );
    kill9(k);
    // While building units: paused after the kernel unit is cached.
    let flag = dir.path().join("paused");
    let flag_s = flag.to_str().unwrap().to_string();
    for point in ["units", "write:hello-1.0.0.img"] {
        let _ = std::fs::remove_file(&flag);
        let mut k = spawn_build(
            &c,
            &cache2,
            &[
                ("FUSE_TEST_PAUSE", point),
                ("FUSE_TEST_PAUSE_FILE", &flag_s),
            ],
            &[],
        );
        wait_for(point, Duration::from_secs(600), &mut k, || flag.exists());
        if point.starts_with("write:") {
            // Half the image is in a temp file beside its destination.
            assert_eq!(temp_files(&out).len(), 1, "no temp file while writing");
        }
        kill9(k);
        assert!(!out.join("hello-1.0.0.img").exists());
    }
    let rebuilt = digest(
        spawn_build(&c, &cache2, &[], &[])
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(
        rebuilt, clean,
        "a build after three kills differs from a clean one"
    );
    assert_eq!(temp_files(&out), Vec::<String>::new());
    assert_eq!(sha256_file(&out.join("hello-1.0.0.img")), clean);
    assert_cache_verified(&cache2);

    // 3. Full disks (a tmpfs needs root).
    let root = unsafe { libc::geteuid() } == 0;
    if !require(root, "root (to mount a small tmpfs)") {
        return;
    }
    // The output directory on a full file system: exit 2 naming the path, nothing left.
    let full_out = Tmpfs::mount(dir.path(), "full-out", "1m");
    let r = spawn_build(&a1, &cache, &[], &["--out", full_out.0.to_str().unwrap()])
        .wait_with_output()
        .unwrap();
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&full_out.0.join("hello-1.0.0.img").display().to_string())
            && err.to_lowercase().contains("no space left"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&full_out.0).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(full_out);
    // The cache on a full file system: a clear error (or a build), then the same cache on
    // a large disk builds the clean digest.
    let full_cache = Tmpfs::mount(dir.path(), "full-cache", "8m");
    let d = app("d", &[]);
    let r = spawn_build(&d, &full_cache.0, &[], &[])
        .wait_with_output()
        .unwrap();
    let err = text(&r.stderr);
    if !r.status.success() {
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert!(err.to_lowercase().contains("no space left"), "{err}");
    }
    full_cache.resize("2g");
    let r = spawn_build(&d, &full_cache.0, &[], &[])
        .wait_with_output()
        .unwrap();
    assert_eq!(digest(r), clean);
    assert_cache_verified(&full_cache.0);
}
