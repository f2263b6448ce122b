//! The content-addressed download cache: blobs named by their sha256, verified on every read;
//! every write atomic (temp file in the same directory, fsync, rename, fsync the directory).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A re-export, not a second implementation (that is [`crate::digest::sha256_hex`]): it
/// keeps commands/run.rs, commands/test.rs and vm.rs, reworked on another branch, building
/// until they name `crate::digest` directly.
pub use crate::digest::sha256_hex;
use crate::util::fs::write_atomic;

/// The cache directory: `FUSE_CACHE_DIR`, else `$XDG_CACHE_HOME/fuse`, else `~/.cache/fuse`.
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("FUSE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("fuse"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("fuse")),
        None => bail!("no cache directory: set FUSE_CACHE_DIR (or HOME)"),
    }
}

/// A content-addressed store of blobs under `<root>/sha256/<hex>`, plus named entries
/// (e.g. a mirror's last InRelease) under `<root>/named/`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held download lock ([`Store::lock_blob`]); the kernel releases it when the file is
/// closed, so a build killed with SIGKILL never leaves a lock held.
#[derive(Debug)]
pub struct BlobLock {
    _file: std::fs::File,
}

fn check_hex(sha256: &str) -> Result<()> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        bail!("{sha256:?} is not a lower-case hex sha256");
    }
    Ok(())
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root.join("sha256"))
            .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        // What a build killed while caching a blob left (never trusted: not a blob name).
        crate::util::fs::remove_stale_temps(&root.join("sha256"));
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// A cached blob, verified: `Ok(None)` when absent; an error when present but its
    /// bytes no longer hash to its name (the cache was tampered with or corrupted).
    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        check_hex(sha256)?;
        let path = self.blob_path(sha256);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read cached blob {}", path.display()))
            }
        };
        let got = sha256_hex(&data);
        if got != sha256 {
            bail!(
                "cached blob {} is corrupt or was modified: expected sha256 {sha256}, got {got}; \
                 delete it to download it again",
                path.display()
            );
        }
        Ok(Some(data))
    }

    /// Store bytes that must hash to `sha256` (refused, nothing written, otherwise).
    pub fn put(&self, sha256: &str, data: &[u8]) -> Result<PathBuf> {
        check_hex(sha256)?;
        let got = sha256_hex(data);
        if got != sha256 {
            bail!("refusing to cache: expected sha256 {sha256}, got {got}");
        }
        let path = self.blob_path(sha256);
        write_atomic(&path, data)?;
        Ok(path)
    }

    /// Store bytes under the sha256 this computes of them (once: no caller-supplied digest
    /// to check them against). Returns the digest and the blob's path.
    pub fn add(&self, data: &[u8]) -> Result<(String, PathBuf)> {
        let sha256 = sha256_hex(data);
        let path = self.blob_path(&sha256);
        write_atomic(&path, data)?;
        Ok((sha256, path))
    }

    /// Where the partial download of a blob lives while one process fetches it.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(format!("{sha256}.part"))
    }

    /// Take the download lock of a blob: an exclusive `flock` on `partial/<sha256>.lock`,
    /// waiting while another process (or thread) holds it. Whoever holds it is the one
    /// writer of the blob's partial download; it must check again whether the blob arrived
    /// (the previous holder may have stored it) before fetching. Released on drop; the
    /// lock file is left in place (removing it would let a waiter lock a file no one else
    /// sees), it is empty.
    pub fn lock_blob(&self, sha256: &str) -> Result<BlobLock> {
        check_hex(sha256)?;
        let path = self.root.join("partial").join(format!("{sha256}.lock"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
            tracing::info!(
                "waiting for another fuse process downloading {}",
                &sha256[..12]
            );
            loop {
                // SAFETY: as above; blocks until the holder closes its descriptor.
                if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        Ok(BlobLock { _file: file })
    }

    fn named_path(&self, name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("named").join(safe)
    }

    /// A named (not content-addressed) entry, e.g. the last InRelease seen from a mirror.
    pub fn get_named(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.named_path(name);
        match std::fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn put_named(&self, name: &str, data: &[u8]) -> Result<()> {
        write_atomic(&self.named_path(name), data)
    }

    /// Removes a named entry (absent is fine).
    pub fn remove_named(&self, name: &str) -> Result<()> {
        let path = self.named_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_roundtrip_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = b"hello blob".to_vec();
        let h = sha256_hex(&data);
        assert!(s.get(&h).unwrap().is_none());
        s.put(&h, &data).unwrap();
        assert_eq!(s.get(&h).unwrap().unwrap(), data);
        std::fs::write(s.blob_path(&h), b"hello blub").unwrap();
        let e = format!("{:#}", s.get(&h).unwrap_err());
        assert!(e.contains("corrupt") && e.contains(&h), "{e}");
    }

    #[test]
    fn blob_lock_excludes_other_holders_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let h = sha256_hex(b"x");
        let held = s.lock_blob(&h).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            let _l = s2.lock_blob(&h2).unwrap();
            tx.send(()).unwrap();
        });
        // The second taker waits while the first holds the lock...
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(held);
        // ...and gets it once it is released.
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        // Another blob's lock is independent.
        let _a = s.lock_blob(&h).unwrap();
        let _b = s.lock_blob(&sha256_hex(b"y")).unwrap();
    }

    #[test]
    fn put_refuses_wrong_hash_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let h = sha256_hex(b"a");
        assert!(s.put(&h, b"b").is_err());
        assert!(!s.blob_path(&h).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
