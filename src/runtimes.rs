//! Language runtimes (Java, Node.js, Python) and app servers (Tomcat) from the distribution:
//! which packages to resolve, which of them form the runtime and server layers, what the
//! archive offers, how the app is started, and the per-runtime dead weight. Pure.

#[cfg(test)]
use crate::format::jar::class_path_entry;
pub use crate::format::jar::{
    class_path_closure, jar_attribute, jar_class_path, jar_main_class, ClassPath,
};
pub use crate::manifest::{runtime_of, Request};
use crate::manifest::{AppKind, Manifest};
use crate::resolve::Index;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;

/// The unprivileged user the app runs as.
pub const APP_UID: u32 = 1000;
pub const APP_GID: u32 = 1000;
/// Where the app's artifact lives in the image (and its working directory).
pub const APP_DIR: &str = "/app";

/// Tomcat's writable catalina.base: a skeleton in the server layer whose logs/, work/ and
/// temp/ point into the /tmp tmpfs.
pub const CATALINA_BASE: &str = "/var/lib/fuse-tomcat";

/// Java's home in the image.
pub fn java_home(version: &str, arch: crate::arch::Arch) -> String {
    format!("/usr/lib/jvm/java-{version}-openjdk-{arch}")
}

/// The packages to resolve for a runtime or server request.
pub fn roots(r: &Request) -> Vec<String> {
    match r.name.as_str() {
        "java" => vec![format!("openjdk-{}-jre-headless", r.version)],
        "node" => vec!["nodejs".into()],
        "python" => vec![
            format!("python{}-minimal", r.version),
            format!("libpython{}-stdlib", r.version),
        ],
        "tomcat" => vec![
            format!("tomcat{}-common", r.version),
            format!("libtomcat{}-java", r.version),
        ],
        _ => Vec::new(),
    }
}

/// Does package `name` belong to the layer of request `r` (the runtime's or server's own
/// packages; everything else of the closure goes to the base layer)?
pub fn owns(r: &Request, name: &str) -> bool {
    let v = &r.version;
    match r.name.as_str() {
        "java" => name == format!("openjdk-{v}-jre-headless"),
        "node" => name == "nodejs" || name.starts_with("libnode") || name.starts_with("node-"),
        "python" => {
            name == format!("python{v}-minimal")
                || name == format!("libpython{v}-minimal")
                || name == format!("libpython{v}-stdlib")
        }
        "tomcat" => {
            name == format!("libtomcat{v}-java")
                || name == format!("tomcat{v}-common")
                || name == "libeclipse-jdt-core-java"
        }
        _ => false,
    }
}

