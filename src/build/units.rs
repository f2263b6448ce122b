//! Build the units of a plan: each is taken from the cache by its key, or, on a miss, built
//! from its inputs alone (the pinned packages it names are fetched and read only then) and
//! cached. A layer's bytes are a function of its [`LayerInputs`]: a builder reads nothing
//! that is not in them (the app's files come from the one scan, checked by digest).
//!
//! Registering a layer: `plan::plan` pushes a `LayerPlan` whose inputs say what goes in
//! (packages, effects, system files, server files, app files); [`layer_tree`] turns each
//! part of the inputs into files. A new kind of content is a new optional field of
//! `LayerInputs` plus one step in [`layer_tree`].

use crate::app::AppScan;
use crate::archive::deb::{read_deb, Deb};
use crate::cache::{Cache, Record, Source};
use crate::disk::{self, BuiltLayer, LayerMeta};
use crate::fetch::Fetcher;
use crate::kernel::{self, Kernel};
use crate::layers::{self, DistroInfo, Layer, PackageRef};
use crate::plan::{
    Effect, Filter, FsCompression, FsKind, JreInputs, LayerInputs, LayerPlan, Plan, UnitKind,
};
use crate::resolve::lock::Pin;
use crate::store::Store;
use crate::tree::{Node, Tree};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What the kernel unit caches beside its bytes (vmlinuz, then every module, in order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelRecord {
    /// e.g. "6.1.0-50-amd64"
    pub release: String,
    /// The kernel package as image.json records it.
    pub package: PackageRef,
    /// Its control fields (for the image's dpkg status).
    pub control: BTreeMap<String, String>,
    pub vmlinuz: u64,
    /// (path in the initramfs, module name, size), in load order.
    pub modules: Vec<(String, String, u64)>,
}

impl KernelRecord {
    /// The kernel image of this record's cached bytes, without copying them (the UKI
    /// needs nothing else of the unit).
    pub fn vmlinuz<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8]> {
        usize::try_from(self.vmlinuz)
            .ok()
            .and_then(|n| bytes.get(..n))
            .context("kernel bytes shorter than their record")
    }

    /// The kernel of this record from its cached bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Kernel> {
        let mut at = 0usize;
        let mut take = |n: u64| -> Result<Arc<Vec<u8>>> {
            let end = at
                .checked_add(n as usize)
                .context("kernel record size overflow")?;
            let d = bytes
                .get(at..end)
                .context("kernel bytes shorter than their record")?;
            at = end;
            Ok(Arc::new(d.to_vec()))
        };
        let vmlinuz = take(self.vmlinuz)?;
        let mut modules = Vec::new();
        for (path, name, len) in &self.modules {
            modules.push((path.clone(), take(*len)?, name.clone()));
        }
        Ok(Kernel {
            release: self.release.clone(),
            vmlinuz,
            modules,
        })
    }
}

/// What the UKI unit caches beside its bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UkiRecord {
    pub stub: PackageRef,
}

/// The units of an image, built or from the cache.
pub struct Units {
    /// In disk order, with where each came from.
    pub layers: Vec<(BuiltLayer, Source)>,
    pub kernel: KernelRecord,
    /// sha256 of the kernel unit's bytes (vmlinuz and the modules).
    pub kernel_sha256: String,
    pub kernel_source: Source,
    pub initramfs_sha256: String,
    pub initramfs_size: u64,
    pub initramfs_source: Source,
    pub uki: Vec<u8>,
    pub uki_stub: PackageRef,
    pub uki_source: Source,
}

/// Pinned packages, fetched when first needed and read at most once per build.
pub struct Debs<'a> {
    pub store: &'a Store,
    pub fetcher: &'a Fetcher,
    /// The mirror's URL, asked for only when something must be downloaded.
    pub mirror: &'a (dyn Fn() -> Result<String> + Sync),
    read: Mutex<BTreeMap<String, Arc<Deb>>>,
    /// How many .deb files were read (decompressed) in this build.
    pub reads: std::sync::atomic::AtomicUsize,
}

