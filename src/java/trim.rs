//! Trim a JRE (as a file tree) to a set of modules: a new `lib/modules` jimage holding
//! only them, the native libraries, `conf` files, launchers and legal notices of the
//! modules left out removed, `release`'s MODULES rewritten, and the CDS archive (made for
//! the full image, which the JVM would refuse) left out.

use super::classwrite::ClassWriter;
use super::jimage::{self, Jimage};
use super::modgraph::ModuleGraph;
use super::modules::Modules;
use crate::tree::Tree;
use anyhow::{Context, Result};
use std::collections::BTreeSet;

/// A `[runtime] modules` entry the JRE does not have.
#[derive(Debug)]
pub struct UnknownModule(pub String, pub String);

impl std::fmt::Display for UnknownModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the JRE has no module {} (it has: {})", self.0, self.1)
    }
}

impl std::error::Error for UnknownModule {}

/// What `trim` did, for logs, image.json and inspect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// The modules the runtime layer holds.
    pub modules: BTreeSet<String>,
    /// The modules left out.
    pub removed: BTreeSet<String>,
    /// Size of `lib/modules` before and after.
    pub jimage_before: u64,
    pub jimage_after: u64,
    /// Files removed from the tree besides `lib/modules`.
    pub files_removed: usize,
    /// Bytes of those files.
    pub bytes_removed: u64,
}

/// Modules the JDK loads by name where no class reference shows it (docs/runtimes.md
/// states this rule): always these; more in [`implied_by`].
pub const ALWAYS: &[&str] = &[
    "java.base",
    // the SunEC provider of java.security: EC keys, ECDHE/ECDSA in TLS
    "jdk.crypto.ec",
    // sun.misc.Unsafe and friends, looked up reflectively by many libraries
    "jdk.unsupported",
    // the zip/jar FileSystemProvider, found through ServiceLoader
    "jdk.zipfs",
];

/// Modules a kept module loads by name: (if this is kept, add that).
pub const IMPLIED_BY: &[(&str, &str)] = &[
    // JNDI's "dns:" URL context (DNS lookups through java.naming)
    ("java.naming", "jdk.naming.dns"),
    // ManagementFactory's platform MXBeans (com.sun.management, OperatingSystemMXBean)
    ("java.management", "jdk.management"),
];

