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
//! Without `ledger`, the ledger is `<data dir>/ledger.jsonl`. A promotion checks the order
//! and appends its line while holding flock(2) on the ledger, so concurrent promotions are
//! serialised and each sees the others' lines.

use crate::images::lock_file;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The project file name looked for in the current directory.
pub const ENVS_FILE: &str = "fuse-envs.toml";

/// `fuse-envs.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvsFile {
    /// Environments in promotion order.
    #[serde(default)]
    pub order: Vec<String>,
    /// Ledger path, relative to the envs file.
    #[serde(default)]
    pub ledger: Option<PathBuf>,
}

/// The project's environment settings and where they came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Project {
    pub file: Option<PathBuf>,
    pub order: Vec<String>,
    pub ledger: PathBuf,
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
    let e: EnvsFile =
        toml::from_str(text).with_context(|| format!("{} is not valid", file.display()))?;
    for (i, env) in e.order.iter().enumerate() {
        check_env(env).with_context(|| format!("{}: order", file.display()))?;
        if e.order[..i].contains(env) {
            bail!("{}: order lists {env:?} twice", file.display());
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
}

/// Reads every line of the ledger (an absent ledger is empty); a malformed line is an error
/// naming its number.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text).with_context(|| format!("in the ledger {}", path.display()))
}

/// Parses ledger text. Pure.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("line {} is not valid", i + 1))
        })
        .collect()
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
            .any(|x| x.image == image && x.env == e && x.digest == digest)
    };
    if order.is_empty() {
        return Ok(entries
            .iter()
            .rev()
            .find(|x| x.image == image && x.digest == digest && x.env != env)
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

/// The latest entry of each (image, environment). Pure.
pub fn current(entries: &[Entry]) -> BTreeMap<(String, String), &Entry> {
    let mut out = BTreeMap::new();
    for e in entries {
        out.insert((e.image.clone(), e.env.clone()), e);
    }
    out
}

/// Under the ledger's lock: reads the history, lets `make` check it and build the new entry,
/// then appends that entry as one line (O_APPEND, fsync). Nothing is written on error.
pub fn append(path: &Path, make: impl FnOnce(&[Entry]) -> Result<Entry>) -> Result<Entry> {
    let lock_path = {
        let mut s = path.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    };
    let _lock = lock_file(&lock_path)?;
    let entries = read(path)?;
    let entry = make(&entries)?;
    let mut line = serde_json::to_vec(&entry)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the ledger {}", path.display()))?;
    f.write_all(&line)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot append to the ledger {}", path.display()))?;
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

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        // Cross-check with date(1) where it is installed.
        if let Ok(out) = std::process::Command::new("date")
            .args(["-u", "-d", "@1234567890", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
        {
            if out.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    rfc3339(1_234_567_890)
                );
            }
        }
    }
}
