//! The local image store: built and pulled images, content-addressed by their digest, plus an
//! index of `name:version` tags. Lives in the user's data directory (`FUSE_DATA_DIR`, else
//! `$XDG_DATA_HOME/fuse`, else `~/.local/share/fuse`):
//!
//! ```text
//! images/sha256/<hex>   raw disk bytes (read-only, named by their sha256)
//! images/index.json     {"format":1,"images":{digest:{name,version,size,created}},
//!                        "tags":{"name:version":{digest,created}}}
//! images/lock           flock(2) held for every change
//! ```
//!
//! Every change (blob and index) happens under the lock, and every write is atomic (temp
//! file, fsync, rename), so concurrent `fuse build`s never lose each other's entries and a
//! crash leaves either the old or the new index. Images are addressed by `name:version`,
//! `name` (when one version has it), a full digest, or a unique digest prefix.

use crate::digest::sha256_hex;
use crate::disk::read_meta;
use crate::util::fs::{set_mode, write_atomic};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Version of index.json.
pub const INDEX_FORMAT: u32 = 1;

/// The data directory: `FUSE_DATA_DIR`, else `$XDG_DATA_HOME/fuse`, else `~/.local/share/fuse`.
pub fn default_data_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("FUSE_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("fuse"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/fuse")),
        None => bail!("no data directory: set FUSE_DATA_DIR (or HOME)"),
    }
}

/// A file path, else a reference into the local store (`name:version`, `name`, a digest or a
/// unique digest prefix): the path of the image's bytes.
pub fn resolve_image_ref(reference: &str) -> Result<PathBuf> {
    let p = Path::new(reference);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let store = Images::open(&default_data_dir()?)?;
    let found = store.resolve(reference).with_context(|| {
        format!("{reference:?} is neither an image file nor in the local store")
    })?;
    Ok(found.path)
}

/// Seconds since the Unix epoch (wall clock: used for store and ledger records only, never
/// for image bytes).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// Digest (`sha256:<hex>`) -> what it is.
    pub images: BTreeMap<String, ImageEntry>,
    /// `name:version` -> digest.
    pub tags: BTreeMap<String, TagEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// From the image's own image.json.
    pub name: String,
    pub version: String,
    pub size: u64,
    /// When it was first added (Unix seconds).
    pub created: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TagEntry {
    pub digest: String,
    /// When the tag was (last) set (Unix seconds).
    pub created: u64,
}

/// An image found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub digest: String,
    pub path: PathBuf,
    pub entry: ImageEntry,
}

/// What `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub removed: Vec<String>,
    pub bytes: u64,
    pub kept: usize,
}

/// `name:version` with name `[a-z0-9-]+` and version `[A-Za-z0-9._+~-]+`
/// ([`crate::disk::check_name_version`]).
pub fn check_tag(tag: &str) -> Result<(&str, &str)> {
    let Some((name, version)) = tag.split_once(':') else {
        bail!("tag {tag:?} is not NAME:VERSION");
    };
    crate::disk::check_name_version(name, version).with_context(|| format!("tag {tag:?}"))?;
    Ok((name, version))
}

/// `sha256:<64 lower-case hex>`.
pub fn is_full_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Short form for tables: `sha256:` + 12 hex.
pub fn short_digest(d: &str) -> String {
    d.get(..19).unwrap_or(d).to_string()
}

