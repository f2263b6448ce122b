//! The kernel layer: vmlinuz and the closure of the modules the init needs, ordered so that
//! every module comes after the modules it depends on (from each `.ko`'s `.modinfo` `depends=`;
//! the package ships no modules.dep).

use crate::tree::{Kind, Tree};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Modules the init needs on every target, when the kernel has them as modules.
/// Names use underscores, as the kernel does.
pub const BOOT_MODULES: &[&str] = &[
    // virtio (QEMU/KVM and most clouds)
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_console",
    "sd_mod",
    // NVMe disks (AWS Nitro, GCE, Azure v6)
    "nvme",
    // layer file systems and the overlay
    "squashfs",
    "overlay",
    // every layer is mounted through a dm-verity device (depends on dm_mod, dm_bufio)
    "dm_verity",
    // QEMU fw_cfg, where boot-time configuration arrives locally
    "qemu_fw_cfg",
    // the config disk (FAT, label FUSECONFIG), mounted vfat with codepage=437,iocharset=ascii
    "vfat",
    "nls_cp437",
    "nls_ascii",
    // cloud NICs
    "ena",
    "gve",
    // VMware: paravirtual SCSI, vmxnet3 NIC (the SATA disk goes through ahci)
    "vmw_pvscsi",
    "vmxnet3",
    // Hyper-V / Azure: VMBus, its storage and network drivers
    "hv_vmbus",
    "hv_storvsc",
    "hv_netvsc",
    // AWS Xen instance types (older than Nitro)
    "xen_blkfront",
    "xen_netfront",
    // generic hardware: SATA (AHCI), Intel NICs every hypervisor emulates
    "ahci",
    "e1000",
    "e1000e",
    // the ACPI power button (a hypervisor's or cloud's "stop") as an input device, and
    // evdev for its /dev/input/event* node: the init stops the app gracefully on it
    "button",
    "evdev",
];

/// Modules loaded at every boot whatever the devices: file systems, device-mapper targets,
/// input. Other modules of [`BOOT_MODULES`] that have device alias patterns are loaded only
/// when a present device's modalias matches one (see [`boot_modules`]).
pub const ALWAYS_LOAD: &[&str] = &[
    // fw_cfg carries the boot-time config under QEMU: it must be there before the init
    // reads it, whatever else is still probing (absent elsewhere, it binds nothing)
    "qemu_fw_cfg",
    "squashfs",
    "overlay",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "dm_mod",
    "dm_verity",
    "button",
    "evdev",
];

/// A module the init loads only when a device needs it (boot.json `device_modules`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeviceModule {
    pub name: String,
    /// Path inside the initramfs.
    pub path: String,
    /// Names of the modules it needs first (from `.modinfo depends=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends: Vec<String>,
    /// Device alias patterns (from `.modinfo alias=`); empty for a module loaded only as a
    /// dependency of another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Modules without which the image cannot boot at all: missing ones are an error.
pub const REQUIRED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "squashfs",
    "overlay",
    "dm_verity",
];

/// The kernel as found in its package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// e.g. "6.1.0-50-amd64"
    pub release: String,
    pub vmlinuz: Arc<Vec<u8>>,
    /// Module files in load order: (path inside the initramfs, bytes, module name).
    pub modules: Vec<(String, Arc<Vec<u8>>, String)>,
}

