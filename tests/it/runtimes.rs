//! Language runtimes and app servers: each example (python, node, jar, war on Tomcat) is
//! built from its sources, booted, and asked over HTTP like a client; the runtime and
//! server come from the archive as their own layers; rebuilding after an app change keeps
//! every other layer byte for byte; unsupported combinations fail early.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "fuse-out" || name == "fuse.lock" || name == "__pycache__" {
            continue;
        }
        let to = dst.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A copy of examples/<name> in `dir`, built with its build.sh.
fn example(name: &str, dir: &Path) -> PathBuf {
    let app = dir.join(name);
    copy_dir(&repo_root().join("examples").join(name), &app);
    let st = Command::new(app.join("build.sh")).status().unwrap();
    assert!(st.success(), "examples/{name}/build.sh failed");
    app
}

fn build(app: &Path) -> serde_json::Value {
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name = app.file_name().unwrap().to_str().unwrap();
    serde_json::from_slice(&std::fs::read(app.join(format!("fuse-out/{name}-1.0.0.json"))).unwrap())
        .unwrap()
}

fn layer_names(meta: &serde_json::Value) -> Vec<String> {
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

fn packages_of(meta: &serde_json::Value, layer: &str) -> Vec<String> {
    let l = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == layer)
        .unwrap_or_else(|| panic!("no layer {layer}"));
    l["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn java_modules(meta: &serde_json::Value) -> Vec<String> {
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "runtime")
        .and_then(|l| l["java_modules"].as_array())
        .map(|a| a.iter().map(|m| m.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn layer_digest(meta: &serde_json::Value, name: &str) -> String {
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A jar app in `dir/name` compiled here from one Java source (class `t.Main`).
fn java_app(dir: &Path, name: &str, source: &str, extra_manifest: &str) -> PathBuf {
    let app = dir.join(name);
    let src = app.join("src/t");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Main.java"), source).unwrap();
    let classes = app.join("classes");
    let st = Command::new("javac")
        .args(["--release", "17", "-d"])
        .arg(&classes)
        .arg(src.join("Main.java"))
        .status()
        .expect("javac (openjdk-17-jdk-headless)");
    assert!(st.success());
    let st = Command::new("jar")
        .args(["--create", "--file"])
        .arg(app.join("app.jar"))
        .args(["--main-class", "t.Main", "-C"])
        .arg(&classes)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        app.join("fuse.toml"),
        format!(
            "[image]\nname = \"{name}\"\nversion = \"1.0.0\"\n[app]\nkind = \"jar\"\npath = \"app.jar\"\nport = 8080\n[runtime]\njava = \"17\"\n{extra_manifest}[health]\nhttp = \"/\"\n"
        ),
    )
    .unwrap();
    app
}

/// Elliptic-curve keys, TLS with ECDHE suites, XML parsing and java.util.logging.
const EC_TLS_APP: &str = r#"package t;
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.logging.Logger;

public class Main {
    static String report() throws Exception {
        StringBuilder b = new StringBuilder();
        java.security.KeyPairGenerator g = java.security.KeyPairGenerator.getInstance("EC");
        g.initialize(256);
        java.security.KeyPair kp = g.generateKeyPair();
        java.security.Signature s = java.security.Signature.getInstance("SHA256withECDSA");
        s.initSign(kp.getPrivate());
        s.update("x".getBytes());
        byte[] sig = s.sign();
        s.initVerify(kp.getPublic());
        s.update("x".getBytes());
        b.append("ec=").append(kp.getPublic().getAlgorithm()).append(s.verify(sig) ? "-verified" : "-bad");
        javax.net.ssl.SSLContext ctx = javax.net.ssl.SSLContext.getInstance("TLSv1.3");
        ctx.init(null, null, null);
        long ecdhe = java.util.Arrays.stream(ctx.getSupportedSSLParameters().getCipherSuites())
            .filter(c -> c.contains("ECDHE")).count();
        b.append(" ecdhe=").append(ecdhe);
        javax.xml.parsers.DocumentBuilder db =
            javax.xml.parsers.DocumentBuilderFactory.newInstance().newDocumentBuilder();
        org.w3c.dom.Document d = db.parse(new java.io.ByteArrayInputStream(
            "<r><v>parsed</v></r>".getBytes(StandardCharsets.UTF_8)));
        b.append(" xml=").append(d.getElementsByTagName("v").item(0).getTextContent());
        b.append(" modules=").append(ModuleLayer.boot().modules().size());
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        Logger log = Logger.getLogger("t");
        String r = report();
        log.info("report: " + r);
        HttpServer srv = HttpServer.create(new InetSocketAddress(8080), 16);
        srv.createContext("/", ex -> {
            byte[] body = (r + " log=" + (log.getParent() != null) + "\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (java.io.OutputStream o = ex.getResponseBody()) { o.write(body); }
        });
        srv.start();
    }
}
"#;

#[test]
fn ec_tls_xml_and_logging_work_on_a_trimmed_jre_built_reproducibly() {
    if !require_tool("javac") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = java_app(dir.path(), "ectls", EC_TLS_APP, "");
    let meta = build(&app);
    report_sizes(&meta);
    let modules = java_modules(&meta);
    eprintln!(
        "ectls JDK modules ({}): {}",
        modules.len(),
        modules.join(" ")
    );
    for m in [
        "java.base",
        "java.logging",
        "java.xml",
        "jdk.crypto.ec",
        "jdk.httpserver",
    ] {
        assert!(modules.contains(&m.to_string()), "{m} missing: {modules:?}");
    }
    // a second build from a copy gives the same trimmed runtime layer
    let again = dir.path().join("again");
    copy_dir(&app, &again.join("ectls"));
    let meta2 = build(&again.join("ectls"));
    assert_eq!(
        layer_digest(&meta, "runtime"),
        layer_digest(&meta2, "runtime")
    );
    assert_eq!(meta["digest"], meta2["digest"]);
    let body = boot_and_get(&app, &[], 400);
    assert!(body.contains("ec=EC-verified"), "{body}");
    assert!(body.contains("xml=parsed"), "{body}");
    assert!(body.contains("log=true"), "{body}");
    let ecdhe: u32 = body
        .split("ecdhe=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(ecdhe >= 4, "ECDHE suites missing: {body}");
}

#[test]
fn unreadable_classes_keep_the_full_jre_with_a_warning_naming_the_entry() {
    if !require_tool("javac") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = java_app(
        dir.path(),
        "badclass",
        "package t; public class Main { public static void main(String[] a) {} }",
        "",
    );
    // add a class whose constant pool has an unknown tag
    let bad = app.join("bad");
    std::fs::create_dir_all(bad.join("t")).unwrap();
    let mut class = vec![0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 61, 0, 3, 99, 0, 0];
    class.extend_from_slice(&[0; 8]);
    std::fs::write(bad.join("t/Broken.class"), class).unwrap();
    let st = Command::new("jar")
        .args(["--update", "--file"])
        .arg(app.join("app.jar"))
        .arg("-C")
        .arg(&bad)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("keeping the full JRE"), "{err}");
    assert!(err.contains("app.jar!/t/Broken.class"), "{err}");
    assert!(
        err.contains("constant pool entry #1 has unknown tag 99"),
        "{err}"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("fuse-out/badclass-1.0.0.json")).unwrap())
            .unwrap();
    assert!(java_modules(&meta).len() > 60, "{:?}", java_modules(&meta));

    // an unknown `[runtime] modules` entry is refused, naming the key
    let app = java_app(
        dir.path(),
        "badmod",
        "package t; public class Main { public static void main(String[] a) {} }",
        "modules = [\"jdk.nosuch\"]\n",
    );
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("runtime.modules") && err.contains("jdk.nosuch"),
        "{err}"
    );
}

fn report_sizes(meta: &serde_json::Value) {
    for l in meta["layers"].as_array().unwrap() {
        eprintln!("layer {}: {} bytes", l["name"], l["size"]);
    }
    eprintln!("disk: {} bytes", meta["disk_size"]);
}

fn boot_and_get(app: &Path, extra: &[String], timeout: u64) -> String {
    let name = app.file_name().unwrap().to_str().unwrap();
    let mut vm = Vm::boot(&app.join(format!("fuse-out/{name}-1.0.0.img")), 8080, extra);
    let body = vm.get_until_ok("/", Duration::from_secs(timeout));
    body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()))
}

