//! Python bytecode compiled at build time: every `.py` file of a Python image's layers gets
//! its `__pycache__/<name>.cpython-XY.pyc`, so the guest never compiles a module at boot.
//!
//! The compiler is the image's own interpreter (its base and runtime packages laid out in a
//! directory of the unit store, run through the image's dynamic linker: no host Python is
//! involved). The files are *unchecked hash-based* pycs (PEP 552): they hold the SipHash of
//! their source instead of its time, and the interpreter trusts them without reading the
//! source, which is safe because a layer is read-only and verified by dm-verity. They are
//! reproducible: `PYTHONHASHSEED=0`, the image path recorded as the file name, one file's
//! bytes independent of which files are compiled beside it (checked by the tests).
//!
//! Running the image's interpreter needs a build host of the image's architecture;
//! `[runtime] bytecode = false` leaves bytecode out (docs/runtimes.md).

use crate::arch::Arch;
use crate::resolve::lock::Pin;
use crate::tree::{Kind, Node, Tree};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// How many files one interpreter process compiles (the chunks are fixed by the sorted
/// file list, so the output does not depend on the number of workers).
const CHUNK: usize = 256;

/// The compile loop run by the image's interpreter: file names (relative to the image
/// root) on stdin, sources under argv[1], pycs written under argv[2] as `<name>c`.
const DRIVER: &str = r#"
import os, sys, py_compile
src, out = sys.argv[1], sys.argv[2]
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
for rel in sys.stdin.read().split("\n"):
    if not rel:
        continue
    try:
        py_compile.compile(os.path.join(src, rel), cfile=os.path.join(out, rel + "c"),
                           dfile="/" + rel, doraise=True, invalidation_mode=mode)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        print("skipped /%s: %s" % (rel, msg), file=sys.stderr)
"#;

/// The image's interpreter, laid out on the build host.
pub struct Interpreter {
    root: PathBuf,
    paths: Paths,
}

/// Where the interpreter's files are, relative to its directory.
#[derive(Clone, Serialize, Deserialize)]
struct Paths {
    ld_so: String,
    library_path: Vec<String>,
    python: String,
    /// "cpython-311"
    cache_tag: String,
}

impl Paths {
    fn under(self, root: &Path) -> Interpreter {
        Interpreter {
            root: root.to_path_buf(),
            paths: self,
        }
    }
}

/// One preparation at a time in this process (other processes: the atomic rename).
static PREPARE: Mutex<()> = Mutex::new(());

#[derive(Serialize)]
struct RootKey<'a> {
    format: u32,
    python: &'a str,
    arch: Arch,
    packages: &'a [Pin],
}

