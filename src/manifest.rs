//! `fuse.toml` v1: raw serde types (strict, unknown keys rejected) turned into a validated [`Manifest`].
//!
//! Every error names the key and the line it is on. Paths are relative to the manifest.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The file name looked for when `fuse build` is given a directory.
pub const MANIFEST_FILE: &str = "fuse.toml";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    image: Spanned<RawImage>,
    app: Spanned<RawApp>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    runtime: Option<Spanned<toml::Table>>,
    #[serde(default)]
    server: Option<Spanned<toml::Table>>,
    #[serde(default)]
    system: Option<Spanned<RawSystem>>,
    #[serde(default)]
    budget: Option<Spanned<RawBudget>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    image: Option<Spanned<toml::Value>>,
    #[serde(default)]
    layers: Option<BTreeMap<String, Spanned<toml::Value>>>,
    boot: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Spanned<String>,
    version: Spanned<String>,
    arch: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawApp {
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    /// kind "oci": the container image (registry reference, `oci-layout:`, `docker-archive:`).
    image: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<String>,
    port: Option<Spanned<i64>>,
    #[serde(default)]
    env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    stop_timeout: Option<Spanned<i64>>,
    #[serde(default)]
    writable: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    layers: Option<Spanned<Vec<RawAppLayer>>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawAppLayer {
    name: String,
    paths: Vec<String>,
}

/// An `[app] layers` entry: the app's files matching `paths` go to layer `name`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppLayerRule {
    pub name: String,
    /// Patterns relative to /app: `*` (not across `/`), `**`, `?`; a pattern that names a
    /// directory takes everything under it.
    pub paths: Vec<String>,
}

/// Most `[app] layers` entries (and most image layers a container image's layers become).
pub const MAX_APP_LAYERS: usize = 8;

/// Kind oci: the image layers below the top one ("app") are `oci-1`, `oci-2`, ...
pub const OCI_LAYER_PREFIX: &str = "oci-";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    http: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    distribution: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    packages: Option<Spanned<Vec<String>>>,
    mirror: Option<Spanned<String>>,
    keyring: Option<Spanned<String>>,
    #[serde(default)]
    keep: Option<Spanned<Vec<String>>>,
}

/// What kind of artifact the app is; decides the runtime layers and the start command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppKind {
    Binary,
    Jar,
    War,
    Node,
    Python,
    /// A container image: its file system and config are the app (`[app] image`).
    Oci,
}

impl AppKind {
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Binary => "binary",
            AppKind::Jar => "jar",
            AppKind::War => "war",
            AppKind::Node => "node",
            AppKind::Python => "python",
            AppKind::Oci => "oci",
        }
    }

    /// Is the artifact a directory (node, python) rather than one file?
    pub fn is_dir(self) -> bool {
        matches!(self, AppKind::Node | AppKind::Python)
    }
}

/// A jar app: the jar `java -jar` runs, and the jars beside it that its `Class-Path`
/// names (then the app layer holds those too, at the same places relative to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JarApp {
    /// The main jar relative to /app: the file name, or in an app directory the one jar
    /// at its top with a Main-Class.
    pub main: String,
    /// `app.path` is a directory (all of it goes to /app), not the jar itself.
    pub dir: bool,
    /// Jars and class directories (`x/`) the Class-Path reaches, transitively, relative to
    /// /app, sorted; only those that exist (the others are warned about).
    pub class_path: Vec<String>,
    /// A Spring Boot executable jar (its manifest names `Spring-Boot-Classes` and
    /// `Spring-Boot-Lib`): laid out exploded in /app, its nested libraries a layer apart.
    pub spring_boot: Option<SpringBoot>,
}

/// Where a Spring Boot executable jar keeps the app's classes and its nested libraries
/// (the manifest's `Spring-Boot-Classes`, `Spring-Boot-Lib`), relative to the jar's root,
/// each ending in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpringBoot {
    pub classes: String,
    pub lib: String,
}

impl SpringBoot {
    /// The Spring Boot layout a jar's manifest declares, if it declares one (both
    /// attributes); a value that is not a plain relative directory is an error.
    pub fn of_jar(jar: &[u8]) -> Result<Option<SpringBoot>> {
        let classes = crate::format::jar::jar_attribute(jar, "Spring-Boot-Classes")?;
        let lib = crate::format::jar::jar_attribute(jar, "Spring-Boot-Lib")?;
        let (Some(classes), Some(lib)) = (classes, lib) else {
            return Ok(None);
        };
        let dir = |name: &str, v: String| -> Result<String> {
            let t = v.trim_end_matches('/');
            if t.is_empty()
                || t.starts_with('/')
                || t.contains('\\')
                || t.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            {
                bail!("{name}: {v:?} is not a directory inside the jar");
            }
            Ok(format!("{t}/"))
        };
        Ok(Some(SpringBoot {
            classes: dir("Spring-Boot-Classes", classes)?,
            lib: dir("Spring-Boot-Lib", lib)?,
        }))
    }
}

impl JarApp {
    /// The directory on the build machine that becomes /app.
    pub fn root(&self, app_path: &Path) -> PathBuf {
        if self.dir {
            app_path.to_path_buf()
        } else {
            app_path.parent().map(Path::to_path_buf).unwrap_or_default()
        }
    }
}

/// A supported distribution release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distribution {
    /// "debian"
    pub vendor: String,
    /// "bookworm" or "trixie"
    pub codename: String,
}

/// A validated manifest: every value checked, every path absolute.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The manifest file itself.
    pub file: PathBuf,
    /// Its exact bytes' sha256 (an input of the image).
    pub sha256: String,
    pub name: String,
    pub version: String,
    /// `[image] arch`: the CPU architecture of the image (default amd64).
    pub arch: crate::arch::Arch,
    pub kind: AppKind,
    /// The artifact, absolute (kind oci: the manifest's directory).
    pub app_path: PathBuf,
    /// Kind oci: the container image as `[app] image` names it.
    pub oci_image: Option<String>,
    pub args: Vec<String>,
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// Health-check path for GET, e.g. "/".
    pub health_http: Option<String>,
    pub distribution: Distribution,
    pub kernel: String,
    pub packages: Vec<String>,
    pub mirror: Option<String>,
    /// OpenPGP keyring for the archive, absolute.
    pub keyring: Option<PathBuf>,
    /// Path prefixes kept even where the dead-weight filters would drop them.
    pub keep: Vec<String>,
    /// The language runtime (`[runtime]`, or the kind's default version).
    pub runtime: Option<Request>,
    /// The app server (`[server]`, kind war).
    pub server: Option<Request>,
    /// `[server] mbeans` (kind war): keep Tomcat's MBean registry (JMX); off by default.
    pub server_mbeans: bool,
    /// `[runtime] modules` (Java kinds): modules added to the analysis, or "all".
    pub java_modules: crate::java::Modules,
    /// `[runtime] bytecode` (kind python): compile the image's Python modules at build time
    /// (`pyc`); default on for amd64 images, off for arm64 (no emulation in the build).
    pub python_bytecode: bool,
    /// A jar's Main-Class (kind jar).
    pub main_class: Option<String>,
    /// Kind jar: which jar runs and what its `Class-Path` brings in.
    pub jar: Option<JarApp>,
    /// package.json's `main` (kind node), relative to the app directory.
    pub node_main: Option<String>,
    /// `[budget]`: size limits checked by `fuse build`, the boot time by `fuse test`.
    pub budget: crate::budget::Budget,
    /// A Python virtualenv in the app directory (kind python): its directory relative to
    /// the app directory ("" when the app directory is the venv itself).
    pub python_venv: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the machine is asked to stop.
    pub stop_timeout: u32,
    /// Directories mounted as tmpfs owned by the app user, sorted.
    pub writable: Vec<String>,
    /// `[app] layers`: the app's split into layers, bottom to top (files matching no entry
    /// go to the top layer, "app"); `None`: the split the app's kind implies.
    pub app_layers: Option<Vec<AppLayerRule>>,
}

