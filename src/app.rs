//! The app as the user handed it over: the one reading of the artifact or app directory
//! ([`scan_app`]: files, identity, what its native and Java code needs) and the app layer's
//! file tree ([`app_layer`]).

use crate::digest::sha256_hex;
use crate::disk::file_list;
use crate::layers::Layer;
use crate::manifest::{AppKind, Manifest};
use crate::resolve::elf::{self, Dynamic};
use crate::runtimes::APP_DIR;
use crate::tree::{Node, Tree};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;

/// The one reading of the app: what the lock, the plan and the app layer need of it.
#[derive(Clone, Debug)]
pub struct AppScan {
    /// The app's identity (lock `app.sha256`, image.json `app_sha256`): the artifact's sha256,
    /// or for an app directory the sha256 of its canonical file listing.
    pub sha256: String,
    /// sha256 of the file listing of the app layer (path, type, mode, size, sha256 of every
    /// entry under /app): what the app layer's bytes depend on.
    pub listing_sha256: String,
    /// The app layer's files (under `app/`), times 0: stamped with the epoch when built.
    pub files: Tree,
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
}

/// Read the app once: its files, its identity, what it needs from the dynamic linker.
pub fn scan_app(m: &Manifest) -> Result<AppScan> {
    let files = app_layer(m, 0)?.tree;
    let listing = serde_json::to_vec(&file_list(&files))?;
    let listing_sha256 = sha256_hex(&listing);
    // A jar with the jars its Class-Path names is several files: identified like a directory.
    let several = m
        .jar
        .as_ref()
        .is_some_and(|j| j.dir || !j.class_path.is_empty());
    let sha256 = if m.kind.is_dir() || several {
        listing_sha256.clone()
    } else {
        sha256_hex(artifact(m, &files)?)
    };
    let dynamic = if m.kind == AppKind::Binary {
        let bytes = artifact(m, &files)?;
        if !elf::is_elf(bytes) {
            bail!(
                "{}: kind \"binary\" needs an ELF executable",
                m.app_path.display()
            );
        }
        elf::dynamic(bytes)
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
        let war = artifact(m, &files)?;
        crate::runtimes::war_has_jsp(war)
            .with_context(|| format!("cannot list the pages of {}", m.app_path.display()))?
    } else {
        false
    };
    Ok(AppScan {
        jsp,
        sha256,
        listing_sha256,
        files,
        dynamic,
        native,
        java_packages,
        java_scan_error,
    })
}

/// What the native code in the app (every ELF object in its files and archives) needs
/// from the distribution; logged when the app has any.
fn scan_native(m: &Manifest, files: &Tree) -> Result<crate::resolve::native::AppNeeds> {
    let java = matches!(m.kind, AppKind::Jar | AppKind::War);
    let needs = crate::resolve::native::scan(files, java)?;
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
    let Some(j) = &m.jar else {
        return Ok(vec![(java_artifact_name(m), artifact(m, files)?)]);
    };
    let mut out = Vec::new();
    let main = format!("app/{}", j.main);
    let bytes = files
        .get(&main)
        .and_then(|n| n.data())
        .with_context(|| format!("the app has no /{main}"))?;
    out.push((j.main.clone(), bytes));
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

/// The artifact of a file kind (binary, jar, war): the one file under `app/`.
fn artifact<'a>(m: &Manifest, files: &'a Tree) -> Result<&'a [u8]> {
    files
        .iter()
        .find(|(p, n)| p.matches('/').count() == 1 && n.data().is_some())
        .and_then(|(_, n)| n.data())
        .with_context(|| format!("the app {} holds no file", m.app_path.display()))
}

/// Names never taken from an app directory: fuse's own files and version control.
const APP_DIR_SKIP: &[&str] = &["fuse.toml", "fuse.lock", "fuse-out", ".git"];

/// Add the files of a host directory to `t` under `dest`, sorted, root-owned, 0644 or 0755
/// (owner-executable files), times set to the epoch. Symlinks are kept as they are;
/// anything else (sockets, devices) is refused.
pub fn add_dir(t: &mut Tree, src: &std::path::Path, dest: &str, epoch: u64) -> Result<()> {
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
        if dest == APP_DIR && APP_DIR_SKIP.contains(&name) {
            continue;
        }
        let path = format!("{dest}/{name}");
        let ft = e
            .file_type()
            .with_context(|| format!("cannot stat {}", e.path().display()))?;
        let mut node = if ft.is_symlink() {
            let target = std::fs::read_link(e.path())
                .with_context(|| format!("cannot read link {}", e.path().display()))?;
            Node::symlink(target.to_string_lossy().into_owned())
        } else if ft.is_dir() {
            let mut d = Node::dir(0o755);
            d.mtime = epoch;
            t.insert(&path, d)?;
            add_dir(t, &e.path(), &path, epoch)?;
            continue;
        } else if ft.is_file() {
            let meta = e
                .metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?;
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            let data = std::fs::read(e.path())
                .with_context(|| format!("cannot read {}", e.path().display()))?;
            Node::file(data, mode)
        } else {
            anyhow::bail!("{} is not a file, directory or symlink", e.path().display());
        };
        node.mtime = epoch;
        t.insert(&path, node)?;
    }
    Ok(())
}

