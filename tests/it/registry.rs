//! OCI registry tests against the real distribution registry (Debian's `docker-registry`),
//! started on loopback per test, with a small loopback proxy in front that counts the blob
//! bytes really sent and can demand Basic or Bearer-token authentication.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry` serving on 127.0.0.1, storing in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} (package docker-registry) is needed: scripts/setup.sh installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = fuse::vm::free_port().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        let r = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(port, "/v2/") {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "docker-registry did not answer on 127.0.0.1:{port}: {}",
            std::fs::read_to_string(r.dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic,
    Bearer,
}

pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret-pw";
const TOKEN: &str = "token-42";

/// A loopback proxy in front of a registry: one request per connection, counts the bytes of
/// blob upload bodies, enforces `auth`.
pub struct Proxy {
    pub port: u16,
    pub uploaded: Arc<AtomicU64>,
}

/// Request line, headers, body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

fn read_request(s: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    s.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if s.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.trim_end().split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((line.trim_end().to_string(), headers, body))
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let _ = s.write_all(r.as_bytes());
    let _ = s.write_all(body);
}

impl Proxy {
    pub fn start(upstream: u16, auth: Auth) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let uploaded = Arc::new(AtomicU64::new(0));
        let up = uploaded.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let up = up.clone();
                std::thread::spawn(move || handle(conn, upstream, port, auth, &up));
            }
        });
        Proxy { port, uploaded }
    }
}

fn handle(conn: TcpStream, upstream: u16, port: u16, auth: Auth, uploaded: &AtomicU64) {
    let mut first = [0u8; 1];
    if conn.peek(&mut first).is_err() || first[0] == 0x16 {
        return; // a TLS ClientHello: this proxy speaks plain HTTP only; hang up at once
    }
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let Some((line, headers, body)) = read_request(&mut r) else {
        return;
    };
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let authz = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let basic = fuse::oci::auth::Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    }
    .basic_header();
    if auth == Auth::Bearer && path.starts_with("/token") {
        if authz == basic {
            respond(
                &mut out,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
            );
        } else {
            respond(&mut out, "401 Unauthorized", &[], b"{}");
        }
        return;
    }
    let ok = match auth {
        Auth::None => true,
        Auth::Basic => authz == basic,
        Auth::Bearer => authz == format!("Bearer {TOKEN}"),
    };
    if !ok {
        let challenge = match auth {
            Auth::Basic => "Basic realm=\"test-registry\"".to_string(),
            _ => {
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split("/blobs/").next())
                    .and_then(|p| p.split("/manifests/").next())
                    .unwrap_or("");
                format!(
                    "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\",scope=\"repository:{repo}:pull,push\""
                )
            }
        };
        respond(
            &mut out,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
        );
        return;
    }
    if method == "PUT" && path.contains("/blobs/uploads/") {
        uploaded.fetch_add(body.len() as u64, Ordering::SeqCst);
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    let mut req = format!("{line}\r\n");
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("authorization") {
            continue;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes()).unwrap();
    up.write_all(&body).unwrap();
    let mut resp = Vec::new();
    let _ = up.read_to_end(&mut resp);
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let mut new_head = String::new();
    for l in head.split("\r\n") {
        if l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        new_head.push_str(l);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let _ = out.write_all(new_head.as_bytes());
    let _ = out.write_all(&resp[end + 4..]);
}

/// The example with a changed app binary (same manifest, same version): built once.
pub fn changed_image() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        example_image("changed-app-build", |app| {
            let mut bytes = std::fs::read(app.join("hello")).unwrap();
            bytes.extend_from_slice(b"\0second version of the app");
            std::fs::write(app.join("hello"), bytes).unwrap();
        })
    })
}