impl Interpreter {
    /// The interpreter made of the packages `pins` (Python `version`), from
    /// `<tools>/python/<key>`, laid out there first when missing from the files `files`
    /// gives (the packages' files merged; asked for only then), with its own standard
    /// library compiled, so that the compiling runs start fast.
    pub fn prepare(
        tools: &Path,
        pins: &[Pin],
        version: &str,
        arch: Arch,
        files: &dyn Fn() -> Result<Tree>,
    ) -> Result<Interpreter> {
        if Arch::host() != arch {
            bail!(
                "compiling Python bytecode runs the image's {arch} Python, which this {} host cannot run: \
                 build on an {arch} host, or set `[runtime] bytecode = false` (the modules are then compiled at every boot)",
                Arch::host()
            );
        }
        let key = crate::plan::key_of(&RootKey {
            format: 1,
            python: version,
            arch,
            packages: pins,
        })?;
        let dir = tools.join("python");
        let root = dir.join(&key);
        let _guard = PREPARE.lock().unwrap_or_else(|p| p.into_inner());
        remove_stale_temps(&dir);
        if !root.join(".complete").exists() {
            let t = std::time::Instant::now();
            let tmp = scratch_dir(&dir, ".tmp-")?;
            let files = files()?;
            write_tree(&files, tmp.path())?;
            let interp = Interpreter::at(tmp.path(), &files, version, arch)?;
            // Its own standard library, compiled once (not part of any image).
            let stdlib: Vec<String> = files
                .iter()
                .filter(|(p, n)| {
                    p.starts_with(&format!("usr/lib/python{version}/"))
                        && p.ends_with(".py")
                        && matches!(n.kind, Kind::File(_))
                })
                .map(|(p, _)| p.to_string())
                .collect();
            let out = tmp.path().join(".stdlib-pyc");
            interp.run(tmp.path(), &out, &stdlib)?;
            for rel in &stdlib {
                let from = out.join(format!("{rel}c"));
                if from.exists() {
                    let to = tmp.path().join(cache_path(rel, &interp.paths.cache_tag)?);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    std::fs::rename(&from, &to)
                        .with_context(|| format!("cannot move {}", from.display()))?;
                }
            }
            std::fs::remove_dir_all(&out).ok();
            let paths = serde_json::to_vec(&interp.paths)?;
            std::fs::write(tmp.path().join(".interpreter.json"), paths)
                .context("cannot record the interpreter's paths")?;
            std::fs::write(tmp.path().join(".complete"), key.as_bytes())
                .context("cannot mark the interpreter complete")?;
            let tmp = tmp.keep();
            if let Err(e) = std::fs::rename(&tmp, &root) {
                // another process laid it out first: use that one
                std::fs::remove_dir_all(&tmp).ok();
                if !root.join(".complete").exists() {
                    return Err(e).with_context(|| format!("cannot create {}", root.display()));
                }
            }
            tracing::info!(
                "Python {version} for compiling bytecode laid out in {} in {:.2}s",
                root.display(),
                t.elapsed().as_secs_f64()
            );
        }
        let text = std::fs::read(root.join(".interpreter.json"))
            .with_context(|| format!("cannot read {}/.interpreter.json", root.display()))?;
        let paths: Paths = serde_json::from_slice(&text)
            .with_context(|| format!("{}/.interpreter.json", root.display()))?;
        Ok(paths.under(&root))
    }

    /// The interpreter in `root`, whose files are listed in `files`.
    fn at(root: &Path, files: &Tree, version: &str, arch: Arch) -> Result<Interpreter> {
        let python = format!("usr/bin/python{version}");
        let (real, node) = crate::resolve::elf::follow(files, &python)
            .with_context(|| format!("the Python packages have no /{python}"))?;
        let Some(bytes) = node.data() else {
            bail!("/{real} is not a file");
        };
        let interp = crate::resolve::elf::dynamic(bytes)
            .with_context(|| format!("/{real}"))?
            .interpreter
            .with_context(|| format!("/{real} names no dynamic linker"))?;
        let (ld_so, _) = crate::resolve::elf::follow(files, &interp)
            .with_context(|| format!("the base packages have no {interp}"))?;
        let triplet = format!("{}-linux-gnu", arch.triple_cpu());
        let library_path = [
            format!("lib/{triplet}"),
            format!("usr/lib/{triplet}"),
            "lib".into(),
            "usr/lib".into(),
        ]
        .into_iter()
        .filter(|d| root.join(d).is_dir())
        .collect();
        Ok(Paths {
            ld_so,
            library_path,
            python: real,
            cache_tag: format!("cpython-{}", version.replace('.', "")),
        }
        .under(root))
    }

    /// The bytecode this directory holds for the image file `path` of `tree`, when the
    /// directory's copy of that file is the same source.
    fn compiled(&self, path: &str, tree: &Tree) -> Option<Vec<u8>> {
        let source = tree.get(path)?.data()?;
        let own = std::fs::read(self.root.join(path)).ok()?;
        if own != source {
            return None;
        }
        std::fs::read(
            self.root
                .join(cache_path(path, &self.paths.cache_tag).ok()?),
        )
        .ok()
    }

