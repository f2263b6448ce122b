//! The app as the user handed it over: the one reading of the artifact or app directory
//! ([`scan_app`]: its files, identity, what its native and Java code needs, and its split
//! into layers by how often they change) and the trees of those layers ([`AppScan::tree`]).
//!
//! A build reads the app's bytes only when it must: a stat cache (path, size, mtime, inode,
//! ctime -> sha256, as git's index) gives an unchanged file's digest without reading it, and
//! what the scan found in a given listing (native needs, Java packages) is cached by that
//! listing's digest; a layer's tree, the only other reader, is built on a cache miss and
//! checks every file it reads against the digest the listing holds.

use crate::digest::sha256_hex;
use crate::disk::FileMeta;
use crate::manifest::{AppKind, AppLayerRule, Manifest};
use crate::resolve::elf::{self, Dynamic};
use crate::runtimes::APP_DIR;
use crate::store::Store;
use crate::tree::{Node, Tree};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The top app layer's name: the app's own code (what changes on every commit).
pub const CODE_LAYER: &str = "app";
/// The layer of the app's dependencies when the kind splits them off (installed Python
/// distributions, node_modules, a jar's Class-Path jars, a Spring Boot jar's nested
/// libraries, a war's WEB-INF/lib).
pub const DEPS_LAYER: &str = "deps";

/// Where a war is laid out exploded: `/app/ROOT`, the ROOT context of Tomcat's Host
/// (appBase /app).
pub const WAR_ROOT: &str = "ROOT";

/// Version of the stat cache and of the scan record: bump when what they hold changes.
const SCAN_FORMAT: u32 = 1;

/// One entry of the app (a path under `app/`).
#[derive(Clone, Debug)]
pub struct Entry {
    /// `app/...`
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    /// Owner (0 for every kind but oci, whose container layers say).
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug)]
pub enum EntryKind {
    Dir,
    Symlink(String),
    File {
        size: u64,
        sha256: String,
        /// Where its bytes are read from (a file of the build machine), or the bytes
        /// themselves (files fuse writes, e.g. a retargeted pyvenv.cfg).
        source: FileSource,
        /// The bytes once read (at most once per build).
        data: Arc<OnceLock<Arc<Vec<u8>>>>,
    },
}