#[test]
fn python_app_boots_on_the_distribution_python() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("python-hello", dir.path());
    let meta = build(&app);
    report_sizes(&meta);
    assert_eq!(layer_names(&meta), ["base", "runtime", "app"]);
    let rt = packages_of(&meta, "runtime");
    assert!(rt.contains(&"libpython3.11-stdlib".to_string()), "{rt:?}");
    assert!(!packages_of(&meta, "base")
        .iter()
        .any(|p| p.contains("python3.11")));
    assert_eq!(meta["app"]["argv"][0], "/usr/bin/python3.11");
    assert_eq!(meta["app"]["workdir"], "/app");
    python_bytecode_is_valid(&app.join("fuse-out/python-hello-1.0.0.img"));
    let body = boot_and_get(&app, &[], 240);
    assert!(body.contains("uid=1000 "), "{body}");
    assert!(body.contains("python=3.11."), "{body}");
    assert!(body.contains("cwd=/app "), "{body}");
    assert!(body.contains("hello from python"), "{body}");
}

/// The file tree of the layer `name` of an image.
/// The Python example on Debian 13 (`distribution = "debian/trixie"`, Python 3.13): its
/// kernel ships its modules xz-compressed (expanded into the initramfs, or the init could
/// not load virtio and dm-verity), and its packages expect merged /usr: the interpreter,
/// dynamically linked, finds its loader through the base layer's /lib64 link (and the
/// build ran it that way to compile the bytecode). It boots and answers.
#[test]
fn python_app_boots_on_trixie() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("python-hello", dir.path());
    let m = app.join("fuse.toml");
    let t = std::fs::read_to_string(&m)
        .unwrap()
        .replace("python = \"3.11\"", "python = \"3.13\"");
    assert!(t.contains("3.13"), "{t}");
    std::fs::write(
        &m,
        format!("{t}\n[system]\ndistribution = \"debian/trixie\"\n"),
    )
    .unwrap();
    let meta = build(&app);
    let kernel = meta["kernel"]["package"]["name"].as_str().unwrap_or("");
    assert!(kernel.contains("+deb13-"), "{kernel}");
    assert_eq!(meta["app"]["argv"][0], "/usr/bin/python3.13");
    let img = app.join("fuse-out/python-hello-1.0.0.img");
    let base = layer_tree(&img, "base");
    for (link, target) in [
        ("lib64", "usr/lib64"),
        ("lib", "usr/lib"),
        ("bin", "usr/bin"),
    ] {
        assert_eq!(
            base.get(link).map(|n| n.kind.clone()),
            Some(fuse::tree::Kind::Symlink(target.into())),
            "/{link}"
        );
    }
    let runtime = layer_tree(&img, "runtime");
    assert!(runtime
        .iter()
        .any(|(p, _)| p.starts_with("usr/lib/python3.13/__pycache__/")));
    assert!(!runtime
        .iter()
        .any(|(p, _)| p == "lib" || p.starts_with("lib/")));
    let body = boot_and_get(&app, &[], 240);
    assert!(body.contains("uid=1000 "), "{body}");
    assert!(body.contains("python=3.13."), "{body}");
    assert!(body.contains("hello from python"), "{body}");
}

