//! File-system helpers every stage that writes uses: atomic writes and copies (temp file in
//! the same directory, fsync, rename, fsync the directory) and permissions of new files.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// The name prefix of the temp files of [`write_atomic`] and [`copy_atomic`].
pub const TMP_PREFIX: &str = ".tmp-";

/// Mark a temp file as being written: an exclusive `flock` its writer holds until it
/// closes the file (or dies: the kernel drops the lock of a killed process).
fn hold(f: &std::fs::File) {
    // SAFETY: flock on a descriptor `f` owns; failure only means no mark.
    unsafe {
        libc::flock(
            std::os::unix::io::AsRawFd::as_raw_fd(f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
}

/// Remove the temp files a killed writer left in `dir` (a build killed with SIGKILL
/// cannot remove its own): those whose lock no live writer holds. Returns how many went.
/// A missing directory has none.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
        // SAFETY: flock on a descriptor this loop owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0
            && std::fs::remove_file(e.path()).is_ok()
        {
            tracing::info!(
                "removed {}, left by a writer that was killed",
                e.path().display()
            );
            removed += 1;
        }
    }
    removed
}

/// Write `data` to `path` atomically: a temp file beside it, fsync, rename, fsync the directory.
/// On any error the destination is untouched and the temp file is removed.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    hold(tmp.as_file());
    // The error names the destination (the temp file's name means nothing to the user);
    // the temp file is removed when `tmp` drops.
    let (first, rest) = data.split_at(data.len() / 2);
    tmp.write_all(first)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(name) = path.file_name() {
        crate::util::fault::pause(&format!("write:{}", name.to_string_lossy()));
    }
    tmp.write_all(rest)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot rename into {}: {}", path.display(), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Copy the file `from` to `to` atomically ([`write_atomic`]'s steps), without reading it
/// into memory (the kernel copies: `copy_file_range`, a reflink where the file system can).
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut src =
        std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    hold(tmp.as_file());
    std::io::copy(&mut src, &mut tmp.as_file())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.path().display()))?;
    tmp.persist(to)
        .map_err(|e| anyhow::anyhow!("cannot rename into {}: {}", to.display(), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Read a file expected to be small (a key, a certificate, a manifest): at most `max`
/// bytes are read, and a longer file (or an endless one such as `/dev/zero`) is an error
/// naming `what` and the path, before more than `max + 1` bytes are in memory.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut data = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if data.len() as u64 > max {
        anyhow::bail!(
            "{what} {} is larger than {max} bytes: not a {what}",
            path.display()
        );
    }
    Ok(data)
}

/// Give a new file the permissions a plain `open(0666) & ~umask` would: temp files are 0600.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_files_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // Left by a killed writer: no lock held.
        std::fs::write(dir.path().join(".tmp-dead"), b"half").unwrap();
        // Being written: its writer holds the lock.
        let live = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(dir.path())
            .unwrap();
        hold(live.as_file());
        std::fs::write(dir.path().join("keep.img"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(!dir.path().join(".tmp-dead").exists());
        assert!(live.path().exists());
        assert!(dir.path().join("keep.img").exists());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/y.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path().join("x")).unwrap().count(), 1);
    }
}
