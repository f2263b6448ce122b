//! Where packages come from: the mirror and keyring (manifest, else `FUSE_MIRROR`, else the
//! host's apt sources), the verified index of a suite (InRelease signature -> Packages sha256),
//! and package downloads through the content-addressed store (.deb sha256).

use crate::archive::packages::{parse_packages, Package};
use crate::archive::release::{verify_inrelease, Keyring, Release, VerifyOptions};
use crate::digest::sha256_hex;
use crate::fetch::{join_url, Fetcher};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The host's Debian archive keyring, used when nothing else names one.
pub const HOST_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A mirror plus the keyring its InRelease must be signed with.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    pub keyring: PathBuf,
}

/// One `deb` entry of the host's apt configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptEntry {
    pub uri: String,
    pub suites: Vec<String>,
    pub signed_by: Option<PathBuf>,
}

/// Read `deb` entries from `<etc_apt>/sources.list.d/*.sources` (deb822) and
/// `<etc_apt>/sources.list` plus `sources.list.d/*.list` (one-line format), in file-name order.
pub fn host_apt_entries(etc_apt: &Path) -> Vec<AptEntry> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            out.extend(parse_deb822_sources(&text));
        } else if name.ends_with(".list") {
            out.extend(parse_one_line_sources(&text));
        }
    }
    out
}

fn parse_deb822_sources(text: &str) -> Vec<AptEntry> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for line in para.lines() {
            if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if fields.get("enabled").is_some_and(|e| e == "no") {
            continue;
        }
        if !fields
            .get("types")
            .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
        {
            continue;
        }
        let suites: Vec<String> = fields
            .get("suites")
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let signed_by = fields
            .get("signed-by")
            .filter(|s| s.starts_with('/'))
            .map(PathBuf::from);
        for uri in fields
            .get("uris")
            .map(|u| u.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            out.push(AptEntry {
                uri: uri.trim_end_matches('/').to_string(),
                suites: suites.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
    out
}

fn parse_one_line_sources(text: &str) -> Vec<AptEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        let mut signed_by = None;
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let mut opts = String::new();
            while !rest.is_empty() {
                let w = rest.remove(0);
                opts.push_str(w);
                opts.push(' ');
                if w.ends_with(']') {
                    break;
                }
            }
            signed_by = opts
                .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(PathBuf::from);
        }
        if rest.len() >= 2 {
            out.push(AptEntry {
                uri: rest[0].trim_end_matches('/').to_string(),
                suites: vec![rest[1].to_string()],
                signed_by,
            });
        }
    }
    out
}

/// Decide the mirror and keyring: manifest, else `FUSE_MIRROR`/`FUSE_KEYRING`, else the host's
/// apt sources (an entry carrying `codename`, else any entry of the same vendor's archive).
pub fn find_source(mirror: Option<&str>, keyring: Option<&Path>, codename: &str) -> Result<Source> {
    let env_mirror = std::env::var("FUSE_MIRROR").ok().filter(|m| !m.is_empty());
    let env_keyring = std::env::var_os("FUSE_KEYRING")
        .filter(|k| !k.is_empty())
        .map(PathBuf::from);
    let host = host_apt_entries(Path::new("/etc/apt"));
    let (url, host_keyring) = match mirror.map(String::from).or(env_mirror) {
        Some(u) => (u, None),
        None => {
            let e = host
                .iter()
                .find(|e| e.suites.iter().any(|s| s == codename))
                .or_else(|| host.iter().find(|e| e.uri.ends_with("/debian")))
                .with_context(|| {
                    format!(
                        "no mirror for {codename}: set [system] mirror in fuse.toml or FUSE_MIRROR \
                         (the host's apt sources in /etc/apt have no Debian entry)"
                    )
                })?;
            (e.uri.clone(), e.signed_by.clone())
        }
    };
    crate::fetch::check_url(&url).context("bad mirror URL")?;
    let keyring = keyring
        .map(Path::to_path_buf)
        .or(env_keyring)
        .or(host_keyring)
        .unwrap_or_else(|| PathBuf::from(HOST_KEYRING));
    Ok(Source {
        url: url.trim_end_matches('/').to_string(),
        keyring,
    })
}

