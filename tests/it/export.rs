//! Export: every format reads back to the raw image (qemu-img check and compare, the
//! system's tar, `fuse inspect` with the raw digest), two exports are byte-identical, and
//! the exports boot on their platforms' hardware (AHCI, NVMe, virtio-scsi; vmxnet3, e1000,
//! e1000e) with only the drivers of the devices present loaded.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `fuse export` of the shared image into `dir` (with the image.json copy beside it, as
/// `fuse build` leaves it); the path printed on the last line of stdout.
fn export(format: &str, dir: &Path) -> PathBuf {
    let b = shared_image();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&b.json, dir.join("hello-1.0.0.json")).unwrap();
    let out = fuse(
        &[
            "export",
            b.image.to_str().unwrap(),
            "--format",
            format,
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "fuse export --format {format} failed:\n{}",
        text(&out.stderr)
    );
    let path = PathBuf::from(text(&out.stdout).lines().last().unwrap_or("").trim());
    assert!(path.is_file(), "{} was not written", path.display());
    path
}

/// `qemu-img check` (when the format has a checker) and `qemu-img compare` against the raw.
fn qemu_img_agrees(raw: &Path, file: &Path, driver: &str, check: bool) {
    if check {
        let (ok, out) = run(Command::new("qemu-img")
            .args(["check", "-f", driver])
            .arg(file));
        assert!(
            ok && out.contains("No errors"),
            "qemu-img check {driver}: {out}"
        );
    }
    let (ok, out) = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", driver])
        .arg(raw)
        .arg(file));
    assert!(
        ok && out.contains("identical"),
        "qemu-img compare {driver}: {out}"
    );
}

