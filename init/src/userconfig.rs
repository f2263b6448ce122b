//! The environment's configuration: one env file, from the first source present, in this
//! order:
//!
//! 1. QEMU fw_cfg `opt/fuse/env` (`fuse run --config`, `-fw_cfg name=opt/fuse/env,file=...`);
//! 2. a config disk: FAT labelled `FUSECONFIG` with `/env` (`fuse config-disk`);
//! 3. the cloud's user data, only on EC2 or GCE as the DMI data says (see [`crate::cloud`]).
//!
//! Sources are not merged: the first one found is the whole configuration. Values are
//! never printed; the console shows the source and the key names.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use crate::app::parse_env_file;
use crate::{cloud, configdisk, log};

/// Where QEMU's fw_cfg entry `opt/fuse/env` appears.
pub const FW_CFG_ENV: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/fuse/env/raw";
/// A second look for the config disk after this long, when an NVMe controller is present
/// (NVMe finds its namespaces after its driver has loaded).
const DISK_RESCAN: Duration = Duration::from_millis(300);

/// Parses an env file from `source`, logging key names and bad line numbers only.
fn parse(source: &str, data: &[u8]) -> BTreeMap<String, String> {
    let f = parse_env_file(data);
    for n in &f.bad_lines {
        log!("warning: {source}: line {n} is not KEY=VALUE; ignored");
    }
    log!(
        "config from {source}: {} variables ({})",
        f.vars.len(),
        f.vars.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    f.vars
}

/// The overrides for the app's environment (empty when no source is present). `settle`
/// waits until the devices present have their drivers (the config disk may sit behind a
/// controller whose driver loads late); fw_cfg does not wait for it.
pub fn load(settle: &dyn Fn()) -> BTreeMap<String, String> {
    match std::fs::read(FW_CFG_ENV) {
        Ok(data) => return parse("fw_cfg opt/fuse/env", &data),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log!("warning: cannot read {FW_CFG_ENV}: {e}"),
    }
    settle();
    let disk = configdisk::find().or_else(|| {
        if !configdisk::nvme_present() {
            return None;
        }
        std::thread::sleep(DISK_RESCAN);
        configdisk::find()
    });
    if let Some(dev) = disk {
        match configdisk::read_env(&dev) {
            Ok(data) => {
                return parse(
                    &format!("config disk {} ({})", dev.display(), configdisk::LABEL),
                    &data,
                )
            }
            Err(e) => log!("warning: config disk {}: {e:#}", dev.display()),
        }
    }
    let dmi = cloud::read_dmi();
    if let Some(c) = cloud::detect(&dmi) {
        match cloud::user_data(c) {
            Ok(Some(data)) if cloud::is_env_file(&data) => {
                return parse(&format!("{} user data", c.name()), &data)
            }
            Ok(Some(_)) => log!("{} user data is not an env file; ignored", c.name()),
            Ok(None) => log!("{}: no user data", c.name()),
            Err(e) => log!("warning: {} user data: {e:#}", c.name()),
        }
    }
    log!("no boot-time config (fw_cfg opt/fuse/env, FUSECONFIG disk, cloud user data); using the image's defaults");
    BTreeMap::new()
}
