//! Debian package version comparison, as dpkg does it.
//!
//! A version is `[epoch:]upstream[-revision]` (Debian Policy 5.6.12):
//! - `epoch`: an unsigned integer, 0 when absent, compared numerically first;
//! - `upstream`: everything between the first `:` and the last `-`;
//! - `revision`: after the last `-` (empty when there is no `-`; `1.0` and
//!   `1.0-0` compare equal, as in dpkg).
//!
//! Upstream and revision are compared with dpkg's `verrevcmp`: alternately a
//! run of non-digits, compared character by character where `~` sorts before
//! everything (even the end of the string), then the end, then letters (by
//! ASCII), then all other characters (by ASCII); then a run of digits,
//! compared numerically.

use anyhow::{bail, Result};
use std::cmp::Ordering;

/// The three parts of a version string, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionParts<'a> {
    /// Digits only (may be empty, meaning 0).
    pub epoch: &'a str,
    pub upstream: &'a str,
    pub revision: &'a str,
}

/// Split a version into epoch, upstream and revision, leniently: an epoch that
/// is not all digits is taken as part of the upstream version (dpkg would
/// refuse such a version; [`validate_version`] says so).
pub fn split_version(v: &str) -> VersionParts<'_> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => (e, rest),
        _ => ("", v),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    VersionParts {
        epoch,
        upstream,
        revision,
    }
}

/// Check a version string the way dpkg's parser does: non-empty, no
/// whitespace, numeric epoch, upstream starting with a digit and made of
/// alphanumerics and `.+~-:`, revision of alphanumerics and `.+~`.
pub fn validate_version(v: &str) -> Result<()> {
    if v.is_empty() {
        bail!("empty version");
    }
    if v.chars().any(char::is_whitespace) {
        bail!("version {v:?} contains whitespace");
    }
    if let Some((e, _)) = v.split_once(':') {
        if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
            bail!("version {v:?} has a non-numeric epoch {e:?}");
        }
    }
    let p = split_version(v);
    if p.upstream.is_empty() {
        bail!("version {v:?} has an empty upstream part");
    }
    if !p.upstream.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("version {v:?}: upstream part must start with a digit");
    }
    if let Some(c) = p
        .upstream
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".+~-:".contains(*c)))
    {
        bail!("version {v:?}: invalid character {c:?} in upstream part");
    }
    if v.contains('-') && p.revision.is_empty() {
        bail!("version {v:?} has an empty revision after '-'");
    }
    if let Some(c) = p
        .revision
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".+~".contains(*c)))
    {
        bail!("version {v:?}: invalid character {c:?} in revision");
    }
    Ok(())
}

/// Compare two Debian versions (total order; same result as
/// `dpkg --compare-versions` for valid versions).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let a = split_version(a);
    let b = split_version(b);
    compare_digits(a.epoch.as_bytes(), b.epoch.as_bytes())
        .then_with(|| verrevcmp(a.upstream.as_bytes(), b.upstream.as_bytes()))
        .then_with(|| verrevcmp(a.revision.as_bytes(), b.revision.as_bytes()))
}

/// Does `version` satisfy `op other` (`op` one of `<<`, `<=`, `=`, `>=`, `>>`;
/// the obsolete `<` and `>` mean `<=` and `>=`)? An unknown operator is an error.
pub fn satisfies(version: &str, op: &str, other: &str) -> Result<bool> {
    let ord = compare_versions(version, other);
    Ok(match op {
        "<<" => ord == Ordering::Less,
        "<=" | "<" => ord != Ordering::Greater,
        "=" => ord == Ordering::Equal,
        ">=" | ">" => ord != Ordering::Less,
        ">>" => ord == Ordering::Greater,
        _ => bail!("unknown version relation {op:?}"),
    })
}

