//! Local booting under QEMU, shared by `fuse run` and `fuse test`: finding QEMU and OVMF,
//! deciding about KVM (host facts, a short probe, remembered per host boot), the image's
//! disk, the command line, the console (its lines, the app's exit code, boot phases),
//! health polling and stopping the VM over QMP.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::arch::Arch;

pub const QEMU: &str = "qemu-system-x86_64";
/// OVMF firmware as Debian's `ovmf` package installs it, the first found used. The 2 MiB
/// build reaches the boot entry 0.8 s sooner than the 4 MiB one under TCG (3.8 against
/// 4.6 s, four alternating boots each, docs/image-format.md); neither enforces Secure Boot.
pub const OVMF_CODE: &[&str] = &[
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
];
/// AAVMF, the arm64 build of the same firmware, as Debian's `qemu-efi-aarch64` installs it.
pub const AAVMF_CODE: &[&str] = &["/usr/share/AAVMF/AAVMF_CODE.fd"];

/// The QEMU binary, or an error naming the package to install.
pub fn qemu_binary() -> Result<PathBuf> {
    qemu_binary_for(Arch::Amd64)
}

/// The QEMU binary that boots `arch`'s images, or an error naming the package to install.
pub fn qemu_binary_for(arch: Arch) -> Result<PathBuf> {
    let package = match arch {
        Arch::Amd64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    };
    find_in_path(arch.qemu())
        .with_context(|| format!("{} not found: install the {package} package", arch.qemu()))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// OVMF code and vars templates (the vars file must be copied before use: QEMU writes it).
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    firmware(Arch::Amd64)
}

/// The UEFI firmware's code and vars templates for `arch` (OVMF, AAVMF).
pub fn firmware(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let (candidates, package) = match arch {
        Arch::Amd64 => (OVMF_CODE, "ovmf"),
        Arch::Arm64 => (AAVMF_CODE, "qemu-efi-aarch64"),
    };
    for code in candidates {
        let code = Path::new(code);
        let vars = PathBuf::from(code.to_string_lossy().replace("CODE", "VARS"));
        if code.is_file() && vars.is_file() {
            return Ok((code.to_path_buf(), vars));
        }
    }
    bail!(
        "UEFI firmware for {arch} not found ({}): install the {package} package",
        candidates.join(", ")
    )
}

/// A 64 KiB flash "firmware" whose reset vector runs `fninit` from flash (as OVMF's SEC
/// phase does), then writes 1 to the isa-debug-exit port: QEMU exits with status
/// (1 << 1) | 1 = 3 once the guest really executed it. Under nested KVM, /dev/kvm opens and
/// a guest running from RAM works, but executing from flash fails with "KVM internal
/// error ... emulation failure" and the VM stops: this probe sees exactly that.
fn probe_firmware() -> Vec<u8> {
    let mut fw = vec![0xffu8; 64 * 1024];
    // fwait; fninit ; mov al, 1 ; out 0xf4, al ; hlt ; jmp $-1
    let code = [0x9b, 0xdb, 0xe3, 0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];
    let reset = fw.len() - 16;
    fw[reset..reset + code.len()].copy_from_slice(&code);
    fw
}

/// How long the KVM probe guest gets: a guest that really runs under KVM exits in a few
/// milliseconds after QEMU's start; nested KVM hangs instead.
const PROBE_DEADLINE: Duration = Duration::from_millis(700);

/// Does KVM really run a guest here? Decided from what the host says (the CPU's vmx/svm
/// flag, a read-write `/dev/kvm`), then a probe guest bounded by [`PROBE_DEADLINE`]; the
/// answer is remembered for this boot of the host (keyed by its `boot_id`) in the cache
/// directory, so only the first `fuse run`/`fuse test` after a host boot pays the probe.
pub fn kvm_works() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu_has_virtualization(&cpuinfo) {
        return false;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let memo = kvm_memo_path();
    if let Some(p) = &memo {
        match std::fs::read_to_string(p).as_deref() {
            Ok("kvm\n") => return true,
            Ok("tcg\n") => return false,
            _ => {}
        }
    }
    let works = probe_within("kvm", PROBE_DEADLINE);
    if let Some(p) = &memo {
        let text = if works { "kvm\n" } else { "tcg\n" };
        if let Err(e) = crate::util::fs::write_atomic(p, text.as_bytes()) {
            tracing::debug!("cannot remember the KVM answer in {}: {e:#}", p.display());
        }
    }
    works
}