/// `[app] stop_timeout` when the manifest has none (seconds).
pub const DEFAULT_STOP_TIMEOUT: u32 = 30;
/// The longest `[app] stop_timeout` (seconds); the init refuses more.
pub const MAX_STOP_TIMEOUT: u32 = 3600;

/// Top-level directories an `[app] writable` path must not be in: what the init mounts
/// itself (/proc, /sys, /dev, /run, /tmp) and the system's own files. The init checks the
/// same rule (init/src/config.rs).
pub const NOT_WRITABLE: &[&str] = &[
    "proc", "sys", "dev", "run", "tmp", "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64",
    "libx32", "boot", "fuse",
];

/// Checks one `[app] writable` path; the error says why it is refused.
pub fn check_writable(path: &str) -> std::result::Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not an absolute path"));
    };
    if rest.is_empty() {
        return Err("\"/\": the root directory cannot be a tmpfs".into());
    }
    if path.len() > 256 {
        return Err(format!("{path:?} is longer than 256 bytes"));
    }
    for c in rest.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("{path:?} has an empty, `.` or `..` component"));
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
        {
            return Err(format!(
                "{path:?}: component {c:?} has characters other than [A-Za-z0-9._@+-]"
            ));
        }
    }
    let top = rest.split('/').next().unwrap_or(rest);
    if NOT_WRITABLE.contains(&top) {
        return Err(format!(
            "{path:?} is inside /{top}, which the init manages or the system owns (/tmp, /var/tmp and /dev/shm are writable already)"
        ));
    }
    Ok(())
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{}:{}: `{}`: {}",
            self.file.display(),
            line_of(self.text, span.start),
            key,
            msg
        )
    }
}

/// Read and validate `fuse.toml` (a file, or a directory holding one).
pub fn load(path: &Path) -> Result<Manifest> {
    let (file, text) = read(path)?;
    parse(&text, &file)
}

/// The manifest file (`path`, or `path/fuse.toml` for a directory) and its text.
fn read(path: &Path) -> Result<(PathBuf, String)> {
    let file = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read manifest {}", file.display()))?;
    Ok((file, text))
}

/// The TOML document, its keys checked (unknown keys are errors naming their line).
fn document(text: &str, file: &Path) -> Result<RawManifest> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        anyhow::anyhow!("{}{}: {}", file.display(), line, e.message())
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

fn is_env_key(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c))
}

