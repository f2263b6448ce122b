//! Pinning: the manifest and the app scan resolved against the archive into a [`Lock`]
//! (kernel, EFI stub, the manifest's and runtimes' packages minus what a headless runtime
//! never loads, and the packages that ship the app's libraries), or the existing fuse.lock
//! when it still matches. What the lock pins is exactly what the image holds.

use crate::app::AppScan;
use crate::archive::deb::read_deb;
use crate::archive::packages::{parse_relations, Package};
use crate::manifest::Manifest;
use crate::mirror::{self, Archive, Session, Trust};
use crate::plan::STUB_PACKAGE;
use crate::resolve::elf::{self, Dynamic};
use crate::resolve::lock::{
    AppPin, ArchiveSnapshot, Lock, Pin, ResolveInputs, LOCK_FILE, LOCK_VERSION,
};
use crate::resolve::native::{self, AppNeeds};
use crate::resolve::{self, Index};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a build treats fuse.lock and the archive.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub trust: Trust,
    /// Fail instead of re-resolving when the lock is missing or does not match.
    pub locked: bool,
    /// Re-resolve against the archive even when the lock matches.
    pub update: bool,
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    tracing::info!("{what}...");
    let r = f()?;
    tracing::info!("{what}: done in {:.2}s", t.elapsed().as_secs_f64());
    Ok(r)
}

/// The package that holds the kernel: `name` itself when it ships /boot/vmlinuz-*, else the
/// `linux-image-*` it depends on (meta-packages like linux-image-amd64).
fn resolve_kernel<'a>(archive: &'a Archive, name: &str) -> Result<&'a Package> {
    let mut pkg = archive.newest(name).context("the kernel package")?;
    for _ in 0..4 {
        let is_meta = !pkg.depends.is_empty()
            && pkg.installed_size.unwrap_or(0) < 1024
            && parse_relations(&pkg.depends)?
                .iter()
                .any(|alts| alts.iter().any(|r| r.name.starts_with("linux-image-")));
        if !is_meta {
            return Ok(pkg);
        }
        let next = parse_relations(&pkg.depends)?
            .into_iter()
            .flatten()
            .find(|r| r.name.starts_with("linux-image-"))
            .with_context(|| format!("{} depends on no linux-image-* package", pkg.name))?;
        tracing::info!("kernel {} -> {}", pkg.name, next.name);
        pkg = archive
            .newest(&next.name)
            .with_context(|| format!("kernel package needed by {}", pkg.name))?;
    }
    bail!("kernel meta-package chain from {name} is too long")
}

/// The resolution inputs of a manifest + app: the binary's needs and those of the native
/// code anywhere in the app.
pub fn resolve_inputs(m: &Manifest, app: &AppScan) -> ResolveInputs {
    let (dynamic, native) = (&app.dynamic, &app.native);
    let mut packages = m.packages.clone();
    packages.sort();
    packages.dedup();
    let mut needed = dynamic.needed.clone();
    needed.extend(native.needed.iter().cloned());
    needed.sort();
    needed.dedup();
    ResolveInputs {
        distribution: format!("{}/{}", m.distribution.vendor, m.distribution.codename),
        arch: m.arch,
        kernel: m.kernel.clone(),
        packages,
        interpreter: dynamic.interpreter.clone(),
        needed,
        versions: native.version_entries(),
        runtime: m
            .runtime
            .iter()
            .chain(m.server.iter())
            .map(|r| r.key())
            .collect(),
        jsp: app.jsp,
    }
}

/// Packages the manifest's runtimes never load (left out by resolution unless asked for).
pub fn unused_packages(m: &Manifest, inputs: &ResolveInputs) -> Vec<&'static str> {
    m.runtime
        .iter()
        .chain(m.server.iter())
        .flat_map(|r| crate::runtimes::unused_packages(r, inputs.jsp))
        .collect()
}

/// Choose the soname's package from the Contents index candidates: the first (by name) that
/// the Packages index has, preferring runtime packages over -dev/-dbg ones.
fn package_for_file(
    file: &str,
    contents: &BTreeMap<String, BTreeSet<String>>,
    idx: &Index,
) -> Option<String> {
    let cands = contents.get(file)?;
    let ok = |n: &&String| idx.newest(n).is_some();
    cands
        .iter()
        .filter(ok)
        .find(|n| !n.ends_with("-dev") && !n.ends_with("-dbg") && !n.ends_with("-dbgsym"))
        .or_else(|| cands.iter().find(ok))
        .cloned()
}

