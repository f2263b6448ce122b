//! `fuse build`: manifest -> lock (resolved, or read from fuse.lock) -> packages -> layers ->
//! disk, written atomically to the output directory; the digest is the last line of stdout.

use crate::archive::deb::{read_deb, Deb};
use crate::archive::packages::{parse_relations, Package};
use crate::cli::BuildArgs;
use crate::fetch::Fetcher;
use crate::image::{self, DiskInputs, Inputs};
use crate::kernel;
use crate::layers::{self, BootPlan, DistroInfo, PackageRef};
use crate::manifest::{self, Manifest};
use crate::mirror::{self, Archive, Trust};
use crate::resolve::elf::{self, Dynamic};
use crate::resolve::lock::{
    AppPin, ArchiveSnapshot, Lock, Pin, ResolveInputs, LOCK_FILE, LOCK_VERSION,
};
use crate::resolve::{self, Index};
use crate::store::{self, sha256_hex, Store};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The init binary (PID 1), built static from `init/` by build.rs.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fuse-init"));

/// The EFI stub's package and its path inside it.
pub const STUB_PACKAGE: &str = "systemd-boot-efi";
pub const STUB_PATH: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The kernel command line of every image.
pub const CMDLINE: &str = "console=ttyS0,115200 panic=-1 quiet";

/// How a build treats fuse.lock and the archive.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub trust: Trust,
    /// Fail instead of re-resolving when the lock is missing or does not match.
    pub locked: bool,
    /// Re-resolve against the archive even when the lock matches.
    pub update: bool,
}

/// What a build produced.
pub struct Built {
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
    pub parts: Vec<(String, u64)>,
}

pub fn run(args: &BuildArgs) -> Result<u8> {
    let opts = Options {
        trust: Trust {
            allow_unsigned: args.insecure_allow_unsigned,
            allow_expired: args.allow_expired,
        },
        locked: args.locked,
        update: false,
    };
    let built = build(&args.path, args.out.as_deref(), opts)?;
    for (part, size) in &built.parts {
        tracing::info!(
            "  {part:<18} {:>10} bytes ({:.1} MiB)",
            size,
            *size as f64 / 1048576.0
        );
    }
    // Add the image to the local store (a failure there does not fail the build).
    let added = std::fs::read(&built.image)
        .with_context(|| format!("cannot read {}", built.image.display()))
        .and_then(|bytes| crate::images::Images::open_default()?.add(&bytes));
    match added {
        Ok(_) => tracing::info!("added to the local image store"),
        Err(e) => tracing::warn!("not added to the local image store: {e:#}"),
    }
    println!("{}", built.image.display());
    println!("{}", built.digest);
    Ok(0)
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    tracing::info!("{what}...");
    let r = f()?;
    tracing::info!("{what}: done in {:.2}s", t.elapsed().as_secs_f64());
    Ok(r)
}

/// The reproducibility clock: SOURCE_DATE_EPOCH when set (malformed is an error), else the
/// locked archive's Release date.
pub fn source_epoch(locked: u64) -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a whole number of seconds")),
        _ => Ok(locked),
    }
}

