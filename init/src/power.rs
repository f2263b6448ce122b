//! Ending the machine: terminate every process, sync, unmount, power off. Never returns.

use std::time::{Duration, Instant};

use crate::log;

/// How long processes get between SIGTERM and SIGKILL at shutdown.
const GRACE: Duration = Duration::from_secs(3);

/// Reaps every exited child without blocking; returns false once there are no children.
fn reap_some() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return false; // ECHILD: nobody left
    }
}

/// Waits up to `limit` for all children to exit, reaping them. True when none are left.
fn wait_children(limit: Duration) -> bool {
    let start = Instant::now();
    while reap_some() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGTERM to every process, a grace period, then SIGKILL to what is left.
pub fn terminate_all() {
    // SAFETY: kill(-1, ...) from PID 1 signals every process except init itself.
    let sent = unsafe { libc::kill(-1, libc::SIGTERM) } == 0;
    if sent && !wait_children(GRACE) {
        log!(
            "processes still running {} s after SIGTERM; sending SIGKILL",
            GRACE.as_secs()
        );
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        wait_children(Duration::from_secs(2));
    }
}

/// Syncs and powers off. If the kernel refuses (it should not for PID 1), halts; never
/// returns and never exits (PID 1 exiting would panic the kernel).
pub fn poweroff() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    let e = std::io::Error::last_os_error();
    log!("power off failed: {e}; halting");
    // SAFETY: as above.
    unsafe { libc::reboot(libc::RB_HALT_SYSTEM) };
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Orderly end after the app exited: stop the rest, sync, unmount, power off.
pub fn shutdown() -> ! {
    terminate_all();
    // SAFETY: no arguments.
    unsafe { libc::sync() };
    let failed = crate::mounts::unmount_all();
    if failed > 0 {
        log!("{failed} file systems stayed mounted (synced)");
    }
    log!("powering off");
    poweroff()
}

/// Prints `fuse-init: FATAL: <msg>` and powers off.
pub fn fatal(msg: &str) -> ! {
    log!("FATAL: {msg}");
    log!("powering off");
    poweroff()
}
