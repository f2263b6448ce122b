//! Local booting under QEMU: finding QEMU and OVMF, probing whether KVM really runs a guest
//! (nested KVM can open /dev/kvm and then hang), and the command line for an image.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
/// OVMF firmware as Debian's `ovmf` package installs it.
pub const OVMF_CODE: &[&str] = &[
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
];

/// The QEMU binary, or an error naming the package to install.
pub fn qemu_binary() -> Result<PathBuf> {
    find_in_path(QEMU)
        .with_context(|| format!("{QEMU} not found: install the qemu-system-x86 package"))
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
    for code in OVMF_CODE {
        let code = Path::new(code);
        let vars = PathBuf::from(code.to_string_lossy().replace("CODE", "VARS"));
        if code.is_file() && vars.is_file() {
            return Ok((code.to_path_buf(), vars));
        }
    }
    bail!(
        "OVMF UEFI firmware not found ({}): install the ovmf package",
        OVMF_CODE.join(", ")
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

/// Does KVM really run a guest here? Boots the probe firmware under KVM with a deadline.
pub fn kvm_works() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    probe("kvm")
}

/// Run the probe firmware under `accel`; true when it exited as expected within 10 s.
pub fn probe(accel: &str) -> bool {
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code() == Some(3),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::info!("{accel}: the probe guest did not run; not using {accel}");
                return false;
            }
        }
    }
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

/// The QEMU command that boots an image: q35, OVMF, read-only virtio disk, virtio NIC with
/// user networking, serial console on stdout.
pub fn command(qemu: &Path, b: &BootSpec) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-machine",
        "q35",
        "-accel",
        b.accel,
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
        "if=virtio,format=raw,readonly=on,file={}",
        b.image.display()
    ));
    let fwd: String = b
        .forwards
        .iter()
        .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
        .collect();
    c.args([
        "-netdev",
        &format!("user,id=n0{fwd}"),
        "-device",
        "virtio-net-pci,netdev=n0",
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
        let qemu = qemu_binary()?;
        let (code, vars_template) = ovmf()?;
        let tmp = tempfile::tempdir().context("cannot create a temp dir")?;
        let vars = tmp.path().join("OVMF_VARS.fd");
        std::fs::copy(&vars_template, &vars)
            .with_context(|| format!("cannot copy {}", vars_template.display()))?;
        let qmp = tmp.path().join("qmp.sock");
        let accel = choose_accel(accel)?;
        let image = bootable_disk(&img.opened.raw, tmp.path())?;
        drop(img);
        let spec = BootSpec {
            image: &image,
            vars: &vars,
            code: &code,
            accel,
            memory_mib,
            forwards,
            config,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let drive = args.iter().find(|a| a.starts_with("if=virtio")).unwrap();
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
}