fn package_ref(p: &Pin, deb: &Deb) -> PackageRef {
    PackageRef {
        name: p.name.clone(),
        version: p.version.clone(),
        arch: p.arch.clone(),
        sha256: p.sha256.clone(),
        source: deb
            .control
            .get("Source")
            .map(|s| s.split_whitespace().next().unwrap_or(s).to_string()),
        license: layers::license_of(&deb.data, &p.name),
    }
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

/// The bytes that identify the app: the artifact itself, or for an app directory the
/// canonical listing (path, type, mode, size, sha256 of every file) of its files.
pub fn app_artifact(m: &Manifest) -> Result<Vec<u8>> {
    if m.kind.is_dir() {
        let layer = layers::app_layer(m, 0)?;
        Ok(serde_json::to_vec(&image::file_list(&layer.tree))?)
    } else {
        std::fs::read(&m.app_path)
            .with_context(|| format!("cannot read the app {}", m.app_path.display()))
    }
}

/// What the app needs from the dynamic linker (static apps, and apps run by a runtime:
/// nothing).
pub fn app_dynamic(m: &Manifest, app: &[u8]) -> Result<Dynamic> {
    if m.kind != manifest::AppKind::Binary {
        return Ok(Dynamic::default());
    }
    if !elf::is_elf(app) {
        bail!(
            "{}: kind \"binary\" needs an ELF executable",
            m.app_path.display()
        );
    }
    elf::dynamic(app)
        .with_context(|| format!("cannot read the ELF headers of {}", m.app_path.display()))
}

/// The resolution inputs of a manifest + app.
pub fn resolve_inputs(m: &Manifest, dynamic: &Dynamic) -> ResolveInputs {
    let mut packages = m.packages.clone();
    packages.sort();
    packages.dedup();
    let mut needed = dynamic.needed.clone();
    needed.sort();
    needed.dedup();
    ResolveInputs {
        distribution: format!("{}/{}", m.distribution.vendor, m.distribution.codename),
        kernel: m.kernel.clone(),
        packages,
        interpreter: dynamic.interpreter.clone(),
        needed,
        runtime: m
            .runtime
            .iter()
            .chain(m.server.iter())
            .map(|r| r.key())
            .collect(),
    }
}

/// Shared state of a command that may talk to the archive.
pub struct Session {
    pub store: Store,
    pub fetcher: Fetcher,
}

impl Session {
    pub fn open() -> Result<Session> {
        Ok(Session {
            store: Store::open(&store::default_cache_dir()?)?,
            fetcher: Fetcher::new(),
        })
    }
}

/// Choose the soname's package from the Contents index candidates: the first (by name) that
/// the Packages index has, preferring runtime packages over -dev/-dbg ones.
fn package_for_file(
    file: &str,
    contents: &BTreeMap<String, std::collections::BTreeSet<String>>,
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
            trust,
        )
    })?;
    let kernel_pkg = resolve_kernel(&archive, &m.kernel)?;
    let stub_pkg = archive
        .newest(STUB_PACKAGE)
        .context("the EFI stub package")?;
    let idx = Index::new(archive.packages.values().flatten().cloned(), "amd64")?;

    let mut roots: Vec<String> = inputs.packages.clone();
    for r in m.runtime.iter().chain(m.server.iter()) {
        crate::runtimes::check_available(&idx, r, &inputs.distribution)?;
        roots.extend(crate::runtimes::roots(r));
    }
    let dynamic = Dynamic {
        interpreter: inputs.interpreter.clone(),
        needed: inputs.needed.clone(),
        runpath: Vec::new(),
    };
    let mut packages = if dynamic.is_static() && roots.is_empty() {
        Vec::new()
    } else {
        resolve::resolve(&idx, &roots)?
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
            let (missing, _) = elf::missing_libraries(&tree, &dynamic)?;
            if missing.is_empty() {
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
                    None => bail!(
                        "no package of {} ships {file}, which the app needs",
                        m.distribution.codename
                    ),
                }
            }
            packages = resolve::resolve(&idx, &roots)?;
        }
        if !complete {
            bail!("the app's library closure did not settle after 8 rounds of resolution");
        }
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

