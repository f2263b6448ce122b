//! Environments and promotion: which image digest each environment runs, recorded in an
//! append-only ledger of JSON lines (who, when, image, digest, from which environment, the
//! config digest, the registry reference). Environments belong to an image name: `prod` of
//! `hello` and `prod` of `billing` are different environments.
//!
//! The promotion order comes from a project file, `fuse-envs.toml`:
//!
//! ```toml
//! order = ["test", "staging", "prod"]   # promoting to an env needs the one before it
//! ledger = "fuse-ledger.jsonl"          # optional, relative to this file
//! ```
//!
//! Environments with a target (`[env.NAME]`, src/envs.rs) run servers: `fuse deploy` appends
//! an entry with a `deploy` record (servers, steps, result); only a successful one makes its
//! digest the environment's current one, and only those count for the order.
//!
//! Without `ledger`, the ledger is `<data dir>/ledger.jsonl`. A promotion checks the order
//! and appends its line while holding flock(2) on the ledger, so concurrent promotions are
//! serialised and each sees the others' lines.

use crate::envs::{check_env_table, EnvSpec, EnvToml};
use crate::image_store::lock_file;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The project file name looked for in the current directory.
pub const ENVS_FILE: &str = "fuse-envs.toml";

/// `fuse-envs.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvsFile {
    /// Environments in promotion order.
    #[serde(default)]
    pub order: Vec<String>,
    /// Ledger path, relative to the envs file.
    #[serde(default)]
    pub ledger: Option<PathBuf>,
    /// `[env.NAME]` tables as written.
    #[serde(default)]
    pub env: BTreeMap<String, EnvToml>,
    /// The environments with a target, checked (filled by [`parse_envs`]).
    #[serde(skip)]
    pub envs: Vec<EnvSpec>,
}

/// The project's environment settings and where they came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Project {
    pub file: Option<PathBuf>,
    pub order: Vec<String>,
    pub ledger: PathBuf,
    /// Environments with a target (`fuse deploy`).
    pub envs: Vec<EnvSpec>,
}

impl Project {
    /// The environment `name` when it has a target.
    pub fn env(&self, name: &str) -> Option<&EnvSpec> {
        self.envs.iter().find(|e| e.name == name)
    }
}

/// An environment name: `[a-z0-9][a-z0-9._-]*`, at most 63 characters (also valid as an OCI tag).
pub fn check_env(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        bail!("environment name {name:?} must be [a-z0-9][a-z0-9._-]* (at most 63)");
    }
    Ok(())
}

/// Parses `fuse-envs.toml` text (`file` names it in errors).
pub fn parse_envs(text: &str, file: &Path) -> Result<EnvsFile> {
    let mut e: EnvsFile =
        toml::from_str(text).with_context(|| format!("{} is not valid", file.display()))?;
    for (i, env) in e.order.iter().enumerate() {
        check_env(env).with_context(|| format!("{}: order", file.display()))?;
        if e.order[..i].contains(env) {
            bail!("{}: order lists {env:?} twice", file.display());
        }
    }
    for (name, t) in &e.env {
        check_env(name).with_context(|| format!("{}: [env.{name}]", file.display()))?;
        if !e.order.is_empty() && !e.order.contains(name) {
            bail!(
                "{}: [env.{name}] is not in order ({})",
                file.display(),
                e.order.join(", ")
            );
        }
        if let Some(spec) = check_env_table(name, t, file)? {
            e.envs.push(spec);
        }
    }
    Ok(e)
}