/// Does `/proc/cpuinfo` list hardware virtualization (Intel VMX or AMD SVM)?
pub fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// `<cache>/host/kvm-<boot_id>`: the KVM answer for this boot of the host.
fn kvm_memo_path() -> Option<PathBuf> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let dir = crate::store::default_cache_dir().ok()?.join("host");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(format!("kvm-{id}")))
}

/// Run the probe firmware under `accel`; true when it exited as expected within 10 s.
pub fn probe(accel: &str) -> bool {
    probe_within(accel, Duration::from_secs(10))
}

/// Run the probe firmware under `accel`; true when it exited as expected within `limit`.
fn probe_within(accel: &str, limit: Duration) -> bool {
    let Ok(qemu) = qemu_binary() else {
        return false;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let fw = dir.path().join("probe.fd");
    if std::fs::write(&fw, probe_firmware()).is_err() {
        return false;
    }
    let child = Command::new(qemu)
        .args([
            "-accel",
            accel,
            "-machine",
            "q35",
            "-m",
            "32",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
        ])
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            fw.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code() == Some(3),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::info!("{accel}: the probe guest did not run; not using {accel}");
                return false;
            }
        }
    }
}

/// Resolve "auto" | "kvm" | "tcg" to an accelerator for a guest of `arch`: KVM runs only
/// guests of the host's own architecture.
pub fn choose_accel_for(wanted: &str, arch: Arch) -> Result<&'static str> {
    if arch != Arch::host() {
        return match wanted {
            "auto" | "tcg" => Ok("tcg"),
            "kvm" => bail!(
                "KVM cannot run an {arch} guest on this {} host (use --accel tcg)",
                Arch::host()
            ),
            other => bail!("unknown accelerator {other:?} (expected auto, kvm or tcg)"),
        };
    }
    choose_accel(wanted)
}

/// Resolve "auto" | "kvm" | "tcg" to an accelerator.
pub fn choose_accel(wanted: &str) -> Result<&'static str> {
    match wanted {
        "kvm" => Ok("kvm"),
        "tcg" => Ok("tcg"),
        "auto" => Ok(if kvm_works() { "kvm" } else { "tcg" }),
        other => bail!("unknown accelerator {other:?} (expected auto, kvm or tcg)"),
    }
}

/// Options for one boot of an image.
pub struct BootSpec<'a> {
    pub arch: Arch,
    pub image: &'a Path,
    /// A writable copy of OVMF_VARS.
    pub vars: &'a Path,
    pub code: &'a Path,
    pub accel: &'a str,
    pub memory_mib: u32,
    /// (host port, guest port) TCP forwards on 127.0.0.1.
    pub forwards: &'a [(u16, u16)],
    /// Env file passed as fw_cfg opt/fuse/env.
    pub config: Option<&'a Path>,
}

/// The guest CPU model for `accel`: the host's own under KVM, QEMU's most capable model
/// under TCG. Both have what cloud CPUs have (x86-64-v3: AVX2, FMA, BMI2, MOVBE), which
/// current wheels and JITs require; QEMU's default model (qemu64) is x86-64-v1.
pub fn cpu_model(accel: &str) -> &'static str {
    if accel == "kvm" {
        "host"
    } else {
        "max"
    }
}

