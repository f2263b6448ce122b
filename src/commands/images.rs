//! `fuse ls`, `fuse tag`, `fuse rm`, `fuse gc`: the local image store.

use crate::cli::{GcArgs, LsArgs, RmArgs, TagArgs};
use crate::image_store::{age, default_data_dir, now_unix, short_digest, Images};
use crate::ledger;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// Bytes as a short human size.
pub fn human_size(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub fn ls(args: &LsArgs) -> Result<u8> {
    let store = Images::open_default()?;
    let index = store.index()?;
    let now = now_unix();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut tagged = BTreeSet::new();
    for (tag, t) in &index.tags {
        let (name, version) = tag.split_once(':').unwrap_or((tag, ""));
        let size = index.images.get(&t.digest).map(|e| e.size).unwrap_or(0);
        tagged.insert(t.digest.clone());
        rows.push(serde_json::json!({
            "name": name, "version": version, "digest": t.digest,
            "size": size, "created": t.created,
        }));
    }
    for (digest, e) in &index.images {
        if !tagged.contains(digest) {
            rows.push(serde_json::json!({
                "name": e.name, "version": null, "digest": digest,
                "size": e.size, "created": e.created,
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let digest = r["digest"].as_str().unwrap_or("").to_string();
            [
                r["name"].as_str().unwrap_or("").to_string(),
                r["version"].as_str().unwrap_or("<untagged>").to_string(),
                if args.no_trunc {
                    digest
                } else {
                    short_digest(&digest)
                },
                human_size(r["size"].as_u64().unwrap_or(0)),
                age(now, r["created"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    crate::util::table::print_table(&["NAME", "VERSION", "DIGEST", "SIZE", "CREATED"], &table);
    Ok(0)
}

pub fn tag(args: &TagArgs) -> Result<u8> {
    let store = Images::open_default()?;
    let source = if Path::new(&args.source).is_file() {
        let bytes = std::fs::read(&args.source)
            .with_context(|| format!("cannot read image {}", args.source))?;
        store
            .add(&bytes)
            .with_context(|| format!("cannot add {} to the store", args.source))?
    } else {
        args.source.clone()
    };
    let digest = store.tag(&source, &args.tag)?;
    println!("{} {digest}", args.tag);
    Ok(0)
}

pub fn rm(args: &RmArgs) -> Result<u8> {
    let store = Images::open_default()?;
    for r in &args.refs {
        for line in store.remove(r)? {
            println!("{line}");
        }
    }
    Ok(0)
}

pub fn gc(args: &GcArgs) -> Result<u8> {
    let data = default_data_dir()?;
    let store = Images::open(&data)?;
    // Keep what any environment currently runs, per the default ledger and the project's.
    let mut keep = BTreeSet::new();
    let project = ledger::load_project(args.envs.as_deref(), &data)?;
    let mut ledgers = vec![data.join("ledger.jsonl")];
    if !ledgers.contains(&project.ledger) {
        ledgers.push(project.ledger.clone());
    }
    for l in &ledgers {
        let entries = ledger::read(l)?;
        keep.extend(ledger::current(&entries).values().map(|e| e.digest.clone()));
    }
    let c = store.gc(&keep, args.dry_run)?;
    for d in &c.removed {
        println!(
            "{}{d}",
            if args.dry_run {
                "would delete "
            } else {
                "deleted "
            }
        );
    }
    tracing::info!(
        "{} {} images/files ({}); kept {} (tagged or running in an environment)",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        c.removed.len(),
        human_size(c.bytes),
        c.kept
    );
    Ok(0)
}
