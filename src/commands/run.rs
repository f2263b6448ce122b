//! `fuse run`: boot an image under QEMU + OVMF, forward the app's port, wait for health,
//! relay the console, and exit with the app's exit code.

use crate::cli::RunArgs;
use crate::vm::{self, Health, Launch};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Parse `HOST:GUEST` (or a single `PORT` for both).
pub fn parse_publish(s: &str) -> Result<(u16, u16)> {
    let (h, g) = s.split_once(':').unwrap_or((s, s));
    let h: u16 = h
        .parse()
        .with_context(|| format!("bad host port in -p {s:?}"))?;
    let g: u16 = g
        .parse()
        .with_context(|| format!("bad guest port in -p {s:?}"))?;
    if h == 0 || g == 0 {
        bail!("port 0 in -p {s:?}");
    }
    Ok((h, g))
}

/// Ctrl-C (SIGINT) and SIGTERM received by `fuse run` so far.
static STOP_REQUESTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTS.fetch_add(1, Ordering::SeqCst);
}

/// Counts SIGINT and SIGTERM in [`STOP_REQUESTS`] instead of dying.
fn catch_stop_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic (async-signal-safe); the sigaction
        // struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                bail!("sigaction: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Turns stop requests into a graceful stop of the VM: the first presses the ACPI power
/// button over QMP (the init stops the app: SIGTERM, its stop timeout, SIGKILL, power
/// off); the second kills QEMU.
fn stop_watcher(qmp: PathBuf, qemu_pid: u32, done: Arc<AtomicBool>) {
    let mut handled = 0;
    while !done.load(Ordering::SeqCst) {
        let n = STOP_REQUESTS.load(Ordering::SeqCst);
        if n > handled {
            handled = n;
            if n == 1 {
                eprintln!("fuse: stopping the VM: ACPI power button (Ctrl-C again to kill it)");
                if let Err(e) = vm::qmp(&qmp, "system_powerdown") {
                    eprintln!("fuse: cannot press the power button: {e:#}; killing the VM");
                    // SAFETY: plain kill(2) of our own child.
                    unsafe { libc::kill(qemu_pid as libc::pid_t, libc::SIGTERM) };
                }
            } else {
                eprintln!("fuse: killing the VM");
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(qemu_pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(args: &RunArgs) -> Result<u8> {
    let img = vm::open_image(&args.image, args.config.as_deref())?;
    let (meta, digest, format) = (img.meta.clone(), img.digest.clone(), img.opened.format);
    let forwards: Vec<(u16, u16)> = if args.publish.is_empty() {
        vec![(vm::free_port()?, meta.app.port)]
    } else {
        args.publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_>>()?
    };
    let cfg = args.config.as_deref();
    let launch = Launch::new(img, &args.accel, args.memory, &forwards, cfg)?;
    warn_missing_isa(&meta, launch.accel);
    catch_stop_signals()?;
    tracing::info!(
        "booting {} {} ({digest}, {format}) with {}; app port {} on http://127.0.0.1:{}/",
        meta.name,
        meta.version,
        launch.accel,
        meta.app.port,
        forwards[0].0
    );
    eprintln!(
        "fuse: app port {} forwarded to 127.0.0.1:{}",
        meta.app.port, forwards[0].0
    );
    let mut vm = launch.start(true)?;
    let done = Arc::new(AtomicBool::new(false));
    {
        let (qmp, pid, done) = (vm.qmp_socket().to_path_buf(), vm.pid(), done.clone());
        std::thread::spawn(move || stop_watcher(qmp, pid, done));
    }
    if let Some(path) = meta.app.health_http.clone() {
        let url = format!("http://127.0.0.1:{}{}", forwards[0].0, path);
        match vm.wait_healthy(&url, Duration::from_secs(600))? {
            Health::Healthy(t) => {
                eprintln!("fuse: healthy after {:.1}s: {url}", t.as_secs_f64());
                tracing::debug!("boot phases: {}", vm.console.phases(Some(t)).summary());
            }
            Health::TimedOut => eprintln!("fuse: no healthy answer from {url} after 10 minutes"),
            Health::Panicked => {
                eprintln!("fuse: the guest kernel panicked; stopping the VM");
                vm.stop(false, Duration::ZERO);
            }
            Health::Exited(_) => {}
        }
    }
    let status = vm.wait()?;
    done.store(true, Ordering::SeqCst);
    match vm.console.exit_code() {
        Some(c) => Ok(c),
        None if vm.console.panicked() => bail!("the guest kernel panicked"),
        None if status.success() => {
            bail!("the VM powered off without the app's exit code on the console")
        }
        None => bail!("QEMU failed ({status})"),
    }
}

/// Warns when the guest's CPU lacks the x86-64 level the image's app needs (from its ELF
/// notes): the app would die with SIGILL. Under KVM the guest has the host's CPU; under
/// TCG, QEMU's `-cpu max` (QEMU 7.2 emulates up to x86-64-v3: AVX2, no AVX-512).
fn warn_missing_isa(meta: &crate::disk::ImageMeta, accel: &str) {
    let Some(level) = meta.app.x86_64_level else {
        return;
    };
    let (guest, what) = if accel == "kvm" {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        (
            crate::format::elf::host_x86_64_level(&cpuinfo),
            "this host's CPU (KVM)",
        )
    } else {
        (TCG_MAX_LEVEL, "QEMU's emulated CPU (TCG, -cpu max)")
    };
    if guest < level {
        tracing::warn!(
            "the app needs x86-64-v{level} (its ELF notes say so) and {what} is x86-64-v{guest}: it may die with SIGILL"
        );
    }
}

/// The x86-64 level of QEMU's `-cpu max` under TCG.
const TCG_MAX_LEVEL: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses() {
        assert_eq!(parse_publish("18080:8080").unwrap(), (18080, 8080));
        assert_eq!(parse_publish("80").unwrap(), (80, 80));
        assert!(parse_publish("x:1").is_err());
        assert!(parse_publish("0:1").is_err());
    }
}