/// The lock to build from: fuse.lock when it matches the manifest and app (or `--update`
/// was not asked), else a fresh resolution written back to fuse.lock (refused with
/// `--locked`, saying what differs).
/// Returns the lock and whether it must still be written (fresh or updated): `fuse build`
/// writes it only once the image is built, so a refused package never gets pinned.
pub fn obtain_lock(s: &Session, m: &Manifest, app: &[u8], opts: Options) -> Result<(Lock, bool)> {
    let dir = m
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let lock_path = dir.join(LOCK_FILE);
    let dynamic = app_dynamic(m, app)?;
    let inputs = resolve_inputs(m, &dynamic);
    let app_sha256 = sha256_hex(app);
    let existing = Lock::load(&lock_path)?;
    if let Some(lock) = &existing {
        let diffs = lock.input_differences(&inputs);
        if diffs.is_empty() && !opts.update {
            tracing::info!("using {}", lock_path.display());
            if lock.app.sha256 != app_sha256 && !opts.locked {
                let mut l = lock.clone();
                l.app.sha256 = app_sha256;
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
    Ok((resolve_lock(s, m, &inputs, &app_sha256, opts.trust)?, true))
}

/// Where a manifest's lock lives.
pub fn lock_path(m: &Manifest) -> PathBuf {
    m.file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(LOCK_FILE)
}

/// Read a pinned .deb; a package that cannot be read (hostile paths, corrupt archive) is
/// removed from the cache so that nothing refused stays there.
fn read_pinned(s: &Session, pin: &Pin, bytes: &[u8]) -> Result<Deb> {
    read_deb(bytes).map_err(|e| {
        let _ = std::fs::remove_file(s.store.blob_path(&pin.sha256));
        e.context(format!(
            "refusing package {} {} (removed from the cache)",
            pin.name, pin.version
        ))
    })
}

/// The kernel (vmlinuz and modules) of a pinned kernel package, and the package's control
/// fields (its data left empty): from the cache when this package was read before (the
/// package is 70 MB of xz; a rebuild should not decompress it again), else read and
/// cached. The cached bytes are content-addressed and verified when read back.
fn read_kernel(s: &Session, pin: &Pin, bytes: &[u8]) -> Result<(kernel::Kernel, Deb)> {
    use std::sync::Arc;
    let key = format!("kernel2-{}-{}", env!("CARGO_PKG_VERSION"), pin.sha256);
    // Of the package's files, only the licence is kept beside the kernel (for image.json).
    let copyright_path = format!("usr/share/doc/{}/copyright", pin.name);
    let with_copyright = |text: &Option<String>| -> Result<crate::tree::Tree> {
        let mut t = crate::tree::Tree::new();
        if let Some(c) = text {
            t.insert(
                &copyright_path,
                crate::tree::Node::file(c.as_bytes().to_vec(), 0o644),
            )?;
        }
        Ok(t)
    };
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Header {
        release: String,
        control: BTreeMap<String, String>,
        copyright: Option<String>,
        vmlinuz: usize,
        modules: Vec<(String, String, usize)>,
    }
    let decode = |blob: &[u8]| -> Option<(kernel::Kernel, Deb)> {
        let nl = blob.iter().position(|&b| b == b'\n')?;
        let h: Header = serde_json::from_slice(blob.get(..nl)?).ok()?;
        let mut at = nl + 1;
        let mut take = |n: usize| -> Option<Arc<Vec<u8>>> {
            let d = blob.get(at..at.checked_add(n)?)?.to_vec();
            at += n;
            Some(Arc::new(d))
        };
        let vmlinuz = take(h.vmlinuz)?;
        let mut modules = Vec::new();
        for (path, name, len) in h.modules {
            modules.push((path, take(len)?, name));
        }
        let deb = Deb {
            control: h.control,
            control_files: BTreeMap::new(),
            data: with_copyright(&h.copyright).ok()?,
        };
        Some((
            kernel::Kernel {
                release: h.release,
                vmlinuz,
                modules,
            },
            deb,
        ))
    };
    if let Some(sha) = s.store.get_named(&key)? {
        let sha = String::from_utf8_lossy(&sha).trim().to_string();
        if let Ok(Some(blob)) = s.store.get(&sha) {
            if let Some(k) = decode(&blob) {
                tracing::info!("kernel {} from the cache", k.0.release);
                return Ok(k);
            }
        }
    }
    let deb = read_pinned(s, pin, bytes)?;
    let k = kernel::from_package(&deb.data, &pin.name)?;
    let copyright = deb
        .data
        .get(&copyright_path)
        .and_then(|n| n.data())
        .map(|d| String::from_utf8_lossy(d).into_owned());
    let h = Header {
        release: k.release.clone(),
        control: deb.control.clone(),
        copyright: copyright.clone(),
        vmlinuz: k.vmlinuz.len(),
        modules: k
            .modules
            .iter()
            .map(|(p, d, n)| (p.clone(), n.clone(), d.len()))
            .collect(),
    };
    let mut blob = serde_json::to_vec(&h)?;
    blob.push(b'\n');
    blob.extend_from_slice(&k.vmlinuz);
    for (_, d, _) in &k.modules {
        blob.extend_from_slice(d);
    }
    let sha = sha256_hex(&blob);
    s.store.put(&sha, &blob)?;
    s.store.put_named(&key, sha.as_bytes())?;
    let deb = Deb {
        control: deb.control,
        control_files: BTreeMap::new(),
        data: with_copyright(&copyright)?,
    };
    Ok((k, deb))
}

/// Build the image of the manifest at `path` into `out` (default `<app dir>/fuse-out`).
pub fn build(path: &Path, out: Option<&Path>, opts: Options) -> Result<Built> {
    let started = Instant::now();
    let m: Manifest = manifest::load(path)?;
    let app_dir = m
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| app_dir.join("fuse-out"));
    let app_bytes = app_artifact(&m)?;
    let s = Session::open()?;
    let (lock, lock_changed) = obtain_lock(&s, &m, &app_bytes, opts)?;

    // Every pinned package, from the cache or the mirror (asked for only when needed).
    let mirror_url = || -> Result<String> {
        Ok(mirror::find_source(
            m.mirror.as_deref(),
            m.keyring.as_deref(),
            &m.distribution.codename,
        )?
        .url)
    };
    let mut pins = vec![lock.kernel.clone(), lock.stub.clone()];
    pins.extend(lock.packages.iter().cloned());
    let debs = step("fetching packages", || {
        mirror::fetch_pins(&s.fetcher, &s.store, &mirror_url, &pins)
    })?;
    let mut debs = debs.into_iter();
    let (kernel_deb, stub_deb) = (debs.next().context("kernel")?, debs.next().context("stub")?);

    let (kernel, kernel_deb) = step("reading the kernel", || {
        read_kernel(&s, &lock.kernel, &kernel_deb)
    })?;
    let stub_deb = read_pinned(&s, &lock.stub, &stub_deb)?;
    let stub = stub_deb
        .data
        .get(STUB_PATH)
        .and_then(|n| n.data())
        .map(<[u8]>::to_vec)
        .with_context(|| {
            format!(
                "{} {} has no /{STUB_PATH}",
                lock.stub.name, lock.stub.version
            )
        })?;
    tracing::info!(
        "kernel {} ({}), {} modules",
        kernel.release,
        lock.kernel.version,
        kernel.modules.len()
    );

    let epoch = source_epoch(lock.archive.epoch)?;
    let distro = DistroInfo {
        vendor: m.distribution.vendor.clone(),
        codename: m.distribution.codename.clone(),
    };

    // Every pinned package's files (dead weight dropped): the runtime's and the server's
    // own packages in their layers, the rest (libraries) in the base layer.
    let requests: Vec<(&str, &crate::runtimes::Request)> = m
        .runtime
        .iter()
        .map(|r| ("runtime", r))
        .chain(m.server.iter().map(|r| ("server", r)))
        .collect();
    let mut parts: BTreeMap<&str, (crate::tree::Tree, Vec<PackageRef>)> = BTreeMap::new();
    let mut status = vec![(
        package_ref(&lock.kernel, &kernel_deb),
        kernel_deb.control.clone(),
    )];
    let mut dropped = 0;
    let mut dropped_runtime = 0;
    let mut pinned = Vec::new();
    for (pin, bytes) in lock.packages.iter().zip(debs) {
        pinned.push((pin, read_pinned(&s, pin, &bytes)?));
    }
    let unused: Vec<&str> = requests
        .iter()
        .flat_map(|(_, r)| crate::runtimes::unused_packages(r).iter().copied())
        .collect();
    if !unused.is_empty() {
        let graph: BTreeMap<String, (String, String)> = pinned
            .iter()
            .map(|(p, d)| {
                let f = |k: &str| d.control.get(k).cloned().unwrap_or_default();
                let deps = [f("Pre-Depends"), f("Depends")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
                (p.name.clone(), (deps, f("Provides")))
            })
            .collect();
        let mut roots = m.packages.clone();
        for (_, r) in &requests {
            roots.extend(crate::runtimes::roots(r));
        }
        let needed = crate::runtimes::needed_packages(&graph, &roots, &unused)?;
        let cut: Vec<String> = pinned
            .iter()
            .filter(|(p, _)| !needed.contains(&p.name))
            .map(|(p, _)| p.name.clone())
            .collect();
        if !cut.is_empty() {
            tracing::info!(
                "left out {} packages a headless {} never loads: {}",
                cut.len(),
                requests
                    .iter()
                    .map(|(_, r)| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                cut.join(" ")
            );
        }
        pinned.retain(|(p, _)| needed.contains(&p.name));
    }
    for (pin, deb) in pinned {
        let (mut files, d) = layers::package_files(&deb.data, &m.keep, epoch)?;
        dropped += d;
        let layer = requests
            .iter()
            .find(|(_, r)| crate::runtimes::owns(r, &pin.name))
            .map(|(l, _)| *l)
            .unwrap_or("base");
        for (_, r) in &requests {
            let dw = crate::runtimes::dead_weight(r);
            let drop: Vec<String> = files
                .iter()
                .filter(|(p, _)| crate::runtimes::is_dead_weight(&dw, p, &m.keep))
                .map(|(p, _)| p.to_string())
                .collect();
            for p in drop {
                if let Some(n) = files.remove(&p) {
                    dropped_runtime += n.size();
                }
            }
        }
        let part = parts.entry(layer).or_default();
        part.0
            .merge(&files)
            .with_context(|| format!("package {}", pin.name))?;
        let r = package_ref(pin, &deb);
        status.push((r.clone(), deb.control.clone()));
        part.1.push(r);
    }
    if dropped > 0 {
        tracing::info!(
            "dropped {:.1} MiB of docs, manuals and translations",
            dropped as f64 / 1048576.0
        );
    }
    if dropped_runtime > 0 {
        tracing::info!(
            "dropped {:.1} MiB of runtime files a headless server does not use",
            dropped_runtime as f64 / 1048576.0
        );
    }
    let (mut lib_tree, lib_refs) = parts.remove("base").unwrap_or_default();
    for effect in layers::native_effects(&mut lib_tree, epoch)? {
        tracing::info!("native effect: {effect}");
    }
    if m.runtime.as_ref().is_some_and(|r| r.name == "java") {
        let jks = crate::runtimes::java_cacerts(&lib_tree, epoch).context(
            "the Java runtime needs CA certificates, but the packages have none (ca-certificates)",
        )?;
        let mut n = crate::tree::Node::file(jks, 0o644);
        n.mtime = epoch;
        lib_tree.insert("etc/ssl/certs/java/cacerts", n)?;
        tracing::info!("native effect: ca-certificates-java: /etc/ssl/certs/java/cacerts");
    }
    let mut base = layers::base_layer(&m, &distro, &status, epoch)?;
    lib_tree.merge(&base.tree)?;
    base.tree = lib_tree;
    base.packages = lib_refs;
    let mut layers = vec![base];
    if let Some(server) = &m.server {
        let (tree, _) = parts.entry("server").or_default();
        tree.merge(&crate::runtimes::tomcat_base(
            &server.version,
            m.port,
            epoch,
        )?)?;
    }
    for name in ["runtime", "server"] {
        if let Some((tree, packages)) = parts.remove(name) {
            layers.push(layers::Layer {
                name: name.into(),
                tree,
                packages,
            });
        }
    }
    layers.push(layers::app_layer(&m, epoch)?);
    let app = layers::app_plan(&m)?;
    let plan = BootPlan {
        format: 1,
        hostname: m.name.clone(),
        modules: kernel.modules.iter().map(|(p, _, _)| p.clone()).collect(),
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        fs_type: "squashfs".into(),
        app: app.clone(),
    };
    let initramfs = layers::initramfs_tree(INIT, &kernel, &plan, epoch)?;
    let lock_text = lock.to_text()?;

    let disk = step("assembling the disk", || {
        image::assemble(DiskInputs {
            name: &m.name,
            version: &m.version,
            inputs: Inputs {
                manifest_sha256: m.sha256.clone(),
                lock_sha256: Some(sha256_hex(lock_text.as_bytes())),
                app_sha256: sha256_hex(&app_bytes),
                fuse_version: env!("CARGO_PKG_VERSION").into(),
                source_epoch: epoch,
                distribution: format!("{}/{}", m.distribution.vendor, m.distribution.codename),
                archive_date: lock.archive.date.clone(),
            },
            kernel_package: package_ref(&lock.kernel, &kernel_deb),
            kernel_release: &kernel.release,
            kernel_modules: kernel.modules.iter().map(|(_, _, n)| n.clone()).collect(),
            vmlinuz: &kernel.vmlinuz,
            cmdline: CMDLINE.into(),
            os_release: layers::os_release(&m, &distro),
            stub_package: package_ref(&lock.stub, &stub_deb),
            stub: &stub,
            initramfs: &initramfs,
            layers: &layers,
            app,
            app_kind: m.kind.name(),
            port: m.port,
            health_http: m.health_http.clone(),
            epoch,
            layer_cache: Some(&s.store),
        })
    })?;

    let stem = format!("{}-{}", m.name, m.version);
    let img_path = out.join(format!("{stem}.img"));
    let json_path = out.join(format!("{stem}.json"));
    let mut json = serde_json::to_vec_pretty(&disk.meta)?;
    json.push(b'\n');
    step("writing the image", || {
        store::write_atomic(&img_path, &disk.bytes)?;
        store::set_mode(&img_path, 0o644)?;
        store::write_atomic(&json_path, &json)?;
        store::set_mode(&json_path, 0o644)
    })?;
    if lock_changed {
        lock.save(&lock_path(&m))?;
        tracing::info!("wrote {}", lock_path(&m).display());
    }
    tracing::info!(
        "built {} ({:.1} MiB) in {:.1}s",
        img_path.display(),
        disk.bytes.len() as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    Ok(Built {
        image: img_path,
        json: json_path,
        digest: disk.digest,
        parts: disk.parts,
    })
}
