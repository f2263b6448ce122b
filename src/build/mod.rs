//! The build pipeline as a library: [`prepare`] (manifest -> app scan -> lock -> plan),
//! [`units`] (each unit from the cache or built), the disk assembled and written atomically,
//! [`record`] (the whole image's key and what it wrote), [`report`] (`--json`, budgets),
//! [`verify`] and [`repro`] (`--verify`: a second build compared byte for byte).

pub mod outcome;
pub mod prepare;
pub mod record;
pub mod report;
pub mod repro;
pub mod units;
pub mod verify;

use crate::cache::registry::RegistryCache;
use crate::cache::Cache;
use crate::disk::{self, DiskInputs, Inputs, KernelMeta};
use crate::manifest::Manifest;
use crate::mirror;
use crate::store;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use units::Debs;

pub use crate::pin::{lock_path, Options};
use outcome::unit;
pub use outcome::{Built, CacheOptions, UnitReport};
pub use prepare::{plan_of, source_epoch};

/// Build the image of `m` into `out` (default `<app dir>/fuse-out`). `units` replaces the
/// download cache's store as the unit cache (`fuse build --verify` passes an empty one, so
/// every unit is built again while the packages still come from the verified download
/// cache); `cache_opts` adds a registry cache; `signer` signs the UKI for Secure Boot (after
/// the cache: cached UKIs are unsigned).
pub fn build(
    m: &Manifest,
    out: Option<&Path>,
    opts: Options,
    units: Option<&store::Store>,
    cache_opts: &CacheOptions,
    signer: Option<&crate::sign::Signer>,
) -> Result<Built> {
    let started = Instant::now();
    let units_store_arg = units;
    let workers = units::workers()?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| {
        m.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
            .join("fuse-out")
    });
    // 1-3. The one reading of the app, the lock, the plan (every unit and its key, without
    // reading a package).
    let prepare::Locked {
        app,
        session: s,
        lock,
        changed: lock_changed,
    } = prepare::lock(m, opts)?;
    let (plan, epoch) = prepare::plan(m, &lock, &app)?;
    tracing::debug!("plan: {}", serde_json::to_string(&plan)?);
    let stem = format!("{}-{}", m.name, m.version);
    let img_path = out.join(format!("{stem}.img"));
    let json_path = out.join(format!("{stem}.json"));
    // 3b. The image, keyed by its plan: when the output holds what that key gave, done.
    // (Not with a unit store of its own (--verify builds everything), a registry cache
    // (which may lack units to push) or a new lock (to be written).)
    let image_key = crate::plan::image_key(&plan, m, &app, signer.map(|s| s.meta().fingerprint))?;
    let default_store = units.is_none();
    let shortcut = default_store && cache_opts.registry.is_none() && !lock_changed;
    if shortcut {
        if let Some(b) = record::up_to_date(&s.store, &image_key, &img_path, &json_path)? {
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
    let mut units = units::build_units(&plan, &cache, &debs, &app, workers)?;
    // 5. The disk (the units' bytes moved, not copied: a layer is tens of MB).
    let (layers, sources): (Vec<disk::BuiltLayer>, Vec<crate::cache::Source>) =
        std::mem::take(&mut units.layers).into_iter().unzip();
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
        None => std::mem::take(&mut units.uki),
    };
    let t = Instant::now();
    let disk = disk::assemble(DiskInputs {
        name: &m.name,
        version: &m.version,
        arch: m.arch,
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
            cmdline: crate::plan::cmdline(m.arch).into(),
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
        x86_64_level: app.x86_64_level(),
        port: app.port(m),
        container: app.oci.as_ref().map(|o| o.source.clone()),
        health_http: m.health_http.clone(),
        epoch,
        signer: signer.map(|s| s.meta()),
    })?;
    tracing::info!("disk assembled in {:.2}s", t.elapsed().as_secs_f64());
    // 5b. Units from the registry cache are someone else's bytes: the image they make is
    // verified as `fuse inspect` does (the UKI's command line and boot plan against
    // image.json, which this build wrote from its own plan; every layer's file list
    // against its file system) before it is written. When it does not verify, those units
    // are forgotten and the image is built from local units only.
    if cache.imported() > 0 {
        let t = Instant::now();
        let check = crate::inspect::verify::read(&disk.bytes, None);
        if !check.report.ok() {
            let problems: Vec<String> = check
                .report
                .problems
                .iter()
                .map(|p| p.to_string())
                .collect();
            let forgotten = cache.forget_imported()?;
            tracing::warn!(
                "registry cache {}: the image its units make does not verify ({}); \
                 {forgotten} units refused, building without the registry cache",
                cache_opts.registry.as_deref().unwrap_or("?"),
                problems.join("; ")
            );
            let local = CacheOptions {
                registry: None,
                ..cache_opts.clone()
            };
            return build(m, Some(&out), opts, units_store_arg, &local, signer);
        }
        tracing::info!(
            "image from {} registry-cache units verified in {:.2}s",
            cache.imported(),
            t.elapsed().as_secs_f64()
        );
    }
    // 6. Written atomically; the lock only once the image is.
    let mut json = serde_json::to_vec_pretty(&disk.meta)?;
    json.push(b'\n');
    let t = Instant::now();
    crate::util::fs::remove_stale_temps(&out);
    crate::util::fs::write_atomic(&img_path, &disk.bytes)?;
    crate::util::fs::set_mode(&img_path, 0o644)?;
    crate::util::fs::write_atomic(&json_path, &json)?;
    crate::util::fs::set_mode(&json_path, 0o644)?;
    tracing::info!("image written in {:.2}s", t.elapsed().as_secs_f64());
    if lock_changed {
        lock.save(&lock_path(m))?;
        tracing::info!("wrote {}", lock_path(m).display());
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
        .zip(layers.iter().zip(&sources))
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
        record::save(
            &s.store,
            &image_key,
            &built.image,
            &built.digest,
            &json,
            &built,
        )?;
    }
    Ok(built)
}
