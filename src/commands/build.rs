//! `fuse build`: manifest -> app scan -> lock -> plan -> units (cache or build) -> disk,
//! written atomically to the output directory; the digest is the last line of stdout.

use crate::builder::{self, Debs};
use crate::cache::registry::RegistryCache;
use crate::cache::{Cache, Source};
use crate::cli::BuildArgs;
use crate::image::{self, DiskInputs, Inputs, KernelMeta};
use crate::manifest::{self, Manifest};
use crate::mirror::{self, Session, Trust};
use crate::plan::{self, Plan, CMDLINE};
use crate::store;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::pin::{lock_path, Options};

/// One unit of a build, as reported.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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
    /// Units pushed to the registry cache.
    pub pushed: usize,
    /// Wall time of the build, in seconds.
    pub duration: f64,
}

/// Where built units are shared beyond this machine.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// REGISTRY/REPOSITORY of the registry cache.
    pub registry: Option<String>,
    pub insecure: bool,
    pub username: Option<String>,
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
    let m = manifest::load(&args.path)?;
    let cache = CacheOptions {
        registry: args.cache_registry.clone().filter(|r| !r.is_empty()),
        insecure: args.reg.insecure,
        username: args.reg.username.clone(),
    };
    // So is the signing key: one that does not match its certificate is an error up front.
    let signer = match (&args.sign_key, &args.sign_cert) {
        (Some(k), Some(c)) => Some(crate::sign::Signer::load(k, c)?),
        (None, None) => None,
        _ => bail!("--sign-key and --sign-cert (FUSE_SIGN_KEY, FUSE_SIGN_CERT) go together"),
    };
    let built = build_full(
        &args.path,
        args.out.as_deref(),
        opts,
        None,
        &cache,
        signer.as_ref(),
    )?;
    for (part, size) in &built.parts {
        tracing::info!(
            "  {part:<18} {:>10} bytes ({:.1} MiB)",
            size,
            *size as f64 / 1048576.0
        );
    }
    // Add the image to the local store (a failure there does not fail the build).
    let added = crate::images::Images::open_default()
        .and_then(|s| s.add_file(&built.image, &built.digest, &m.name, &m.version));
    match added {
        Ok(_) => tracing::info!("added to the local image store"),
        Err(e) => tracing::warn!("not added to the local image store: {e:#}"),
    }
    let budget = check_budget(&m.budget, &built)?;
    let verify = if args.verify {
        Some(super::verify::verify(&m, &built, opts, signer.as_ref())?)
    } else {
        None
    };
    let code = match (&verify, budget.exceeded) {
        (Some(v), _) if !v.reproducible => 4,
        (_, true) => 3,
        _ => 0,
    };
    if args.json {
        let j = BuildJson::new(&m, &built, budget, verify, code)?;
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if verify.as_ref().is_some_and(|v| v.reproducible) {
            println!("verified: reproducible");
        }
        println!("{}", built.image.display());
        println!("{}", built.digest);
    }
    Ok(code)
}

/// Version of the `fuse build --json` object (docs/ci.md).
pub const BUILD_JSON_SCHEMA: u32 = 1;

/// `fuse build --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BuildJson {
    pub schema: u32,
    pub name: String,
    pub version: String,
    /// `sha256:` of the raw disk.
    pub digest: String,
    pub image: PathBuf,
    pub image_json: PathBuf,
    /// Bytes of the raw disk.
    pub size: u64,
    /// In disk order.
    pub layers: Vec<LayerJson>,
    /// Kernel, initramfs, UKI.
    pub boot: Vec<UnitReport>,
    pub lock: LockJson,
    /// .deb files read (decompressed): 0 when every unit came from a cache.
    pub debs_read: usize,
    pub duration_ms: u64,
    pub budget: BudgetReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::verify::VerifyReport>,
    pub exit_code: u8,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerJson {
    pub name: String,
    pub partition: String,
    pub size: u64,
    pub digest: String,
    /// built | local-cache | registry-cache
    pub source: Source,
    /// The unit's key (sha256 of its inputs, `fuse build --plan`).
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LockJson {
    pub path: PathBuf,
    /// `sha256:` of the fuse.lock text (image.json's inputs.lock_sha256).
    pub digest: String,
    /// Whether this build wrote fuse.lock.
    pub changed: bool,
}

/// The size budgets' results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BudgetReport {
    pub exceeded: bool,
    pub checks: Vec<crate::budget::Check>,
    /// Layer budgets naming a layer the image does not have.
    pub unknown_layers: Vec<String>,
}

