//! Layers as in-memory file trees: the base (system files), the app, and the initramfs
//! (init + kernel modules + boot plan). Pure: inputs in, trees out.

use crate::kernel::Kernel;
use crate::manifest::{AppKind, Manifest};
use crate::tree::{Node, Tree};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::runtimes::{APP_DIR, APP_GID, APP_UID};

/// One file-system layer of the image.
#[derive(Clone, Debug)]
pub struct Layer {
    /// "base", "runtime", "server" or "app"; the GPT partition is named `fuse-<name>`.
    pub name: String,
    pub tree: Tree,
    /// Distribution packages whose files this layer holds.
    pub packages: Vec<PackageRef>,
    /// The JDK modules a Java runtime layer holds (empty elsewhere).
    pub java_modules: Vec<String>,
}

/// A distribution package as recorded in the image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// The licences the package states in its machine-readable (DEP-5) copyright file, as
    /// written there (Debian short names), e.g. `GPL-2 and (LGPL-2.1+ or MIT)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

/// The distribution release the image is built from, for os-release.
#[derive(Clone, Debug)]
pub struct DistroInfo {
    /// "debian"
    pub vendor: String,
    /// "bookworm"
    pub codename: String,
}

/// The boot plan the init reads from `/fuse/boot.json` (the init's `config.rs` mirrors it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootPlan {
    pub format: u32,
    pub hostname: String,
    /// Modules loaded at every boot, in load order.
    pub modules: Vec<String>,
    /// Modules loaded when a present device's modalias matches (init scans sysfs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_modules: Vec<crate::kernel::DeviceModule>,
    pub layers: Vec<String>,
    pub fs_type: String,
    /// Per layer: its partition's GPT GUID and dm-verity parameters (every layer has one).
    pub verity: BTreeMap<String, LayerVerity>,
    pub app: AppPlan,
}

/// How the init finds and checks a layer (see `format::verity`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerVerity {
    /// The partition's GPT unique GUID.
    pub partuuid: String,
    /// 4096-byte file-system blocks covered by the tree.
    pub data_blocks: u64,
    /// First 4096-byte block of the hash tree in the same partition.
    pub hash_start_block: u64,
    pub root_hash: String,
    pub salt: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppPlan {
    pub argv: Vec<String>,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub uid: u32,
    pub gid: u32,
    /// Words of an environment variable inserted into argv at boot (JAVA_OPTS for Java):
    /// the init splits the variable's value on whitespace, so no shell is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_args: Option<EnvArgs>,
    /// Seconds between SIGTERM and SIGKILL when the machine is asked to stop (ACPI power
    /// button); `[app] stop_timeout`.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u32,
    /// The signal that asks the app to stop (a container's StopSignal: `SIGINT`,
    /// `SIGQUIT`, ...); absent: SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Directories the init mounts as tmpfs owned by the app user; `[app] writable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
}

fn default_stop_timeout() -> u32 {
    crate::manifest::DEFAULT_STOP_TIMEOUT
}

/// `env_args` of the boot plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvArgs {
    pub var: String,
    /// argv index the words go to (1..=argv.len()).
    pub at: usize,
}

fn version_id(codename: &str) -> &'static str {
    match codename {
        "bookworm" => "12",
        "trixie" => "13",
        _ => "",
    }
}

/// `/etc/os-release` of the image: the distribution's identity (so scanners know which
/// advisories apply) plus the image's own IMAGE_ID / IMAGE_VERSION.
pub fn os_release(name: &str, version: &str, d: &DistroInfo) -> String {
    let vid = version_id(&d.codename);
    format!(
        "PRETTY_NAME=\"Debian GNU/Linux {vid} ({code})\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"{vid}\"\n\
         VERSION=\"{vid} ({code})\"\nVERSION_CODENAME={code}\nID={vendor}\nHOME_URL=\"https://www.debian.org/\"\n\
         IMAGE_ID={name}\nIMAGE_VERSION={version}\nVARIANT=\"fuse image\"\nVARIANT_ID=fuse\n",
        code = d.codename,
        vendor = d.vendor,
    )
}