/// The `.modinfo` section of an ELF64 little-endian relocatable object, as key/value pairs.
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            ko.get(o..o + 2).context("ELF truncated")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            ko.get(o..o + 4).context("ELF truncated")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            ko.get(o..o + 8).context("ELF truncated")?.try_into()?,
        ))
    };
    if ko.get(..4) != Some(b"\x7fELF") || ko.get(4) != Some(&2) || ko.get(5) != Some(&1) {
        bail!("not an ELF64 little-endian object");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    if shentsize < 64 || shstrndx >= shnum {
        bail!("bad ELF section header table");
    }
    let section = |i: usize| -> Result<(u32, usize, usize)> {
        let h = shoff
            .checked_add(i.checked_mul(shentsize).context("overflow")?)
            .context("overflow")?;
        let name = u32_at(h)?;
        let off = u64_at(h + 0x18)? as usize;
        let size = u64_at(h + 0x20)? as usize;
        Ok((name, off, size))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let strtab = ko
        .get(str_off..str_off.checked_add(str_size).context("overflow")?)
        .context("ELF truncated")?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let name = strtab.get(name as usize..).context("bad section name")?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == b".modinfo" {
            let data = ko
                .get(off..off.checked_add(size).context("overflow")?)
                .context("ELF truncated")?;
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    let kv = std::str::from_utf8(kv).ok()?;
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    bail!("no .modinfo section")
}

/// An alias that names a device (`bus:...`), as opposed to `fs-squashfs`, `devname:...`,
/// `char-major-...` and other aliases a module gets for on-demand loading by name.
fn is_device_alias(a: &str) -> bool {
    a.contains(':') && !a.starts_with("devname:")
}

fn depends_of(info: &[(String, String)]) -> Vec<String> {
    info.iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|d| !d.is_empty())
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The boot plan's modules: the paths loaded at every boot, in load order (the roots of
/// [`BOOT_MODULES`] that are in [`ALWAYS_LOAD`] or have no device alias, with their
/// dependencies), and the device-driven rest, in load order: each device driver with its
/// alias patterns and dependencies, and the dependencies no always-loaded module needs.
pub fn boot_modules(k: &Kernel) -> Result<(Vec<String>, Vec<DeviceModule>)> {
    let mut infos = BTreeMap::new();
    for (path, data, name) in &k.modules {
        let info = modinfo(data).with_context(|| format!("cannot read .modinfo of {path}"))?;
        let aliases: Vec<String> = info
            .iter()
            .filter(|(k, v)| k == "alias" && is_device_alias(v))
            .map(|(_, v)| v.clone())
            .collect();
        infos.insert(name.clone(), (depends_of(&info), aliases));
    }
    let roots: BTreeSet<&str> = BOOT_MODULES.iter().copied().collect();
    let is_device = |name: &str| {
        roots.contains(name)
            && !ALWAYS_LOAD.contains(&name)
            && infos.get(name).is_some_and(|(_, a)| !a.is_empty())
    };
    // Always: the non-device roots and everything they need.
    let mut always: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = k
        .modules
        .iter()
        .map(|m| m.2.clone())
        .filter(|n| roots.contains(n.as_str()) && !is_device(n))
        .collect();
    while let Some(n) = todo.pop() {
        if always.insert(n.clone()) {
            if let Some((deps, _)) = infos.get(&n) {
                todo.extend(deps.iter().cloned());
            }
        }
    }
    let mut paths = Vec::new();
    let mut device = Vec::new();
    for (path, _, name) in &k.modules {
        if always.contains(name) {
            paths.push(path.clone());
            continue;
        }
        let (deps, aliases) = infos.get(name).cloned().unwrap_or_default();
        device.push(DeviceModule {
            name: name.clone(),
            path: path.clone(),
            depends: deps,
            aliases: if is_device(name) { aliases } else { Vec::new() },
        });
    }
    Ok((paths, device))
}

/// The largest kernel image a gzip-compressed vmlinuz may expand to.
const MAX_KERNEL_IMAGE: u64 = 256 << 20;

/// The kernel as the EFI stub can start it: a PE image (`MZ`). x86-64's bzImage already is
/// one; arm64's vmlinuz is a gzip-compressed `Image`, which the stub cannot decompress, so
/// it is expanded here (deterministically: the same bytes in, the same bytes out).
pub fn efi_kernel(vmlinuz: Arc<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
    if vmlinuz.starts_with(b"MZ") {
        return Ok(vmlinuz);
    }
    if !vmlinuz.starts_with(&[0x1f, 0x8b]) {
        bail!("neither a PE image (MZ) nor gzip-compressed: not a kernel an EFI stub can start");
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            flate2::read::GzDecoder::new(vmlinuz.as_slice()),
            MAX_KERNEL_IMAGE + 1,
        ),
        &mut out,
    )
    .context("cannot decompress the gzip-compressed kernel")?;
    if out.len() as u64 > MAX_KERNEL_IMAGE {
        bail!("the kernel expands to more than {MAX_KERNEL_IMAGE} bytes");
    }
    // arm64 Image header: `MZ` (its EFI stub) at 0, magic "ARM\x64" at 0x38.
    if !out.starts_with(b"MZ") || out.get(0x38..0x3c) != Some(b"ARM\x64".as_slice()) {
        bail!("the decompressed kernel is not an arm64 EFI-stub Image (no MZ / ARM\\x64 magic)");
    }
    Ok(Arc::new(out))
}

/// Kernel module names use '_' where file names may use '-'; a compressed module's
/// name is that of the `.ko` inside (`overlay.ko.xz` -> `overlay`).
pub fn module_name(file_name: &str) -> String {
    let base = COMPRESSED_MODULE_SUFFIXES
        .iter()
        .find_map(|(ext, _)| file_name.strip_suffix(ext))
        .unwrap_or(file_name);
    base.trim_end_matches(".ko").replace('-', "_")
}

/// How a kernel package may ship its modules (trixie's: `.ko.xz`), and the compression.
const COMPRESSED_MODULE_SUFFIXES: &[(&str, ModuleCompression)] = &[
    (".ko.xz", ModuleCompression::Xz),
    (".ko.zst", ModuleCompression::Zstd),
    (".ko.gz", ModuleCompression::Gzip),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModuleCompression {
    Xz,
    Zstd,
    Gzip,
}

/// The largest module a compressed `.ko.*` may expand to.
const MAX_MODULE: u64 = 64 << 20;

/// A module file of the package: its path as the initramfs holds it (always a plain `.ko`:
/// the init loads it with `finit_module` without flags) and its bytes as packaged.
struct ModuleFile {
    path: String,
    packaged: Arc<Vec<u8>>,
    compression: Option<ModuleCompression>,
    /// The plain `.ko`, once expanded.
    plain: Option<Arc<Vec<u8>>>,
}

impl ModuleFile {
    /// The module's `.ko` bytes, expanded (deterministically) from the packaged file the
    /// first time they are asked for.
    fn bytes(&mut self) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = &self.plain {
            return Ok(b.clone());
        }
        let data = self.packaged.as_slice();
        let decoder: Box<dyn std::io::Read + '_> = match self.compression {
            None => {
                self.plain = Some(self.packaged.clone());
                return Ok(self.packaged.clone());
            }
            Some(ModuleCompression::Xz) => {
                let stream = liblzma::stream::Stream::new_stream_decoder(256 << 20, 0)
                    .map_err(|e| anyhow::anyhow!("cannot start the xz decoder: {e}"))?;
                Box::new(liblzma::read::XzDecoder::new_stream(data, stream))
            }
            Some(ModuleCompression::Zstd) => Box::new(
                zstd::stream::read::Decoder::new(data).context("cannot start the zstd decoder")?,
            ),
            Some(ModuleCompression::Gzip) => Box::new(flate2::read::GzDecoder::new(data)),
        };
        let mut out = Vec::new();
        let read =
            std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_MODULE + 1), &mut out);
        read.with_context(|| format!("cannot decompress the module {}", self.path))?;
        if out.len() as u64 > MAX_MODULE {
            bail!(
                "module {} expands to more than {MAX_MODULE} bytes",
                self.path
            );
        }
        let out = Arc::new(out);
        self.plain = Some(out.clone());
        Ok(out)
    }
}

