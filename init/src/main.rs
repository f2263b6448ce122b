//! fuse-init: PID 1 inside a fuse image. Mounts the layers as one overlay root, brings up
//! the network, runs the app unprivileged, forwards signals, reaps zombies, and powers the
//! machine off (printing the app's exit status) when the app exits. Any failure prints
//! `fuse-init: FATAL: ...` and powers off: PID 1 must never return or panic.

mod app;
mod block;
mod button;
mod cloud;
mod config;
mod configdisk;
mod console;
#[cfg(test)]
mod fuzz;
mod modules;
mod mounts;
mod net;
mod power;
mod sys;
mod userconfig;
mod verity;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long to wait for the layer partitions to appear once the drivers are loaded.
const PARTITION_WAIT: Duration = Duration::from_secs(20);
/// How often to look for them.
const POLL: Duration = Duration::from_millis(50);
/// How often to look for new devices that need a driver, until the app starts.
const HOTPLUG_POLL: Duration = Duration::from_millis(50);
/// How long the config disk search waits for the drivers of the devices present.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

fn main() {
    console::ensure_stdio();
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        console::line("must run as PID 1 (the init of a fuse image); refusing to run");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != 1 {
            // A forked child must not power the machine off.
            console::line(&format!("panic in child: {info}"));
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(127) };
        }
        power::fatal(&format!("panic: {info}"));
    }));
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    match run() {
        Ok(()) => power::shutdown(),
        Err(e) => power::fatal(&format!("{e:#}")),
    }
}

/// Every step up to the app's exit. Returns when the app has exited.
fn run() -> Result<()> {
    let started = Instant::now();
    let mask = app::block_signals()?;
    // The kernel's clock at this line, and the host's arrival time of it, split firmware
    // from kernel time (`fuse test --json` phases).
    log!(
        "starting (fuse-init {}) at {} ms of kernel uptime",
        env!("CARGO_PKG_VERSION"),
        sys::uptime_ms()
    );

    mounts::early().context("mounting /proc, /sys, /dev, /run")?;
    console::ensure_stdio();
    log!("mounted /proc /sys /dev /run");

    let cfg = config::load()?;
    log!(
        "{}: layers {}, {} modules, app {}",
        config::BOOT_JSON,
        cfg.layers.join(" "),
        cfg.modules.len(),
        cfg.app.argv.first().map(String::as_str).unwrap_or("")
    );
    let t = Instant::now();
    modules::load_all(&cfg.modules);
    let hotplug = modules::Hotplug::start(
        modules::DeviceLoader::new(cfg.device_modules.clone()),
        HOTPLUG_POLL,
    );
    let modules_ms = t.elapsed().as_millis();
    // DHCP needs only the NIC's driver: it runs while the layers are set up.
    let network = net::start(&cfg.hostname);

    let t = Instant::now();

    let parts = verity::find_partitions(&cfg.layers, &cfg.verity, PARTITION_WAIT, POLL)?;
    for layer in &cfg.layers {
        if let Some(p) = parts.get(layer) {
            log!(
                "layer {layer}: {} ({}, GUID {}), verified on access",
                p.dev.display(),
                p.majmin,
                cfg.verity[layer].partuuid
            );
        }
    }
    let devices = verity::setup_all(&cfg.layers, &cfg.verity, &parts)?;
    mounts::root(&cfg.layers, &cfg.fs_type, &devices)?;
    log!(
        "mounted {} layers ({}) as the overlay root {}",
        cfg.layers.len(),
        cfg.fs_type,
        mounts::NEWROOT
    );
    mounts::api_in_newroot().context("mounting API file systems in the new root")?;
    log!("mounted /proc /sys /dev /tmp /run in the new root");
    for dir in &cfg.app.writable {
        let copied = mounts::writable(dir, cfg.app.uid, cfg.app.gid)
            .with_context(|| format!("making {dir} writable (app.writable)"))?;
        log!(
            "{dir}: writable tmpfs for uid {} ({copied} entries from the image)",
            cfg.app.uid
        );
    }

    let layers_ms = t.elapsed().as_millis();

    let t = Instant::now();
    net::finish(network, mounts::NEWROOT);
    let network_ms = t.elapsed().as_millis();
    // After the network: the last source is the cloud's user data.
    let t = Instant::now();
    let overrides = userconfig::load(&|| {
        if !hotplug.wait_settled(SETTLE_WAIT) {
            log!(
                "device drivers still loading after {} s; looking for the config disk anyway",
                SETTLE_WAIT.as_secs()
            );
        }
    });
    let config_ms = t.elapsed().as_millis();
    let env = app::build_env(&cfg.app.workdir, &cfg.app.env, &overrides);
    log!(
        "environment: {} variables ({})",
        env.len(),
        env.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    log!(
        "boot steps (ms): modules {modules_ms}, layers {layers_ms}, network {network_ms}, config {config_ms}"
    );
    let prepared = app::Prepared::new(mounts::NEWROOT, &cfg.app, &env)?;
    let argv0 = cfg.app.argv.first().map(String::as_str).unwrap_or("");
    log!(
        "starting {argv0} as uid {} gid {} in {} ({} ms after fuse-init started)",
        cfg.app.uid,
        cfg.app.gid,
        cfg.app.workdir,
        started.elapsed().as_millis()
    );
    // The device poller ends after the driver it is loading; the app does not wait for
    // that. Forking beside it is safe: the child makes only system calls and allocations
    // (glibc's fork leaves malloc usable), and the poller holds nothing else it touches.
    hotplug.request_stop();
    let pid = app::spawn(&prepared)?;
    if let Some(l) = hotplug.stop() {
        log!(
            "loaded {} of {} device modules for the devices present ({} ms): {}{}",
            l.names.len(),
            cfg.device_modules.len(),
            l.load_time.as_millis(),
            l.names.join(" "),
            if l.pending() {
                " (more after the app started)"
            } else {
                ""
            }
        );
        // Drivers no device on the app's path needed (a SATA controller, a second NIC)
        // load in a child process at the lowest priority.
        modules::finish_in_background(l);
    }
    let stop_timeout = Duration::from_secs(u64::from(cfg.app.stop_timeout));
    let exit = app::supervise(pid, &mask, app::stop_signal_of(&cfg.app), stop_timeout)?;
    log!("app {exit}");
    Ok(())
}
