//! Block devices as sysfs lists them (uevent files): used to find the config disk. Layer
//! partitions are found by GPT partition GUID (`verity.rs`).

/// Where the kernel lists block devices and partitions.
const SYS_BLOCK: &str = "/sys/class/block";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_partition_uevent() {
        let ev = parse_uevent("MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTNAME=fuse-base\n");
        assert_eq!(ev.devname.as_deref(), Some("vda2"));
        assert_eq!(ev.partname.as_deref(), Some("fuse-base"));
        let disk = parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
        assert_eq!(disk.partname, None);
    }
}