/// Shared state of a command that may talk to the archive: the download cache and the
/// HTTP client.
pub struct Session {
    pub store: Store,
    pub fetcher: Fetcher,
}

impl Session {
    pub fn open() -> Result<Session> {
        Ok(Session {
            store: Store::open(&crate::store::default_cache_dir()?)?,
            fetcher: Fetcher::new(),
        })
    }
}

/// A suite's verified package index.
pub struct Archive {
    pub url: String,
    pub codename: String,
    /// The architecture whose `binary-*` index was read.
    pub arch: crate::arch::Arch,
    pub release: Release,
    /// Every package of the index, by name (all versions the index lists).
    pub packages: BTreeMap<String, Vec<Package>>,
}

/// Trust options the user may relax.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trust {
    pub allow_unsigned: bool,
    pub allow_expired: bool,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Archive {
    /// Fetch and verify `dists/<codename>/InRelease`, then the `main/binary-<arch>` Packages
    /// index it pins. When the mirror cannot be reached, the last InRelease fetched from it is
    /// used (verified again), so a warm cache builds offline.
    pub fn open(
        fetcher: &Fetcher,
        store: &Store,
        source: &Source,
        codename: &str,
        arch: crate::arch::Arch,
        trust: Trust,
    ) -> Result<Archive> {
        let keyring_bytes = std::fs::read(&source.keyring).with_context(|| {
            format!("cannot read archive keyring {} (install debian-archive-keyring, or set [system] keyring)", source.keyring.display())
        })?;
        let keyring = Keyring::from_bytes(&keyring_bytes)
            .with_context(|| format!("bad keyring {}", source.keyring.display()))?;
        let url = join_url(&source.url, &format!("dists/{codename}/InRelease"));
        let cache_name = format!("inrelease-{}", &sha256_hex(url.as_bytes())[..16]);
        let inrelease = match fetcher.get(&url, None, 64 << 20) {
            Ok(b) => b,
            Err(e) => match store.get_named(&cache_name)? {
                Some(b) => {
                    tracing::warn!("{e:#}; using the InRelease cached from the last fetch");
                    b
                }
                None => return Err(e),
            },
        };
        let opts = VerifyOptions {
            now_unix: now_unix(),
            allow_unsigned: trust.allow_unsigned,
            allow_expired: trust.allow_expired,
        };
        let release = verify_inrelease(&inrelease, &keyring, &opts)
            .with_context(|| format!("refusing the archive index {url}"))?;
        store.put_named(&cache_name, &inrelease)?;

        let dir = format!("main/binary-{arch}");
        let path = [
            format!("{dir}/Packages.xz"),
            format!("{dir}/Packages.gz"),
            format!("{dir}/Packages"),
        ]
        .into_iter()
        .find(|p| release.files.contains_key(p))
        .with_context(|| format!("{url} lists no {dir}/Packages index"))?;
        let path = path.as_str();
        let compressed = index_file(fetcher, store, &source.url, codename, &release, path)?;
        let text =
            decompress(path, &compressed).with_context(|| format!("cannot decompress {path}"))?;
        let text = String::from_utf8(text).with_context(|| format!("{path} is not UTF-8"))?;
        let mut packages: BTreeMap<String, Vec<Package>> = BTreeMap::new();
        for p in
            parse_packages(&text).with_context(|| format!("cannot parse {path} of {codename}"))?
        {
            packages.entry(p.name.clone()).or_default().push(p);
        }
        Ok(Archive {
            url: source.url.clone(),
            codename: codename.to_string(),
            arch,
            release,
            packages,
        })
    }

    /// The Contents index's library entries (file name -> packages shipping it), for
    /// mapping sonames to packages.
    pub fn contents_libraries(
        &self,
        fetcher: &Fetcher,
        store: &Store,
    ) -> Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
        let name = format!("main/Contents-{}", self.arch);
        let path = [format!("{name}.gz"), format!("{name}.xz"), name.clone()]
            .into_iter()
            .find(|p| self.release.files.contains_key(p))
            .with_context(|| format!("{} {} has no {name} index", self.url, self.codename))?;
        let path = path.as_str();
        let data = index_file(
            fetcher,
            store,
            &self.url,
            &self.codename,
            &self.release,
            path,
        )?;
        let text = decompress(path, &data).with_context(|| format!("cannot decompress {path}"))?;
        Ok(crate::resolve::elf::contents_libraries(
            &String::from_utf8_lossy(&text),
        ))
    }

    /// The newest version of `name` in the index.
    pub fn newest(&self, name: &str) -> Result<&Package> {
        self.packages
            .get(name)
            .and_then(|v| {
                v.iter().max_by(|a, b| {
                    crate::archive::version::compare_versions(&a.version, &b.version)
                })
            })
            .with_context(|| format!("package {name} is not in {} {}", self.url, self.codename))
    }
}