/// Find the kernel release, vmlinuz and the module closure in a kernel image package's tree.
pub fn from_package(data: &Tree, package: &str) -> Result<Kernel> {
    let vmlinuz_path = data
        .iter()
        .map(|(p, _)| p)
        .find(|p| p.starts_with("boot/vmlinuz-") && p.matches('/').count() == 1)
        .with_context(|| format!("package {package} has no /boot/vmlinuz-*"))?
        .to_string();
    let release = vmlinuz_path["boot/vmlinuz-".len()..].to_string();
    let vmlinuz = match &data.get(&vmlinuz_path).context("vmlinuz vanished")?.kind {
        Kind::File(d) => d.clone(),
        _ => bail!("{vmlinuz_path} in {package} is not a regular file"),
    };
    let vmlinuz = efi_kernel(vmlinuz).with_context(|| format!("{vmlinuz_path} in {package}"))?;
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| format!("{d}/{release}"))
        .find(|d| data.get(d).is_some())
        .with_context(|| format!("package {package} has no /lib/modules/{release}"))?;

    // Index every module file (.ko, or compressed: .ko.xz, .ko.zst, .ko.gz) by module name.
    let mut by_name: BTreeMap<String, ModuleFile> = BTreeMap::new();
    for (path, node) in data.iter() {
        if !path.starts_with(&moddir) {
            continue;
        }
        let (plain_path, compression) = if path.ends_with(".ko") {
            (path.to_string(), None)
        } else if let Some((ext, c)) = COMPRESSED_MODULE_SUFFIXES
            .iter()
            .find(|(ext, _)| path.ends_with(ext))
        {
            (format!("{}.ko", &path[..path.len() - ext.len()]), Some(*c))
        } else {
            continue;
        };
        if let Kind::File(d) = &node.kind {
            let file = path.rsplit('/').next().unwrap_or(path);
            by_name.insert(
                module_name(file),
                ModuleFile {
                    path: plain_path,
                    packaged: d.clone(),
                    compression,
                    plain: None,
                },
            );
        }
    }
    let builtin: BTreeSet<String> = match data
        .get(&format!("{moddir}/modules.builtin"))
        .and_then(|n| n.data())
    {
        Some(text) => String::from_utf8_lossy(text)
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(module_name)
            .collect(),
        None => BTreeSet::new(),
    };

    let mut order: Vec<String> = Vec::new();
    let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false = visiting, true = done
    for want in BOOT_MODULES {
        let want = want.to_string();
        if by_name.contains_key(&want) {
            visit(
                &want,
                &mut by_name,
                &builtin,
                &mut state,
                &mut order,
                &mut vec![],
            )?;
        } else if builtin.contains(&want) {
            tracing::debug!("module {want} is built into {release}");
        } else if REQUIRED_MODULES.contains(&want.as_str()) {
            bail!("kernel {release} ({package}) has neither a module nor a built-in {want}, which the init needs");
        } else {
            tracing::debug!("kernel {release} has no {want}; skipped");
        }
    }
    let mut modules = Vec::with_capacity(order.len());
    for name in order {
        let m = by_name
            .get_mut(&name)
            .context("internal error: an ordered module is not indexed")?;
        modules.push((format!("/{}", m.path), m.bytes()?, name));
    }
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

