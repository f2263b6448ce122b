//! The image's CPU architecture (`[image] arch`) and every fact that follows from it: the
//! archive's package architecture, the ELF and PE machine numbers, the EFI stub and boot path,
//! the default kernel, the QEMU that boots it, the cloud's name for it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// An architecture fuse builds images for. Its name is Debian's (and OCI's) name for it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

/// Every architecture, in the order `fuse` lists them.
pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

impl Arch {
    /// `amd64` or `arm64`: `[image] arch`, the archive's `binary-*` index, OCI's platform.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// For serde's `skip_serializing_if` (amd64 is what files without the field mean).
    pub fn is_amd64(&self) -> bool {
        *self == Arch::Amd64
    }

    pub fn parse(s: &str) -> Result<Arch> {
        Ok(match s {
            "amd64" | "x86_64" | "x86-64" => Arch::Amd64,
            "arm64" | "aarch64" => Arch::Arm64,
            other => bail!("unknown architecture {other:?} (expected \"amd64\" or \"arm64\")"),
        })
    }

    /// The architecture of the machine fuse runs on (amd64 for any other host).
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    /// ELF `e_machine` of the architecture's objects.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// How error messages name the architecture of an ELF object (see [`elf_machine_name`]).
    pub fn elf_name(self) -> &'static str {
        elf_machine_name_static(self.elf_machine()).unwrap_or("?")
    }

    /// The PE/COFF `Machine` of the architecture's EFI executables.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    /// The removable-media boot path UEFI firmware starts from the ESP.
    pub fn esp_boot_path(self) -> &'static str {
        match self {
            Arch::Amd64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Arm64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// systemd-stub inside package systemd-boot-efi of this architecture.
    pub fn stub_path(self) -> &'static str {
        match self {
            Arch::Amd64 => "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            Arch::Arm64 => "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        }
    }

    /// The kernel metapackage `[system] kernel` defaults to.
    pub fn default_kernel(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux-image-amd64",
            Arch::Arm64 => "linux-image-arm64",
        }
    }

    /// The QEMU system emulator that boots the architecture's images.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The architecture's name in EC2's API (`RegisterImage`, instance types).
    pub fn ec2(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture's name in the Linux kernel's and Rust's target triples.
    pub fn triple_cpu(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn elf_machine_name_static(m: u16) -> Option<&'static str> {
    Some(match m {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "S/390",
        40 => "ARM",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => return None,
    })
}

/// A readable name of an ELF `e_machine` value.
pub fn elf_machine_name(m: u16) -> String {
    elf_machine_name_static(m)
        .map(str::to_string)
        .unwrap_or_else(|| format!("machine {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for a in ALL {
            assert_eq!(Arch::parse(a.name()).unwrap(), a);
            assert_eq!(Arch::parse(a.triple_cpu()).unwrap(), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{}\"", a.name()));
        }
        let e = Arch::parse("riscv64").unwrap_err().to_string();
        assert!(e.contains("riscv64") && e.contains("arm64"), "{e}");
    }

    #[test]
    fn facts_differ_per_architecture() {
        let (a, b) = (Arch::Amd64, Arch::Arm64);
        assert_ne!(a.elf_machine(), b.elf_machine());
        assert_ne!(a.pe_machine(), b.pe_machine());
        assert_ne!(a.esp_boot_path(), b.esp_boot_path());
        assert_ne!(a.stub_path(), b.stub_path());
        assert_eq!(b.elf_name(), "AArch64");
        assert_eq!(elf_machine_name(62), "x86-64");
        assert_eq!(elf_machine_name(9999), "machine 9999");
    }
}