/// Resolve a fresh lock against the archive: kernel, stub, the manifest's packages, and the
/// packages that ship every library in the app's closure (found through the Contents index,
/// then checked by walking DT_NEEDED through the chosen packages' files).
pub fn resolve_lock(
    s: &Session,
    m: &Manifest,
    inputs: &ResolveInputs,
    native: &AppNeeds,
    app_sha256: &str,
    trust: Trust,
) -> Result<Lock> {
    let source = mirror::find_source(
        m.mirror.as_deref(),
        m.keyring.as_deref(),
        &m.distribution.codename,
    )?;
    let archive = step("reading the archive index", || {
        Archive::open(
            &s.fetcher,
            &s.store,
            &source,
            &m.distribution.codename,
            m.arch,
            trust,
        )
    })?;
    let kernel_pkg = resolve_kernel(&archive, &m.kernel)?;
    let stub_pkg = archive
        .newest(STUB_PACKAGE)
        .context("the EFI stub package")?;
    let idx = Index::new(archive.packages.values().flatten().cloned(), m.arch.name())?;

    let mut roots: Vec<String> = inputs.packages.clone();
    for r in m.runtime.iter().chain(m.server.iter()) {
        crate::runtimes::check_available(&idx, r, &inputs.distribution)?;
        roots.extend(crate::runtimes::roots(r));
    }
    let unused = unused_packages(m, inputs);
    let dynamic = Dynamic {
        interpreter: inputs.interpreter.clone(),
        needed: inputs.needed.clone(),
        runpath: Vec::new(),
    };
    let (mut packages, mut left_out) = if dynamic.is_static() && roots.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        resolve::resolve_excluding(&idx, &roots, &unused)?
    };
    if !dynamic.is_static() {
        let contents = step("reading the Contents index", || {
            archive.contents_libraries(&s.fetcher, &s.store)
        })?;
        // Each round walks DT_NEEDED through the chosen packages' files; a library still
        // missing adds the package that ships it. A fixed point ends the loop.
        let mut complete = false;
        for _round in 0..8 {
            let pins: Vec<Pin> = packages.iter().map(Pin::of).collect();
            let debs = mirror::fetch_pins(&s.fetcher, &s.store, &|| Ok(source.url.clone()), &pins)?;
            let mut tree = crate::tree::Tree::new();
            for (p, d) in pins.iter().zip(&debs) {
                let deb =
                    read_deb(d).with_context(|| format!("cannot read {} {}", p.name, p.version))?;
                tree.merge(&deb.data)?;
            }
            let (missing, found) = elf::missing_libraries(&tree, &dynamic)?;
            if missing.is_empty() {
                native::check_versions(native, &tree, &found, &inputs.distribution)?;
                complete = true;
                break;
            }
            let before = roots.clone();
            for file in &missing {
                let base = file.rsplit('/').next().unwrap_or(file);
                match package_for_file(base, &contents, &idx) {
                    Some(p) if !before.contains(&p) => {
                        tracing::info!("{file} is in package {p}");
                        if !roots.contains(&p) {
                            roots.push(p);
                        }
                    }
                    Some(p) => bail!("package {p} should provide {file} but does not"),
                    None => match native.needed_by.get(base) {
                        Some(by) => bail!(
                            "{by} needs {file}, which no package of {} ships (bundle it with the app, or name the package that has it in [system] packages)",
                            inputs.distribution
                        ),
                        None => bail!(
                            "no package of {} ships {file}, which the app needs",
                            m.distribution.codename
                        ),
                    },
                }
            }
            (packages, left_out) = resolve::resolve_excluding(&idx, &roots, &unused)?;
        }
        if !complete {
            bail!("the app's library closure did not settle after 8 rounds of resolution");
        }
    }
    if !left_out.is_empty() {
        tracing::info!(
            "left out {} packages a headless {} never loads: {}",
            left_out.len(),
            m.runtime
                .iter()
                .chain(m.server.iter())
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            left_out.join(" ")
        );
    }
    tracing::info!(
        "resolved {} packages: {}",
        packages.len(),
        resolve::names(&packages)
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut pins: Vec<Pin> = packages.iter().map(Pin::of).collect();
    pins.sort();
    Ok(Lock {
        version: LOCK_VERSION,
        archive: ArchiveSnapshot {
            distribution: inputs.distribution.clone(),
            suite: archive.release.suite.clone(),
            codename: m.distribution.codename.clone(),
            date: archive.release.date.clone(),
            epoch: archive.release.date_unix.unwrap_or(0).max(0) as u64,
        },
        inputs: inputs.clone(),
        app: AppPin {
            sha256: app_sha256.to_string(),
        },
        kernel: Pin::of(kernel_pkg),
        stub: Pin::of(stub_pkg),
        packages: pins,
    })
}