fn layer_tree(image: &Path, name: &str) -> fuse::tree::Tree {
    let img = std::fs::read(image).unwrap();
    fuse::format::squashfs::read(&img[partition(&img, &format!("fuse-{name}"))]).unwrap()
}

/// Every module of the standard library (runtime layer) and of the app (app layer) has
/// its bytecode beside it, and the host's Python 3.11 (the same version as the image's)
/// takes it as the image's interpreter does: its magic, unchecked hash-based (flags 1),
/// the SipHash of the source in the image, the image path as the code's file name.
fn python_bytecode_is_valid(image: &Path) {
    let check = tempfile::tempdir().unwrap();
    let mut listed = String::new();
    for (layer, prefix) in [("runtime", "usr/lib/python3.11/"), ("app", "app/")] {
        let tree = layer_tree(image, layer);
        let mut sources = 0;
        for (path, node) in tree.iter() {
            let Some(stem) = path.strip_suffix(".py") else {
                continue;
            };
            if !path.starts_with(prefix) || node.data().is_none() {
                continue;
            }
            sources += 1;
            let (dir, name) = stem.rsplit_once('/').unwrap();
            let pyc = format!("{dir}/__pycache__/{name}.cpython-311.pyc");
            let bytes = tree
                .get(&pyc)
                .and_then(|n| n.data())
                .unwrap_or_else(|| panic!("/{path} has no /{pyc} in layer {layer}"));
            let (src, bc) = (
                check.path().join(format!("{sources}-{layer}.py")),
                check.path().join(format!("{sources}-{layer}.pyc")),
            );
            std::fs::write(&src, node.data().unwrap()).unwrap();
            std::fs::write(&bc, bytes).unwrap();
            listed.push_str(&format!("{}\t{}\t/{path}\n", src.display(), bc.display()));
        }
        assert!(
            sources > if layer == "runtime" { 400 } else { 1 },
            "{layer}: {sources} modules"
        );
    }
    if !require_tool("python3.11") {
        return;
    }
    let list = check.path().join("list");
    std::fs::write(&list, listed).unwrap();
    let script = r#"
import importlib.util, marshal, sys
n = 0
for line in open(sys.argv[1]):
    src, pyc, path = line.rstrip("\n").split("\t")
    data = open(pyc, "rb").read()
    assert data[:4] == importlib.util.MAGIC_NUMBER, (path, data[:4])
    assert int.from_bytes(data[4:8], "little") == 1, (path, "not unchecked-hash")
    assert data[8:16] == importlib.util.source_hash(open(src, "rb").read()), (path, "source hash")
    assert marshal.loads(data[16:]).co_filename == path, path
    n += 1
print(n)
"#;
    let out = run_ok(Command::new("python3.11").args(["-c", script]).arg(&list));
    assert!(out.trim().parse::<usize>().unwrap() > 400, "{out}");
}

