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
    /// The two files' stats when they last hashed to the digests above, and when those
    /// stats were taken (ns since the Unix epoch): the stat cache of the outputs.
    #[serde(default)]
    image_stat: Option<FileStat>,
    #[serde(default)]
    json_stat: Option<FileStat>,
    #[serde(default)]
    stat_ns: i128,
}

/// A file's size, mtime, ctime (ns), inode and device: what git's index compares.
#[derive(Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
struct FileStat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

/// How close to the stat's taking a change must be for the stat to be doubted (a file
/// written in the same clock tick as the stat keeps its times): git's "racy" entries.
const RACY_NS: i128 = 2_000_000_000;

fn stat(path: &Path) -> Option<FileStat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStat {
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        ino: m.ino(),
        dev: m.dev(),
    })
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Was the file, as `now` stats it, changed well before `at` (so that a change after
/// `at` must show in its times)?
fn settled(s: &FileStat, at: i128) -> bool {
    s.mtime_ns < at - RACY_NS && s.ctime_ns < at - RACY_NS
}

/// The build recorded for `key` when the image and image.json files hold exactly what it
/// wrote, with every unit reported as from the local cache. A file whose stat (size,
/// mtime, ctime, inode, device) is the one recorded, and was settled when recorded, is
/// taken as unchanged without reading it (any write changes its ctime); any other is
/// hashed (an edited or truncated output is rebuilt), and when it still holds what was
/// written and has settled, the record is refreshed so that the next build need not.
pub fn up_to_date(
    store: &store::Store,
    key: &str,
    img: &Path,
    json: &Path,
) -> Result<Option<Built>> {
    let name = format!("image-{key}");
    let Some(text) = store.get_named(&name)? else {
        return Ok(None);
    };
    let Ok(mut rec) = serde_json::from_slice::<ImageRecord>(&text) else {
        return Ok(None);
    };
    if rec.format != crate::plan::IMAGE_FORMAT || rec.key != key {
        return Ok(None);
    }
    let (img_now, json_now) = (stat(img), stat(json));
    if img_now.map(|s| s.size) != Some(rec.image_size) {
        return Ok(None);
    }
    let known = |now: Option<FileStat>, was: Option<FileStat>| {
        now.is_some() && now == was && now.is_some_and(|s| settled(&s, rec.stat_ns))
    };
    let same = |path: &Path, sha: &str| -> Result<bool> {
        match std::fs::read(path) {
            Ok(b) => Ok(crate::digest::sha256_hex(&b) == sha),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let mut hashed = false;
    for (path, now, was, sha) in [
        (json, json_now, rec.json_stat, &rec.json_sha256),
        (img, img_now, rec.image_stat, &rec.image_sha256),
    ] {
        if !known(now, was) {
            if !same(path, sha)? {
                return Ok(None);
            }
            hashed = true;
        }
    }
    // Hashed and found unchanged: remember the stats they have now, once they have
    // settled (and only if hashing did not race a change: the stats are taken again).
    let at = now_ns();
    if hashed
        && stat(img) == img_now
        && stat(json) == json_now
        && [img_now, json_now].iter().flatten().all(|s| settled(s, at))
    {
        (rec.image_stat, rec.json_stat, rec.stat_ns) = (img_now, json_now, at);
        if let Err(e) = store.put_named(&name, &serde_json::to_vec(&rec)?) {
            tracing::warn!("cannot refresh the image record: {e:#}");
        }
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

/// Record what a build wrote for `key` (`named/image-<key>` in the download cache): the
/// image file `img` (its digest `sha256:<hex>`, computed when the disk was assembled: not
/// read again), the image.json bytes, and the two files' stats.
pub fn save(
    store: &store::Store,
    key: &str,
    img: &Path,
    digest: &str,
    json: &[u8],
    built: &Built,
) -> Result<()> {
    let image_stat = stat(img);
    let rec = ImageRecord {
        format: crate::plan::IMAGE_FORMAT,
        key: key.to_string(),
        image_sha256: digest
            .strip_prefix("sha256:")
            .context("internal error: an image digest without sha256:")?
            .to_string(),
        image_size: image_stat
            .map(|s| s.size)
            .with_context(|| format!("cannot read {}", img.display()))?,
        json_sha256: crate::digest::sha256_hex(json),
        built: built.clone(),
        image_stat,
        json_stat: stat(&built.json),
        stat_ns: now_ns(),
    };
    store.put_named(&format!("image-{key}"), &serde_json::to_vec(&rec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(img: &Path, json: &Path) -> Built {
        Built {
            image: img.to_path_buf(),
            json: json.to_path_buf(),
            digest: String::new(),
            parts: Vec::new(),
            layers: Vec::new(),
            boot: Vec::new(),
            lock_sha256: String::new(),
            lock_changed: false,
            debs_read: 0,
            pushed: 0,
            duration: 0.0,
        }
    }

    /// Sets a file's mtime back to `secs` (ns 0) since the epoch; its ctime becomes now.
    fn set_mtime(path: &Path, secs: i64) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let t = libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        // SAFETY: a NUL-terminated path and two valid timespecs.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) },
            0
        );
    }

    fn record(store: &store::Store, key: &str) -> ImageRecord {
        serde_json::from_slice(&store.get_named(&format!("image-{key}")).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn outputs_are_trusted_by_stat_only_once_settled_and_an_edit_shows_in_ctime() {
        let d = tempfile::tempdir().unwrap();
        let store = store::Store::open(&d.path().join("cache")).unwrap();
        let (img, json) = (d.path().join("a.img"), d.path().join("a.json"));
        let key = "k".repeat(64);
        std::fs::write(&img, b"image bytes").unwrap();
        std::fs::write(&json, b"{}\n").unwrap();
        // Both files dated well in the past, as an output that has settled.
        set_mtime(&img, 1_000_000_000);
        set_mtime(&json, 1_000_000_000);
        let digest = format!("sha256:{}", crate::digest::sha256_hex(b"image bytes"));
        save(&store, &key, &img, &digest, b"{}\n", &built(&img, &json)).unwrap();
        // Just written, the stats are not trusted (their ctime is too close to the
        // record's): the files are hashed, and found unchanged.
        assert!(up_to_date(&store, &key, &img, &json).unwrap().is_some());
        // A same-size edit within the stat's clock tick, its mtime put back: hashed, so
        // seen.
        std::fs::write(&img, b"IMAGE bytes").unwrap();
        set_mtime(&img, 1_000_000_000);
        assert!(up_to_date(&store, &key, &img, &json).unwrap().is_none());
        std::fs::write(&img, b"image bytes").unwrap();
        set_mtime(&img, 1_000_000_000);
        // Once the files settled (their ctime 2 s before a check that hashed them), the
        // record holds their stats: the next check reads neither.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(up_to_date(&store, &key, &img, &json).unwrap().is_some());
        let rec = record(&store, &key);
        assert_eq!(rec.image_stat, stat(&img));
        assert_eq!(rec.json_stat, stat(&json));
        // Evidence that nothing is read: a record whose digests no file has, with the
        // files' stats, still finds them up to date (and is not rewritten).
        let mut lying = record(&store, &key);
        (lying.image_sha256, lying.json_sha256) = ("0".repeat(64), "0".repeat(64));
        let name = format!("image-{key}");
        store
            .put_named(&name, &serde_json::to_vec(&lying).unwrap())
            .unwrap();
        assert!(up_to_date(&store, &key, &img, &json).unwrap().is_some());
        assert_eq!(
            record(&store, &key).stat_ns,
            rec.stat_ns,
            "rewritten without need"
        );
        let mut honest = lying;
        (honest.image_sha256, honest.json_sha256) = (rec.image_sha256, rec.json_sha256);
        store
            .put_named(&name, &serde_json::to_vec(&honest).unwrap())
            .unwrap();
        // The same-size edit with its mtime put back, now: its ctime moved, so the stat
        // differs, the file is hashed and the edit seen.
        std::fs::write(&img, b"IMAGE bytes").unwrap();
        set_mtime(&img, 1_000_000_000);
        assert_eq!(
            stat(&img).unwrap().mtime_ns,
            rec.image_stat.unwrap().mtime_ns
        );
        assert!(up_to_date(&store, &key, &img, &json).unwrap().is_none());
    }
}