/// The project: `--envs FILE` when given, else `./fuse-envs.toml` when present, else no
/// order and the ledger in `data_dir`.
pub fn load_project(explicit: Option<&Path>, data_dir: &Path) -> Result<Project> {
    let file = match explicit {
        Some(f) => Some(f.to_path_buf()),
        None => Some(PathBuf::from(ENVS_FILE)).filter(|p| p.is_file()),
    };
    let default_ledger = data_dir.join("ledger.jsonl");
    let Some(file) = file else {
        return Ok(Project {
            file: None,
            order: vec![],
            ledger: default_ledger,
            envs: vec![],
        });
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let e = parse_envs(&text, &file)?;
    let ledger = match e.ledger {
        Some(l) => file.parent().unwrap_or(Path::new(".")).join(l),
        None => default_ledger,
    };
    Ok(Project {
        file: Some(file),
        order: e.order,
        ledger,
        envs: e.envs,
    })
}

/// One promotion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// RFC 3339 UTC.
    pub time: String,
    pub who: String,
    /// The image's name and version (from its image.json).
    pub image: String,
    pub version: String,
    pub env: String,
    /// `sha256:` of the raw image.
    pub digest: String,
    /// The environment this digest was promoted from (the one before `env` in the order,
    /// else the last one it was promoted to), if any.
    #[serde(default)]
    pub from: Option<String>,
    /// `sha256:` of the env file the environment runs it with, when given.
    #[serde(default)]
    pub config: Option<String>,
    /// `host/repo:tag@sha256:<manifest>` when the promotion also tagged a registry.
    #[serde(default)]
    pub registry: Option<String>,
    /// sha256 fingerprint of the certificate whose key signed the image's UKI for Secure
    /// Boot (verified at promotion), when it is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Set by `fuse deploy` / `fuse rollback`: what ran where, and whether it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deployment>,
}

impl Entry {
    /// Whether this entry makes its digest the environment's current one: a promotion, or
    /// a successful deployment.
    pub fn counts(&self) -> bool {
        self.deploy.as_ref().is_none_or(|d| d.result == "ok")
    }
}

/// A deployment's record in the ledger.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// `libvirt`, `aws`.
    pub target: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    /// `ok`, or `failed` (the environment kept what it ran).
    pub result: String,
    /// Why it failed: the gate, the server and the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub identity_gate: bool,
    /// The new servers (on failure: the ones that were started, then destroyed).
    pub servers: Vec<Server>,
    /// The servers that were replaced (retired).
    #[serde(default)]
    pub retired: Vec<Server>,
    /// Each step and how long it took, in order.
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Upload>,
}

/// One step of a deployment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub step: String,
    /// RFC 3339 UTC start.
    pub started: String,
    pub ms: u64,
    pub ok: bool,
}

/// One server of an environment (see [`crate::deploy`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Carries the environment, the image name and a digest prefix.
    pub name: String,
    /// The target's id: libvirt domain name, EC2 instance id.
    pub id: String,
    pub digest: String,
    /// `host:port` the switch sends traffic to, once known.
    #[serde(default)]
    pub address: Option<String>,
}

/// What a target's upload did (libvirt: whole volume or nothing; AWS: blocks).
#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub reused: bool,
    pub blocks_total: u64,
    pub blocks_sent: u64,
    pub skipped_zero: u64,
    pub skipped_unchanged: u64,
    pub bytes_sent: u64,
}

/// Reads every line of the ledger (an absent ledger is empty); a malformed line is an error
/// naming its number, except a torn last line (see [`parse`]), which is skipped with a warning.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let p = parse_bytes(&bytes).with_context(|| format!("in the ledger {}", path.display()))?;
    if let Some(at) = p.torn_at {
        warn_torn(path, bytes.len() - at);
    }
    Ok(p.entries)
}

fn warn_torn(path: &Path, len: usize) {
    tracing::warn!(
        "the ledger {} ends in an incomplete line ({len} bytes, left by an interrupted write); \
         it is ignored and dropped at the next promotion",
        path.display()
    );
}

/// Parses ledger text, skipping a torn last line (see [`Parsed`]). Pure.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    Ok(parse_bytes(text.as_bytes())?.entries)
}

