//! `fuse deploy` / `fuse rollback` / `fuse envs` against a real libvirtd (started here when
//! it is not running, stopped by pid) and a real haproxy per test (empty backend, admin
//! socket in a temp dir). Images v1/v2/v3 of one small static app are built once; the
//! scenario runs as one long test so that servers boot side by side, not test after test.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const URI: &str = "qemu:///system";

/// The libvirt storage pool the tests' environments use.
const TEST_POOL: &str = "fusetest";

/// The app: answers `VERSION COLOR` (COLOR from the env, i.e. the environment's config);
/// v3 exits at start.
const APP_C: &str = r#"
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void on_term(int s) { (void)s; _exit(0); }
int main(void) {
    if (EXIT_AT_START) { fprintf(stderr, "app: exiting at start\n"); return 3; }
    const char *color = getenv("COLOR");
    if (!color) color = "none";
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(8080); a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) return 1;
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof req - 1);
        (void)n;
        char body[128], resp[512];
        int len = snprintf(body, sizeof body, "%s %s\n", VERSION, color);
        int rl = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n%s", len, body);
        ssize_t w = write(c, resp, rl);
        (void)w;
        close(c);
    }
}
"#;

pub struct Versions {
    /// v1, v2, v3 (exits at start).
    pub images: Vec<PathBuf>,
    pub digests: Vec<String>,
}

/// v1/v2/v3 built once per test run.
pub fn versions() -> &'static Versions {
    static V: OnceLock<Versions> = OnceLock::new();
    V.get_or_init(|| {
        let root = tmp_root().join("deploy-versions");
        let _ = std::fs::remove_dir_all(&root);
        let mut images = vec![];
        let mut digests = vec![];
        for (v, exit) in [("v1", 0), ("v2", 0), ("v3", 1)] {
            let app = root.join(v);
            std::fs::create_dir_all(&app).unwrap();
            std::fs::write(app.join("app.c"), APP_C).unwrap();
            let st = Command::new("gcc")
                .args(["-static", "-Os", "-s"])
                .arg(format!("-DVERSION=\"{v}\""))
                .arg(format!("-DEXIT_AT_START={exit}"))
                .arg("-o")
                .arg(app.join("app"))
                .arg(app.join("app.c"))
                .status()
                .expect("gcc");
            assert!(st.success(), "gcc -static failed");
            std::fs::write(
                app.join("fuse.toml"),
                format!(
                    "[image]\nname = \"dapp\"\nversion = \"{}\"\n\n[app]\nkind = \"binary\"\n\
                     path = \"app\"\nargs = []\nport = 8080\n\n[app.env]\nCOLOR = \"none\"\n\n\
                     [health]\nhttp = \"/\"\n\n[system]\ndistribution = \"debian/bookworm\"\n\
                     kernel = \"linux-image-amd64\"\n",
                    &v[1..]
                ),
            )
            .unwrap();
            let out = fuse(&["build", app.to_str().unwrap()], &[]);
            assert!(
                out.status.success(),
                "fuse build {v}:\n{}",
                text(&out.stderr)
            );
            let digest = text(&out.stdout).lines().last().unwrap().to_string();
            images.push(app.join(format!("fuse-out/dapp-{}.img", &v[1..])));
            digests.push(digest);
        }
        Versions { images, digests }
    })
}

/// The daemons this test run started and how many tests use them now.
struct Libvirtd {
    started: Vec<u32>,
    users: usize,
}

static LIBVIRTD: Mutex<Option<Libvirtd>> = Mutex::new(None);

/// libvirtd (and virtlogd) running while it lives: started when not running, stopped by pid
/// when the last test using them ends (only the ones started here).
struct LibvirtGuard;