/// Files of the JRE that belong to a module, relative to the Java home (or, for the
/// `/etc` side of Debian's conf symlinks, absolute with no leading '/').
fn module_files(module: &str, home: &str, etc: &str) -> Vec<String> {
    let libs: &[&str] = match module {
        "java.desktop" => &[
            "lib/libawt.so",
            "lib/libawt_headless.so",
            "lib/libawt_xawt.so",
            "lib/libfontmanager.so",
            "lib/libjavajpeg.so",
            "lib/liblcms.so",
            "lib/libmlib_image.so",
            "lib/libjsound.so",
            "lib/libsplashscreen.so",
            "lib/psfont.properties.ja",
            "lib/psfontj2d.properties",
            "conf/accessibility.properties",
            "conf/sound.properties",
            "conf/swing.properties",
            "@accessibility.properties",
            "@sound.properties",
            "@swing.properties",
            "@psfont.properties.ja",
            "@psfontj2d.properties",
        ],
        "java.instrument" => &["lib/libinstrument.so"],
        "java.security.jgss" => &["lib/libj2gss.so"],
        "java.smartcardio" => &["lib/libj2pcsc.so"],
        "jdk.crypto.cryptoki" => &[
            "lib/libj2pkcs11.so",
            "conf/security/nss.cfg",
            "@security/nss.cfg",
        ],
        "jdk.security.auth" => &["lib/libjaas.so"],
        "java.management" => &["lib/libmanagement.so"],
        "jdk.management" => &["lib/libmanagement_ext.so"],
        "jdk.management.agent" => &[
            "lib/libmanagement_agent.so",
            "conf/management",
            "@management",
        ],
        "java.logging" => &["conf/logging.properties", "@logging.properties"],
        "java.prefs" => &["lib/libprefs.so"],
        "java.rmi" => &["lib/librmi.so", "bin/rmiregistry"],
        "jdk.attach" => &["lib/libattach.so"],
        "jdk.jdwp.agent" => &["lib/libdt_socket.so", "lib/libjdwp.so"],
        "jdk.net" => &["lib/libextnet.so"],
        "jdk.hotspot.agent" => &["lib/libsaproc.so", "bin/jhsdb"],
        "jdk.sctp" => &["lib/libsctp.so"],
        "jdk.incubator.vector" => &["lib/libjsvml.so"],
        "jdk.jfr" => &["lib/jfr", "bin/jfr", "@jfr"],
        "jdk.compiler" => &["lib/ct.sym", "bin/javac"],
        "java.scripting" => &["bin/jrunscript"],
        "jdk.jcmd" => &[
            "bin/jcmd",
            "bin/jinfo",
            "bin/jmap",
            "bin/jps",
            "bin/jstack",
            "bin/jstat",
        ],
        "jdk.jartool" => &["bin/jar", "bin/jarsigner"],
        "jdk.jshell" => &["bin/jshell"],
        "jdk.jlink" => &["bin/jlink", "bin/jmod", "bin/jimage"],
        "jdk.jpackage" => &["bin/jpackage"],
        "jdk.jstatd" => &["bin/jstatd"],
        "jdk.jconsole" => &["bin/jconsole"],
        "jdk.jdi" => &["bin/jdb"],
        "jdk.jdeps" => &["bin/jdeps", "bin/javap", "bin/jdeprscan"],
        "jdk.javadoc" => &["bin/javadoc"],
        _ => &[],
    };
    let mut out: Vec<String> = libs
        .iter()
        .map(|f| match f.strip_prefix('@') {
            Some(e) => format!("{etc}/{e}"),
            None => format!("{home}/{f}"),
        })
        .collect();
    out.push(format!("{home}/legal/{module}"));
    out
}

/// Remove `path` and everything under it; (files, bytes) removed.
fn remove_all(tree: &mut Tree, path: &str) -> (usize, u64) {
    let victims: Vec<String> = tree
        .iter()
        .filter(|(p, _)| *p == path || p.starts_with(&format!("{path}/")))
        .map(|(p, _)| p.to_string())
        .collect();
    let mut n = (0, 0);
    for v in victims {
        if let Some(node) = tree.remove(&v) {
            n.0 += 1;
            n.1 += node.size();
        }
    }
    n
}

/// The Java home in a tree: the directory holding `lib/modules` under usr/lib/jvm.
pub fn java_home(tree: &Tree) -> Option<String> {
    tree.iter()
        .filter(|(p, n)| {
            p.starts_with("usr/lib/jvm/") && p.ends_with("/lib/modules") && n.data().is_some()
        })
        .map(|(p, _)| p.trim_end_matches("/lib/modules").to_string())
        .next()
}

/// The modules to keep: those holding `packages`, [`ALWAYS`], `extra`, what kept modules
/// imply ([`IMPLIED_BY`]), closed over `requires`.
pub fn select(
    graph: &ModuleGraph,
    packages: &BTreeSet<String>,
    extra: &[String],
) -> Result<BTreeSet<String>> {
    let mut roots = graph.modules_of(packages);
    let all = graph.modules();
    roots.extend(
        ALWAYS
            .iter()
            .filter(|m| all.contains(**m))
            .map(|m| m.to_string()),
    );
    roots.extend(extra.iter().cloned());
    let mut set = graph.closure(&roots)?;
    loop {
        let more: BTreeSet<String> = IMPLIED_BY
            .iter()
            .filter(|(k, v)| set.contains(*k) && all.contains(*v) && !set.contains(*v))
            .map(|(_, v)| v.to_string())
            .collect();
        if more.is_empty() {
            return Ok(set);
        }
        roots.extend(more);
        set = graph.closure(&roots)?;
    }
}