/// The "push: N bytes sent" figure fuse reports on stderr.
fn reported_bytes(stderr: &str) -> u64 {
    let i = stderr.find("push: ").expect("no push summary on stderr");
    stderr[i + 6..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn push_pull_is_byte_identical_and_a_new_app_sends_only_changed_blobs() {
    let a = shared_image();
    let b = changed_image();
    let reg = Registry::start();
    let proxy = Proxy::start(reg.port, Auth::None);
    let data = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", proxy.port);
    let disk_a = std::fs::read(&a.image).unwrap();
    let disk_b = std::fs::read(&b.image).unwrap();
    let art_a = fuse::oci::artifact(&disk_a, false).unwrap();
    let art_b = fuse::oci::artifact(&disk_b, false).unwrap();

    // Without --insecure, plain HTTP is refused.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            a.image.to_str().unwrap(),
            &format!("{host}/team/hello"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(proxy.uploaded.load(Ordering::SeqCst), 0);

    // First push: everything is sent.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            a.image.to_str().unwrap(),
            &format!("{host}/team/hello"),
            "--insecure",
        ],
        &[],
    );
    let stdout = ok(&out, "push A");
    let first = proxy.uploaded.swap(0, Ordering::SeqCst);
    assert_eq!(
        stdout.lines().next().unwrap(),
        format!("{host}/team/hello:1.0.0@{}", art_a.manifest_digest),
        "the tag defaults to the version; the manifest digest is the artifact's"
    );
    assert_eq!(stdout.lines().last().unwrap(), a.digest);
    // Each distinct blob once: pieces that repeat within the disk (the ESP's free space is
    // cut into equal 256 KiB pieces) are one blob.
    let distinct = |art: &fuse::oci::Artifact| -> std::collections::BTreeMap<String, u64> {
        art.blobs
            .iter()
            .map(|(d, _)| d)
            .chain([&art.manifest.config])
            .map(|d| (d.digest.clone(), d.size))
            .collect()
    };
    let total_a: u64 = distinct(&art_a).values().sum();
    assert!(total_a <= disk_a.len() as u64 + art_a.config.len() as u64);
    assert_eq!(
        first, total_a,
        "the first push sends each distinct piece of the disk and image.json once"
    );
    assert_eq!(reported_bytes(&text(&out.stderr)), first);

    // Pushing the same image again sends no blob at all.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            a.image.to_str().unwrap(),
            &format!("{host}/team/hello:again"),
            "--insecure",
        ],
        &[],
    );
    ok(&out, "push A again");
    assert_eq!(proxy.uploaded.swap(0, Ordering::SeqCst), 0);

    // Second version, only the app changed: only the changed chunks go over the wire.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            b.image.to_str().unwrap(),
            &format!("{host}/team/hello:v2"),
            "--insecure",
        ],
        &[],
    );
    ok(&out, "push B");
    let second = proxy.uploaded.swap(0, Ordering::SeqCst);
    let known: std::collections::BTreeSet<&str> = art_a
        .blobs
        .iter()
        .map(|(d, _)| d.digest.as_str())
        .chain([art_a.manifest.config.digest.as_str()])
        .collect();
    let changed: u64 = distinct(&art_b)
        .iter()
        .filter(|(d, _)| !known.contains(d.as_str()))
        .map(|(_, size)| size)
        .sum();
    let title = |d: &fuse::oci::Descriptor| {
        d.annotations
            .get(fuse::oci::ANN_TITLE)
            .cloned()
            .unwrap_or_default()
    };
    let mut changed_names: Vec<String> = art_b
        .blobs
        .iter()
        .map(|(d, _)| d)
        .filter(|d| !known.contains(d.digest.as_str()))
        .map(title)
        // the ESP's long chunks are cut into fixed pieces (`<name>#<n>`)
        .map(|t| t.split('#').next().unwrap_or_default().to_string())
        .collect();
    changed_names.sort();
    changed_names.dedup();
    assert_eq!(
        changed_names,
        [
            "fuse-app",
            "fuse-esp",
            "fuse-esp/EFI/BOOT/BOOTX64.EFI",
            "fuse-esp/fuse/image.json",
            "gpt-backup",
            "gpt-header"
        ],
        "an app change changes the app layer, the UKI (its boot plan holds the app layer's \
         dm-verity root hash), the ESP around it, image.json and the GPT's GUIDs, nothing \
         else (the base layer and the padding are the same blobs)"
    );
    let base = art_b
        .blobs
        .iter()
        .find(|(d, _)| {
            d.annotations.get(fuse::oci::ANN_TITLE).map(String::as_str) == Some("fuse-base")
        })
        .map(|(d, _)| d.clone())
        .expect("a fuse-base chunk");
    assert!(
        known.contains(base.digest.as_str()),
        "the base layer is unchanged"
    );
    eprintln!(
        "first push {first} bytes; second push {second} bytes (changed chunks {changed}; base layer {} bytes not re-sent)",
        base.size
    );
    assert_eq!(second, changed, "bytes on the wire = the changed chunks");
    assert_eq!(reported_bytes(&text(&out.stderr)), second);
    assert!(second + base.size <= disk_b.len() as u64 + art_b.config.len() as u64);
    assert!(second < first);

    // Pull by tag: the identical bytes, written as <name>-<version>.img, and stored.
    let out_dir = tempfile::tempdir().unwrap();
    let out = fuse_with(
        data.path(),
        &[
            "pull",
            &format!("{host}/team/hello:1.0.0"),
            "--out",
            out_dir.path().to_str().unwrap(),
            "--insecure",
        ],
        &[],
    );
    let stdout = ok(&out, "pull A");
    assert_eq!(stdout.lines().last().unwrap(), a.digest);
    let pulled = out_dir.path().join("hello-1.0.0.img");
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        disk_a,
        "pulled bytes differ"
    );
    assert_eq!(
        std::fs::read(out_dir.path().join("hello-1.0.0.json")).unwrap(),
        std::fs::read(&a.json).unwrap(),
        "image.json differs from the one fuse build wrote"
    );
    let ls = ok(&fuse_with(data.path(), &["ls", "--json"], &[]), "ls");
    assert!(ls.contains(&a.digest), "{ls}");

    // Pull by manifest digest gives the second version.
    let out2 = tempfile::tempdir().unwrap();
    let out = fuse_with(
        data.path(),
        &[
            "pull",
            &format!("{host}/team/hello@{}", art_b.manifest_digest),
            "--out",
            out2.path().to_str().unwrap(),
            "--insecure",
        ],
        &[],
    );
    ok(&out, "pull B by digest");
    assert_eq!(
        std::fs::read(out2.path().join("hello-1.0.0.img")).unwrap(),
        disk_b
    );

    // A single-blob push round-trips too.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            a.image.to_str().unwrap(),
            &format!("{host}/whole:1"),
            "--whole",
            "--insecure",
        ],
        &[],
    );
    ok(&out, "push --whole");
    let out3 = tempfile::tempdir().unwrap();
    let out = fuse_with(
        data.path(),
        &[
            "pull",
            &format!("{host}/whole:1"),
            "--out",
            out3.path().to_str().unwrap(),
            "--insecure",
        ],
        &[],
    );
    ok(&out, "pull whole");
    assert_eq!(
        std::fs::read(out3.path().join("hello-1.0.0.img")).unwrap(),
        disk_a
    );
}

