//! App layers by rate of change (issue 26): a python app's installed distributions, a
//! node app's node_modules, a war's WEB-INF/lib and a Spring Boot jar's BOOT-INF/lib (both
//! laid out exploded) are a `deps` layer below the code's `app` layer; `[app] layers`
//! overrides the split; a code change rebuilds only the code layer (and the boot units), a
//! dependency change the dependency layer; the split shows in `build --json`, image.json and
//! `inspect --json`; a push of a code-only change sends far fewer bytes than the image.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, c) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
}

/// A python app vendoring a distribution the way `pip install --target vendor` lays it out.
fn python_app(dir: &Path, extra: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    write(
        dir,
        &[
            (
                "fuse.toml",
                &format!(
                    "[image]\nname = \"py-layers\"\nversion = \"1.0.0\"\n[app]\nkind = \"python\"\n\
                     path = \".\"\nargs = [\"main.py\"]\nport = 8080\n{extra}[runtime]\npython = \"3.11\"\n"
                ),
            ),
            (
                "main.py",
                "import sys\nsys.path.insert(0, '/app/vendor')\nimport greet\n\
                 from http.server import BaseHTTPRequestHandler, HTTPServer\n\
                 class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        b = greet.hello().encode()\n\
                 \x20       self.send_response(200); self.end_headers(); self.wfile.write(b)\n\
                 HTTPServer(('', 8080), H).serve_forever()\n",
            ),
            ("vendor/greet/__init__.py", "def hello():\n    return 'layered\\n'\n"),
            ("vendor/greet-1.0.dist-info/METADATA", "Name: greet\nVersion: 1.0\n"),
            ("vendor/greet-1.0.dist-info/RECORD", "greet/__init__.py,,\n"),
            ("static/site.css", "body {}\n"),
        ],
    );
    dir.to_path_buf()
}

