//! Budgets (`[budget]` in fuse.toml): size limits for the image and its layers, a time limit
//! for booting to a healthy answer; strict unit parsing and the checks against an image.
//!
//! Sizes are SI (`kB`, `MB`, `GB`: powers of 10) or IEC (`KiB`, `MiB`, `GiB`: powers of 2),
//! durations `ms` or `s`. Anything else (`mb`, `KB`, `20`, `1e3 MB`) is an error.

use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// The validated `[budget]` of a manifest (all limits optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// The raw disk, in bytes.
    pub image: Option<Limit>,
    /// Per layer (by layer name): the layer's partition, in bytes.
    pub layers: BTreeMap<String, Limit>,
    /// Time from QEMU's start to the first healthy answer, in milliseconds (`fuse test`).
    pub boot: Option<Limit>,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.layers.is_empty() && self.boot.is_none()
    }
}

/// A limit: its value in bytes or milliseconds, and the text it was written as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub value: u64,
    pub text: String,
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

const TIME_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000)];

/// `<number> <unit>` (one optional space); the number is a decimal with at most 3 fraction
/// digits and the result must be a whole number of the base unit.
fn parse_quantity(s: &str, units: &[(&str, u64)], what: &str) -> Result<u64> {
    let known = units.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(", ");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(split);
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    if num.is_empty() {
        bail!(
            "{s:?} is not a {what}: expected a number and a unit ({known}), e.g. {}",
            example(units)
        );
    }
    if unit.is_empty() {
        bail!("{s:?} has no unit: expected one of {known}");
    }
    let Some(&(_, scale)) = units.iter().find(|(u, _)| *u == unit) else {
        let hint = units
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(unit))
            .map(|(u, _)| format!(" (did you mean {u}?)"))
            .unwrap_or_default();
        bail!("{s:?}: unknown unit {unit:?}{hint}; expected one of {known}");
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        bail!("{s:?}: {num:?} is not a number");
    }
    if frac.len() > 3 {
        bail!("{s:?}: at most 3 digits after the decimal point");
    }
    // value = (int * 1000 + frac_milli) * scale / 1000, exactly.
    let int: u128 = int
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: {num:?} is too large"))?;
    let milli: u128 = format!("{frac:0<3}").parse().unwrap_or(0);
    // Checked: a number near u128::MAX must not wrap to a small budget.
    let total = int
        .checked_mul(1000)
        .and_then(|v| v.checked_add(milli))
        .and_then(|v| v.checked_mul(scale as u128))
        .ok_or_else(|| anyhow::anyhow!("{s:?} is too large"))?;
    if !total.is_multiple_of(1000) {
        bail!("{s:?} is not a whole number of {}", units[0].0);
    }
    u64::try_from(total / 1000).map_err(|_| anyhow::anyhow!("{s:?} is too large"))
}

fn example(units: &[(&str, u64)]) -> &'static str {
    if units == TIME_UNITS {
        "\"20s\""
    } else {
        "\"40 MB\""
    }
}

/// A size: `"40 MB"` (10^6), `"20MiB"` (2^20), `"512 kB"`, `"1.5 GB"`, `"100 B"`.
pub fn parse_size(s: &str) -> Result<u64> {
    parse_quantity(s, SIZE_UNITS, "size")
}

/// A duration in milliseconds: `"20s"`, `"1.5 s"`, `"800ms"`.
pub fn parse_duration_ms(s: &str) -> Result<u64> {
    parse_quantity(s, TIME_UNITS, "duration")
}

/// A size for people: bytes and, from 1000 up, the SI figure (the budget's own unit family
/// is what the user wrote; the bytes make the comparison exact).
pub fn human_size(bytes: u64) -> String {
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let (v, u) = if bytes >= 1_000_000_000 {
        (bytes as f64 / 1e9, "GB")
    } else if bytes >= 1_000_000 {
        (bytes as f64 / 1e6, "MB")
    } else {
        (bytes as f64 / 1e3, "kB")
    };
    format!("{v:.2} {u} ({bytes} bytes)")
}

/// One budget's result.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    /// `image`, `layers.<name>` or `boot`: the key in `[budget]`.
    pub budget: String,
    /// The limit as written in the manifest.
    pub limit: String,
    /// The limit in bytes (sizes) or milliseconds (boot).
    pub limit_value: u64,
    /// The measured figure, same unit as `limit_value`.
    pub actual: u64,
    pub exceeded: bool,
}

impl Check {
    fn new(budget: String, limit: &Limit, actual: u64) -> Check {
        Check {
            budget,
            limit: limit.text.clone(),
            limit_value: limit.value,
            actual,
            exceeded: actual > limit.value,
        }
    }

