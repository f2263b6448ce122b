//! The plan: a pure function from the manifest, the lock and one scan of the app to the units
//! of the image (its layers, the kernel, the initramfs, the UKI), each described by every
//! input that determines its bytes. A unit's key is the sha256 of its description's JSON
//! (fields in declaration order, maps sorted): equal keys, equal bytes. No package is read
//! here; the cache is asked by key, and only a miss builds (see [`crate::build::units`]).
//!
//! To make a new input change a unit's bytes, add a field to its input struct below (keys
//! change, which is intended) and read it in the unit's builder; fields that are `None` or
//! empty are left out of the JSON, so adding one keeps the keys of units that do not use it.

use crate::app::AppScan;
use crate::arch::Arch;
use crate::digest::sha256_hex;
use crate::layers::{AppPlan, BootPlan};
use crate::manifest::Manifest;
use crate::resolve::lock::{Lock, Pin};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Version of the unit descriptions and of what their builders make of them: bump it when a
/// builder changes the bytes it writes for the same inputs.
pub const FORMAT: u32 = 1;

/// How the initramfs is laid out (`InitramfsInputs.compression`): boot.json in an
/// uncompressed newc archive, then the init and the modules in a zstd-19 one, cached on its
/// own ([`initramfs_core_key`]), so a layer change recompresses nothing.
pub const INITRAMFS_LAYOUT: &str = "boot.json newc, then zstd-19 core";

/// The init binary (PID 1) for amd64, built static from `init/` by build.rs.
pub static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fuse-init"));
/// The same for arm64, cross-built by build.rs when the toolchain is there (empty if not).
static INIT_ARM64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fuse-init-arm64"));

/// The init binary for `arch`; an error saying how to get it when this fuse was built
/// without the cross toolchain.
pub fn init_for(arch: Arch) -> Result<&'static [u8]> {
    match arch {
        Arch::Amd64 => Ok(INIT),
        Arch::Arm64 if !INIT_ARM64.is_empty() => Ok(INIT_ARM64),
        Arch::Arm64 => bail!(
            "this fuse was built without the arm64 init: install Debian's rustc-web, \
             libstd-rust-web-dev:arm64 (after `dpkg --add-architecture arm64`), \
             gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (scripts/setup.sh does), \
             then rebuild fuse (docs/arm64.md)"
        ),
    }
}

/// The EFI stub's package; its path inside it is [`Arch::stub_path`].
pub const STUB_PACKAGE: &str = "systemd-boot-efi";

/// The kernel command line of every amd64 image. `cryptomgr.notests` and the
/// `crypto_kdf108_init` blacklist skip the crypto self-tests run at boot (0.6 s of a TCG
/// boot; later kernels skip the kdf108 one too when the tests are off): a faulty hash
/// implementation makes dm-verity refuse every block, never accept a wrong one.
pub const CMDLINE: &str = "console=ttyS0,115200 panic=0 quiet no_timer_check cryptomgr.notests initcall_blacklist=crypto_kdf108_init";
/// The kernel command line of every arm64 image: the last console named that exists
/// becomes /dev/console (a PL011 `ttyAMA0` on QEMU's virt machine, a 16550 `ttyS0` on
/// Graviton).
pub const CMDLINE_ARM64: &str =
    "console=ttyS0,115200 console=ttyAMA0,115200 panic=0 quiet no_timer_check cryptomgr.notests initcall_blacklist=crypto_kdf108_init";

/// The kernel command line of `arch`'s images.
pub fn cmdline(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => CMDLINE,
        Arch::Arm64 => CMDLINE_ARM64,
    }
}

/// Everything that determines the image, unit by unit.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub format: u32,
    pub fuse_version: String,
    /// The reproducibility clock every unit stamps its files with.
    pub epoch: u64,
    /// sha256 of the fuse.lock text the plan was made from.
    pub lock_sha256: String,
    pub app_sha256: String,
    /// In disk order: base, runtime, server (when used), the app's layers (deps, app).
    pub layers: Vec<LayerPlan>,
    pub kernel: Unit<KernelInputs>,
    pub initramfs: Unit<InitramfsInputs>,
    pub uki: Unit<UkiInputs>,
}

/// One layer: its name (GPT partition `fuse-<name>`), its key, its inputs.
#[derive(Clone, Debug, Serialize)]
pub struct LayerPlan {
    pub name: String,
    pub key: String,
    pub inputs: LayerInputs,
}

