//! Kernel module loading with `finit_module(2)`: the always-loaded modules in the order
//! boot.json lists them, and device drivers when a present device's sysfs `modalias`
//! matches one of the driver's alias patterns (what udev and modprobe do on a full system).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::DeviceModule;

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

/// fnmatch(3) without flags, as modprobe matches aliases: `*` any run, `?` any byte,
/// `[abc]`, `[a-z]`, `[!x]` / `[^x]` a class, `\\x` a literal x.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, string index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        // an unclosed '[' is a literal
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the class starting at `pattern[at] == '['`: (matched, index
/// after the class), or `None` when the class is not closed.
fn class(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = at + 1;
    let negate = matches!(pattern.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let x = *pattern.get(j)?;
        if x == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if pattern.get(j + 1) == Some(&b'-') && pattern.get(j + 2).is_some_and(|&e| e != b']') {
            let hi = pattern[j + 2];
            if x <= c && c <= hi {
                matched = true;
            }
            j += 3;
        } else {
            if x == c {
                matched = true;
            }
            j += 1;
        }
    }
}

/// Indices into `mods` of the modules whose alias patterns match one of `modaliases`.
pub fn matching(mods: &[DeviceModule], modaliases: &[String]) -> BTreeSet<usize> {
    mods.iter()
        .enumerate()
        .filter(|(_, m)| {
            m.aliases.iter().any(|a| {
                modaliases
                    .iter()
                    .any(|d| glob_match(a.as_bytes(), d.as_bytes()))
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// `roots` with their dependencies (by name, transitively), less `skip` (already loaded).
pub fn closure(
    mods: &[DeviceModule],
    roots: &BTreeSet<usize>,
    skip: &BTreeSet<usize>,
) -> BTreeSet<usize> {
    let by_name: BTreeMap<&str, usize> = mods
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut out = BTreeSet::new();
    let mut todo: Vec<usize> = roots.iter().copied().collect();
    while let Some(i) = todo.pop() {
        if skip.contains(&i) || !out.insert(i) {
            continue;
        }
        for d in &mods[i].depends {
            if let Some(&j) = by_name.get(d.as_str()) {
                todo.push(j);
            }
        }
    }
    out
}

/// Indices into `mods` of the modules the `modaliases` call for, with their dependencies,
/// less `skip`.
#[cfg(test)]
pub fn wanted(
    mods: &[DeviceModule],
    modaliases: &[String],
    skip: &BTreeSet<usize>,
) -> BTreeSet<usize> {
    closure(mods, &matching(mods, modaliases), skip)
}

/// Loads device drivers as devices appear: each [`poll`](DeviceLoader::poll) reads the
/// `modalias` of devices not seen before (`/sys/bus/*/devices/*`) and loads what they need.
pub struct DeviceLoader {
    mods: Vec<DeviceModule>,
    loaded: BTreeSet<usize>,
    /// Modules some seen device's modalias matched.
    matched: BTreeSet<usize>,
    seen_devices: BTreeSet<String>,
    /// Modules loaded, in order, for the summary line (slow ones with their time).
    pub names: Vec<String>,
    /// Time spent in finit_module.
    pub load_time: Duration,
}

impl DeviceLoader {
    pub fn new(mods: Vec<DeviceModule>) -> DeviceLoader {
        DeviceLoader {
            mods,
            loaded: BTreeSet::new(),
            matched: BTreeSet::new(),
            seen_devices: BTreeSet::new(),
            names: Vec::new(),
            load_time: Duration::ZERO,
        }
    }

    /// Reads the modaliases of devices not seen before and matches them.
    fn scan(&mut self) {
        let Ok(buses) = std::fs::read_dir("/sys/bus") else {
            return;
        };
        let mut new = Vec::new();
        for bus in buses.flatten() {
            let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) else {
                continue;
            };
            for dev in devs.flatten() {
                let key = format!(
                    "{}/{}",
                    bus.file_name().to_string_lossy(),
                    dev.file_name().to_string_lossy()
                );
                if !self.seen_devices.insert(key) {
                    continue;
                }
                if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                    let a = a.trim();
                    if !a.is_empty() {
                        new.push(a.to_string());
                    }
                }
            }
        }
        if !new.is_empty() {
            self.matched.extend(matching(&self.mods, &new));
        }
    }

    /// The first module (in plan order) some seen device calls for, not loaded yet.
    fn next_wanted(&self) -> Option<usize> {
        closure(&self.mods, &self.matched, &self.loaded)
            .into_iter()
            .next()
    }

    /// Whether a device seen so far still waits for its driver.
    pub fn pending(&self) -> bool {
        self.next_wanted().is_some()
    }

    /// Loads, one at a time, the first module (in plan order) that the devices seen call
    /// for, and looks for new devices after each: a bus driver (virtio_pci, hv_vmbus)
    /// reveals the devices its own drivers serve, which then come before slower drivers
    /// of other controllers. Returns how many modules were loaded.
    pub fn poll(&mut self) -> usize {
        self.poll_until(&|| false)
    }

    /// [`poll`](Self::poll), returning before the next module once `stop()` says so.
    pub fn poll_until(&mut self, stop: &dyn Fn() -> bool) -> usize {
        self.scan();
        let mut n = 0;
        while let Some(i) = self.next_wanted() {
            if stop() {
                break;
            }
            let m = &self.mods[i];
            self.loaded.insert(i);
            let t = Instant::now();
            match load(&m.path) {
                Ok(()) => {
                    let ms = t.elapsed().as_millis();
                    self.names.push(if ms >= 50 {
                        format!("{}({ms}ms)", m.name)
                    } else {
                        m.name.clone()
                    });
                    n += 1;
                }
                Err(e) => crate::log!(
                    "warning: cannot load module {}: {e} (errno {})",
                    m.path,
                    e.raw_os_error().unwrap_or(0)
                ),
            }
            self.load_time += t.elapsed();
            self.scan();
        }
        n
    }
}

/// A thread that keeps polling for devices (disks behind a SCSI scan, VMBus channels,
/// and whatever bus drivers reveal) until [`stop`](Hotplug::stop).
pub struct Hotplug {
    stop: Arc<AtomicBool>,
    /// Set after a poll that left no seen device without its driver.
    settled: Arc<AtomicBool>,
    loader: Arc<Mutex<DeviceLoader>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Hotplug {
    /// Polls in the background, at once and then every `interval`: the init goes on
    /// (waiting for its partitions) while drivers load and probe their hardware. Without a
    /// thread, polls once here.
    pub fn start(loader: DeviceLoader, interval: Duration) -> Hotplug {
        let stop = Arc::new(AtomicBool::new(false));
        let settled = Arc::new(AtomicBool::new(false));
        let loader = Arc::new(Mutex::new(loader));
        let (flag, done, l) = (stop.clone(), settled.clone(), loader.clone());
        let handle = std::thread::Builder::new()
            .name("hotplug".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(mut l) = l.lock() {
                        l.poll_until(&|| flag.load(Ordering::Relaxed));
                        done.store(!l.pending(), Ordering::Relaxed);
                    }
                    std::thread::sleep(interval);
                }
            });
        let handle = match handle {
            Ok(h) => Some(h),
            Err(e) => {
                crate::log!("warning: cannot start the device polling thread ({e}); polling once");
                if let Ok(mut l) = loader.lock() {
                    l.poll();
                }
                settled.store(true, Ordering::Relaxed);
                None
            }
        };
        Hotplug {
            stop,
            settled,
            loader,
            handle,
        }
    }

    /// Waits (at most `limit`) until every device seen has its driver loaded: a disk
    /// behind a controller whose driver was still to load is then there to be found.
    /// Returns whether that point was reached.
    pub fn wait_settled(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while !self.settled.load(Ordering::Relaxed) {
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Tells the poller to end after the module it is loading, without waiting.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops polling after the module being loaded (PID 1 is single-threaded again), and
    /// returns the loader for its summary and for [`finish_in_background`].
    pub fn stop(self) -> Option<DeviceLoader> {
        self.request_stop();
        if let Some(h) = self.handle {
            let _ = h.join();
        }
        let m = Arc::try_unwrap(self.loader).ok()?;
        m.into_inner().ok()
    }
}

/// Loads the drivers still wanted by devices present (a SATA controller the app does not
/// use, a second NIC) in a child process at the lowest priority, so that the app, started
/// meanwhile, does not wait for them. The child logs its summary and exits; PID 1 reaps it
/// like any zombie. Call with no thread running (it forks).
pub fn finish_in_background(mut loader: DeviceLoader) {
    if !loader.pending() {
        return;
    }
    // SAFETY: fork in a single-threaded process; the child runs ordinary code and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        crate::log!(
            "warning: cannot fork the device loader ({}); drivers left unloaded",
            io::Error::last_os_error()
        );
        return;
    }
    if pid > 0 {
        return;
    }
    // SAFETY: plain setpriority on this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    let before = loader.names.len();
    let t = Instant::now();
    while loader.pending() {
        if loader.poll() == 0 {
            break;
        }
    }
    let names = &loader.names[before..];
    crate::log!(
        "loaded {} more device modules after the app started ({} ms): {}",
        names.len(),
        t.elapsed().as_millis(),
        names.join(" ")
    );
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(0) }
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
    fn globs_match_like_fnmatch() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m(
            "pci:v000015ADd000007B0sv*sd*bc*sc*i*",
            "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00"
        ));
        assert!(!m(
            "pci:v000015ADd000007B0sv*sd*bc*sc*i*",
            "pci:v000015ADd000007C0sv000015ADsd000007C0bc01sc07i00"
        ));
        // ahci matches by class: mass storage (01), SATA (06), AHCI (01)
        assert!(m(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(m("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!m("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(m("acpi*:QEMU0002:*", "acpi:QEMU0002:"));
        assert!(m("scsi:t-0x0[0-7]*", "scsi:t-0x05"));
        assert!(!m("scsi:t-0x0[!0-7]*", "scsi:t-0x05"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("*", "") && m("**x", "x") && !m("x", ""));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("[", "[") && m("a[]]b", "a]b"));
    }

    fn dm(name: &str, deps: &[&str], aliases: &[&str]) -> DeviceModule {
        DeviceModule {
            name: name.into(),
            path: format!("/m/{name}.ko"),
            depends: deps.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wanted_modules_come_with_their_dependencies_only() {
        let mods = vec![
            dm("libata", &[], &[]),
            dm("libahci", &["libata"], &[]),
            dm(
                "ahci",
                &["libahci", "libata"],
                &["pci:v*d*sv*sd*bc01sc06i01*"],
            ),
            dm("vmxnet3", &[], &["pci:v000015ADd000007B0sv*sd*bc*sc*i*"]),
            dm("e1000", &[], &["pci:v00008086d0000100Esv*sd*bc*sc*i*"]),
            dm("sd_mod", &["scsi_mod_builtin"], &["scsi:t-0x00*"]),
        ];
        let devs = vec![
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01".to_string(),
            "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00".to_string(),
        ];
        let w = wanted(&mods, &devs, &BTreeSet::new());
        assert_eq!(w.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        // once loaded, not wanted again; a disk appearing later brings sd_mod
        let skip: BTreeSet<usize> = [0, 1, 2, 3].into();
        let mut devs2 = devs.clone();
        devs2.push("scsi:t-0x00".into());
        assert_eq!(
            wanted(&mods, &devs2, &skip).into_iter().collect::<Vec<_>>(),
            vec![5]
        );
    }

    #[test]
    fn missing_file_is_an_error_with_errno() {
        let e = load("/nonexistent/fuse-init-test.ko").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn poll_until_stops_before_the_next_module_and_pending_says_what_is_left() {
        // Two wanted drivers (a device's modalias matched "b", which needs "a"); their
        // files do not exist, so each load fails quickly and counts as done.
        let mods = vec![dm("a", &[], &[]), dm("b", &["a"], &["fuse-test:nothing*"])];
        let mut l = DeviceLoader::new(mods);
        l.matched.insert(1);
        assert!(l.pending());
        assert_eq!(l.poll_until(&|| true), 0);
        assert!(
            l.loaded.is_empty(),
            "a stop asked before the first module loads none"
        );
        assert!(l.pending());
        let asked = std::cell::Cell::new(0);
        l.poll_until(&|| {
            asked.set(asked.get() + 1);
            asked.get() > 1
        });
        assert_eq!(
            l.loaded.iter().copied().collect::<Vec<_>>(),
            vec![0],
            "the dependency first, then the stop"
        );
        assert!(l.pending());
        l.poll();
        assert_eq!(l.loaded.len(), 2);
        assert!(!l.pending());
    }
}