/// `/var/lib/dpkg/status` stanzas for packages in the image, sorted by name.
pub fn dpkg_status(packages: &[(PackageRef, BTreeMap<String, String>)]) -> String {
    let mut sorted: Vec<&(PackageRef, BTreeMap<String, String>)> = packages.iter().collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut out = String::new();
    for (p, fields) in sorted {
        out.push_str(&format!(
            "Package: {}\nStatus: install ok installed\n",
            p.name
        ));
        for key in [
            "Priority",
            "Section",
            "Installed-Size",
            "Maintainer",
            "Architecture",
            "Multi-Arch",
            "Source",
            "Version",
            "Provides",
            "Depends",
            "Pre-Depends",
            "Description",
            "Homepage",
        ] {
            if let Some(v) = fields.get(key) {
                out.push_str(&format!("{key}: {v}\n"));
            }
        }
        out.push('\n');
    }
    out
}

/// The base layer: the system files every image has (users, name service, os-release,
/// the dpkg status of the packages in the image, mount points).
pub fn base_layer(
    name: &str,
    version: &str,
    distro: &DistroInfo,
    image_packages: &[(PackageRef, BTreeMap<String, String>)],
    epoch: u64,
) -> Result<Layer> {
    let mut t = Tree::new();
    let file = |data: String, mode: u32| {
        let mut n = Node::file(data.into_bytes(), mode);
        n.mtime = epoch;
        n
    };
    let dir = |mode: u32| {
        let mut n = Node::dir(mode);
        n.mtime = epoch;
        n
    };
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("etc", 0o755),
        ("var/tmp", 0o1777),
        ("var/lib/dpkg", 0o755),
        ("usr/lib", 0o755),
    ] {
        t.insert(d, dir(mode))?;
    }
    t.insert(
        "etc/passwd",
        file(
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\napp:x:{APP_UID}:{APP_GID}:{name} app:{APP_DIR}:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            ),
            0o644,
        ),
    )?;
    t.insert(
        "etc/group",
        file(
            format!("root:x:0:\napp:x:{APP_GID}:\nnogroup:x:65534:\n"),
            0o644,
        ),
    )?;
    t.insert(
        "etc/hosts",
        file(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into(),
            0o644,
        ),
    )?;
    t.insert("etc/hostname", file(format!("{name}\n"), 0o644))?;
    t.insert("etc/nsswitch.conf", file("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n".into(), 0o644))?;
    t.insert("etc/resolv.conf", file(String::new(), 0o644))?;
    let osr = os_release(name, version, distro);
    t.insert("usr/lib/os-release", file(osr, 0o644))?;
    t.insert("etc/os-release", {
        let mut n = Node::symlink("../usr/lib/os-release");
        n.mtime = epoch;
        n
    })?;
    t.insert(
        "var/lib/dpkg/status",
        file(dpkg_status(image_packages), 0o644),
    )?;
    Ok(Layer {
        name: "base".into(),
        tree: t,
        packages: Vec::new(),
        java_modules: Vec::new(),
    })
}

/// The command, working directory and environment defaults of the app.
pub fn app_plan(m: &Manifest) -> Result<AppPlan> {
    let (argv, at) = crate::runtimes::argv(m)?;
    let mut env = m.env.clone();
    env.entry("PORT".into())
        .or_insert_with(|| m.port.to_string());
    match m.kind {
        AppKind::Python => {
            env.entry("PYTHONDONTWRITEBYTECODE".into())
                .or_insert_with(|| "1".into());
            env.entry("PYTHONUNBUFFERED".into())
                .or_insert_with(|| "1".into());
        }
        AppKind::Node => {
            env.entry("NODE_ENV".into())
                .or_insert_with(|| "production".into());
        }
        _ => {}
    }
    Ok(AppPlan {
        argv,
        workdir: APP_DIR.into(),
        env,
        uid: APP_UID,
        gid: APP_GID,
        env_args: at.map(|at| EnvArgs {
            var: "JAVA_OPTS".into(),
            at,
        }),
        stop_timeout: m.stop_timeout,
        stop_signal: None,
        writable: m.writable.clone(),
    })
}

