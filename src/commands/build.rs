//! `fuse build`: manifest -> app scan -> lock -> plan -> units (cache or build) -> disk,
//! written atomically to the output directory; the digest is the last line of stdout.

use crate::builder::{self, Debs};
use crate::cache::{Cache, Source};
use crate::cli::BuildArgs;
use crate::image::{self, DiskInputs, Inputs, KernelMeta};
use crate::manifest::{self, Manifest};
use crate::mirror::{self, Session, Trust};
use crate::plan::{self, Plan, CMDLINE};
use crate::store;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::resolve::pin::{lock_path, Options};

/// One unit of a build, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    /// "base", "runtime", "server", "app" for layers; "kernel", "initramfs", "uki".
    pub name: String,
    pub key: String,
    /// Bytes (a layer's partition, vmlinuz, the gzipped initramfs, the UKI).
    pub size: u64,
    /// `sha256:` of those bytes.
    pub digest: String,
    pub source: Source,
}

/// What a build produced.
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
    /// Bytes per part of the disk: (part, size).
    pub parts: Vec<(String, u64)>,
    /// The layers in disk order.
    pub layers: Vec<UnitReport>,
    /// Kernel, initramfs, UKI.
    pub boot: Vec<UnitReport>,
    /// sha256 of the fuse.lock text the image was built from.
    pub lock_sha256: String,
    /// Whether fuse.lock was written (fresh resolution, or the app digest updated).
    pub lock_changed: bool,
    /// .deb files read (decompressed) by this build: 0 when every unit was cached.
    pub debs_read: usize,
    /// Wall time of the build, in seconds.
    pub duration: f64,
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
    if args.plan {
        let (plan, _) = plan_of(&args.path, opts)?;
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    // The manifest is validated (budget included) before anything is fetched.
    let budget = manifest::load(&args.path)?.budget;
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
    let over = check_budget(&budget, &built)?;
    println!("{}", built.image.display());
    println!("{}", built.digest);
    Ok(if over { 3 } else { 0 })
}

