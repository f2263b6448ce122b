//! Deterministic tar archives for the OVA (POSIX ustar, as the OVF specification requires)
//! and the GCE image (GNU "oldgnu" headers, as `gcloud compute images create` requires):
//! mode 0644, owner 0:0 without names, mtime 0, entries in the order given.

use anyhow::{Context, Result};
use std::io::Read;

/// Which header flavour to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Ustar,
    Gnu,
}

/// A tar archive of `entries` (name, bytes), ended by the two zero blocks.
pub fn write(entries: &[(&str, &[u8])], flavour: Flavour) -> Result<Vec<u8>> {
    let total: usize = entries.iter().map(|(_, d)| d.len() + 1024).sum();
    let mut b = tar::Builder::new(Vec::with_capacity(total + 1024));
    b.mode(tar::HeaderMode::Deterministic);
    for (name, data) in entries {
        let mut h = match flavour {
            Flavour::Ustar => tar::Header::new_ustar(),
            Flavour::Gnu => tar::Header::new_gnu(),
        };
        h.set_path(name)
            .with_context(|| format!("bad tar entry name {name}"))?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data)
            .with_context(|| format!("cannot add {name} to the tar archive"))?;
    }
    b.into_inner().context("cannot finish the tar archive")
}

/// Every member of a tar stream, (name, bytes), in archive order; `want` decides which
/// entries' bytes are kept (the others are skipped, not held in memory). Strict, so that
/// every tar reader sees the same files: only regular files (no links, directories,
/// long-name or pax headers), names without `/`, each name once.
pub fn read<R: Read>(r: R, want: impl Fn(&str) -> bool) -> Result<Vec<(String, Vec<u8>)>> {
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for e in a.entries().context("not a tar archive")?.raw(true) {
        let mut e = e.context("bad tar entry")?;
        let name = String::from_utf8(e.path_bytes().into_owned())
            .ok()
            .filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
            .with_context(|| {
                format!(
                    "tar member {:?}: only plain file names are allowed",
                    String::from_utf8_lossy(&e.path_bytes())
                )
            })?;
        anyhow::ensure!(
            e.header().entry_type() == tar::EntryType::Regular,
            "tar member {name:?} is of type {:?}, not a regular file",
            e.header().entry_type()
        );
        anyhow::ensure!(
            names.insert(name.clone()),
            "tar member {name:?} appears twice (readers disagree on which one counts)"
        );
        if !want(&name) {
            continue;
        }
        let mut data = Vec::with_capacity(e.size().min(1 << 24) as usize);
        e.read_to_end(&mut data)
            .with_context(|| format!("cannot read {name} from the tar archive"))?;
        out.push((name, data));
    }
    Ok(out)
}

/// True when `b` starts with a ustar or GNU tar header.
pub fn is_tar(b: &[u8]) -> bool {
    b.get(257..262) == Some(b"ustar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_deterministic() {
        for f in [Flavour::Ustar, Flavour::Gnu] {
            let t = write(&[("a.ovf", b"x"), ("b.vmdk", &[1u8; 1000])], f).unwrap();
            assert_eq!(
                t,
                write(&[("a.ovf", b"x"), ("b.vmdk", &[1u8; 1000])], f).unwrap()
            );
            assert!(is_tar(&t));
            let back = read(&t[..], |_| true).unwrap();
            assert_eq!(back[0], ("a.ovf".to_string(), b"x".to_vec()));
            assert_eq!(back[1].1, vec![1u8; 1000]);
            let only_b = read(&t[..], |n| n == "b.vmdk").unwrap();
            assert_eq!(only_b.len(), 1);
        }
        // oldgnu magic: "ustar  \0"
        let t = write(&[("disk.raw", b"")], Flavour::Gnu).unwrap();
        assert_eq!(&t[257..265], b"ustar  \0");
        let t = write(&[("x.ovf", b"")], Flavour::Ustar).unwrap();
        assert_eq!(&t[257..265], b"ustar\x0000");
    }
}
