//! A container image as the app (`[app] kind = "oci"`), made with the standard tools: a
//! minimal Debian root file system with Python from `mmdebstrap`, turned into an OCI image
//! with `umoci` (a user added, the app in an upper layer, a file deleted and a directory
//! made opaque in the layers above, Entrypoint, Cmd, Env, User, WorkingDir, ExposedPorts,
//! StopSignal and a label set), pushed to a local `docker-registry` and written as a
//! docker-archive with `skopeo`. Built by digest from the registry, booted once (stopped with
//! the power button: the container's StopSignal); its dpkg packages in the SBOM; the same
//! file system from the `oci-layout:` and `docker-archive:` sources; rebuilt `--locked`
//! offline from the cache.

use crate::registry::Registry;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Answers what the process sees: its ids, working directory, environment, and the files
/// the upper layers deleted or hid.
const APP: &str = r#"import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
            "color": os.environ.get("COLOR"), "greeting": os.environ.get("GREETING"),
            "old": os.path.exists("/srv/old.txt"),
            "data": sorted(os.listdir("/srv/data")),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
"#;

struct Container {
    _dir: tempfile::TempDir,
    /// The OCI layout (tag v1).
    layout: PathBuf,
    /// `docker save`-style archive of the same image.
    archive: PathBuf,
    /// The version of python3 the container's dpkg status says is installed.
    python3_version: String,
}

fn sh(cmd: &mut Command) {
    let (ok, out) = run(cmd);
    assert!(ok, "{cmd:?}:\n{out}");
}

/// The container image, made once per test run (about a minute: mmdebstrap downloads
/// Python's packages from the host's mirror).
fn container() -> Option<&'static Container> {
    static C: OnceLock<Option<Container>> = OnceLock::new();
    C.get_or_init(|| {
        for t in ["mmdebstrap", "umoci", "skopeo"] {
            if !require_tool(t) {
                return None;
            }
        }
        let mirror = fuse::mirror::find_source(None, None, "bookworm")
            .expect("the host's apt sources name a mirror")
            .url;
        let dir = tempfile::tempdir_in(tmp_root()).unwrap();
        let d = dir.path();
        let rootfs = d.join("rootfs.tar");
        sh(Command::new("mmdebstrap")
            .args([
                "--mode=root",
                "--variant=essential",
                "--include=python3",
                "--quiet",
            ])
            // device nodes are not part of a container image (the runtime makes /dev)
            .args(["--skip=output/dev"])
            .args(["--dpkgopt=path-exclude=/usr/share/doc/*"])
            .args(["--dpkgopt=path-exclude=/usr/share/man/*"])
            .args(["--dpkgopt=path-exclude=/usr/share/locale/*"])
            .arg("bookworm")
            .arg(&rootfs)
            .arg(&mirror));
        // Layers as tar archives (GNU tar), appended verbatim: the root file system; the
        // app's user; the app with a file and a directory the layers above delete (a
        // whiteout) and hide (an opaque directory).
        let layout = d.join("layout");
        let image = format!("{}:v1", layout.display());
        sh(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        sh(Command::new("umoci").args(["new", "--image", &image]));
        let add_layer = |tree: &Path| {
            let tar = tree.with_extension("tar");
            sh(Command::new("tar")
                .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
                .arg(&tar)
                .arg("-C")
                .arg(tree)
                .arg("."));
            sh(Command::new("umoci")
                .args(["raw", "add-layer", "--image", &image])
                .arg(&tar));
        };
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .arg(&rootfs));
        // The version of python3 as the container's own dpkg database records it.
        let status = Command::new("tar")
            .arg("-xOf")
            .arg(&rootfs)
            .arg("./var/lib/dpkg/status")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "var/lib/dpkg/status from the rootfs"
        );
        let status = String::from_utf8(status.stdout).unwrap();
        let python3_version = status
            .split("\n\n")
            .find(|s| s.lines().any(|l| l == "Package: python3"))
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Version: ")))
            .expect("python3 in the container's dpkg status")
            .to_string();
        let users = d.join("users");
        std::fs::create_dir_all(users.join("etc")).unwrap();
        let etc_of = |file: &str| {
            let out = Command::new("tar")
                .arg("-xOf")
                .arg(&rootfs)
                .arg(format!("./etc/{file}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "etc/{file} from the rootfs");
            String::from_utf8(out.stdout).unwrap()
        };
        std::fs::write(
            users.join("etc/passwd"),
            etc_of("passwd") + "web:x:1000:1001::/srv:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            users.join("etc/group"),
            etc_of("group") + "webgroup:x:1001:\n",
        )
        .unwrap();
        add_layer(&users);
        let l2 = d.join("l2");
        std::fs::create_dir_all(l2.join("srv/data")).unwrap();
        std::fs::write(l2.join("srv/app.py"), APP).unwrap();
        std::fs::write(l2.join("srv/old.txt"), "old\n").unwrap();
        std::fs::write(l2.join("srv/data/a"), "a\n").unwrap();
        std::fs::write(l2.join("srv/data/b"), "b\n").unwrap();
        add_layer(&l2);
        let l3 = d.join("l3");
        std::fs::create_dir_all(l3.join("srv/data")).unwrap();
        std::fs::write(l3.join("srv/.wh.old.txt"), "").unwrap();
        std::fs::write(l3.join("srv/data/.wh..wh..opq"), "").unwrap();
        std::fs::write(l3.join("srv/data/c"), "c\n").unwrap();
        add_layer(&l3);
        sh(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.entrypoint",
            "python3",
            "--config.cmd",
            "/srv/app.py",
            "--config.env",
            "COLOR=blue",
            "--config.env",
            "GREETING=from-the-container",
            "--config.user",
            "web",
            "--config.workingdir",
            "/srv/work",
            "--config.exposedports",
            "8080/tcp",
            "--config.label",
            "org.example.team=web",
            "--config.stopsignal",
            "SIGINT",
        ]));
        let archive = d.join("web.tar");
        sh(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{image}"))
            .arg(format!("docker-archive:{}:team/web:v1", archive.display())));
        Some(Container {
            _dir: dir,
            layout,
            archive,
            python3_version,
        })
    })
    .as_ref()
}