/// The initramfs' core: `/init`, `/dev/console`, the kernel modules (everything but the
/// boot plan, so it is cached across layer and app changes).
pub fn initramfs_core(init: &[u8], kernel: &Kernel, epoch: u64) -> Result<Tree> {
    let mut t = Tree::new();
    let stamp = |mut n: Node| {
        n.mtime = epoch;
        n
    };
    for d in ["dev", "proc", "sys", "run", "newroot", "fuse"] {
        t.insert(d, stamp(Node::dir(0o755)))?;
    }
    t.insert("dev/console", stamp(Node::char_dev(5, 1, 0o600)))?;
    t.insert("init", stamp(Node::file(init.to_vec(), 0o755)))?;
    for (path, data, _) in &kernel.modules {
        t.insert(path, stamp(Node::file(data.as_slice().to_vec(), 0o644)))?;
    }
    Ok(t)
}

/// The initramfs' boot plan: `/fuse/boot.json` (and its directory).
pub fn initramfs_plan(plan: &BootPlan, epoch: u64) -> Result<Tree> {
    let mut t = Tree::new();
    let mut dir = Node::dir(0o755);
    dir.mtime = epoch;
    t.insert("fuse", dir)?;
    let json = serde_json::to_vec_pretty(plan).context("cannot encode boot.json")?;
    let mut f = Node::file(json, 0o644);
    f.mtime = epoch;
    t.insert("fuse/boot.json", f)?;
    Ok(t)
}

/// Dead weight removed from every layer's packages: documentation, manuals, translations
/// and packaging metadata a running service never reads. Each entry is a path prefix;
/// `[system] keep` in the manifest exempts paths. Licence files
/// (`usr/share/doc/<package>/copyright`) are kept.
pub const DEAD_WEIGHT: &[&str] = &[
    "usr/share/doc/",
    "usr/share/doc-base/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/i18n/",
    "usr/share/lintian/",
    "usr/share/linda/",
    "usr/share/bug/",
    "usr/share/gtk-doc/",
    "usr/share/help/",
    "usr/share/menu/",
    "usr/share/bash-completion/",
    "usr/share/zsh/",
    "usr/share/fish/",
    "etc/init.d/",
    "etc/rc0.d/",
    "etc/logrotate.d/",
    "etc/cron.daily/",
    "lib/systemd/system/",
    "usr/lib/systemd/system/",
    // glibc's iconv converters for legacy character sets (8 MB of 19 MB in a libc6 + libssl3
    // layer); UTF-8, ASCII and Latin-1 are built into libc. Keep with
    // `keep = ["usr/lib/x86_64-linux-gnu/gconv"]`.
    "usr/lib/x86_64-linux-gnu/gconv/",
    "usr/lib/aarch64-linux-gnu/gconv/",
];

