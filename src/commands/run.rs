//! `fuse run`: boot an image under QEMU + OVMF, forward the app's port, wait for health,
//! relay the console, and exit with the app's exit code.

use crate::cli::RunArgs;
use crate::vm::{self, BootSpec};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
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

/// The app's exit code from the init's last words on the console: its own code, or for an
/// app ended by a signal 128 + the signal's number (as a shell reports it).
pub fn exit_code_of(line: &str) -> Option<u8> {
    let number = |rest: &str| rest.split_whitespace().next()?.parse::<i64>().ok();
    if let Some(rest) = line.split("fuse-init: app exited with code ").nth(1) {
        return number(rest).map(|c| c.clamp(0, 255) as u8);
    }
    let rest = line.split("fuse-init: app killed by signal ").nth(1)?;
    number(rest).map(|s| (128 + s).clamp(0, 255) as u8)
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
    let image_path = if args.image.is_file() {
        args.image.clone()
    } else {
        crate::image_store::resolve_image_ref(&args.image.to_string_lossy())?
    };
    if let Some(cfg) = &args.config {
        std::fs::metadata(cfg)
            .with_context(|| format!("cannot read config file {}", cfg.display()))?;
    }
    let tmp = tempfile::tempdir().context("cannot create a temp dir")?;
    // Verified once, booted from a private copy of the verified bytes.
    let boot = crate::inspect::boot_disk(&image_path, tmp.path())?;
    let (meta, digest, format) = (&boot.meta, &boot.digest, boot.format);
    let qemu_bin = vm::qemu_binary()?;
    let (code, vars_template) = vm::ovmf()?;
    let vars = tmp.path().join("OVMF_VARS.fd");
    std::fs::copy(&vars_template, &vars)
        .with_context(|| format!("cannot copy {}", vars_template.display()))?;
    let qmp = tmp.path().join("qmp.sock");
    let forwards: Vec<(u16, u16)> = if args.publish.is_empty() {
        vec![(vm::free_port()?, meta.app.port)]
    } else {
        args.publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_>>()?
    };
    let accel = vm::choose_accel(&args.accel)?;
    let (image, disk_format) = (boot.path.clone(), boot.driver);
    let spec = BootSpec {
        image: &image,
        disk_format,
        vars: &vars,
        code: &code,
        accel,
        memory_mib: args.memory,
        forwards: &forwards,
        config: args.config.as_deref(),
    };
    let mut cmd = vm::command(&qemu_bin, &spec);
    // Its own process group: Ctrl-C reaches fuse only, which stops the VM gracefully.
    cmd.args(vm::qmp_args(&qmp));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0);
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
        if let Some(c) = exit_code_of(&text) {
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

    #[test]
    fn exit_code_is_read_from_console() {
        assert_eq!(
            exit_code_of("[  3.1] fuse-init: app exited with code 3"),
            Some(3)
        );
        assert_eq!(exit_code_of("fuse-init: app exited with code 0\r"), Some(0));
        assert_eq!(exit_code_of("hello"), None);
        assert_eq!(
            exit_code_of("fuse-init: app killed by signal 15 (SIGTERM)"),
            Some(143)
        );
    }
}