/// Trim the JRE in `tree` to what `packages` (the JDK packages the app references) and
/// `extra` need. With `Modules::All` the tree is left as it is (the report lists every
/// module). Errors name the file; the caller may fall back to the full JRE.
pub fn trim(tree: &mut Tree, packages: &BTreeSet<String>, extra: &Modules) -> Result<TrimReport> {
    let home = java_home(tree).context("the runtime layer has no usr/lib/jvm/*/lib/modules")?;
    let modules_path = format!("{home}/lib/modules");
    let node = tree.get(&modules_path).cloned().context("lib/modules")?;
    let data = node.data().context("lib/modules is not a file")?.to_vec();
    let img = Jimage::parse(&data).with_context(|| format!("/{modules_path}"))?;
    let graph = ModuleGraph::from_jimage(&img).with_context(|| format!("/{modules_path}"))?;
    let all = graph.modules();
    let keep = match extra {
        Modules::All => {
            return Ok(TrimReport {
                modules: all,
                jimage_before: data.len() as u64,
                jimage_after: data.len() as u64,
                ..Default::default()
            })
        }
        Modules::Extra(x) => {
            if let Some(bad) = x.iter().find(|m| !all.contains(*m)) {
                let have: Vec<&str> = all.iter().map(String::as_str).collect();
                return Err(UnknownModule(bad.clone(), have.join(", ")).into());
            }
            select(&graph, packages, x)?
        }
    };
    let removed: BTreeSet<String> = all.difference(&keep).cloned().collect();

    // the new jimage: the kept modules' resources in their original order (jlink laid
    // them out for start-up locality), SystemModulesMap replaced (see system_modules_map)
    let entries = img.entries().with_context(|| format!("/{modules_path}"))?;
    let map = system_modules_map();
    let mut res = Vec::new();
    for e in &entries {
        if !keep.contains(&e.module) {
            continue;
        }
        let bytes: &[u8] = if e.module == "java.base" && e.path == SYSTEM_MODULES_MAP {
            &map
        } else {
            img.content(e).with_context(|| format!("/{modules_path}"))?
        };
        res.push(jimage::Resource {
            module: &e.module,
            path: &e.path,
            data: bytes,
        });
    }
    let new = jimage::write(&res).context("writing the trimmed jimage")?;
    let mut n = node.clone();
    n.kind = crate::tree::Kind::File(std::sync::Arc::new(new.clone()));
    tree.insert(&modules_path, n)?;

    // the files of the modules left out
    let etc = format!(
        "etc/{}",
        home.rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches("-amd64")
            .trim_end_matches("-arm64")
    );
    let mut files_removed = 0;
    let mut bytes_removed = 0;
    for m in &removed {
        for p in module_files(m, &home, &etc) {
            let (f, b) = remove_all(tree, &p);
            files_removed += f;
            bytes_removed += b;
        }
    }
    // The default CDS archive records the full image's size and module graph; the JVM
    // refuses it for the trimmed image (and would silently run without it), so it goes.
    // (lib/classlist is the class list such an archive is dumped from)
    for p in [
        "lib/server/classes.jsa",
        "lib/server/classes_nocoops.jsa",
        "lib/classlist",
    ] {
        let (f, b) = remove_all(tree, &format!("{home}/{p}"));
        files_removed += f;
        bytes_removed += b;
    }
    // release: MODULES="..." in the JDK's order, filtered
    let release_path = format!("{home}/release");
    if let Some(rel) = tree.get(&release_path).cloned() {
        if let Some(text) = rel.data().map(|d| String::from_utf8_lossy(d).into_owned()) {
            let mut out = String::new();
            for line in text.lines() {
                match line.strip_prefix("MODULES=") {
                    Some(v) => {
                        let kept: Vec<&str> = v
                            .trim_matches('"')
                            .split_whitespace()
                            .filter(|m| keep.contains(*m))
                            .collect();
                        out.push_str(&format!("MODULES=\"{}\"\n", kept.join(" ")));
                    }
                    None => {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            let mut r = rel.clone();
            r.kind = crate::tree::Kind::File(std::sync::Arc::new(out.into_bytes()));
            tree.insert(&release_path, r)?;
        }
    }
    Ok(TrimReport {
        modules: keep,
        removed,
        jimage_before: data.len() as u64,
        jimage_after: new.len() as u64,
        files_removed,
        bytes_removed,
    })
}

/// java.base's map of the system-module descriptors jlink generated for the full image.
pub const SYSTEM_MODULES_MAP: &str = "jdk/internal/module/SystemModulesMap.class";

/// `jdk.internal.module.SystemModulesMap` as java.base has it before jlink (see its source):
/// no pre-generated module descriptors (`allSystemModules()` and `defaultSystemModules()`
/// return null, no per-main-module tables), so the JVM reads each module's
/// `module-info.class` from the trimmed image at start-up and resolves the boot layer
/// from what is there. jlink's generated copy describes every module of the full image,
/// which would make the JVM define modules that are not there and load their services.
/// Class-file version 61 (Java 17), five methods, no branches (`classwrite`).
pub fn system_modules_map() -> Vec<u8> {
    const ACC_STATIC: u16 = 0x0008;
    const ACC_FINAL_SUPER: u16 = 0x0030;
    let mut w = ClassWriter::default();
    // the constant pool, in this order
    let this = w.class("jdk/internal/module/SystemModulesMap");
    let object = w.class("java/lang/Object");
    let object_init = w.method_ref(object, "<init>", "()V");
    w.utf8("Code");
    let system_modules = "()Ljdk/internal/module/SystemModules;";
    let names = "()[Ljava/lang/String;";
    for s in [
        "allSystemModules",
        system_modules,
        "defaultSystemModules",
        "moduleNames",
        names,
        "classNames",
    ] {
        w.utf8(s);
    }
    let string = w.class("java/lang/String");
    // aload_0; invokespecial Object.<init>; return
    let [hi, lo] = object_init.to_be_bytes();
    w.method(0, "<init>", "()V", (1, 1), &[0x2a, 0xb7, hi, lo, 0xb1]);
    // aconst_null; areturn
    w.method(
        ACC_STATIC,
        "allSystemModules",
        system_modules,
        (1, 0),
        &[0x01, 0xb0],
    );
    w.method(
        ACC_STATIC,
        "defaultSystemModules",
        system_modules,
        (1, 0),
        &[0x01, 0xb0],
    );
    // iconst_0; anewarray String; areturn
    let [hi, lo] = string.to_be_bytes();
    let empty = [0x03, 0xbd, hi, lo, 0xb0];
    w.method(ACC_STATIC, "moduleNames", names, (1, 0), &empty);
    w.method(ACC_STATIC, "classNames", names, (1, 0), &empty);
    w.finish(61, ACC_FINAL_SUPER, this, object, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64";

    /// The installed JDK, or a visible skip (a failure under CI).
    pub fn jdk() -> Option<PathBuf> {
        let p = Path::new(JDK);
        let ok = p.join("lib/modules").exists() && p.join("bin/jimage").exists();
        crate::testutil::require(ok, &format!("no JDK at {JDK} (openjdk-17-jdk-headless)"))
            .then(|| p.to_path_buf())
    }

    #[test]
    fn system_modules_map_is_a_valid_class() {
        let b = system_modules_map();
        let cf = crate::java::classfile::ClassFile::parse(&b).unwrap();
        let mut p = BTreeSet::new();
        cf.referenced_packages(&mut p).unwrap();
        assert!(
            p.contains("jdk.internal.module") && p.contains("java.lang"),
            "{p:?}"
        );
        let Some(jdk) = jdk() else { return };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("SystemModulesMap.class");
        std::fs::write(&f, &b).unwrap();
        let out = Command::new(jdk.join("bin/javap"))
            .args(["-c", "-p"])
            .arg(&f)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("static jdk.internal.module.SystemModules allSystemModules()"),
            "{text}"
        );
        assert!(
            text.contains("static java.lang.String[] classNames()"),
            "{text}"
        );
        assert!(text.contains("aconst_null"), "{text}");
    }

    /// A Java home in `dir` made of the installed JDK's launcher, libraries and conf (real
    /// copies: the JVM finds its home through the real path of libjvm.so), with the given
    /// lib/modules and release.
    fn java_home_with(jdk: &Path, dir: &Path, tree: &Tree) -> PathBuf {
        let home = dir.join("jre");
        let st = Command::new("cp")
            .args(["-a"])
            .arg(jdk.join("bin"))
            .arg(jdk.join("lib"))
            .arg(jdk.join("conf"))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::create_dir_all(&home).unwrap();
        for d in ["bin", "lib", "conf"] {
            std::fs::rename(dir.join(d), home.join(d)).unwrap();
        }
        let h = java_home(tree).unwrap();
        for (rel, _) in [("lib/modules", ()), ("release", ())] {
            let n = tree.get(&format!("{h}/{rel}")).unwrap();
            std::fs::write(home.join(rel), n.data().unwrap()).unwrap();
        }
        // (lib/classlist is the class list such an archive is dumped from)
        for p in [
            "lib/server/classes.jsa",
            "lib/server/classes_nocoops.jsa",
            "lib/classlist",
        ] {
            if tree.get(&format!("{h}/{p}")).is_none() {
                let _ = std::fs::remove_file(home.join(p));
            }
        }
        home
    }

    fn jre_tree(jdk: &Path) -> Tree {
        let mut t = Tree::new();
        let h = "usr/lib/jvm/java-17-openjdk-amd64";
        for rel in ["lib/modules", "release", "lib/server/classes.jsa"] {
            let b = std::fs::read(jdk.join(rel)).unwrap();
            t.insert(&format!("{h}/{rel}"), Node::file(b, 0o644))
                .unwrap();
        }
        t.insert(
            &format!("{h}/lib/libawt.so"),
            Node::file(b"x".to_vec(), 0o644),
        )
        .unwrap();
        t.insert(
            &format!("{h}/lib/libnet.so"),
            Node::file(b"x".to_vec(), 0o644),
        )
        .unwrap();
        t
    }

    /// The test app: logging, an HTTP server class, XML parsing, EC keys.
    const APP: &str = r#"
import java.util.logging.Logger;
public class T {
    public static void main(String[] a) throws Exception {
        Logger.getLogger("t").info("logging works");
        com.sun.net.httpserver.HttpServer s =
            com.sun.net.httpserver.HttpServer.create(new java.net.InetSocketAddress("127.0.0.1", 0), 0);
        s.stop(0);
        var doc = javax.xml.parsers.DocumentBuilderFactory.newInstance().newDocumentBuilder()
            .parse(new java.io.ByteArrayInputStream("<a><b>xml works</b></a>".getBytes()));
        System.out.println(doc.getDocumentElement().getTextContent());
        var kp = java.security.KeyPairGenerator.getInstance("EC");
        kp.initialize(256);
        System.out.println("ec " + kp.generateKeyPair().getPublic().getAlgorithm());
        var ctx = javax.net.ssl.SSLContext.getInstance("TLS");
        ctx.init(null, null, null);
        long ecdhe = java.util.Arrays.stream(ctx.getDefaultSSLParameters().getCipherSuites())
            .filter(c -> c.contains("ECDHE")).count();
        System.out.println("ecdhe suites " + ecdhe);
        System.out.println("modules " + ModuleLayer.boot().modules().size());
    }
}
"#;

    #[test]
    fn trimmed_jimage_runs_an_app_and_passes_jimage_verify() {
        let Some(jdk) = jdk() else { return };
        let dir = tempfile::tempdir().unwrap();
        // the app, compiled by the host's javac
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("T.java"), APP).unwrap();
        let classes = dir.path().join("classes");
        let st = Command::new(jdk.join("bin/javac"))
            .arg("-d")
            .arg(&classes)
            .arg(src.join("T.java"))
            .status()
            .unwrap();
        assert!(st.success());
        let class = std::fs::read(classes.join("T.class")).unwrap();
        let refs = crate::java::referenced_packages([("T.class", &class[..])]).unwrap();

        let mut tree = jre_tree(&jdk);
        let r = trim(&mut tree, &refs, &Modules::default()).unwrap();
        let kept: Vec<&str> = r.modules.iter().map(String::as_str).collect();
        eprintln!(
            "kept {kept:?}; lib/modules {} -> {}",
            r.jimage_before, r.jimage_after
        );
        for m in [
            "java.base",
            "java.logging",
            "java.xml",
            "jdk.httpserver",
            "jdk.crypto.ec",
        ] {
            assert!(r.modules.contains(m), "{m} missing: {kept:?}");
        }
        for m in ["java.desktop", "jdk.compiler", "java.sql"] {
            assert!(r.removed.contains(m), "{m} kept: {kept:?}");
        }
        assert!(r.jimage_after * 3 < r.jimage_before);
        let h = "usr/lib/jvm/java-17-openjdk-amd64";
        assert!(tree.get(&format!("{h}/lib/libawt.so")).is_none());
        assert!(tree.get(&format!("{h}/lib/libnet.so")).is_some());
        assert!(tree.get(&format!("{h}/lib/server/classes.jsa")).is_none());
        let release =
            String::from_utf8_lossy(tree.get(&format!("{h}/release")).unwrap().data().unwrap())
                .into_owned();
        assert!(release.contains("MODULES=\"java.base "), "{release}");
        assert!(!release.contains("java.desktop"), "{release}");

        // deterministic
        let mut again = jre_tree(&jdk);
        trim(&mut again, &refs, &Modules::default()).unwrap();
        assert_eq!(
            again.get(&format!("{h}/lib/modules")),
            tree.get(&format!("{h}/lib/modules"))
        );

        // the JDK's own reader accepts it
        let home = java_home_with(&jdk, dir.path(), &tree);
        let img = home.join("lib/modules");
        let out = Command::new(jdk.join("bin/jimage"))
            .arg("verify")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "jimage verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(jdk.join("bin/jimage"))
            .arg("list")
            .arg(&img)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            list.contains("Module: jdk.httpserver"),
            "{}",
            &list[..list.len().min(2000)]
        );
        assert!(!list.contains("Module: java.desktop"));

        // the JVM runs on it and does not know the difference
        let java = home.join("bin/java");
        let out = Command::new(&java).arg("--list-modules").output().unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names: BTreeSet<String> = listed
            .lines()
            .filter_map(|l| l.split('@').next())
            .map(str::to_string)
            .collect();
        assert_eq!(names, r.modules, "java --list-modules");
        let out = Command::new(&java)
            .args(["-XshowSettings:properties", "-version"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("java.home = ") && err.contains("OpenJDK"),
            "{err}"
        );
        let out = Command::new(&java)
            .arg("-cp")
            .arg(&classes)
            .arg("T")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}{err}");
        assert!(err.contains("logging works"), "{err}");
        assert!(text.contains("xml works"), "{text}");
        assert!(text.contains("ec EC"), "{text}");
        let n: u32 = text
            .split("ecdhe suites ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(n >= 4, "{text}");
    }
}
