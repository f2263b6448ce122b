//! A container image as the app (`[app] kind = "oci"`): the image read from its source
//! ([`super::source`]), its layers flattened into the app's image layers and its config made
//! the app's start command, user, environment and working directory ([`super::container`]).
//!
//! Everything is decided at build time from the image's own files: argv[0] is looked up
//! along the container's PATH, the user through its /etc/passwd and /etc/group, so the boot
//! plan names an absolute program and numeric ids (the init does no lookups). The kernel,
//! its modules and the init are fuse's, as for every image.

use super::container::{self, FsEntry, FsKind, LayerInput, Limits};
use super::packages;
use super::source::{self, Source};
use crate::app::{AppPart, AppScan, Entry, EntryKind, FileSource, OciApp};
use crate::digest::sha256_hex;
use crate::disk::FileMeta;
use crate::disk::{ContainerPackages, ContainerSource};
use crate::manifest::{Manifest, MAX_APP_LAYERS, OCI_LAYER_PREFIX};
use crate::store::Store;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Longest chain of symbolic links followed while resolving a path.
const MAX_LINKS: usize = 40;
/// Whether a registry host is reached over plain HTTP: loopback only (as Docker does).
fn loopback_registry(src: &Source) -> bool {
    match src {
        Source::Registry(r) => {
            let host = r.api_host();
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            host == "localhost" || host == "[::1]" || host.starts_with("127.")
        }
        _ => false,
    }
}

