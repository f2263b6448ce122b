//! `fuse inspect IMAGE [NEW] [--json] [--sbom spdx|cyclonedx]`: read the image file(s),
//! verify, then print a summary, a comparison or an SBOM. Exit 0 ok (or identical), 1 when
//! two images differ, 2 on any error, a failed verification included.

use crate::cli::{InspectArgs, SbomKind};
use crate::inspect::{
    self, diff, render, verify, DiffJson, InspectJson, SbomFormat, VerificationFailed,
};
use anyhow::{Context, Result};
use std::io::Write;
use std::time::Instant;

/// Writes `text` to stdout, control characters from the image (terminal escapes) escaped.
fn print(text: &str) -> Result<()> {
    let text = crate::util::text::for_terminal(text);
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
    let (opened, mut img) = inspect::load(&a.image)?;
    let disk = opened.raw;
    if let Some(new) = &a.new {
        let new_name = new.display().to_string();
        let (_, new_img) = inspect::load(new)?;
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
