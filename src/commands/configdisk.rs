//! `fuse config-disk FILE -o DISK`: an env file on a small FAT disk (label FUSECONFIG), for
//! hypervisors without QEMU's fw_cfg. The disk holds secrets: it is written mode 0600.

use crate::cli::ConfigDiskArgs;
use crate::{configdisk, envfile};
use anyhow::{Context, Result};

pub fn run(args: &ConfigDiskArgs) -> Result<u8> {
    let env = std::fs::read(&args.file)
        .with_context(|| format!("cannot read env file {}", args.file.display()))?;
    let keys = envfile::check(&env).with_context(|| format!("{}", args.file.display()))?;
    let disk = configdisk::write(&env)?;
    crate::util::fs::write_atomic(&args.out, &disk)?;
    crate::util::fs::set_mode(&args.out, 0o600)?;
    tracing::info!(
        "config disk {} ({} bytes, label {}): {} variables ({})",
        args.out.display(),
        disk.len(),
        configdisk::LABEL,
        keys.len(),
        keys.join(", ")
    );
    println!("{}", args.out.display());
    Ok(0)
}