/// The QEMU command that boots an image: q35, OVMF, read-only virtio disk (the first and
/// only boot entry), virtio NIC without an option ROM on user networking, serial console
/// on stdout.
pub fn command(qemu: &Path, b: &BootSpec) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-machine",
        match b.arch {
            Arch::Amd64 => "q35",
            // arm64: QEMU's generic machine (PCIe, PL011 serial, fw_cfg, ACPI power button)
            Arch::Arm64 => "virt",
        },
        "-accel",
        b.accel,
        "-cpu",
        cpu_model(b.accel),
        "-m",
        &b.memory_mib.to_string(),
        "-smp",
        "1",
    ]);
    c.args([
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    c.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        b.code.display()
    ));
    c.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        b.vars.display()
    ));
    c.arg("-drive").arg(format!(
        "if=none,id=disk0,format=raw,readonly=on,file={}",
        b.image.display()
    ));
    c.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
    let fwd: String = b
        .forwards
        .iter()
        .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
        .collect();
    c.args([
        "-netdev",
        &format!("user,id=n0{fwd}"),
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]);
    if let Some(cfg) = b.config {
        c.arg("-fw_cfg")
            .arg(format!("name=opt/fuse/env,file={}", cfg.display()));
    }
    c
}

/// The QEMU arguments of a QMP control socket at `socket` (QEMU listens; it does not wait
/// for a client before starting the guest).
pub fn qmp_args(socket: &Path) -> [String; 2] {
    [
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", socket.display()),
    ]
}

/// Run one QMP command (e.g. `system_powerdown`: the ACPI power button; `quit`) on a QEMU's
/// control socket: greeting, `qmp_capabilities`, the command; events read meanwhile are
/// skipped. Errors name the socket and QEMU's answer.
pub fn qmp(socket: &Path, command: &str) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to QMP socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    // The answer to the last command: the first line with "return" or "error".
    let mut answer = |what: &str| -> Result<()> {
        for _ in 0..64 {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                // QEMU quit while answering (`quit` does that).
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("QMP {}: not JSON: {line:?}", socket.display()))?;
            if v.get("QMP").is_some() || v.get("return").is_some() {
                return Ok(());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {what} failed: {e}");
            }
        }
        bail!("QMP {what}: no answer from {}", socket.display())
    };
    answer("greeting")?;
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    answer("qmp_capabilities")?;
    s.write_all(format!("{{\"execute\":{}}}\n", serde_json::Value::from(command)).as_bytes())?;
    answer(command)
}

/// A free TCP port on `host` (bound then released).
pub fn free_port_on(host: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))
        .with_context(|| format!("cannot bind a port on {host}"))?;
    Ok(l.local_addr()?.port())
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The file QEMU boots: `raw` (the verified raw disk) written to `tmp/disk.raw` (created
/// new, mode 0600). Never the user's file, which could change after it was verified or be a
/// wrapper QEMU reads differently from fuse (a VMDK parent, a VHD sized by CHS), and never
/// a path QEMU would parse options out of (a comma in `file=`).
pub fn bootable_disk(raw: &[u8], tmp: &Path) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = tmp.join("disk.raw");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("cannot create {}", p.display()))?;
    f.write_all(raw)
        .and_then(|_| f.flush())
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

/// An image as `fuse run` and `fuse test` take it: a file of any format or a store reference,
/// read once and verified as `fuse inspect` verifies it; `opened.raw` holds exactly the
/// bytes that were verified, and only those are booted ([`Launch`]).
pub struct OpenedImage {
    pub path: PathBuf,
    pub opened: crate::export::Opened,
    /// image.json, verified against the disk (the UKI's boot plan, the layers).
    pub meta: crate::disk::ImageMeta,
    /// `sha256:` of the raw disk.
    pub digest: String,
}

/// Open IMAGE (a file, else a reference into the local image store) and verify it (a
/// failure is a [`crate::inspect::VerificationFailed`] error); `config`, when given, must be
/// readable.
pub fn open_image(image: &Path, config: Option<&Path>) -> Result<OpenedImage> {
    let path = if image.is_file() {
        image.to_path_buf()
    } else {
        crate::image_store::resolve_image_ref(&image.to_string_lossy())?
    };
    if let Some(cfg) = config {
        std::fs::metadata(cfg)
            .with_context(|| format!("cannot read config file {}", cfg.display()))?;
    }
    let (opened, img) = crate::inspect::load(&path)?;
    let meta = img.verified(&path.display().to_string())?.clone();
    Ok(OpenedImage {
        path,
        opened,
        meta,
        digest: img.digest,
    })
}