/// A parsed ledger.
#[derive(Debug)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Where a torn last line starts: the file does not end in a newline and its last line
    /// is not a valid entry (a write cut short by a crash or a full disk). Every complete
    /// line (newline-terminated) must be valid: anything else is damage, an error.
    pub torn_at: Option<usize>,
    /// The file's last line is a valid entry without its newline (a write cut short just
    /// before it): the next append writes the newline first.
    pub needs_newline: bool,
}

/// Parses ledger bytes. Pure.
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed> {
    let mut entries = Vec::new();
    let mut start = 0;
    let mut n = 0;
    let mut torn_at = None;
    let mut needs_newline = false;
    while start < bytes.len() {
        n += 1;
        let (line, complete, next) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[start..start + i], true, start + i + 1),
            None => (&bytes[start..], false, bytes.len()),
        };
        let parsed = std::str::from_utf8(line)
            .map_err(anyhow::Error::from)
            .and_then(|l| {
                if l.trim().is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_str::<Entry>(l)
                        .map(Some)
                        .map_err(Into::into)
                }
            });
        match parsed {
            Ok(Some(e)) => {
                entries.push(e);
                needs_newline = !complete;
            }
            Ok(None) => {}
            Err(_) if !complete => torn_at = Some(start),
            Err(e) => return Err(e).with_context(|| format!("line {n} is not valid")),
        }
        start = next;
    }
    Ok(Parsed {
        entries,
        torn_at,
        needs_newline,
    })
}

/// Checks `digest` of `image` may be promoted to `env` given the history and the order, and
/// returns the environment it comes from. With an order: `env` must be in it, and unless it
/// is the first, the digest must have been promoted to the environment before it. Without
/// an order: any environment; `from` is the last one the digest was promoted to. Pure.
pub fn check_promotion(
    entries: &[Entry],
    order: &[String],
    image: &str,
    env: &str,
    digest: &str,
) -> Result<Option<String>> {
    check_env(env)?;
    let was_in = |e: &str| {
        entries
            .iter()
            .any(|x| x.image == image && x.env == e && x.digest == digest && x.counts())
    };
    if order.is_empty() {
        return Ok(entries
            .iter()
            .rev()
            .find(|x| x.image == image && x.digest == digest && x.env != env && x.counts())
            .map(|x| x.env.clone()));
    }
    let Some(pos) = order.iter().position(|e| e == env) else {
        bail!(
            "environment {env:?} is not in the promotion order ({})",
            order.join(" -> ")
        );
    };
    if pos == 0 {
        return Ok(None);
    }
    let prev = &order[pos - 1];
    if !was_in(prev) {
        bail!(
            "refusing to promote {image} {digest} to {env}: it was never promoted to {prev}, \
             which comes before {env} ({})",
            order.join(" -> ")
        );
    }
    Ok(Some(prev.clone()))
}

/// The latest entry of each (image, environment) that counts (a promotion or a successful
/// deployment). Pure.
pub fn current(entries: &[Entry]) -> BTreeMap<(String, String), &Entry> {
    let mut out = BTreeMap::new();
    for e in entries.iter().filter(|e| e.counts()) {
        out.insert((e.image.clone(), e.env.clone()), e);
    }
    out
}

/// Under the ledger's lock: reads the history, lets `make` check it and build the new entry,
/// then appends that entry as one line (O_APPEND, fsync). Nothing is written on error.
pub fn append(path: &Path, make: impl FnOnce(&[Entry]) -> Result<Entry>) -> Result<Entry> {
    append_then(path, make, |_| Ok(()))
}