/// The container image of `m` read (from the cache when its blobs are there), flattened
/// and made the app.
pub fn scan(m: &Manifest, store: Option<&Store>) -> Result<AppScan> {
    let reference = m
        .oci_image
        .as_deref()
        .context("internal error: kind oci without [app] image")?;
    let store = store.context("internal error: kind oci needs the download cache")?;
    let src = source::parse_source(reference)?;
    let opts = source::Options {
        arch: m.arch.name(),
        insecure: loopback_registry(&src),
        username: None,
        offline: false,
    };
    let t = std::time::Instant::now();
    let fetched = source::fetch(&src, store, &opts)
        .with_context(|| format!("container image {reference}"))?;
    tracing::info!(
        "container image {reference}: {} ({} layers) in {:.2}s",
        fetched.manifest_digest,
        fetched.layers.len(),
        t.elapsed().as_secs_f64()
    );
    let cfg = container::parse_config(&fetched.config)
        .with_context(|| format!("the config of {reference} ({})", fetched.config_digest))?;
    ensure!(
        cfg.os.is_empty() || cfg.os == "linux",
        "container image {reference} is for os {:?}, not linux",
        cfg.os
    );
    ensure!(
        cfg.architecture.is_empty() || cfg.architecture == m.arch.name(),
        "container image {reference} is for architecture {:?}; the image is {} (`[image] arch`)",
        cfg.architecture,
        m.arch
    );
    ensure!(
        cfg.diff_ids.is_empty() || cfg.diff_ids.len() == fetched.layers.len(),
        "container image {reference}: the config lists {} layers (rootfs.diff_ids), the manifest {}",
        cfg.diff_ids.len(),
        fetched.layers.len()
    );
    let inputs: Vec<LayerInput> = fetched
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInput {
            digest: &l.digest,
            media_type: &l.media_type,
            bytes: &l.bytes,
            diff_id: cfg.diff_ids.get(i).map(String::as_str),
        })
        .collect();
    let t = std::time::Instant::now();
    let mut groups = container::flatten(&inputs, MAX_APP_LAYERS, &Limits::default())
        .with_context(|| format!("container image {reference}"))?;
    ensure!(
        !groups.is_empty(),
        "container image {reference} has no layers"
    );
    tracing::info!(
        "container file system: {} layers into {} image layers in {:.2}s",
        inputs.len(),
        groups.len(),
        t.elapsed().as_secs_f64()
    );

    // The merged view: each final path once (directories, repeated in several groups,
    // carry the same final metadata), and the group that holds it.
    let view: BTreeMap<&str, &FsEntry> = groups
        .iter()
        .flat_map(|g| g.entries.iter())
        .map(|e| (e.path.as_str(), e))
        .collect();
    let group_of: BTreeMap<&str, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| g.entries.iter().map(move |e| (e.path.as_str(), i)))
        .collect();
    let n = groups.len();
    let package_dbs = container_packages(&view, &|p: &str| {
        part_name(group_of.get(p).copied().unwrap_or(n - 1), n)
    })
    .with_context(|| format!("container image {reference}: its package database"))?;
    for db in &package_dbs {
        tracing::info!(
            "container packages: {} installed in {} ({}, layer {})",
            db.installed.len(),
            db.path,
            db.distro.as_deref().unwrap_or(&db.vendor),
            db.layer
        );
    }

    let mut argv = cfg.entrypoint.clone();
    if m.args.is_empty() {
        argv.extend(cfg.cmd.iter().cloned());
    } else {
        argv.extend(m.args.iter().cloned());
    }
    ensure!(
        !argv.is_empty() && !argv[0].is_empty(),
        "container image {reference} has no Entrypoint or Cmd, and [app] args is empty: \
         nothing to start"
    );
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &cfg.env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in &m.env {
        env.insert(k.clone(), v.clone());
    }
    argv[0] = container::resolve_program(&argv[0], env.get("PATH").map(String::as_str), |p| {
        lookup(&view, p).is_some_and(|e| matches!(e.kind, FsKind::File(_)) && e.mode & 0o111 != 0)
    })
    .with_context(|| format!("container image {reference}: its command {:?}", argv[0]))?;
    let file_of = |p: &str| -> Option<&[u8]> {
        match &lookup(&view, p)?.kind {
            FsKind::File(d) => Some(d.as_slice()),
            _ => None,
        }
    };
    let (uid, gid) = container::resolve_user(
        cfg.user.as_deref(),
        file_of("etc/passwd"),
        file_of("etc/group"),
    )
    .with_context(|| format!("container image {reference}: its User"))?;
    let workdir = workdir_of(cfg.working_dir.as_deref())
        .with_context(|| format!("container image {reference}"))?;
    // `docker run` makes a missing WorkingDir: so does the image's top layer.
    let rel = workdir.trim_start_matches('/');
    let missing_workdir = !rel.is_empty() && lookup(&view, rel).is_none();
    let stop_signal = match cfg.stop_signal.as_deref() {
        None => None,
        Some(s) => container::stop_signal(s)
            .with_context(|| format!("container image {reference}"))?
            .map(str::to_string),
    };
    let port = match (m.port, cfg.exposed_ports.first()) {
        (0, Some(p)) => *p,
        (0, None) => bail!(
            "container image {reference} exposes no TCP port (ExposedPorts) and [app] port is \
             not set: say which port the app listens on"
        ),
        (p, _) => p,
    };
    drop(view);
    drop(group_of);
    if missing_workdir {
        let top = groups.last_mut().context("no layers")?;
        let mut path = String::new();
        for c in rel.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(c);
            if !top.entries.iter().any(|e| e.path == path) {
                top.entries.push(FsEntry {
                    path: path.clone(),
                    kind: FsKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            }
        }
        top.entries.sort_by(|a, b| a.path.cmp(&b.path));
    }

    // The app's entries and parts: group i is image layer `oci-<i+1>`, the top one `app`.
    let mut tagged: Vec<(String, usize, Entry)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for e in &g.entries {
            tagged.push((e.path.clone(), gi, entry_of(e)));
        }
    }
    tagged.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut parts: Vec<AppPart> = (0..n)
        .map(|i| AppPart {
            name: part_name(i, n),
            listing_sha256: String::new(),
            entries: Vec::new(),
            bytes: 0,
        })
        .collect();
    let mut entries = Vec::with_capacity(tagged.len());
    for (i, (_, gi, e)) in tagged.into_iter().enumerate() {
        if let EntryKind::File { size, .. } = &e.kind {
            parts[gi].bytes += size;
        }
        parts[gi].entries.push(i);
        entries.push(e);
    }
    for p in &mut parts {
        let listing: Vec<FileMeta> = p.entries.iter().map(|&i| entries[i].meta()).collect();
        p.listing_sha256 = sha256_hex(&serde_json::to_vec(&listing)?);
    }
    let listing: Vec<FileMeta> = entries.iter().map(Entry::meta).collect();
    let listing_sha256 = sha256_hex(&serde_json::to_vec(&listing)?);
    let source = ContainerSource {
        reference: reference.to_string(),
        pinned: fetched.pinned.clone(),
        manifest_digest: fetched.manifest_digest.clone(),
        config_digest: fetched.config_digest.clone(),
        user: cfg.user.clone().unwrap_or_default(),
        stop_signal: cfg.stop_signal.clone(),
        labels: cfg.labels.clone(),
        layers: groups.iter().map(|g| g.layers.clone()).collect(),
        packages: package_dbs,
    };
    tracing::info!(
        "app: container {} as uid {uid}:{gid} in {workdir}: {}",
        source.manifest_digest,
        crate::app::describe_parts(&parts)
    );
    Ok(AppScan {
        sha256: fetched
            .manifest_digest
            .trim_start_matches("sha256:")
            .to_string(),
        listing_sha256,
        entries,
        parts,
        dynamic: Default::default(),
        native: Default::default(),
        java_packages: Default::default(),
        java_scan_error: None,
        jsp: false,
        files_read: 0,
        oci: Some(OciApp {
            source,
            argv,
            env,
            uid,
            gid,
            workdir,
            port,
            stop_signal,
        }),
    })
}