/// Parse manifest text; `file` is used for messages and to resolve relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Manifest> {
    let raw = document(text, file)?;
    let cx = Ctx { text, file };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };

    let image = raw.image.into_inner();
    let arch = check_image(&cx, &image)?;
    let app_span = raw.app.span();
    let app = raw.app.into_inner();
    let kind = app_kind(&cx, &app)?;
    let oci_image = match (kind, &app.image, &app.path) {
        (AppKind::Oci, Some(i), None) => {
            let v = i.get_ref();
            if v.is_empty() || v.len() > 4096 || v.chars().any(|c| c.is_control()) {
                bail!(cx.err(
                    "app.image",
                    i.span(),
                    "expected a container image: REGISTRY/REPO@sha256:..., REGISTRY/REPO:TAG, \
                     oci-layout:DIR[:TAG] or docker-archive:FILE"
                ));
            }
            Some(oci_image_path(v, &base))
        }
        (AppKind::Oci, None, _) => bail!(cx.err(
            "app.image",
            app_span,
            "missing: kind \"oci\" takes the container image (`image = \"REGISTRY/REPO@sha256:...\"`)"
        )),
        (AppKind::Oci, Some(_), Some(p)) => bail!(cx.err(
            "app.path",
            p.span(),
            "kind \"oci\" takes `image`, not `path`"
        )),
        (_, Some(i), _) => bail!(cx.err(
            "app.image",
            i.span(),
            "only kind \"oci\" takes an image (the others take `path`)"
        )),
        (_, None, _) => None,
    };
    let (rel, rel_span) = match &app.path {
        Some(p) => (p.get_ref().clone(), p.span()),
        None if kind == AppKind::Oci => (".".to_string(), app_span.clone()),
        None => bail!(cx.err("app.path", app_span, "missing: the app artifact")),
    };
    if rel.is_empty() {
        bail!(cx.err("app.path", rel_span, "must not be empty"));
    }
    let app_path = base.join(&rel);
    let meta = std::fs::metadata(&app_path).map_err(|e| {
        cx.err(
            "app.path",
            rel_span.clone(),
            format!("cannot read {}: {e}", app_path.display()),
        )
    })?;
    // a jar app may be a directory holding the jar and the jars its Class-Path names
    let dir_ok = kind.is_dir() || kind == AppKind::Jar || kind == AppKind::Oci;
    let usable = meta.is_file() || (dir_ok && meta.is_dir());
    if !usable {
        bail!(cx.err(
            "app.path",
            rel_span.clone(),
            format!("{} is not a file", app_path.display())
        ));
    }
    if kind.is_dir() && !meta.is_dir() {
        bail!(cx.err(
            "app.path",
            rel_span.clone(),
            format!(
                "kind {:?} takes the app directory, and {} is not a directory",
                kind.name(),
                app_path.display()
            )
        ));
    }
    let app_path = std::fs::canonicalize(&app_path)
        .with_context(|| format!("cannot resolve {}", app_path.display()))?;
    let port = match app.port {
        // The container's first ExposedPorts entry, once it is read (`app::AppScan::port`).
        None if kind == AppKind::Oci => 0,
        None => bail!(cx.err("app.port", app_span, "missing: the port the app listens on")),
        Some(p) => {
            let v = *p.get_ref();
            if !(1..=65535).contains(&v) {
                bail!(cx.err(
                    "app.port",
                    p.span(),
                    format!("{v} is not a TCP port (1-65535)")
                ));
            }
            v as u16
        }
    };
    let env_span = app
        .env
        .as_ref()
        .map(|e| e.span())
        .unwrap_or(app_span.clone());
    let mut env = BTreeMap::new();
    for (k, v) in app.env.map(Spanned::into_inner).unwrap_or_default() {
        if !is_env_key(&k) {
            bail!(cx.err(
                &format!("app.env.{k}"),
                env_span.clone(),
                "not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        if v.get_ref().contains('\0') {
            bail!(cx.err(
                &format!("app.env.{k}"),
                v.span(),
                "value contains a NUL byte"
            ));
        }
        env.insert(k, v.into_inner());
    }
    for a in &app.args {
        if a.contains('\0') {
            bail!(cx.err(
                "app.args",
                app_span.clone(),
                "an argument contains a NUL byte"
            ));
        }
    }

    let stop_timeout = match &app.stop_timeout {
        None => DEFAULT_STOP_TIMEOUT,
        Some(t) => {
            let v = *t.get_ref();
            if !(1..=i64::from(MAX_STOP_TIMEOUT)).contains(&v) {
                bail!(cx.err(
                    "app.stop_timeout",
                    t.span(),
                    format!("{v} is not a number of seconds from 1 to {MAX_STOP_TIMEOUT}")
                ));
            }
            v as u32
        }
    };
    let mut writable = Vec::new();
    if let Some(w) = &app.writable {
        for path in w.get_ref() {
            if let Err(why) = check_writable(path) {
                bail!(cx.err("app.writable", w.span(), why));
            }
            if writable.contains(path) {
                bail!(cx.err(
                    "app.writable",
                    w.span(),
                    format!("{path:?} is listed twice")
                ));
            }
            writable.push(path.clone());
        }
        writable.sort();
    }
    let mut app_layers = None;
    if let (AppKind::Oci, Some(l)) = (kind, &app.layers) {
        bail!(cx.err(
            "app.layers",
            l.span(),
            "kind \"oci\" takes its layers from the container image"
        ));
    }
    if let Some(l) = &app.layers {
        let mut rules: Vec<AppLayerRule> = Vec::new();
        if l.get_ref().len() > MAX_APP_LAYERS {
            bail!(cx.err(
                "app.layers",
                l.span(),
                format!("at most {MAX_APP_LAYERS} layers")
            ));
        }
        for r in l.get_ref() {
            let reserved = ["base", "runtime", "server", "app"].contains(&r.name.as_str());
            // a GPT partition name (`fuse-<name>`) holds 36 characters
            let long = r.name.len() > 24;
            if !is_name(&r.name) || long || reserved || rules.iter().any(|o| o.name == r.name) {
                bail!(cx.err(
                    "app.layers",
                    l.span(),
                    format!(
                        "layer name {:?} must be 1-24 characters of [a-z0-9-], not base, runtime, server or app, and used once",
                        r.name
                    )
                ));
            }
            for p in &r.paths {
                if p.is_empty()
                    || p.starts_with('/')
                    || p.split('/').any(|c| c == "..")
                    || p.len() > 4096
                {
                    bail!(cx.err(
                        "app.layers",
                        l.span(),
                        format!("path pattern {p:?} must be relative to the app, without `..`")
                    ));
                }
            }
            rules.push(AppLayerRule {
                name: r.name.clone(),
                paths: r.paths.clone(),
            });
        }
        app_layers = Some(rules);
    }

    let health_http = health(&cx, raw.health)?;
    let mut java_modules = crate::java::Modules::default();
    let mut python_bytecode = None;
    let runtime = match (runtime_of(kind), raw.runtime) {
        (None, Some(r)) => bail!(cx.err(
            "runtime",
            r.span(),
            format!(
                "kind {:?} takes no [runtime] (runtimes come with jar, war, node, python)",
                kind.name()
            )
        )),
        (None, None) => None,
        (Some((want, default)), r) => {
            let span = r.as_ref().map(|r| r.span()).unwrap_or(app_span.clone());
            let table = r.map(Spanned::into_inner).unwrap_or_default();
            let mut version = default.to_string();
            for (k, v) in &table {
                if k == "modules" && want == "java" {
                    java_modules = match v {
                        toml::Value::String(s) if s == "all" => crate::java::Modules::All,
                        toml::Value::Array(a) => {
                            let mut out = Vec::new();
                            for m in a {
                                match m.as_str() {
                                    Some(n)
                                        if !n.is_empty()
                                            && n.split('.').all(|p| {
                                                !p.is_empty()
                                                    && p.bytes().all(|b| {
                                                        b.is_ascii_alphanumeric() || b == b'_'
                                                    })
                                            }) =>
                                    {
                                        out.push(n.to_string())
                                    }
                                    _ => bail!(cx.err(
                                        "runtime.modules",
                                        span.clone(),
                                        format!(
                                            "{m} is not a module name (e.g. \"jdk.localedata\")"
                                        )
                                    )),
                                }
                            }
                            crate::java::Modules::Extra(out)
                        }
                        _ => bail!(cx.err(
                            "runtime.modules",
                            span.clone(),
                            "must be a list of JDK module names or \"all\""
                        )),
                    };
                    continue;
                }
                if k == "bytecode" && want == "python" {
                    match v.as_bool() {
                        Some(b) => python_bytecode = Some(b),
                        None => {
                            bail!(cx.err("runtime.bytecode", span.clone(), "must be true or false"))
                        }
                    }
                    continue;
                }
                if k != want {
                    bail!(cx.err(
                        &format!("runtime.{k}"),
                        span.clone(),
                        format!(
                            "kind {:?} runs on {want}; expected `{want} = \"<version>\"`",
                            kind.name()
                        )
                    ));
                }
                match v.as_str() {
                    Some(s)
                        if !s.is_empty()
                            && s.len() <= 16
                            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
                    {
                        version = s.to_string()
                    }
                    _ => bail!(cx.err(
                        &format!("runtime.{k}"),
                        span.clone(),
                        "must be a version string of digits and dots, e.g. \"17\" or \"3.11\""
                    )),
                }
            }
            Some(Request {
                name: want.into(),
                version,
            })
        }
    };
    let mut server_mbeans = false;
    let server = match (kind, raw.server) {
        (AppKind::War, None) => bail!(cx.err(
            "server",
            app_span.clone(),
            "kind \"war\" needs an app server: add [server] with tomcat = \"10\""
        )),
        (AppKind::War, Some(s)) => {
            let span = s.span();
            let table = s.into_inner();
            let mut out = None;
            for (k, v) in &table {
                if k == "mbeans" {
                    server_mbeans = v.as_bool().ok_or_else(|| {
                        cx.err("server.mbeans", span.clone(), "must be true or false")
                    })?;
                    continue;
                }
                if k != "tomcat" {
                    bail!(cx.err(
                        &format!("server.{k}"),
                        span.clone(),
                        "unknown server (supported: tomcat)"
                    ));
                }
                match v.as_str() {
                    Some(s)
                        if !s.is_empty()
                            && s.len() <= 16
                            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
                    {
                        out = Some(Request {
                            name: "tomcat".into(),
                            version: s.into(),
                        })
                    }
                    _ => bail!(cx.err(
                        "server.tomcat",
                        span.clone(),
                        "must be a version string, e.g. \"10\""
                    )),
                }
            }
            Some(out.ok_or_else(|| cx.err("server", span, "names no server: add tomcat = \"10\""))?)
        }
        (_, Some(s)) => bail!(cx.err(
            "server",
            s.span(),
            format!(
                "kind {:?} takes no [server] ([server] is for kind = \"war\")",
                kind.name()
            )
        )),
        (_, None) => None,
    };
    let jar_app = if kind == AppKind::Jar {
        let (main, dir) = if app_path.is_dir() {
            let main = main_jar_of(&app_path)
                .map_err(|e| cx.err("app.path", rel_span.clone(), format!("{e:#}")))?;
            (main, true)
        } else {
            let name = app_path
                .file_name()
                .and_then(|f| f.to_str())
                .with_context(|| format!("{} has no usable file name", app_path.display()))?;
            (name.to_string(), false)
        };
        Some(JarApp {
            main,
            dir,
            class_path: Vec::new(),
            spring_boot: None,
        })
    } else {
        None
    };
    // The main jar, read once here for its Main-Class and Class-Path.
    let mut main_jar_bytes = None;
    let main_class = if let Some(j) = &jar_app {
        let main_jar = j.root(&app_path).join(&j.main);
        let jar = std::fs::read(&main_jar).map_err(|e| {
            cx.err(
                "app.path",
                rel_span.clone(),
                format!("cannot read {}: {e}", main_jar.display()),
            )
        })?;
        let app_path = &main_jar;
        let class = crate::format::jar::jar_main_class(&jar);
        main_jar_bytes = Some(jar);
        match class {
            Ok(Some(c)) => Some(c),
            Ok(None) => bail!(cx.err(
                "app.path",
                rel_span.clone(),
                format!("{} has no Main-Class in META-INF/MANIFEST.MF: build an executable jar (jar --main-class, or the build tool's manifest setting)", app_path.display())
            )),
            Err(e) => bail!(cx.err("app.path", rel_span.clone(), format!("{} is not a readable jar: {e:#}", app_path.display()))),
        }
    } else {
        None
    };
    // After the Main-Class check, so that a jar that is no zip is reported as such.
    let jar_app = match jar_app {
        Some(mut j) => {
            let cp = crate::format::jar::class_path_closure(
                &j.root(&app_path),
                &j.main,
                main_jar_bytes.as_deref(),
            )
            .map_err(|e| cx.err("app.path", rel_span.clone(), format!("{e:#}")))?;
            for m in &cp.missing {
                tracing::warn!("Class-Path entry {m} does not exist: the JVM skips it");
            }
            j.class_path = cp.entries;
            if let Some(jar) = &main_jar_bytes {
                j.spring_boot = SpringBoot::of_jar(jar).map_err(|e| {
                    cx.err(
                        "app.path",
                        rel_span.clone(),
                        format!("{}: {e:#}", j.root(&app_path).join(&j.main).display()),
                    )
                })?;
            }
            Some(j)
        }
        None => None,
    };
    if kind == AppKind::War {
        let war = std::fs::read(&app_path).map_err(|e| {
            cx.err(
                "app.path",
                rel_span.clone(),
                format!("cannot read {}: {e}", app_path.display()),
            )
        })?;
        if let Err(e) = crate::format::zip::entry(&war, "WEB-INF/web.xml") {
            bail!(cx.err(
                "app.path",
                rel_span.clone(),
                format!("{} is not a readable war: {e:#}", app_path.display())
            ));
        }
    }
    let node_main = if kind == AppKind::Node && app.args.is_empty() {
        let pj = app_path.join("package.json");
        let main = match std::fs::read(&pj) {
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| {
                    cx.err(
                        "app.path",
                        rel_span.clone(),
                        format!("{} is not JSON: {e}", pj.display()),
                    )
                })?;
                v.get("main")
                    .and_then(|m| m.as_str())
                    .unwrap_or("index.js")
                    .to_string()
            }
            Err(_) => "index.js".to_string(),
        };
        let main = crate::tree::normalize(&main).map_err(|e| {
            cx.err(
                "app.path",
                rel_span.clone(),
                format!("package.json main: {e}"),
            )
        })?;
        if !app_path.join(&main).is_file() {
            bail!(cx.err(
                "app.args",
                app_span.clone(),
                format!("no args, and the app's entry point {} (package.json `main`, else index.js) is not a file", app_path.join(&main).display())
            ));
        }
        Some(main)
    } else {
        None
    };
    let python_venv = match (&runtime, kind) {
        (Some(rt), AppKind::Python) => find_venv(&app_path, &rt.version)
            .map_err(|e| cx.err("app.path", rel_span.clone(), format!("{e:#}")))?,
        _ => None,
    };
    if kind == AppKind::Python && app.args.is_empty() && !app_path.join("__main__.py").is_file() {
        bail!(cx.err(
            "app.args",
            app_span.clone(),
            "kind \"python\" needs args (e.g. [\"-m\", \"myapp\"] or [\"server.py\"]) or a __main__.py in the app directory"
        ));
    }

    let sys = system(
        &cx,
        raw.system.map(Spanned::into_inner).unwrap_or_default(),
        &base,
        arch,
    )?;

    let budget = match raw.budget {
        None => crate::budget::Budget::default(),
        Some(b) => {
            let rules: Option<Vec<String>> = app_layers
                .as_ref()
                .map(|r: &Vec<AppLayerRule>| r.iter().map(|r| r.name.clone()).collect());
            parse_budget(&cx, kind, rules.as_deref(), b)?
        }
    };

    Ok(Manifest {
        file: file.to_path_buf(),
        sha256: crate::digest::sha256_hex(text.as_bytes()),
        name: image.name.into_inner(),
        version: image.version.into_inner(),
        arch,
        kind,
        app_path,
        oci_image,
        args: app.args,
        port,
        env,
        health_http,
        distribution: sys.distribution,
        kernel: sys.kernel,
        packages: sys.packages,
        mirror: sys.mirror,
        keyring: sys.keyring,
        keep: sys.keep,
        runtime,
        java_modules,
        python_bytecode: python_bytecode.unwrap_or(arch == crate::arch::Arch::Amd64),
        server,
        server_mbeans,
        main_class,
        jar: jar_app,
        node_main,
        budget,
        python_venv,
        stop_timeout,
        writable,
        app_layers,
    })
}