/// As [`append`], then runs `then` with the entry, still under the lock, once the line is
/// on disk: an action the ledger records (moving a registry tag) happens only after its
/// record exists. If `then` fails the line stays (the record of an attempt) and the error
/// says so.
pub fn append_then(
    path: &Path,
    make: impl FnOnce(&[Entry]) -> Result<Entry>,
    then: impl FnOnce(&Entry) -> Result<()>,
) -> Result<Entry> {
    let lock_path = {
        let mut s = path.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    };
    let _lock = lock_file(&lock_path)?;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let parsed =
        parse_bytes(&bytes).with_context(|| format!("in the ledger {}", path.display()))?;
    let entry = make(&parsed.entries)?;
    let mut line = Vec::new();
    if parsed.needs_newline {
        line.push(b'\n');
    }
    line.extend(serde_json::to_vec(&entry)?);
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the ledger {}", path.display()))?;
    let mut keep = bytes.len() as u64;
    if let Some(at) = parsed.torn_at {
        warn_torn(path, bytes.len() - at);
        keep = at as u64;
        f.set_len(keep)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot drop the torn last line of {}", path.display()))?;
    }
    if let Err(e) = f.write_all(&line).and_then(|()| f.sync_all()) {
        // Leave the ledger as it was (a full disk must not leave half a line behind).
        let _ = f.set_len(keep).and_then(|()| f.sync_all());
        return Err(e).with_context(|| format!("cannot append to the ledger {}", path.display()));
    }
    then(&entry).with_context(|| {
        format!(
            "the ledger {} records the promotion, but completing it failed (run it again)",
            path.display()
        )
    })?;
    Ok(entry)
}