/// The versions of a runtime the index has, sorted.
pub fn available(idx: &Index, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in idx.names() {
        let v = match name {
            "java" => n
                .strip_prefix("openjdk-")
                .and_then(|r| r.strip_suffix("-jre-headless"))
                .map(str::to_string),
            "python" => n
                .strip_prefix("python")
                .and_then(|r| r.strip_suffix("-minimal"))
                .filter(|v| v.starts_with("3.") && v.len() > 2)
                .map(str::to_string),
            "tomcat" => n
                .strip_prefix("libtomcat")
                .and_then(|r| r.strip_suffix("-java"))
                .map(str::to_string),
            "node" if n == "nodejs" => {
                for p in idx.versions(n) {
                    // "18.19.0+dfsg-6~deb12u2" (an epoch-less upstream version)
                    let up = p.version.split(':').next_back().unwrap_or(&p.version);
                    if let Some(major) = up.split('.').next() {
                        out.insert(major.to_string());
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(v) = v {
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                out.insert(v);
            }
        }
    }
    out
}

/// Fail early, naming the manifest key, when the archive lacks the requested version.
pub fn check_available(idx: &Index, r: &Request, distribution: &str) -> Result<()> {
    let have = available(idx, &r.name);
    let ok = match r.name.as_str() {
        "node" => have.contains(&r.version),
        _ => have.contains(&r.version) && roots(r).iter().all(|p| idx.newest(p).is_some()),
    };
    if !ok {
        let section = if r.name == "tomcat" {
            "server"
        } else {
            "runtime"
        };
        bail!(
            "`{section}.{}` = {:?}: {distribution} has no {} {} (it has: {})",
            r.name,
            r.version,
            r.name,
            r.version,
            if have.is_empty() {
                "none".to_string()
            } else {
                have.into_iter().collect::<Vec<_>>().join(", ")
            }
        );
    }
    Ok(())
}

/// Dead weight of a runtime's own packages that a headless server never reads (on top of
/// the common filters in layers.rs). Path prefixes, no leading '/'. docs/packages.md lists
/// each with its measured saving.
pub fn dead_weight(r: &Request, arch: crate::arch::Arch) -> Vec<String> {
    let v = &r.version;
    match r.name.as_str() {
        "java" => {
            let home = format!("usr/lib/jvm/java-{v}-openjdk-{arch}");
            vec![
                // The class-data-sharing archive for heaps over 32 GB (uncompressed oops);
                // the default archive (classes.jsa) stays.
                format!("{home}/lib/server/classes_nocoops.jsa"),
                // Sound: never loaded by a headless server.
                format!("{home}/lib/libjsound.so"),
                format!("{home}/man/"),
            ]
        }
        "python" => {
            let lib = format!("usr/lib/python{v}");
            vec![
                // CPython's own regression-test support package.
                format!("{lib}/test/"),
                // The text of the interactive help() topics.
                format!("{lib}/pydoc_data/"),
            ]
        }
        "node" => vec![
            // TypeScript declarations of Node's API (for editors and tsc, not for node).
            "usr/share/nodejs/@types/".into(),
            "usr/share/systemtap/".into(),
        ],
        _ => Vec::new(),
    }
}

/// The default JVM flags: heap sized from the VM's memory, no perf-data file, serial GC
/// (one or two CPUs), C1 only, compiling after 5x the usual invocation counts (fewer
/// compilations during start-up; docs/runtimes.md). `JAVA_OPTS` words are inserted after these, so they win.
pub const JAVA_DEFAULTS: &[&str] = &[
    "-XX:MaxRAMPercentage=75",
    "-XX:InitialRAMPercentage=25",
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-XX:TieredStopAtLevel=1",
    "-XX:CompileThresholdScaling=5",
    "-Djava.security.egd=file:/dev/urandom",
];

/// The start command of the app (argv), and the argv index at which the words of
/// `JAVA_OPTS` are inserted at boot (Java kinds).
pub fn argv(m: &Manifest) -> Result<(Vec<String>, Option<usize>)> {
    let rt = m.runtime.as_ref();
    let version = rt.map(|r| r.version.clone()).unwrap_or_default();
    Ok(match m.kind {
        AppKind::Oci => bail!("internal error: kind oci's argv comes from the container's config"),
        AppKind::Binary => {
            let file_name = m
                .app_path
                .file_name()
                .and_then(|f| f.to_str())
                .context("app path has no file name")?;
            let mut a = vec![format!("{APP_DIR}/{file_name}")];
            a.extend(m.args.iter().cloned());
            (a, None)
        }
        AppKind::Python => {
            // In a virtualenv, its bin/python (pointed at the image's Python by the app
            // layer) makes the venv's site-packages the Python's own.
            let python = match &m.python_venv {
                Some(v) if v.is_empty() => format!("{APP_DIR}/bin/python{version}"),
                Some(v) => format!("{APP_DIR}/{v}/bin/python{version}"),
                None => format!("/usr/bin/python{version}"),
            };
            let mut a = vec![python];
            if m.args.is_empty() {
                a.push(APP_DIR.into());
            } else {
                a.extend(m.args.iter().cloned());
            }
            (a, None)
        }
        AppKind::Node => {
            let mut a = vec!["/usr/bin/node".to_string()];
            if m.args.is_empty() {
                let main = m.node_main.clone().unwrap_or_else(|| "index.js".into());
                a.push(format!("{APP_DIR}/{main}"));
            } else {
                a.extend(m.args.iter().cloned());
            }
            (a, None)
        }
        AppKind::Jar => {
            let j = m.jar.as_ref().context("kind jar without its jar")?;
            let mut a = vec![format!("{}/bin/java", java_home(&version, m.arch))];
            a.extend(JAVA_DEFAULTS.iter().map(|s| s.to_string()));
            let at = a.len();
            if j.spring_boot.is_some() {
                // Laid out exploded in /app: its launcher (the Main-Class) runs from the
                // directory, as Spring Boot's JarLauncher does from an unpacked jar; the
                // Class-Path jars the manifest named are on the class path as `-jar` put them.
                let main = m
                    .main_class
                    .as_ref()
                    .context("a Spring Boot jar without its Main-Class")?;
                let cp: Vec<String> = std::iter::once(APP_DIR.to_string())
                    .chain(j.class_path.iter().map(|c| format!("{APP_DIR}/{c}")))
                    .collect();
                a.extend(["-cp".into(), cp.join(":"), main.clone()]);
            } else {
                a.push("-jar".into());
                a.push(format!("{APP_DIR}/{}", j.main));
            }
            a.extend(m.args.iter().cloned());
            (a, Some(at))
        }
        AppKind::War => {
            let server = m.server.as_ref().context("kind war needs a [server]")?;
            let home = format!("/usr/share/tomcat{}", server.version);
            let mut a = vec![format!("{}/bin/java", java_home(&version, m.arch))];
            a.extend(JAVA_DEFAULTS.iter().map(|s| s.to_string()));
            a.extend([
                format!("-Dcatalina.home={home}"),
                format!("-Dcatalina.base={CATALINA_BASE}"),
                "-Djava.io.tmpdir=/tmp".to_string(),
                "-Djava.util.logging.manager=org.apache.juli.ClassLoaderLogManager".into(),
                format!("-Djava.util.logging.config.file={CATALINA_BASE}/conf/logging.properties"),
            ]);
            let at = a.len();
            a.extend([
                "-cp".into(),
                format!("{home}/bin/bootstrap.jar:{home}/bin/tomcat-juli.jar"),
                "org.apache.catalina.startup.Bootstrap".into(),
                "start".into(),
            ]);
            (a, Some(at))
        }
    })
}

/// Decode the first PEM `CERTIFICATE` block of `pem` to DER.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find(BEGIN)? + BEGIN.len();
    let end = start + text.get(start..)?.find("-----END CERTIFICATE-----")?;
    let b64: String = text
        .get(start..end)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Java's CA keystore, made natively from the distribution's CA certificates (the
/// ca-certificates-java hook needs a JVM): a JKS file (magic 0xFEEDFEED, version 2) with
/// one trusted-certificate entry per `usr/share/ca-certificates/**.crt`, aliased
/// `debian:<file name>.pem`, sorted, dated `epoch`, sealed with the SHA-1 keyed by the
/// default password "changeit". None when the tree has no certificates.
pub fn java_cacerts(tree: &crate::tree::Tree, epoch: u64) -> Option<Vec<u8>> {
    use sha1::Digest;
    let mut certs: Vec<(String, Vec<u8>)> = Vec::new();
    for (path, node) in tree.iter() {
        if path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt") {
            if let Some(der) = node.data().and_then(pem_to_der) {
                let name = path.rsplit('/').next().unwrap_or(path).to_lowercase();
                let alias = format!("debian:{}", name.replace(".crt", ".pem"));
                certs.push((alias, der));
            }
        }
    }
    if certs.is_empty() {
        return None;
    }
    certs.sort();
    certs.dedup_by(|a, b| a.0 == b.0);
    let utf = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let mut out = Vec::new();
    out.extend_from_slice(&0xFEED_FEEDu32.to_be_bytes());
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(certs.len() as u32).to_be_bytes());
    for (alias, der) in &certs {
        out.extend_from_slice(&2u32.to_be_bytes()); // trusted certificate entry
        utf(&mut out, alias);
        out.extend_from_slice(&epoch.saturating_mul(1000).to_be_bytes());
        utf(&mut out, "X.509");
        out.extend_from_slice(&(der.len() as u32).to_be_bytes());
        out.extend_from_slice(der);
    }
    let mut h = sha1::Sha1::new();
    for c in "changeit".encode_utf16() {
        h.update(c.to_be_bytes());
    }
    h.update(b"Mighty Aphrodite");
    h.update(&out);
    out.extend_from_slice(&h.finalize());
    Some(out)
}

/// The global web.xml (the distribution ships it in the `tomcat10` service package, not in
/// the library packages): static files by the default servlet, JSPs by Jasper.
const DEFAULT_WEB_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0">
  <servlet>
    <servlet-name>default</servlet-name>
    <servlet-class>org.apache.catalina.servlets.DefaultServlet</servlet-class>
    <init-param><param-name>listings</param-name><param-value>false</param-value></init-param>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet>
    <servlet-name>jsp</servlet-name>
    <servlet-class>org.apache.jasper.servlet.JspServlet</servlet-class>
    <load-on-startup>3</load-on-startup>
  </servlet>
  <servlet-mapping><servlet-name>default</servlet-name><url-pattern>/</url-pattern></servlet-mapping>
  <servlet-mapping><servlet-name>jsp</servlet-name><url-pattern>*.jsp</url-pattern></servlet-mapping>
  <welcome-file-list>
    <welcome-file>index.html</welcome-file>
    <welcome-file>index.jsp</welcome-file>
  </welcome-file-list>
</web-app>
"#;

/// The version of what [`tomcat_base`] writes, a key input of the server layer: 2 added
/// `conf/context.xml`, 3 the MBean-registry listener, 4 wrote its class without repeated
/// constants.
pub const CATALINA_BASE_LAYOUT: u32 = 4;

/// Tomcat's catalina.base for the image, laid out in the server layer (read-only): the
/// server configuration (the `[app] port`, the ROOT context from the war laid out
/// exploded in `/app/ROOT` (the Host's appBase is /app), the work directory in the /tmp tmpfs, no shutdown port), logging
/// to the console only, the default context (`conf/context.xml`) and the global web.xml.
pub fn tomcat_base(
    version: &str,
    port: u16,
    jsp_compiler: bool,
    mbeans: bool,
    epoch: u64,
) -> Result<crate::tree::Tree> {
    use crate::tree::{Node, Tree};
    let server_xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by fuse: Tomcat {version} serving the war exploded in /app/ROOT as the ROOT context. -->
<Server port="-1" shutdown="SHUTDOWN">
{no_mbeans}  <Listener className="org.apache.catalina.startup.VersionLoggerListener" />
  <Service name="Catalina">
    <Connector port="{port}" protocol="HTTP/1.1" connectionTimeout="20000" />
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="/app" workDir="/tmp/tomcat/work"
            unpackWARs="false" autoDeploy="false" deployOnStartup="true" />
    </Engine>
  </Service>
</Server>
"#,
        no_mbeans = if mbeans {
            String::new()
        } else {
            format!(
                "  <Listener className=\"{}\" />\n",
                crate::java::listener::NO_MBEAN_REGISTRY
            )
        },
    );
    let logging = "handlers = java.util.logging.ConsoleHandler\n\
        .handlers = java.util.logging.ConsoleHandler\n\
        java.util.logging.ConsoleHandler.level = FINE\n\
        java.util.logging.ConsoleHandler.formatter = org.apache.juli.OneLineFormatter\n\
        java.util.logging.ConsoleHandler.encoding = UTF-8\n";
    let mut t = Tree::new();
    let base = CATALINA_BASE.trim_start_matches('/');
    let stamp = |mut n: Node| {
        n.mtime = epoch;
        n
    };
    t.insert(base, stamp(Node::dir(0o755)))?;
    t.insert(&format!("{base}/conf"), stamp(Node::dir(0o755)))?;
    t.insert(
        &format!("{base}/conf/server.xml"),
        stamp(Node::file(server_xml.into_bytes(), 0o644)),
    )?;
    t.insert(
        &format!("{base}/conf/logging.properties"),
        stamp(Node::file(logging.as_bytes().to_vec(), 0o644)),
    )?;
    t.insert(
        &format!("{base}/conf/web.xml"),
        stamp(Node::file(DEFAULT_WEB_XML.as_bytes().to_vec(), 0o644)),
    )?;
    // The default context: Tomcat scans the war's WEB-INF/lib for TLDs and web fragments as
    // always, but not its own class path (no war relies on a fragment in Tomcat's jars,
    // and catalina.base/lib holds none) nor the Class-Path entries of jar manifests
    // (Debian's jasper.jar names the JSP compiler, which an image without JSP pages lacks:
    // a NoSuchFileException stack trace at every start). 4-5 s of a TCG start.
    t.insert(
        &format!("{base}/conf/context.xml"),
        stamp(Node::file(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!-- Written by fuse: the default context of every web application. -->\n\
<Context>\n  <JarScanner scanClassPath=\"false\" scanManifest=\"false\" />\n</Context>\n"
                .to_vec(),
            0o644,
        )),
    )?;
    // Where Tomcat looks for context descriptors (it only reads it here).
    t.insert(
        &format!("{base}/conf/Catalina/localhost"),
        stamp(Node::dir(0o755)),
    )?;
    t.insert(&format!("{base}/lib"), stamp(Node::dir(0o755)))?;
    if !mbeans {
        t.insert(&format!("{base}/lib/fuse"), stamp(Node::dir(0o755)))?;
        t.insert(
            &format!(
                "{base}/lib/{}",
                crate::java::listener::NO_MBEAN_REGISTRY_FILE
            ),
            stamp(Node::file(
                crate::java::listener::no_mbean_registry_class(),
                0o644,
            )),
        )?;
    }
    if jsp_compiler {
        t.insert(
            &format!("{base}/lib/ecj.jar"),
            stamp(Node::symlink(JSP_COMPILER_JAR)),
        )?;
    }
    Ok(t)
}

/// The Eclipse JDT compiler Jasper compiles JSP pages with (a dependency of Debian's
/// Tomcat, 6.8 MB): kept only for a war that holds JSP pages, then linked into
/// catalina.base's `lib` so Jasper finds it.
pub const JSP_COMPILER_PACKAGE: &str = "libeclipse-jdt-core-java";
const JSP_COMPILER_JAR: &str = "/usr/share/java/eclipse-jdt-core.jar";

/// Packages a runtime depends on only for what a headless server never does (AWT fonts
/// and images, printing, sound, smart cards, the NSS PKCS#11 provider, util-linux's tools;
/// Tomcat's JSP compiler when the war has no JSP page): resolution leaves them out
/// (`resolve::resolve_excluding`), with whatever only they would pull in, so the lock never
/// pins them. List one in `[system] packages` to keep it.
pub fn unused_packages(r: &Request, jsp: bool) -> Vec<&'static str> {
    match r.name.as_str() {
        "java" => vec![
            "libcups2",
            "libfontconfig1",
            "libfreetype6",
            "libharfbuzz0b",
            "liblcms2-2",
            "libjpeg62-turbo",
            "libasound2",
            "libpcsclite1",
            "libnss3",
            "util-linux",
        ],
        "tomcat" if !jsp => vec![JSP_COMPILER_PACKAGE],
        _ => Vec::new(),
    }
}