    /// Compile `files` (paths relative to `src`, which mirrors the image) into `out`
    /// (`<path>c`), CHUNK files per interpreter run, runs side by side. Files that do not
    /// compile (syntax of another Python, templates named .py) are skipped and counted.
    fn run(&self, src: &Path, out: &Path, files: &[String]) -> Result<usize> {
        let chunks: Vec<&[String]> = files.chunks(CHUNK).collect();
        let results = crate::pool::map(&chunks, crate::pool::build_workers()?, |chunk| {
            self.run_one(src, out, chunk)
        });
        let mut skipped = 0;
        for r in results {
            skipped += r.map_err(|p| anyhow::anyhow!("a compile job panicked: {p}"))??;
        }
        Ok(skipped)
    }

    fn run_one(&self, src: &Path, out: &Path, files: &[String]) -> Result<usize> {
        let library_path: Vec<String> = self
            .paths
            .library_path
            .iter()
            .map(|d| self.root.join(d).display().to_string())
            .collect();
        let python = self.root.join(&self.paths.python);
        let mut child = Command::new(self.root.join(&self.paths.ld_so))
            .arg("--inhibit-cache")
            .arg("--library-path")
            .arg(library_path.join(":"))
            .arg(&python)
            .args(["-S", "-s", "-c", DRIVER])
            .arg(src)
            .arg(out)
            .env_clear()
            .env("PYTHONHOME", self.root.join("usr"))
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUTF8", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let list = files.join("\n");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(list.as_bytes())
                .context("cannot send the file list to the compiling Python")?;
        }
        let output = child
            .wait_with_output()
            .context("the compiling Python did not finish")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!(
                "the image's Python in {} failed compiling bytecode ({}; remove that directory \
                 to lay it out again): {}",
                self.root.display(),
                output.status,
                stderr.trim()
            );
        }
        let mut skipped = 0;
        for line in stderr.lines() {
            if line.starts_with("skipped ") {
                skipped += 1;
                tracing::debug!("bytecode: {line}");
            } else if !line.trim().is_empty() {
                tracing::debug!("bytecode compiler: {line}");
            }
        }
        Ok(skipped)
    }
}

/// Where the bytecode of `path` (`dir/name.py`) goes: `dir/__pycache__/name.<tag>.pyc`.
fn cache_path(path: &str, tag: &str) -> Result<String> {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, path),
    };
    let stem = file
        .strip_suffix(".py")
        .with_context(|| format!("internal error: {path} is not a .py file"))?;
    Ok(match dir {
        Some(d) => format!("{d}/__pycache__/{stem}.{tag}.pyc"),
        None => format!("__pycache__/{stem}.{tag}.pyc"),
    })
}