/// The `[budget]` of a manifest file (or directory) and the file's sha256, without reading
/// the app (for `fuse test`, where the artifact may be absent): as strict as [`load`] about
/// the file's keys and the budget's values.
pub fn load_budget(path: &Path) -> Result<(String, crate::budget::Budget)> {
    let (file, text) = read(path)?;
    let raw = document(&text, &file)?;
    let cx = Ctx {
        text: &text,
        file: &file,
    };
    let kind = app_kind(&cx, raw.app.get_ref())?;
    let rules = rule_names(raw.app.get_ref());
    let budget = match raw.budget {
        None => crate::budget::Budget::default(),
        Some(b) => parse_budget(&cx, kind, rules.as_deref(), b)?,
    };
    Ok((crate::digest::sha256_hex(text.as_bytes()), budget))
}

/// `[image]`: the name and version, checked; the architecture.
fn check_image(cx: &Ctx, image: &RawImage) -> Result<crate::arch::Arch> {
    if !is_name(image.name.get_ref()) {
        bail!(cx.err(
            "image.name",
            image.name.span(),
            "must be 1-63 characters of [a-z0-9-]"
        ));
    }
    if !is_version(image.version.get_ref()) {
        bail!(cx.err(
            "image.version",
            image.version.span(),
            "must be 1-64 characters of [A-Za-z0-9._+~-]"
        ));
    }
    match &image.arch {
        None => Ok(crate::arch::Arch::default()),
        Some(a) => match a.get_ref().as_str() {
            "amd64" => Ok(crate::arch::Arch::Amd64),
            "arm64" => Ok(crate::arch::Arch::Arm64),
            other => bail!(cx.err(
                "image.arch",
                a.span(),
                format!("unknown architecture {other:?} (expected \"amd64\" or \"arm64\")")
            )),
        },
    }
}