/// Sort weight of one character of a non-digit run (`None` = end of run).
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// Compare two digit strings numerically, without overflow.
fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
    let a = &a[strip(a)..];
    let b = &b[strip(b)..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn verrevcmp(mut a: &[u8], mut b: &[u8]) -> Ordering {
    while !a.is_empty() || !b.is_empty() {
        // Non-digit run.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                a = &a[1..];
            }
            if cb.is_some() {
                b = &b[1..];
            }
        }
        // Digit run.
        let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let ord = compare_digits(&a[..na], &b[..nb]);
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// (a, b, expected ordering of a relative to b)
    const TABLE: &[(&str, &str, Ordering)] = &[
        ("1.0~rc1", "1.0", Less),
        ("1:0.9", "2.0", Greater),
        ("1.0-1", "1.0-2", Less),
        ("1.0a", "1.0+", Less),
        ("6.1.0-28", "6.1.0-9", Greater),
        ("1.0", "1.0", Equal),
        ("1.0", "1.0-0", Equal),
        ("0:1.0", "1.0", Equal),
        ("00:1.0", "0:1.0", Equal),
        ("1.01", "1.1", Equal),
        ("1.10", "1.9", Greater),
        ("1.2.3", "1.2.3.0", Less),
        ("1.0~~", "1.0~~a", Less),
        ("1.0~~a", "1.0~", Less),
        ("1.0~", "1.0", Less),
        ("1.0", "1.0a", Less),
        ("1.0+dfsg-1", "1.0-1", Greater),
        ("1:1.0", "2:0.1", Less),
        ("1.0-1~bpo11+1", "1.0-1", Less),
        ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", Less),
        ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
        ("1.0.0-1ubuntu1", "1.0.0-1", Greater),
        ("B", "a", Less),
        ("1.0-a", "1.0-1", Greater),
        ("1.0.", "1.0", Greater),
        ("1.0-1-1", "1.0-1", Greater),
        ("10:1", "9:2", Greater),
        (
            "1.99999999999999999999999",
            "1.99999999999999999999998",
            Greater,
        ),
        ("2147483647:1", "2147483646:2", Greater),
        ("1.00000000000000000000000000001", "1.2", Less),
        ("2.0", "10.0", Less),
        ("1.0+b1", "1.0", Greater),
        ("252.30-1~deb12u2", "252.33-1~deb12u1", Less),
    ];

    #[test]
    fn table_of_known_pairs() {
        for &(a, b, want) in TABLE {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn table_agrees_with_dpkg() {
        if !crate::testutil::require_tool("dpkg") {
            return;
        }
        for &(a, b, want) in TABLE {
            let op = match want {
                Less => "lt",
                Equal => "eq",
                Greater => "gt",
            };
            let st = std::process::Command::new("dpkg")
                .args(["--compare-versions", a, op, b])
                .status()
                .unwrap();
            assert!(st.success(), "dpkg disagrees: {a} {op} {b}");
        }
    }

    #[test]
    fn splits_parts() {
        let p = split_version("2:1.2-3-4");
        assert_eq!((p.epoch, p.upstream, p.revision), ("2", "1.2-3", "4"));
        let p = split_version("1.2");
        assert_eq!((p.epoch, p.upstream, p.revision), ("", "1.2", ""));
    }

    #[test]
    fn validation() {
        for ok in [
            "1.0",
            "1:2.3-4",
            "2.36-9+deb12u4",
            "1.0~rc1+dfsg-1~bpo1",
            "0",
        ] {
            validate_version(ok).unwrap();
        }
        for bad in [
            "", "a1.0", "1.0 1", "x:1.0", ":1.0", "1.0-", "1.0-1_2", "1.0/1",
        ] {
            assert!(validate_version(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn relations() {
        assert!(satisfies("1.0", ">=", "1.0").unwrap());
        assert!(!satisfies("1.0", ">>", "1.0").unwrap());
        assert!(satisfies("1.0~rc1", "<<", "1.0").unwrap());
        assert!(satisfies("2.0", "=", "0:2.0").unwrap());
        assert!(satisfies("1.0", "<", "1.0").unwrap());
        assert!(satisfies("1:0.1", ">>", "9.9").unwrap());
        assert!(satisfies("1.0", "!=", "1.0").is_err());
    }
}