#[test]
fn python_bytecode_can_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("python-hello", dir.path());
    let m = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        m.replace("python = \"3.11\"", "python = \"3.11\"\nbytecode = false"),
    )
    .unwrap();
    build(&app);
    let tree = layer_tree(&app.join("fuse-out/python-hello-1.0.0.img"), "runtime");
    assert!(tree.get("usr/lib/python3.11/os.py").is_some());
    assert!(!tree.iter().any(|(p, _)| p.ends_with(".pyc")));
}

#[test]
fn node_app_boots_with_the_main_of_its_package_json() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("node-hello", dir.path());
    let meta = build(&app);
    report_sizes(&meta);
    assert_eq!(layer_names(&meta), ["base", "runtime", "app"]);
    assert!(packages_of(&meta, "runtime").contains(&"nodejs".to_string()));
    assert_eq!(
        meta["app"]["argv"],
        serde_json::json!(["/usr/bin/node", "/app/server.js"])
    );
    let body = boot_and_get(&app, &[], 300);
    assert!(body.contains("uid=1000 "), "{body}");
    assert!(body.contains("node=v18."), "{body}");
    assert!(body.contains("cwd=/app "), "{body}");
    assert!(body.contains("hello from node"), "{body}");
}

#[test]
fn jar_boots_on_the_jre_with_java_opts_and_a_ca_keystore() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("jar-hello", dir.path());
    let meta = build(&app);
    report_sizes(&meta);
    assert_eq!(layer_names(&meta), ["base", "runtime", "app"]);
    assert_eq!(packages_of(&meta, "runtime"), ["openjdk-17-jre-headless"]);
    // JAVA_OPTS given at boot (fw_cfg env file) reaches the JVM.
    let extra = [
        "-fw_cfg".to_string(),
        "name=opt/fuse/env,string=JAVA_OPTS=-Dgreeting=bonjour -Xmx100m".to_string(),
    ];
    // the JRE is trimmed to what the app uses (docs/runtimes.md)
    let modules = java_modules(&meta);
    eprintln!(
        "jar-hello JDK modules ({}): {}",
        modules.len(),
        modules.join(" ")
    );
    for m in ["java.base", "jdk.httpserver", "jdk.crypto.ec"] {
        assert!(modules.contains(&m.to_string()), "{m} missing: {modules:?}");
    }
    assert!(
        !modules.contains(&"java.desktop".to_string()),
        "{modules:?}"
    );
    let body = boot_and_get(&app, &extra, 400);
    assert!(body.contains("uid=1000 "), "{body}");
    assert!(body.contains("java=17."), "{body}");
    assert!(body.contains("bonjour from java"), "{body}");
    assert!(
        body.contains("maxheap=9"),
        "JAVA_OPTS -Xmx100m not applied: {body}"
    );
    let cas: u32 = body
        .split("cas=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(cas > 100, "the JVM trusts {cas} CAs: {body}");
}