/// Compile every `.py` file of `tree` with `interp`, adding the pycs to the tree (times
/// `epoch`, owner and group of their source). Returns how many were added.
pub fn compile(tree: &mut Tree, interp: &Interpreter, tools: &Path, epoch: u64) -> Result<usize> {
    let files: Vec<String> = tree
        .iter()
        .filter(|(p, n)| {
            p.ends_with(".py")
                && !p.contains('\n')
                && !p.split('/').any(|c| c == "__pycache__")
                && matches!(n.kind, Kind::File(_))
        })
        .map(|(p, _)| p.to_string())
        .collect();
    if files.is_empty() {
        return Ok(0);
    }
    let t = std::time::Instant::now();
    // The interpreter's directory already holds the bytecode of its own standard library,
    // compiled by the same interpreter under the same image paths: a source identical to
    // the directory's takes that (a file's bytecode does not depend on what is compiled
    // beside it), so the runtime layer's standard library is not compiled a second time.
    let mut pycs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut to_compile: Vec<String> = Vec::new();
    for f in files {
        match interp.compiled(&f, tree) {
            Some(pyc) => pycs.push((f, pyc)),
            None => to_compile.push(f),
        }
    }
    let reused = pycs.len();
    let mut skipped = 0;
    if !to_compile.is_empty() {
        let dir = tools.join("python");
        let tmp = scratch_dir(&dir, ".tmp-pyc-")?;
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        for f in &to_compile {
            let data = tree.get(f).and_then(|n| n.data()).unwrap_or_default();
            let path = src.join(f);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, data)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        skipped = interp.run(&src, &out, &to_compile)?;
        for f in to_compile {
            if let Ok(bytes) = std::fs::read(out.join(format!("{f}c"))) {
                pycs.push((f, bytes));
            }
        }
    }
    let mut added = 0;
    for (f, bytes) in pycs {
        let source = tree
            .get(&f)
            .cloned()
            .context("internal error: source vanished")?;
        let dest = cache_path(&f, &interp.paths.cache_tag)?;
        let (cache_dir, _) = dest.rsplit_once('/').unwrap_or(("", ""));
        if tree.get(cache_dir).is_none() {
            let mut d = Node::dir(0o755);
            (d.uid, d.gid, d.mtime) = (source.uid, source.gid, epoch);
            tree.insert(cache_dir, d)?;
        }
        match tree.get(cache_dir).map(|n| &n.kind) {
            Some(Kind::Dir) => {}
            _ => {
                tracing::warn!("bytecode of /{f} left out: /{cache_dir} is not a directory");
                continue;
            }
        }
        let mut n = Node::file(bytes, 0o644);
        (n.uid, n.gid, n.mtime) = (source.uid, source.gid, epoch);
        tree.insert(&dest, n)?;
        added += 1;
    }
    tracing::info!(
        "compiled {added} Python modules to bytecode ({reused} taken from the interpreter's own){} in {:.2}s",
        if skipped > 0 {
            format!(", {skipped} that do not compile left as source")
        } else {
            String::new()
        },
        t.elapsed().as_secs_f64()
    );
    Ok(added)
}

/// A temporary directory `<dir>/<prefix>*` (`dir` made if missing), removed when dropped;
/// one a killed build left behind goes after an hour ([`remove_stale_temps`]).
fn scratch_dir(dir: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a directory in {}", dir.display()))
}

/// Remove what a killed build left in `dir` (`.tmp-*` directories over an hour old: a
/// running build's are younger).
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if stale && e.file_name().to_string_lossy().starts_with(".tmp-") {
            tracing::debug!("removing {}", e.path().display());
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
}

/// Write `tree` under `root` (files, directories, symlinks; an absolute symlink is made
/// relative to `root`, so that nothing points into the build host).
fn write_tree(tree: &Tree, root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, node) in tree.iter() {
        let to = root.join(path);
        match &node.kind {
            Kind::Dir => std::fs::create_dir_all(&to)
                .with_context(|| format!("cannot create {}", to.display()))?,
            Kind::File(d) => {
                std::fs::write(&to, d.as_slice())
                    .with_context(|| format!("cannot write {}", to.display()))?;
                std::fs::set_permissions(
                    &to,
                    std::fs::Permissions::from_mode((node.mode & 0o755) | 0o600),
                )
                .with_context(|| format!("cannot set the mode of {}", to.display()))?;
            }
            Kind::Symlink(t) => {
                let target = match t.strip_prefix('/') {
                    Some(abs) => {
                        let depth = path.matches('/').count();
                        format!("{}{abs}", "../".repeat(depth))
                    }
                    None => t.clone(),
                };
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("cannot create the link {}", to.display()))?;
            }
            Kind::CharDev { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_goes_to_pycache_with_the_tag() {
        assert_eq!(
            cache_path("usr/lib/python3.11/os.py", "cpython-311").unwrap(),
            "usr/lib/python3.11/__pycache__/os.cpython-311.pyc"
        );
        assert_eq!(
            cache_path("x.py", "cpython-311").unwrap(),
            "__pycache__/x.cpython-311.pyc"
        );
        assert!(cache_path("x.txt", "cpython-311").is_err());
    }
}