/// A QEMU command ready to start, with what it needs in a private temp dir: a copy of
/// OVMF's vars, the verified raw disk QEMU reads ([`bootable_disk`]) and a QMP socket. stdin is null and
/// the console (stdout) piped.
pub struct Launch {
    pub tmp: tempfile::TempDir,
    pub qmp: PathBuf,
    pub accel: &'static str,
    pub qemu: PathBuf,
    pub cmd: Command,
}

impl Launch {
    pub fn new(
        img: OpenedImage,
        accel: &str,
        memory_mib: u32,
        forwards: &[(u16, u16)],
        config: Option<&Path>,
    ) -> Result<Launch> {
        let arch = img.meta.arch;
        let qemu = qemu_binary_for(arch)?;
        let (code, vars_template) = firmware(arch)?;
        let tmp = tempfile::tempdir().context("cannot create a temp dir")?;
        let vars = tmp.path().join("OVMF_VARS.fd");
        std::fs::copy(&vars_template, &vars)
            .with_context(|| format!("cannot copy {}", vars_template.display()))?;
        let qmp = tmp.path().join("qmp.sock");
        let accel = choose_accel_for(accel, arch)?;
        let image = bootable_disk(&img.opened.raw, tmp.path())?;
        drop(img);
        // Without --config the init is told so (an empty env over fw_cfg) instead of
        // searching the machine's disks for a config disk, which waits for every
        // controller's driver (q35's SATA controller: 0.4 s under TCG).
        let no_config = tmp.path().join("no-config.env");
        let config = match config {
            Some(c) => c,
            None => {
                std::fs::write(&no_config, b"")
                    .with_context(|| format!("cannot write {}", no_config.display()))?;
                no_config.as_path()
            }
        };
        let spec = BootSpec {
            arch,
            image: &image,
            vars: &vars,
            code: &code,
            accel,
            memory_mib,
            forwards,
            config: Some(config),
        };
        let mut cmd = command(&qemu, &spec);
        cmd.args(qmp_args(&qmp))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        Ok(Launch {
            tmp,
            qmp,
            accel,
            qemu,
            cmd,
        })
    }

    /// Start QEMU (its own process group, killed if fuse dies); the console is read from
    /// now on, and copied to stdout as it arrives when `echo` (`fuse run`).
    pub fn start(self, echo: bool) -> Result<Vm> {
        let Launch {
            tmp,
            qmp,
            accel,
            qemu,
            mut cmd,
        } = self;
        cmd.stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches fuse only, which stops the VM.
            .process_group(0);
        // QEMU must not outlive fuse (killed CI job, second Ctrl-C).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", qemu.display()))?;
        let console = Console::default();
        let qemu_err = Console::default();
        let out = child.stdout.take().context("no QEMU stdout")?;
        let err = child.stderr.take().context("no QEMU stderr")?;
        let readers = vec![
            follow(out, console.clone(), started, echo, "console"),
            follow(err, qemu_err.clone(), started, false, "qemu"),
        ];
        Ok(Vm {
            child,
            qmp,
            accel,
            started,
            console,
            readers,
            qemu_err,
            _tmp: tmp,
        })
    }
}

/// Console lines kept for a failure report.
const TAIL_LINES: usize = 40;

/// Boot phases in milliseconds, from the console: when each init line arrived (host clock,
/// from QEMU's start) and the guest's own clocks the init prints.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Phases {
    /// QEMU's start to OVMF starting the boot entry (the UKI).
    pub firmware_ms: Option<u64>,
    /// The UKI's start (EFI stub, decompression, kernel, initramfs) to the init's first line.
    pub kernel_ms: Option<u64>,
    /// The init's first line to the app's start.
    pub init_ms: Option<u64>,
    /// The init's own steps (modules, layers, network, config), as it timed them.
    pub init_steps: BTreeMap<String, u64>,
    /// The app's start to its first healthy answer.
    pub app_ms: Option<u64>,
    /// QEMU's start to the first healthy answer.
    pub total_ms: Option<u64>,
}

