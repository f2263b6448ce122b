//! Finding the layer partitions: GPT partition name `fuse-<layer>`, from sysfs uevent files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Where the kernel lists block devices and partitions.
const SYS_BLOCK: &str = "/sys/class/block";

/// GPT partition name that holds layer `layer`.
pub fn partition_name(layer: &str) -> String {
    format!("fuse-{layer}")
}

/// What init needs from one block device's `uevent` file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `DEVNAME=`: the node name under /dev (e.g. `vda2`).
    pub devname: Option<String>,
    /// `PARTNAME=`: the GPT partition name, present only for named partitions.
    pub partname: Option<String>,
}

/// Parses the `KEY=VALUE` lines of a sysfs `uevent` file; unknown keys are ignored.
pub fn parse_uevent(text: &str) -> Uevent {
    let mut ev = Uevent::default();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            match k {
                "DEVNAME" => ev.devname = Some(v.to_string()),
                "PARTNAME" => ev.partname = Some(v.to_string()),
                _ => {}
            }
        }
    }
    ev
}

/// Result of matching the block devices seen against the wanted layers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Layer name -> device name (first match in sorted sysfs order).
    pub found: BTreeMap<String, String>,
    /// Layers for which a second partition with the same name was seen (ignored).
    pub duplicates: Vec<String>,
}

/// Matches `(sysfs name, uevent text)` pairs (sorted by name) against `layers`.
/// Pure: the caller reads sysfs.
pub fn match_layers(layers: &[String], devices: &[(String, String)]) -> Matched {
    let mut m = Matched::default();
    for (_, text) in devices {
        let ev = parse_uevent(text);
        let (Some(dev), Some(part)) = (ev.devname, ev.partname) else {
            continue;
        };
        if !valid_devname(&dev) {
            continue;
        }
        for layer in layers {
            if part == partition_name(layer) {
                if m.found.contains_key(layer) {
                    if !m.duplicates.contains(layer) {
                        m.duplicates.push(layer.clone());
                    }
                } else {
                    m.found.insert(layer.clone(), dev.clone());
                }
            }
        }
    }
    m
}

/// A device name we are willing to join to `/dev/`: no `..`, no leading `/`.
pub fn valid_devname(dev: &str) -> bool {
    !dev.is_empty() && !dev.starts_with('/') && !dev.split('/').any(|c| c == ".." || c.is_empty())
}

/// Reads every `/sys/class/block/*/uevent`, sorted by device name.
pub fn scan() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(SYS_BLOCK) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(text) = std::fs::read_to_string(entry.path().join("uevent")) {
                out.push((name, text));
            }
        }
    }
    out.sort();
    out
}

/// Polls sysfs every `interval` until every layer's partition exists and its `/dev` node is
/// there, or `timeout` passes; then fails naming the missing partitions and the devices seen.
pub fn find_partitions(
    layers: &[String],
    timeout: Duration,
    interval: Duration,
) -> Result<BTreeMap<String, PathBuf>> {
    let start = Instant::now();
    loop {
        let devices = scan();
        let m = match_layers(layers, &devices);
        let ready: BTreeMap<String, PathBuf> = m
            .found
            .iter()
            .map(|(l, d)| (l.clone(), Path::new("/dev").join(d)))
            .filter(|(_, p)| p.exists())
            .collect();
        if ready.len() == layers.len() {
            for l in &m.duplicates {
                crate::log!(
                    "warning: more than one partition is named {}; using the first, {}",
                    partition_name(l),
                    ready
                        .get(l)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            return Ok(ready);
        }
        if start.elapsed() >= timeout {
            let missing: Vec<String> = layers
                .iter()
                .filter(|l| !ready.contains_key(*l))
                .map(|l| partition_name(l))
                .collect();
            let seen: Vec<String> = devices
                .iter()
                .map(|(name, text)| match parse_uevent(text).partname {
                    Some(p) => format!("{name} ({p})"),
                    None => name.clone(),
                })
                .collect();
            bail!(
                "no partition named {} after {}s; block devices seen: {}",
                missing.join(", "),
                timeout.as_secs(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            );
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn dev(name: &str, text: &str) -> (String, String) {
        (name.to_string(), text.to_string())
    }

    #[test]
    fn parses_a_real_partition_uevent() {
        let ev = parse_uevent("MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTNAME=fuse-base\n");
        assert_eq!(ev.devname.as_deref(), Some("vda2"));
        assert_eq!(ev.partname.as_deref(), Some("fuse-base"));
        let disk = parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
        assert_eq!(disk.partname, None);
    }

    #[test]
    fn matches_layers_by_partition_name() {
        let devices = vec![
            dev("vda", "DEVNAME=vda\nDEVTYPE=disk\n"),
            dev("vda1", "DEVNAME=vda1\nPARTNAME=EFI System\n"),
            dev("vda2", "DEVNAME=vda2\nPARTNAME=fuse-base\n"),
            dev("vda3", "DEVNAME=vda3\nPARTNAME=fuse-app\n"),
            dev("vdb1", "DEVNAME=vdb1\nPARTNAME=fuse-base\n"),
            dev("vdc1", "DEVNAME=vdc1\nPARTNAME=fuse-basement\n"),
        ];
        let m = match_layers(&layers(&["base", "app"]), &devices);
        assert_eq!(m.found.get("base").map(String::as_str), Some("vda2"));
        assert_eq!(m.found.get("app").map(String::as_str), Some("vda3"));
        assert_eq!(m.duplicates, vec!["base".to_string()]);
    }

    #[test]
    fn reports_missing_and_ignores_hostile_names() {
        let devices = vec![
            dev("x", "DEVNAME=../etc/passwd\nPARTNAME=fuse-app\n"),
            dev("y", "PARTNAME=fuse-app\n"),
            dev("z", "DEVNAME=sda1\nPARTNAME=fuse-app"),
        ];
        let m = match_layers(&layers(&["base", "app"]), &devices);
        assert_eq!(m.found.get("app").map(String::as_str), Some("sda1"));
        assert!(!m.found.contains_key("base"));
    }
}