    /// One line: `budget image: 41.20 MB (41200000 bytes) is over the limit of 40 MB (40000000 bytes)`.
    pub fn message(&self) -> String {
        let (actual, limit) = if self.budget == "boot" {
            (
                format!("{:.1}s", self.actual as f64 / 1000.0),
                format!("{} ({} ms)", self.limit, self.limit_value),
            )
        } else {
            (
                human_size(self.actual),
                format!("{} ({} bytes)", self.limit, self.limit_value),
            )
        };
        let verdict = if self.exceeded {
            "is over the limit of"
        } else {
            "is within"
        };
        format!("budget {}: {actual} {verdict} {limit}", self.budget)
    }
}

/// The size budgets against a built image: its raw size and its layers' partition sizes.
/// A layer budget naming a layer the image does not have is reported (as a warning) in the
/// second list.
pub fn check_sizes(
    b: &Budget,
    image_size: u64,
    layers: &[(String, u64)],
) -> (Vec<Check>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    if let Some(l) = &b.image {
        out.push(Check::new("image".into(), l, image_size));
    }
    for (name, l) in &b.layers {
        match layers.iter().find(|(n, _)| n == name) {
            Some((_, size)) => out.push(Check::new(format!("layers.{name}"), l, *size)),
            None => missing.push(name.clone()),
        }
    }
    (out, missing)
}

/// The boot budget against a measured time to healthy (milliseconds).
pub fn check_boot(b: &Budget, ms: u64) -> Option<Check> {
    b.boot.as_ref().map(|l| Check::new("boot".into(), l, ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_strictly_with_si_and_iec_units() {
        assert_eq!(parse_size("40 MB").unwrap(), 40_000_000);
        assert_eq!(parse_size("40MB").unwrap(), 40_000_000);
        assert_eq!(parse_size("20 MiB").unwrap(), 20 * 1024 * 1024);
        assert_eq!(parse_size("512 kB").unwrap(), 512_000);
        assert_eq!(parse_size("1 KiB").unwrap(), 1024);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("0.5 KiB").unwrap(), 512);
        assert_eq!(parse_size("100 B").unwrap(), 100);
        for bad in [
            "40",
            "MB",
            "40 mb",
            "40 KB",
            "40  MB",
            " 40 MB",
            "40 MB ",
            "4O MB",
            "1.2.3 MB",
            "1. MB",
            ".5 MB",
            "1e3 MB",
            "-1 MB",
            "0.1 B",
            "1.0001 GB",
            "40 megabytes",
            "",
            "99999999999999999999999 GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        let e = parse_size("40 mb").unwrap_err().to_string();
        assert!(e.contains("did you mean MB"), "{e}");
        let e = parse_size("40").unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
    }

    #[test]
    fn huge_numbers_are_too_large_not_wrapped() {
        // 2^125 + 1: (int * 1000) * 1 wrapped to 1000 in u128 arithmetic, i.e. "1 B".
        for s in [
            "42535295865117307932921825928971026433 B",
            "340282366920938463463374607431768211455 B",
            "18446744073709551616 B",
            "17179869184 GiB",
        ] {
            let e = format!("{:#}", parse_size(s).unwrap_err());
            assert!(e.contains("too large"), "{s}: {e}");
        }
        assert!(parse_duration_ms("42535295865117307932921825928971026433 s").is_err());
        assert_eq!(parse_size("18446744073709551615 B").unwrap(), u64::MAX);
    }

    #[test]
    fn durations_parse_strictly() {
        assert_eq!(parse_duration_ms("20s").unwrap(), 20_000);
        assert_eq!(parse_duration_ms("20 s").unwrap(), 20_000);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1_500);
        assert_eq!(parse_duration_ms("800ms").unwrap(), 800);
        for bad in ["20", "20 sec", "20S", "1m", "0.5 ms", "20 MB"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn size_checks_name_budget_figure_and_limit() {
        let b = Budget {
            image: Some(Limit {
                value: 10_000_000,
                text: "10 MB".into(),
            }),
            layers: [
                (
                    "app".to_string(),
                    Limit {
                        value: 1000,
                        text: "1 kB".into(),
                    },
                ),
                (
                    "runtime".to_string(),
                    Limit {
                        value: 1,
                        text: "1 B".into(),
                    },
                ),
            ]
            .into(),
            boot: None,
        };
        let (checks, missing) = check_sizes(
            &b,
            12_345_678,
            &[("base".into(), 4096), ("app".into(), 999)],
        );
        assert_eq!(missing, vec!["runtime".to_string()]);
        assert_eq!(checks.len(), 2);
        assert!(checks[0].exceeded);
        let msg = checks[0].message();
        assert!(
            msg.contains("budget image")
                && msg.contains("12345678 bytes")
                && msg.contains("10 MB (10000000 bytes)")
                && msg.contains("over"),
            "{msg}"
        );
        assert!(!checks[1].exceeded, "999 bytes is within 1 kB");
        assert_eq!(checks[1].budget, "layers.app");
        // exactly at the limit is within it
        let (c, _) = check_sizes(&b, 10_000_000, &[]);
        assert!(!c[0].exceeded);
    }
}
