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
    let target = "x86_64-unknown-linux-gnu";
    let target_dir = out.join("init-target");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "fuse-init",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(&target_dir)
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
        .status()
        .expect("cannot run cargo to build the init");
    assert!(
        status.success(),
        "building the static init (init/, fuse-init) failed"
    );
    let bin = target_dir.join(target).join("release").join("fuse-init");
    std::fs::copy(&bin, out.join("fuse-init")).expect("cannot copy the init binary into OUT_DIR");
}