#[test]
fn the_jar_lock_pins_exactly_the_packages_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("jar-hello", dir.path());
    let meta = build(&app);
    let lock = fuse::resolve::lock::Lock::load(&app.join("fuse.lock"))
        .unwrap()
        .unwrap();
    let locked: std::collections::BTreeSet<String> =
        lock.packages.iter().map(|p| p.name.clone()).collect();
    let mut in_image = std::collections::BTreeSet::new();
    for l in layer_names(&meta) {
        in_image.extend(packages_of(&meta, &l));
    }
    assert_eq!(locked, in_image);
    // What a headless JVM never loads is not resolved at all.
    let java = fuse::runtimes::Request {
        name: "java".into(),
        version: "17".into(),
    };
    for p in fuse::runtimes::unused_packages(&java, false) {
        assert!(!locked.contains(p), "the lock pins {p}");
    }
    assert!(locked.contains("openjdk-17-jre-headless") && locked.contains("libc6"));
}

#[test]
fn war_is_served_by_tomcat_as_the_root_context() {
    if !Path::new("/usr/share/java/tomcat10-servlet-api.jar").exists() {
        panic!("libtomcat10-java is needed to compile the example (scripts/setup.sh)");
    }
    let dir = tempfile::tempdir().unwrap();
    let app = example("war-hello", dir.path());
    let meta = build(&app);
    report_sizes(&meta);
    assert_eq!(layer_names(&meta), ["base", "runtime", "server", "app"]);
    assert!(packages_of(&meta, "server").contains(&"libtomcat10-java".to_string()));
    // No JSP page in the war: Tomcat's JSP compiler is neither locked nor in the image.
    let jsp = fuse::runtimes::JSP_COMPILER_PACKAGE.to_string();
    assert!(!packages_of(&meta, "server").contains(&jsp));
    let lock = std::fs::read_to_string(app.join("fuse.lock")).unwrap();
    assert!(!lock.contains(&jsp), "{lock}");
    let modules = java_modules(&meta);
    eprintln!(
        "war-hello JDK modules ({}): {}",
        modules.len(),
        modules.join(" ")
    );
    assert!(
        !modules.contains(&"jdk.compiler".to_string()),
        "{modules:?}"
    );
    let mut vm = Vm::boot(&app.join("fuse-out/war-hello-1.0.0.img"), 8080, &[]);
    let body = vm.get_until_ok("/", Duration::from_secs(600));
    let console = vm.console();
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{console}"));
    assert!(body.contains("uid=1000 "), "{body}");
    assert!(body.contains("server=Apache Tomcat/10."), "{body}");
    assert!(body.contains("hello from a war"), "{body}");
    // The default context (conf/context.xml) keeps Tomcat from scanning its own class path
    // and jar manifests: no stack trace for the JSP compiler this image does not hold.
    assert!(
        console.contains("Deployment of web application directory"),
        "{console}"
    );
    assert!(!console.contains("Failed to scan"), "{console}");
    // Tomcat's MBean registry is off (fuse's listener ran before anything registered):
    // none of its MBeans, and no "cannot be disabled" warning.
    let mbeans = vm.get_until_ok("/mbeans", Duration::from_secs(60));
    assert_eq!(mbeans.as_deref(), Some("mbeans=0\n"), "{}", vm.console());
    assert!(
        !vm.console().contains("cannot be disabled"),
        "{}",
        vm.console()
    );
}

