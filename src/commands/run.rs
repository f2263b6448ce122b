//! `fuse run`: boot an image under QEMU + OVMF, forward the app's port, wait for health,
//! relay the console, and exit with the app's exit code.

use crate::cli::RunArgs;
use crate::vm;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
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
    let launch = vm::Launch::new(img, &args.accel, args.memory, &forwards, cfg)?;
    // launch.tmp (the vars copy, the disk, the QMP socket) lives until the end of this scope.
    let (qmp, accel, qemu_bin, mut cmd) = (launch.qmp, launch.accel, launch.qemu, launch.cmd);
    // Its own process group: Ctrl-C reaches fuse only, which stops the VM gracefully.
    cmd.process_group(0);
    catch_stop_signals()?;
    tracing::info!(
        "booting {} {} ({}, {format}) with {accel}; app port {} on http://127.0.0.1:{}/",
        meta.name,
        meta.version,
        digest,
        meta.app.port,
        forwards[0].0
    );
    eprintln!(
        "fuse: app port {} forwarded to 127.0.0.1:{}",
        meta.app.port, forwards[0].0
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", qemu_bin.display()))?;
    let stdout = child.stdout.take().context("no QEMU stdout")?;
    let done = Arc::new(AtomicBool::new(false));
    {
        let (qmp, pid, done) = (qmp.clone(), child.id(), done.clone());
        std::thread::spawn(move || stop_watcher(qmp, pid, done));
    }

    if let Some(path) = meta.app.health_http.clone() {
        let url = format!("http://127.0.0.1:{}{}", forwards[0].0, path);
        std::thread::spawn(move || wait_healthy(&url));
    }
    let mut code_seen = None;
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        if let Some(c) = vm::exit_code_of(&text) {
            code_seen = Some(c);
        }
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    let status = child.wait().context("waiting for QEMU")?;
    done.store(true, Ordering::SeqCst);
    match code_seen {
        Some(c) => Ok(c),
        None if status.success() => {
            bail!("the VM powered off without the app's exit code on the console")
        }
        None => bail!("QEMU failed ({status})"),
    }
}

fn wait_healthy(url: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = agent.get(url).call() {
            if r.status().is_success() {
                eprintln!(
                    "fuse: healthy after {:.1}s: {url}",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("fuse: no healthy answer from {url} after 10 minutes");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

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