/// A non-layer unit (kernel, initramfs, UKI): key and inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Unit<I> {
    pub key: String,
    pub inputs: I,
}

/// The key of a unit description: sha256 of its JSON.
pub fn key_of<T: Serialize>(inputs: &T) -> Result<String> {
    Ok(sha256_hex(
        &serde_json::to_vec(inputs).context("cannot encode a unit description")?,
    ))
}

/// The key of the initramfs' core (init and modules, compressed): what of the initramfs'
/// inputs decides it; not the layers or the boot plan.
pub fn initramfs_core_key(i: &InitramfsInputs) -> Result<String> {
    let d = serde_json::json!({
        "unit": UnitKind::InitramfsCore,
        "format": i.format,
        "fuse_version": i.fuse_version,
        "kernel": i.kernel,
        "init_sha256": i.init_sha256,
        "epoch": i.epoch,
        "compression": i.compression,
    });
    Ok(sha256_hex(&serde_json::to_vec(&d)?))
}

/// The key of the EFI stub taken from its package (cached on its own: every layer change
/// rebuilds the UKI, which must not need the package again).
pub fn stub_key(i: &UkiInputs) -> String {
    sha256_hex(format!("efi-stub\0{}\0{}", i.stub.sha256, i.stub_path).as_bytes())
}

/// Version of the whole image's key recipe and of the record a build keeps under it.
pub const IMAGE_FORMAT: u32 = 1;

/// The key of the whole image: everything its bytes are a function of (the plan, with every
/// unit's key, the manifest, the app, the fingerprint of the Secure Boot certificate).
pub fn image_key(
    plan: &Plan,
    m: &Manifest,
    app: &AppScan,
    signer_fingerprint: Option<String>,
) -> Result<String> {
    let d = serde_json::json!({
        "unit": "image",
        "format": IMAGE_FORMAT,
        "plan": plan,
        "manifest_sha256": m.sha256,
        "app_sha256": app.sha256,
        "app_listing_sha256": app.listing_sha256,
        "app_layers": app.parts.iter().map(|p| (&p.name, &p.listing_sha256)).collect::<Vec<_>>(),
        "signer": signer_fingerprint,
    });
    Ok(sha256_hex(&serde_json::to_vec(&d)?))
}

/// What a unit is: its inputs' `unit` field and its cache record's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    Layer,
    Kernel,
    Initramfs,
    /// The initramfs' second archive: the init and the modules, compressed.
    InitramfsCore,
    /// The EFI stub taken from its package.
    Stub,
    Uki,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Layer => "layer",
            UnitKind::Kernel => "kernel",
            UnitKind::Initramfs => "initramfs",
            UnitKind::InitramfsCore => "initramfs-core",
            UnitKind::Stub => "stub",
            UnitKind::Uki => "uki",
        }
    }
}

impl std::fmt::Display for UnitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A maintainer script's effect that matters, done natively, with its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// ca-certificates: /etc/ssl/certs/ca-certificates.crt and the hash links.
    #[serde(rename = "ca-bundle/1")]
    CaBundle,
    /// ca-certificates-java: /etc/ssl/certs/java/cacerts.
    #[serde(rename = "java-cacerts/1")]
    JavaCacerts,
}

/// The file system a layer is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Squashfs,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Squashfs => "squashfs",
        }
    }
}

/// A layer file system's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCompression {
    Xz,
    Gzip,
    Zstd,
}

/// The file system a layer is written as.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsOptions {
    pub kind: FsKind,
    pub compression: FsCompression,
    pub block_size: u32,
    /// Superblock time (the epoch, clamped to 32 bits).
    pub mkfs_time: u32,
    /// The dm-verity layout appended to the file system (`format::verity`): its version.
    pub verity: u32,
}

/// Which package files are left out of a layer (see docs/packages.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    /// Common dead weight (prefixes; licence files kept): `layers::DEAD_WEIGHT`.
    pub common: Vec<String>,
    /// The runtimes' own dead weight (a path, or everything under it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime: Vec<String>,
    /// `[system] keep`: exempt from both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
}

/// The base layer's own system files: users, name service, os-release, dpkg status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemFiles {
    pub name: String,
    pub version: String,
    pub vendor: String,
    pub codename: String,
    /// Every package of the image (kernel included), for /var/lib/dpkg/status.
    pub status: Vec<Pin>,
}