impl<'a> Debs<'a> {
    pub fn new(
        store: &'a Store,
        fetcher: &'a Fetcher,
        mirror: &'a (dyn Fn() -> Result<String> + Sync),
    ) -> Debs<'a> {
        Debs {
            store,
            fetcher,
            mirror,
            read: Mutex::new(BTreeMap::new()),
            reads: Default::default(),
        }
    }

    /// Download the pins not yet in the cache (several at a time, each verified).
    pub fn fetch(&self, pins: &[Pin]) -> Result<()> {
        let missing: Vec<Pin> = pins
            .iter()
            .filter(|p| !self.store.blob_path(&p.sha256).exists())
            .cloned()
            .collect();
        if !missing.is_empty() {
            crate::mirror::fetch_pins(self.fetcher, self.store, self.mirror, &missing)?;
        }
        Ok(())
    }

    /// A pinned package read into memory (fetched first if needed). A package that cannot be
    /// read (hostile paths, corrupt archive) is removed from the cache so that nothing
    /// refused stays there.
    pub fn read(&self, pin: &Pin) -> Result<Arc<Deb>> {
        if let Some(d) = self
            .read
            .lock()
            .ok()
            .and_then(|m| m.get(&pin.sha256).cloned())
        {
            return Ok(d);
        }
        self.fetch(std::slice::from_ref(pin))?;
        let bytes = self
            .store
            .get(&pin.sha256)
            .with_context(|| format!("package {} {}", pin.name, pin.version))?
            .with_context(|| {
                format!(
                    "package {} {} vanished from the cache",
                    pin.name, pin.version
                )
            })?;
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let deb = read_deb(&bytes).map_err(|e| {
            let _ = std::fs::remove_file(self.store.blob_path(&pin.sha256));
            e.context(format!(
                "refusing package {} {} (removed from the cache)",
                pin.name, pin.version
            ))
        })?;
        let deb = Arc::new(deb);
        if let Ok(mut m) = self.read.lock() {
            m.insert(pin.sha256.clone(), deb.clone());
        }
        Ok(deb)
    }
}

/// A package as image.json records it (source package and licence from the .deb).
pub fn package_ref(p: &Pin, deb: &Deb) -> PackageRef {
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

/// Is `path` (no leading '/') left out by the filter? `keep` exempts a path and everything
/// under it; common dead weight spares licence files (`usr/share/doc/<pkg>/copyright`);
/// a runtime entry drops the path itself and everything under it.
pub fn is_dead_weight(f: &Filter, path: &str) -> bool {
    if f.keep
        .iter()
        .any(|k| path == k || path.starts_with(&format!("{k}/")))
    {
        return false;
    }
    let licence = path.starts_with("usr/share/doc/") && path.ends_with("/copyright");
    (!licence && f.common.iter().any(|d| path.starts_with(d.as_str())))
        || f.runtime
            .iter()
            .any(|p| path == p.trim_end_matches('/') || path.starts_with(p.as_str()))
}

/// A package's files as they go into a layer: dead weight dropped, times clamped to the
/// epoch. Returns the files and the bytes dropped.
/// With `usr_aliases` (a merged-/usr distribution), what a package ships under an alias
/// directory (`lib/...`) is laid out under /usr (`usr/lib/...`), where the alias's link
/// leads (`plan::usr_aliases`).
pub fn package_files(
    data: &Tree,
    f: &Filter,
    epoch: u64,
    usr_aliases: &[String],
) -> Result<(Tree, u64)> {
    let mut out = Tree::new();
    let mut dropped = 0;
    for (path, node) in data.iter() {
        if is_dead_weight(f, path) {
            dropped += node.size();
            continue;
        }
        let mut n = node.clone();
        n.mtime = n.mtime.min(epoch);
        out.insert(&under_usr(path, usr_aliases), n)?;
    }
    Ok((out, dropped))
}

/// Where a package's `path` goes in a merged-/usr image: under /usr when its first
/// component is one of `usr_aliases`.
fn under_usr<'a>(path: &'a str, usr_aliases: &[String]) -> std::borrow::Cow<'a, str> {
    let top = path.split('/').next().unwrap_or(path);
    if usr_aliases.iter().any(|a| a == top) {
        format!("usr/{path}").into()
    } else {
        path.into()
    }
}

/// The merged-/usr links (`lib64` -> `usr/lib64`, ...) in `tree`, each with its target
/// directory.
fn add_usr_links(tree: &mut Tree, usr_aliases: &[String], epoch: u64) -> Result<()> {
    for alias in usr_aliases {
        let target = format!("usr/{alias}");
        if tree.get(&target).is_none() {
            let mut d = Node::dir(0o755);
            d.mtime = epoch;
            tree.insert(&target, d)?;
        }
        let mut link = Node::symlink(target);
        link.mtime = epoch;
        tree.insert(alias, link)
            .with_context(|| format!("the merged-/usr link /{alias}"))?;
    }
    Ok(())
}