impl Phases {
    /// One line: `firmware 5.1s, kernel 3.2s, init 0.9s (modules 0.3s, ...), app 1.2s`.
    pub fn summary(&self) -> String {
        let s = |ms: Option<u64>| match ms {
            Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
            None => "?".into(),
        };
        let steps: Vec<String> = self
            .init_steps
            .iter()
            .map(|(k, v)| format!("{k} {}", s(Some(*v))))
            .collect();
        format!(
            "firmware {}, kernel {}, init {} ({}), app {}",
            s(self.firmware_ms),
            s(self.kernel_ms),
            s(self.init_ms),
            steps.join(", "),
            s(self.app_ms)
        )
    }
}

#[derive(Default)]
struct ConsoleState {
    tail: VecDeque<String>,
    exit_code: Option<u8>,
    /// When OVMF said it starts the boot entry (the UKI): the end of the firmware.
    firmware_done: Option<Duration>,
    /// When the init's first line arrived and the kernel uptime it printed.
    init_seen: Option<(Duration, u64)>,
    app_started: Option<Duration>,
    init_steps: BTreeMap<String, u64>,
    panicked: bool,
}

/// What the console said so far: its last lines, the app's exit code and the phase marks.
#[derive(Clone, Default)]
pub struct Console {
    state: Arc<Mutex<ConsoleState>>,
}

impl Console {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One console line that arrived `at` after QEMU's start.
    fn push(&self, line: &str, at: Duration) {
        let mut st = self.lock();
        if let Some(c) = exit_code_of(line) {
            st.exit_code = Some(c);
        }
        if line.contains("BdsDxe: starting ") {
            st.firmware_done.get_or_insert(at);
        }
        if let Some(up) = init_uptime_ms(line) {
            st.init_seen.get_or_insert((at, up));
        }
        if let Some(steps) = init_steps(line) {
            st.init_steps = steps;
        }
        if line.contains("fuse-init: starting ") && line.contains(" as uid ") {
            st.app_started.get_or_insert(at);
        }
        if line.contains("Kernel panic - not syncing") {
            st.panicked = true;
        }
        if st.tail.len() == TAIL_LINES {
            st.tail.pop_front();
        }
        st.tail.push_back(line.to_string());
    }

    /// The last lines (at most 40).
    pub fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    /// The app's exit code, once the init reported it.
    pub fn exit_code(&self) -> Option<u8> {
        self.lock().exit_code
    }

    /// Did the guest kernel panic (e.g. dm-verity found a corrupted block)?
    pub fn panicked(&self) -> bool {
        self.lock().panicked
    }