impl BuildJson {
    pub fn new(
        m: &Manifest,
        b: &Built,
        budget: BudgetReport,
        verify: Option<super::verify::VerifyReport>,
        exit_code: u8,
    ) -> Result<BuildJson> {
        let size = std::fs::metadata(&b.image)
            .with_context(|| format!("cannot read {}", b.image.display()))?
            .len();
        let sha = |s: &str| {
            if s.starts_with("sha256:") {
                s.to_string()
            } else {
                format!("sha256:{s}")
            }
        };
        Ok(BuildJson {
            schema: BUILD_JSON_SCHEMA,
            name: m.name.clone(),
            version: m.version.clone(),
            digest: b.digest.clone(),
            image: b.image.clone(),
            image_json: b.json.clone(),
            size,
            layers: b
                .layers
                .iter()
                .map(|l| LayerJson {
                    name: l.name.clone(),
                    partition: format!("fuse-{}", l.name),
                    size: l.size,
                    digest: sha(&l.digest),
                    source: l.source,
                    key: l.key.clone(),
                })
                .collect(),
            boot: b.boot.clone(),
            lock: LockJson {
                path: lock_path(m),
                digest: sha(&b.lock_sha256),
                changed: b.lock_changed,
            },
            debs_read: b.debs_read,
            duration_ms: (b.duration * 1000.0).round() as u64,
            budget,
            verify,
            exit_code,
        })
    }
}

/// The manifest's size budgets against the built image: each result logged, each exceeded
/// budget on stderr (naming the budget, the figure and the limit).
fn check_budget(budget: &crate::budget::Budget, built: &Built) -> Result<BudgetReport> {
    if budget.is_empty() {
        return Ok(BudgetReport::default());
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
    for name in &missing {
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
    Ok(BudgetReport {
        exceeded: over,
        checks,
        unknown_layers: missing,
    })
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
    let (lock, changed) = crate::pin::obtain_lock(&s, &m, &app, opts)?;
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
    build_with(path, out, opts, None, None)
}

/// [`build`], with the units (layers, kernel, initramfs, UKI) cached in `units` instead of
/// the download cache's store: `fuse build --verify` passes an empty temporary store, so
/// every unit is built again while the packages still come from the verified download cache.
pub fn build_with(
    path: &Path,
    out: Option<&Path>,
    opts: Options,
    units: Option<&store::Store>,
    // Signs the UKI for Secure Boot (after the cache: cached UKIs are unsigned).
    signer: Option<&crate::sign::Signer>,
) -> Result<Built> {
    build_full(path, out, opts, units, &CacheOptions::default(), signer)
}

/// [`build_with`], with a registry cache as well.
pub fn build_full(
    path: &Path,
    out: Option<&Path>,
    opts: Options,
    units: Option<&store::Store>,
    cache_opts: &CacheOptions,
    signer: Option<&crate::sign::Signer>,
) -> Result<Built> {
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
    let (lock, lock_changed) = crate::pin::obtain_lock(&s, &m, &app, opts)?;
    // 3. The plan: every unit and its key, without reading a package.
    let epoch = source_epoch(lock.archive.epoch)?;
    let plan = plan::plan(&m, &lock, &app, epoch)?;
    tracing::debug!("plan: {}", serde_json::to_string(&plan)?);
    let stem = format!("{}-{}", m.name, m.version);
    let img_path = out.join(format!("{stem}.img"));
    let json_path = out.join(format!("{stem}.json"));
    // 3b. The image, keyed by its plan: when the output holds what that key gave, done.
    // (Not with a unit store of its own (--verify builds everything), a registry cache
    // (which may lack units to push) or a new lock (to be written).)
    let image_key = image_key(&plan, &m, &app, signer)?;
    let default_store = units.is_none();
    let shortcut = default_store && cache_opts.registry.is_none() && !lock_changed;
    if shortcut {
        if let Some(b) = up_to_date(&s.store, &image_key, &img_path, &json_path)? {
            tracing::info!(
                "image: up to date ({}); {} unchanged",
                &image_key[..12],
                img_path.display()
            );
            return Ok(Built {
                duration: started.elapsed().as_secs_f64(),
                ..b
            });
        }
    }
    // 4. Every unit from the cache, or built (packages fetched and read only then).
    let units_store = units.unwrap_or(&s.store);
    let cache = match &cache_opts.registry {
        Some(r) => Cache::with_registry(
            units_store,
            RegistryCache::open(r, cache_opts.insecure, cache_opts.username.as_deref())?,
        ),
        None => Cache::new(units_store),
    };
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
    let uki = match signer {
        Some(s) => {
            let t = Instant::now();
            let signed = s.sign_pe(&units.uki).context("cannot sign the UKI")?;
            tracing::info!(
                "UKI signed by {} in {:.2}s",
                s.meta().subject,
                t.elapsed().as_secs_f64()
            );
            signed
        }
        None => units.uki.clone(),
    };
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
        uki: &uki,
        initramfs_sha256: units.initramfs_sha256.clone(),
        initramfs_size: units.initramfs_size,
        layers: &layers,
        app: app_plan,
        app_kind: m.kind.name(),
        port: m.port,
        health_http: m.health_http.clone(),
        epoch,
        signer: signer.map(|s| s.meta()),
    })?;
    tracing::info!("disk assembled in {:.2}s", t.elapsed().as_secs_f64());
    // 6. Written atomically; the lock only once the image is.
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
    // 7. What the registry cache lacked, pushed (a failure there does not fail the build).
    let (pushed, sent) = cache.push_missing();
    if let Some(r) = &cache_opts.registry {
        tracing::info!("registry cache {r}: pushed {pushed} units ({sent} bytes sent)");
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
            uki.len() as u64,
            &disk.meta.boot.uki_sha256,
            units.uki_source,
        ),
    ];
    let built = Built {
        image: img_path,
        json: json_path,
        digest: disk.digest,
        parts: disk.parts,
        layers: layer_reports,
        boot,
        lock_sha256: plan.lock_sha256,
        lock_changed,
        debs_read: debs.reads.load(std::sync::atomic::Ordering::SeqCst),
        pushed,
        duration,
    };
    if default_store {
        let rec = ImageRecord {
            format: IMAGE_RECORD_FORMAT,
            key: image_key.clone(),
            image_sha256: sha256_of(&disk.bytes),
            image_size: disk.bytes.len() as u64,
            json_sha256: crate::store::sha256_hex(&json),
            built: built.clone(),
        };
        s.store
            .put_named(&format!("image-{image_key}"), &serde_json::to_vec(&rec)?)?;
    }
    Ok(built)
}