/// The file tree of a layer, from its inputs.
/// `tools` is the unit store's directory, where build tools (the interpreter that compiles
/// Python bytecode) are laid out.
pub fn layer_tree(
    i: &LayerInputs,
    debs: &Debs,
    kernel: &KernelRecord,
    app: &AppScan,
    tools: &std::path::Path,
) -> Result<Layer> {
    let epoch = i.epoch;
    let mut tree = Tree::new();
    let mut refs = Vec::new();
    let mut dropped = 0;
    for pin in &i.packages {
        let deb = debs.read(pin)?;
        let (files, d) = package_files(&deb.data, &i.filter, epoch, &i.usr_aliases)?;
        dropped += d;
        tree.merge(&files)
            .with_context(|| format!("package {}", pin.name))?;
        refs.push(package_ref(pin, &deb));
    }
    if dropped > 0 {
        tracing::info!(
            "layer {}: dropped {:.1} MiB of docs, manuals, translations and unused runtime files",
            i.name,
            dropped as f64 / 1048576.0
        );
    }
    for effect in &i.effects {
        match effect {
            Effect::CaBundle => {
                for e in layers::native_effects(&mut tree, epoch)? {
                    tracing::info!("native effect: {e}");
                }
            }
            Effect::JavaCacerts => {
                let jks = crate::runtimes::java_cacerts(&tree, epoch).context(
                    "the Java runtime needs CA certificates, but the packages have none (ca-certificates)",
                )?;
                let mut n = Node::file(jks, 0o644);
                n.mtime = epoch;
                tree.insert("etc/ssl/certs/java/cacerts", n)?;
                tracing::info!("native effect: ca-certificates-java: /etc/ssl/certs/java/cacerts");
            }
        }
    }
    if let Some(sys) = &i.system {
        let mut status = Vec::new();
        for pin in &sys.status {
            if pin.sha256 == kernel.package.sha256 {
                status.push((kernel.package.clone(), kernel.control.clone()));
            } else {
                let deb = debs.read(pin)?;
                status.push((package_ref(pin, &deb), deb.control.clone()));
            }
        }
        let distro = DistroInfo {
            vendor: sys.vendor.clone(),
            codename: sys.codename.clone(),
        };
        let base = layers::base_layer(&sys.name, &sys.version, &distro, &status, epoch)?;
        tree.merge(&base.tree)?;
        // merged /usr: the links the packages expect (trixie's base-files ships them)
        add_usr_links(&mut tree, &i.usr_aliases, epoch)?;
    }
    if let Some(server) = &i.server {
        let jsp_compiler = i
            .packages
            .iter()
            .any(|p| p.name == crate::runtimes::JSP_COMPILER_PACKAGE);
        tree.merge(&crate::runtimes::tomcat_base(
            &server.tomcat,
            server.port,
            jsp_compiler,
            server.mbeans,
            epoch,
        )?)?;
    }
    let mut java_modules = Vec::new();
    if let Some(jre) = &i.jre {
        java_modules = trim_jre(&mut tree, jre, debs)?;
    }
    if let Some(a) = &i.app {
        if app.part(&i.name).map(|p| &p.listing_sha256) != Some(&a.listing_sha256) {
            bail!("internal error: the app changed between planning and building");
        }
        tree.merge(&app.tree(&i.name, epoch)?)?;
    }
    if let Some(bc) = &i.bytecode {
        if bc.loader.is_empty() {
            bail!(
                "internal error: layer {}'s bytecode names no base packages to run Python on",
                i.name
            );
        }
        let pins: Vec<Pin> = bc.loader.iter().chain(&bc.interpreter).cloned().collect();
        let files = || -> Result<Tree> {
            let mut files = Tree::new();
            for pin in &pins {
                let deb = debs.read(pin)?;
                for (path, node) in deb.data.iter() {
                    files
                        .insert(&under_usr(path, &i.usr_aliases), node.clone())
                        .with_context(|| format!("package {}", pin.name))?;
                }
            }
            add_usr_links(&mut files, &i.usr_aliases, epoch)?;
            Ok(files)
        };
        let interp = crate::pyc::Interpreter::prepare(tools, &pins, &bc.python, bc.arch, &files)?;
        crate::pyc::compile(&mut tree, &interp, tools, epoch)?;
    }
    Ok(Layer {
        name: i.name.clone(),
        tree,
        packages: refs,
        java_modules,
    })
}