/// Tomcat's catalina.base in the server layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerFiles {
    pub tomcat: String,
    pub port: u16,
    /// The version of the catalina.base fuse writes ([`crate::runtimes::CATALINA_BASE_LAYOUT`]).
    #[serde(default)]
    pub layout: u32,
    /// `[server] mbeans`: Tomcat's MBean registry kept (else turned off at start-up).
    #[serde(default)]
    pub mbeans: bool,
}

/// The app's files in an app layer (the layer's name is the app part's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppFiles {
    /// [`crate::app::AppPart::listing_sha256`]
    pub listing_sha256: String,
}

/// Everything that determines one layer's partition bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInputs {
    /// "layer"
    pub unit: UnitKind,
    pub format: u32,
    pub fuse_version: String,
    pub name: String,
    pub fs: FsOptions,
    pub epoch: u64,
    /// The packages whose files the layer holds, by sha256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Pin>,
    pub filter: Filter,
    /// Native effects of maintainer scripts, by name and version (`ca-bundle/1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<Effect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemFiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppFiles>,
    /// A Java runtime layer trimmed to the app (docs/runtimes.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jre: Option<JreInputs>,
    /// Python bytecode compiled for the layer's `.py` files (`pyc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytecode: Option<BytecodeInputs>,
    /// A merged-/usr distribution (trixie on): the top-level directories that are links
    /// into /usr (`bin` -> `usr/bin`, ...). Packages' files under them are laid out under
    /// /usr, and the system layer holds the links (what trixie's base-files ships).
    /// Empty for bookworm, whose packages still ship /lib, /bin and /sbin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usr_aliases: Vec<String>,
}

/// The top-level directories that a distribution with merged /usr makes links into /usr,
/// for an image of `arch`: none for bookworm (its packages ship /lib, /bin, /sbin), and
/// `bin`, `lib`, `sbin` (and on amd64 `lib64`, where the ELF interpreter is) from trixie
/// on, as its base-files does.
pub fn usr_aliases(codename: &str, arch: Arch) -> Vec<String> {
    if codename == "bookworm" {
        return Vec::new();
    }
    let mut a = vec!["bin", "lib", "sbin"];
    if arch == Arch::Amd64 {
        a.push("lib64");
    }
    a.sort_unstable();
    a.into_iter().map(String::from).collect()
}

/// The invalidation mode of the Python bytecode fuse compiles (`pyc`), as
/// [`BytecodeInputs`] records it.
pub const PYC_MODE: &str = "unchecked-hash";

/// What decides a layer's Python bytecode: the compiling interpreter (the image's Python
/// packages) and the kind of pyc written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BytecodeInputs {
    /// "3.11"
    pub python: String,
    /// The image's architecture (the interpreter runs on a build host of it).
    pub arch: Arch,
    /// [`PYC_MODE`]
    pub mode: String,
    /// The Python packages of the image: the compiler whose output the pycs are.
    pub interpreter: Vec<Pin>,
    /// The base packages the interpreter runs on (its C library). Not a key input: the
    /// compiler's output does not depend on them, and a security update of the base layer
    /// must not rebuild (and re-send) the app's layers.
    #[serde(skip)]
    pub loader: Vec<Pin>,
}

/// What decides a trimmed JRE: the JDK packages the app refers to, the server packages
/// whose jars are read too (a war's Tomcat), `[runtime] modules` ("all" keeps the JRE).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JreInputs {
    pub packages: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_packages: Vec<Pin>,
    /// "all", or the added modules, comma-separated and sorted.
    pub modules: String,
}

/// The kernel unit: vmlinuz and the init's module closure, read from the kernel package.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelInputs {
    /// "kernel"
    pub unit: UnitKind,
    pub format: u32,
    pub fuse_version: String,
    pub package: Pin,
    /// The modules the init asks for (`kernel::BOOT_MODULES`) and those it cannot do without.
    pub modules: Vec<String>,
    pub required: Vec<String>,
}

