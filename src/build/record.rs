//! The whole image's key (everything its bytes are a function of) and the record of what a
//! build wrote for it, so a build where nothing changed stops after hashing two files.

use super::outcome::Built;
use crate::cache::Source;
use crate::store;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

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

/// The build recorded for `key` when the image and image.json files hold exactly what it
/// wrote (both hashed: an edited or truncated output is rebuilt), with every unit reported
/// as from the local cache.
pub fn up_to_date(
    store: &store::Store,
    key: &str,
    img: &Path,
    json: &Path,
) -> Result<Option<Built>> {
    let Some(text) = store.get_named(&format!("image-{key}"))? else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<ImageRecord>(&text) else {
        return Ok(None);
    };
    if rec.format != crate::plan::IMAGE_FORMAT || rec.key != key {
        return Ok(None);
    }
    let size = std::fs::metadata(img).map(|m| m.len()).ok();
    if size != Some(rec.image_size) {
        return Ok(None);
    }
    let same = |path: &Path, sha: &str| -> Result<bool> {
        match std::fs::read(path) {
            Ok(b) => Ok(crate::digest::sha256_hex(&b) == sha),
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

/// Record what a build wrote for `key` (`named/image-<key>` in the download cache).
pub fn save(
    store: &store::Store,
    key: &str,
    image: &[u8],
    json: &[u8],
    built: &Built,
) -> Result<()> {
    let rec = ImageRecord {
        format: crate::plan::IMAGE_FORMAT,
        key: key.to_string(),
        image_sha256: crate::digest::sha256_hex(image),
        image_size: image.len() as u64,
        json_sha256: crate::digest::sha256_hex(json),
        built: built.clone(),
    };
    store.put_named(&format!("image-{key}"), &serde_json::to_vec(&rec)?)
}