/// Trim the JRE in a runtime layer's tree to what the app (and, for a war, the server's
/// jars) refers to. An unreadable server jar or a JRE fuse cannot read keeps the full JRE
/// with a warning; an unknown `[runtime] modules` entry is an error. Returns the modules
/// the layer holds.
fn trim_jre(tree: &mut Tree, jre: &JreInputs, debs: &Debs) -> Result<Vec<String>> {
    use crate::java::{self, Modules};
    let full = |tree: &mut Tree| -> Vec<String> {
        java::trim(tree, &Default::default(), &Modules::All)
            .map(|r| r.modules.into_iter().collect())
            .unwrap_or_default()
    };
    let modules = match jre.modules.as_str() {
        "all" => Modules::All,
        "" => Modules::Extra(Vec::new()),
        list => Modules::Extra(list.split(',').map(str::to_string).collect()),
    };
    let mut refs = jre.packages.clone();
    for pin in &jre.server_packages {
        let deb = debs.read(pin)?;
        let jars = deb
            .data
            .iter()
            .filter(|(p, _)| p.ends_with(".jar"))
            .filter_map(|(p, n)| n.data().map(|d| (p, d)));
        match java::referenced_packages(jars) {
            Ok(r) => refs.extend(r),
            Err(e) => {
                tracing::warn!("keeping the full JRE: {} {}: {e:#}", pin.name, pin.version);
                return Ok(full(tree));
            }
        }
    }
    let before = tree.clone();
    match java::trim(tree, &refs, &modules) {
        Ok(r) => {
            if r.removed.is_empty() {
                tracing::info!("JRE: all {} modules kept", r.modules.len());
            } else {
                tracing::info!(
                    "JRE trimmed to {} of {} modules ({:.1} -> {:.1} MiB lib/modules, {} other files left out): {}",
                    r.modules.len(),
                    r.modules.len() + r.removed.len(),
                    r.jimage_before as f64 / 1048576.0,
                    r.jimage_after as f64 / 1048576.0,
                    r.files_removed,
                    r.modules.iter().cloned().collect::<Vec<_>>().join(" ")
                );
            }
            Ok(r.modules.into_iter().collect())
        }
        Err(e) if e.downcast_ref::<java::trim::UnknownModule>().is_some() => {
            Err(e.context("`runtime.modules`"))
        }
        Err(e) => {
            *tree = before;
            tracing::warn!("keeping the full JRE: {e:#}");
            Ok(full(tree))
        }
    }
}

/// Read the kernel unit from its package.
fn build_kernel(pin: &Pin, debs: &Debs) -> Result<(KernelRecord, Vec<u8>)> {
    let deb = debs.read(pin)?;
    let k = kernel::from_package(&deb.data, &pin.name)?;
    let rec = KernelRecord {
        release: k.release.clone(),
        package: package_ref(pin, &deb),
        control: deb.control.clone(),
        vmlinuz: k.vmlinuz.len() as u64,
        modules: k
            .modules
            .iter()
            .map(|(p, d, n)| (p.clone(), n.clone(), d.len() as u64))
            .collect(),
    };
    let mut bytes =
        Vec::with_capacity(k.vmlinuz.len() + k.modules.iter().map(|m| m.1.len()).sum::<usize>());
    bytes.extend_from_slice(&k.vmlinuz);
    for (_, d, _) in &k.modules {
        bytes.extend_from_slice(d);
    }
    Ok((rec, bytes))
}