    /// The phases so far; `healthy`: QEMU's start to the first healthy answer.
    pub fn phases(&self, healthy: Option<Duration>) -> Phases {
        let st = self.lock();
        let ms = |d: Duration| d.as_millis() as u64;
        let mut p = Phases {
            init_steps: st.init_steps.clone(),
            total_ms: healthy.map(ms),
            ..Default::default()
        };
        if let Some((at, up)) = st.init_seen {
            // The firmware ends where OVMF starts the UKI (its `BdsDxe: starting` line).
            // Without that line, the kernel's clock: it starts with the kernel on a CPU
            // without an invariant TSC, but counts from the machine's reset with one
            // (`-cpu max`/`host`), so it is used only when it is the shorter.
            let fw = match st.firmware_done {
                Some(f) => ms(f),
                None => ms(at).saturating_sub(up),
            };
            p.firmware_ms = Some(fw);
            p.kernel_ms = Some(ms(at).saturating_sub(fw));
            p.init_ms = st.app_started.map(|a| ms(a.saturating_sub(at)));
        }
        if let (Some(a), Some(h)) = (st.app_started, healthy) {
            p.app_ms = Some(ms(h.saturating_sub(a)));
        }
        p
    }
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

/// The kernel uptime (ms) in the init's first line: `fuse-init: starting (fuse-init X)
/// at N ms of kernel uptime`.
fn init_uptime_ms(line: &str) -> Option<u64> {
    let rest = line.split("fuse-init: starting (fuse-init ").nth(1)?;
    let rest = rest.split(") at ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The init's step times: `fuse-init: boot steps (ms): modules 12, layers 30, ...`.
fn init_steps(line: &str) -> Option<BTreeMap<String, u64>> {
    let rest = line.split("fuse-init: boot steps (ms): ").nth(1)?;
    let mut out = BTreeMap::new();
    for item in rest.split(',') {
        let mut w = item.split_whitespace();
        let (Some(k), Some(v)) = (w.next(), w.next()) else {
            continue;
        };
        if let Ok(v) = v.parse() {
            out.insert(k.to_string(), v);
        }
        if out.len() >= 16 {
            break;
        }
    }
    Some(out)
}

/// How waiting for health ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Answered 2xx this long after QEMU's start.
    Healthy(Duration),
    /// QEMU exited (the guest powered off, or was killed) before an answer.
    Exited(String),
    /// The guest kernel panicked: nothing will answer.
    Panicked,
    TimedOut,
}

/// How long one health request may take: short, so that a request sent while the guest
/// boots (QEMU accepts the connection before the app listens) does not hold up the next.
const HEALTH_ATTEMPT: Duration = Duration::from_millis(800);
/// The pause between health requests.
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// One local VM: QEMU with its console read into a [`Console`] and a QMP socket.
pub struct Vm {
    child: Child,
    qmp: PathBuf,
    pub accel: &'static str,
    pub started: Instant,
    pub console: Console,
    readers: Vec<std::thread::JoinHandle<()>>,
    qemu_err: Console,
    /// The launch's scratch directory (vars copy, disk, QMP socket): kept while QEMU runs.
    _tmp: tempfile::TempDir,
}

impl Vm {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp
    }

    /// QEMU's own stderr lines (the last 40).
    pub fn qemu_stderr(&self) -> Vec<String> {
        self.qemu_err.tail()
    }

    /// Poll `url` (GET, healthy on 2xx) with short attempts until it answers, QEMU exits,
    /// the guest kernel panics, or `timeout` (from QEMU's start) passes.
    pub fn wait_healthy(&mut self, url: &str, timeout: Duration) -> Result<Health> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HEALTH_ATTEMPT))
            .http_status_as_error(false)
            .build()
            .into();
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for QEMU")? {
                self.join_readers();
                return Ok(Health::Exited(status.to_string()));
            }
            if self.console.panicked() {
                return Ok(Health::Panicked);
            }
            if agent
                .get(url)
                .call()
                .map(|r| r.status().is_success())
                .unwrap_or(false)
            {
                return Ok(Health::Healthy(self.started.elapsed()));
            }
            if self.started.elapsed() >= timeout {
                return Ok(Health::TimedOut);
            }
            std::thread::sleep(HEALTH_POLL);
        }
    }

    /// Stop the VM: the ACPI power button when `graceful` (the guest gets `grace` to power
    /// off), then QMP `quit`, then a kill. How it ended: "powerdown", "quit" or "killed".
    pub fn stop(&mut self, graceful: bool, grace: Duration) -> &'static str {
        if graceful {
            match qmp(&self.qmp, "system_powerdown") {
                Ok(()) => {
                    if self.wait_exit(grace) {
                        return "powerdown";
                    }
                    tracing::info!(
                        "the guest did not power off within {}s of the ACPI power button; stopping QEMU",
                        grace.as_secs()
                    );
                }
                Err(e) => tracing::warn!("cannot press the ACPI power button: {e:#}"),
            }
        }
        if qmp(&self.qmp, "quit").is_ok() && self.wait_exit(Duration::from_secs(5)) {
            return "quit";
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
        "killed"
    }

    /// Wait for QEMU to exit and for its console to be read to the end.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let st = self.child.wait().context("waiting for QEMU")?;
        self.join_readers();
        Ok(st)
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    self.join_readers();
                    return true;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return false,
            }
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Read `r` line by line into `console` (each line timed from `started`), copying it to
/// stdout when `echo`, until EOF.
fn follow(
    r: impl Read + Send + 'static,
    console: Console,
    started: Instant,
    echo: bool,
    label: &'static str,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        for line in BufReader::new(r).split(b'\n') {
            let Ok(line) = line else { break };
            let at = started.elapsed();
            if echo {
                let _ = out.write_all(&line);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if !echo {
                tracing::debug!("{label}| {text}");
            }
            console.push(&text, at);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 3 of issue 25: `run`/`test` handed QEMU the user's file (a VMDK whose parent
    /// QEMU would read, a file that could change after the check). What QEMU gets is a
    /// private raw copy of exactly the verified bytes, and an image that fails verification
    /// is refused before anything is launched.
    #[test]
    fn run_and_test_boot_a_private_copy_of_the_verified_bytes() {
        use crate::export::{self, Format};
        use crate::inspect::fixture;
        use std::os::unix::fs::PermissionsExt;
        if !crate::testutil::require(
            qemu_binary().is_ok() && ovmf().is_ok(),
            "QEMU or OVMF is not installed",
        ) {
            return;
        }
        let f = fixture::build(b"app", |_| {});
        let dir = tempfile::tempdir().unwrap();
        // A comma in the name: QEMU would parse what follows as -drive options.
        let path = dir.path().join("hello,format=qcow2.vmdk");
        let vmdk = export::export(Format::Vmdk, &f.disk, "hello-1.0.0").unwrap();
        std::fs::write(&path, &vmdk).unwrap();
        let img = open_image(&path, None).unwrap();
        assert_eq!(img.opened.format, Format::Vmdk);
        let launch = Launch::new(img, "tcg", 256, &[], None).unwrap();
        // The user's file changes after the check: what boots does not.
        std::fs::write(&path, b"changed").unwrap();
        let args: Vec<String> = launch
            .cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let drive = args.iter().find(|a| a.contains("id=disk0")).unwrap();
        assert!(drive.contains(",format=raw,"), "{drive}");
        let file = Path::new(drive.split("file=").nth(1).unwrap());
        assert!(file.starts_with(launch.tmp.path()), "{drive}");
        assert_eq!(std::fs::read(file).unwrap(), f.disk);
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // An image whose image.json differs from what boots (the kernel command line in
        // the UKI) fails verification: open_image refuses it.
        let bad = fixture::build(b"app", |m| m.kernel.cmdline = "init=/bin/sh".into());
        let bad_path = dir.path().join("bad.img");
        std::fs::write(&bad_path, &bad.disk).unwrap();
        let e = open_image(&bad_path, None).err().unwrap();
        assert!(
            e.downcast_ref::<crate::inspect::VerificationFailed>()
                .is_some(),
            "{e:#}"
        );
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

    #[test]
    fn phases_come_from_console_arrival_times_and_the_inits_clocks() {
        let c = Console::default();
        let s = Duration::from_millis;
        c.push(
            "fuse-init: starting (fuse-init 0.1.0) at 3000 ms of kernel uptime",
            s(8000),
        );
        assert_eq!(c.phases(None).firmware_ms, Some(5000));
        c.push(
            "BdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)",
            s(4000),
        );
        c.push(
            "fuse-init: boot steps (ms): modules 120, layers 40, network 300, config 5",
            s(8500),
        );
        c.push("fuse-init: starting /app/hello as uid 1000 gid 1000 in /app (600 ms after fuse-init started)", s(8600));
        let p = c.phases(Some(s(9100)));
        assert_eq!(p.firmware_ms, Some(4000));
        assert_eq!(p.kernel_ms, Some(4000));
        assert_eq!(p.init_ms, Some(600));
        assert_eq!(p.app_ms, Some(500));
        assert_eq!(p.total_ms, Some(9100));
        assert_eq!(p.init_steps["network"], 300);
        assert_eq!(p.init_steps.len(), 4);
        assert!(!c.panicked());
        c.push(
            "[ 9.1] Kernel panic - not syncing: dm-verity device corrupted",
            s(9200),
        );
        assert!(c.panicked());
    }

    #[test]
    fn virtualization_flags_are_read_from_cpuinfo() {
        assert!(cpu_has_virtualization(
            "processor : 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpu_has_virtualization("flags : svm lm\n"));
        assert!(!cpu_has_virtualization("flags : fpu sse hypervisor\n"));
    }

    #[test]
    fn probe_firmware_runs_under_tcg() {
        if !crate::testutil::require(qemu_binary().is_ok(), &format!("{QEMU} is not installed")) {
            return;
        }
        // The probe must really detect a running guest, or KVM detection means nothing.
        assert!(
            probe("tcg"),
            "the probe firmware did not exit with status 3 under TCG"
        );
    }
}