/// The initramfs unit: the init, the kernel's modules, the boot plan; zstd-compressed cpio.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitramfsInputs {
    /// "initramfs"
    pub unit: UnitKind,
    pub format: u32,
    pub fuse_version: String,
    /// The kernel unit's key (its modules go in, and their paths into `boot.modules`).
    pub kernel: String,
    /// Which init binary ([`init_for`]); left out for amd64, so its keys stay as they were.
    #[serde(default, skip_serializing_if = "Arch::is_amd64")]
    pub arch: Arch,
    pub init_sha256: String,
    /// The layer units' keys, bottom to top: their bytes (and so their dm-verity root
    /// hashes, which go into `boot.verity`) are a function of these keys.
    pub layers: Vec<String>,
    /// The boot plan, `modules` and `verity` left empty: the kernel and layer units fill them.
    pub boot: BootPlan,
    pub epoch: u64,
    /// How the cpio is compressed ("zstd-19").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// How boot.json's modules are split: "modalias; always: <kernel::ALWAYS_LOAD>"
    /// (always-loaded ones, and device drivers with their alias patterns, see
    /// `kernel::boot_modules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loading: Option<String>,
}

/// The UKI unit: EFI stub + kernel + initramfs + command line + os-release.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UkiInputs {
    /// "uki"
    pub unit: UnitKind,
    pub format: u32,
    pub fuse_version: String,
    pub stub: Pin,
    pub stub_path: String,
    pub kernel: String,
    pub initramfs: String,
    pub cmdline: String,
    pub os_release: String,
}

/// Version of the dm-verity layout of layer partitions (`format::verity`).
pub const VERITY_LAYOUT: u32 = 1;

fn fuse_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The layer that holds package `name`: a runtime's or server's own packages go to that
/// layer, everything else (libraries) to the base layer.
pub fn layer_of(m: &Manifest, name: &str) -> &'static str {
    if m.runtime
        .as_ref()
        .is_some_and(|r| crate::runtimes::owns(r, name))
    {
        "runtime"
    } else if m
        .server
        .as_ref()
        .is_some_and(|r| crate::runtimes::owns(r, name))
    {
        "server"
    } else {
        "base"
    }
}