/// The app's working directory from the config's `WorkingDir`: absolute and normalized;
/// `/` when unset or the root (a path `tree::normalize` refuses as empty).
fn workdir_of(w: Option<&str>) -> Result<String> {
    let w = match w {
        None | Some("") => return Ok("/".to_string()),
        Some(w) if w.starts_with('/') => w,
        Some(w) => bail!("WorkingDir {w:?} is not an absolute path"),
    };
    if w.split('/').all(|c| c.is_empty() || c == ".") {
        return Ok("/".to_string());
    }
    crate::tree::normalize(w)
        .map(|p| format!("/{p}"))
        .with_context(|| format!("WorkingDir {w:?}"))
}

/// The image layer of group `i` of `n`: `oci-1`, ..., the top one `app`.
fn part_name(i: usize, n: usize) -> String {
    if i + 1 == n {
        crate::app::CODE_LAYER.to_string()
    } else {
        format!("{OCI_LAYER_PREFIX}{}", i + 1)
    }
}

/// The container's package databases (dpkg status, distroless status.d files, apk
/// installed) and what they list; a database that is not there is no error, one that is
/// not a regular file or does not parse is (the message names the file).
fn container_packages(
    view: &BTreeMap<&str, &FsEntry>,
    layer_of: &dyn Fn(&str) -> String,
) -> Result<Vec<ContainerPackages>> {
    let (id, release) = match lookup(view, packages::OS_RELEASE)
        .or_else(|| lookup(view, "usr/lib/os-release"))
        .map(|e| &e.kind)
    {
        Some(FsKind::File(d)) => packages::parse_os_release(d),
        _ => (None, None),
    };
    // (purl type, path, whether entries need a Status)
    let mut files: Vec<(&str, String, bool)> = vec![("deb", packages::DPKG_STATUS.into(), true)];
    let status_d = format!("{}/", packages::DPKG_STATUS_D);
    for (p, e) in view.range(status_d.as_str()..) {
        let Some(name) = p.strip_prefix(status_d.as_str()) else {
            break;
        };
        if !name.contains('/') && !name.ends_with(".md5sums") && matches!(e.kind, FsKind::File(_)) {
            files.push(("deb", p.to_string(), false));
        }
    }
    files.push(("apk", packages::APK_INSTALLED.into(), false));
    let mut out = Vec::new();
    for (kind, path, status_required) in files {
        let Some(e) = lookup(view, &path) else {
            continue;
        };
        let FsKind::File(data) = &e.kind else {
            bail!("/{path} is not a regular file");
        };
        let installed = if kind == "apk" {
            packages::parse_apk(data)
        } else {
            packages::parse_dpkg(data, status_required)
        }
        .with_context(|| format!("/{path}"))?;
        let vendor = id
            .clone()
            .unwrap_or_else(|| if kind == "apk" { "alpine" } else { "debian" }.into());
        out.push(ContainerPackages {
            kind: kind.into(),
            path: format!("/{path}"),
            layer: layer_of(&e.path),
            distro: id
                .as_ref()
                .zip(release.as_ref())
                .map(|(i, r)| format!("{i}-{r}")),
            vendor,
            installed,
        });
    }
    Ok(out)
}