#[test]
fn a_corrupted_blob_is_detected_and_nothing_is_stored() {
    let a = shared_image();
    let reg = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", reg.port);
    ok(
        &fuse_with(
            data.path(),
            &[
                "push",
                a.image.to_str().unwrap(),
                &format!("{host}/hello:1"),
                "--insecure",
            ],
            &[],
        ),
        "push",
    );
    // Flip one byte in the middle of the app layer's blob in the registry's storage.
    let art = fuse::oci::artifact(&std::fs::read(&a.image).unwrap(), false).unwrap();
    let app = art
        .blobs
        .iter()
        .find(|(d, _)| {
            d.annotations.get(fuse::oci::ANN_TITLE).map(String::as_str) == Some("fuse-app")
        })
        .unwrap()
        .0
        .clone();
    let file = reg.blob_file(&app.digest);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let out_dir = fresh.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = fuse_with(
        fresh.path(),
        &[
            "pull",
            &format!("{host}/hello:1"),
            "--out",
            out_dir.to_str().unwrap(),
            "--insecure",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not match its digest") && stderr.contains(&app.digest),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "a file was written"
    );
    let ls = ok(&fuse_with(fresh.path(), &["ls", "--json"], &[]), "ls");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ls).unwrap(),
        serde_json::json!([])
    );
    assert!(
        !fresh.path().join("images/sha256").exists()
            || std::fs::read_dir(fresh.path().join("images/sha256"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn bearer_token_and_basic_auth_are_answered() {
    let a = shared_image();
    let reg = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let image = a.image.to_str().unwrap();
    for auth in [Auth::Bearer, Auth::Basic] {
        let proxy = Proxy::start(reg.port, auth);
        let r = format!("127.0.0.1:{}/secure/hello:1", proxy.port);
        // No credentials: a clear error, nothing uploaded.
        let out = fuse_with(data.path(), &["push", image, &r, "--insecure"], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{auth:?}: {stderr}");
        assert!(
            stderr.contains("asks for credentials"),
            "{auth:?}: {stderr}"
        );
        assert_eq!(proxy.uploaded.load(Ordering::SeqCst), 0);
        // Wrong password: refused.
        let out = fuse_with(
            data.path(),
            &["push", image, &r, "--insecure", "--username", USER],
            &[("FUSE_REGISTRY_PASSWORD", "wrong")],
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{auth:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("wrong"),
            "the password was printed"
        );
        // Right password: pushed and pulled back.
        ok(
            &fuse_with(
                data.path(),
                &["push", image, &r, "--insecure", "--username", USER],
                &[("FUSE_REGISTRY_PASSWORD", PASSWORD)],
            ),
            "push with credentials",
        );
        let out_dir = tempfile::tempdir().unwrap();
        ok(
            &fuse_with(
                data.path(),
                &[
                    "pull",
                    &r,
                    "--insecure",
                    "--out",
                    out_dir.path().to_str().unwrap(),
                ],
                &[
                    ("FUSE_REGISTRY_USERNAME", USER),
                    ("FUSE_REGISTRY_PASSWORD", PASSWORD),
                ],
            ),
            "pull with credentials",
        );
        assert_eq!(
            sha256_file(&out_dir.path().join("hello-1.0.0.img")),
            a.digest,
            "{auth:?}"
        );
    }
    // Credentials from a Docker config.json work too.
    let proxy = Proxy::start(reg.port, Auth::Basic);
    let cfg = tempfile::tempdir().unwrap();
    let auth = fuse::oci::auth::base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    std::fs::write(
        cfg.path().join("config.json"),
        format!(
            "{{\"auths\":{{\"127.0.0.1:{}\":{{\"auth\":\"{auth}\"}}}}}}",
            proxy.port
        ),
    )
    .unwrap();
    ok(
        &fuse_with(
            data.path(),
            &[
                "push",
                image,
                &format!("127.0.0.1:{}/docker-cfg/hello:1", proxy.port),
                "--insecure",
            ],
            &[("DOCKER_CONFIG", cfg.path().to_str().unwrap())],
        ),
        "push with Docker config credentials",
    );
}

/// GET a manifest or index over plain HTTP, accepting `accept`: (Content-Type, body).
fn get_manifest(port: u16, path: &str, accept: &str) -> (String, Vec<u8>) {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{port}/v2/{path}"))
        .header("Accept", accept)
        .call()
        .unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ct, resp.body_mut().read_to_vec().unwrap())
}

/// `fuse pull ARGS... --insecure --out DIR` into a fresh directory: (output, the directory).
fn pull_into(data: &Path, args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let out_dir = tempfile::tempdir().unwrap();
    let mut a = vec!["pull"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--insecure", "--out", out_dir.path().to_str().unwrap()]);
    (fuse_with(data, &a, &[]), out_dir)
}

#[test]
fn amd64_and_arm64_images_push_as_one_index_and_pull_by_arch() {
    use fuse::arch::Arch;
    use fuse::oci::index::INDEX_TYPE;
    // examples/hello as an arm64 image (never booted here), shared with the arm64 tests.
    if !crate::arm64::arm64_build_tools() {
        return;
    }
    let arm = crate::arm64::arm64_hello();
    let amd = shared_image();
    let reg = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let repo = format!("127.0.0.1:{}/team/hello", reg.port);
    let disk_amd = std::fs::read(&amd.image).unwrap();
    let disk_arm = std::fs::read(&arm.image).unwrap();
    let art_amd = fuse::oci::artifact(&disk_amd, false).unwrap();
    let art_arm = fuse::oci::artifact(&disk_arm, false).unwrap();
    // Each artifact's manifest says its architecture.
    assert_eq!(art_amd.manifest.annotations[fuse::oci::ANN_ARCH], "amd64");
    assert_eq!(art_arm.manifest.annotations[fuse::oci::ANN_ARCH], "arm64");
    assert_ne!(amd.digest, arm.digest);

    // Two images of one architecture, or a lone image with a foreign tag: refused before
    // anything is sent.
    let out = fuse_with(
        data.path(),
        &[
            "push",
            amd.image.to_str().unwrap(),
            amd.image.to_str().unwrap(),
            &repo,
            "--insecure",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("both amd64 images") && stderr.contains("one image per architecture"),
        "{stderr}"
    );
    assert!(
        get_manifest_status(reg.port, "team/hello/manifests/1.0.0") == 404,
        "a refused push tagged something"
    );

    // amd64 + arm64 (named arm64 first: the index is ordered by architecture).
    let out = fuse_with(
        data.path(),
        &[
            "push",
            arm.image.to_str().unwrap(),
            amd.image.to_str().unwrap(),
            &repo,
            "--insecure",
        ],
        &[],
    );
    let stdout = ok(&out, "push amd64 + arm64");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let index_digest = lines[0]
        .strip_prefix(&format!("{repo}:1.0.0@"))
        .unwrap_or_else(|| panic!("first line is not REF:TAG@<index digest>: {stdout}"))
        .to_string();
    assert_eq!(
        lines[1],
        format!("amd64 {} {repo}@{}", amd.digest, art_amd.manifest_digest)
    );
    assert_eq!(
        lines[2],
        format!("arm64 {} {repo}@{}", arm.digest, art_arm.manifest_digest)
    );

    // The tag is an OCI image index with one linux entry per architecture.
    let (ct, body) = get_manifest(reg.port, "team/hello/manifests/1.0.0", INDEX_TYPE);
    assert_eq!(ct, INDEX_TYPE);
    assert_eq!(
        format!("sha256:{}", fuse::digest::sha256_hex(&body)),
        index_digest
    );
    let ix: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ix["mediaType"], INDEX_TYPE);
    let entries = ix["manifests"].as_array().unwrap();
    let platforms: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["platform"]["os"].as_str().unwrap().to_string(),
                e["platform"]["architecture"].as_str().unwrap().to_string(),
                e["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            (
                "linux".into(),
                "amd64".into(),
                art_amd.manifest_digest.clone()
            ),
            (
                "linux".into(),
                "arm64".into(),
                art_arm.manifest_digest.clone()
            ),
        ]
    );
    // Each entry's manifest is in the repository, by digest, as fuse computes it.
    for art in [&art_amd, &art_arm] {
        let (_, m) = get_manifest(
            reg.port,
            &format!("team/hello/manifests/{}", art.manifest_digest),
            fuse::oci::MANIFEST_TYPE,
        );
        assert_eq!(m, art.manifest_bytes);
    }

    // Pull by --arch: each architecture's image, byte for byte.
    for (arch, digest, disk) in [
        ("amd64", &amd.digest, &disk_amd),
        ("arm64", &arm.digest, &disk_arm),
    ] {
        let (out, dir) = pull_into(data.path(), &[&format!("{repo}:1.0.0"), "--arch", arch]);
        let stdout = ok(&out, &format!("pull --arch {arch}"));
        assert_eq!(stdout.lines().last().unwrap(), digest.as_str(), "{arch}");
        let file = dir.path().join("hello-1.0.0.img");
        assert_eq!(&sha256_file(&file), digest, "{arch}");
        assert_eq!(&std::fs::read(&file).unwrap(), disk, "{arch}");
    }
    // Without --arch: this host's architecture; by the index's digest: the same.
    let host = if Arch::host() == Arch::Arm64 {
        &arm.digest
    } else {
        &amd.digest
    };
    let (out, dir) = pull_into(data.path(), &[&format!("{repo}@{index_digest}")]);
    ok(&out, "pull the index by digest, no --arch");
    assert_eq!(&sha256_file(&dir.path().join("hello-1.0.0.img")), host);

    // A single image and --arch of another architecture: an error, nothing written or stored.
    ok(
        &fuse_with(
            data.path(),
            &[
                "push",
                arm.image.to_str().unwrap(),
                &format!("{repo}:arm-only"),
                "--insecure",
            ],
            &[],
        ),
        "push arm64 alone",
    );
    let fresh = tempfile::tempdir().unwrap();
    let (out, dir) = pull_into(
        fresh.path(),
        &[&format!("{repo}:arm-only"), "--arch", "amd64"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is an arm64 image, not amd64"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let ls = ok(&fuse_with(fresh.path(), &["ls", "--json"], &[]), "ls");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ls).unwrap(),
        serde_json::json!([])
    );
    let (out, dir) = pull_into(
        fresh.path(),
        &[&format!("{repo}:arm-only"), "--arch", "arm64"],
    );
    ok(&out, "pull arm-only --arch arm64");
    assert_eq!(sha256_file(&dir.path().join("hello-1.0.0.img")), arm.digest);

    // An index without the architecture asked for: an error naming the platforms it has.
    let mut one: serde_json::Value = ix.clone();
    one["manifests"] = serde_json::json!([entries[0].clone()]);
    let one = serde_json::to_vec(&one).unwrap();
    let r = fuse::oci::Reference::parse(&format!("{repo}:amd-only")).unwrap();
    fuse::oci::client::Client::new(&r, true, None, true)
        .put_manifest_as("amd-only", &one, INDEX_TYPE)
        .unwrap();
    let (out, _dir) = pull_into(
        fresh.path(),
        &[&format!("{repo}:amd-only"), "--arch", "arm64"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no image for linux/arm64") && stderr.contains("it has linux/amd64"),
        "{stderr}"
    );
    // ...and without --arch its only entry is taken.
    let (out, dir) = pull_into(fresh.path(), &[&format!("{repo}:amd-only")]);
    ok(&out, "pull a one-entry index");
    assert_eq!(sha256_file(&dir.path().join("hello-1.0.0.img")), amd.digest);
}

/// The HTTP status of a manifest GET (any manifest or index type accepted).
fn get_manifest_status(port: u16, path: &str) -> u16 {
    let accept = format!(
        "{}, {}",
        fuse::oci::MANIFEST_TYPE,
        fuse::oci::index::INDEX_TYPE
    );
    let resp = ureq::get(&format!("http://127.0.0.1:{port}/v2/{path}"))
        .header("Accept", &accept)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    resp.status().as_u16()
}
