//! `fuse.lock`: every input of an image pinned: the archive snapshot (suite, Release date),
//! the resolution inputs, the kernel, the EFI stub, every package (name, version, arch,
//! sha256, size, path) and the app artifact digest. Versioned, sorted, human-diffable TOML.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The lock format this fuse reads and writes.
pub const LOCK_VERSION: u32 = 1;
pub const LOCK_FILE: &str = "fuse.lock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub archive: ArchiveSnapshot,
    pub inputs: ResolveInputs,
    pub app: AppPin,
    pub kernel: Pin,
    pub stub: Pin,
    #[serde(default, rename = "package", skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Pin>,
}

/// Which state of the archive the pins come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSnapshot {
    /// "debian/bookworm"
    pub distribution: String,
    pub suite: Option<String>,
    pub codename: String,
    /// The Release `Date:` the index was read at.
    pub date: Option<String>,
    /// Source epoch for file times (the Release date, as unix seconds).
    pub epoch: u64,
}

/// What the resolution was computed from: when these are unchanged, the pins stand.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolveInputs {
    pub distribution: String,
    /// `[image] arch` (written only when not amd64, so older locks stay valid).
    #[serde(default, skip_serializing_if = "crate::arch::Arch::is_amd64")]
    pub arch: crate::arch::Arch,
    pub kernel: String,
    /// `[system] packages` of the manifest, sorted.
    pub packages: Vec<String>,
    /// The app's ELF interpreter (binary apps), if dynamic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// The app's DT_NEEDED sonames (of the binary, and of every ELF object in the app that
    /// the app does not satisfy itself), sorted.
    #[serde(default)]
    pub needed: Vec<String>,
    /// The newest symbol version per library and version family the app's native code
    /// needs from the distribution (`libc.so.6 GLIBC_2.34`), sorted; checked against the
    /// libraries' definitions when resolving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// The language runtime and app server asked for (`java=17`, `tomcat=10`), in that
    /// order; absent for binary apps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime: Vec<String>,
    /// The war holds JSP pages, so Tomcat's JSP compiler is resolved too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jsp: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppPin {
    /// sha256 of the app artifact the lock was last written for (informational: a new app
    /// build keeps the pins as long as its resolution inputs are unchanged). For a container
    /// app (kind oci), the manifest digest its image resolved to: `--locked` refuses a
    /// build whose image resolves to another (a tag that moved).
    pub sha256: String,
}

/// One exact package.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub size: u64,
    /// Path of the .deb relative to the mirror root (the index's Filename).
    pub path: String,
}

impl Pin {
    pub fn of(p: &crate::archive::packages::Package) -> Pin {
        Pin {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.architecture.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            path: p.filename.clone(),
        }
    }
}

impl Lock {
    /// Read a lock; `Ok(None)` when there is none. Refuses versions it does not know.
    pub fn load(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Lock::parse(&text, path).map(Some)
    }