fn entry_of(e: &FsEntry) -> Entry {
    let kind = match &e.kind {
        FsKind::Dir => EntryKind::Dir,
        FsKind::Symlink(t) => EntryKind::Symlink(t.clone()),
        FsKind::File(d) => EntryKind::File {
            size: d.len() as u64,
            sha256: sha256_hex(d),
            source: FileSource::Bytes(Arc::clone(d)),
            data: Arc::new(OnceLock::new()),
        },
    };
    Entry {
        path: e.path.clone(),
        kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
    }
}

/// The entry `path` (relative to the root) names in the merged file system, every symbolic
/// link on the way followed inside that file system (as the kernel does in the chroot).
fn lookup<'a>(view: &BTreeMap<&str, &'a FsEntry>, path: &str) -> Option<&'a FsEntry> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(str::to_string)
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    let mut last: Option<&FsEntry> = None;
    while let Some(c) = todo.pop() {
        if c == ".." {
            at.pop();
            last = None;
            continue;
        }
        at.push(c);
        let joined = at.join("/");
        let e = view.get(joined.as_str())?;
        if let FsKind::Symlink(target) = &e.kind {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            at.pop();
            if target.starts_with('/') {
                at.clear();
            }
            todo.extend(
                target
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .rev()
                    .map(str::to_string),
            );
            last = None;
            continue;
        }
        last = Some(e);
    }
    if at.is_empty() {
        return None; // the root itself
    }
    match last {
        Some(e) => Some(e),
        None => view.get(at.join("/").as_str()).copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: FsKind, mode: u32) -> FsEntry {
        FsEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn lookup_follows_links_inside_the_container() {
        let file = FsKind::File(Arc::new(b"#!".to_vec()));
        let entries = [
            e("bin", FsKind::Symlink("usr/bin".into()), 0o777),
            e("usr", FsKind::Dir, 0o755),
            e("usr/bin", FsKind::Dir, 0o755),
            e(
                "usr/bin/python3",
                FsKind::Symlink("python3.11".into()),
                0o777,
            ),
            e("usr/bin/python3.11", file.clone(), 0o755),
            e("usr/local", FsKind::Dir, 0o755),
            e(
                "usr/local/py",
                FsKind::Symlink("/bin/python3".into()),
                0o777,
            ),
            e(
                "usr/local/up",
                FsKind::Symlink("../../../../usr/bin/python3".into()),
                0o777,
            ),
            e("loop", FsKind::Symlink("loop".into()), 0o777),
        ];
        let view: BTreeMap<&str, &FsEntry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
        for p in [
            "bin/python3",
            "usr/local/py",
            "usr/local/up",
            "usr/bin/python3.11",
        ] {
            let got = lookup(&view, p).unwrap_or_else(|| panic!("{p}"));
            assert_eq!(got.path, "usr/bin/python3.11", "{p}");
        }
        assert_eq!(lookup(&view, "bin").unwrap().path, "usr/bin");
        assert!(lookup(&view, "loop").is_none());
        assert!(lookup(&view, "usr/bin/python2").is_none());
        assert!(lookup(&view, "").is_none());
    }

    #[test]
    fn package_databases_are_read_from_the_merged_file_system() {
        let file = |t: &str| FsKind::File(Arc::new(t.as_bytes().to_vec()));
        let status = "Package: python3\nStatus: install ok installed\nArchitecture: amd64\n\
                      Source: python3-defaults (3.11.2-1)\nVersion: 3.11.2-1+b1\n";
        let mut entries: Vec<FsEntry> = [
            "etc",
            "usr",
            "usr/lib",
            "var",
            "var/lib",
            "var/lib/dpkg",
            "var/lib/dpkg/status.d",
            "lib",
            "lib/apk",
            "lib/apk/db",
        ]
        .into_iter()
        .map(|d| e(d, FsKind::Dir, 0o755))
        .collect();
        entries.extend([
            e(
                "etc/os-release",
                FsKind::Symlink("../usr/lib/os-release".into()),
                0o777,
            ),
            e(
                "usr/lib/os-release",
                file("ID=debian\nVERSION_ID=\"12\"\n"),
                0o644,
            ),
            e("var/lib/dpkg/status", file(status), 0o644),
            e(
                "var/lib/dpkg/status.d/libssl3",
                file("Package: libssl3\nVersion: 3.0.11-1\nArchitecture: amd64\n"),
                0o644,
            ),
            e(
                "var/lib/dpkg/status.d/libssl3.md5sums",
                file("0 x\n"),
                0o644,
            ),
        ]);
        let layer_of = |p: &str| {
            if p == "var/lib/dpkg/status" {
                "oci-1".to_string()
            } else {
                "app".to_string()
            }
        };
        let dbs = {
            let view: BTreeMap<&str, &FsEntry> =
                entries.iter().map(|e| (e.path.as_str(), e)).collect();
            container_packages(&view, &layer_of).unwrap()
        };
        assert_eq!(dbs.len(), 2, "{dbs:?}");
        assert_eq!(
            (
                dbs[0].kind.as_str(),
                dbs[0].path.as_str(),
                dbs[0].layer.as_str()
            ),
            ("deb", "/var/lib/dpkg/status", "oci-1")
        );
        assert_eq!(dbs[0].distro.as_deref(), Some("debian-12"));
        assert_eq!(dbs[0].installed[0].name, "python3");
        assert_eq!(dbs[0].installed[0].version, "3.11.2-1+b1");
        assert_eq!(dbs[1].path, "/var/lib/dpkg/status.d/libssl3");
        assert_eq!(dbs[1].installed[0].name, "libssl3");

        // No database: no packages. A broken one: an error naming it.
        let none: BTreeMap<&str, &FsEntry> = BTreeMap::new();
        assert!(container_packages(&none, &layer_of).unwrap().is_empty());
        entries.push(e("lib/apk/db/installed", file("P:musl\n"), 0o644));
        let view: BTreeMap<&str, &FsEntry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let err = format!("{:#}", container_packages(&view, &layer_of).unwrap_err());
        assert!(
            err.contains("/lib/apk/db/installed") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn workdir_unset_or_root_is_the_root() {
        for w in [None, Some(""), Some("/"), Some("//"), Some("/.")] {
            assert_eq!(workdir_of(w).unwrap(), "/", "{w:?}");
        }
        assert_eq!(workdir_of(Some("/srv/work/")).unwrap(), "/srv/work");
        assert_eq!(workdir_of(Some("/srv/./work")).unwrap(), "/srv/work");
        assert!(workdir_of(Some("srv")).is_err());
        assert!(workdir_of(Some("/srv/../..")).is_err());
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        let reg = |s: &str| Source::Registry(crate::oci::Reference::parse(s).unwrap());
        assert!(loopback_registry(&reg("127.0.0.1:5000/a/b:1")));
        assert!(loopback_registry(&reg("localhost:5000/a/b:1")));
        assert!(!loopback_registry(&reg("registry.example:5000/a/b:1")));
    }
}