impl Drop for LibvirtGuard {
    fn drop(&mut self) {
        let mut g = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = g.as_mut() {
            l.users -= 1;
            if l.users == 0 {
                forget_test_pool();
                for pid in l.started.iter().rev() {
                    // SAFETY: kill(2) of a daemon this test run started, by its pid.
                    unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
                    // The next test must not find it still shutting down (its pid file
                    // present, its socket about to go).
                    let t = Instant::now();
                    while alive(*pid) && t.elapsed() < Duration::from_secs(30) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                *g = None;
            }
        }
    }
}

/// The tests' storage pool stopped and undefined (its volumes stay in the temp dir).
fn forget_test_pool() {
    for cmd in ["pool-destroy", "pool-undefine"] {
        let _ = Command::new("virsh")
            .args(["-c", URI, cmd, TEST_POOL])
            .output();
    }
}

fn pid_of(pidfile: &str) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn libvirt_ready() -> Option<LibvirtGuard> {
    for t in ["libvirtd", "virtlogd", "virsh", "haproxy"] {
        if !require_tool(t) {
            return None;
        }
    }
    let mut g = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = g.as_mut() {
        l.users += 1;
    } else {
        let mut started = vec![];
        for (daemon, pidfile) in [
            ("virtlogd", "/run/virtlogd.pid"),
            ("libvirtd", "/run/libvirtd.pid"),
        ] {
            if pid_of(pidfile).is_some_and(alive) {
                continue;
            }
            std::fs::create_dir_all("/var/log/libvirt").unwrap();
            let st = Command::new(daemon).arg("-d").status().unwrap();
            assert!(st.success(), "{daemon} -d failed");
            let t = Instant::now();
            while pid_of(pidfile).is_none() && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
            started.push(pid_of(pidfile).expect("no pid file"));
        }
        // A pool left defined by an earlier run (libvirt keeps it across restarts) may
        // point at a directory that is gone.
        forget_test_pool();
        *g = Some(Libvirtd { started, users: 1 });
    }
    Some(LibvirtGuard)
}

/// One haproxy with an empty backend `dapp`, its frontend on a free loopback port.
struct Haproxy {
    dir: tempfile::TempDir,
    pid: u32,
    port: u16,
}

impl Haproxy {
    fn start() -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let sock = dir.path().join("admin.sock");
        let cfg = format!(
            "global\n    stats socket {} level admin\n\
             defaults\n    mode http\n    timeout connect 3s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    retries 3\n    option redispatch\n\
             frontend web\n    bind 127.0.0.1:{port}\n    default_backend dapp\n\
             backend dapp\n    balance roundrobin\n\
             backend other\n    balance roundrobin\n",
            sock.display()
        );
        std::fs::write(dir.path().join("haproxy.cfg"), cfg).unwrap();
        let pidfile = dir.path().join("haproxy.pid");
        let st = Command::new("haproxy")
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .arg("-D")
            .arg("-p")
            .arg(&pidfile)
            .status()
            .unwrap();
        assert!(st.success(), "haproxy did not start");
        let t = Instant::now();
        while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Haproxy { dir, pid, port }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the haproxy this test started, by its pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
    }
}

/// A project dir: fuse-envs.toml (test: 2 servers with config, prod: 1), test.env.
fn project(h: &Haproxy, dir: &Path, backend: &str, uri: &str) {
    std::fs::write(dir.join("test.env"), "COLOR=teal\n").unwrap();
    std::fs::write(
        dir.join("fuse-envs.toml"),
        format!(
            "order = [\"test\", \"prod\"]\nledger = \"ledger.jsonl\"\n\
             [env.test]\ntarget = \"libvirt\"\ninstances = 2\nconfig = \"test.env\"\n\
             health_timeout = \"600s\"\ndrain = \"3s\"\n\
             [env.test.libvirt]\nuri = \"{uri}\"\npool = \"{TEST_POOL}\"\npool_dir = \"{pool}\"\n\
             [env.test.haproxy]\nsocket = \"{sock}\"\nbackend = \"{backend}\"\n\
             [env.prod]\ntarget = \"libvirt\"\ninstances = 1\n\
             [env.prod.libvirt]\npool = \"{TEST_POOL}\"\npool_dir = \"{pool}\"\n\
             [env.prod.haproxy]\nsocket = \"{sock}\"\nbackend = \"other\"\n",
            pool = tmp_root().join("deploy-pool").display(),
            sock = h.dir.path().join("admin.sock").display(),
        ),
    )
    .unwrap();
}

