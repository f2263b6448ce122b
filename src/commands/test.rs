//! `fuse test IMAGE`: the acceptance smoke test of a CI pipeline. Boots the image headless
//! (as `fuse run` does), waits for its `[health]` answer, reports the time to healthy and
//! checks the `boot` budget, then stops the VM with the ACPI power button (QMP
//! `system_powerdown`; `quit`, then a kill, when the guest does not power off).
//!
//! Exit codes: 0 healthy (within the boot budget), 1 never healthy within `--timeout` (the
//! console's last lines go to stderr), 3 healthy but over the boot budget, 2 an error.

use crate::budget::{self, Check, Limit};
use crate::cli::TestArgs;
use crate::disk::ImageMeta;
use crate::vm;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Version of the `fuse test --json` object.
pub const TEST_JSON_SCHEMA: u32 = 1;
/// Console lines kept for the failure report.
const TAIL_LINES: usize = 40;
/// How long the guest gets to power off after the ACPI power button.
const POWERDOWN_GRACE: Duration = Duration::from_secs(10);

/// The result of `fuse test`, printed as JSON with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct TestReport {
    pub schema: u32,
    /// "pass", "fail" (never healthy) or "over-budget" (healthy, slower than `boot`).
    pub result: String,
    pub exit_code: u8,
    pub image: String,
    pub digest: String,
    pub name: String,
    pub version: String,
    /// "kvm" or "tcg".
    pub accel: String,
    /// The URL polled (GET, healthy on 2xx).
    pub health_url: String,
    pub healthy: bool,
    /// Milliseconds from QEMU's start to the first healthy answer.
    pub time_to_healthy_ms: Option<u64>,
    pub timeout_s: u64,
    /// The boot budget's check, when there is a budget.
    pub budget: Option<Check>,
    /// Where the boot budget came from: `--boot-budget` or the manifest file.
    pub budget_source: Option<String>,
    /// How the VM ended: "powerdown" (it powered off after the ACPI power button), "quit"
    /// (QEMU was told to quit), "killed", or "exited" (it stopped by itself, before health).
    pub stop: String,
    /// The app's exit code when it exited on its own (from the init's console line).
    pub app_exit_code: Option<u8>,
    /// Why the test failed.
    pub failure: Option<String>,
    /// The console's last lines, when the test failed.
    pub console_tail: Vec<String>,
}

/// The boot budget that applies: `--boot-budget`, else `--manifest`'s `[budget] boot`, else
/// the `[budget] boot` of the manifest the image was built from, when it is found beside
/// the image or in the current directory (its sha256 must equal the image's
/// `inputs.manifest_sha256`).
fn boot_budget(
    args: &TestArgs,
    image: &Path,
    meta: &ImageMeta,
) -> Result<(Option<Limit>, Option<String>)> {
    if let Some(text) = &args.boot_budget {
        let value = budget::parse_duration_ms(text).context("--boot-budget")?;
        return Ok((
            Some(Limit {
                value,
                text: text.clone(),
            }),
            Some("--boot-budget".into()),
        ));
    }
    if let Some(m) = &args.manifest {
        let (sha, b) = crate::manifest::load_budget(m)?;
        if sha != meta.inputs.manifest_sha256 {
            tracing::warn!(
                "{} is not the manifest {} was built from (its sha256 differs); using its [budget] anyway",
                m.display(),
                image.display()
            );
        }
        return Ok((b.boot, Some(m.display().to_string())));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = image.parent() {
        if let Some(up) = dir.parent() {
            candidates.push(up.join(crate::manifest::MANIFEST_FILE));
        }
        candidates.push(dir.join(crate::manifest::MANIFEST_FILE));
    }
    candidates.push(PathBuf::from(crate::manifest::MANIFEST_FILE));
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        match crate::manifest::load_budget(&c) {
            Ok((sha, b)) if sha == meta.inputs.manifest_sha256 => {
                tracing::info!("boot budget from {}", c.display());
                return Ok((b.boot, Some(c.display().to_string())));
            }
            Ok(_) => tracing::debug!("{} is not this image's manifest", c.display()),
            Err(e) => tracing::debug!("{}: {e:#}", c.display()),
        }
    }
    Ok((None, None))
}

/// The last lines of a stream, kept while it is read.
#[derive(Clone, Default)]
struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    exit_code: Arc<Mutex<Option<u8>>>,
}

impl Tail {
    fn push(&self, line: String) {
        if let Some(c) = vm::exit_code_of(&line) {
            *self.exit_code.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        }
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == TAIL_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn exit_code(&self) -> Option<u8> {
        *self.exit_code.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read `r` line by line into the tail (console lines at debug level) until EOF.
    fn follow(
        &self,
        r: impl Read + Send + 'static,
        label: &'static str,
    ) -> std::thread::JoinHandle<()> {
        let t = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                tracing::debug!("{label}| {text}");
                t.push(text);
            }
        })
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => return false,
        }
    }
}

/// Stop the VM: ACPI power button (when `graceful`), then QMP quit, then kill. How it ended.
fn stop(child: &mut Child, qmp: &Path, graceful: bool) -> &'static str {
    if graceful {
        match vm::qmp(qmp, "system_powerdown") {
            Ok(()) => {
                if wait_exit(child, POWERDOWN_GRACE) {
                    return "powerdown";
                }
                tracing::info!(
                    "the guest did not power off within {}s of the ACPI power button; stopping QEMU",
                    POWERDOWN_GRACE.as_secs()
                );
            }
            Err(e) => tracing::warn!("cannot press the ACPI power button: {e:#}"),
        }
    }
    if vm::qmp(qmp, "quit").is_ok() && wait_exit(child, Duration::from_secs(5)) {
        return "quit";
    }
    let _ = child.kill();
    let _ = child.wait();
    "killed"
}