/// An index file named in the verified Release (`dists/<codename>/<path>`), from the cache or
/// the mirror (by-hash when offered), its size and sha256 checked against the Release.
fn index_file(
    fetcher: &Fetcher,
    store: &Store,
    base: &str,
    codename: &str,
    release: &Release,
    path: &str,
) -> Result<Vec<u8>> {
    let entry = release
        .files
        .get(path)
        .with_context(|| format!("the Release file does not list {path}"))?;
    if let Some(b) = store.get(&entry.sha256)? {
        return Ok(b);
    }
    let _lock = store.lock_blob(&entry.sha256)?;
    if let Some(b) = store.get(&entry.sha256)? {
        return Ok(b);
    }
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let by_name = join_url(base, &format!("dists/{codename}/{path}"));
    // by-hash when the Release offers it (no race with the mirror's next update); a mirror
    // that lacks the by-hash copy (seen for trixie's Contents) still has it by name, as apt
    // falls back too. Either way the bytes must match the Release's sha256.
    let (url, b) = if release.acquire_by_hash {
        let url = join_url(
            base,
            &format!("dists/{codename}/{dir}/by-hash/SHA256/{}", entry.sha256),
        );
        tracing::info!("fetching {url}");
        match fetcher.get(&url, Some(entry.size), entry.size) {
            Ok(b) => (url, b),
            Err(e) => {
                tracing::info!("{e:#}; fetching {by_name}");
                let b = fetcher.get(&by_name, Some(entry.size), entry.size)?;
                (by_name, b)
            }
        }
    } else {
        tracing::info!("fetching {by_name}");
        let b = fetcher.get(&by_name, Some(entry.size), entry.size)?;
        (by_name, b)
    };
    let got = sha256_hex(&b);
    if got != entry.sha256 {
        bail!(
            "index {url} does not match InRelease: expected sha256 {}, got {got}",
            entry.sha256
        );
    }
    store.put(&entry.sha256, &b)?;
    Ok(b)
}