/// Version of the image record; records of other versions are misses.
const IMAGE_RECORD_FORMAT: u32 = 1;

/// What a build wrote for an image key (`named/image-<key>` in the download cache).
#[derive(Serialize, serde::Deserialize)]
struct ImageRecord {
    format: u32,
    key: String,
    /// sha256 (hex) and size of the image file, sha256 of the image.json file.
    image_sha256: String,
    image_size: u64,
    json_sha256: String,
    built: Built,
}

fn sha256_of(bytes: &[u8]) -> String {
    crate::store::sha256_hex(bytes)
}

/// The key of the whole image: everything its bytes are a function of (the plan, with every
/// unit's key, the manifest, the app, the Secure Boot certificate).
fn image_key(
    plan: &Plan,
    m: &Manifest,
    app: &plan::AppScan,
    signer: Option<&crate::sign::Signer>,
) -> Result<String> {
    let d = serde_json::json!({
        "unit": "image",
        "format": IMAGE_RECORD_FORMAT,
        "plan": plan,
        "manifest_sha256": m.sha256,
        "app_sha256": app.sha256,
        "app_listing_sha256": app.listing_sha256,
        "signer": signer.map(|s| s.meta().fingerprint),
    });
    Ok(crate::store::sha256_hex(&serde_json::to_vec(&d)?))
}

/// The build recorded for `key` when the image and image.json files hold exactly what it
/// wrote (both hashed: an edited or truncated output is rebuilt), with every unit reported
/// as from the local cache.
fn up_to_date(store: &store::Store, key: &str, img: &Path, json: &Path) -> Result<Option<Built>> {
    let Some(text) = store.get_named(&format!("image-{key}"))? else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<ImageRecord>(&text) else {
        return Ok(None);
    };
    if rec.format != IMAGE_RECORD_FORMAT || rec.key != key {
        return Ok(None);
    }
    let size = std::fs::metadata(img).map(|m| m.len()).ok();
    if size != Some(rec.image_size) {
        return Ok(None);
    }
    let same = |path: &Path, sha: &str| -> Result<bool> {
        match std::fs::read(path) {
            Ok(b) => Ok(sha256_of(&b) == sha),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    if !same(json, &rec.json_sha256)? || !same(img, &rec.image_sha256)? {
        return Ok(None);
    }
    let mut b = rec.built;
    b.image = img.to_path_buf();
    b.json = json.to_path_buf();
    b.lock_changed = false;
    b.debs_read = 0;
    b.pushed = 0;
    for u in b.layers.iter_mut().chain(b.boot.iter_mut()) {
        u.source = Source::LocalCache;
    }
    Ok(Some(b))
}