/// `fuse build --json DIR`: the report.
fn build_json(dir: &Path) -> Value {
    let out = fuse(&["build", "--json", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn layer<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {report}"))
}

fn names(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

/// The files image.json lists for layer `name` of the image built in `dir`.
fn inspect_files(image: &Path, name: &str) -> Vec<String> {
    let out = fuse(&["inspect", "--json", image.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["metadata"]["layers"].as_array();
    let l = layers
        .unwrap_or_else(|| panic!("no layers in inspect --json: {v}"))
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in inspect --json"));
    l["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_python_apps_distributions_are_a_layer_of_their_own_and_a_code_change_rebuilds_only_the_code() {
    let dir = python_app(&tmp_root().join("layers-python"), "");
    // This run's own app (the shared cache holds the layers of earlier runs, and this test
    // asserts that its layers are built, not found): a nonce in the code and in the
    // dependencies.
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    write(
        &dir,
        &[
            ("vendor/greet/_run.py", &format!("RUN = {nonce:?}\n")),
            ("run.txt", &nonce),
        ],
    );
    let first = build_json(&dir);
    assert_eq!(layer(&first, "deps")["source"], "built");
    assert_eq!(layer(&first, "app")["source"], "built");
    assert_eq!(names(&first), ["base", "runtime", "deps", "app"]);
    let image = PathBuf::from(first["image"].as_str().unwrap());
    let deps = inspect_files(&image, "deps");
    let code = inspect_files(&image, "app");
    assert!(
        deps.contains(&"/app/vendor/greet/__init__.py".to_string()),
        "{deps:?}"
    );
    assert!(deps.contains(&"/app/vendor/greet-1.0.dist-info/RECORD".to_string()));
    assert!(!deps
        .iter()
        .any(|f| f == "/app/main.py" || f.starts_with("/app/static")));
    assert!(code.contains(&"/app/main.py".to_string()), "{code:?}");
    assert!(code.contains(&"/app/static/site.css".to_string()));
    assert!(
        !code.iter().any(|f| f.starts_with("/app/vendor")),
        "{code:?}"
    );

    // Nothing changed: the same image.
    let again = build_json(&dir);
    assert_eq!(again["digest"], first["digest"]);

    // One line of code: the code layer and the boot units change, nothing else.
    std::fs::write(
        dir.join("main.py"),
        std::fs::read_to_string(dir.join("main.py")).unwrap() + "# one more line\n",
    )
    .unwrap();
    let code_change = build_json(&dir);
    assert_ne!(code_change["digest"], first["digest"]);
    for l in ["base", "runtime", "deps"] {
        assert_eq!(
            layer(&code_change, l)["digest"],
            layer(&first, l)["digest"],
            "{l}"
        );
        assert_ne!(layer(&code_change, l)["source"], "built", "{l}");
    }
    assert_ne!(
        layer(&code_change, "app")["digest"],
        layer(&first, "app")["digest"]
    );
    assert_eq!(layer(&code_change, "app")["source"], "built");

    // A dependency changed: the dependency layer is built again.
    write(
        &dir,
        &[(
            "vendor/greet/__init__.py",
            "def hello():\n    return 'v2\\n'\n",
        )],
    );
    let dep_change = build_json(&dir);
    assert_ne!(
        layer(&dep_change, "deps")["digest"],
        layer(&code_change, "deps")["digest"]
    );
    assert_eq!(layer(&dep_change, "deps")["source"], "built");
    assert_eq!(
        layer(&dep_change, "app")["digest"],
        layer(&code_change, "app")["digest"]
    );

    // The same app elsewhere, every unit built again (--verify): identical layers.
    let out = fuse(&["build", "--verify", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn python_modules_get_bytecode_in_their_own_layer_and_one_that_does_not_compile_stays_source() {
    let dir = python_app(&tmp_root().join("layers-pyc"), "");
    // Python 2 syntax (and a template named .py): no bytecode, the build goes on
    write(&dir, &[("legacy.py", "print 'hello'\n")]);
    let r = build_json(&dir);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let deps = inspect_files(&image, "deps");
    assert!(
        deps.contains(&"/app/vendor/greet/__pycache__/__init__.cpython-311.pyc".to_string()),
        "{deps:?}"
    );
    let code = inspect_files(&image, "app");
    assert!(
        code.contains(&"/app/__pycache__/main.cpython-311.pyc".to_string()),
        "{code:?}"
    );
    assert!(code.contains(&"/app/legacy.py".to_string()));
    assert!(
        !code.iter().any(|f| f.contains("legacy.cpython")),
        "{code:?}"
    );
}

#[test]
fn app_layers_patterns_override_the_split() {
    let dir = python_app(
        &tmp_root().join("layers-override"),
        "layers = [{ name = \"assets\", paths = [\"static/\"] }, { name = \"libs\", paths = [\"vendor/**/*.py\"] }]\n",
    );
    let r = build_json(&dir);
    assert_eq!(names(&r), ["base", "runtime", "assets", "libs", "app"]);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let assets = inspect_files(&image, "assets");
    assert!(
        assets.contains(&"/app/static/site.css".to_string()),
        "{assets:?}"
    );
    assert!(!assets.iter().any(|f| f.ends_with(".py")));
    let libs = inspect_files(&image, "libs");
    assert!(
        libs.contains(&"/app/vendor/greet/__init__.py".to_string()),
        "{libs:?}"
    );
    // the dist-info is in no pattern: with patterns, the kind's split is not applied
    let code = inspect_files(&image, "app");
    assert!(
        code.contains(&"/app/vendor/greet-1.0.dist-info/RECORD".to_string()),
        "{code:?}"
    );
    assert!(code.contains(&"/app/main.py".to_string()));
}

#[test]
fn a_node_apps_node_modules_are_a_layer_of_their_own() {
    let dir = tmp_root().join("layers-node");
    let _ = std::fs::remove_dir_all(&dir);
    write(
        &dir,
        &[
            (
                "fuse.toml",
                "[image]\nname = \"node-layers\"\nversion = \"1.0.0\"\n[app]\nkind = \"node\"\n\
                 path = \".\"\nport = 8080\n[runtime]\nnode = \"18\"\n",
            ),
            (
                "package.json",
                "{\"name\": \"n\", \"main\": \"server.js\"}\n",
            ),
            ("server.js", "require('greet');\n"),
            ("node_modules/greet/package.json", "{\"name\": \"greet\"}\n"),
            ("node_modules/greet/index.js", "module.exports = 1;\n"),
        ],
    );
    let r = build_json(&dir);
    assert_eq!(names(&r), ["base", "runtime", "deps", "app"]);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let deps = inspect_files(&image, "deps");
    assert!(
        deps.contains(&"/app/node_modules/greet/index.js".to_string()),
        "{deps:?}"
    );
    let code = inspect_files(&image, "app");
    assert!(code.contains(&"/app/server.js".to_string()));
    assert!(!code.iter().any(|f| f.contains("node_modules")), "{code:?}");
    write(&dir, &[("server.js", "require('greet'); // 2\n")]);
    let r2 = build_json(&dir);
    assert_eq!(layer(&r2, "deps")["digest"], layer(&r, "deps")["digest"]);
    assert_ne!(layer(&r2, "app")["digest"], layer(&r, "app")["digest"]);
}

/// One boot: the split image (base, runtime, deps, app: one more verity partition) answers,
/// its code importing from the deps layer.
#[test]
fn a_booted_split_image_answers_from_code_and_dependency_layers() {
    let dir = python_app(&tmp_root().join("layers-boot"), "");
    let r = build_json(&dir);
    assert_eq!(names(&r), ["base", "runtime", "deps", "app"]);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let start = std::time::Instant::now();
    let mut vm = Vm::boot(&image, 8080, &[]);
    let body = vm.get_until_ok("/", std::time::Duration::from_secs(600));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    assert_eq!(body, "layered\n");
    eprintln!(
        "BOOT layers: answered {:.1} s after QEMU started",
        start.elapsed().as_secs_f64()
    );
}

/// A code-only change pushes the code layer and the changed pieces of the ESP (the UKI's
/// stub and kernel are unchanged 256 KiB pieces), not the dependency layer: bytes counted
/// on the wire by a proxy in front of Debian's docker-registry.
#[test]
fn a_push_of_a_code_only_change_sends_far_fewer_bytes_than_the_image() {
    use crate::registry::{Auth, Proxy, Registry};
    use std::sync::atomic::Ordering;
    let dir = python_app(&tmp_root().join("layers-push"), "");
    // some weight in the dependencies: 4 MiB of incompressible bytes
    let mut noise = Vec::with_capacity(4 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while noise.len() < 4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join("vendor/greet/data.bin"), &noise).unwrap();
    let v1 = build_json(&dir);
    let image = PathBuf::from(v1["image"].as_str().unwrap());
    let reg = Registry::start();
    let proxy = Proxy::start(reg.port, Auth::None);
    let data = tempfile::tempdir().unwrap();
    let reference = format!("127.0.0.1:{}/team/layers", proxy.port);
    let push = |tag: &str| {
        let out = fuse_with(
            data.path(),
            &[
                "push",
                image.to_str().unwrap(),
                &format!("{reference}:{tag}"),
                "--insecure",
            ],
            &[],
        );
        ok(&out, "push");
        proxy.uploaded.swap(0, Ordering::SeqCst)
    };
    let first = push("v1");
    std::fs::write(
        dir.join("main.py"),
        std::fs::read_to_string(dir.join("main.py")).unwrap() + "# changed\n",
    )
    .unwrap();
    let v2 = build_json(&dir);
    assert_eq!(layer(&v2, "deps")["digest"], layer(&v1, "deps")["digest"]);
    let second = push("v2");
    let size = std::fs::metadata(&image).unwrap().len();
    let deps = layer(&v2, "deps")["size"].as_u64().unwrap();
    eprintln!(
        "push: image {size} bytes, first push {first}, code change {second}, deps layer {deps}"
    );
    // (pieces that repeat within the disk, e.g. the ESP's free space, are one blob)
    assert!(first * 2 >= size, "the first push sends the disk");
    assert!(second < deps, "the deps layer is not sent again");
    assert!(
        second * 4 < size,
        "a code change sends far less than the image"
    );
}

/// examples/war-hello copied into `dir` and built with its build.sh, with a library jar
/// added under WEB-INF/lib (the example has none): the same `greet.jar` bytes each time.
fn war_app(dir: &Path, lib: &Path) -> PathBuf {
    let src = repo_root().join("examples/war-hello");
    for f in [
        "fuse.toml",
        "build.sh",
        "WEB-INF/web.xml",
        "src/hello/HelloServlet.java",
    ] {
        let to = dir.join(f);
        if !to.exists() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src.join(f), &to).unwrap();
        }
    }
    run_ok(&mut std::process::Command::new(dir.join("build.sh")));
    run_ok(
        std::process::Command::new("jar")
            .args(["--update", "--file"])
            .arg(dir.join("hello.war"))
            .arg("-C")
            .arg(lib)
            .arg("WEB-INF/lib/greet.jar"),
    );
    dir.to_path_buf()
}

/// A war is laid out exploded in /app/ROOT: WEB-INF/lib is the `deps` layer, the rest the
/// `app` layer; the lock still names the war's sha256; a servlet change rebuilds only the
/// code layer; Tomcat serves the exploded ROOT context (one boot).
#[test]
fn a_wars_web_inf_lib_is_a_layer_of_its_own_and_tomcat_serves_it_exploded() {
    if !require_tool("javac") || !require_tool("jar") {
        return;
    }
    let dir = tmp_root().join("layers-war");
    let _ = std::fs::remove_dir_all(&dir);
    // the library: a jar of one resource, made once
    let lib = dir.join("lib-src");
    write(&lib, &[("greet/hello.txt", "a library of the war\n")]);
    std::fs::create_dir_all(lib.join("WEB-INF/lib")).unwrap();
    run_ok(
        std::process::Command::new("jar")
            .args(["--create", "--file"])
            .arg(lib.join("WEB-INF/lib/greet.jar"))
            .arg("-C")
            .arg(&lib)
            .arg("greet"),
    );
    let app = war_app(&dir.join("app"), &lib);
    let r = build_json(&app);
    assert_eq!(names(&r), ["base", "runtime", "server", "deps", "app"]);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let deps = inspect_files(&image, "deps");
    assert!(
        deps.contains(&"/app/ROOT/WEB-INF/lib/greet.jar".to_string()),
        "{deps:?}"
    );
    assert!(!deps.iter().any(|f| f.contains("classes")), "{deps:?}");
    let code = inspect_files(&image, "app");
    for f in [
        "/app/ROOT/WEB-INF/classes/hello/HelloServlet.class",
        "/app/ROOT/WEB-INF/web.xml",
    ] {
        assert!(code.contains(&f.to_string()), "{f}: {code:?}");
    }
    assert!(!code.iter().any(|f| f.contains("WEB-INF/lib/")), "{code:?}");
    assert!(!code.iter().any(|f| f.ends_with(".war")), "{code:?}");
    // the lock and image.json still identify the app by the war's bytes
    let war_sha = fuse::digest::sha256_hex(&std::fs::read(app.join("hello.war")).unwrap());
    let lock = std::fs::read_to_string(app.join("fuse.lock")).unwrap();
    assert!(lock.contains(&war_sha), "{war_sha} not in {lock}");

    // one boot: Tomcat deploys /app/ROOT as the ROOT context
    let start = std::time::Instant::now();
    let mut vm = Vm::boot(&image, 8080, &[]);
    let body = vm.get_until_ok("/", std::time::Duration::from_secs(600));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    assert!(body.contains("hello from a war"), "{body}");
    assert!(body.contains("server=Apache Tomcat/10."), "{body}");
    eprintln!(
        "BOOT war exploded: answered {:.1} s after QEMU started",
        start.elapsed().as_secs_f64()
    );
    drop(vm);

    // a servlet change: only the code layer is built again, WEB-INF/lib is the same layer
    let servlet = app.join("src/hello/HelloServlet.java");
    let s = std::fs::read_to_string(&servlet).unwrap();
    std::fs::write(
        &servlet,
        // unique to this run: the target directory's unit cache outlives a run
        s.replace(
            "hello from a war",
            &format!("hello again from a war ({})", run_nonce()),
        ),
    )
    .unwrap();
    let war_app_again = war_app(&app, &lib);
    let r2 = build_json(&war_app_again);
    assert_ne!(r2["digest"], r["digest"]);
    for l in ["base", "runtime", "server", "deps"] {
        assert_eq!(layer(&r2, l)["digest"], layer(&r, l)["digest"], "{l}");
        assert_ne!(layer(&r2, l)["source"], "built", "{l}");
    }
    assert_ne!(layer(&r2, "app")["digest"], layer(&r, "app")["digest"]);
    assert_eq!(layer(&r2, "app")["source"], "built");
}

/// A Spring Boot-style jar (fixtures/bootjar: its own launcher named as the Main-Class, as
/// Spring Boot's JarLauncher runs from an unpacked jar) is laid out exploded in /app, its
/// BOOT-INF/lib the `deps` layer, and runs as `java -cp /app <Main-Class>` (one boot); an
/// app class change rebuilds only the code layer, a library change the deps layer.
#[test]
fn a_spring_boot_jars_nested_libraries_are_a_layer_of_their_own_and_it_runs_exploded() {
    if !require_tool("javac") || !require_tool("jar") {
        return;
    }
    let dir = tmp_root().join("layers-bootjar");
    let _ = std::fs::remove_dir_all(&dir);
    let build_jar = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(repo_root().join("fixtures/bootjar/build.sh"));
        c.arg(&dir).envs(env.iter().copied());
        run_ok(&mut c);
    };
    build_jar(&[]);
    write(
        &dir,
        &[(
            "fuse.toml",
            "[image]\nname = \"bootjar\"\nversion = \"1.0.0\"\n[app]\nkind = \"jar\"\n\
             path = \"boot.jar\"\nport = 8080\n[runtime]\njava = \"17\"\n[health]\nhttp = \"/\"\n",
        )],
    );
    let r = build_json(&dir);
    assert_eq!(names(&r), ["base", "runtime", "deps", "app"]);
    let image = PathBuf::from(r["image"].as_str().unwrap());
    let deps = inspect_files(&image, "deps");
    assert!(
        deps.contains(&"/app/BOOT-INF/lib/greet.jar".to_string()),
        "{deps:?}"
    );
    let code = inspect_files(&image, "app");
    for f in [
        "/app/BOOT-INF/classes/demo/App.class",
        "/app/META-INF/MANIFEST.MF",
        "/app/org/fusetest/boot/JarLauncher.class",
    ] {
        assert!(code.contains(&f.to_string()), "{f}: {code:?}");
    }
    assert!(
        !code.iter().any(|f| f.contains("BOOT-INF/lib/")),
        "{code:?}"
    );
    assert!(!code.contains(&"/app/boot.jar".to_string()), "{code:?}");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("fuse-out/bootjar-1.0.0.json")).unwrap())
            .unwrap();
    let argv: Vec<&str> = meta["app"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[argv.len() - 3..],
        ["-cp", "/app", "org.fusetest.boot.JarLauncher"],
        "{argv:?}"
    );

    let start = std::time::Instant::now();
    let mut vm = Vm::boot(&image, 8080, &[]);
    let body = vm.get_until_ok("/", std::time::Duration::from_secs(400));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    assert!(body.contains("hello from BOOT-INF/lib"), "{body}");
    assert!(body.contains("launcher=exploded"), "{body}");
    eprintln!(
        "BOOT spring boot jar exploded: answered {:.1} s after QEMU started",
        start.elapsed().as_secs_f64()
    );
    drop(vm);

    // the app's class changes: only the code layer
    build_jar(&[("GREETING", "howdy")]);
    let r2 = build_json(&dir);
    assert_eq!(layer(&r2, "deps")["digest"], layer(&r, "deps")["digest"]);
    assert_ne!(layer(&r2, "deps")["source"], "built");
    assert_ne!(layer(&r2, "app")["digest"], layer(&r, "app")["digest"]);
    // the library changes: the deps layer
    // unique to this run: the target directory's unit cache outlives a run
    let v2 = format!("v2 ({})", run_nonce());
    build_jar(&[("GREETING", "howdy"), ("LIB_GREETING", &v2)]);
    let r3 = build_json(&dir);
    assert_ne!(layer(&r3, "deps")["digest"], layer(&r2, "deps")["digest"]);
    assert_eq!(layer(&r3, "deps")["source"], "built");
}