/// An app directory whose manifest takes `image`.
fn app(dir: &Path, image: &str) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        format!(
            "[image]\nname = \"web\"\nversion = \"1\"\n\n[app]\nkind = \"oci\"\nimage = \"{image}\"\n\n\
             [app.env]\nGREETING = \"from-the-manifest\"\n\n[health]\nhttp = \"/\"\n\n\
             [system]\ndistribution = \"debian/bookworm\"\nkernel = \"linux-image-amd64\"\n"
        ),
    )
    .unwrap();
    app
}

fn image_json(img: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(img.with_extension("json")).unwrap()).unwrap()
}

/// Digests of the image's layers above `base` (the container's file system).
fn app_layers(img: &Path) -> Vec<String> {
    image_json(img)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"] != "base")
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_container_image_boots_as_its_user_with_its_env_workdir_and_deletions() {
    let Some(c) = container() else { return };
    // Pushed to a registry of this test's own (stopped when the test ends).
    let registry = Registry::start();
    let repo = format!("127.0.0.1:{}/team/web", registry.port);
    let dir = tempfile::tempdir().unwrap();
    let digest_file = dir.path().join("digest");
    sh(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .arg(format!("oci:{}:v1", c.layout.display()))
        .arg(format!("docker://{repo}:v1")));
    let by_digest = format!(
        "{repo}@{}",
        std::fs::read_to_string(&digest_file).unwrap().trim()
    );
    let data = dir.path().join("data");
    let a = app(dir.path(), &by_digest);
    // Built by digest from the registry, and built again byte for byte (--verify).
    let out = Fuse::new(["build".as_ref(), a.as_os_str(), "--verify".as_ref()])
        .data(&data)
        .output();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let digest = text(&out.stdout).lines().last().unwrap().to_string();
    let img = a.join("fuse-out/web-1.img");
    let meta = image_json(&img);
    assert_eq!(meta["app"]["kind"], "oci");
    assert_eq!(meta["app"]["port"], 8080);
    assert_eq!(meta["app"]["argv"][0], "/usr/bin/python3", "{meta}");
    assert_eq!(meta["app"]["argv"][1], "/srv/app.py");
    assert_eq!(meta["app"]["container"]["reference"], by_digest.as_str());
    assert_eq!(
        meta["app"]["container"]["labels"]["org.example.team"],
        "web"
    );
    let layers = app_layers(&img);
    assert!(layers.len() >= 2, "{meta}");
    // The container's StopSignal is the one the power button sends.
    assert_eq!(meta["app"]["stop_signal"], "SIGINT", "{meta}");
    let dpkg = &meta["app"]["container"]["packages"][0];
    assert_eq!(dpkg["path"], "/var/lib/dpkg/status", "{meta}");
    assert_eq!(dpkg["distro"], "debian-12", "{dpkg}");

    // Boots and answers as the container says: its user (from its /etc/passwd and
    // /etc/group), working directory (made: it is not in any layer), Env ([app.env] on
    // top); the deleted file and the opaque directory's lower content absent.
    let qmp = dir.path().join("qmp.sock");
    let extra = [
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    let mut vm = Vm::boot(&img, 8080, &extra);
    let body = vm
        .get_until_ok("/", Duration::from_secs(600))
        .unwrap_or_else(|| panic!("no answer:\n{}", vm.console()));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["uid"], 1000, "{v}");
    assert_eq!(v["gid"], 1001, "{v}");
    assert_eq!(v["cwd"], "/srv/work", "{v}");
    assert_eq!(v["color"], "blue", "{v}");
    assert_eq!(v["greeting"], "from-the-manifest", "{v}");
    assert_eq!(v["old"], false, "{v}");
    assert_eq!(v["data"], serde_json::json!(["c"]), "{v}");
    // The power button: the init sends the container's StopSignal (Python stops on SIGINT).
    fuse::vm::qmp(&qmp, "system_powerdown").unwrap();
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "the VM did not power off; console:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("power button: stopping the app: SIGINT"),
        "{console}"
    );
    assert!(console.contains("app stopped"), "{console}");
    assert!(!console.contains("sending SIGKILL"), "{console}");
    drop(vm);

    // `fuse inspect` verifies it and shows the container and its user.
    let out = Fuse::new(["inspect".as_ref(), img.as_os_str()])
        .data(&data)
        .output();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains(&by_digest), "{shown}");
    assert!(shown.contains("1000:1001"), "{shown}");
    assert!(shown.contains("power button: SIGINT"), "{shown}");

    // The SBOM lists the container's own packages as its dpkg database says, python3 with
    // the version installed in it.
    let out = Fuse::new([
        "inspect".as_ref(),
        img.as_os_str(),
        "--sbom".as_ref(),
        "spdx".as_ref(),
    ])
    .data(&data)
    .output();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "python3")
        .unwrap_or_else(|| panic!("no python3 in the SBOM: {doc}"));
    assert_eq!(py["versionInfo"], c.python3_version.as_str(), "{py}");
    let purl = py["externalRefs"][0]["referenceLocator"].as_str().unwrap();
    assert!(
        purl.starts_with("pkg:deb/debian/python3@") && purl.contains("distro=debian-12"),
        "{purl}"
    );

    // The same file system from the layout and from the docker-archive.
    for image in [
        format!("oci-layout:{}:v1", c.layout.display()),
        format!("docker-archive:{}", c.archive.display()),
    ] {
        let d = tempfile::tempdir().unwrap();
        let a = app(d.path(), &image);
        let out = Fuse::new(["build".as_ref(), a.as_os_str()])
            .data(&data)
            .output();
        assert!(out.status.success(), "{image}: {}", text(&out.stderr));
        assert_eq!(app_layers(&a.join("fuse-out/web-1.img")), layers, "{image}");
    }

    // --locked with the registry and the mirror gone: everything from the cache, the same
    // image.
    drop(std::fs::remove_dir_all(a.join("fuse-out")));
    drop(registry);
    let out = Fuse::new(["build".as_ref(), a.as_os_str(), "--locked".as_ref()])
        .data(&data)
        .env("FUSE_MIRROR", "http://127.0.0.1:9/debian")
        .output();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().last().unwrap(), digest);
}

/// A layer whose tar names `../escape`: refused with the layer's digest and the path,
/// nothing written.
#[test]
fn a_hostile_container_layer_is_refused_and_nothing_is_written() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    // A tar with one entry named ../escape (written by hand: tar writers refuse the name).
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(b"hi\n");
    layer.resize(512 + 512, 0);
    layer.extend_from_slice(&[0; 1024]);
    let (layer_digest, layer_size) = put(&layer);
    let diff_id = layer_digest.clone();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"], "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest_size,
                           "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
        }))
        .unwrap(),
    )
    .unwrap();
    let a = app(dir.path(), &format!("oci-layout:{}:v1", layout.display()));
    let out = Fuse::new(["build".as_ref(), a.as_os_str()]).output();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&layer_digest) && err.contains("../escape"),
        "{err}"
    );
    assert!(!a.join("fuse-out").exists());
    assert!(!dir.path().join("escape").exists());
}
