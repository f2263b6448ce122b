//! `fuse inspect IMAGE [NEW] [--json] [--sbom spdx|cyclonedx]`: read the image file(s),
//! verify, then print a summary, a comparison or an SBOM. Exit 0 ok (or identical), 1 when
//! two images differ, 2 on any error, a failed verification included.

use crate::cli::{InspectArgs, SbomKind};
use crate::export;
use crate::inspect::{
    self, diff, render, verify, DiffJson, Image, InspectJson, SbomFormat, VerificationFailed,
};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Read an image file of any format fuse exports (the raw disk inside it) and its beside
/// copy of image.json (`<stem>.json`), then verify.
fn load(path: &Path) -> Result<(Vec<u8>, Image)> {
    let t = Instant::now();
    let file_size = std::fs::metadata(path)
        .with_context(|| format!("cannot read the image {}", path.display()))?
        .len();
    let opened = export::detect_and_open(path)?;
    let disk = opened.raw;
    let beside_path = export::beside_json(path);
    let beside = if beside_path != path && beside_path.is_file() {
        let b = std::fs::read(&beside_path)
            .with_context(|| format!("cannot read {}", beside_path.display()))?;
        let name = beside_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((name, b))
    } else {
        None
    };
    let mut img = verify::read(
        &disk,
        beside.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    if opened.format != export::Format::Raw {
        img.report.check(format!(
            "{} container read: raw disk of {} bytes",
            opened.format,
            disk.len()
        ));
        if let Some(recorded) = &opened.recorded_digest {
            img.report.check(format!(
                "digest recorded in the {} container",
                opened.format
            ));
            if *recorded != img.digest {
                img.report.fail(
                    format!("{} container", opened.format),
                    format!(
                        "records {recorded}, the raw disk inside it is {}",
                        img.digest
                    ),
                );
            }
        }
        img.wrapper = Some(verify::Wrapper {
            format: opened.format.name().into(),
            file_size,
        });
    }
    tracing::debug!(
        "{}: read and verified in {:.3}s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok((disk, img))
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context("cannot write to stdout")
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v).context("cannot encode JSON")?;
    s.push('\n');
    Ok(s)
}

/// One error for two images that both fail verification, each problem naming its file.
fn both_failed(a: VerificationFailed, b: VerificationFailed) -> VerificationFailed {
    let mut problems = Vec::new();
    for e in [&a, &b] {
        for p in &e.problems {
            problems.push(verify::Problem {
                part: format!("{}: {}", e.image, p.part),
                problem: p.problem.clone(),
            });
        }
    }
    VerificationFailed {
        image: format!("{} and {}", a.image, b.image),
        problems,
    }
}

pub fn run(a: &InspectArgs) -> Result<u8> {
    let name = a.image.display().to_string();
    let (disk, mut img) = load(&a.image)?;
    if let Some(new) = &a.new {
        let new_name = new.display().to_string();
        let (_, new_img) = load(new)?;
        let (old_meta, new_meta) = match (img.verified(&name), new_img.verified(&new_name)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e.into()),
            (Err(a), Err(b)) => return Err(both_failed(a, b).into()),
        };
        let d = diff::diff(&name, old_meta, &new_name, new_meta);
        if a.json {
            print(&json(&DiffJson {
                fuse_inspect: inspect::JSON_FORMAT,
                diff: &d,
            })?)?;
        } else {
            print(&render::diff(&d))?;
        }
        return Ok(if d.identical { 0 } else { 1 });
    }
    if let Some(kind) = a.sbom {
        let format = match kind {
            SbomKind::Spdx => SbomFormat::Spdx,
            SbomKind::Cyclonedx => SbomFormat::CycloneDx,
        };
        img.verified(&name)?;
        let t = Instant::now();
        let doc = inspect::sbom(&disk, &mut img, format);
        tracing::debug!("SBOM made in {:.3}s", t.elapsed().as_secs_f64());
        img.verified(&name)?;
        let doc = doc.context("internal error: no SBOM although the image verified")?;
        print(&json(&doc)?)?;
        return Ok(0);
    }
    if a.json {
        print(&json(&InspectJson::new(&name, &img))?)?;
    } else {
        let meta = img.meta_or_err(&name)?;
        print(&render::summary(&name, &img, meta))?;
    }
    img.verified(&name)?;
    Ok(0)
}