/// Plan the image of `m` from `lock` and the scanned app, with file times clamped to `epoch`.
/// Pure: nothing is read.
pub fn plan(m: &Manifest, lock: &Lock, app: &AppScan, epoch: u64) -> Result<Plan> {
    let version = fuse_version();
    let fs = FsOptions {
        kind: FsKind::Squashfs,
        // zstd: a JVM's start reads its runtime layer 4 s sooner under TCG than from xz
        // (docs/image-format.md, "Boot time"), for 7-12 % more bytes
        compression: FsCompression::Zstd,
        block_size: crate::format::squashfs::Options::default().block_size,
        mkfs_time: epoch.min(u32::MAX as u64) as u32,
        verity: VERITY_LAYOUT,
    };
    let runtime_dead_weight: Vec<String> = m
        .runtime
        .iter()
        .chain(m.server.iter())
        .flat_map(|r| crate::runtimes::dead_weight(r, m.arch))
        .collect();
    let filter = Filter {
        common: crate::layers::DEAD_WEIGHT
            .iter()
            .map(|s| s.to_string())
            .collect(),
        runtime: runtime_dead_weight,
        keep: m.keep.clone(),
    };
    let layer = |name: &str| LayerInputs {
        unit: UnitKind::Layer,
        format: FORMAT,
        fuse_version: version.clone(),
        name: name.into(),
        fs: fs.clone(),
        epoch,
        packages: Vec::new(),
        filter: filter.clone(),
        effects: Vec::new(),
        system: None,
        server: None,
        app: None,
        jre: None,
        bytecode: None,
        usr_aliases: usr_aliases(&m.distribution.codename, m.arch),
    };
    let mut packages = lock.packages.clone();
    packages.sort();
    let pins_of = |l: &str| -> Vec<Pin> {
        packages
            .iter()
            .filter(|p| layer_of(m, &p.name) == l)
            .cloned()
            .collect()
    };

    let mut base = layer("base");
    base.packages = pins_of("base");
    base.effects.push(Effect::CaBundle);
    if m.runtime.as_ref().is_some_and(|r| r.name == "java") {
        base.effects.push(Effect::JavaCacerts);
    }
    let mut status = vec![lock.kernel.clone()];
    status.extend(packages.iter().cloned());
    base.system = Some(SystemFiles {
        name: m.name.clone(),
        version: m.version.clone(),
        vendor: m.distribution.vendor.clone(),
        codename: m.distribution.codename.clone(),
        status,
    });
    let mut layers = vec![base];
    if m.runtime.is_some() {
        let mut rt = layer("runtime");
        rt.packages = pins_of("runtime");
        if m.runtime.as_ref().is_some_and(|r| r.name == "java") {
            rt.jre = Some(JreInputs {
                packages: app.java_packages.clone(),
                server_packages: if m.server.is_some() {
                    pins_of("server")
                } else {
                    Vec::new()
                },
                modules: if app.java_scan_error.is_some() {
                    "all".into()
                } else {
                    m.java_modules.key()
                },
            });
            // lib/modules and libjvm.so: 1 MiB blocks (squashfs's largest, xz dictionary
            // = block) save 1.4 MB on a trimmed JRE; a fault reads the whole block into
            // the page cache, so the pages around it come too
            rt.fs.block_size = 1 << 20;
        }
        if !rt.packages.is_empty() {
            layers.push(rt);
        }
    }
    if let Some(server) = &m.server {
        let mut sv = layer("server");
        sv.packages = pins_of("server");
        sv.server = Some(ServerFiles {
            tomcat: server.version.clone(),
            port: m.port,
            layout: crate::runtimes::CATALINA_BASE_LAYOUT,
            mbeans: m.server_mbeans,
        });
        layers.push(sv);
    }
    // The app's layers, dependencies below code (`app::AppScan::parts`).
    for part in &app.parts {
        let mut l = layer(&part.name);
        l.app = Some(AppFiles {
            listing_sha256: part.listing_sha256.clone(),
        });
        layers.push(l);
    }
    // Python: the bytecode of the standard library and of the app's layers, compiled by the
    // image's own interpreter (`pyc`).
    if let Some(r) = m
        .runtime
        .as_ref()
        .filter(|r| r.name == "python" && m.python_bytecode)
    {
        let bytecode = BytecodeInputs {
            python: r.version.clone(),
            arch: m.arch,
            mode: PYC_MODE.into(),
            interpreter: pins_of("runtime"),
            loader: pins_of("base"),
        };
        for l in layers
            .iter_mut()
            .filter(|l| l.name == "runtime" || l.app.is_some())
        {
            l.bytecode = Some(bytecode.clone());
        }
    }
    let layers = layers
        .into_iter()
        .map(|inputs| {
            Ok(LayerPlan {
                name: inputs.name.clone(),
                key: key_of(&inputs)?,
                inputs,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let kernel_inputs = KernelInputs {
        unit: UnitKind::Kernel,
        format: FORMAT,
        fuse_version: version.clone(),
        package: lock.kernel.clone(),
        modules: crate::kernel::BOOT_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        required: crate::kernel::REQUIRED_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let kernel = Unit {
        key: key_of(&kernel_inputs)?,
        inputs: kernel_inputs,
    };
    let boot = BootPlan {
        format: 1,
        hostname: m.name.clone(),
        modules: Vec::new(),
        device_modules: Vec::new(),
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        fs_type: fs.kind.as_str().into(),
        verity: Default::default(),
        app: app_plan(m, app)?,
    };
    let initramfs_inputs = InitramfsInputs {
        unit: UnitKind::Initramfs,
        format: FORMAT,
        fuse_version: version.clone(),
        kernel: kernel.key.clone(),
        arch: m.arch,
        init_sha256: init_sha256(m.arch)?,
        layers: layers.iter().map(|l| l.key.clone()).collect(),
        boot,
        epoch,
        compression: Some(INITRAMFS_LAYOUT.into()),
        module_loading: Some(format!(
            "modalias; always: {}",
            crate::kernel::ALWAYS_LOAD.join(",")
        )),
    };
    let initramfs = Unit {
        key: key_of(&initramfs_inputs)?,
        inputs: initramfs_inputs,
    };
    let distro = crate::layers::DistroInfo {
        vendor: m.distribution.vendor.clone(),
        codename: m.distribution.codename.clone(),
    };
    let uki_inputs = UkiInputs {
        unit: UnitKind::Uki,
        format: FORMAT,
        fuse_version: version.clone(),
        stub: lock.stub.clone(),
        stub_path: m.arch.stub_path().into(),
        kernel: kernel.key.clone(),
        initramfs: initramfs.key.clone(),
        cmdline: cmdline(m.arch).into(),
        os_release: crate::layers::os_release(&m.name, &m.version, &distro),
    };
    let uki = Unit {
        key: key_of(&uki_inputs)?,
        inputs: uki_inputs,
    };
    Ok(Plan {
        format: FORMAT,
        fuse_version: version,
        epoch,
        lock_sha256: sha256_hex(lock.to_text()?.as_bytes()),
        app_sha256: app.sha256.clone(),
        layers,
        kernel,
        initramfs,
        uki,
    })
}

/// The app's start command, working directory and environment (the boot plan's `app`).
pub fn app_plan(m: &Manifest, app: &AppScan) -> Result<AppPlan> {
    if let Some(o) = &app.oci {
        let mut env = o.env.clone();
        env.entry("PORT".into())
            .or_insert_with(|| o.port.to_string());
        return Ok(AppPlan {
            argv: o.argv.clone(),
            workdir: o.workdir.clone(),
            env,
            uid: o.uid,
            gid: o.gid,
            env_args: None,
            stop_timeout: m.stop_timeout,
            stop_signal: o.stop_signal.clone(),
            writable: m.writable.clone(),
        });
    }
    crate::layers::app_plan(m)
}

fn init_sha256(arch: Arch) -> Result<String> {
    static SHA: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let init = init_for(arch)?;
    Ok(SHA[arch as usize].get_or_init(|| sha256_hex(init)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::scan_app;
    use crate::resolve::lock::{AppPin, ArchiveSnapshot, ResolveInputs, LOCK_VERSION};

    fn pin(name: &str, sha: char) -> Pin {
        Pin {
            name: name.into(),
            version: "1".into(),
            arch: "amd64".into(),
            sha256: sha.to_string().repeat(64),
            size: 1,
            path: format!("pool/{name}.deb"),
        }
    }

    fn lock(packages: Vec<Pin>) -> Lock {
        Lock {
            version: LOCK_VERSION,
            archive: ArchiveSnapshot {
                distribution: "debian/bookworm".into(),
                suite: None,
                codename: "bookworm".into(),
                date: None,
                epoch: 1_700_000_000,
            },
            inputs: ResolveInputs {
                distribution: "debian/bookworm".into(),
                arch: crate::arch::Arch::Amd64,
                kernel: "linux-image-amd64".into(),
                packages: vec![],
                interpreter: None,
                needed: vec![],
                versions: vec![],
                runtime: vec!["java=17".into()],
                jsp: false,
            },
            app: AppPin {
                sha256: "b".repeat(64),
            },
            kernel: pin("linux-image-6.1.0-9-amd64", 'k'),
            stub: pin("systemd-boot-efi", 's'),
            packages,
        }
    }

    fn python_app(dir: &std::path::Path, content: &str) -> (Manifest, AppScan) {
        std::fs::create_dir_all(dir.join("py")).unwrap();
        std::fs::write(dir.join("py/__main__.py"), content).unwrap();
        let text = "[image]\nname = \"p\"\nversion = \"1\"\n[app]\nkind = \"python\"\npath = \"py\"\nport = 8080\n";
        let m = crate::manifest::parse(text, &dir.join("fuse.toml")).unwrap();
        let scan = scan_app(&m, None).unwrap();
        (m, scan)
    }

    #[test]
    fn class_path_jars_are_in_the_app_layer_and_in_the_jre_analysis() {
        use crate::runtimes::tests::jar_of;
        let d = tempfile::tempdir().unwrap();
        let dist = d.path().join("dist");
        std::fs::create_dir_all(dist.join("lib")).unwrap();
        // the main jar has no classes; the sibling jar's class uses java.sql
        let main = jar_of(&["Main-Class: a.Main", "Class-Path: lib/dep.jar"], &[]);
        std::fs::write(dist.join("app.jar"), &main).unwrap();
        let class = crate::java::classfile::tests::tiny_class();
        // and JNI code needing libz
        let so = crate::resolve::native::tests::fake_so(
            crate::resolve::elf::EM_X86_64,
            None,
            &["libz.so.1"],
            None,
            &[],
            &[],
        );
        std::fs::write(
            dist.join("lib/dep.jar"),
            jar_of(&[], &[("a/B.class", &class), ("native/libdep.so", &so)]),
        )
        .unwrap();
        std::fs::write(dist.join("lib/other.jar"), jar_of(&[], &[])).unwrap();
        std::fs::write(dist.join("README"), "not on the class path").unwrap();
        let head = "[image]\nname = \"j\"\nversion = \"1\"\n[app]\nkind = \"jar\"\nport = 8080\n";
        // app.path = the jar: the jars its Class-Path names come along, nothing else
        let m = crate::manifest::parse(
            &format!("{head}path = \"dist/app.jar\"\n"),
            &d.path().join("fuse.toml"),
        )
        .unwrap();
        let scan = scan_app(&m, None).unwrap();
        let files: Vec<&str> = scan.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(files, ["app", "app/app.jar", "app/lib", "app/lib/dep.jar"]);
        // the Class-Path jar is a layer of its own, below the app's code
        let names: Vec<&str> = scan.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["deps", "app"]);
        let t = scan.tree("deps", 7).unwrap();
        let deps: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(deps, ["app", "app/lib", "app/lib/dep.jar"]);
        let t = scan.tree("app", 7).unwrap();
        let code: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(code, ["app", "app/app.jar"]);
        assert!(
            scan.java_packages.contains("java.sql"),
            "{:?}",
            scan.java_packages
        );
        assert!(
            scan.native.needed.contains("libz.so.1"),
            "{:?}",
            scan.native
        );
        assert_eq!(scan.sha256, scan.listing_sha256);
        let argv = crate::runtimes::argv(&m).unwrap().0;
        assert!(
            argv.ends_with(&["-jar".to_string(), "/app/app.jar".to_string()]),
            "{argv:?}"
        );
        // app.path = the directory: all of it goes to /app, the jar with a Main-Class runs
        let m = crate::manifest::parse(
            &format!("{head}path = \"dist\"\n"),
            &d.path().join("fuse.toml"),
        )
        .unwrap();
        assert_eq!(m.jar.as_ref().unwrap().main, "app.jar");
        let scan = scan_app(&m, None).unwrap();
        assert!(scan.entries.iter().any(|e| e.path == "app/README"));
        assert!(scan.entries.iter().any(|e| e.path == "app/lib/other.jar"));
        assert!(
            scan.java_packages.contains("java.sql"),
            "{:?}",
            scan.java_packages
        );
        // without the Class-Path the sibling's classes are not the app's
        std::fs::write(dist.join("app.jar"), jar_of(&["Main-Class: a.Main"], &[])).unwrap();
        let m = crate::manifest::parse(
            &format!("{head}path = \"dist\"\n"),
            &d.path().join("fuse.toml"),
        )
        .unwrap();
        let scan = scan_app(&m, None).unwrap();
        assert!(
            !scan.java_packages.contains("java.sql"),
            "{:?}",
            scan.java_packages
        );
        // two executable jars: which one runs is not guessed
        std::fs::write(dist.join("tool.jar"), jar_of(&["Main-Class: t.Tool"], &[])).unwrap();
        let e = crate::manifest::parse(
            &format!("{head}path = \"dist\"\n"),
            &d.path().join("fuse.toml"),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("app.jar, tool.jar") && e.contains("app.path"),
            "{e}"
        );
    }

    #[test]
    fn packages_go_to_their_layers_and_keys_follow_inputs() {
        let d = tempfile::tempdir().unwrap();
        let (m, scan) = python_app(d.path(), "print(1)\n");
        let l = lock(vec![pin("python3.11-minimal", 'j'), pin("libc6", 'c')]);
        let p = plan(&m, &l, &scan, 5).unwrap();
        let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["base", "runtime", "app"]);
        assert_eq!(p.layers[0].inputs.packages[0].name, "libc6");
        assert_eq!(p.layers[1].inputs.packages[0].name, "python3.11-minimal");
        assert_eq!(p.layers[0].inputs.effects, [Effect::CaBundle]);
        assert!(p.layers[1]
            .inputs
            .filter
            .runtime
            .contains(&"usr/lib/python3.11/test/".to_string()));
        // Bytecode for the standard library and the app, compiled by the Python packages
        // (run on the base's, which are not a key input).
        assert!(p.layers[0].inputs.bytecode.is_none());
        for l in &p.layers[1..] {
            let bc = l.inputs.bytecode.as_ref().unwrap();
            assert_eq!(bc.interpreter[0].name, "python3.11-minimal");
            assert_eq!(bc.loader[0].name, "libc6");
            assert!(!serde_json::to_string(&l.inputs).unwrap().contains("libc6"));
        }
        let mut no_pyc = m.clone();
        no_pyc.python_bytecode = false;
        let p0 = plan(&no_pyc, &l, &scan, 5).unwrap();
        assert!(p0.layers.iter().all(|l| l.inputs.bytecode.is_none()));
        assert_ne!(p0.layers[1].key, p.layers[1].key);
        // Same inputs, same keys (a plan is a function).
        let again = plan(&m, &l, &scan, 5).unwrap();
        for (a, b) in p.layers.iter().zip(&again.layers) {
            assert_eq!(a.key, b.key);
            assert_eq!(a.key, key_of(&a.inputs).unwrap());
        }
        assert_eq!(p.uki.key, again.uki.key);

        // A new app changes the app layer and, through its dm-verity root hash in the boot
        // plan, the initramfs and UKI; not the other layers or the kernel.
        let (m2, scan2) = python_app(d.path(), "print(2)\n");
        let p2 = plan(&m2, &l, &scan2, 5).unwrap();
        assert_eq!(p.layers[0].key, p2.layers[0].key);
        assert_eq!(p.layers[1].key, p2.layers[1].key);
        assert_ne!(p.layers[2].key, p2.layers[2].key);
        assert_eq!(p.kernel.key, p2.kernel.key);
        assert_ne!(p.initramfs.key, p2.initramfs.key);
        assert_ne!(p.uki.key, p2.uki.key);

        // A new package pin changes the base layer (and its dpkg status), not the runtime's.
        let mut c2 = pin("libc6", 'd');
        c2.version = "2".into();
        let l3 = lock(vec![pin("python3.11-minimal", 'j'), c2]);
        let p3 = plan(&m, &l3, &scan, 5).unwrap();
        assert_ne!(p.layers[0].key, p3.layers[0].key);
        assert_eq!(p.layers[1].key, p3.layers[1].key);
        // A new kernel changes the kernel, initramfs and UKI, and the base layer's status.
        let mut l4 = l.clone();
        l4.kernel = pin("linux-image-6.1.0-10-amd64", 'e');
        let p4 = plan(&m, &l4, &scan, 5).unwrap();
        assert_ne!(p.kernel.key, p4.kernel.key);
        assert_ne!(p.initramfs.key, p4.initramfs.key);
        assert_ne!(p.uki.key, p4.uki.key);
        assert_ne!(p.layers[0].key, p4.layers[0].key);
        assert_eq!(p.layers[1].key, p4.layers[1].key);
        // The epoch is an input of every layer.
        let p5 = plan(&m, &l, &scan, 6).unwrap();
        assert!(p.layers.iter().zip(&p5.layers).all(|(a, b)| a.key != b.key));
    }

    #[test]
    fn the_scan_identifies_file_and_directory_apps() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.bin"), b"\x7fELF not really").unwrap();
        let text = "[image]\nname = \"b\"\nversion = \"1\"\n[app]\nkind = \"binary\"\npath = \"app.bin\"\nport = 8080\n";
        let m = crate::manifest::parse(text, &d.path().join("fuse.toml")).unwrap();
        // A file kind: the artifact's digest; an ELF file that is not one is refused.
        assert!(scan_app(&m, None).is_err());
        std::fs::write(d.path().join("app.bin"), b"bytes").unwrap();
        let e = format!("{:#}", scan_app(&m, None).unwrap_err());
        assert!(e.contains("needs an ELF executable"), "{e}");
        let app = d.path().join("py");
        std::fs::create_dir_all(app.join("pkg")).unwrap();
        std::fs::write(app.join("pkg/__init__.py"), "x = 1\n").unwrap();
        let text = "[image]\nname = \"p\"\nversion = \"1\"\n[app]\nkind = \"python\"\npath = \"py\"\nargs = [\"-m\", \"pkg\"]\nport = 8080\n";
        let m = crate::manifest::parse(text, &d.path().join("fuse.toml")).unwrap();
        let scan = scan_app(&m, None).unwrap();
        assert_eq!(scan.sha256, scan.listing_sha256);
        assert!(scan.entries.iter().any(|e| e.path == "app/pkg/__init__.py"));
        std::fs::write(app.join("pkg/__init__.py"), "x = 2\n").unwrap();
        assert_ne!(scan_app(&m, None).unwrap().sha256, scan.sha256);
    }
}