/// Where a manifest's lock lives.
pub fn lock_path(m: &Manifest) -> PathBuf {
    m.file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(LOCK_FILE)
}

/// How a lock differs from what this manifest and app would resolve to now, without the
/// archive: changed inputs, and pins of packages resolution now leaves out.
pub fn lock_differences(lock: &Lock, m: &Manifest, inputs: &ResolveInputs) -> Vec<String> {
    let mut diffs = lock.input_differences(inputs);
    let unused = unused_packages(m, inputs);
    for p in &lock.packages {
        if unused.contains(&p.name.as_str()) && !inputs.packages.contains(&p.name) {
            diffs.push(if p.name == crate::runtimes::JSP_COMPILER_PACKAGE {
                format!(
                    "it pins {}, which a war without JSP pages leaves out",
                    p.name
                )
            } else {
                format!(
                    "it pins {}, which the image leaves out (a headless runtime never loads it)",
                    p.name
                )
            });
        }
    }
    diffs
}

/// For a container app (kind oci), the lock's app digest is the container image's manifest
/// digest it was built from: when the image now resolves to another one (a tag that moved,
/// a layout or archive that changed), what moved, naming the reference and both digests.
pub fn container_moved(
    lock: &Lock,
    m: &Manifest,
    app: &AppScan,
    lock_path: &Path,
) -> Option<String> {
    if m.kind != crate::manifest::AppKind::Oci || lock.app.sha256 == app.sha256 {
        return None;
    }
    Some(format!(
        "container image {} now resolves to sha256:{}, but {} pins sha256:{}",
        m.oci_image.as_deref().unwrap_or("?"),
        app.sha256,
        lock_path.display(),
        lock.app.sha256
    ))
}

/// The lock to build from: fuse.lock when it matches the manifest and app (and `--update`
/// was not asked), else a fresh resolution (refused with `--locked`, saying what differs).
/// Returns the lock and whether it must still be written (fresh or updated): `fuse build`
/// writes it only once the image is built, so a refused package never gets pinned.
pub fn obtain_lock(
    s: &Session,
    m: &Manifest,
    app: &AppScan,
    opts: Options,
) -> Result<(Lock, bool)> {
    let lock_path = lock_path(m);
    let inputs = resolve_inputs(m, app);
    let existing = Lock::load(&lock_path)?;
    if let Some(lock) = &existing {
        let diffs = lock_differences(lock, m, &inputs);
        if diffs.is_empty() && !opts.update {
            tracing::info!("using {}", lock_path.display());
            if let Some(moved) = container_moved(lock, m, app, &lock_path) {
                if opts.locked {
                    bail!(
                        "{moved} (--locked): `fuse lock --update`, or a build without \
                         --locked, takes the new image; name the image by digest to keep the \
                         one locked"
                    );
                }
                tracing::info!("{moved}: fuse.lock takes the new digest");
            }
            if lock.app.sha256 != app.sha256 && !opts.locked {
                let mut l = lock.clone();
                l.app.sha256 = app.sha256.clone();
                return Ok((l, true));
            }
            return Ok((lock.clone(), false));
        }
        if opts.locked {
            bail!(
                "{} does not match the manifest (--locked):\n  {}",
                lock_path.display(),
                diffs.join("\n  ")
            );
        }
        if !diffs.is_empty() {
            tracing::info!(
                "{} is out of date ({}); resolving again",
                lock_path.display(),
                diffs.join("; ")
            );
        }
    } else if opts.locked {
        bail!(
            "--locked, but there is no {}: run `fuse lock` first",
            lock_path.display()
        );
    }
    Ok((
        resolve_lock(s, m, &inputs, &app.native, &app.sha256, opts.trust)?,
        true,
    ))
}