/// `[app] kind`.
fn app_kind(cx: &Ctx, app: &RawApp) -> Result<AppKind> {
    Ok(match app.kind.get_ref().as_str() {
        "binary" => AppKind::Binary,
        "jar" => AppKind::Jar,
        "war" => AppKind::War,
        "node" => AppKind::Node,
        "python" => AppKind::Python,
        "oci" => AppKind::Oci,
        other => bail!(cx.err(
            "app.kind",
            app.kind.span(),
            format!("unknown kind {other:?} (expected one of binary, jar, war, node, python, oci)")
        )),
    })
}

/// `[health] http`: a path starting with '/'.
fn health(cx: &Ctx, h: Option<Spanned<RawHealth>>) -> Result<Option<String>> {
    Ok(match h {
        None => None,
        Some(h) => match h.into_inner().http {
            None => None,
            Some(p) => {
                if !p.get_ref().starts_with('/')
                    || p.get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control())
                {
                    bail!(cx.err(
                        "health.http",
                        p.span(),
                        "must be a path starting with '/' without spaces"
                    ));
                }
                Some(p.into_inner())
            }
        },
    })
}

/// `[system]`, checked; paths relative to the manifest's folder `base`.
struct System {
    distribution: Distribution,
    kernel: String,
    packages: Vec<String>,
    mirror: Option<String>,
    keyring: Option<PathBuf>,
    keep: Vec<String>,
}

fn system(cx: &Ctx, system: RawSystem, base: &Path, arch: crate::arch::Arch) -> Result<System> {
    let distribution = match &system.distribution {
        None => Distribution { vendor: "debian".into(), codename: "bookworm".into() },
        Some(d) => match d.get_ref().as_str() {
            "debian/bookworm" | "debian/trixie" => {
                let (v, c) = d.get_ref().split_once('/').unwrap_or(("debian", "bookworm"));
                Distribution { vendor: v.into(), codename: c.into() }
            }
            other => bail!(cx.err(
                "system.distribution",
                d.span(),
                format!("unsupported distribution {other:?} (expected \"debian/bookworm\" or \"debian/trixie\")")
            )),
        },
    };
    let kernel = match &system.kernel {
        None => arch.default_kernel().to_string(),
        Some(k)
            if crate::arch::ALL
                .iter()
                .any(|a| *a != arch && k.get_ref().ends_with(&format!("-{a}"))) =>
        {
            bail!(cx.err(
                "system.kernel",
                k.span(),
                format!(
                    "{:?} is another architecture's kernel; the image is {arch} (`[image] arch`): \
                     use {:?} or leave `kernel` out",
                    k.get_ref(),
                    arch.default_kernel()
                )
            ))
        }
        Some(k) if is_package_name(k.get_ref()) && k.get_ref().starts_with("linux-image-") => {
            k.get_ref().clone()
        }
        Some(k) => bail!(cx.err(
            "system.kernel",
            k.span(),
            format!("{:?} is not a linux-image-* package name", k.get_ref())
        )),
    };
    let mut packages = Vec::new();
    if let Some(p) = &system.packages {
        for name in p.get_ref() {
            if !is_package_name(name) {
                bail!(cx.err(
                    "system.packages",
                    p.span(),
                    format!("{name:?} is not a valid package name")
                ));
            }
        }
        packages = p.get_ref().clone();
    }
    let mirror = match &system.mirror {
        None => None,
        Some(m) => {
            let u = m.get_ref().trim_end_matches('/');
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                bail!(cx.err(
                    "system.mirror",
                    m.span(),
                    "must be an http:// or https:// URL"
                ));
            }
            Some(u.to_string())
        }
    };
    let keyring = system.keyring.as_ref().map(|k| base.join(k.get_ref()));
    let mut keep = Vec::new();
    if let Some(k) = &system.keep {
        for path in k.get_ref() {
            match crate::tree::normalize(path) {
                Ok(p) => keep.push(p),
                Err(e) => bail!(cx.err("system.keep", k.span(), e)),
            }
        }
    }
    Ok(System {
        distribution,
        kernel,
        packages,
        mirror,
        keyring,
        keep,
    })
}

/// `[budget]`: every value a string with a unit; layer budgets name layers this kind of app
/// has.
fn parse_budget(
    cx: &Ctx,
    kind: AppKind,
    rules: Option<&[String]>,
    b: Spanned<RawBudget>,
) -> Result<crate::budget::Budget> {
    use crate::budget::{parse_duration_ms, parse_size, Limit};
    let limit = |key: &str, v: &Spanned<toml::Value>, parse: fn(&str) -> Result<u64>| {
        let Some(text) = v.get_ref().as_str() else {
            return Err(cx.err(
                key,
                v.span(),
                "must be a string with a unit, e.g. \"40 MB\" or \"20s\"",
            ));
        };
        parse(text)
            .map(|value| Limit {
                value,
                text: text.to_string(),
            })
            .map_err(|e| cx.err(key, v.span(), e))
    };
    let b = b.into_inner();
    let mut out = crate::budget::Budget::default();
    if let Some(v) = &b.image {
        out.image = Some(limit("budget.image", v, parse_size)?);
    }
    if let Some(v) = &b.boot {
        out.boot = Some(limit("budget.boot", v, parse_duration_ms)?);
    }
    if let Some(layers) = b.layers {
        let names = layer_names(kind, rules);
        for (name, v) in layers {
            let key = format!("budget.layers.{name}");
            if !names.contains(&name) {
                bail!(cx.err(
                    &key,
                    v.span(),
                    format!(
                        "kind {:?} has no layer {name:?} (its layers: {})",
                        kind.name(),
                        names.join(", ")
                    )
                ));
            }
            let l = limit(&key, &v, parse_size)?;
            out.layers.insert(name, l);
        }
    }
    Ok(out)
}

