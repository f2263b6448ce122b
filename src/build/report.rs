//! What a build reports: the `fuse build --json` document (docs/ci.md) and the manifest's
//! size budgets checked against the built image.

use super::outcome::{Built, UnitReport};
use crate::cache::Source;
use crate::manifest::Manifest;
use crate::pin::lock_path;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

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
pub fn check_budget(budget: &crate::budget::Budget, built: &Built) -> Result<BudgetReport> {
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
