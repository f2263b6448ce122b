//! `fuse export IMAGE --format FMT [--out DIR]`: the image in a hypervisor's or cloud's
//! format, written atomically as `<name>-<version>.<ext>`; the path is the last line of
//! stdout. IMAGE may itself be in any format fuse reads.

use crate::cli::ExportArgs;
use crate::disk::read_meta;
use crate::export::{self, Format};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// An image argument: an existing file, else a reference into the local image store.
fn image_path(image: &str) -> Result<(PathBuf, bool)> {
    let p = Path::new(image);
    if p.is_file() {
        return Ok((p.to_path_buf(), true));
    }
    Ok((crate::image_store::resolve_image_ref(image)?, false))
}

pub fn run(a: &ExportArgs) -> Result<u8> {
    let t = Instant::now();
    let format = Format::parse(&a.format)?;
    let (src, is_file) = image_path(&a.image)?;
    let opened = export::detect_and_open(&src)?;
    let raw = opened.raw;
    let meta = read_meta(&raw).with_context(|| {
        format!(
            "{} is not a fuse image (no image.json on its ESP)",
            src.display()
        )
    })?;
    for gap in export::missing_drivers(format, &meta.kernel.modules) {
        tracing::warn!(
            "{} has no driver the {format} format's hardware needs: {gap}; its kernel {} \
             brought none into the image (build with the default kernel, docs/manifest.md)",
            src.display(),
            meta.kernel.package.name
        );
    }
    let digest = format!("sha256:{}", crate::digest::sha256_hex(&raw));
    let base = format!("{}-{}", meta.name, meta.version);
    let out_dir = match (&a.out, is_file) {
        (Some(d), _) => d.clone(),
        (None, true) => src
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        (None, false) => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let target = out_dir.join(format!("{base}.{}", format.extension()));
    let same_file = opened.format == format
        && target.is_file()
        && std::fs::canonicalize(&target).ok() == std::fs::canonicalize(&src).ok();
    if same_file {
        tracing::info!(
            "{} already is the {format} image of {digest}",
            target.display()
        );
    } else {
        let bytes = export::export(format, &raw, &base)?;
        crate::util::fs::write_atomic(&target, &bytes)
            .with_context(|| format!("cannot write {}", target.display()))?;
        crate::util::fs::set_mode(&target, 0o644)?;
        tracing::info!(
            "wrote {} ({format}, {} bytes) of {base} {digest} in {:.1}s",
            target.display(),
            bytes.len(),
            t.elapsed().as_secs_f64()
        );
    }
    println!("{}", target.display());
    Ok(0)
}