/// Is `url` answering 2xx?
fn healthy(agent: &ureq::Agent, url: &str) -> bool {
    agent
        .get(url)
        .call()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

pub fn run(args: &TestArgs) -> Result<u8> {
    let img = vm::open_image(&args.image, args.config.as_deref())?;
    let (image_path, meta, digest) = (img.path.clone(), img.meta.clone(), img.digest.clone());
    let Some(health) = meta.app.health_http.clone() else {
        bail!(
            "{} has no health check: fuse test waits for [health] http, so add it to the manifest and build again",
            image_path.display()
        );
    };
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    let (limit, budget_source) = boot_budget(args, &image_path, &meta)?;

    let port = vm::free_port()?;
    let forwards = [(port, meta.app.port)];
    let cfg = args.config.as_deref();
    let launch = vm::Launch::new(img, &args.accel, args.memory, &forwards, cfg)?;
    // launch.tmp (the vars copy, the disk, the QMP socket) lives until the end of this scope.
    let (qmp, accel, qemu_bin, mut cmd) = (launch.qmp, launch.accel, launch.qemu, launch.cmd);
    cmd.stderr(Stdio::piped());
    // QEMU must not outlive fuse (killed CI job, Ctrl-C).
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let url = format!("http://127.0.0.1:{port}{health}");
    tracing::info!(
        "testing {} {} ({digest}) with {accel}: waiting up to {}s for {url}",
        meta.name,
        meta.version,
        args.timeout
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", qemu_bin.display()))?;
    let console = Tail::default();
    let qemu_err = Tail::default();
    let out_reader = console.follow(child.stdout.take().context("no QEMU stdout")?, "console");
    let err_reader = qemu_err.follow(child.stderr.take().context("no QEMU stderr")?, "qemu");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let timeout = Duration::from_secs(args.timeout);
    let mut time_to_healthy = None;
    let mut failure = None;
    let mut stopped = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = out_reader.join();
                let _ = err_reader.join();
                failure = Some(match console.exit_code() {
                    Some(c) => format!(
                        "the app exited with code {c} after {:.1}s, before answering {health}",
                        started.elapsed().as_secs_f64()
                    ),
                    None => format!(
                        "the VM stopped ({status}) after {:.1}s, before the app answered {health}",
                        started.elapsed().as_secs_f64()
                    ),
                });
                stopped = Some("exited");
                break;
            }
            Ok(None) => {}
            Err(e) => bail!("cannot wait for QEMU: {e}"),
        }
        if healthy(&agent, &url) {
            time_to_healthy = Some(started.elapsed());
            break;
        }
        if started.elapsed() >= timeout {
            failure = Some(format!(
                "no healthy answer from {health} within {}s",
                args.timeout
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let stop = match stopped {
        Some(s) => s,
        None => stop(&mut child, &qmp, failure.is_none()),
    };
    let ms = time_to_healthy.map(|d| d.as_millis() as u64);
    let check = ms.and_then(|ms| {
        budget::check_boot(
            &budget::Budget {
                boot: limit.clone(),
                ..Default::default()
            },
            ms,
        )
    });
    let (result, exit_code) = match (&failure, &check) {
        (Some(_), _) => ("fail", 1),
        (None, Some(c)) if c.exceeded => ("over-budget", 3),
        _ => ("pass", 0),
    };
    let mut tail = Vec::new();
    if failure.is_some() {
        tail = console.lines();
        let errs = qemu_err.lines();
        if !errs.is_empty() {
            tail.push("-- QEMU's stderr:".into());
            tail.extend(errs);
        }
    }
    let report = TestReport {
        schema: TEST_JSON_SCHEMA,
        result: result.into(),
        exit_code,
        image: image_path.display().to_string(),
        digest,
        name: meta.name.clone(),
        version: meta.version.clone(),
        accel: accel.into(),
        health_url: url,
        healthy: time_to_healthy.is_some(),
        time_to_healthy_ms: ms,
        timeout_s: args.timeout,
        budget: check,
        budget_source,
        stop: stop.into(),
        app_exit_code: console.exit_code(),
        failure,
        console_tail: tail,
    };
    print_report(&report, args.json)?;
    Ok(exit_code)
}

fn print_report(r: &TestReport, json: bool) -> Result<()> {
    if let Some(f) = &r.failure {
        eprintln!("fuse test: {} {} FAILED: {f}", r.name, r.version);
        if !r.console_tail.is_empty() {
            eprintln!(
                "fuse test: the console's last {} lines:",
                r.console_tail.len()
            );
            for l in &r.console_tail {
                eprintln!("  | {l}");
            }
        }
    }
    if let Some(c) = &r.budget {
        if c.exceeded {
            eprintln!("fuse test: {}", c.message());
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    match r.time_to_healthy_ms {
        Some(ms) => {
            println!("healthy after {:.1}s ({})", ms as f64 / 1000.0, r.accel);
            if let Some(c) = &r.budget {
                println!("{}", c.message());
            }
            println!("stopped: {}", r.stop);
        }
        None => println!("not healthy"),
    }
    Ok(())
}