/// The jar at the top of an app directory that has a Main-Class: exactly one.
fn main_jar_of(dir: &Path) -> Result<String> {
    let mut jars: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.to_ascii_lowercase().ends_with(".jar"))
        .collect();
    jars.sort();
    let mut main = Vec::new();
    for j in &jars {
        let p = dir.join(j);
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if let Ok(Some(_)) = crate::format::jar::jar_main_class(&bytes) {
            main.push(j.clone());
        }
    }
    match main.len() {
        1 => Ok(main.remove(0)),
        0 if jars.is_empty() => bail!(
            "{} holds no jar at its top (kind \"jar\" takes the jar, or a directory holding it and the jars its Class-Path names)",
            dir.display()
        ),
        0 => bail!(
            "{} holds no executable jar: none of {} has a Main-Class",
            dir.display(),
            jars.join(", ")
        ),
        _ => bail!(
            "{} holds {} jars with a Main-Class ({}): set app.path to the one that runs",
            dir.display(),
            main.len(),
            main.join(", ")
        ),
    }
}

/// The Python version (`3.11`) a virtualenv was made for: pyvenv.cfg's `version` (or
/// `version_info`, as uv writes it), else the name of its `lib/pythonX.Y` directory.
pub fn venv_python_version(venv: &Path) -> Result<String> {
    let cfg = venv.join("pyvenv.cfg");
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("cannot read {}", cfg.display()))?;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if matches!(k.trim(), "version" | "version_info") {
            let mut parts = v.trim().split('.');
            if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
                return Ok(format!("{a}.{b}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
        for e in rd.flatten() {
            if let Some(v) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("python"))
            {
                return Ok(v.to_string());
            }
        }
    }
    bail!("{} names no Python version", cfg.display())
}