/// The manifest's size budgets against the built image: each result logged, each exceeded
/// budget on stderr (naming the budget, the figure and the limit). True when any is over.
fn check_budget(budget: &crate::budget::Budget, built: &Built) -> Result<bool> {
    if budget.is_empty() {
        return Ok(false);
    }
    let image_size = std::fs::metadata(&built.image)
        .with_context(|| format!("cannot read {}", built.image.display()))?
        .len();
    let layers: Vec<(String, u64)> = built
        .layers
        .iter()
        .map(|l| (l.name.clone(), l.size))
        .collect();
    let (checks, missing) = crate::budget::check_sizes(budget, image_size, &layers);
    for name in missing {
        tracing::warn!("budget layers.{name}: the image has no layer {name:?}");
    }
    let mut over = false;
    for c in &checks {
        if c.exceeded {
            over = true;
            eprintln!("fuse build: over budget: {}", c.message());
        } else {
            tracing::info!("{}", c.message());
        }
    }
    if over {
        eprintln!(
            "fuse build: the image was written (inspect it with `fuse inspect {}`), but it is over budget (exit 3)",
            built.image.display()
        );
    }
    Ok(over)
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

/// The plan of the manifest at `path` (resolving, without writing, a lock when needed).
pub fn plan_of(path: &Path, opts: Options) -> Result<(Plan, bool)> {
    let m = manifest::load(path)?;
    let app = plan::scan_app(&m)?;
    let s = Session::open()?;
    let (lock, changed) = crate::resolve::pin::obtain_lock(&s, &m, &app, opts)?;
    let epoch = source_epoch(lock.archive.epoch)?;
    Ok((plan::plan(&m, &lock, &app, epoch)?, changed))
}

fn unit(name: &str, key: &str, size: u64, sha256: &str, source: Source) -> UnitReport {
    UnitReport {
        name: name.into(),
        key: key.into(),
        size,
        digest: format!("sha256:{sha256}"),
        source,
    }
}

/// Build the image of the manifest at `path` into `out` (default `<app dir>/fuse-out`).
pub fn build(path: &Path, out: Option<&Path>, opts: Options) -> Result<Built> {
    let started = Instant::now();
    // 1. What the user asked for, and the one reading of the app.
    let m: Manifest = manifest::load(path)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| {
        m.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
            .join("fuse-out")
    });
    let app = plan::scan_app(&m)?;
    // 2. The lock: fuse.lock, or a fresh resolution against the archive.
    let s = Session::open()?;
    let (lock, lock_changed) = crate::resolve::pin::obtain_lock(&s, &m, &app, opts)?;
    // 3. The plan: every unit and its key, without reading a package.
    let epoch = source_epoch(lock.archive.epoch)?;
    let plan = plan::plan(&m, &lock, &app, epoch)?;
    tracing::debug!("plan: {}", serde_json::to_string(&plan)?);
    // 4. Every unit from the cache, or built (packages fetched and read only then).
    let cache = Cache::new(&s.store);
    let mirror_url = || -> Result<String> {
        Ok(mirror::find_source(
            m.mirror.as_deref(),
            m.keyring.as_deref(),
            &m.distribution.codename,
        )?
        .url)
    };
    let debs = Debs::new(&s.store, &s.fetcher, &mirror_url);
    let units = builder::build_units(&plan, &cache, &debs, &app)?;
    // 5. The disk.
    let layers: Vec<image::BuiltLayer> = units.layers.iter().map(|(l, _)| l.clone()).collect();
    let app_plan = plan.initramfs.inputs.boot.app.clone();
    let t = Instant::now();
    let disk = image::assemble(DiskInputs {
        name: &m.name,
        version: &m.version,
        inputs: Inputs {
            manifest_sha256: m.sha256.clone(),
            lock_sha256: Some(plan.lock_sha256.clone()),
            app_sha256: app.sha256.clone(),
            fuse_version: env!("CARGO_PKG_VERSION").into(),
            source_epoch: epoch,
            distribution: format!("{}/{}", m.distribution.vendor, m.distribution.codename),
            archive_date: lock.archive.date.clone(),
        },
        kernel: KernelMeta {
            package: units.kernel.package.clone(),
            release: units.kernel.release.clone(),
            cmdline: CMDLINE.into(),
            modules: units.kernel.modules.iter().map(|m| m.1.clone()).collect(),
        },
        kernel_size: units.kernel.vmlinuz,
        stub_package: units.uki_stub.clone(),
        uki: &units.uki,
        initramfs_sha256: units.initramfs_sha256.clone(),
        initramfs_size: units.initramfs_size,
        layers: &layers,
        app: app_plan,
        app_kind: m.kind.name(),
        port: m.port,
        health_http: m.health_http.clone(),
        epoch,
    })?;
    tracing::info!("disk assembled in {:.2}s", t.elapsed().as_secs_f64());
    // 6. Written atomically; the lock only once the image is.
    let stem = format!("{}-{}", m.name, m.version);
    let img_path = out.join(format!("{stem}.img"));
    let json_path = out.join(format!("{stem}.json"));
    let mut json = serde_json::to_vec_pretty(&disk.meta)?;
    json.push(b'\n');
    let t = Instant::now();
    store::write_atomic(&img_path, &disk.bytes)?;
    store::set_mode(&img_path, 0o644)?;
    store::write_atomic(&json_path, &json)?;
    store::set_mode(&json_path, 0o644)?;
    tracing::info!("image written in {:.2}s", t.elapsed().as_secs_f64());
    if lock_changed {
        lock.save(&lock_path(&m))?;
        tracing::info!("wrote {}", lock_path(&m).display());
    }
    let duration = started.elapsed().as_secs_f64();
    tracing::info!(
        "built {} ({:.1} MiB) in {duration:.1}s",
        img_path.display(),
        disk.bytes.len() as f64 / 1048576.0,
    );
    let layer_reports = plan
        .layers
        .iter()
        .zip(&units.layers)
        .map(|(p, (l, src))| UnitReport {
            name: p.name.clone(),
            key: p.key.clone(),
            size: l.meta.size,
            digest: l.meta.digest.clone(),
            source: *src,
        })
        .collect();
    let boot = vec![
        unit(
            "kernel",
            &plan.kernel.key,
            units.kernel.vmlinuz,
            &units.kernel_sha256,
            units.kernel_source,
        ),
        unit(
            "initramfs",
            &plan.initramfs.key,
            units.initramfs_size,
            &units.initramfs_sha256,
            units.initramfs_source,
        ),
        unit(
            "uki",
            &plan.uki.key,
            units.uki.len() as u64,
            &disk.meta.boot.uki_sha256,
            units.uki_source,
        ),
    ];
    Ok(Built {
        image: img_path,
        json: json_path,
        digest: disk.digest,
        parts: disk.parts,
        layers: layer_reports,
        boot,
        lock_sha256: plan.lock_sha256,
        lock_changed,
        debs_read: debs.reads.load(std::sync::atomic::Ordering::SeqCst),
        duration,
    })
}
