//! `fuse build`: manifest -> packages -> layers -> disk, written atomically to the output
//! directory; the digest is the last line of stdout.

use crate::archive::deb::read_deb;
use crate::archive::packages::{parse_relations, Package};
use crate::cli::BuildArgs;
use crate::fetch::Fetcher;
use crate::image::{self, DiskInputs, Inputs};
use crate::kernel;
use crate::layers::{self, BootPlan, DistroInfo, PackageRef};
use crate::manifest::{self, Manifest};
use crate::mirror::{self, Archive, Trust};
use crate::store::{self, sha256_hex, Store};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The init binary (PID 1), built static from `init/` by build.rs.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fuse-init"));

/// The EFI stub's package and its path inside it.
pub const STUB_PACKAGE: &str = "systemd-boot-efi";
pub const STUB_PATH: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The kernel command line of every image.
pub const CMDLINE: &str = "console=ttyS0,115200 panic=-1 quiet";

/// What a build produced.
pub struct Built {
    pub image: PathBuf,
    pub json: PathBuf,
    pub digest: String,
    pub parts: Vec<(String, u64)>,
}

pub fn run(args: &BuildArgs) -> Result<u8> {
    let trust = Trust {
        allow_unsigned: args.insecure_allow_unsigned,
        allow_expired: args.allow_expired,
    };
    let built = build(&args.path, args.out.as_deref(), trust)?;
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
/// archive's Release date.
pub fn source_epoch(release_date: Option<i64>) -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a whole number of seconds")),
        _ => Ok(release_date.unwrap_or(0).max(0) as u64),
    }
}

fn package_ref(p: &Package) -> PackageRef {
    PackageRef {
        name: p.name.clone(),
        version: p.version.clone(),
        arch: p.architecture.clone(),
        sha256: p.sha256.clone(),
        source: p.source.clone(),
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

/// Build the image of the manifest at `path` into `out` (default `<app dir>/fuse-out`).
pub fn build(path: &Path, out: Option<&Path>, trust: Trust) -> Result<Built> {
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
    let app_bytes = std::fs::read(&m.app_path)
        .with_context(|| format!("cannot read the app {}", m.app_path.display()))?;

    let store = Store::open(&store::default_cache_dir()?)?;
    let fetcher = Fetcher::new();
    let source = mirror::find_source(
        m.mirror.as_deref(),
        m.keyring.as_deref(),
        &m.distribution.codename,
    )?;
    let archive = step("reading the archive index", || {
        Archive::open(&fetcher, &store, &source, &m.distribution.codename, trust)
    })?;

    let kernel_pkg = resolve_kernel(&archive, &m.kernel)?;
    let stub_pkg = archive
        .newest(STUB_PACKAGE)
        .context("the EFI stub package")?;
    let (kernel_deb, stub_deb) = step("fetching the kernel and the EFI stub", || {
        Ok((
            archive.fetch_deb(&fetcher, &store, kernel_pkg)?,
            archive.fetch_deb(&fetcher, &store, stub_pkg)?,
        ))
    })?;
    let kernel = step("reading the kernel", || {
        let deb = read_deb(&kernel_deb)
            .with_context(|| format!("cannot read {} {}", kernel_pkg.name, kernel_pkg.version))?;
        kernel::from_package(&deb.data, &kernel_pkg.name)
    })?;
    let stub = {
        let deb = read_deb(&stub_deb)
            .with_context(|| format!("cannot read {} {}", stub_pkg.name, stub_pkg.version))?;
        deb.data
            .get(STUB_PATH)
            .and_then(|n| n.data())
            .map(<[u8]>::to_vec)
            .with_context(|| {
                format!("{} {} has no /{STUB_PATH}", stub_pkg.name, stub_pkg.version)
            })?
    };
    tracing::info!(
        "kernel {} ({}), {} modules",
        kernel.release,
        kernel_pkg.version,
        kernel.modules.len()
    );

    let epoch = source_epoch(archive.release.date_unix)?;
    let distro = DistroInfo {
        vendor: m.distribution.vendor.clone(),
        codename: m.distribution.codename.clone(),
    };
    // The kernel is in the image (in the UKI): list it for scanners.
    let status_pkgs = vec![(package_ref(kernel_pkg), kernel_pkg.fields.clone())];
    let layers = vec![
        layers::base_layer(&m, &distro, &status_pkgs, epoch)?,
        layers::app_layer(&m, &app_bytes, epoch)?,
    ];
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

    let disk = step("assembling the disk", || {
        image::assemble(DiskInputs {
            name: &m.name,
            version: &m.version,
            inputs: Inputs {
                manifest_sha256: m.sha256.clone(),
                app_sha256: sha256_hex(&app_bytes),
                fuse_version: env!("CARGO_PKG_VERSION").into(),
                source_epoch: epoch,
                distribution: format!("{}/{}", m.distribution.vendor, m.distribution.codename),
                archive_date: archive.release.date.clone(),
            },
            kernel_package: package_ref(kernel_pkg),
            kernel_release: &kernel.release,
            kernel_modules: kernel.modules.iter().map(|(_, _, n)| n.clone()).collect(),
            vmlinuz: &kernel.vmlinuz,
            cmdline: CMDLINE.into(),
            os_release: layers::os_release(&m, &distro),
            stub_package: package_ref(stub_pkg),
            stub: &stub,
            initramfs: &initramfs,
            layers: &layers,
            app,
            app_kind: "binary",
            port: m.port,
            health_http: m.health_http.clone(),
            epoch,
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
