//! Thin, checked wrappers over the few raw system calls init needs (mount, mkdir, ...).

use std::ffi::CString;
use std::io;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// Converts text to a C string, failing (not panicking) on an interior NUL.
pub fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

/// Turns a `-1`-on-error return value into an `io::Result` carrying errno.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`. `source`/`data` may be empty. The error names what was mounted where.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let c_source = cstring(source)?;
    let c_target = cstring(target)?;
    let c_fstype = cstring(fstype)?;
    let c_data = cstring(data)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                c_data.as_ptr().cast()
            },
        )
    };
    check(ret).map(|_| ()).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENODEV) {
            format!(" (the kernel does not know file system type {fstype:?}: module not loaded?)")
        } else {
            String::new()
        };
        anyhow!("mount {fstype} {source} on {target}: {e}{hint}")
    })
}

/// `mkdir -p` with the given mode for the directories it creates.
pub fn mkdir_p(path: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if Path::new(path).is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating directory {path}"))
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
}

/// `N` random bytes from `getrandom(GRND_INSECURE)`: never blocks and, unlike reading
/// `/dev/urandom` early in boot, never stalls to gather jitter entropy. Good enough for a
/// DHCP transaction id, not for keys.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    const GRND_INSECURE: libc::c_uint = 0x0004;
    let mut buf = [0u8; N];
    // SAFETY: buf is writable for N bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, GRND_INSECURE) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != N {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short getrandom",
        ));
    }
    Ok(buf)
}

/// Milliseconds since the kernel's clock started (CLOCK_BOOTTIME), 0 if unreadable.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
