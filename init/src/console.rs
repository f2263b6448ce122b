//! Console logging: every line goes to stderr (the console) as `fuse-init: ...`, unbuffered.

/// Prefix of every line init prints.
pub const PREFIX: &str = "fuse-init: ";

/// Writes one `fuse-init: <msg>` line to fd 2 with a single `write` so lines from init and
/// the app's own output do not interleave mid-line. Errors are ignored: there is nowhere
/// else to report them.
pub fn line(msg: &str) {
    let mut buf = Vec::with_capacity(PREFIX.len() + msg.len() + 1);
    buf.extend_from_slice(PREFIX.as_bytes());
    buf.extend_from_slice(msg.as_bytes());
    buf.push(b'\n');
    write_all(2, &buf);
}

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: libc::c_int, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for the given length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        buf = buf.get(n as usize..).unwrap_or(&[]);
    }
}

/// Makes fds 0, 1 and 2 refer to `/dev/console` when they are not open. The kernel normally
/// opens them for init, but does not when `/dev/console` was missing at that moment.
pub fn ensure_stdio() {
    let all_valid = (0..3).all(|fd| {
        // SAFETY: F_GETFD on any integer is harmless.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    });
    if all_valid {
        return;
    }
    // SAFETY: the path is a NUL-terminated C string literal.
    let fd = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return;
    }
    for target in 0..3 {
        // SAFETY: F_GETFD is harmless; dup2 onto a closed fd only makes it valid.
        unsafe {
            if libc::fcntl(target, libc::F_GETFD) < 0 {
                libc::dup2(fd, target);
            }
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer needed.
        unsafe { libc::close(fd) };
    }
}

/// `log!("fmt", args...)`: print one `fuse-init: ...` line on the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::line(&format!($($arg)*))
    };
}