#[test]
fn every_format_reads_back_to_the_raw_digest_and_exports_are_reproducible() {
    let b = shared_image();
    let root = tempfile::tempdir().unwrap();
    let tools = require_tool("qemu-img") && require_tool("tar");
    for (format, ext) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("ova", "ova"),
        ("vhd", "vhd"),
        ("gce", "tar.gz"),
        ("raw", "img"),
    ] {
        let first = export(format, &root.path().join(format).join("a"));
        let second = export(format, &root.path().join(format).join("b"));
        assert_eq!(
            first.file_name().unwrap().to_string_lossy(),
            format!("hello-1.0.0.{ext}")
        );
        assert!(
            std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
            "two {format} exports differ"
        );

        // fuse inspect reads the format and reports and verifies the raw digest.
        let out = fuse(&["inspect", "--json", first.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "inspect {format}: {}",
            text(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["digest"].as_str(), Some(b.digest.as_str()), "{format}");
        assert_eq!(j["verification"]["ok"], true, "{format}: {j}");
        let checked = j["verification"]["checked"].to_string();
        assert!(checked.contains("beside"), "{format}: {checked}");
        if format != "raw" {
            assert_eq!(j["wrapper"]["format"], format, "{j}");
        }
        let human = fuse(&["inspect", first.to_str().unwrap()], &[]);
        assert!(text(&human.stdout).contains(&b.digest), "{format}");
        if format == "vhd" {
            vhd_is_what_azure_takes(&std::fs::read(&first).unwrap());
        }

        if !tools {
            continue;
        }
        match format {
            "qcow2" => qemu_img_agrees(&b.image, &first, "qcow2", true),
            "vmdk" => qemu_img_agrees(&b.image, &first, "vmdk", true),
            "vhd" => {
                // qemu-img has no checker for VHD; compare reads the footer's size and
                // wants the padding after the image to be zeros.
                qemu_img_agrees(&b.image, &first, "vpc", false)
            }
            "raw" => qemu_img_agrees(&b.image, &first, "raw", false),
            "ova" => {
                // The system's tar reads it; the descriptor comes first; the disk is a
                // stream-optimized VMDK qemu-img checks and reads to the same bytes.
                let x = root.path().join("ova-x");
                std::fs::create_dir_all(&x).unwrap();
                let (ok, list) = run(Command::new("tar").arg("-tf").arg(&first));
                assert!(ok, "{list}");
                assert_eq!(
                    list.lines().collect::<Vec<_>>(),
                    [
                        "hello-1.0.0.ovf",
                        "hello-1.0.0.mf",
                        "hello-1.0.0-disk1.vmdk"
                    ]
                );
                let (ok, out) = run(Command::new("tar").arg("-xf").arg(&first).arg("-C").arg(&x));
                assert!(ok, "{out}");
                let ovf = std::fs::read_to_string(x.join("hello-1.0.0.ovf")).unwrap();
                assert!(ovf.contains(r#"vmw:key="firmware" vmw:value="efi""#));
                // VirtualBox's own machine settings, with its firmware setting.
                let vbox = &ovf[ovf.find("<vbox:Machine ").expect("no vbox:Machine")..];
                assert!(vbox.contains(r#"<Firmware type="EFI"/>"#), "{ovf}");
                assert!(ovf.contains(r#"xmlns:vbox="http://www.virtualbox.org/ovf/machine""#));
                assert!(ovf.contains(&b.digest));
                let mf = std::fs::read_to_string(x.join("hello-1.0.0.mf")).unwrap();
                let vmdk = x.join("hello-1.0.0-disk1.vmdk");
                assert!(mf.contains(&format!(
                    "SHA256(hello-1.0.0-disk1.vmdk)= {}",
                    &sha256_file(&vmdk)["sha256:".len()..]
                )));
                let (_, info) = run(Command::new("qemu-img").arg("info").arg(&vmdk));
                assert!(info.contains("streamOptimized"), "{info}");
                qemu_img_agrees(&b.image, &vmdk, "vmdk", true);
            }
            "gce" => {
                let x = root.path().join("gce-x");
                std::fs::create_dir_all(&x).unwrap();
                let (ok, list) = run(Command::new("tar").arg("-tzvf").arg(&first));
                assert!(ok, "{list}");
                assert_eq!(list.lines().count(), 1, "{list}");
                assert!(list.contains("disk.raw"), "{list}");
                let (ok, out) = run(Command::new("tar")
                    .arg("-xzf")
                    .arg(&first)
                    .arg("-C")
                    .arg(&x));
                assert!(ok, "{out}");
                // disk.raw is the image then zeros to a whole GiB (sparse in the tar).
                let disk_raw = x.join("disk.raw");
                let len = std::fs::metadata(&disk_raw).unwrap().len();
                assert!(
                    len > 0 && len.is_multiple_of(1 << 30),
                    "disk.raw is {len} bytes"
                );
                assert!(list.contains(&len.to_string()), "{list}");
                qemu_img_agrees(&b.image, &disk_raw, "raw", false);
                std::fs::remove_file(&disk_raw).unwrap();
                assert!(std::fs::metadata(&first).unwrap().len() < 20 << 20);
                // GNU tar headers ("ustar  \0" magic: oldgnu), as GCE requires.
                let mut tar = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(&first).unwrap()),
                    &mut tar,
                )
                .unwrap();
                assert_eq!(&tar[257..265], b"ustar  \0");
            }
            _ => unreachable!(),
        }
    }
    // A changed byte inside a wrapper is an error, never another digest passed off.
    let q = export("qcow2", &root.path().join("corrupt"));
    let mut bytes = std::fs::read(&q).unwrap();
    let at = bytes.len() - 70_000;
    bytes[at] ^= 0x55;
    std::fs::write(&q, &bytes).unwrap();
    let out = fuse(&["inspect", q.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

/// A fixed VHD Azure uploads: at least 20 MiB of data, a whole MiB, then a 512-byte footer
/// whose checksum (one's complement of the byte sum without its own field), disk type
/// (2, fixed) and current size agree with the file.
fn vhd_is_what_azure_takes(v: &[u8]) {
    assert!(v.len() >= (20 << 20) + 512, "VHD of {} bytes", v.len());
    let data = v.len() - 512;
    assert_eq!(data % (1 << 20), 0, "VHD data of {data} bytes");
    let f = &v[data..];
    assert_eq!(&f[..8], b"conectix");
    let sum = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &b)| a.wrapping_add(b as u32));
    assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
    assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
    assert_eq!(
        u64::from_be_bytes(f[48..56].try_into().unwrap()),
        data as u64
    );
}

/// The console's summary of the device modules the init loaded.
fn loaded_modules(console: &str) -> String {
    console
        .lines()
        .find(|l| l.contains("device modules for the devices present"))
        .unwrap_or_else(|| panic!("no device module summary on the console:\n{console}"))
        .to_string()
}

fn has_module(line: &str, name: &str) -> bool {
    line.rsplit(": ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .any(|m| m == name || m.starts_with(&format!("{name}(")))
}

/// Boot, expect the app's HTTP answer, return (body, the loaded-modules line).
fn boot_and_answer(disk: &[String], nic: &str, extra: &[String]) -> (String, String) {
    let mut vm = Vm::boot_devices(disk, nic, 8080, extra);
    let body = vm.get_until_ok("/", Duration::from_secs(400));
    let console = vm.console();
    let body = body.unwrap_or_else(|| panic!("no HTTP answer; console:\n{console}"));
    // The init prints the summary once the driver being loaded at the app's start is in.
    let t = std::time::Instant::now();
    let mut console = console;
    while !console.contains("device modules for the devices present")
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
        console = vm.console();
    }
    (body, loaded_modules(&console))
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn qcow2_boots_on_virtio_blk() {
    let dir = tempfile::tempdir().unwrap();
    let q = export("qcow2", dir.path());
    let disk = args(&[
        "-drive",
        &format!("if=virtio,format=qcow2,readonly=on,file={}", q.display()),
    ]);
    let (body, mods) = boot_and_answer(&disk, "virtio-net-pci", &[]);
    assert!(body.starts_with("hello, world from uid 1000"), "{body}");
    for m in ["virtio_blk", "virtio_net"] {
        assert!(has_module(&mods, m), "{m}: {mods}");
    }
    for m in ["e1000e", "vmxnet3", "nvme", "virtio_scsi", "vmw_pvscsi"] {
        assert!(
            !has_module(&mods, m),
            "{m} loaded without its device: {mods}"
        );
    }
}

#[test]
fn vmdk_boots_on_ahci_with_vmxnet3_and_reads_a_config_disk_on_pvscsi() {
    let dir = tempfile::tempdir().unwrap();
    let v = export("vmdk", dir.path());
    // The boot-time config on a second disk behind VMware's paravirtual SCSI controller
    // (OVMF cannot boot from pvscsi; the init's driver must see the disk to read it).
    let env = dir.path().join("vmware.env");
    std::fs::write(&env, "GREETING=pvscsi\n").unwrap();
    let cfg = dir.path().join("config.img");
    let out = fuse(
        &[
            "config-disk",
            env.to_str().unwrap(),
            "-o",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let disk = args(&[
        "-drive",
        &format!("if=none,id=d0,format=vmdk,snapshot=on,file={}", v.display()),
        "-device",
        "ide-hd,drive=d0,bus=ide.0",
    ]);
    let extra = args(&[
        "-device",
        "pvscsi,id=pv0",
        "-drive",
        &format!(
            "if=none,id=d1,format=raw,readonly=on,file={}",
            cfg.display()
        ),
        "-device",
        "scsi-hd,drive=d1,bus=pv0.0",
    ]);
    let (body, mods) = boot_and_answer(&disk, "vmxnet3", &extra);
    assert!(body.starts_with("hello, pvscsi from uid 1000"), "{body}");
    for m in ["ahci", "vmxnet3", "vmw_pvscsi", "sd_mod"] {
        assert!(has_module(&mods, m), "{m}: {mods}");
    }
    for m in ["virtio_blk", "virtio_net", "e1000", "e1000e", "nvme"] {
        assert!(
            !has_module(&mods, m),
            "{m} loaded without its device: {mods}"
        );
    }
}

#[test]
fn vhd_boots_on_nvme_with_e1000e() {
    let dir = tempfile::tempdir().unwrap();
    let v = export("vhd", dir.path());
    let disk = args(&[
        "-drive",
        &format!("if=none,id=d0,format=vpc,snapshot=on,file={}", v.display()),
        "-device",
        "nvme,drive=d0,serial=fuse0",
    ]);
    let (body, mods) = boot_and_answer(&disk, "e1000e", &[]);
    assert!(body.starts_with("hello, world from uid 1000"), "{body}");
    assert!(has_module(&mods, "e1000e"), "{mods}");
    for m in ["virtio_blk", "virtio_net", "e1000", "vmxnet3"] {
        assert!(
            !has_module(&mods, m),
            "{m} loaded without its device: {mods}"
        );
    }
}

#[test]
fn raw_boots_on_ahci_with_e1000() {
    let dir = tempfile::tempdir().unwrap();
    let r = export("raw", dir.path());
    let disk = args(&[
        "-drive",
        &format!("if=none,id=d0,format=raw,snapshot=on,file={}", r.display()),
        "-device",
        "ide-hd,drive=d0,bus=ide.0",
    ]);
    let (body, mods) = boot_and_answer(&disk, "e1000", &[]);
    assert!(body.starts_with("hello, world from uid 1000"), "{body}");
    for m in ["ahci", "e1000"] {
        assert!(has_module(&mods, m), "{m}: {mods}");
    }
    assert!(!has_module(&mods, "e1000e"), "{mods}");
}

#[test]
fn gce_disk_raw_boots_on_virtio_scsi() {
    let dir = tempfile::tempdir().unwrap();
    let g = export("gce", dir.path());
    let raw = fuse::export::gce::read(&std::fs::read(&g).unwrap()).unwrap();
    let disk_raw = dir.path().join("disk.raw");
    std::fs::write(&disk_raw, raw).unwrap();
    let disk = args(&[
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-drive",
        &format!(
            "if=none,id=d0,format=raw,readonly=on,file={}",
            disk_raw.display()
        ),
        "-device",
        "scsi-hd,drive=d0,bus=scsi0.0",
    ]);
    let (body, mods) = boot_and_answer(&disk, "virtio-net-pci", &[]);
    assert!(body.starts_with("hello, world from uid 1000"), "{body}");
    for m in ["virtio_scsi", "sd_mod", "virtio_net"] {
        assert!(has_module(&mods, m), "{m}: {mods}");
    }
    assert!(!has_module(&mods, "virtio_blk"), "{mods}");
}