/// The CA bundle as `update-ca-certificates` builds it from the ca-certificates package:
/// every certificate under usr/share/ca-certificates, in path order, concatenated.
/// None when the tree has no certificates.
pub fn ca_bundle(tree: &Tree) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (path, node) in tree.iter() {
        if path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt") {
            if let Some(d) = node.data() {
                out.extend_from_slice(d);
                if !d.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Add the effects of maintainer scripts that matter (which are never run), natively:
/// the CA bundle (ca-certificates) and the `/usr/lib/ssl` links OpenSSL looks in.
pub fn native_effects(t: &mut Tree, epoch: u64) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    if let Some(bundle) = ca_bundle(t) {
        let mut n = Node::file(bundle, 0o644);
        n.mtime = epoch;
        t.insert("etc/ssl/certs/ca-certificates.crt", n)?;
        done.push("ca-certificates: /etc/ssl/certs/ca-certificates.crt");
    }
    Ok(done)
}

/// The licences a package states in its machine-readable copyright file
/// (`/usr/share/doc/<package>/copyright` in DEP-5 format, from the package's data tree):
/// the `License:` short names of the header and every `Files:` paragraph, deduplicated,
/// sorted, joined with ` and ` (compound ones in parentheses), as written there.
/// `None` when the file is missing or not in the machine-readable format.
pub fn license_of(data: &Tree, package: &str) -> Option<String> {
    let text = data
        .get(&format!("usr/share/doc/{package}/copyright"))?
        .data()?;
    dep5_licenses(&String::from_utf8_lossy(text))
}

/// The licence expression of a DEP-5 copyright file's text (see [`license_of`]).
pub fn dep5_licenses(text: &str) -> Option<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut first = true;
    // Paragraphs are separated by lines that are empty or hold only white space.
    let mut paras: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if paras.last().is_some_and(|p| !p.is_empty()) {
                paras.push(Vec::new());
            }
        } else if let Some(p) = paras.last_mut() {
            p.push(line);
        }
    }
    for para in paras.iter().filter(|p| !p.is_empty()) {
        // field name (lower case) -> first line of its value
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for line in para {
            if line.starts_with([' ', '\t']) || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if first {
            first = false;
            if !fields
                .get("format")
                .is_some_and(|f| f.contains("copyright-format") || f.contains("dep5"))
            {
                return None;
            }
        } else if !fields.contains_key("files") {
            continue; // a standalone License paragraph: the text of a name used elsewhere
        }
        if let Some(l) = fields.get("license") {
            let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
            if !l.is_empty() {
                names.insert(l);
            }
        }
    }
    match names.len() {
        0 => None,
        1 => names.into_iter().next(),
        _ => Some(
            names
                .into_iter()
                .map(|n| if n.contains(' ') { format!("({n})") } else { n })
                .collect::<Vec<_>>()
                .join(" and "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_weight_filters_docs_but_keeps_licences_and_kept_paths() {
        // The one filter (build::units::is_dead_weight) over this list.
        let f = crate::plan::Filter {
            common: DEAD_WEIGHT.iter().map(|d| d.to_string()).collect(),
            runtime: Vec::new(),
            keep: vec!["usr/share/locale/de".to_string()],
        };
        let dead = |p: &str| crate::build::units::is_dead_weight(&f, p);
        assert!(dead("usr/share/doc/libc6/changelog.Debian.gz"));
        assert!(!dead("usr/share/doc/libc6/copyright"));
        assert!(dead("usr/share/man/man1/ls.1.gz"));
        assert!(dead("usr/share/locale/fr/LC_MESSAGES/x.mo"));
        assert!(!dead("usr/share/locale/de/LC_MESSAGES/x.mo"));
        assert!(!dead("usr/lib/x86_64-linux-gnu/libc.so.6"));
    }

    #[test]
    fn ca_bundle_concatenates_in_path_order() {
        let mut t = Tree::new();
        t.insert(
            "usr/share/ca-certificates/mozilla/B.crt",
            Node::file(b"B\n".to_vec(), 0o644),
        )
        .unwrap();
        t.insert(
            "usr/share/ca-certificates/mozilla/A.crt",
            Node::file(b"A".to_vec(), 0o644),
        )
        .unwrap();
        assert_eq!(ca_bundle(&t).unwrap(), b"A\nB\n");
        native_effects(&mut t, 5).unwrap();
        assert_eq!(
            t.get("etc/ssl/certs/ca-certificates.crt")
                .unwrap()
                .data()
                .unwrap(),
            b"A\nB\n"
        );
        assert!(ca_bundle(&Tree::new()).is_none());
    }

    const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: example

Files: *
Copyright: 2020 Someone
License: GPL-2

Files: lib/*
Copyright: 2021 Someone Else
License: LGPL-2.1+   or   MIT
Comment: License: not-a-field (continuation lines are skipped)
 License: BSD-3-clause

Files: extra/*
Copyright: 2022 A Third
License: GPL-2
 \t  

License: GPL-2
 The text of the GPL, which names License: Apache-2.0 in passing.

License: Unused-by-files
 A standalone licence paragraph no Files paragraph refers to.
";

    #[test]
    fn dep5_licences_are_collected_from_files_paragraphs() {
        assert_eq!(
            dep5_licenses(DEP5).as_deref(),
            Some("GPL-2 and (LGPL-2.1+ or MIT)")
        );
        let mut t = Tree::new();
        t.insert("usr/share/doc/example/copyright", Node::file(DEP5, 0o644))
            .unwrap();
        assert_eq!(
            license_of(&t, "example").as_deref(),
            Some("GPL-2 and (LGPL-2.1+ or MIT)")
        );
        assert_eq!(license_of(&t, "other"), None);
    }

    #[test]
    fn a_header_licence_counts_and_free_form_files_do_not() {
        let one = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\r\nLicense: Expat\r\n";
        assert_eq!(dep5_licenses(one).as_deref(), Some("Expat"));
        // Not machine-readable: no guessing from prose.
        let prose = "This package was debianized by someone.\n\nLicense: GPL-2\n";
        assert_eq!(dep5_licenses(prose), None);
        assert_eq!(dep5_licenses(""), None);
    }
}
