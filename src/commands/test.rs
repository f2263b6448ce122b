//! `fuse test IMAGE`: the acceptance smoke test of a CI pipeline. Boots the image headless
//! (as `fuse run` does), waits for its `[health]` answer, reports the time to healthy and
//! its phases and checks the `boot` budget, then stops the VM at once (QMP `quit`, then a
//! kill); a VM that never answered gets the ACPI power button first.
//!
//! Exit codes: 0 healthy (within the boot budget), 1 never healthy within `--timeout` (the
//! console's last lines go to stderr), 3 healthy but over the boot budget, 2 an error.

use crate::budget::{self, Check, Limit};
use crate::cli::TestArgs;
use crate::disk::ImageMeta;
use crate::vm::{self, Health, Launch, Phases};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of the `fuse test --json` object.
pub const TEST_JSON_SCHEMA: u32 = 1;
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
    /// Where the time went: firmware, kernel, init (and its steps), app to healthy.
    pub phases: Phases,
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
    let url = format!("http://127.0.0.1:{port}{health}");
    let cfg = args.config.as_deref();
    let launch = Launch::new(img, &args.accel, args.memory, &forwards, cfg)?;
    tracing::info!(
        "testing {} {} ({digest}) with {}: waiting up to {}s for {url}",
        meta.name,
        meta.version,
        launch.accel,
        args.timeout
    );
    let mut vm = launch.start(false)?;
    let waited = vm.wait_healthy(&url, Duration::from_secs(args.timeout))?;
    let secs = vm.started.elapsed().as_secs_f64();
    let (time_to_healthy, failure, stop) = match waited {
        // The verdict is in: nothing of the guest is kept (its disk is read-only), so QEMU
        // quits at once instead of waiting for an orderly power-off.
        Health::Healthy(t) => (Some(t), None, vm.stop(false, Duration::ZERO)),
        Health::Exited(status) => {
            let why = match vm.console.exit_code() {
                Some(c) => format!(
                    "the app exited with code {c} after {secs:.1}s, before answering {health}"
                ),
                None => format!(
                    "the VM stopped ({status}) after {secs:.1}s, before the app answered {health}"
                ),
            };
            (None, Some(why), "exited")
        }
        Health::Panicked => (
            None,
            Some(format!(
                "the guest kernel panicked after {secs:.1}s, before the app answered {health}"
            )),
            vm.stop(false, Duration::ZERO),
        ),
        Health::TimedOut => (
            None,
            Some(format!(
                "no healthy answer from {health} within {}s",
                args.timeout
            )),
            vm.stop(true, POWERDOWN_GRACE),
        ),
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
        tail = vm.console.tail();
        let errs = vm.qemu_stderr();
        if !errs.is_empty() {
            tail.push("-- QEMU's stderr:".into());
            tail.extend(errs);
        }
    }
    let phases = vm.console.phases(time_to_healthy);
    tracing::debug!("boot phases: {}", phases.summary());
    let report = TestReport {
        schema: TEST_JSON_SCHEMA,
        result: result.into(),
        exit_code,
        image: image_path.display().to_string(),
        digest,
        name: meta.name.clone(),
        version: meta.version.clone(),
        accel: vm.accel.into(),
        health_url: url,
        healthy: time_to_healthy.is_some(),
        time_to_healthy_ms: ms,
        phases,
        timeout_s: args.timeout,
        budget: check,
        budget_source,
        stop: stop.into(),
        app_exit_code: vm.console.exit_code(),
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