/// "3 minutes ago"-style age of `then` at `now` (Unix seconds).
pub fn age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    let (n, unit) = match s {
        0..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        _ => (s / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// The lock on the store's index, released when dropped (closing the file releases flock).
pub struct Lock {
    _file: std::fs::File,
}

/// flock(2) `path` exclusively, creating it if needed; blocks until granted.
pub fn lock_file(path: &Path) -> Result<Lock> {
    flock(path, false)?.with_context(|| format!("cannot lock {}", path.display()))
}

/// As [`lock_file`] without waiting: None when another process holds the lock.
pub fn try_lock_file(path: &Path) -> Result<Option<Lock>> {
    flock(path, true)
}

fn flock(path: &Path, nonblocking: bool) -> Result<Option<Lock>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let op = if nonblocking {
        libc::LOCK_EX | libc::LOCK_NB
    } else {
        libc::LOCK_EX
    };
    loop {
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(Some(Lock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock if nonblocking => return Ok(None),
            _ => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }
}

/// The local image store rooted at a data directory.
#[derive(Clone, Debug)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// The store under `data_dir` (created on first write).
    pub fn open(data_dir: &Path) -> Result<Images> {
        Ok(Images {
            dir: data_dir.join("images"),
        })
    }

    pub fn open_default() -> Result<Images> {
        Images::open(&default_data_dir()?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.join("sha256")
    }

    /// Where the bytes of `digest` (`sha256:<hex>`) live.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blob_dir()
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Takes the store's lock (every change holds it).
    pub fn lock(&self) -> Result<Lock> {
        lock_file(&self.dir.join("lock"))
    }

    /// The index as it is now (empty when the store is new).
    pub fn index(&self) -> Result<Index> {
        let path = self.index_path();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Index {
                    format: INDEX_FORMAT,
                    ..Index::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let index: Index = serde_json::from_slice(&data)
            .with_context(|| format!("{} is not a valid store index", path.display()))?;
        if index.format != INDEX_FORMAT {
            bail!(
                "{} has format {}; this fuse reads format {INDEX_FORMAT}",
                path.display(),
                index.format
            );
        }
        Ok(index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(index)?;
        json.push(b'\n');
        write_atomic(&self.index_path(), &json)?;
        set_mode(&self.index_path(), 0o644)
    }

    /// Read-modify-write of the index under the lock.
    fn update<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    /// Adds a fuse image (its bytes) and tags it `name:version` from its image.json, moving
    /// the tag if it pointed elsewhere. Returns the digest.
    pub fn add(&self, bytes: &[u8]) -> Result<String> {
        let meta = read_meta(bytes).context("not a fuse image")?;
        self.add_with(bytes, &meta.name, &meta.version)
    }

    /// Adds bytes known to be an image called `name` `version` (tag `name:version`).
    pub fn add_with(&self, bytes: &[u8], name: &str, version: &str) -> Result<String> {
        let tag = format!("{name}:{version}");
        check_tag(&tag)?;
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let path = self.blob_path(&digest);
        let now = now_unix();
        self.update(|index| {
            let present = std::fs::metadata(&path)
                .map(|m| m.len() == bytes.len() as u64)
                .unwrap_or(false);
            if !present {
                write_atomic(&path, bytes)?;
                set_mode(&path, 0o444)?;
            }
            index
                .images
                .entry(digest.clone())
                .or_insert_with(|| ImageEntry {
                    name: name.into(),
                    version: version.into(),
                    size: bytes.len() as u64,
                    created: now,
                });
            set_tag(index, &tag, &digest, now);
            Ok(())
        })?;
        Ok(digest)
    }

    /// [`Images::add_with`] for an image file whose digest is known (a build just wrote
    /// it): nothing is read or written when the store already holds it under that tag;
    /// else the file is copied in by the kernel, not read into memory.
    pub fn add_file(&self, path: &Path, digest: &str, name: &str, version: &str) -> Result<()> {
        let tag = format!("{name}:{version}");
        check_tag(&tag)?;
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let blob = self.blob_path(digest);
        let present = || {
            std::fs::metadata(&blob)
                .map(|m| m.len() == size)
                .unwrap_or(false)
        };
        if present() {
            let index = self.index()?;
            if index.images.contains_key(digest)
                && index.tags.get(&tag).is_some_and(|t| t.digest == digest)
            {
                return Ok(());
            }
        }
        let now = now_unix();
        self.update(|index| {
            if !present() {
                crate::util::fs::copy_atomic(path, &blob)?;
                set_mode(&blob, 0o444)?;
            }
            index
                .images
                .entry(digest.to_string())
                .or_insert_with(|| ImageEntry {
                    name: name.into(),
                    version: version.into(),
                    size,
                    created: now,
                });
            set_tag(index, &tag, digest, now);
            Ok(())
        })
    }

    /// Finds an image: `name:version`, `name` (one version only), `sha256:<hex>` or a hex
    /// prefix of at least 4 digits (`sha256:` optional) matching exactly one image.
    pub fn resolve(&self, reference: &str) -> Result<Found> {
        let index = self.index()?;
        let digest = resolve_in(&index, reference)
            .with_context(|| format!("in the local store {}", self.dir.display()))?;
        let entry =
            index.images.get(&digest).cloned().with_context(|| {
                format!("the store index names {digest} but has no entry for it")
            })?;
        let path = self.blob_path(&digest);
        if !path.is_file() {
            bail!(
                "{reference} ({digest}) is in the store index but its bytes {} are missing",
                path.display()
            );
        }
        Ok(Found {
            digest,
            path,
            entry,
        })
    }

    /// Points `tag` (`name:version`) at the image `source` resolves to.
    pub fn tag(&self, source: &str, tag: &str) -> Result<String> {
        check_tag(tag)?;
        let now = now_unix();
        self.update(|index| {
            let digest = resolve_in(index, source)?;
            set_tag(index, tag, &digest, now);
            Ok(digest)
        })
    }

    /// Removes a tag (`name:version` removes only that tag; the bytes stay until `gc`), or,
    /// for a digest or digest prefix, the image with every tag pointing at it and its bytes.
    /// Returns what was removed, one line each.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>> {
        self.update(|index| {
            if index.tags.contains_key(reference) {
                index.tags.remove(reference);
                return Ok(vec![format!("untagged {reference}")]);
            }
            let digest = resolve_in(index, reference)?;
            if !looks_like_digest(reference) {
                // A bare name: untag it, keep the bytes.
                let tags: Vec<String> = tags_of(index, &digest)
                    .into_iter()
                    .filter(|t| t.split(':').next() == Some(reference))
                    .collect();
                for t in &tags {
                    index.tags.remove(t);
                }
                return Ok(tags.iter().map(|t| format!("untagged {t}")).collect());
            }
            let mut out = Vec::new();
            for t in tags_of(index, &digest) {
                index.tags.remove(&t);
                out.push(format!("untagged {t}"));
            }
            index.images.remove(&digest);
            let path = self.blob_path(&digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
            }
            out.push(format!("deleted {digest}"));
            Ok(out)
        })
    }

    /// Removes every image no tag points at, except those in `keep` (digests), plus blobs and
    /// temp files the index does not know (left by a crash). `dry_run` only reports.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<Collected> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let referenced: BTreeSet<String> = index.tags.values().map(|t| t.digest.clone()).collect();
        let mut out = Collected::default();
        let doomed: Vec<String> = index
            .images
            .keys()
            .filter(|d| !referenced.contains(*d) && !keep.contains(*d))
            .cloned()
            .collect();
        out.kept = index.images.len() - doomed.len();
        for d in &doomed {
            out.bytes += index.images.get(d).map(|e| e.size).unwrap_or(0);
            out.removed.push(d.clone());
        }
        // Files in the blob directory the index does not list.
        let mut strays = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.blob_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let digest = format!("sha256:{name}");
                if !index.images.contains_key(&digest) || doomed.contains(&digest) {
                    // Doomed images are already counted above; the rest are strays.
                    if !doomed.contains(&digest) {
                        out.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                        out.removed.push(if is_full_digest(&digest) {
                            digest.clone()
                        } else {
                            format!("stray file {name}")
                        });
                    }
                    strays.push(e.path());
                }
            }
        }
        if !dry_run {
            for d in &doomed {
                index.images.remove(d);
            }
            self.write_index(&index)?;
            for p in strays {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(out)
    }
}

fn set_tag(index: &mut Index, tag: &str, digest: &str, now: u64) {
    if let Some(old) = index.tags.get(tag) {
        if old.digest == digest {
            return;
        }
        tracing::info!("{tag} moved from {} to {digest}", old.digest);
    }
    index.tags.insert(
        tag.to_string(),
        TagEntry {
            digest: digest.to_string(),
            created: now,
        },
    );
}

fn tags_of(index: &Index, digest: &str) -> Vec<String> {
    index
        .tags
        .iter()
        .filter(|(_, t)| t.digest == digest)
        .map(|(k, _)| k.clone())
        .collect()
}

fn looks_like_digest(s: &str) -> bool {
    let h = s.strip_prefix("sha256:").unwrap_or(s);
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The digest `reference` names in `index`. Pure.
pub fn resolve_in(index: &Index, reference: &str) -> Result<String> {
    if let Some(t) = index.tags.get(reference) {
        return Ok(t.digest.clone());
    }
    if reference.contains(':') && !reference.starts_with("sha256:") {
        check_tag(reference)?;
        bail!("no image tagged {reference} (`fuse ls` lists the store)");
    }
    // A bare name: the one version it has.
    let by_name: Vec<(&String, &TagEntry)> = index
        .tags
        .iter()
        .filter(|(k, _)| k.split(':').next() == Some(reference))
        .collect();
    match by_name.len() {
        1 => return Ok(by_name[0].1.digest.clone()),
        n if n > 1 => bail!(
            "{reference} has {n} versions in the store ({}); name one as NAME:VERSION",
            by_name
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => {}
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if !looks_like_digest(reference) || hex.len() > 64 {
        bail!("no image named {reference:?} (`fuse ls` lists the store)");
    }
    let hex = hex.to_ascii_lowercase();
    if hex.len() < 4 && hex.len() != 64 {
        bail!("digest prefix {reference:?} is too short: give at least 4 hex digits");
    }
    let matches: Vec<&String> = index
        .images
        .keys()
        .filter(|d| d.strip_prefix("sha256:").unwrap_or(d).starts_with(&hex))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no image with digest {reference} in the store"),
        many => bail!(
            "digest prefix {reference} is ambiguous; it matches {}",
            many.iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Images) {
        let d = tempfile::tempdir().unwrap();
        let s = Images::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn an_added_file_is_a_copy_an_edit_of_the_output_does_not_reach() {
        // The store's bytes are its own (copied by the kernel, not hard-linked): a build
        // output edited in place afterwards (as root, whatever its mode) leaves the stored
        // image as it was, under its digest.
        use std::os::unix::fs::MetadataExt;
        let (d, s) = store();
        let out = d.path().join("out.img");
        std::fs::write(&out, b"built image").unwrap();
        let digest = format!("sha256:{}", sha256_hex(b"built image"));
        s.add_file(&out, &digest, "hello", "1.0.0").unwrap();
        let blob = s.resolve("hello:1.0.0").unwrap().path;
        let (o, b) = (
            std::fs::metadata(&out).unwrap(),
            std::fs::metadata(&blob).unwrap(),
        );
        assert_ne!(
            (o.dev(), o.ino()),
            (b.dev(), b.ino()),
            "the store shares the output's inode"
        );
        assert_eq!(b.mode() & 0o777, 0o444);
        let mut f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
        std::io::Write::write_all(&mut f, b"EDITED").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&blob).unwrap(), b"built image");
        assert_eq!(
            format!("sha256:{}", sha256_hex(&std::fs::read(&blob).unwrap())),
            digest
        );
    }

    #[test]
    fn add_resolve_by_tag_name_digest_and_prefix() {
        let (_d, s) = store();
        let a = s.add_with(b"image a", "hello", "1.0.0").unwrap();
        let b = s.add_with(b"image b", "hello", "1.1.0").unwrap();
        assert_eq!(a, format!("sha256:{}", sha256_hex(b"image a")));
        assert_eq!(s.resolve("hello:1.0.0").unwrap().digest, a);
        assert_eq!(
            std::fs::read(s.resolve(&b).unwrap().path).unwrap(),
            b"image b"
        );
        assert_eq!(s.resolve(&a[..20]).unwrap().digest, a);
        assert_eq!(s.resolve(&a[7..15]).unwrap().digest, a);
        let e = format!("{:#}", s.resolve("hello").unwrap_err());
        assert!(
            e.contains("hello:1.0.0") && e.contains("hello:1.1.0"),
            "{e}"
        );
        assert!(s.resolve("nope:1").is_err());
        assert!(s.resolve("abc").is_err(), "3 hex digits are too short");
        // Re-adding is idempotent and keeps the first creation time.
        let created = s.index().unwrap().images[&a].created;
        s.add_with(b"image a", "hello", "1.0.0").unwrap();
        assert_eq!(s.index().unwrap().images[&a].created, created);
        assert_eq!(s.index().unwrap().images.len(), 2);
    }

    #[test]
    fn ambiguous_prefix_lists_candidates() {
        let (_d, s) = store();
        // Find two contents whose digests share the first hex digit... then use 4 digits of
        // a crafted index instead: resolution is pure over the index.
        let mut index = Index {
            format: 1,
            ..Index::default()
        };
        for d in ["sha256:abcd1111", "sha256:abcd2222", "sha256:ffff0000"] {
            index.images.insert(
                d.into(),
                ImageEntry {
                    name: "x".into(),
                    version: "1".into(),
                    size: 1,
                    created: 0,
                },
            );
        }
        let e = format!("{:#}", resolve_in(&index, "abcd").unwrap_err());
        assert!(
            e.contains("ambiguous") && e.contains("abcd1111") && e.contains("abcd2222"),
            "{e}"
        );
        assert_eq!(resolve_in(&index, "abcd2").unwrap(), "sha256:abcd2222");
        assert_eq!(
            resolve_in(&index, "sha256:ffff").unwrap(),
            "sha256:ffff0000"
        );
        drop(s);
    }

    #[test]
    fn tag_rm_and_gc() {
        let (_d, s) = store();
        let a = s.add_with(b"image a", "hello", "1.0.0").unwrap();
        let b = s.add_with(b"image b", "hello", "2.0.0").unwrap();
        let c = s.add_with(b"image c", "other", "1").unwrap();
        assert_eq!(s.tag("hello:1.0.0", "hello:stable").unwrap(), a);
        assert!(s.tag("hello:1.0.0", "Bad:Tag").is_err());
        assert_eq!(s.resolve("hello:stable").unwrap().digest, a);
        // Untagging keeps the bytes while another tag or gc's keep list holds them.
        assert_eq!(s.remove("hello:1.0.0").unwrap(), ["untagged hello:1.0.0"]);
        assert!(s.blob_path(&a).exists());
        s.remove("hello:2.0.0").unwrap();
        s.remove("other:1").unwrap();
        // A stray blob (e.g. from a crash) is collected too.
        std::fs::write(s.blob_dir().join(".tmp-x"), b"junk").unwrap();
        let keep: BTreeSet<String> = [c.clone()].into();
        let dry = s.gc(&keep, true).unwrap();
        assert!(dry.removed.contains(&b));
        assert!(s.blob_path(&b).exists(), "dry run removed something");
        let g = s.gc(&keep, false).unwrap();
        assert_eq!(g.removed.len(), 2, "{g:?}");
        assert!(g.removed.contains(&b));
        assert!(!s.blob_path(&b).exists());
        assert!(s.blob_path(&a).exists(), "tagged hello:stable");
        assert!(s.blob_path(&c).exists(), "kept by the keep list");
        assert!(!s.blob_dir().join(".tmp-x").exists());
        // Removing by digest removes its tags and its bytes.
        let out = s.remove(&a[..12]).unwrap();
        assert_eq!(
            out,
            ["untagged hello:stable".to_string(), format!("deleted {a}")]
        );
        assert!(!s.blob_path(&a).exists());
        assert!(s.resolve("hello:stable").is_err());
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let (_d, s) = store();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for j in 0..5 {
                        let body = format!("image {i} {j}");
                        s.add_with(body.as_bytes(), &format!("app{i}"), &format!("{j}"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let index = s.index().unwrap();
        assert_eq!(index.images.len(), 40);
        assert_eq!(index.tags.len(), 40);
        for (d, _) in index.images {
            let bytes = std::fs::read(s.blob_path(&d)).unwrap();
            assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), d);
        }
    }

    #[test]
    fn tag_and_digest_syntax() {
        assert!(check_tag("hello:1.0.0").is_ok());
        assert!(check_tag("hello:1.0.0+b1~rc").is_ok());
        assert!(check_tag("hello").is_err());
        assert!(check_tag("Hello:1").is_err());
        assert!(check_tag("hello:a b").is_err());
        assert!(is_full_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_full_digest(&format!("sha256:{}", "A".repeat(64))));
        assert_eq!(age(1000, 1000 - 125), "2 minutes ago");
        assert_eq!(age(100_000, 100_000 - 86400), "1 day ago");
    }
}