/// A cached layer, checked against its plan: its record's metadata must describe the bytes.
fn cached_layer(cache: &Cache, l: &LayerPlan) -> Result<Option<(BuiltLayer, Source)>> {
    let Some((rec, bytes, source)) = cache.get::<LayerMeta>(UnitKind::Layer, &l.key)? else {
        return Ok(None);
    };
    let meta = rec.meta;
    // The cache checked the bytes against the record's sha256. A record from a registry
    // is checked further: the bytes are the partition, the file system (`size` bytes,
    // `digest`) then its dm-verity tree, which must match the data and the recorded
    // parameters. (A local record is fuse's own, written with the bytes.)
    if source == Source::LocalCache && meta.name == l.name && meta.verity.is_some() {
        return Ok(Some((BuiltLayer { meta, bytes }, source)));
    }
    let fs_ok = usize::try_from(meta.size)
        .ok()
        .and_then(|n| bytes.get(..n))
        .is_some_and(|fs| format!("sha256:{}", crate::digest::sha256_hex(fs)) == meta.digest);
    let verity_ok = meta.verity.as_ref().is_some_and(|v| {
        v.partition_size() == bytes.len() as u64 && crate::format::verity::verify(&bytes, v).is_ok()
    });
    if meta.name != l.name || !fs_ok || !verity_ok {
        tracing::warn!(
            "cached layer {} ({}) describes other bytes; building it again",
            l.name,
            l.key
        );
        return Ok(None);
    }
    Ok(Some((BuiltLayer { meta, bytes }, source)))
}

fn squashfs_options(i: &LayerInputs) -> crate::format::squashfs::Options {
    use crate::format::squashfs::{Compression, Options};
    let FsKind::Squashfs = i.fs.kind;
    Options {
        compression: match i.fs.compression {
            FsCompression::Xz => Compression::Xz,
            FsCompression::Gzip => Compression::Gzip,
            FsCompression::Zstd => Compression::Zstd,
        },
        block_size: i.fs.block_size,
        mkfs_time: i.fs.mkfs_time,
        // One thread per layer: the build's parallelism is the pool's (FUSE_JOBS).
        threads: 1,
    }
}