fn get(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| e.to_string())?;
    if !r.starts_with("HTTP/1.1 200") && !r.starts_with("HTTP/1.0 200") {
        return Err(r.lines().next().unwrap_or("").to_string());
    }
    Ok(r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

/// A request loop against the frontend (20 requests/s) while `f` runs: (answers, failures).
fn under_load<T>(port: u16, f: impl FnOnce() -> T) -> (T, Vec<String>, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || {
        let (mut ok, mut bad) = (vec![], vec![]);
        while !s2.load(Ordering::SeqCst) {
            match get(port) {
                Ok(a) => ok.push(a),
                Err(e) => bad.push(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (ok, bad)
    });
    let r = f();
    stop.store(true, Ordering::SeqCst);
    let (ok, bad) = h.join().unwrap();
    (r, ok, bad)
}

fn domains() -> Vec<String> {
    let o = Command::new("virsh")
        .args(["-q", "-c", URI, "list", "--name"])
        .output()
        .unwrap();
    text(&o.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Prints the steps of the last deployment with their times (where a deploy spends them).
fn print_steps(what: &str, dir: &Path, data: &Path) {
    let e = envs_json(dir, data);
    let steps = e["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|l| l["deploy"]["steps"].as_array().cloned())
        .unwrap_or_default();
    let line: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}s",
                s["step"].as_str().unwrap_or("?"),
                s["ms"].as_f64().unwrap_or(0.0) / 1000.0
            )
        })
        .collect();
    eprintln!("{what}: {}", line.join(", "));
}

fn envs_json(dir: &Path, data: &Path) -> serde_json::Value {
    let o = fuse_in(dir, data, &["envs", "--json"], &[]);
    assert!(o.status.success(), "envs: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A copy of `img` whose app layer has one byte changed (its image.json unchanged).
fn tampered(img: &Path, out: &Path) {
    let mut b = std::fs::read(img).unwrap();
    // The last squashfs superblock is the app layer's; change a byte of its data.
    let at = b
        .windows(4)
        .rposition(|w| w == b"hsqs")
        .expect("no squashfs layer");
    b[at + 200] ^= 0x55;
    std::fs::write(out, b).unwrap();
}

/// Destroys this test's domains (`fuse-test-dapp-*`) when the test ends, passed or not: a
/// failed assertion must not leave guests running on the machine.
struct DomainsGuard;

impl Drop for DomainsGuard {
    fn drop(&mut self) {
        for d in domains()
            .iter()
            .filter(|d| d.starts_with("fuse-test-dapp-"))
        {
            let _ = Command::new("virsh")
                .args(["-c", URI, "destroy", d])
                .output();
        }
    }
}

/// Held by each test that starts servers or counts them: the errors test's "nothing
/// started" compares every libvirt domain before and after.
static SERVERS: Mutex<()> = Mutex::new(());

#[test]
fn errors_are_clear_and_nothing_starts() {
    let Some(_libvirt) = libvirt_ready() else {
        return;
    };
    let _servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let v = versions();
    let h = Haproxy::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let v1 = v.images[0].to_str().unwrap();
    let before = domains();
    // libvirt not reachable.
    project(
        &h,
        dir.path(),
        "dapp",
        "qemu+unix:///system?socket=/nonexistent/sock",
    );
    let o = fuse_in(dir.path(), &data, &["deploy", v1, "test"], &[]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("not reachable") && e.contains("/nonexistent/sock"),
        "{e}"
    );
    // A backend that does not exist.
    project(&h, dir.path(), "nosuch", URI);
    let o = fuse_in(dir.path(), &data, &["deploy", v1, "test"], &[]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no backend \"nosuch\""), "{e}");
    // The HAProxy socket missing.
    project(&h, dir.path(), "dapp", URI);
    let toml = std::fs::read_to_string(dir.path().join("fuse-envs.toml")).unwrap();
    std::fs::write(
        dir.path().join("fuse-envs.toml"),
        toml.replace("admin.sock", "missing.sock"),
    )
    .unwrap();
    let o = fuse_in(dir.path(), &data, &["deploy", v1, "test"], &[]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("missing.sock") && e.contains("cannot connect"),
        "{e}"
    );
    // prod before test: refused.
    project(&h, dir.path(), "dapp", URI);
    let o = fuse_in(dir.path(), &data, &["deploy", v1, "prod"], &[]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("never promoted to test"), "{e}");
    // promote refuses an environment with a target.
    let o = fuse_in(dir.path(), &data, &["promote", v1, "test"], &[]);
    assert!(
        text(&o.stderr).contains("fuse deploy"),
        "{}",
        text(&o.stderr)
    );
    // Nothing was started, nothing recorded.
    assert_eq!(domains(), before);
    assert!(!dir.path().join("ledger.jsonl").exists());
}

#[test]
fn blue_green_deploy_gates_and_rollback() {
    let Some(_libvirt) = libvirt_ready() else {
        return;
    };
    let _servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let _domains = DomainsGuard;
    let v = versions();
    let h = Haproxy::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    project(&h, dir.path(), "dapp", URI);
    let [v1, v2, v3] = [0, 1, 2].map(|i| v.images[i].to_str().unwrap().to_string());
    let t = Instant::now();

    // v1, 2 servers: the frontend answers v1 with the env's config value.
    let o = fuse_in(dir.path(), &data, &["deploy", &v1, "test"], &[]);
    assert!(o.status.success(), "deploy v1: {}", text(&o.stderr));
    assert_eq!(get(h.port).unwrap(), "v1 teal");
    let e = envs_json(dir.path(), &data);
    let v1_servers: Vec<String> = e["servers"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(v1_servers.len(), 2);
    eprintln!("deploy v1: {:.0}s", t.elapsed().as_secs_f64());
    print_steps("deploy v1", dir.path(), &data);

    // v2 under load: zero failed requests, answers move from v1 to v2, v1's domains gone.
    let t = Instant::now();
    let (o, ok, bad) = under_load(h.port, || {
        fuse_in(dir.path(), &data, &["deploy", &v2, "test"], &[])
    });
    assert!(o.status.success(), "deploy v2: {}", text(&o.stderr));
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "deploy v2: {secs:.0}s, {} requests, {} failed",
        ok.len(),
        bad.len()
    );
    print_steps("deploy v2", dir.path(), &data);
    assert!(bad.is_empty(), "failed requests during deploy v2: {bad:?}");
    assert!(
        ok.len() as f64 >= 10.0 * secs * 0.5,
        "the loop ran too few requests"
    );
    assert_eq!(ok.first().map(String::as_str), Some("v1 teal"));
    assert_eq!(ok.last().map(String::as_str), Some("v2 teal"));
    let now = domains();
    assert!(v1_servers.iter().all(|s| !now.contains(s)), "{now:?}");

    // v3 exits at start: exit 5, zero failed requests, v2 still answers, no v3 domain.
    let (o, ok, bad) = under_load(h.port, || {
        fuse_in(dir.path(), &data, &["deploy", &v3, "test"], &[])
    });
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("gate") && err.contains("app exited"), "{err}");
    print_steps("deploy v3", dir.path(), &data);
    assert!(bad.is_empty(), "failed requests during deploy v3: {bad:?}");
    assert!(ok.iter().all(|a| a == "v2 teal"), "{ok:?}");
    let v3_short = &v.digests[2]["sha256:".len().."sha256:".len() + 12];
    assert!(domains().iter().all(|d| !d.contains(v3_short)));
    let e = envs_json(dir.path(), &data);
    let hist = e["history"].as_array().unwrap();
    let last = hist.last().unwrap();
    assert_eq!(last["digest"], v.digests[2].as_str());
    assert_eq!(last["deploy"]["result"], "failed");
    let cur = e["current"].as_array().unwrap();
    assert_eq!(cur[0]["digest"], v.digests[1].as_str());

    // A tampered app layer fails the identity gate before traffic moves.
    let bad_img = dir.path().join("tampered.img");
    tampered(&v.images[1], &bad_img);
    let (o, ok, bad) = under_load(h.port, || {
        fuse_in(
            dir.path(),
            &data,
            &["deploy", bad_img.to_str().unwrap(), "test"],
            &[],
        )
    });
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("identity gate"), "{err}");
    assert!(
        bad.is_empty() && ok.iter().all(|a| a == "v2 teal"),
        "{bad:?} {ok:?}"
    );

    // Rollback brings v1 back with zero failed requests.
    let (o, ok, bad) = under_load(h.port, || {
        fuse_in(dir.path(), &data, &["rollback", "test"], &[])
    });
    assert!(o.status.success(), "rollback: {}", text(&o.stderr));
    assert!(bad.is_empty(), "failed requests during rollback: {bad:?}");
    assert_eq!(ok.last().map(String::as_str), Some("v1 teal"));
    assert_eq!(get(h.port).unwrap(), "v1 teal");
}

/// One command on the test haproxy's admin socket.
fn admin(h: &Haproxy, cmd: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(h.dir.path().join("admin.sock")).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The backend `dapp` (`show servers state dapp`): (server, op state, admin state), sorted.
fn backend(h: &Haproxy) -> Vec<(String, u32, u32)> {
    let mut v: Vec<(String, u32, u32)> = admin(h, "show servers state dapp")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 7 {
                return None;
            }
            Some((f[3].to_string(), f[5].parse().ok()?, f[6].parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// Every libvirt domain of this test's environment (`virsh list --all`), sorted.
fn test_domains() -> Vec<String> {
    let o = Command::new("virsh")
        .args(["-q", "-c", URI, "list", "--all", "--name"])
        .output()
        .unwrap();
    let mut v: Vec<String> = text(&o.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("fuse-test-dapp-"))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// The servers the ledger names as test's current ones (its last successful deployment).
fn ledger_current(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("ledger.jsonl")).unwrap();
    let last = text
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["env"] == "test" && e["deploy"]["result"] == "ok")
        .expect("no successful deployment to test");
    let mut v: Vec<String> = last["deploy"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// A backend holding exactly `names`, each running and ready (op 2, admin 0).
fn serving(names: &[String]) -> Vec<(String, u32, u32)> {
    names.iter().map(|n| (n.clone(), 2, 0)).collect()
}

#[test]
fn deploy_killed_at_each_step_is_cleaned_up_and_never_drops_traffic() {
    let Some(_libvirt) = libvirt_ready() else {
        return;
    };
    let _servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let _domains = DomainsGuard;
    let v = versions();
    let h = Haproxy::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    project(&h, dir.path(), "dapp", URI);
    let [v1, v2] = [0, 1].map(|i| v.images[i].to_str().unwrap().to_string());
    let t = Instant::now();
    let o = fuse_in(dir.path(), &data, &["deploy", &v1, "test"], &[]);
    assert!(o.status.success(), "deploy v1: {}", text(&o.stderr));
    let v1_servers = ledger_current(dir.path());
    assert_eq!(v1_servers.len(), 2);
    assert_eq!(test_domains(), v1_servers);
    assert_eq!(backend(&h), serving(&v1_servers));

    let flag = dir.path().join("paused");
    let log = dir.path().join("deploy.log");
    // Each point in flow order; a kill at each leaves what the comment says, then `fuse
    // envs` must leave exactly the ledger's current servers running and in the backend.
    for point in [
        "deploy:image-put",       // v2's volume, nothing else
        "deploy:servers-started", // + 2 v2 domains booting, outside the backend
        "deploy:healthy",         // + 2 v2 domains answering, outside the backend
        "deploy:switched",        // 4 servers ready in the backend: v1 and v2 answer
        "deploy:drained",         // v1 draining (no new requests), v2 serving
        "deploy:removed",         // v1 out of the backend but running, not recorded yet
        "deploy:recorded",        // the ledger names v2; v1 still running
    ] {
        let _ = std::fs::remove_file(&flag);
        let before = ledger_current(dir.path());
        let (new, ok, bad) = under_load(h.port, || {
            let mut c = Fuse::new(["deploy", &v2, "test"])
                .dir(dir.path())
                .data(&data)
                .env("USER", "tester")
                .env("FUSE_TEST_PAUSE", point)
                .env("FUSE_TEST_PAUSE_FILE", &flag)
                .command();
            c.stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut child = c.spawn().unwrap();
            let started = Instant::now();
            while !flag.exists() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "deploy ended ({st}) before {point}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                assert!(
                    started.elapsed() < Duration::from_secs(900),
                    "{point} not reached in 900s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Paused: the state the point names.
            let doms = test_domains();
            let new: Vec<String> = doms
                .iter()
                .filter(|d| !before.contains(d))
                .cloned()
                .collect();
            let old_ready = serving(&before);
            let be = backend(&h);
            match point {
                "deploy:image-put" => assert_eq!(doms, before),
                "deploy:servers-started" | "deploy:healthy" => {
                    assert_eq!(new.len(), 2, "{doms:?}");
                    assert_eq!(be, old_ready);
                }
                "deploy:switched" => {
                    let mut all = doms.clone();
                    all.sort();
                    assert_eq!(be, serving(&all));
                }
                "deploy:drained" => {
                    let drained: Vec<_> = before.iter().map(|n| (n.clone(), 2, 8)).collect();
                    let mut want = [drained, serving(&new)].concat();
                    want.sort();
                    assert_eq!(be, want);
                    // `fuse envs` meanwhile must not take the running deployment's servers
                    // for leftovers (v1 drains: that would empty the backend).
                    let o = fuse_in(dir.path(), &data, &["envs"], &[]);
                    assert!(o.status.success(), "envs: {}", text(&o.stderr));
                    assert_eq!(test_domains(), doms);
                    assert_eq!(backend(&h), want);
                }
                "deploy:removed" => assert_eq!(be, serving(&new)),
                "deploy:recorded" => {
                    assert_eq!(be, serving(&new));
                    assert_eq!(ledger_current(dir.path()), new);
                }
                _ => unreachable!(),
            }
            // SAFETY: kill(2) of the child this test spawned and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let st = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL)
            );
            let o = fuse_in(dir.path(), &data, &["envs"], &[]);
            assert!(
                o.status.success(),
                "envs after {point}: {}",
                text(&o.stderr)
            );
            new
        });
        let current = ledger_current(dir.path());
        let (want, answer) = if point == "deploy:recorded" {
            (new.clone(), "v2 teal")
        } else {
            (before.clone(), "v1 teal")
        };
        eprintln!(
            "killed at {point}: {} v2 server(s) left, {} requests, {} failed, {:.0}s so far",
            new.len(),
            ok.len(),
            bad.len(),
            t.elapsed().as_secs_f64()
        );
        assert!(bad.is_empty(), "failed requests around {point}: {bad:?}");
        assert!(
            ok.iter().all(|a| a == "v1 teal" || a == "v2 teal"),
            "{ok:?}"
        );
        assert_eq!(current, want, "the ledger's servers after {point}");
        assert_eq!(test_domains(), current, "domains after {point}");
        assert_eq!(backend(&h), serving(&current), "backend after {point}");
        assert_eq!(get(h.port).unwrap(), answer, "after {point}");
    }

    // A deployment after all that is clean: v2 on 2 new servers, nothing else.
    let (o, ok, bad) = under_load(h.port, || {
        fuse_in(dir.path(), &data, &["deploy", &v2, "test"], &[])
    });
    assert!(o.status.success(), "deploy v2: {}", text(&o.stderr));
    assert!(
        bad.is_empty(),
        "failed requests during the last deploy: {bad:?}"
    );
    assert!(ok.iter().all(|a| a == "v2 teal"), "{ok:?}");
    let current = ledger_current(dir.path());
    assert_eq!(current.len(), 2);
    assert_eq!(test_domains(), current);
    assert_eq!(backend(&h), serving(&current));
    eprintln!(
        "deploy killed at 7 points, cleaned, deployed: {:.0}s",
        t.elapsed().as_secs_f64()
    );
}
