//! Build script: compile the init (`init/`, crate fuse-init) as a fully static binary and
//! place it in OUT_DIR, where `fuse` embeds it with `include_bytes!`. So a plain
//! `cargo build --release` gives a `fuse` that needs nothing else to build images.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/src");
    println!("cargo:rerun-if-changed=init/Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("init-target");
    // amd64: the toolchain building fuse.
    let bin = build_init(&cargo, &root, &target_dir, "x86_64-unknown-linux-gnu", &[])
        .expect("building the static init (init/, fuse-init) for x86_64 failed");
    std::fs::copy(&bin, out.join("fuse-init")).expect("cannot copy the init binary into OUT_DIR");
    // arm64: a rustc with the aarch64 standard library (Debian: rustc-web +
    // libstd-rust-web-dev:arm64) and a cross linker (gcc-aarch64-linux-gnu). Without them the
    // file stays empty and `fuse build` of an arm64 image says what to install.
    let arm64 = out.join("fuse-init-arm64");
    println!("cargo:rerun-if-env-changed=FUSE_ARM64_RUSTC");
    println!("cargo:rerun-if-env-changed=FUSE_ARM64_LINKER");
    let rustc = std::env::var("FUSE_ARM64_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let linker =
        std::env::var("FUSE_ARM64_LINKER").unwrap_or_else(|_| "aarch64-linux-gnu-gcc".into());
    println!("cargo:rerun-if-changed={rustc}");
    let built = if has_aarch64_std(&rustc) && runs(&linker) {
        let env = [
            ("RUSTC", rustc.as_str()),
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                linker.as_str(),
            ),
        ];
        let dir = out.join("init-target-arm64");
        match build_init(&cargo, &root, &dir, "aarch64-unknown-linux-gnu", &env) {
            Some(b) => Some(std::fs::read(b).expect("cannot read the arm64 init")),
            None => panic!("building the static init for aarch64 with {rustc} and {linker} failed"),
        }
    } else {
        println!(
            "cargo:warning=no arm64 init: {rustc} has no aarch64-unknown-linux-gnu standard library or {linker} is missing (scripts/setup.sh installs them); this fuse builds amd64 images only"
        );
        None
    };
    std::fs::write(&arm64, built.unwrap_or_default()).expect("cannot write the arm64 init");
}

/// Builds the init for `target` with the outer build's cargo; the binary's path, or None
/// when cargo fails.
fn build_init(
    cargo: &std::ffi::OsStr,
    root: &std::path::Path,
    target_dir: &std::path::Path,
    target: &str,
    env: &[(&str, &str)],
) -> Option<PathBuf> {
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "fuse-init",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(target_dir)
        // A static, small, deterministic PID 1, whatever the outer build's flags are.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .envs(env.iter().copied())
        .status()
        .expect("cannot run cargo to build the init");
    status
        .success()
        .then(|| target_dir.join(target).join("release").join("fuse-init"))
}

/// Whether `rustc`'s sysroot holds the aarch64-unknown-linux-gnu standard library.
fn has_aarch64_std(rustc: &str) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && std::path::Path::new(&sysroot)
            .join("lib/rustlib/aarch64-unknown-linux-gnu/lib")
            .is_dir()
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