/// The app layer: for file kinds (binary, jar, war) the artifact at `/app/<file name>`
/// (a war as `/app/ROOT.war`, Tomcat's ROOT context); for directory kinds (node, python)
/// the app directory's files under `/app`. Root-owned, read-only to the app user.
pub fn app_layer(m: &Manifest, epoch: u64) -> Result<Layer> {
    let mut t = Tree::new();
    let mut d = Node::dir(0o755);
    d.mtime = epoch;
    t.insert(APP_DIR, d)?;
    if m.kind.is_dir() || m.jar.as_ref().is_some_and(|j| j.dir) {
        add_dir(&mut t, &m.app_path, APP_DIR, epoch)?;
        if let (Some(venv), Some(rt)) = (&m.python_venv, &m.runtime) {
            retarget_venv(&mut t, venv, &rt.version, epoch)?;
        }
    } else {
        let file_name = match m.kind {
            AppKind::War => "ROOT.war",
            _ => m
                .app_path
                .file_name()
                .and_then(|f| f.to_str())
                .with_context(|| {
                    format!("app path {} has no usable file name", m.app_path.display())
                })?,
        };
        let bytes = std::fs::read(&m.app_path)
            .with_context(|| format!("cannot read the app {}", m.app_path.display()))?;
        let mode = if m.kind == AppKind::Binary {
            0o755
        } else {
            0o644
        };
        let mut f = Node::file(bytes, mode);
        f.mtime = epoch;
        t.insert(&format!("{APP_DIR}/{file_name}"), f)?;
        if let Some(j) = &m.jar {
            add_class_path(&mut t, &j.root(&m.app_path), &j.class_path, epoch)?;
        }
    }
    Ok(Layer {
        name: "app".into(),
        tree: t,
        packages: Vec::new(),
        java_modules: Vec::new(),
    })
}

/// The jars and class directories a jar's Class-Path names (relative to `root`, the
/// jar's directory), at the same places under /app; directories on the way are created
/// with the epoch's time.
fn add_class_path(
    t: &mut Tree,
    root: &std::path::Path,
    entries: &[String],
    epoch: u64,
) -> Result<()> {
    for rel in entries {
        let rel = rel.trim_end_matches('/');
        let dest = format!("{APP_DIR}/{rel}");
        let mut parent = String::from(APP_DIR);
        for c in rel
            .split('/')
            .take(rel.split('/').count().saturating_sub(1))
        {
            parent = format!("{parent}/{c}");
            if t.get(&parent).is_none() {
                let mut d = Node::dir(0o755);
                d.mtime = epoch;
                t.insert(&parent, d)?;
            }
        }
        let src = root.join(rel);
        if src.is_dir() {
            let mut d = Node::dir(0o755);
            d.mtime = epoch;
            t.insert(&dest, d)?;
            add_dir(t, &src, &dest, epoch)?;
        } else {
            let data =
                std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            let mut f = Node::file(data, 0o644);
            f.mtime = epoch;
            t.insert(&dest, f)?;
        }
    }
    Ok(())
}

/// Points a virtualenv at the image's Python, whatever Python it was made with on the
/// build machine: `bin/python`, `bin/python3` and `bin/pythonX.Y` become symlinks to
/// `/usr/bin/pythonX.Y`, and pyvenv.cfg's `home` (and `executable`, `command`, which
/// Python 3.11+ writes) name it too. The venv's site-packages stay as they are.
pub fn retarget_venv(t: &mut Tree, venv: &str, version: &str, epoch: u64) -> Result<()> {
    let dir = if venv.is_empty() {
        APP_DIR.trim_start_matches('/').to_string()
    } else {
        format!("{}/{venv}", APP_DIR.trim_start_matches('/'))
    };
    let python = format!("/usr/bin/python{version}");
    for name in [
        "python".to_string(),
        "python3".into(),
        format!("python{version}"),
    ] {
        let mut n = Node::symlink(python.clone());
        n.mtime = epoch;
        t.remove(&format!("{dir}/bin/{name}"));
        t.insert(&format!("{dir}/bin/{name}"), n)?;
    }
    let cfg_path = format!("{dir}/pyvenv.cfg");
    let text = t
        .get(&cfg_path)
        .and_then(|n| n.data())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .with_context(|| format!("/{cfg_path} is not a file"))?;
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
    let mut n = Node::file(out.into_bytes(), 0o644);
    n.mtime = epoch;
    t.remove(&cfg_path);
    t.insert(&cfg_path, n)?;
    Ok(())
}