    /// A lock from its text (`path` names it in errors). Pure.
    pub fn parse(text: &str, path: &Path) -> Result<Lock> {
        let v: toml::Value = toml::from_str(text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        match v.get("version").and_then(|v| v.as_integer()) {
            Some(n) if n == LOCK_VERSION as i64 => {}
            Some(n) => bail!(
                "{} has lock format version {n}, but this fuse reads version {LOCK_VERSION}: \
                 upgrade fuse, or run `fuse lock --update` to rewrite it",
                path.display()
            ),
            None => bail!("{} has no `version`", path.display()),
        }
        let lock: Lock = toml::from_str(text)
            .with_context(|| format!("{} is not a valid fuse.lock", path.display()))?;
        for p in lock.packages.iter().chain([&lock.kernel, &lock.stub]) {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{}: package {} has a malformed sha256",
                    path.display(),
                    p.name
                );
            }
            if p.size > crate::fetch::MAX_DOWNLOAD {
                bail!(
                    "{}: package {} claims {} bytes (at most {} are downloaded)",
                    path.display(),
                    p.name,
                    p.size,
                    crate::fetch::MAX_DOWNLOAD
                );
            }
            if p.path.split('/').any(|c| c == ".." || c.is_empty()) {
                bail!(
                    "{}: package {} has a suspicious path {:?}",
                    path.display(),
                    p.name,
                    p.path
                );
            }
        }
        Ok(lock)
    }

    /// The lock as text: fixed key order, packages sorted by name.
    pub fn to_text(&self) -> Result<String> {
        let mut sorted = self.clone();
        sorted.packages.sort();
        sorted.inputs.packages.sort();
        sorted.inputs.needed.sort();
        sorted.inputs.versions.sort();
        let body = toml::to_string(&sorted).context("cannot encode fuse.lock")?;
        Ok(format!("# fuse.lock: every input of the image, pinned. Written by `fuse lock` / `fuse build`; commit it.\n{body}"))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_text()?;
        crate::util::fs::write_atomic(path, text.as_bytes())?;
        crate::util::fs::set_mode(path, 0o644)
    }

    /// Human description of how `current` inputs differ from the locked ones (empty: same).
    pub fn input_differences(&self, current: &ResolveInputs) -> Vec<String> {
        let l = &self.inputs;
        let mut d = Vec::new();
        if l.distribution != current.distribution {
            d.push(format!(
                "distribution: lock has {}, manifest has {}",
                l.distribution, current.distribution
            ));
        }
        if l.kernel != current.kernel {
            d.push(format!(
                "kernel: lock has {}, manifest has {}",
                l.kernel, current.kernel
            ));
        }
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        let (lp, cp) = (set(&l.packages), set(&current.packages));
        for p in cp.difference(&lp) {
            d.push(format!(
                "package {p} is in the manifest but not in the lock"
            ));
        }
        for p in lp.difference(&cp) {
            d.push(format!(
                "package {p} is in the lock but no longer in the manifest"
            ));
        }
        if l.arch != current.arch {
            d.push(format!(
                "architecture: lock has {}, manifest has {}",
                l.arch, current.arch
            ));
        }
        if l.jsp != current.jsp {
            d.push(if current.jsp {
                "the war now holds JSP pages: Tomcat needs its JSP compiler".to_string()
            } else {
                "the war no longer holds JSP pages".to_string()
            });
        }
        if l.interpreter != current.interpreter {
            d.push(format!(
                "app interpreter: lock has {:?}, app has {:?}",
                l.interpreter, current.interpreter
            ));
        }
        let (ln, cn) = (set(&l.needed), set(&current.needed));
        for n in cn.difference(&ln) {
            d.push(format!(
                "the app now needs {n}, which the lock does not cover"
            ));
        }
        for n in ln.difference(&cn) {
            d.push(format!("the app no longer needs {n}"));
        }
        let (lv, cv) = (set(&l.versions), set(&current.versions));
        for v in cv.difference(&lv) {
            d.push(format!("the app now needs symbol version {v}"));
        }
        for v in lv.difference(&cv) {
            d.push(format!("the app no longer needs symbol version {v}"));
        }
        if l.runtime != current.runtime {
            d.push(format!(
                "runtime: lock has [{}], manifest has [{}]",
                l.runtime.join(", "),
                current.runtime.join(", ")
            ));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(name: &str) -> Pin {
        Pin {
            name: name.into(),
            version: "1".into(),
            arch: "amd64".into(),
            sha256: "a".repeat(64),
            size: 1,
            path: format!("pool/{name}.deb"),
        }
    }

    fn sample() -> Lock {
        Lock {
            version: LOCK_VERSION,
            archive: ArchiveSnapshot {
                distribution: "debian/bookworm".into(),
                suite: Some("oldstable".into()),
                codename: "bookworm".into(),
                date: Some("Sat, 11 Jul 2026 10:16:37 UTC".into()),
                epoch: 1783765000,
            },
            inputs: ResolveInputs {
                distribution: "debian/bookworm".into(),
                arch: crate::arch::Arch::Amd64,
                kernel: "linux-image-amd64".into(),
                packages: vec![],
                interpreter: Some("/lib64/ld-linux-x86-64.so.2".into()),
                needed: vec!["libz.so.1".into(), "libc.so.6".into()],
                versions: vec![],
                runtime: vec![],
                jsp: false,
            },
            app: AppPin {
                sha256: "b".repeat(64),
            },
            kernel: pin("linux-image-6.1.0-50-amd64"),
            stub: pin("systemd-boot-efi"),
            packages: vec![pin("zlib1g"), pin("libc6")],
        }
    }

    #[test]
    fn roundtrip_sorted_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK_FILE);
        sample().save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.find("name = \"libc6\"").unwrap() < text.find("name = \"zlib1g\"").unwrap(),
            "{text}"
        );
        assert!(text.contains("version = 1"));
        let back = Lock::load(&p).unwrap().unwrap();
        assert_eq!(back.packages[0].name, "libc6");
        assert_eq!(back.inputs.needed, ["libc.so.6", "libz.so.1"]);
        // Writing what was read gives the same text.
        back.save(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn unknown_version_and_bad_pins_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK_FILE);
        let text = sample().to_text().unwrap();
        std::fs::write(&p, text.replace("version = 1\n", "version = 7\n")).unwrap();
        let e = format!("{:#}", Lock::load(&p).unwrap_err());
        assert!(
            e.contains("version 7") && e.contains("reads version 1"),
            "{e}"
        );
        std::fs::write(&p, text.replace("pool/zlib1g.deb", "../../etc/passwd")).unwrap();
        assert!(format!("{:#}", Lock::load(&p).unwrap_err()).contains("suspicious path"));
        assert!(Lock::load(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn differences_say_what_changed() {
        let l = sample();
        let mut cur = l.inputs.clone();
        assert!(l.input_differences(&cur).is_empty());
        cur.packages.push("curl".into());
        cur.needed.push("libssl.so.3".into());
        cur.kernel = "linux-image-cloud-amd64".into();
        cur.runtime = vec!["java=17".into()];
        let d = l.input_differences(&cur).join("\n");
        assert!(
            d.contains("runtime: lock has [], manifest has [java=17]"),
            "{d}"
        );
        assert!(
            d.contains("package curl is in the manifest but not in the lock"),
            "{d}"
        );
        assert!(d.contains("needs libssl.so.3"), "{d}");
        assert!(
            d.contains("kernel: lock has linux-image-amd64, manifest has linux-image-cloud-amd64"),
            "{d}"
        );
    }
}