#[test]
fn a_war_with_a_jsp_page_gets_the_jsp_compiler_and_serves_the_page() {
    if !Path::new("/usr/share/java/tomcat10-servlet-api.jar").exists() {
        panic!("libtomcat10-java is needed to compile the example (scripts/setup.sh)");
    }
    let dir = tempfile::tempdir().unwrap();
    let app = example("war-hello", dir.path());
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(&pages).unwrap();
    std::fs::write(
        pages.join("hello.jsp"),
        "<%@ page contentType=\"text/plain\" %>jsp says <%= 6 * 7 %>\n",
    )
    .unwrap();
    let st = Command::new("jar")
        .arg("--update")
        .arg("--file")
        .arg(app.join("hello.war"))
        .arg("-C")
        .arg(&pages)
        .arg("hello.jsp")
        .status()
        .unwrap();
    assert!(st.success(), "jar --update failed");
    // ... and keeps Tomcat's MBeans (`[server] mbeans = true`)
    let m = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        m.replace("tomcat = \"10\"", "tomcat = \"10\"\nmbeans = true"),
    )
    .unwrap();
    let meta = build(&app);
    assert!(
        packages_of(&meta, "server").contains(&fuse::runtimes::JSP_COMPILER_PACKAGE.to_string())
    );
    let mut vm = Vm::boot(&app.join("fuse-out/war-hello-1.0.0.img"), 8080, &[]);
    let body = vm.get_until_ok("/hello.jsp", Duration::from_secs(600));
    let body = body.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    assert!(body.contains("jsp says 42"), "{body}");
    let mbeans = vm.get_until_ok("/mbeans", Duration::from_secs(60));
    let mbeans = mbeans.unwrap_or_else(|| panic!("no answer; console:\n{}", vm.console()));
    let n: i64 = mbeans.trim().trim_start_matches("mbeans=").parse().unwrap();
    assert!(n > 10, "{mbeans}: Tomcat registered no MBeans");
}

#[test]
fn changing_only_the_app_keeps_every_other_layer() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("python-hello", dir.path());
    let a = build(&app);
    let main = app.join("app/hello/__main__.py");
    let src = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, src.replace("hello from python", "hello again")).unwrap();
    let b = build(&app);
    let (la, lb) = (
        a["layers"].as_array().unwrap(),
        b["layers"].as_array().unwrap(),
    );
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(lb) {
        assert_eq!(x["name"], y["name"]);
        if x["name"] == "app" {
            assert_ne!(x["digest"], y["digest"], "app layer did not change");
        } else {
            assert_eq!(x["digest"], y["digest"], "layer {} changed", x["name"]);
        }
    }
    assert_ne!(a["digest"], b["digest"]);
}

#[test]
fn a_runtime_version_the_archive_lacks_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let app = example("python-hello", dir.path());
    let m = std::fs::read_to_string(app.join("fuse.toml")).unwrap();
    std::fs::write(
        app.join("fuse.toml"),
        m.replace("python = \"3.11\"", "python = \"3.7\""),
    )
    .unwrap();
    let out = fuse(&["build", app.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("runtime.python") && e.contains("3.7") && e.contains("it has: 3.11"),
        "{e}"
    );
}