/// The virtualenv of a Python app directory: the directory itself or one directly inside
/// it holding `pyvenv.cfg`. Made for another Python minor version than `runtime`: an error
/// naming both.
fn find_venv(app: &Path, runtime: &str) -> Result<Option<String>> {
    let mut found = Vec::new();
    if app.join("pyvenv.cfg").is_file() {
        found.push(String::new());
    }
    let mut subdirs: Vec<String> = std::fs::read_dir(app)
        .with_context(|| format!("cannot read {}", app.display()))?
        .flatten()
        .filter(|e| e.path().join("pyvenv.cfg").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    subdirs.sort();
    found.extend(subdirs);
    match found.len() {
        0 => Ok(None),
        1 => {
            let rel = found.remove(0);
            let venv = app.join(&rel);
            let have = venv_python_version(&venv)?;
            if have != runtime {
                bail!(
                    "{} is a virtualenv for Python {have}, but the image runs Python {runtime} ([runtime] python = {runtime:?}): recreate it with Python {runtime}, or set [runtime] python = {have:?} when the distribution has it",
                    venv.display()
                );
            }
            Ok(Some(rel))
        }
        _ => bail!(
            "{} holds {} virtualenvs ({}): keep one",
            app.display(),
            found.len(),
            found
                .iter()
                .map(|f| if f.is_empty() { "." } else { f.as_str() })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A `[runtime]` or `[server]` request: `java = "17"`, `tomcat = "10"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// "java", "node", "python" or "tomcat"
    pub name: String,
    pub version: String,
}

impl Request {
    /// As recorded in fuse.lock's inputs: `java=17`.
    pub fn key(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// The runtime a kind needs and the distribution's default version of it.
pub fn runtime_of(kind: AppKind) -> Option<(&'static str, &'static str)> {
    match kind {
        AppKind::Binary | AppKind::Oci => None,
        AppKind::Jar | AppKind::War => Some(("java", "17")),
        AppKind::Node => Some(("node", "18")),
        AppKind::Python => Some(("python", "3.11")),
    }
}

/// The layers an app of `kind` may get (the names a `[budget.layers]` key may use): with
/// `[app] layers` (`rules`, their names) those and `app`, else the kind's split (`deps`
/// below `app` for python, node, jar and war; the `deps` layer is left out of an image whose app
/// has no dependency files).
pub fn layer_names(kind: AppKind, rules: Option<&[String]>) -> Vec<String> {
    let system: &[&str] = match kind {
        AppKind::Binary => &["base"],
        AppKind::Oci => {
            let mut v = vec!["base".to_string()];
            v.extend((1..MAX_APP_LAYERS).map(|i| format!("{OCI_LAYER_PREFIX}{i}")));
            v.push("app".into());
            return v;
        }
        AppKind::War => &["base", "runtime", "server"],
        AppKind::Jar | AppKind::Node | AppKind::Python => &["base", "runtime"],
    };
    let app: Vec<String> = match rules {
        Some(r) => r.to_vec(),
        None if matches!(
            kind,
            AppKind::Jar | AppKind::War | AppKind::Node | AppKind::Python
        ) =>
        {
            vec!["deps".into()]
        }
        None => vec![],
    };
    system
        .iter()
        .map(|s| s.to_string())
        .chain(app)
        .chain(["app".to_string()])
        .collect()
}

/// The names of `[app] layers` as written (`None` without the key).
fn rule_names(app: &RawApp) -> Option<Vec<String>> {
    app.layers
        .as_ref()
        .map(|l| l.get_ref().iter().map(|r| r.name.clone()).collect())
}

/// `[app] image` with an `oci-layout:DIR` or `docker-archive:FILE` path made absolute
/// (relative to the manifest, as every path of the manifest); registry references as given.
fn oci_image_path(v: &str, base: &Path) -> String {
    for scheme in ["oci-layout:", "docker-archive:"] {
        if let Some(rest) = v.strip_prefix(scheme) {
            if !rest.starts_with('/') {
                return format!("{scheme}{}", base.join(rest).display());
            }
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_app(text: &str) -> (tempfile::TempDir, Result<Manifest>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"\x7fELF").unwrap();
        let file = dir.path().join("fuse.toml");
        std::fs::write(&file, text).unwrap();
        let r = load(&file);
        (dir, r)
    }

    #[test]
    fn kind_oci_takes_an_image_and_no_path() {
        let oci = |app: &str| format!("[image]\nname = \"web\"\nversion = \"1\"\n\n[app]\n{app}\n");
        let (dir, m) = with_app(&oci("kind = \"oci\"\nimage = \"oci-layout:img:v1\""));
        let m = m.unwrap();
        assert_eq!(m.kind, AppKind::Oci);
        assert_eq!(m.port, 0, "the port comes from the container when not set");
        let want = format!("oci-layout:{}:v1", dir.path().join("img").display());
        assert_eq!(m.oci_image.as_deref(), Some(want.as_str()));
        let (_d, m) = with_app(&oci(
            "kind = \"oci\"\nimage = \"127.0.0.1:5000/a/b@sha256:00\"\nport = 9000",
        ));
        let m = m.unwrap();
        assert_eq!(m.oci_image.as_deref(), Some("127.0.0.1:5000/a/b@sha256:00"));
        assert_eq!(m.port, 9000);
        for (app, key, why) in [
            ("kind = \"oci\"", "app.image", "missing"),
            (
                "kind = \"oci\"\nimage = \"x:1\"\npath = \"hello\"",
                "app.path",
                "not `path`",
            ),
            (
                "kind = \"binary\"\npath = \"hello\"\nport = 1\nimage = \"x:1\"",
                "app.image",
                "only kind",
            ),
            ("kind = \"binary\"\nport = 1", "app.path", "missing"),
            (
                "kind = \"oci\"\nimage = \"x:1\"\n[[app.layers]]\nname = \"a\"\npaths = [\"b\"]",
                "app.layers",
                "from the container",
            ),
        ] {
            let (_d, r) = with_app(&oci(app));
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains(key) && e.contains(why), "{app}: {e}");
        }
    }

    const GOOD: &str = r#"
[image]
name = "hello"
version = "1.0.0"

[app]
kind = "binary"
path = "hello"
port = 8080
[app.env]
GREETING = "world"

[health]
http = "/"
"#;

    #[test]
    fn good_manifest_parses_with_defaults() {
        let (_d, m) = with_app(GOOD);
        let m = m.unwrap();
        assert_eq!(m.name, "hello");
        assert_eq!(m.port, 8080);
        assert_eq!(m.env.get("GREETING").map(String::as_str), Some("world"));
        assert_eq!(m.distribution.codename, "bookworm");
        assert_eq!(m.kernel, "linux-image-amd64");
        assert!(m.app_path.is_absolute());
        assert_eq!(m.sha256.len(), 64);
    }

    fn err_of(text: &str) -> String {
        let (_d, m) = with_app(text);
        format!("{:#}", m.unwrap_err())
    }

    #[test]
    fn arch_picks_the_kernel_and_refuses_the_other_architectures_kernel() {
        let (_d, m) = with_app(&GOOD.replace(
            "version = \"1.0.0\"",
            "version = \"1.0.0\"\narch = \"arm64\"",
        ));
        let m = m.unwrap();
        assert_eq!(m.arch, crate::arch::Arch::Arm64);
        assert_eq!(m.kernel, "linux-image-arm64");
        let (_d, m) = with_app(GOOD);
        assert_eq!(m.unwrap().arch, crate::arch::Arch::Amd64);
        let e = err_of(&GOOD.replace(
            "version = \"1.0.0\"",
            "version = \"1.0.0\"\narch = \"riscv64\"",
        ));
        assert!(e.contains("image.arch") && e.contains("riscv64"), "{e}");
        let e = err_of(&format!(
            "{}\n[system]\nkernel = \"linux-image-cloud-amd64\"\n",
            GOOD.replace(
                "version = \"1.0.0\"",
                "version = \"1.0.0\"\narch = \"arm64\""
            )
        ));
        assert!(
            e.contains("system.kernel")
                && e.contains("another architecture")
                && e.contains("linux-image-arm64"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err_of(&GOOD.replace("port = 8080", "port = 8080\nprot = 1"));
        assert!(e.contains("prot"), "{e}");
        assert!(e.contains("fuse.toml:10:"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = err_of(&GOOD.replace("name = \"hello\"", "name = \"Hello_World\""));
        assert!(e.contains(":3:") && e.contains("image.name"), "{e}");
        let e = err_of(&GOOD.replace("port = 8080", "port = 70000"));
        assert!(e.contains(":9:") && e.contains("app.port"), "{e}");
        let e = err_of(&GOOD.replace("kind = \"binary\"", "kind = \"cobol\""));
        assert!(e.contains("app.kind") && e.contains("cobol"), "{e}");
        let e = err_of(&GOOD.replace("path = \"hello\"", "path = \"missing\""));
        assert!(e.contains("app.path") && e.contains(":8:"), "{e}");
        let e = err_of(&GOOD.replace("http = \"/\"", "http = \"health\""));
        assert!(e.contains("health.http"), "{e}");
        let e = err_of(&format!(
            "{GOOD}\n[system]\ndistribution = \"ubuntu/noble\"\n"
        ));
        assert!(
            e.contains("system.distribution") && e.contains("noble"),
            "{e}"
        );
    }

    #[test]
    fn missing_section_and_type_errors() {
        let e = err_of("[image]\nname = \"x\"\nversion = \"1\"\n");
        assert!(e.contains("app"), "{e}");
        let e = err_of(&GOOD.replace("port = 8080", "port = \"8080\""));
        assert!(e.contains(":9"), "{e}");
    }

    #[test]
    fn budget_layers_are_the_apps_layers_deps_or_its_own() {
        // python, node, jar: the dependency layer may have a budget
        assert_eq!(
            layer_names(AppKind::Python, None),
            ["base", "runtime", "deps", "app"]
        );
        assert_eq!(layer_names(AppKind::Binary, None), ["base", "app"]);
        assert_eq!(
            layer_names(AppKind::War, None),
            ["base", "runtime", "server", "deps", "app"]
        );
        // `[app] layers`: those names, and no `deps`
        let with_rules = GOOD.replace(
            "port = 8080",
            "port = 8080\nlayers = [{ name = \"assets\", paths = [\"static/\"] }]",
        );
        let (_d, m) = with_app(&format!(
            "{with_rules}\n[budget]\nlayers.assets = \"2 MB\"\n"
        ));
        assert_eq!(m.unwrap().budget.layers["assets"].value, 2_000_000);
        let e = err_of(&format!("{with_rules}\n[budget]\nlayers.deps = \"2 MB\"\n"));
        assert!(
            e.contains("budget.layers.deps") && e.contains("base, assets, app"),
            "{e}"
        );
    }

    #[test]
    fn budget_parses_and_bad_units_name_key_and_line() {
        let (_d, m) = with_app(&format!(
            "{GOOD}\n[budget]\nimage = \"40 MB\"\nboot = \"20s\"\nlayers.app = \"1 MiB\"\n"
        ));
        let b = m.unwrap().budget;
        assert_eq!(b.image.unwrap().value, 40_000_000);
        assert_eq!(b.boot.unwrap().value, 20_000);
        assert_eq!(b.layers["app"].value, 1 << 20);
        let (_d, m) = with_app(GOOD);
        assert!(m.unwrap().budget.is_empty());
        // GOOD ends on line 15; [budget] is line 16, its first key line 17.
        let e = err_of(&format!("{GOOD}\n[budget]\nimage = \"40 mb\"\n"));
        assert!(
            e.contains("fuse.toml:17:")
                && e.contains("budget.image")
                && e.contains("did you mean MB"),
            "{e}"
        );
        let e = err_of(&format!("{GOOD}\n[budget]\nimage = \"1 MB\"\nboot = 20\n"));
        assert!(
            e.contains(":18:") && e.contains("budget.boot") && e.contains("unit"),
            "{e}"
        );
        let e = err_of(&format!("{GOOD}\n[budget]\nboot = \"20 MB\"\n"));
        assert!(e.contains("budget.boot") && e.contains("MB"), "{e}");
        let e = err_of(&format!("{GOOD}\n[budget]\nlayers.runtime = \"20 MB\"\n"));
        assert!(
            e.contains(":17:") && e.contains("budget.layers.runtime") && e.contains("base, app"),
            "{e}"
        );
        let e = err_of(&format!("{GOOD}\n[budget]\nsize = \"20 MB\"\n"));
        assert!(e.contains(":17") && e.contains("size"), "{e}");
    }

    fn load_in(dir: &Path, text: &str) -> Result<Manifest> {
        let file = dir.join("fuse.toml");
        std::fs::write(&file, text).unwrap();
        load(&file)
    }

    const HEAD: &str = "[image]\nname = \"x\"\nversion = \"1\"\n";

    #[test]
    fn a_virtualenv_is_found_and_its_python_version_checked() {
        let d = tempfile::tempdir().unwrap();
        let venv = d.path().join("py/.venv");
        std::fs::create_dir_all(venv.join("lib/python3.11/site-packages")).unwrap();
        std::fs::write(d.path().join("py/server.py"), b"").unwrap();
        let cfg = venv.join("pyvenv.cfg");
        std::fs::write(&cfg, "home = /opt/py/bin\nversion = 3.11.7\n").unwrap();
        let text = format!(
            "{HEAD}[app]\nkind = \"python\"\npath = \"py\"\nargs = [\"server.py\"]\nport = 1\n"
        );
        let m = load_in(d.path(), &text).unwrap();
        assert_eq!(m.python_venv.as_deref(), Some(".venv"));
        // uv writes version_info
        std::fs::write(&cfg, "home = /opt/py/bin\nversion_info = 3.11.4.final.0\n").unwrap();
        assert_eq!(
            load_in(d.path(), &text).unwrap().python_venv.as_deref(),
            Some(".venv")
        );
        // no version in pyvenv.cfg: the lib/pythonX.Y directory says it
        std::fs::write(&cfg, "home = /opt/py/bin\n").unwrap();
        assert_eq!(
            load_in(d.path(), &text).unwrap().python_venv.as_deref(),
            Some(".venv")
        );
        // another minor version: an error naming both, at app.path
        std::fs::write(&cfg, "home = /opt/py/bin\nversion = 3.12.1\n").unwrap();
        let e = format!("{:#}", load_in(d.path(), &text).unwrap_err());
        assert!(
            e.contains("app.path") && e.contains("Python 3.12") && e.contains("Python 3.11"),
            "{e}"
        );
        // 3.1 is not 3.11
        std::fs::write(&cfg, "version = 3.1.0\n").unwrap();
        let e = format!("{:#}", load_in(d.path(), &text).unwrap_err());
        assert!(e.contains("Python 3.1,"), "{e}");
        // two venvs: which one is meant is not guessed
        std::fs::write(&cfg, "version = 3.11.2\n").unwrap();
        std::fs::create_dir_all(d.path().join("py/env2")).unwrap();
        std::fs::write(d.path().join("py/env2/pyvenv.cfg"), "version = 3.11.2\n").unwrap();
        let e = format!("{:#}", load_in(d.path(), &text).unwrap_err());
        assert!(e.contains(".venv, env2"), "{e}");
    }

    #[test]
    fn runtime_kinds_are_checked_at_manifest_time() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.war"), b"not a zip").unwrap();
        std::fs::write(d.path().join("app.jar"), b"not a zip").unwrap();
        std::fs::create_dir(d.path().join("py")).unwrap();
        std::fs::write(d.path().join("py/server.py"), b"").unwrap();
        // war without a server
        let e = format!(
            "{:#}",
            load_in(
                d.path(),
                &format!("{HEAD}[app]\nkind = \"war\"\npath = \"app.war\"\nport = 8080\n")
            )
            .unwrap_err()
        );
        assert!(
            e.contains("`server`") && e.contains("tomcat = \"10\""),
            "{e}"
        );
        // [server] mbeans must be a boolean
        let e = format!(
            "{:#}",
            load_in(
                d.path(),
                &format!("{HEAD}[app]\nkind = \"war\"\npath = \"app.war\"\nport = 8080\n[server]\ntomcat = \"10\"\nmbeans = \"yes\"\n")
            )
            .unwrap_err()
        );
        assert!(
            e.contains("server.mbeans") && e.contains("true or false"),
            "{e}"
        );
        let war = crate::format::zip::tests::make(&[("WEB-INF/web.xml", b"<web-app/>", false)]);
        std::fs::write(d.path().join("good.war"), war).unwrap();
        let war_manifest = |server: &str| {
            format!("{HEAD}[app]\nkind = \"war\"\npath = \"good.war\"\nport = 8080\n[server]\ntomcat = \"10\"\n{server}")
        };
        assert!(!load_in(d.path(), &war_manifest("")).unwrap().server_mbeans);
        assert!(
            load_in(d.path(), &war_manifest("mbeans = true\n"))
                .unwrap()
                .server_mbeans
        );
        // a jar that is not a zip / has no Main-Class
        let e = format!(
            "{:#}",
            load_in(
                d.path(),
                &format!("{HEAD}[app]\nkind = \"jar\"\npath = \"app.jar\"\nport = 8080\n")
            )
            .unwrap_err()
        );
        assert!(
            e.contains("app.path") && e.contains("not a readable jar"),
            "{e}"
        );
        // the wrong runtime for the kind; a server for a kind without one
        let e = format!(
            "{:#}",
            load_in(d.path(), &format!("{HEAD}[app]\nkind = \"python\"\npath = \"py\"\nargs = [\"server.py\"]\nport = 1\n[runtime]\njava = \"17\"\n"))
                .unwrap_err()
        );
        assert!(
            e.contains("runtime.java") && e.contains("runs on python"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_in(
                d.path(),
                &format!("{HEAD}[app]\nkind = \"python\"\npath = \"py\"\nport = 1\n")
            )
            .unwrap_err()
        );
        assert!(e.contains("app.args") && e.contains("__main__.py"), "{e}");
        let m = load_in(
            d.path(),
            &format!(
                "{HEAD}[app]\nkind = \"python\"\npath = \"py\"\nargs = [\"server.py\"]\nport = 1\n"
            ),
        )
        .unwrap();
        assert_eq!(m.runtime.unwrap().key(), "python=3.11");
        // node: package.json main must exist
        std::fs::create_dir(d.path().join("js")).unwrap();
        std::fs::write(d.path().join("js/package.json"), br#"{"main": "srv.js"}"#).unwrap();
        let node = format!("{HEAD}[app]\nkind = \"node\"\npath = \"js\"\nport = 1\n");
        let e = format!("{:#}", load_in(d.path(), &node).unwrap_err());
        assert!(e.contains("srv.js"), "{e}");
        std::fs::write(d.path().join("js/srv.js"), b"").unwrap();
        assert_eq!(
            load_in(d.path(), &node).unwrap().node_main.as_deref(),
            Some("srv.js")
        );
    }
}