/// Download every pinned package not yet in the cache, several at a time, each checked
/// against its pinned size and sha256 before it enters the cache; then return all of them
/// (from the cache, verified again) in the order given. `mirror` is asked for only when
/// something must be downloaded, so a warm cache builds without any network access.
pub fn fetch_pins(
    fetcher: &Fetcher,
    store: &Store,
    mirror: &dyn Fn() -> Result<String>,
    pins: &[crate::resolve::lock::Pin],
) -> Result<Vec<Vec<u8>>> {
    let missing: Vec<&crate::resolve::lock::Pin> = pins
        .iter()
        .filter(|p| !store.blob_path(&p.sha256).exists())
        .collect();
    if !missing.is_empty() {
        for p in &missing {
            if p.size > crate::fetch::MAX_DOWNLOAD {
                bail!(
                    "package {} {} claims {} bytes (at most {} are downloaded)",
                    p.name,
                    p.version,
                    p.size,
                    crate::fetch::MAX_DOWNLOAD
                );
            }
        }
        // Each at most MAX_DOWNLOAD: no overflow for any count that fits in memory.
        let total: u64 = missing.iter().map(|p| p.size).fold(0, u64::saturating_add);
        let base = mirror()?;
        tracing::info!(
            "downloading {} packages ({:.1} MiB)",
            missing.len(),
            total as f64 / 1048576.0
        );
        let bar = crate::fetch::total_bar(total);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4.min(missing.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = missing.get(i) else { break };
                    let r = (|| -> Result<()> {
                        if p.path.split('/').any(|c| c == ".." || c.is_empty()) {
                            bail!("suspicious path {:?}", p.path);
                        }
                        // The partial file has one writer: whoever holds the blob's
                        // lock. Another build that fetched it meanwhile left it cached.
                        let _lock = store.lock_blob(&p.sha256)?;
                        if store.blob_path(&p.sha256).exists() {
                            if let Some(bar) = &bar {
                                bar.inc(p.size);
                            }
                            return Ok(());
                        }
                        let url = join_url(&base, &p.path);
                        let partial = store.partial_path(&p.sha256);
                        let b = fetcher.get_resumable(&url, p.size, &partial)?;
                        let got = sha256_hex(&b);
                        if got != p.sha256 {
                            bail!("{url}: expected sha256 {}, got {got}", p.sha256);
                        }
                        store.put(&p.sha256, &b)?;
                        if let Some(bar) = &bar {
                            bar.inc(p.size);
                        }
                        Ok(())
                    })()
                    .with_context(|| format!("cannot fetch package {} {}", p.name, p.version));
                    if let Err(e) = r {
                        if let Ok(mut v) = errors.lock() {
                            v.push(e);
                        }
                    }
                });
            }
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mut errors = errors.into_inner().unwrap_or_default();
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
    }
    pins.iter()
        .map(|p| {
            store
                .get(&p.sha256)
                .with_context(|| format!("package {} {}", p.name, p.version))?
                .with_context(|| {
                    format!("package {} {} vanished from the cache", p.name, p.version)
                })
        })
        .collect()
}

fn decompress(path: &str, data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(data).read_to_end(&mut out)?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    } else {
        out = data.to_vec();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deb822_sources() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\nTypes: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: trixie\n";
        let e = parse_deb822_sources(text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].uri, "http://mirror.example/debian");
        assert_eq!(e[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            e[0].signed_by.as_deref(),
            Some(Path::new("/usr/share/keyrings/k.gpg"))
        );
    }

    /// The defect: sizes from fuse.lock went into unchecked sums and allocations (with
    /// overflow checks on, a huge `size` panicked in the download code). They are refused
    /// before any request, naming the package.
    #[test]
    fn a_huge_size_in_the_lock_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let pin = |name: &str, size: u64| crate::resolve::lock::Pin {
            name: name.into(),
            version: "1".into(),
            arch: "amd64".into(),
            sha256: crate::digest::sha256_hex(name.as_bytes()),
            size,
            path: format!("pool/{name}.deb"),
        };
        // TOML integers stop at i64::MAX: the largest a lock can claim.
        let huge = i64::MAX as u64;
        let pins = [pin("a", huge), pin("b", huge), pin("c", huge)];
        let asked = std::cell::Cell::new(false);
        let mirror = || {
            asked.set(true);
            Ok("http://127.0.0.1:9".to_string())
        };
        let e = format!(
            "{:#}",
            fetch_pins(&Fetcher::new(), &store, &mirror, &pins).unwrap_err()
        );
        assert!(
            e.contains("package a 1 claims 9223372036854775807 bytes"),
            "{e}"
        );
        assert!(!asked.get(), "no request for a size that cannot be right");
        let e = format!(
            "{:#}",
            Fetcher::new()
                .get_resumable("http://127.0.0.1:9/x", u64::MAX, &d.path().join("p"))
                .unwrap_err()
        );
        assert!(e.contains("claims"), "{e}");
        let e = format!(
            "{:#}",
            Fetcher::new()
                .get("http://127.0.0.1:9/x", Some(u64::MAX), u64::MAX)
                .unwrap_err()
        );
        assert!(e.contains("claims"), "{e}");
    }

    #[test]
    fn parses_one_line_sources() {
        let text = "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\n# deb http://x y z\ndeb-src http://b y z\ndeb http://c.example/debian/ trixie main\n";
        let e = parse_one_line_sources(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].signed_by.as_deref(), Some(Path::new("/k.gpg")));
        assert_eq!(e[0].suites, ["bookworm"]);
        assert_eq!(e[1].uri, "http://c.example/debian");
    }
}