fn visit(
    name: &str,
    by_name: &mut BTreeMap<String, ModuleFile>,
    builtin: &BTreeSet<String>,
    state: &mut BTreeMap<String, bool>,
    order: &mut Vec<String>,
    chain: &mut Vec<String>,
) -> Result<()> {
    match state.get(name) {
        Some(true) => return Ok(()),
        Some(false) => bail!("module dependency cycle: {} -> {name}", chain.join(" -> ")),
        None => {}
    }
    let Some(file) = by_name.get_mut(name) else {
        if builtin.contains(name) {
            return Ok(());
        }
        bail!(
            "module {name} (needed by {}) is not in the kernel package",
            chain.join(" -> ")
        );
    };
    state.insert(name.to_string(), false);
    chain.push(name.to_string());
    let data = file.bytes()?;
    let info = modinfo(&data).with_context(|| format!("cannot read .modinfo of {}", file.path))?;
    let deps: BTreeSet<String> = info
        .iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|d| !d.is_empty())
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .collect();
    for d in deps {
        visit(&d, by_name, builtin, state, order, chain)?;
    }
    chain.pop();
    state.insert(name.to_string(), true);
    order.push(name.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    /// A minimal ELF64 LE object with a .modinfo section (and the section-name table).
    pub fn fake_ko(modinfo: &str) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0".to_vec();
        let info = modinfo.replace(';', "\0").into_bytes();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let info_off = f.len();
        f.extend_from_slice(&info);
        let str_off = f.len();
        f.extend_from_slice(&shstr);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, info_off, info.len());
        sh(10, str_off, shstr.len());
        f
    }

    #[test]
    fn modinfo_reads_depends() {
        let ko = fake_ko("license=GPL;depends=virtio,virtio_ring;name=virtio_blk;");
        let info = modinfo(&ko).unwrap();
        assert!(info.contains(&("depends".into(), "virtio,virtio_ring".into())));
        assert!(modinfo(b"not elf").is_err());
        assert!(modinfo(&ko[..70]).is_err());
    }

    #[test]
    fn closure_orders_dependencies_first_and_skips_builtins() {
        let mut t = Tree::new();
        t.insert(
            "boot/vmlinuz-6.1.0-9-amd64",
            Node::file(b"MZ kernel".to_vec(), 0o644),
        )
        .unwrap();
        let m = "lib/modules/6.1.0-9-amd64";
        let ko = |deps: &str| Node::file(fake_ko(&format!("depends={deps};")), 0o644);
        t.insert(&format!("{m}/kernel/drivers/virtio/virtio.ko"), ko(""))
            .unwrap();
        t.insert(&format!("{m}/kernel/drivers/virtio/virtio_ring.ko"), ko(""))
            .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/virtio/virtio_pci.ko"),
            ko("virtio_pci_modern_dev,virtio,virtio_ring"),
        )
        .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/virtio/virtio_pci_modern_dev.ko"),
            ko(""),
        )
        .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/block/virtio_blk.ko"),
            ko("virtio,virtio_ring"),
        )
        .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/net/virtio_net.ko"),
            ko("net_failover,virtio,virtio_ring"),
        )
        .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/net/net_failover.ko"),
            ko("failover"),
        )
        .unwrap();
        t.insert(&format!("{m}/kernel/net/core/failover.ko"), ko(""))
            .unwrap();
        t.insert(&format!("{m}/kernel/fs/overlayfs/overlay.ko"), ko(""))
            .unwrap();
        t.insert(
            &format!("{m}/kernel/drivers/md/dm-verity.ko"),
            ko("dm-bufio,dm-mod"),
        )
        .unwrap();
        t.insert(&format!("{m}/kernel/drivers/md/dm-bufio.ko"), ko(""))
            .unwrap();
        t.insert(&format!("{m}/kernel/drivers/md/dm-mod.ko"), ko(""))
            .unwrap();
        t.insert(
            &format!("{m}/modules.builtin"),
            Node::file(b"kernel/fs/squashfs/squashfs.ko\n".to_vec(), 0o644),
        )
        .unwrap();
        let k = from_package(&t, "linux-image-test").unwrap();
        assert_eq!(k.release, "6.1.0-9-amd64");
        let names: Vec<&str> = k.modules.iter().map(|m| m.2.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing in {names:?}"))
        };
        assert!(pos("virtio") < pos("virtio_pci") && pos("virtio_ring") < pos("virtio_pci"));
        assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
        assert!(!names.contains(&"squashfs"));
        assert!(pos("dm_mod") < pos("dm_verity") && pos("dm_bufio") < pos("dm_verity"));
        assert!(k.modules[0].0.starts_with("/lib/modules/6.1.0-9-amd64/"));
    }

    #[test]
    fn device_drivers_are_split_from_always_loaded_modules() {
        let mut t = Tree::new();
        t.insert(
            "boot/vmlinuz-6.1.0-9-amd64",
            Node::file(b"MZ kernel".to_vec(), 0o644),
        )
        .unwrap();
        let m = "lib/modules/6.1.0-9-amd64/kernel";
        let ko = |info: &str| Node::file(fake_ko(info), 0o644);
        for (path, info) in [
            ("virtio/virtio.ko", "depends=;"),
            ("virtio/virtio_ring.ko", "depends=;"),
            (
                "virtio/virtio_pci.ko",
                "depends=virtio,virtio_ring;alias=pci:v00001AF4d*sv*sd*bc*sc*i*;",
            ),
            (
                "block/virtio_blk.ko",
                "depends=virtio,virtio_ring;alias=virtio:d00000002v*;",
            ),
            ("fs/overlay.ko", "depends=;alias=fs-overlay;"),
            (
                "fs/squashfs.ko",
                "depends=;alias=fs-squashfs;alias=devname:x;",
            ),
            ("md/dm-verity.ko", "depends=dm-bufio,dm-mod;"),
            ("md/dm-bufio.ko", "depends=;"),
            ("md/dm-mod.ko", "depends=;"),
            ("ata/libata.ko", "depends=;"),
            ("ata/libahci.ko", "depends=libata;"),
            (
                "ata/ahci.ko",
                "depends=libahci,libata;alias=pci:v*d*sv*sd*bc01sc06i01*;",
            ),
        ] {
            t.insert(&format!("{m}/{path}"), ko(info)).unwrap();
        }
        let k = from_package(&t, "linux-image-test").unwrap();
        let (always, device) = boot_modules(&k).unwrap();
        let base = |p: &String| p.rsplit('/').next().unwrap().to_string();
        let mut a: Vec<String> = always.iter().map(base).collect();
        a.sort();
        assert_eq!(
            a,
            [
                "dm-bufio.ko",
                "dm-mod.ko",
                "dm-verity.ko",
                "overlay.ko",
                "squashfs.ko"
            ]
        );
        let names: Vec<&str> = device.iter().map(|d| d.name.as_str()).collect();
        for n in [
            "virtio",
            "virtio_ring",
            "virtio_pci",
            "virtio_blk",
            "libata",
            "libahci",
            "ahci",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let ahci = device.iter().find(|d| d.name == "ahci").unwrap();
        assert_eq!(ahci.aliases, ["pci:v*d*sv*sd*bc01sc06i01*"]);
        assert_eq!(ahci.depends, ["libahci", "libata"]);
        // dependencies are loaded as dependencies only
        assert!(device
            .iter()
            .find(|d| d.name == "libata")
            .unwrap()
            .aliases
            .is_empty());
        // load order kept: dependencies before their users
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("libata") < pos("libahci") && pos("libahci") < pos("ahci"));
    }

    /// `data` xz-compressed, as trixie's kernel packages ship their modules.
    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut liblzma::read::XzEncoder::new(data, 6), &mut out).unwrap();
        out
    }

    #[test]
    fn compressed_modules_are_found_and_expanded_to_plain_ko() {
        let mut t = Tree::new();
        t.insert(
            "boot/vmlinuz-6.12.9-amd64",
            Node::file(b"MZ kernel".to_vec(), 0o644),
        )
        .unwrap();
        let m = "usr/lib/modules/6.12.9-amd64";
        let verity = fake_ko("depends=dm-bufio,dm-mod;");
        let files: [(&str, Vec<u8>); 5] = [
            ("drivers/virtio/virtio_pci.ko.xz", xz(&fake_ko("depends=;"))),
            (
                "drivers/block/virtio_blk.ko.zst",
                zstd::encode_all(&fake_ko("depends=;")[..], 3).unwrap(),
            ),
            ("drivers/md/dm-verity.ko.xz", xz(&verity)),
            ("drivers/md/dm-bufio.ko.gz", {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut e, &fake_ko("depends=;")).unwrap();
                e.finish().unwrap()
            }),
            ("drivers/md/dm-mod.ko", fake_ko("depends=;")),
        ];
        for (f, data) in files {
            t.insert(&format!("{m}/kernel/{f}"), Node::file(data, 0o644))
                .unwrap();
        }
        t.insert(
            &format!("{m}/modules.builtin"),
            Node::file(
                b"kernel/fs/squashfs/squashfs.ko\nkernel/fs/overlayfs/overlay.ko\n".to_vec(),
                0o644,
            ),
        )
        .unwrap();
        let k = from_package(&t, "linux-image-test").unwrap();
        let by_name: BTreeMap<&str, (&str, &Vec<u8>)> = k
            .modules
            .iter()
            .map(|(p, d, n)| (n.as_str(), (p.as_str(), d.as_ref())))
            .collect();
        // every module in the initramfs is a plain .ko, expanded from what was packaged
        for (name, (path, data)) in &by_name {
            assert!(path.ends_with(".ko"), "{name}: {path}");
            assert!(data.starts_with(b"\x7fELF"), "{name} not expanded");
        }
        assert_eq!(
            by_name["dm_verity"],
            (
                "/usr/lib/modules/6.12.9-amd64/kernel/drivers/md/dm-verity.ko",
                &verity
            )
        );
        // dependencies read from the expanded .modinfo order the closure
        let names: Vec<&str> = k.modules.iter().map(|m| m.2.as_str()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("dm_bufio") < pos("dm_verity") && pos("dm_mod") < pos("dm_verity"));
        assert!(names.contains(&"virtio_blk") && names.contains(&"virtio_pci"));

        // a corrupt compressed module is an error naming it
        t.insert(
            &format!("{m}/kernel/drivers/md/dm-verity.ko.xz"),
            Node::file(b"\xfd7zXZ\0 not really".to_vec(), 0o644),
        )
        .unwrap();
        let e = format!("{:#}", from_package(&t, "linux-image-test").unwrap_err());
        assert!(
            e.contains("dm-verity.ko") && e.contains("decompress"),
            "{e}"
        );
    }

    #[test]
    fn module_names_of_compressed_files() {
        assert_eq!(module_name("overlay.ko.xz"), "overlay");
        assert_eq!(module_name("dm-verity.ko.zst"), "dm_verity");
        assert_eq!(module_name("virtio_net.ko.gz"), "virtio_net");
        assert_eq!(module_name("dm-mod.ko"), "dm_mod");
    }

    #[test]
    fn missing_required_module_is_an_error() {
        let mut t = Tree::new();
        t.insert(
            "boot/vmlinuz-6.1.0-9-amd64",
            Node::file(b"MZ kernel".to_vec(), 0o644),
        )
        .unwrap();
        t.insert(
            "lib/modules/6.1.0-9-amd64/modules.builtin",
            Node::file(Vec::new(), 0o644),
        )
        .unwrap();
        let e = format!("{:#}", from_package(&t, "linux-image-test").unwrap_err());
        assert!(e.contains("virtio_pci"), "{e}");
    }

    #[test]
    fn arm64_gzip_kernel_is_expanded_and_checked() {
        use std::io::Write;
        let mut image = b"MZ".to_vec();
        image.resize(0x38, 0);
        image.extend_from_slice(b"ARM\x64");
        image.resize(4096, 7);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&image).unwrap();
        let packed = gz.finish().unwrap();
        let out = efi_kernel(Arc::new(packed.clone())).unwrap();
        assert_eq!(out.as_slice(), image.as_slice());
        // a bzImage (MZ) passes untouched
        let bz = Arc::new(b"MZ bzImage".to_vec());
        assert!(Arc::ptr_eq(&efi_kernel(bz.clone()).unwrap(), &bz));
        // gzip of something that is not an arm64 Image, truncated gzip, neither format
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"MZ but no arm64 magic").unwrap();
        let e = efi_kernel(Arc::new(gz.finish().unwrap())).unwrap_err();
        assert!(format!("{e:#}").contains("ARM"), "{e:#}");
        assert!(efi_kernel(Arc::new(packed[..packed.len() / 2].to_vec())).is_err());
        let e = efi_kernel(Arc::new(b"\x7fELF".to_vec())).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
    }
}