#[derive(Clone, Debug)]
pub enum FileSource {
    Host(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

impl Entry {
    /// The bytes of a file entry: read once (and checked against its digest), or `None`
    /// for directories and symlinks.
    pub fn bytes(&self) -> Result<Option<Arc<Vec<u8>>>> {
        let EntryKind::File {
            sha256,
            source,
            data,
            ..
        } = &self.kind
        else {
            return Ok(None);
        };
        if let Some(d) = data.get() {
            return Ok(Some(d.clone()));
        }
        let d = match source {
            FileSource::Bytes(b) => b.clone(),
            FileSource::Host(p) => {
                let d = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                if &sha256_hex(&d) != sha256 {
                    bail!(
                        "{} changed during the build (expected sha256 {sha256}); build again",
                        p.display()
                    );
                }
                Arc::new(d)
            }
        };
        Ok(Some(data.get_or_init(|| d).clone()))
    }

    /// The entry as image.json's file lists (and the listing digests) describe it.
    pub(crate) fn meta(&self) -> FileMeta {
        let (kind, size, sha256, target) = match &self.kind {
            EntryKind::Dir => ("dir", 0, None, None),
            EntryKind::Symlink(t) => ("symlink", t.len() as u64, None, Some(t.clone())),
            EntryKind::File { size, sha256, .. } => ("file", *size, Some(sha256.clone()), None),
        };
        FileMeta {
            path: format!("/{}", self.path),
            kind: kind.into(),
            mode: format!("{:04o}", self.mode & 0o7777),
            uid: self.uid,
            gid: self.gid,
            size,
            sha256,
            target,
        }
    }
}

/// What the container's config makes of the app.
#[derive(Clone, Debug)]
pub struct OciApp {
    pub source: crate::disk::ContainerSource,
    /// Entrypoint + Cmd (or `[app] args`), argv[0] absolute.
    pub argv: Vec<String>,
    /// The config's Env, then `[app.env]`.
    pub env: BTreeMap<String, String>,
    pub uid: u32,
    pub gid: u32,
    pub workdir: String,
    /// `[app] port`, else the first of ExposedPorts.
    pub port: u16,
    /// The container's StopSignal (a name of `oci::container::STOP_SIGNALS`), when not
    /// SIGTERM.
    pub stop_signal: Option<String>,
}

/// The app's layers for the log: `name (N entries, X MiB), ...`.
pub(crate) fn describe_parts(parts: &[AppPart]) -> String {
    parts
        .iter()
        .map(|p| {
            format!(
                "{} ({} entries, {:.1} MiB)",
                p.name,
                p.entries.len(),
                p.bytes as f64 / 1048576.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One layer of the app: its name and which entries it holds.
#[derive(Clone, Debug)]
pub struct AppPart {
    /// `deps`, an `[app] layers` name, or `app` (the top one).
    pub name: String,
    /// sha256 of the part's file listing (path, type, mode, size, sha256 of each entry):
    /// what the layer's bytes depend on.
    pub listing_sha256: String,
    /// Indexes into [`AppScan::entries`], in path order.
    pub entries: Vec<usize>,
    /// Bytes of the part's files.
    pub bytes: u64,
}

/// The one reading of the app: what the lock, the plan and the app layers need of it.
#[derive(Clone, Debug)]
pub struct AppScan {
    /// The app's identity (lock `app.sha256`, image.json `app_sha256`): the artifact's sha256,
    /// or for an app directory the sha256 of its canonical file listing.
    pub sha256: String,
    /// sha256 of the file listing of the whole app (path, type, mode, size, sha256 of every
    /// entry under /app).
    pub listing_sha256: String,
    /// Every entry under `app/`, sorted by path.
    pub entries: Vec<Entry>,
    /// The app's layers, bottom to top; the last is [`CODE_LAYER`].
    pub parts: Vec<AppPart>,
    /// What a binary app needs from the dynamic linker (empty for static and runtime apps).
    pub dynamic: Dynamic,
    /// What the native code anywhere in the app (ELF objects in its files, jars, nested
    /// jars, wars) needs from the distribution.
    pub native: crate::resolve::native::AppNeeds,
    /// JDK packages the app's classes refer to (Java kinds; filled by the Java scan).
    pub java_packages: BTreeSet<String>,
    /// Why the app's classes could not be read (Java kinds): the full JRE is kept.
    pub java_scan_error: Option<String>,
    /// A war holding JSP pages: Tomcat's JSP compiler is resolved and linked in.
    pub jsp: bool,
    /// Files whose bytes this scan read (the others' digests came from the stat cache).
    pub files_read: usize,
    /// Kind oci: what the container's config makes of the app.
    pub oci: Option<OciApp>,
}

/// Bytes of a file's head read for its ELF notes (they follow the program headers).
const ELF_HEAD: usize = 64 * 1024;

impl AppScan {
    /// The port the app listens on: `[app] port`, or for kind oci the container's.
    pub fn port(&self, m: &Manifest) -> u16 {
        match &self.oci {
            Some(o) => o.port,
            None => m.port,
        }
    }

    /// The highest x86-64 level the app's ELF files say they need
    /// (`GNU_PROPERTY_X86_ISA_1_NEEDED`), from the first 64 KiB of each file.
    pub fn x86_64_level(&self) -> Option<u8> {
        use std::io::Read;
        self.entries
            .iter()
            .filter_map(|e| {
                let EntryKind::File { source, data, .. } = &e.kind else {
                    return None;
                };
                let head: Vec<u8> = match (data.get(), source) {
                    (Some(d), _) | (None, FileSource::Bytes(d)) => {
                        d[..d.len().min(ELF_HEAD)].to_vec()
                    }
                    (None, FileSource::Host(p)) => {
                        let mut buf = Vec::new();
                        std::fs::File::open(p)
                            .ok()?
                            .take(ELF_HEAD as u64)
                            .read_to_end(&mut buf)
                            .ok()?;
                        buf
                    }
                };
                crate::format::elf::x86_64_level_needed(&head)
            })
            .max()
    }

    /// The part named `name`.
    pub fn part(&self, name: &str) -> Option<&AppPart> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The file tree of the app layer `name` (its files under `app/`), times set to
    /// `epoch`; files are read here (each checked against the listing's digest).
    pub fn tree(&self, name: &str, epoch: u64) -> Result<Tree> {
        let part = self
            .part(name)
            .with_context(|| format!("internal error: the app has no layer {name}"))?;
        let idx: Vec<usize> = part.entries.clone();
        // read side by side: the files of a cold build's dependency layer are many
        let read = crate::pool::map(&idx, build_workers(), |&i| self.entries[i].bytes());
        let mut t = Tree::new();
        for (&i, r) in idx.iter().zip(read) {
            let e = &self.entries[i];
            let data = r.map_err(|p| anyhow::anyhow!("a read job panicked: {p}"))??;
            let mut n = match (&e.kind, data) {
                (EntryKind::Dir, _) => Node::dir(e.mode),
                (EntryKind::Symlink(target), _) => Node::symlink(target.clone()),
                (EntryKind::File { .. }, Some(d)) => Node::file(d.as_ref().clone(), e.mode),
                (EntryKind::File { .. }, None) => bail!("internal error: {} has no bytes", e.path),
            };
            n.mtime = epoch;
            (n.uid, n.gid) = (e.uid, e.gid);
            t.insert(&e.path, n)?;
        }
        Ok(t)
    }

    /// The whole app as one tree (times 0), every file read: what the scans of native and
    /// Java code look at.
    fn full_tree(&self) -> Result<Tree> {
        let mut t = Tree::new();
        for e in &self.entries {
            let n = match (&e.kind, e.bytes()?) {
                (EntryKind::Dir, _) => Node::dir(e.mode),
                (EntryKind::Symlink(target), _) => Node::symlink(target.clone()),
                (EntryKind::File { .. }, Some(d)) => Node::file(d.as_ref().clone(), e.mode),
                (EntryKind::File { .. }, None) => bail!("internal error: {} has no bytes", e.path),
            };
            t.insert(&e.path, n)?;
        }
        Ok(t)
    }
}

/// What the scan found in an app, cached by the app's listing (`named/appscan-<key>`).
#[derive(Serialize, Deserialize)]
struct ScanRecord {
    format: u32,
    interpreter: Option<String>,
    needed: Vec<String>,
    runpath: Vec<String>,
    native_needed: BTreeSet<String>,
    native_needed_by: BTreeMap<String, String>,
    native_versions: Vec<((String, String), (String, String))>,
    native_objects: usize,
    native_skipped: Vec<String>,
    native_bundled: BTreeMap<String, String>,
    java_packages: BTreeSet<String>,
    java_scan_error: Option<String>,
    jsp: bool,
}

/// The stat cache of one app path: what each file's digest was when it had this stat.
#[derive(Serialize, Deserialize, Default)]
struct StatCache {
    format: u32,
    /// When it was written (ns since the Unix epoch): a file changed in the same tick as
    /// an earlier scan could keep its stat, so one modified since then is read again.
    written_ns: i128,
    /// host path -> stat and digest
    files: BTreeMap<String, StatEntry>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    sha256: String,
}

/// size, mtime (ns), ctime (ns), inode, device
type Stat = (u64, i128, i128, u64, u64);

fn stat_of(meta: &std::fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    (
        meta.size(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        meta.ino(),
        meta.dev(),
    )
}

/// Read the app once: its files (digests from the stat cache where the stat is unchanged),
/// its identity, its layers, what its code needs. `store`: where the stat cache and scan
/// records live (`None`: nothing cached, every file read).
pub fn scan_app(m: &Manifest, store: Option<&Store>) -> Result<AppScan> {
    if m.kind == AppKind::Oci {
        bail!("internal error: kind oci's app is read by oci::app::scan");
    }
    let stat_name = format!(
        "appstat-{}",
        sha256_hex(
            std::fs::canonicalize(&m.app_path)
                .unwrap_or_else(|_| m.app_path.clone())
                .to_string_lossy()
                .as_bytes()
        )
    );
    let old: StatCache = store
        .and_then(|s| s.get_named(&stat_name).ok().flatten())
        .and_then(|b| serde_json::from_slice::<StatCache>(&b).ok())
        .filter(|c| c.format == SCAN_FORMAT)
        .unwrap_or_default();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let mut walk = Walk {
        old: &old,
        new: BTreeMap::new(),
        entries: Vec::new(),
        pending: Vec::new(),
        skip: None,
        archive_sha256: None,
        archives_read: 0,
    };
    walk.app(m)?;
    let files_read = walk.pending.len() + walk.archives_read;
    walk.hash_pending()?;
    let Walk {
        new,
        mut entries,
        archive_sha256,
        ..
    } = walk;
    if let (Some(venv), Some(rt)) = (&m.python_venv, &m.runtime) {
        retarget_venv(&mut entries, venv, &rt.version)?;
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(s) = store {
        let changed =
            new.len() != old.files.len() || new.iter().any(|(k, v)| old.files.get(k) != Some(v));
        if changed {
            let c = StatCache {
                format: SCAN_FORMAT,
                written_ns: now_ns,
                files: new,
            };
            if let Err(e) = s.put_named(&stat_name, &serde_json::to_vec(&c)?) {
                tracing::warn!("cannot write the app's stat cache: {e:#}");
            }
        }
    }
    let listing: Vec<FileMeta> = entries.iter().map(Entry::meta).collect();
    let listing_sha256 = sha256_hex(&serde_json::to_vec(&listing)?);
    let artifact_idx = artifact_index(m, &entries);
    // A jar with the jars its Class-Path names is several files: identified like a directory.
    let several = m
        .jar
        .as_ref()
        .is_some_and(|j| j.dir || !j.class_path.is_empty());
    let sha256 = if m.kind.is_dir() || several {
        listing_sha256.clone()
    } else if let Some(a) = archive_sha256 {
        // a war or Spring Boot jar laid out exploded: still identified by the archive
        a
    } else {
        let i = artifact_idx
            .with_context(|| format!("the app {} holds no file", m.app_path.display()))?;
        match &entries[i].kind {
            EntryKind::File { sha256, .. } => sha256.clone(),
            _ => bail!("the app {} is not a file", m.app_path.display()),
        }
    };
    let parts = split(m, &entries)?;
    let mut scan = AppScan {
        sha256,
        listing_sha256,
        entries,
        parts,
        dynamic: Dynamic::default(),
        native: Default::default(),
        java_packages: BTreeSet::new(),
        java_scan_error: None,
        jsp: false,
        files_read,
        oci: None,
    };
    // What the code needs: from the record of this listing, else scanned (and recorded).
    let rec_key = sha256_hex(
        serde_json::to_string(&serde_json::json!({
            "format": SCAN_FORMAT,
            "fuse_version": env!("CARGO_PKG_VERSION"),
            "kind": m.kind.name(),
            "arch": m.arch,
            "listing": scan.listing_sha256,
            "jar": m.jar.as_ref().map(|j| (&j.main, j.dir, &j.class_path)),
        }))?
        .as_bytes(),
    );
    let rec_name = format!("appscan-{rec_key}");
    let cached = store
        .and_then(|s| s.get_named(&rec_name).ok().flatten())
        .and_then(|b| serde_json::from_slice::<ScanRecord>(&b).ok())
        .filter(|r| r.format == SCAN_FORMAT);
    let rec = match cached {
        Some(r) => r,
        None => {
            let r = scan_code(m, &scan, artifact_idx)?;
            if let Some(s) = store {
                if let Err(e) = s.put_named(&rec_name, &serde_json::to_vec(&r)?) {
                    tracing::warn!("cannot record the app's scan: {e:#}");
                }
            }
            r
        }
    };
    scan.dynamic = Dynamic {
        interpreter: rec.interpreter,
        needed: rec.needed,
        runpath: rec.runpath,
    };
    scan.native = crate::resolve::native::AppNeeds {
        needed: rec.native_needed,
        needed_by: rec.native_needed_by,
        versions: rec.native_versions.into_iter().collect(),
        objects: rec.native_objects,
        skipped: rec.native_skipped,
        bundled: rec.native_bundled,
    };
    scan.java_packages = rec.java_packages;
    scan.java_scan_error = rec.java_scan_error;
    scan.jsp = rec.jsp;
    tracing::info!(
        "app: {} entries, {} files read; layers {}",
        scan.entries.len(),
        scan.files_read,
        describe_parts(&scan.parts)
    );
    Ok(scan)
}

/// The scans that look into the app's bytes: ELF headers, native code, Java classes, JSPs.
fn scan_code(m: &Manifest, scan: &AppScan, artifact_idx: Option<usize>) -> Result<ScanRecord> {
    let files = scan.full_tree()?;
    let artifact = || -> Result<Arc<Vec<u8>>> {
        artifact_idx
            .and_then(|i| scan.entries[i].bytes().transpose())
            .transpose()?
            .with_context(|| format!("the app {} holds no file", m.app_path.display()))
    };
    let dynamic = if m.kind == AppKind::Binary {
        let bytes = artifact()?;
        if !elf::is_elf(&bytes) {
            bail!(
                "{}: kind \"binary\" needs an ELF executable",
                m.app_path.display()
            );
        }
        elf::dynamic(&bytes)
            .with_context(|| format!("cannot read the ELF headers of {}", m.app_path.display()))?
    } else {
        Dynamic::default()
    };
    let native = scan_native(m, &files)?;
    let (java_packages, java_scan_error) = if matches!(m.kind, AppKind::Jar | AppKind::War) {
        let classes = java_classes(m, &files)?;
        match crate::java::referenced_packages(classes.iter().map(|(n, b)| (n.as_str(), *b))) {
            Ok(p) => (p, None),
            Err(e) => {
                tracing::warn!(
                    "keeping the full JRE: the app's classes cannot be analysed: {e:#} \
                     (`[runtime] modules = \"all\"` says so on purpose)"
                );
                (BTreeSet::new(), Some(format!("{e:#}")))
            }
        }
    } else {
        (BTreeSet::new(), None)
    };
    let jsp = if m.kind == AppKind::War {
        let root = format!("app/{WAR_ROOT}/");
        let pages: Vec<(&str, &[u8])> = files
            .iter()
            .filter_map(|(p, n)| Some((p.strip_prefix(&root)?, n.data()?)))
            .collect();
        crate::runtimes::war_files_have_jsp(&pages)
            .with_context(|| format!("cannot list the pages of {}", m.app_path.display()))?
    } else {
        false
    };
    Ok(ScanRecord {
        format: SCAN_FORMAT,
        interpreter: dynamic.interpreter,
        needed: dynamic.needed,
        runpath: dynamic.runpath,
        native_needed: native.needed,
        native_needed_by: native.needed_by,
        native_versions: native.versions.into_iter().collect(),
        native_objects: native.objects,
        native_skipped: native.skipped,
        native_bundled: native.bundled,
        java_packages,
        java_scan_error,
        jsp,
    })
}

/// What the native code in the app (every ELF object in its files and archives) needs
/// from the distribution; logged when the app has any.
fn scan_native(m: &Manifest, files: &Tree) -> Result<crate::resolve::native::AppNeeds> {
    let java = matches!(m.kind, AppKind::Jar | AppKind::War);
    let needs = crate::resolve::native::scan(files, java, m.arch)?;
    if needs.objects > 0 {
        tracing::info!(
            "native code in the app: {} ELF objects; from the distribution: {}{}",
            needs.objects,
            if needs.needed.is_empty() {
                "nothing".to_string()
            } else {
                needs.needed.iter().cloned().collect::<Vec<_>>().join(" ")
            },
            if needs.bundled.is_empty() {
                String::new()
            } else {
                format!("; bundled by the app: {}", needs.bundled.len())
            }
        );
    }
    for s in &needs.skipped {
        tracing::info!("skipped {s}: another platform's build, the app has one for this one");
    }
    Ok(needs)
}

/// What the JVM loads the app's classes from: the artifact, and for a jar also what its
/// Class-Path names (jars, and the class files of class directories), named as errors
/// show them.
fn java_classes<'a>(m: &Manifest, files: &'a Tree) -> Result<Vec<(String, &'a [u8])>> {
    // the class files and jars of an archive laid out exploded under `root`, named as the
    // archive's entries (`hello.war!/WEB-INF/classes/...`)
    let exploded = |root: &str, name: &str, skip: &dyn Fn(&str) -> bool| {
        files
            .iter()
            .filter_map(|(p, n)| {
                let rel = p.strip_prefix(root)?;
                let d = n.data()?;
                ((rel.ends_with(".class") || rel.ends_with(".jar")) && !skip(rel))
                    .then(|| (format!("{name}!/{rel}"), d))
            })
            .collect::<Vec<_>>()
    };
    let Some(j) = &m.jar else {
        let root = format!("app/{WAR_ROOT}/");
        return Ok(exploded(&root, &java_artifact_name(m), &|_| false));
    };
    let mut out = Vec::new();
    if j.spring_boot.is_some() {
        // The jar's entries are /app's files, beside the Class-Path's (and, for an app
        // directory, the directory's other files: read too, which can only keep more of
        // the JRE).
        let on_class_path = |rel: &str| {
            j.class_path
                .iter()
                .any(|c| rel == c.as_str() || (c.ends_with('/') && rel.starts_with(c.as_str())))
        };
        out.extend(exploded("app/", &j.main, &on_class_path));
    } else {
        let main = format!("app/{}", j.main);
        let bytes = files
            .get(&main)
            .and_then(|n| n.data())
            .with_context(|| format!("the app has no /{main}"))?;
        out.push((j.main.clone(), bytes));
    }
    for rel in &j.class_path {
        let at = format!("app/{rel}");
        if rel.ends_with('/') {
            for (path, node) in files.iter() {
                if let (true, Some(d)) = (path.starts_with(&at), node.data()) {
                    out.push((path.trim_start_matches("app/").to_string(), d));
                }
            }
        } else if let Some(d) = files.get(&at).and_then(|n| n.data()) {
            out.push((rel.clone(), d));
        }
    }
    Ok(out)
}

/// The artifact's name as errors show it (`app.jar`, `ROOT.war`).
fn java_artifact_name(m: &Manifest) -> String {
    let name = m
        .app_path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("app");
    match m.kind {
        AppKind::War if !name.ends_with(".war") => format!("{name}.war"),
        AppKind::Jar if !name.ends_with(".jar") => format!("{name}.jar"),
        _ => name.to_string(),
    }
}

/// Names never taken from an app directory: fuse's own files and version control.
const APP_DIR_SKIP: &[&str] = &["fuse.toml", "fuse.lock", "fuse-out", ".git"];

/// Most entries an app may have.
const MAX_ENTRIES: usize = 1_000_000;

/// The walk of the app on the build machine.
struct Walk<'a> {
    old: &'a StatCache,
    new: BTreeMap<String, StatEntry>,
    entries: Vec<Entry>,
    /// Files whose digest the stat cache does not vouch for: (entry index, host path, stat).
    pending: Vec<(usize, PathBuf, Stat)>,
    /// A file of the app directory not taken as is (a Spring Boot jar, laid out exploded).
    skip: Option<PathBuf>,
    /// The sha256 of the archive laid out exploded (a war, a Spring Boot jar).
    archive_sha256: Option<String>,
    /// Archives read whole to be laid out exploded.
    archives_read: usize,
}

impl Walk<'_> {
    /// For file kinds (binary, jar) the artifact at `/app/<file name>` and a jar's
    /// Class-Path; a war laid out exploded in `/app/ROOT` (Tomcat's ROOT context), a Spring
    /// Boot jar in `/app`; for directory kinds (node, python) and a jar's directory the
    /// directory's files under `/app`. Root-owned, 0644 or 0755.
    fn app(&mut self, m: &Manifest) -> Result<()> {
        self.dir(APP_DIR.trim_start_matches('/'));
        let boot = m.jar.as_ref().filter(|j| j.spring_boot.is_some());
        if m.kind.is_dir() || m.jar.as_ref().is_some_and(|j| j.dir) {
            if let Some(j) = boot {
                self.skip = Some(m.app_path.join(&j.main));
            }
            self.add_dir(&m.app_path, APP_DIR.trim_start_matches('/'), true)?;
            if let Some(j) = boot {
                self.explode(&m.app_path.join(&j.main), "app")?;
            }
        } else if m.kind == AppKind::War {
            let root = format!("app/{WAR_ROOT}");
            self.dir(&root);
            self.explode(&m.app_path, &root)?;
        } else {
            if boot.is_some() {
                self.explode(&m.app_path, "app")?;
            } else {
                let file_name = m
                    .app_path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .with_context(|| {
                        format!("app path {} has no usable file name", m.app_path.display())
                    })?;
                let mode = if m.kind == AppKind::Binary {
                    0o755
                } else {
                    0o644
                };
                let meta = std::fs::metadata(&m.app_path)
                    .with_context(|| format!("cannot read the app {}", m.app_path.display()))?;
                self.file(&format!("app/{file_name}"), &m.app_path, &meta, mode)?;
            }
            if let Some(j) = &m.jar {
                let root = j.root(&m.app_path);
                for rel in &j.class_path {
                    let rel = rel.trim_end_matches('/');
                    let mut parent = String::from("app");
                    let comps: Vec<&str> = rel.split('/').collect();
                    let clash = || {
                        anyhow::anyhow!(
                            "Class-Path entry {rel} of {} is where the jar, laid out exploded \
                             in /app, has a file",
                            m.app_path.display()
                        )
                    };
                    for c in &comps[..comps.len().saturating_sub(1)] {
                        parent = format!("{parent}/{c}");
                        match self.entries.iter().find(|e| e.path == parent) {
                            None => self.dir(&parent),
                            Some(e) if matches!(e.kind, EntryKind::Dir) => {}
                            Some(_) => return Err(clash()),
                        }
                    }
                    let src = root.join(rel);
                    let dest = format!("app/{rel}");
                    if self.entries.iter().any(|e| e.path == dest) {
                        bail!(
                            "Class-Path entry {rel} of {} is also an entry of the jar, which \
                             is laid out exploded in /app",
                            m.app_path.display()
                        );
                    }
                    if src.is_dir() {
                        self.dir(&dest);
                        self.add_dir(&src, &dest, false)?;
                    } else {
                        let meta = std::fs::metadata(&src)
                            .with_context(|| format!("cannot read {}", src.display()))?;
                        self.file(&dest, &src, &meta, 0o644)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The archive `src` (a war, a Spring Boot jar) laid out exploded under `dest`: its
    /// files 0644 (their bytes kept from this one reading), its directories 0755. An entry
    /// where the app directory has a file already is an error.
    fn explode(&mut self, src: &Path, dest: &str) -> Result<()> {
        let zip = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        self.archives_read += 1;
        self.archive_sha256 = Some(sha256_hex(&zip));
        let files = explode_zip(&zip)
            .with_context(|| format!("cannot lay out {} exploded", src.display()))?;
        drop(zip);
        // path -> is a directory
        let mut have: BTreeMap<String, bool> = self
            .entries
            .iter()
            .map(|e| (e.path.clone(), matches!(e.kind, EntryKind::Dir)))
            .collect();
        let conflict = |path: &str| {
            anyhow::anyhow!(
                "{}: its entry {} is where the app directory has a file",
                src.display(),
                path.strip_prefix(dest)
                    .unwrap_or(path)
                    .trim_start_matches('/')
            )
        };
        for (rel, data) in files {
            let path = format!("{dest}/{rel}");
            let dirs = rel
                .match_indices('/')
                .map(|(k, _)| format!("{dest}/{}", &rel[..k]))
                .chain(data.is_none().then(|| path.clone()));
            for d in dirs {
                match have.get(&d) {
                    Some(true) => {}
                    Some(false) => return Err(conflict(&d)),
                    None => {
                        self.dir(&d);
                        have.insert(d, true);
                    }
                }
            }
            let Some(data) = data else { continue };
            if have.insert(path.clone(), false).is_some() {
                return Err(conflict(&path));
            }
            let b = Arc::new(data);
            self.push(Entry {
                path,
                kind: EntryKind::File {
                    size: b.len() as u64,
                    sha256: sha256_hex(&b),
                    source: FileSource::Bytes(b.clone()),
                    data: Arc::new(OnceLock::from(b)),
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            })?;
        }
        Ok(())
    }

    fn push(&mut self, e: Entry) -> Result<()> {
        if self.entries.len() >= MAX_ENTRIES {
            bail!("the app has more than {MAX_ENTRIES} entries");
        }
        self.entries.push(e);
        Ok(())
    }

    fn dir(&mut self, path: &str) {
        self.entries.push(Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }

    /// A file: its digest from the stat cache when its stat is the one recorded (and it
    /// was not modified around the time the cache was written), else read later.
    fn file(&mut self, path: &str, src: &Path, meta: &std::fs::Metadata, mode: u32) -> Result<()> {
        let stat = stat_of(meta);
        let key = src.to_string_lossy().into_owned();
        let known = self.old.files.get(&key).filter(|o| {
            (o.size, o.mtime_ns, o.ctime_ns, o.ino, o.dev) == stat
                && stat.1 < self.old.written_ns - 2_000_000_000
                && stat.2 < self.old.written_ns - 2_000_000_000
        });
        let sha256 = match known {
            Some(o) => {
                self.new.insert(key, o.clone());
                o.sha256.clone()
            }
            None => {
                self.pending
                    .push((self.entries.len(), src.to_path_buf(), stat));
                String::new()
            }
        };
        self.push(Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                size: stat.0,
                sha256,
                source: FileSource::Host(src.to_path_buf()),
                data: Default::default(),
            },
            mode,
            uid: 0,
            gid: 0,
        })
    }

    /// Read and hash the files the stat cache did not vouch for, side by side; their bytes
    /// are kept for the rest of the build.
    fn hash_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let read = crate::pool::map(&pending, build_workers(), |(_, p, _)| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        });
        for ((i, p, stat), r) in pending.into_iter().zip(read) {
            let d = r.map_err(|e| anyhow::anyhow!("a read job panicked: {e}"))??;
            let sha = sha256_hex(&d);
            if let EntryKind::File {
                size, sha256, data, ..
            } = &mut self.entries[i].kind
            {
                *size = d.len() as u64;
                *sha256 = sha.clone();
                let _ = data.set(Arc::new(d));
            }
            self.new.insert(
                p.to_string_lossy().into_owned(),
                StatEntry {
                    size: stat.0,
                    mtime_ns: stat.1,
                    ctime_ns: stat.2,
                    ino: stat.3,
                    dev: stat.4,
                    sha256: sha,
                },
            );
        }
        Ok(())
    }

    /// The files of a host directory under `dest`, 0644 or 0755 (owner-executable files).
    /// Symlinks are kept as they are; anything else (sockets, devices) is refused.
    fn add_dir(&mut self, src: &Path, dest: &str, top: bool) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(src)
            .with_context(|| format!("cannot read directory {}", src.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read directory {}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{}: file name is not UTF-8", e.path().display()))?;
            if top && APP_DIR_SKIP.contains(&name) {
                continue;
            }
            if self.skip.as_deref() == Some(e.path().as_path()) {
                continue;
            }
            let path = format!("{dest}/{name}");
            let ft = e
                .file_type()
                .with_context(|| format!("cannot stat {}", e.path().display()))?;
            if ft.is_symlink() {
                let target = std::fs::read_link(e.path())
                    .with_context(|| format!("cannot read link {}", e.path().display()))?;
                self.push(Entry {
                    path,
                    kind: EntryKind::Symlink(target.to_string_lossy().into_owned()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                })?;
            } else if ft.is_dir() {
                self.dir(&path);
                self.add_dir(&e.path(), &path, false)?;
            } else if ft.is_file() {
                let meta = e
                    .metadata()
                    .with_context(|| format!("cannot stat {}", e.path().display()))?;
                let mode = if meta.permissions().mode() & 0o100 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.file(&path, &e.path(), &meta, mode)?;
            } else {
                bail!("{} is not a file, directory or symlink", e.path().display());
            }
        }
        Ok(())
    }
}

/// The artifact of a file kind (binary, jar, war): the one file directly under `app/`.
fn artifact_index(m: &Manifest, entries: &[Entry]) -> Option<usize> {
    if m.kind.is_dir()
        || m.kind == AppKind::War
        || m.jar
            .as_ref()
            .is_some_and(|j| j.dir || j.spring_boot.is_some())
    {
        return None;
    }
    entries
        .iter()
        .position(|e| e.path.matches('/').count() == 1 && matches!(e.kind, EntryKind::File { .. }))
}

/// The files and directories of a zip archive (a war, a jar), each path relative to its
/// root, sorted, a file with its bytes (a directory `None`). Refused: names that are
/// absolute, empty, or have `.`, `..` or empty components, a backslash or a NUL; a name
/// twice; an entry inside another that is a file; an entry inflating to other than the
/// size its header says; inflation past the archive's budget ([`crate::format::zip::Budget`]:
/// a zip bomb).
pub(crate) fn explode_zip(zip: &[u8]) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    use crate::format::zip;
    let entries = zip::entries(zip)?;
    let mut budget = zip::Budget::for_input(zip.len());
    let mut out: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for e in &entries {
        let name = e.name.strip_suffix('/').unwrap_or(&e.name);
        if name.is_empty()
            || name.starts_with('/')
            || name.contains(['\\', '\0'])
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!(
                "entry {:?}: not a plain relative path (absolute, `..`, `.` or empty parts, \
                 a backslash or NUL): a crafted archive",
                e.name
            );
        }
        let data = if e.is_dir() {
            None
        } else {
            Some(budget.read_exact(zip, e)?)
        };
        if out.insert(name.to_string(), data).is_some() {
            bail!("entry {name} is in the archive twice");
        }
        if out.len() > MAX_ENTRIES {
            bail!("the archive has more than {MAX_ENTRIES} entries");
        }
    }
    for path in out.keys() {
        let mut p = path.as_str();
        while let Some(k) = p.rfind('/') {
            p = &p[..k];
            if let Some(Some(_)) = out.get(p) {
                bail!("entry {path} is inside {p}, which is a file");
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Does `pattern` (`*` within a path component, `**` across them, `?` one character)
/// match `path` or a directory above it?
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_end_matches('/');
    let mut p = path;
    loop {
        if glob(pattern.as_bytes(), p.as_bytes()) {
            return true;
        }
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => return false,
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            if p.get(2) == Some(&b'/') {
                let rest = &p[3..];
                glob(rest, s) || (0..s.len()).any(|i| s[i] == b'/' && glob(rest, &s[i + 1..]))
            } else {
                (0..=s.len()).any(|i| glob(&p[2..], &s[i..]))
            }
        }
        Some(b'*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// Which layer a non-directory entry (path relative to /app) goes to, by the app's kind:
/// python: installed distributions (anything under `site-packages`/`dist-packages`, a
/// virtualenv's `lib/`, and every directory below the app's top holding a `*.dist-info` or
/// `*.egg-info`, as `pip install --target` lays them out); node: `node_modules`; jar: the
/// Class-Path's jars and class directories, a Spring Boot jar's `Spring-Boot-Lib`
/// (`BOOT-INF/lib/`); war: `WEB-INF/lib`; binary: one layer.
fn kind_layer(m: &Manifest, rel: &str, targets: &BTreeSet<String>) -> &'static str {
    let comps: Vec<&str> = rel.split('/').collect();
    let deps = match m.kind {
        // its layers are the container's (oci::app), never split by kind
        AppKind::Oci => false,
        AppKind::Python => {
            comps
                .iter()
                .any(|c| *c == "site-packages" || *c == "dist-packages")
                || m.python_venv.as_ref().is_some_and(|v| {
                    let lib = if v.is_empty() {
                        "lib/".to_string()
                    } else {
                        format!("{v}/lib/")
                    };
                    rel.starts_with(&lib)
                })
                || targets.iter().any(|t| {
                    rel.starts_with(t.as_str()) && rel.as_bytes().get(t.len()) == Some(&b'/')
                })
        }
        AppKind::Node => comps.contains(&"node_modules"),
        AppKind::Jar => m.jar.as_ref().is_some_and(|j| {
            j.class_path.iter().any(|c| {
                let c = c.trim_end_matches('/');
                rel == c || (rel.starts_with(c) && rel.as_bytes().get(c.len()) == Some(&b'/'))
            }) || j
                .spring_boot
                .as_ref()
                .is_some_and(|b| rel.starts_with(b.lib.as_str()))
        }),
        AppKind::War => rel
            .strip_prefix(WAR_ROOT)
            .is_some_and(|r| r.starts_with("/WEB-INF/lib/")),
        AppKind::Binary => false,
    };
    if deps {
        DEPS_LAYER
    } else {
        CODE_LAYER
    }
}

/// The app split into layers, bottom to top, the code ([`CODE_LAYER`]) last. A directory
/// goes to every layer that holds something under it (an empty one to the code layer);
/// a layer with nothing in it is left out (the code layer always stays).
fn split(m: &Manifest, entries: &[Entry]) -> Result<Vec<AppPart>> {
    let rules: Vec<AppLayerRule> = match &m.app_layers {
        Some(r) => r.clone(),
        None => vec![],
    };
    let names: Vec<String> = match &m.app_layers {
        Some(r) => r
            .iter()
            .map(|r| r.name.clone())
            .chain([CODE_LAYER.into()])
            .collect(),
        None => vec![DEPS_LAYER.into(), CODE_LAYER.into()],
    };
    // python: the directories (below the top) that pip installed distributions into
    let mut targets = BTreeSet::new();
    if m.kind == AppKind::Python {
        for e in entries {
            let rel = e.path.strip_prefix("app/").unwrap_or("");
            let name = rel.rsplit('/').next().unwrap_or("");
            if matches!(e.kind, EntryKind::Dir)
                && (name.ends_with(".dist-info") || name.ends_with(".egg-info"))
            {
                if let Some((parent, _)) = rel.rsplit_once('/') {
                    targets.insert(parent.to_string());
                }
            }
        }
    }
    let layer_of = |rel: &str| -> usize {
        let name = if m.app_layers.is_some() {
            rules
                .iter()
                .find(|r| r.paths.iter().any(|p| pattern_matches(p, rel)))
                .map(|r| r.name.as_str())
                .unwrap_or(CODE_LAYER)
        } else {
            kind_layer(m, rel, &targets)
        };
        names
            .iter()
            .position(|n| n == name)
            .unwrap_or(names.len() - 1)
    };
    let mut members: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); names.len()];
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        index.insert(e.path.as_str(), i);
    }
    let code = names.len() - 1;
    for (i, e) in entries.iter().enumerate() {
        if matches!(e.kind, EntryKind::Dir) {
            continue;
        }
        let rel = e.path.strip_prefix("app/").unwrap_or(&e.path);
        let l = layer_of(rel);
        members[l].insert(i);
        // the directories above it
        let mut p = e.path.as_str();
        while let Some(k) = p.rfind('/') {
            p = &p[..k];
            if let Some(&d) = index.get(p) {
                if !members[l].insert(d) {
                    break;
                }
            }
        }
    }
    // empty directories (and /app itself) go to the code layer
    for (i, e) in entries.iter().enumerate() {
        if matches!(e.kind, EntryKind::Dir) && !members.iter().any(|m| m.contains(&i)) {
            members[code].insert(i);
            let mut p = e.path.as_str();
            while let Some(k) = p.rfind('/') {
                p = &p[..k];
                if let Some(&d) = index.get(p) {
                    members[code].insert(d);
                }
            }
        }
    }
    if let Some(&root) = index.get("app") {
        members[code].insert(root);
    }
    let mut parts = Vec::new();
    for (l, name) in names.iter().enumerate() {
        if l != code && members[l].is_empty() {
            continue;
        }
        let idx: Vec<usize> = members[l].iter().copied().collect();
        let listing: Vec<FileMeta> = idx.iter().map(|&i| entries[i].meta()).collect();
        let bytes = idx
            .iter()
            .map(|&i| match &entries[i].kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum();
        parts.push(AppPart {
            name: name.clone(),
            listing_sha256: sha256_hex(&serde_json::to_vec(&listing)?),
            entries: idx,
            bytes,
        });
    }
    Ok(parts)
}

/// Points a virtualenv at the image's Python, whatever Python it was made with on the
/// build machine: `bin/python`, `bin/python3` and `bin/pythonX.Y` become symlinks to
/// `/usr/bin/pythonX.Y`, and pyvenv.cfg's `home` (and `executable`, `command`, which
/// Python 3.11+ writes) name it too. The venv's site-packages stay as they are.
fn retarget_venv(entries: &mut Vec<Entry>, venv: &str, version: &str) -> Result<()> {
    let dir = if venv.is_empty() {
        "app".to_string()
    } else {
        format!("app/{venv}")
    };
    let python = format!("/usr/bin/python{version}");
    for name in [
        "python".to_string(),
        "python3".into(),
        format!("python{version}"),
    ] {
        let path = format!("{dir}/bin/{name}");
        entries.retain(|e| e.path != path);
        entries.push(Entry {
            path,
            kind: EntryKind::Symlink(python.clone()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        });
    }
    let cfg_path = format!("{dir}/pyvenv.cfg");
    let i = entries
        .iter()
        .position(|e| e.path == cfg_path && matches!(e.kind, EntryKind::File { .. }))
        .with_context(|| format!("/{cfg_path} is not a file"))?;
    let data = entries[i].bytes()?.unwrap_or_default();
    let text = String::from_utf8_lossy(&data).into_owned();
    let mut out = String::new();
    let mut home = false;
    for line in text.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key {
            Some("home") if !home => {
                home = true;
                out.push_str("home = /usr/bin\n");
            }
            Some("home") => {}
            Some("executable") => out.push_str(&format!("executable = {python}\n")),
            Some("command") => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !home {
        out.insert_str(0, "home = /usr/bin\n");
    }
    let bytes = Arc::new(out.into_bytes());
    entries[i].kind = EntryKind::File {
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        source: FileSource::Bytes(bytes.clone()),
        data: Arc::new(OnceLock::from(bytes)),
    };
    Ok(())
}

/// The build's worker count (`FUSE_JOBS`); an unusable value is the build's error (reported
/// before any file is read), so here it falls back to one.
fn build_workers() -> usize {
    crate::pool::build_workers().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_files_and_what_is_under_directories() {
        assert!(pattern_matches("vendor/", "vendor/numpy/__init__.py"));
        assert!(pattern_matches("vendor", "vendor"));
        assert!(!pattern_matches("vendor/", "vendored.py"));
        assert!(pattern_matches("*.jar", "x.jar"));
        assert!(!pattern_matches("*.jar", "lib/x.jar"));
        assert!(pattern_matches("**/*.jar", "lib/x.jar"));
        assert!(pattern_matches("**/*.jar", "x.jar"));
        assert!(pattern_matches("lib/**", "lib/a/b"));
        assert!(pattern_matches("static/*.css", "static/a.css"));
        assert!(!pattern_matches("static/*.css", "static/sub/a.css"));
        assert!(pattern_matches("data?.csv", "data1.csv"));
    }

    fn bytes_entry(path: &str, data: &[u8], mode: u32) -> Entry {
        let b = Arc::new(data.to_vec());
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: b.len() as u64,
                sha256: sha256_hex(&b),
                source: FileSource::Bytes(b),
                data: Default::default(),
            },
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn a_virtualenv_is_pointed_at_the_images_python() {
        let mut e = vec![
            dir("app"),
            dir("app/.venv"),
            dir("app/.venv/bin"),
            Entry {
                path: "app/.venv/bin/python".into(),
                kind: EntryKind::Symlink("/opt/py/bin/python3.11".into()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
            // --copies: a binary of the build machine
            bytes_entry("app/.venv/bin/python3.11", b"\x7fELF", 0o755),
            bytes_entry(
                "app/.venv/pyvenv.cfg",
                b"home = /opt/py/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n\
                  executable = /opt/py/bin/python3.11\ncommand = /opt/py/bin/python3.11 -m venv /w/.venv\n",
                0o644,
            ),
        ];
        retarget_venv(&mut e, ".venv", "3.11").unwrap();
        for name in ["python", "python3", "python3.11"] {
            let n = e
                .iter()
                .find(|x| x.path == format!("app/.venv/bin/{name}"))
                .unwrap();
            assert!(
                matches!(&n.kind, EntryKind::Symlink(t) if t == "/usr/bin/python3.11"),
                "{name}"
            );
        }
        let cfg = e.iter().find(|x| x.path == "app/.venv/pyvenv.cfg").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cfg.bytes().unwrap().unwrap()),
            "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n\
             executable = /usr/bin/python3.11\n"
        );
        // no home line: one is added (else Python looks for its stdlib beside the venv)
        let mut e = vec![
            dir("app"),
            dir("app/bin"),
            bytes_entry("app/pyvenv.cfg", b"version = 3.11.2\n", 0o644),
        ];
        retarget_venv(&mut e, "", "3.11").unwrap();
        let cfg = e.iter().find(|x| x.path == "app/pyvenv.cfg").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cfg.bytes().unwrap().unwrap()),
            "home = /usr/bin\nversion = 3.11.2\n"
        );
    }

    fn manifest(dir: &Path, kind: &str, extra: &str) -> Manifest {
        let text = format!(
            "[image]\nname = \"p\"\nversion = \"1\"\n[app]\nkind = \"{kind}\"\npath = \"a\"\nport = 8080\n{}{extra}",
            if kind == "python" { "args = [\"main.py\"]\n" } else { "" }
        );
        crate::manifest::parse(&text, &dir.join("fuse.toml")).unwrap()
    }

    fn layer_files(scan: &AppScan, name: &str) -> Vec<String> {
        scan.part(name)
            .map(|p| {
                p.entries
                    .iter()
                    .map(|&i| scan.entries[i].path.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn apps_split_by_kind_and_by_patterns_and_the_stat_cache_reads_nothing_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        for f in [
            "main.py",
            "vendor/flask/__init__.py",
            "vendor/flask-3.0.dist-info/RECORD",
            "static/site.css",
        ] {
            std::fs::create_dir_all(a.join(f).parent().unwrap()).unwrap();
            std::fs::write(a.join(f), f).unwrap();
        }
        std::fs::create_dir_all(a.join("empty")).unwrap();
        let m = manifest(d.path(), "python", "");
        let store = Store::open(&d.path().join("cache")).unwrap();
        let scan = scan_app(&m, Some(&store)).unwrap();
        assert_eq!(scan.files_read, 4);
        assert_eq!(
            layer_files(&scan, "deps"),
            [
                "app",
                "app/vendor",
                "app/vendor/flask",
                "app/vendor/flask-3.0.dist-info",
                "app/vendor/flask-3.0.dist-info/RECORD",
                "app/vendor/flask/__init__.py"
            ]
        );
        assert_eq!(
            layer_files(&scan, "app"),
            [
                "app",
                "app/empty",
                "app/main.py",
                "app/static",
                "app/static/site.css"
            ]
        );
        // Unchanged and old enough: no file is read again, same listing. (The cache trusts
        // only stats older than itself by 2 s: age it.)
        let name = std::fs::read_dir(store.root().join("named"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with("appstat-"))
            .unwrap();
        let mut c: StatCache =
            serde_json::from_slice(&store.get_named(&name).unwrap().unwrap()).unwrap();
        c.written_ns += 10_000_000_000;
        store
            .put_named(&name, &serde_json::to_vec(&c).unwrap())
            .unwrap();
        let again = scan_app(&m, Some(&store)).unwrap();
        assert_eq!(again.files_read, 0);
        assert_eq!(again.listing_sha256, scan.listing_sha256);
        let t = again.tree("app", 0).unwrap();
        assert_eq!(t.get("app/main.py").unwrap().data().unwrap(), b"main.py");
        // a changed file (same size, so only its stat tells) is read again
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(a.join("main.py"), "MAIN.PY").unwrap();
        let changed = scan_app(&m, Some(&store)).unwrap();
        assert_eq!(changed.files_read, 1);
        assert_ne!(
            changed.part("app").unwrap().listing_sha256,
            scan.part("app").unwrap().listing_sha256
        );
        assert_eq!(
            changed.part("deps").unwrap().listing_sha256,
            scan.part("deps").unwrap().listing_sha256
        );
        // a file changed behind the digest the listing holds is refused when read
        let mut c: StatCache =
            serde_json::from_slice(&store.get_named(&name).unwrap().unwrap()).unwrap();
        c.written_ns += 10_000_000_000;
        store
            .put_named(&name, &serde_json::to_vec(&c).unwrap())
            .unwrap();
        let s3 = scan_app(&m, Some(&store)).unwrap();
        assert_eq!(s3.files_read, 0);
        std::fs::write(a.join("main.py"), "MAIN.PX").unwrap();
        let e = format!("{:#}", s3.tree("app", 0).unwrap_err());
        assert!(e.contains("changed during the build"), "{e}");
        // patterns override the split; a file in no pattern goes to the code layer
        let m = manifest(
            d.path(),
            "python",
            "layers = [{ name = \"assets\", paths = [\"static/\"] }, { name = \"py\", paths = [\"**/*.py\"] }]\n",
        );
        let scan = scan_app(&m, None).unwrap();
        let names: Vec<&str> = scan.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["assets", "py", "app"]);
        assert_eq!(
            layer_files(&scan, "assets"),
            ["app", "app/static", "app/static/site.css"]
        );
        assert!(layer_files(&scan, "py").contains(&"app/vendor/flask/__init__.py".to_string()));
        assert!(layer_files(&scan, "app")
            .contains(&"app/vendor/flask-3.0.dist-info/RECORD".to_string()));
        // node: node_modules apart
        std::fs::create_dir_all(a.join("node_modules/express")).unwrap();
        std::fs::write(a.join("node_modules/express/index.js"), "x").unwrap();
        std::fs::write(a.join("package.json"), "{\"main\": \"main.py\"}").unwrap();
        let m = manifest(d.path(), "node", "");
        let scan = scan_app(&m, None).unwrap();
        assert_eq!(
            layer_files(&scan, "deps"),
            [
                "app",
                "app/node_modules",
                "app/node_modules/express",
                "app/node_modules/express/index.js"
            ]
        );
    }

    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let e: Vec<(&str, &[u8], bool)> = entries.iter().map(|(n, d)| (*n, *d, true)).collect();
        crate::format::zip::tests::make(&e)
    }

    fn java_manifest(dir: &Path, kind: &str, path: &str) -> Manifest {
        let server = if kind == "war" {
            "[server]\ntomcat = \"10\"\n"
        } else {
            ""
        };
        let text = format!(
            "[image]\nname = \"p\"\nversion = \"1\"\n[app]\nkind = \"{kind}\"\npath = \"{path}\"\nport = 8080\n{server}"
        );
        crate::manifest::parse(&text, &dir.join("fuse.toml")).unwrap()
    }

    #[test]
    fn a_war_is_laid_out_exploded_with_web_inf_lib_in_the_deps_layer() {
        let d = tempfile::tempdir().unwrap();
        let lib = zip(&[("u/U.class", b"\xca\xfe")]);
        let war = zip(&[
            ("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\r\n"),
            ("WEB-INF/", b""),
            ("WEB-INF/web.xml", b"<web-app/>"),
            ("WEB-INF/classes/h/H.class", b"\xca\xfe"),
            ("WEB-INF/lib/u.jar", &lib),
            ("index.html", b"hi"),
        ]);
        std::fs::write(d.path().join("hello.war"), &war).unwrap();
        let m = java_manifest(d.path(), "war", "hello.war");
        let scan = scan_app(&m, None).unwrap();
        // identified by the war's bytes, as before the layout changed
        assert_eq!(scan.sha256, sha256_hex(&war));
        assert_eq!(scan.files_read, 1);
        assert_eq!(
            layer_files(&scan, "deps"),
            [
                "app",
                "app/ROOT",
                "app/ROOT/WEB-INF",
                "app/ROOT/WEB-INF/lib",
                "app/ROOT/WEB-INF/lib/u.jar"
            ]
        );
        assert_eq!(
            layer_files(&scan, "app"),
            [
                "app",
                "app/ROOT",
                "app/ROOT/META-INF",
                "app/ROOT/META-INF/MANIFEST.MF",
                "app/ROOT/WEB-INF",
                "app/ROOT/WEB-INF/classes",
                "app/ROOT/WEB-INF/classes/h",
                "app/ROOT/WEB-INF/classes/h/H.class",
                "app/ROOT/WEB-INF/web.xml",
                "app/ROOT/index.html"
            ]
        );
        let t = scan.tree("deps", 7).unwrap();
        assert_eq!(
            t.get("app/ROOT/WEB-INF/lib/u.jar").unwrap().data().unwrap(),
            lib
        );
        // the same war again: the same listings (the layout does not depend on the walk)
        let again = scan_app(&m, None).unwrap();
        assert_eq!(again.listing_sha256, scan.listing_sha256);
        // a JSP page is found in the exploded files
        assert!(!scan.jsp);
        let war2 = zip(&[("WEB-INF/web.xml", b"<web-app/>"), ("a/p.jsp", b"<%= 1 %>")]);
        std::fs::write(d.path().join("hello.war"), &war2).unwrap();
        assert!(scan_app(&m, None).unwrap().jsp);
        // `[app] layers` patterns see the war's files under ROOT/
        let text = "[image]\nname = \"p\"\nversion = \"1\"\n[app]\nkind = \"war\"\npath = \"hello.war\"\nport = 8080\nlayers = [{ name = \"pages\", paths = [\"ROOT/a/\"] }]\n[server]\ntomcat = \"10\"\n";
        let m2 = crate::manifest::parse(text, &d.path().join("fuse.toml")).unwrap();
        let scan = scan_app(&m2, None).unwrap();
        assert_eq!(
            layer_files(&scan, "pages"),
            ["app", "app/ROOT", "app/ROOT/a", "app/ROOT/a/p.jsp"]
        );
        // a hostile entry is refused, naming it
        let evil = zip(&[
            ("WEB-INF/web.xml", b"<web-app/>"),
            ("../../etc/cron.d/x", b"x"),
        ]);
        std::fs::write(d.path().join("hello.war"), &evil).unwrap();
        let e = format!("{:#}", scan_app(&m, None).unwrap_err());
        assert!(
            e.contains("hello.war") && e.contains("../../etc/cron.d/x"),
            "{e}"
        );
    }

    #[test]
    fn hostile_archive_entries_are_refused() {
        let ok = explode_zip(&zip(&[("b/", b""), ("b/c.txt", b"c"), ("a.txt", b"a")])).unwrap();
        let names: Vec<(&str, bool)> = ok.iter().map(|(n, d)| (n.as_str(), d.is_some())).collect();
        assert_eq!(names, [("a.txt", true), ("b", false), ("b/c.txt", true)]);
        for (entries, what) in [
            (vec![("../x", &b"x"[..])], "../x"),
            (vec![("a/../../x", b"x")], "a/../../x"),
            (vec![("/etc/passwd", b"x")], "/etc/passwd"),
            (vec![("a/./b", b"x")], "a/./b"),
            (vec![("a//b", b"x")], "a//b"),
            (vec![("a\\..\\b", b"x")], "a\\\\..\\\\b"),
            (vec![("", b"x")], "\"\""),
            (vec![("x", b"1"), ("x", b"2")], "twice"),
            (vec![("d/", b""), ("d", b"2")], "twice"),
            (vec![("a", b"1"), ("a/b", b"2")], "which is a file"),
        ] {
            let z = zip(&entries);
            let e = format!("{:#}", explode_zip(&z).unwrap_err());
            assert!(e.contains(what), "{entries:?}: {e}");
        }
        // a size bomb: an entry declaring more than any entry may inflate to
        let mut z = zip(&[("big", b"0123")]);
        let eocd = z.len() - 22;
        let cd = u32::from_le_bytes(z[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        z[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = format!("{:#}", explode_zip(&z).unwrap_err());
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn a_spring_boot_jar_is_laid_out_exploded_with_its_nested_libraries_in_the_deps_layer() {
        let d = tempfile::tempdir().unwrap();
        let lib = zip(&[("l/L.class", b"\xca\xfe")]);
        let mf = b"Manifest-Version: 1.0\r\nMain-Class: org.springframework.boot.loader.launch.JarLauncher\r\n\
                   Start-Class: demo.App\r\nSpring-Boot-Classes: BOOT-INF/classes/\r\n\
                   Spring-Boot-Lib: BOOT-INF/lib/\r\n\r\n";
        let jar = zip(&[
            ("META-INF/MANIFEST.MF", mf),
            (
                "org/springframework/boot/loader/launch/JarLauncher.class",
                b"\xca\xfe",
            ),
            ("BOOT-INF/classes/demo/App.class", b"\xca\xfe"),
            ("BOOT-INF/classpath.idx", b"- \"BOOT-INF/lib/l.jar\"\n"),
            ("BOOT-INF/lib/l.jar", &lib),
        ]);
        std::fs::write(d.path().join("app.jar"), &jar).unwrap();
        let m = java_manifest(d.path(), "jar", "app.jar");
        let boot = m.jar.as_ref().unwrap().spring_boot.clone().unwrap();
        assert_eq!(
            (boot.classes.as_str(), boot.lib.as_str()),
            ("BOOT-INF/classes/", "BOOT-INF/lib/")
        );
        let scan = scan_app(&m, None).unwrap();
        assert_eq!(scan.sha256, sha256_hex(&jar));
        assert_eq!(
            layer_files(&scan, "deps"),
            [
                "app",
                "app/BOOT-INF",
                "app/BOOT-INF/lib",
                "app/BOOT-INF/lib/l.jar"
            ]
        );
        let code = layer_files(&scan, "app");
        for f in [
            "app/META-INF/MANIFEST.MF",
            "app/BOOT-INF/classes/demo/App.class",
            "app/BOOT-INF/classpath.idx",
            "app/org/springframework/boot/loader/launch/JarLauncher.class",
        ] {
            assert!(code.contains(&f.to_string()), "{f}: {code:?}");
        }
        assert!(!code.iter().any(|f| f.contains("BOOT-INF/lib")), "{code:?}");
        assert!(!code.contains(&"app/app.jar".to_string()));
        // it runs from the directory: the launcher the manifest names, /app on the class path
        let (argv, at) = crate::runtimes::argv(&m).unwrap();
        let at = at.unwrap();
        assert_eq!(
            argv[at..],
            [
                "-cp",
                "/app",
                "org.springframework.boot.loader.launch.JarLauncher"
            ]
        );
        // a plain fat jar (no Spring-Boot-* attributes) stays one file, run with -jar
        let plain = zip(&[
            (
                "META-INF/MANIFEST.MF",
                b"Manifest-Version: 1.0\r\nMain-Class: a.B\r\n\r\n",
            ),
            ("BOOT-INF/lib/l.jar", &lib),
        ]);
        std::fs::write(d.path().join("app.jar"), &plain).unwrap();
        let m = java_manifest(d.path(), "jar", "app.jar");
        assert!(m.jar.as_ref().unwrap().spring_boot.is_none());
        let scan = scan_app(&m, None).unwrap();
        assert_eq!(layer_files(&scan, "app"), ["app", "app/app.jar"]);
        assert!(scan.part("deps").is_none());
        assert_eq!(
            crate::runtimes::argv(&m).unwrap().0.last().unwrap(),
            "/app/app.jar"
        );
    }
}