fn is_jsp(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [".jsp", ".jspx", ".jspf", ".tag", ".tagx"]
        .iter()
        .any(|ext| n.ends_with(ext))
}

/// Does a war laid out as files (each name relative to the war's root, with its bytes)
/// hold JSP pages or tag files, as [`war_has_jsp`] asks of the archive?
pub fn war_files_have_jsp<'a>(files: &[(&'a str, &'a [u8])]) -> Result<bool> {
    if files.iter().any(|(n, _)| is_jsp(n)) {
        return Ok(true);
    }
    for (name, jar) in files {
        if name.starts_with("WEB-INF/lib/") && name.ends_with(".jar") {
            let inner = crate::format::zip::entries(jar)
                .with_context(|| format!("cannot read {name} in the war"))?;
            if inner
                .iter()
                .any(|i| i.name.starts_with("META-INF/resources/") && is_jsp(&i.name))
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Does a war hold JSP pages or tag files (in the war, or as Servlet 3 resources in
/// `META-INF/resources` of a jar under `WEB-INF/lib`)? Only then does Tomcat need its JSP
/// compiler. A war that cannot be read is an error naming the entry.
pub fn war_has_jsp(war: &[u8]) -> Result<bool> {
    let entries = crate::format::zip::entries(war)?;
    let mut budget = crate::format::zip::Budget::for_input(war.len());
    let mut files = Vec::with_capacity(entries.len());
    for e in &entries {
        let data = if e.name.starts_with("WEB-INF/lib/") && e.name.ends_with(".jar") {
            budget
                .read(war, e)
                .with_context(|| format!("cannot read {} in the war", e.name))?
        } else {
            Vec::new()
        };
        files.push((e.name.as_str(), data));
    }
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    war_files_have_jsp(&files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A zip written by hand (stored and deflated entries).
    pub(crate) use crate::format::zip::tests::make as zip_of;

    /// A jar whose manifest has `attrs` (lines, `\r\n` added) and the given entries.
    pub(crate) fn jar_of(attrs: &[&str], entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut mf = String::from("Manifest-Version: 1.0\r\n");
        for a in attrs {
            mf.push_str(a);
            mf.push_str("\r\n");
        }
        mf.push_str("\r\n");
        let mut all: Vec<(&str, &[u8], bool)> = vec![("META-INF/MANIFEST.MF", mf.as_bytes(), true)];
        all.extend(entries.iter().map(|(n, d)| (*n, *d, false)));
        zip_of(&all)
    }

    #[test]
    fn class_path_entries_resolve_against_the_naming_jars_directory() {
        assert_eq!(
            class_path_entry("", "lib/a.jar").as_deref(),
            Some("lib/a.jar")
        );
        assert_eq!(
            class_path_entry("lib", "b%20c.jar").as_deref(),
            Some("lib/b c.jar")
        );
        assert_eq!(
            class_path_entry("lib", "../x/./y.jar").as_deref(),
            Some("x/y.jar")
        );
        assert_eq!(
            class_path_entry("", "classes/").as_deref(),
            Some("classes/")
        );
        for outside in [
            "../x.jar",
            "/opt/x.jar",
            "file:/opt/x.jar",
            "http://h/x.jar",
            "%zz.jar",
            ".",
        ] {
            assert_eq!(class_path_entry("", outside), None, "{outside}");
        }
    }

    #[test]
    fn class_path_is_followed_transitively_and_missing_entries_reported() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("lib")).unwrap();
        std::fs::create_dir_all(r.join("classes")).unwrap();
        // continuation line: the manifest's 72-byte lines split long Class-Paths
        let main = jar_of(
            &[
                "Main-Class: a.Main",
                "Class-Path: lib/a.jar lib/b%20c.jar classes/ lib/missin",
                " g.jar lib/a.jar",
            ],
            &[],
        );
        std::fs::write(r.join("app.jar"), main).unwrap();
        std::fs::write(
            r.join("lib/a.jar"),
            jar_of(&["Class-Path: d.jar ../app.jar"], &[]),
        )
        .unwrap();
        std::fs::write(r.join("lib/b c.jar"), jar_of(&[], &[])).unwrap();
        std::fs::write(r.join("lib/d.jar"), jar_of(&[], &[])).unwrap();
        std::fs::write(r.join("lib/unnamed.jar"), jar_of(&[], &[])).unwrap();
        let cp = class_path_closure(r, "app.jar", None).unwrap();
        assert_eq!(
            cp.entries,
            ["classes/", "lib/a.jar", "lib/b c.jar", "lib/d.jar"]
        );
        assert_eq!(cp.missing, ["lib/missing.jar (Class-Path of app.jar)"]);
        // leaving the directory that becomes /app is an error naming the entry
        std::fs::write(
            r.join("lib/d.jar"),
            jar_of(&["Class-Path: ../../up.jar"], &[]),
        )
        .unwrap();
        let e = format!("{:#}", class_path_closure(r, "app.jar", None).unwrap_err());
        assert!(e.contains("lib/d.jar") && e.contains("../../up.jar"), "{e}");
    }

    #[test]
    fn the_jsp_compiler_is_kept_only_for_a_war_with_jsp_pages() {
        let servlet_only = zip_of(&[
            ("WEB-INF/web.xml", b"<web-app/>", true),
            ("WEB-INF/classes/hello/H.class", b"\xca\xfe", false),
            ("index.html", b"hi", true),
        ]);
        assert!(!war_has_jsp(&servlet_only).unwrap());
        for page in ["index.jsp", "WEB-INF/tags/t.TAG", "a/b.jspx", "inc.jspf"] {
            let war = zip_of(&[
                ("WEB-INF/web.xml", b"<web-app/>", true),
                (page, b"<%= 1 %>", true),
            ]);
            assert!(war_has_jsp(&war).unwrap(), "{page}");
        }
        // Servlet 3 resources of a library jar count; a JSP elsewhere in a jar does not.
        let lib = zip_of(&[("META-INF/resources/page.jsp", b"<%= 1 %>", true)]);
        let war = zip_of(&[("WEB-INF/lib/ui.jar", &lib, false)]);
        assert!(war_has_jsp(&war).unwrap());
        let lib = zip_of(&[("templates/page.jsp", b"<%= 1 %>", true)]);
        let war = zip_of(&[("WEB-INF/lib/ui.jar", &lib, true)]);
        assert!(!war_has_jsp(&war).unwrap());
        let broken = zip_of(&[("WEB-INF/lib/bad.jar", b"not a jar", false)]);
        let e = format!("{:#}", war_has_jsp(&broken).unwrap_err());
        assert!(e.contains("WEB-INF/lib/bad.jar"), "{e}");
        let tomcat = Request {
            name: "tomcat".into(),
            version: "10".into(),
        };
        assert_eq!(unused_packages(&tomcat, false), [JSP_COMPILER_PACKAGE]);
        assert!(unused_packages(&tomcat, true).is_empty());
    }

    #[test]
    fn jasper_finds_the_jsp_compiler_in_catalina_base_lib() {
        let with = tomcat_base("10", 8080, true, false, 0).unwrap();
        let link = format!("{}/lib/ecj.jar", CATALINA_BASE.trim_start_matches('/'));
        assert!(with.get(&link).is_some());
        let without = tomcat_base("10", 8080, false, false, 0).unwrap();
        assert!(without.get(&link).is_none());
    }

    #[test]
    fn the_mbean_registry_is_off_unless_the_manifest_keeps_it() {
        let base = CATALINA_BASE.trim_start_matches('/');
        let class = format!(
            "{base}/lib/{}",
            crate::java::listener::NO_MBEAN_REGISTRY_FILE
        );
        let server_xml = |t: &crate::tree::Tree| {
            let n = t.get(&format!("{base}/conf/server.xml")).unwrap();
            String::from_utf8(n.data().unwrap().to_vec()).unwrap()
        };
        let off = tomcat_base("10", 8080, false, false, 0).unwrap();
        let xml = server_xml(&off);
        let listener = format!(
            "<Listener className=\"{}\" />",
            crate::java::listener::NO_MBEAN_REGISTRY
        );
        // first, so the registry is off before the server's own registration
        assert!(
            xml.find(&listener).unwrap() < xml.find("VersionLoggerListener").unwrap(),
            "{xml}"
        );
        assert_eq!(
            off.get(&class).unwrap().data().unwrap(),
            crate::java::listener::no_mbean_registry_class().as_slice()
        );
        let on = tomcat_base("10", 8080, false, true, 0).unwrap();
        assert!(!server_xml(&on).contains(&listener));
        assert!(on.get(&class).is_none());
    }

    #[test]
    fn main_class_is_read_from_stored_and_deflated_manifests() {
        let mf = b"Manifest-Version: 1.0\r\nCreated-By: 17 (Debian)\r\nMain-Class: com.example.Ver\r\n yLongMain\r\n\r\nName: x\r\nMain-Class: no\r\n";
        for deflate in [false, true] {
            let z = zip_of(&[
                ("a.txt", b"x", false),
                ("META-INF/MANIFEST.MF", mf, deflate),
            ]);
            assert_eq!(
                jar_main_class(&z).unwrap().as_deref(),
                Some("com.example.VeryLongMain")
            );
        }
        let z = zip_of(&[("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n", true)]);
        assert_eq!(jar_main_class(&z).unwrap(), None);
        let z = zip_of(&[("x", b"y", false)]);
        assert_eq!(jar_main_class(&z).unwrap(), None);
        assert!(jar_main_class(b"not a zip at all, clearly").is_err());
    }

    #[test]
    fn cross_check_with_the_jar_tool_when_present() {
        if !crate::testutil::require_tool("/usr/bin/jar") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.txt"), "Main-Class: a.b.C\n").unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let st = std::process::Command::new("/usr/bin/jar")
            .current_dir(d.path())
            .args(["cfm", "t.jar", "m.txt", "f"])
            .status()
            .unwrap();
        assert!(st.success());
        let jar = std::fs::read(d.path().join("t.jar")).unwrap();
        assert_eq!(jar_main_class(&jar).unwrap().as_deref(), Some("a.b.C"));
    }

    #[test]
    fn java_keystore_is_read_by_keytool() {
        // A certificate made by openssl, the keystore checked with keytool (when present).
        if !crate::testutil::require_tool("openssl") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("openssl")
            .current_dir(d.path())
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
            ])
            .args(["-out", "c.crt", "-subj", "/CN=fuse test CA", "-days", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read(d.path().join("c.crt")).unwrap();
        let mut t = crate::tree::Tree::new();
        t.insert(
            "usr/share/ca-certificates/test/Fuse_Test.crt",
            crate::tree::Node::file(pem.clone(), 0o644),
        )
        .unwrap();
        let jks = java_cacerts(&t, 1_700_000_000).unwrap();
        assert_eq!(&jks[..8], &[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2]);
        assert!(java_cacerts(&crate::tree::Tree::new(), 0).is_none());
        let der = pem_to_der(&pem).unwrap();
        assert!(jks.windows(der.len()).any(|w| w == der));
        if !crate::testutil::require_tool("/usr/bin/keytool") {
            return;
        }
        std::fs::write(d.path().join("cacerts"), &jks).unwrap();
        let o = std::process::Command::new("/usr/bin/keytool")
            .args(["-list", "-v", "-storepass", "changeit", "-keystore"])
            .arg(d.path().join("cacerts"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("debian:fuse_test.pem"), "{out}");
        assert!(out.contains("trustedCertEntry"), "{out}");
        assert!(out.contains("CN=fuse test CA"), "{out}");
    }

    #[test]
    fn layer_ownership_and_dead_weight() {
        let py = Request {
            name: "python".into(),
            version: "3.11".into(),
        };
        assert!(owns(&py, "libpython3.11-stdlib"));
        assert!(!owns(&py, "libffi8"));
        // The one filter (build::units::is_dead_weight) over the runtime's list.
        let dead = |prefixes: Vec<String>, path: &str, keep: &[&str]| {
            let f = crate::plan::Filter {
                common: Vec::new(),
                runtime: prefixes,
                keep: keep.iter().map(|k| k.to_string()).collect(),
            };
            crate::build::units::is_dead_weight(&f, path)
        };
        let dw = dead_weight(&py, crate::arch::Arch::Amd64);
        assert!(dead(dw.clone(), "usr/lib/python3.11/test/test_os.py", &[]));
        assert!(!dead(dw.clone(), "usr/lib/python3.11/os.py", &[]));
        assert!(!dead(
            dw,
            "usr/lib/python3.11/test/x.py",
            &["usr/lib/python3.11/test"]
        ));
        let j = Request {
            name: "java".into(),
            version: "17".into(),
        };
        assert_eq!(roots(&j), ["openjdk-17-jre-headless"]);
        assert!(dead(
            dead_weight(&j, crate::arch::Arch::Amd64),
            "usr/lib/jvm/java-17-openjdk-amd64/lib/server/classes_nocoops.jsa",
            &[]
        ));
        assert!(!dead(
            dead_weight(&j, crate::arch::Arch::Amd64),
            "usr/lib/jvm/java-17-openjdk-amd64/lib/server/classes.jsa",
            &[]
        ));
    }
}
