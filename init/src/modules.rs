//! Kernel module loading with `finit_module(2)`, in the order boot.json lists them.

use std::io;
use std::os::fd::AsRawFd;

/// Loads one module file (flags 0, no parameters). Already-loaded modules count as success.
pub fn load(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = c"";
    // SAFETY: fd is open for the duration of the call; params is a valid C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(err)
}

/// The module name of a `.ko` path, for log lines: `/x/virtio_net.ko` -> `virtio_net`.
pub fn short_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split('.').next().unwrap_or(base)
}

/// Loads every module in order. Failures are logged with path and errno and do not stop
/// the boot: a later step fails with its own message if the module mattered.
/// Returns the number of modules that failed.
pub fn load_all(paths: &[String]) -> usize {
    let mut loaded = Vec::new();
    let mut failed = 0;
    for path in paths {
        match load(path) {
            Ok(()) => loaded.push(short_name(path)),
            Err(e) => {
                failed += 1;
                crate::log!(
                    "warning: cannot load module {path}: {e} (errno {})",
                    e.raw_os_error().unwrap_or(0)
                );
            }
        }
    }
    crate::log!("loaded {} modules: {}", loaded.len(), loaded.join(" "));
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(
            short_name("/lib/modules/6.1.0/kernel/drivers/net/virtio_net.ko"),
            "virtio_net"
        );
        assert_eq!(short_name("/x/overlay.ko.xz"), "overlay");
        assert_eq!(short_name("plain"), "plain");
    }

    #[test]
    fn missing_file_is_an_error_with_errno() {
        let e = load("/nonexistent/fuse-init-test.ko").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