/// Every unit of `plan`: from the cache when it holds the key, else built and cached.
/// The jobs left after the cache run on `workers` threads ([`workers`]).
pub fn build_units(
    plan: &Plan,
    cache: &Cache,
    debs: &Debs,
    app: &AppScan,
    workers: usize,
) -> Result<Units> {
    // Kernel first: the base layer's dpkg status and the initramfs need its record.
    let kp = &plan.kernel;
    let (kernel, kernel_bytes, kernel_sha256, kernel_source) =
        match cache.get::<KernelRecord>(UnitKind::Kernel, &kp.key)? {
            Some((rec, bytes, source)) => (rec.meta, bytes, rec.sha256, source),
            None => {
                let t = std::time::Instant::now();
                let (rec, bytes) = build_kernel(&kp.inputs.package, debs)?;
                let r = cache.put(UnitKind::Kernel, &kp.key, &rec, &bytes)?;
                crate::util::fault::pause("units");
                tracing::info!(
                    "kernel {} read from {} in {:.2}s",
                    rec.release,
                    kp.inputs.package.name,
                    t.elapsed().as_secs_f64()
                );
                (rec, bytes, r.sha256, Source::Built)
            }
        };
    report("kernel", &kp.key, kernel_source);

    let mut hits = Vec::new();
    for l in &plan.layers {
        hits.push(cached_layer(cache, l)?);
    }
    // Download what the missing layers need in one go.
    let mut wanted: Vec<Pin> = Vec::new();
    for (l, hit) in plan.layers.iter().zip(&hits) {
        if hit.is_none() {
            wanted.extend(l.inputs.packages.iter().cloned());
            if let Some(jre) = &l.inputs.jre {
                wanted.extend(jre.server_packages.iter().cloned());
            }
            if let Some(sys) = &l.inputs.system {
                wanted.extend(
                    sys.status
                        .iter()
                        .filter(|p| p.sha256 != kernel.package.sha256)
                        .cloned(),
                );
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    debs.fetch(&wanted)?;

    // The work left, side by side on the bounded pool: every missing layer, the
    // initramfs' core (it needs the kernel only), and the packages read (decompressed)
    // ahead of the layers that need them. Each job's result is a function of its inputs,
    // so the bytes do not depend on the order in which jobs run.
    let (ip, up) = (&plan.initramfs, &plan.uki);
    let core_key = crate::plan::initramfs_core_key(&ip.inputs)?;
    // The UKI holds the initramfs: when the UKI is cached, the initramfs' record is enough.
    let uki_hit = cache.get::<UkiRecord>(UnitKind::Uki, &up.key)?;
    let initramfs_record = match uki_hit {
        Some(_) => cache.lookup_record::<()>(UnitKind::Initramfs, &ip.key)?,
        None => None,
    };
    let initramfs_hit = match initramfs_record {
        Some(_) => None,
        None => cache.get::<()>(UnitKind::Initramfs, &ip.key)?,
    };
    let core_needed = initramfs_record.is_none()
        && initramfs_hit.is_none()
        && !cache.has_local(UnitKind::InitramfsCore, &core_key)?;
    // Packages first (largest first: the longest decompressions start early), then the
    // layers (the one with the most package bytes first), the core after the first.
    let mut jobs: Vec<Job> = Vec::new();
    let mut missing: Vec<usize> = (0..hits.len()).filter(|&i| hits[i].is_none()).collect();
    let bytes_of =
        |i: usize| -> u64 { plan.layers[i].inputs.packages.iter().map(|p| p.size).sum() };
    missing.sort_by_key(|&i| std::cmp::Reverse(bytes_of(i)));
    let layer_jobs = missing.len();
    if layer_jobs > 0 {
        let mut reads: Vec<&Pin> = wanted.iter().collect();
        reads.sort_by_key(|p| std::cmp::Reverse(p.size));
        jobs.extend(reads.into_iter().map(|p| Job::Read(p.clone())));
    }
    let mut layer_iter = missing.into_iter().map(Job::Layer);
    jobs.extend(layer_iter.next());
    if core_needed {
        jobs.push(Job::Core);
    }
    jobs.extend(layer_iter);
    let t = std::time::Instant::now();
    let done = crate::pool::map(&jobs, workers, |job| -> Result<Done> {
        match job {
            Job::Core => {
                let k = kernel.decode(&kernel_bytes)?;
                let tree = layers::initramfs_core(
                    crate::plan::init_for(ip.inputs.arch)?,
                    &k,
                    ip.inputs.epoch,
                )?;
                let bytes = disk::write_initramfs(&tree)?;
                cache.put(UnitKind::InitramfsCore, &core_key, &(), &bytes)?;
                Ok(Done::Core(bytes))
            }
            Job::Layer(i) => {
                let l = &plan.layers[*i];
                let tree = layer_tree(&l.inputs, debs, &kernel, app, cache.store().root())
                    .with_context(|| format!("layer {}", l.name))?;
                let built = disk::write_layer(&tree, &squashfs_options(&l.inputs))?;
                let rec: Record<LayerMeta> =
                    cache.put(UnitKind::Layer, &l.key, &built.meta, &built.bytes)?;
                debug_assert_eq!(rec.size, built.bytes.len() as u64);
                Ok(Done::Layer(*i, Box::new(built)))
            }
            Job::Read(p) => {
                debs.read(p)?;
                Ok(Done::Read)
            }
        }
    });
    let mut core = None;
    let mut built_layers: BTreeMap<usize, BuiltLayer> = BTreeMap::new();
    for r in done {
        match r.map_err(|p| anyhow::anyhow!("a build job panicked: {p}"))?? {
            Done::Core(b) => core = Some(b),
            Done::Layer(i, b) => {
                built_layers.insert(i, *b);
            }
            Done::Read => {}
        }
    }
    if !jobs.is_empty() {
        tracing::info!(
            "{} jobs ({layer_jobs} layers{}) done in {:.2}s on {} workers",
            jobs.len(),
            if core_needed { ", initramfs core" } else { "" },
            t.elapsed().as_secs_f64(),
            workers
        );
    }

    let mut layers = Vec::new();
    for (i, (l, hit)) in plan.layers.iter().zip(hits).enumerate() {
        let (built, source) = match hit {
            Some(b) => b,
            None => (
                built_layers
                    .remove(&i)
                    .context("internal error: a layer was not built")?,
                Source::Built,
            ),
        };
        report(&format!("layer {}", l.name), &l.key, source);
        layers.push((built, source));
    }

    let (initramfs_sha256, initramfs_size, initramfs_source, initramfs_bytes) =
        match (initramfs_record, initramfs_hit) {
            (Some((rec, source)), _) => (rec.sha256, rec.size, source, None),
            (None, Some((rec, bytes, source))) => (rec.sha256, rec.size, source, Some(bytes)),
            (None, None) => {
                let k = kernel.decode(&kernel_bytes)?;
                let mut boot = ip.inputs.boot.clone();
                let (always, device) = crate::kernel::boot_modules(&k)?;
                boot.modules = always;
                boot.device_modules = device;
                boot.verity = disk::boot_verity(layers.iter().map(|(l, _)| &l.meta))?;
                let core = match core.take() {
                    Some(b) => b,
                    None => match cache.get::<()>(UnitKind::InitramfsCore, &core_key)? {
                        Some((_, bytes, _)) => bytes,
                        None => {
                            let tree = layers::initramfs_core(
                                crate::plan::init_for(ip.inputs.arch)?,
                                &k,
                                ip.inputs.epoch,
                            )?;
                            let bytes = disk::write_initramfs(&tree)?;
                            cache.put(UnitKind::InitramfsCore, &core_key, &(), &bytes)?;
                            bytes
                        }
                    },
                };
                let plan_tree = layers::initramfs_plan(&boot, ip.inputs.epoch)?;
                let bytes = disk::join_initramfs(&plan_tree, &core)?;
                let rec = cache.put(UnitKind::Initramfs, &ip.key, &(), &bytes)?;
                (rec.sha256, rec.size, Source::Built, Some(bytes))
            }
        };
    report("initramfs", &ip.key, initramfs_source);

    let (uki, uki_stub, uki_source) = match (uki_hit, initramfs_bytes) {
        (Some((rec, bytes, source)), _) => (bytes, rec.meta.stub, source),
        (None, None) => bail!("internal error: the initramfs is needed for the UKI"),
        (None, Some(initrd)) => {
            let vmlinuz = kernel.vmlinuz(&kernel_bytes)?;
            let stub_pin = &up.inputs.stub;
            // The stub is cached on its own (keyed by its package and path): every layer
            // change rebuilds the UKI (the root hashes are in it), and that must not need
            // the package again.
            let stub_key = crate::plan::stub_key(&up.inputs);
            let (stub, stub_ref) = match cache.get::<PackageRef>(UnitKind::Stub, &stub_key)? {
                Some((rec, bytes, _)) => (bytes, rec.meta),
                None => {
                    let stub_deb = debs.read(stub_pin)?;
                    let stub = stub_deb
                        .data
                        .get(&up.inputs.stub_path)
                        .and_then(|n| n.data())
                        .with_context(|| {
                            format!(
                                "{} {} has no /{}",
                                stub_pin.name, stub_pin.version, up.inputs.stub_path
                            )
                        })?
                        .to_vec();
                    let r = package_ref(stub_pin, &stub_deb);
                    cache.put(UnitKind::Stub, &stub_key, &r, &stub)?;
                    (stub, r)
                }
            };
            let bytes = disk::write_uki(
                &stub,
                &up.inputs.os_release,
                &up.inputs.cmdline,
                vmlinuz,
                &initrd,
            )?;
            let rec = UkiRecord { stub: stub_ref };
            cache.put(UnitKind::Uki, &up.key, &rec, &bytes)?;
            (bytes, rec.stub, Source::Built)
        }
    };
    report("uki", &up.key, uki_source);
    Ok(Units {
        layers,
        kernel,
        kernel_sha256,
        kernel_source,
        initramfs_sha256,
        initramfs_size,
        initramfs_source,
        uki,
        uki_stub,
        uki_source,
    })
}

/// Workers for a build's jobs: [`crate::pool::build_workers`] (`FUSE_JOBS`).
pub fn workers() -> Result<usize> {
    crate::pool::build_workers()
}

/// A piece of a build's remaining work ([`build_units`]).
enum Job {
    /// The initramfs' core: init and modules, compressed.
    Core,
    /// The layer at this index of the plan.
    Layer(usize),
    /// A package read ahead of the layer that needs it.
    Read(Pin),
}

enum Done {
    Core(Vec<u8>),
    Layer(usize, Box<BuiltLayer>),
    Read,
}

fn report(unit: &str, key: &str, source: Source) {
    tracing::info!("{unit}: {source} ({})", &key[..12.min(key.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_lays_package_files_under_usr_and_links_the_aliases() {
        let mut deb = Tree::new();
        deb.insert(
            "lib64/ld-linux-x86-64.so.2",
            Node::symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        deb.insert(
            "lib/x86_64-linux-gnu/libc.so.6",
            Node::file(b"libc".to_vec(), 0o644),
        )
        .unwrap();
        deb.insert(
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            Node::file(b"ld".to_vec(), 0o755),
        )
        .unwrap();
        deb.insert("usr/bin/env", Node::file(b"env".to_vec(), 0o755))
            .unwrap();
        deb.insert("etc/x.conf", Node::file(b"x".to_vec(), 0o644))
            .unwrap();
        let f = Filter {
            common: Vec::new(),
            runtime: Vec::new(),
            keep: Vec::new(),
        };
        // bookworm: as packaged
        let (same, _) = package_files(&deb, &f, 0, &[]).unwrap();
        let paths = |t: &Tree| t.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>();
        assert_eq!(paths(&same), paths(&deb));
        // trixie: under /usr, and the links resolve the ELF interpreter's path
        let aliases = crate::plan::usr_aliases("trixie", crate::arch::Arch::Amd64);
        let (mut merged, _) = package_files(&deb, &f, 0, &aliases).unwrap();
        assert!(merged.get("usr/lib/x86_64-linux-gnu/libc.so.6").is_some());
        assert!(merged.get("usr/lib64/ld-linux-x86-64.so.2").is_some());
        assert!(merged.get("lib").is_none() && merged.get("lib64").is_none());
        assert!(merged.get("etc/x.conf").is_some() && merged.get("usr/bin/env").is_some());
        add_usr_links(&mut merged, &aliases, 0).unwrap();
        for a in ["bin", "lib", "lib64", "sbin"] {
            assert_eq!(
                merged.get(a).map(|n| n.kind.clone()),
                Some(crate::tree::Kind::Symlink(format!("usr/{a}"))),
                "{a}"
            );
            assert!(
                merged
                    .get(&format!("usr/{a}"))
                    .is_some_and(|n| n.kind == crate::tree::Kind::Dir),
                "{a}"
            );
        }
        let (real, _) =
            crate::resolve::elf::follow(&merged, "/lib64/ld-linux-x86-64.so.2").unwrap();
        assert_eq!(real, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        // arm64 has no /lib64 link (its interpreter is in /lib)
        assert_eq!(
            crate::plan::usr_aliases("trixie", crate::arch::Arch::Arm64),
            ["bin", "lib", "sbin"]
        );
        assert!(crate::plan::usr_aliases("bookworm", crate::arch::Arch::Amd64).is_empty());
    }

    #[test]
    fn one_filter_for_common_and_runtime_dead_weight() {
        let f = Filter {
            common: vec!["usr/share/doc/".into(), "usr/share/man/".into()],
            runtime: vec![
                "usr/lib/jvm/j/man/".into(),
                "usr/lib/jvm/j/lib/x.jsa".into(),
            ],
            keep: vec!["usr/share/man/man1".into()],
        };
        assert!(is_dead_weight(&f, "usr/share/doc/libc6/changelog.gz"));
        assert!(!is_dead_weight(&f, "usr/share/doc/libc6/copyright"));
        assert!(!is_dead_weight(&f, "usr/share/doc"));
        assert!(is_dead_weight(&f, "usr/lib/jvm/j/man"));
        assert!(is_dead_weight(&f, "usr/lib/jvm/j/man/man1/java.1.gz"));
        assert!(is_dead_weight(&f, "usr/lib/jvm/j/lib/x.jsa"));
        assert!(!is_dead_weight(&f, "usr/lib/jvm/j/lib/classes.jsa"));
        assert!(!is_dead_weight(&f, "usr/share/man/man1/ls.1.gz"));
        assert!(is_dead_weight(&f, "usr/share/man/man8/x.8.gz"));
    }

    #[test]
    fn kernel_records_decode_what_they_describe() {
        let rec = KernelRecord {
            release: "6.1".into(),
            package: PackageRef {
                name: "linux-image-6.1".into(),
                version: "1".into(),
                arch: "amd64".into(),
                sha256: "a".repeat(64),
                source: None,
                license: None,
            },
            control: BTreeMap::new(),
            vmlinuz: 3,
            modules: vec![("/lib/modules/x.ko".into(), "x".into(), 2)],
        };
        let k = rec.decode(b"vmlko").unwrap();
        assert_eq!(k.vmlinuz.as_slice(), b"vml");
        assert_eq!(k.modules[0].1.as_slice(), b"ko");
        assert!(rec.decode(b"vmlk").is_err());
    }
}