/// Unix seconds as RFC 3339 UTC, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil-from-days (proleptic Gregorian), as in Howard Hinnant's date algorithms.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Who asked for a promotion or deployment: `--who`, else $USER, else $LOGNAME.
pub fn who(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|w| !w.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(image: &str, env: &str, digest: &str) -> Entry {
        Entry {
            time: rfc3339(0),
            who: "t".into(),
            image: image.into(),
            version: "1".into(),
            env: env.into(),
            digest: digest.into(),
            from: None,
            config: None,
            registry: None,
            signer: None,
            deploy: None,
        }
    }

    fn order() -> Vec<String> {
        ["test", "staging", "prod"].map(String::from).to_vec()
    }

    #[test]
    fn order_is_enforced() {
        let h = vec![entry("hello", "test", "sha256:a")];
        assert_eq!(
            check_promotion(&h, &order(), "hello", "test", "sha256:b").unwrap(),
            None
        );
        assert_eq!(
            check_promotion(&h, &order(), "hello", "staging", "sha256:a").unwrap(),
            Some("test".into())
        );
        let e = format!(
            "{:#}",
            check_promotion(&h, &order(), "hello", "prod", "sha256:a").unwrap_err()
        );
        assert!(e.contains("never promoted to staging"), "{e}");
        let e = format!(
            "{:#}",
            check_promotion(&h, &order(), "hello", "staging", "sha256:b").unwrap_err()
        );
        assert!(e.contains("never promoted to test"), "{e}");
        // Another image's history does not count.
        assert!(check_promotion(&h, &order(), "other", "staging", "sha256:a").is_err());
        assert!(check_promotion(&h, &order(), "hello", "qa", "sha256:a").is_err());
        // Without an order anything goes; from = where the digest was last.
        assert_eq!(
            check_promotion(&h, &[], "hello", "prod", "sha256:a").unwrap(),
            Some("test".into())
        );
        assert_eq!(
            check_promotion(&h, &[], "hello", "prod", "sha256:b").unwrap(),
            None
        );
    }

    #[test]
    fn envs_file_is_strict() {
        let f = Path::new("fuse-envs.toml");
        let e = parse_envs("order = [\"test\", \"prod\"]\n", f).unwrap();
        assert_eq!(e.order, ["test", "prod"]);
        assert!(parse_envs("order = [\"test\", \"test\"]", f).is_err());
        assert!(parse_envs("order = [\"Prod\"]", f).is_err());
        let e = format!("{:#}", parse_envs("oder = []", f).unwrap_err());
        assert!(e.contains("oder"), "{e}");
    }

    #[test]
    fn append_and_read_back_and_current() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.jsonl");
        for (env, dg) in [
            ("test", "sha256:a"),
            ("test", "sha256:b"),
            ("prod", "sha256:a"),
        ] {
            append(&p, |h| {
                let two = ["test".to_string(), "prod".to_string()];
                let from = check_promotion(h, &two, "hello", env, dg)?;
                let mut e = entry("hello", env, dg);
                e.from = from;
                Ok(e)
            })
            .unwrap();
        }
        // Refused: nothing appended.
        assert!(append(&p, |h| {
            check_promotion(h, &order(), "hello", "prod", "sha256:c")?;
            Ok(entry("hello", "prod", "sha256:c"))
        })
        .is_err());
        let all = read(&p).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].from.as_deref(), Some("test"));
        let cur = current(&all);
        assert_eq!(cur[&("hello".into(), "test".into())].digest, "sha256:b");
        assert_eq!(cur[&("hello".into(), "prod".into())].digest, "sha256:a");
        std::fs::write(&p, "{\"bad\n").unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("line 1"));
    }

    fn ledger_with_torn_tail() -> (tempfile::TempDir, PathBuf, String) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.jsonl");
        append(&p, |_| Ok(entry("hello", "test", "sha256:a"))).unwrap();
        append(&p, |_| Ok(entry("hello", "prod", "sha256:a"))).unwrap();
        let full = std::fs::read_to_string(&p).unwrap();
        (d, p, full)
    }

    /// The defect: a crash or full disk mid-append left a torn last line, and from then on
    /// every read (promote, envs) failed. A torn tail is skipped with a warning and dropped
    /// by the next append; damage in a complete line is still an error.
    #[test]
    fn a_torn_last_line_is_skipped_and_dropped_at_the_next_append() {
        let (_d, p, full) = ledger_with_torn_tail();
        let first_len = full.find('\n').unwrap() + 1;
        for cut in [first_len + 1, first_len + 10, full.len() - 2] {
            std::fs::write(&p, &full.as_bytes()[..cut]).unwrap();
            let got = read(&p).unwrap();
            assert_eq!(got.len(), 1, "cut at {cut}");
            let e = append(&p, |h| {
                assert_eq!(h.len(), 1);
                Ok(entry("hello", "staging", "sha256:b"))
            })
            .unwrap();
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(
                text,
                format!(
                    "{}{}\n",
                    &full[..first_len],
                    serde_json::to_string(&e).unwrap()
                )
            );
            assert_eq!(read(&p).unwrap().len(), 2);
        }
        // Cut just before the final newline: the last entry is whole and kept.
        std::fs::write(&p, &full.as_bytes()[..full.len() - 1]).unwrap();
        assert_eq!(read(&p).unwrap().len(), 2);
        append(&p, |_| Ok(entry("hello", "x", "sha256:c"))).unwrap();
        assert_eq!(read(&p).unwrap().len(), 3);
        // A damaged complete line is an error naming it.
        std::fs::write(&p, format!("{{\"bad\n{full}")).unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("line 1"));
        assert!(append(&p, |_| Ok(entry("hello", "x", "sha256:c"))).is_err());
    }

    #[test]
    fn then_runs_after_the_line_is_written_and_its_failure_keeps_it() {
        let (_d, p, _) = ledger_with_torn_tail();
        let e = append_then(
            &p,
            |_| Ok(entry("hello", "x", "sha256:c")),
            |e| {
                // The line is on disk before the action.
                assert_eq!(read(&p).unwrap().last(), Some(e));
                anyhow::bail!("registry down")
            },
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("records the promotion") && e.contains("registry down"),
            "{e}"
        );
        assert_eq!(read(&p).unwrap().len(), 3);
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        // Cross-check with GNU date(1).
        if crate::testutil::require_tool("date") {
            let out = std::process::Command::new("date")
                .args(["-u", "-d", "@1234567890", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                rfc3339(1_234_567_890)
            );
        }
    }
}
