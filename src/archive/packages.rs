//! Deb822 control paragraphs, the `Packages` index and package relations.
//!
//! Deb822 (Debian Policy 5.1): a file is paragraphs separated by blank lines;
//! each paragraph is `Name: value` fields; a line starting with a space or tab
//! continues the previous field's value. Field names are case-insensitive.
//!
//! A `Packages` index (one paragraph per binary package) names, for each
//! package: `Package`, `Version`, `Architecture`, `Filename` (path of the
//! .deb relative to the mirror root), `Size` (bytes of the .deb), `SHA256`
//! (hex digest of the .deb), the relation fields `Depends`, `Pre-Depends`,
//! `Provides`, plus `Multi-Arch`, `Essential`, `Source`, `Section`,
//! `Installed-Size` (KiB) and `Description`.

use super::version::validate_version;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// One binary package as listed in a `Packages` index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Path of the .deb relative to the mirror root (checked: relative, no `..`).
    pub filename: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the .deb.
    pub sha256: String,
    /// Raw `Depends` field ("" when absent); see [`parse_relations`].
    pub depends: String,
    /// Raw `Pre-Depends` field ("" when absent).
    pub pre_depends: String,
    /// Raw `Provides` field ("" when absent).
    pub provides: String,
    /// `Multi-Arch`: same, foreign, allowed or no.
    pub multi_arch: Option<String>,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Source`: source package name, possibly followed by `(version)`.
    pub source: Option<String>,
    pub section: Option<String>,
    /// `Installed-Size`, in KiB.
    pub installed_size: Option<u64>,
    /// First line of `Description` (the synopsis).
    pub description: Option<String>,
    /// Every field of the paragraph, verbatim (see [`parse_deb822`]).
    pub fields: BTreeMap<String, String>,
}

/// One alternative of a relation field: `name[:arch] [(op version)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// Architecture qualifier after `:` (e.g. `any`, `native`, `amd64`).
    pub arch: Option<String>,
    /// One of `<<`, `<=`, `=`, `>=`, `>>` (the obsolete `<`, `>` are
    /// normalised to `<=`, `>=` as dpkg reads them).
    pub op: Option<String>,
    pub version: Option<String>,
}

/// A paragraph with the line number (1-based) it starts on.
struct Paragraph {
    line: usize,
    fields: BTreeMap<String, String>,
}

/// Parse deb822 text into paragraphs of fields.
///
/// Field names are kept as written. A value is the text after `:` with
/// surrounding spaces and tabs removed; each continuation line is appended
/// after a `'\n'` verbatim (its leading space kept, trailing whitespace
/// removed), so `format!("{name}: {value}")` writes the field back out.
/// Lines starting with `#` are comments. Errors name the line.
pub fn parse_deb822(text: &str) -> Result<Vec<BTreeMap<String, String>>> {
    Ok(parse_paragraphs(text)?
        .into_iter()
        .map(|p| p.fields)
        .collect())
}

fn parse_paragraphs(text: &str) -> Result<Vec<Paragraph>> {
    let mut out: Vec<Paragraph> = Vec::new();
    let mut cur: Option<Paragraph> = None;
    let mut last_field: Option<String> = None;
    for (idx, raw) in text.split('\n').enumerate() {
        let lineno = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim_matches([' ', '\t']).is_empty() {
            if let Some(p) = cur.take() {
                out.push(p);
            }
            last_field = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let (Some(p), Some(name)) = (cur.as_mut(), last_field.as_ref()) else {
                bail!("line {lineno}: continuation line without a field before it: {line:?}");
            };
            if let Some(v) = p.fields.get_mut(name) {
                v.push('\n');
                v.push_str(line.trim_end_matches([' ', '\t']));
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("line {lineno}: expected \"Field: value\", got {line:?}");
        };
        if name.is_empty()
            || name.starts_with('-')
            || !name.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            bail!("line {lineno}: invalid field name {name:?}");
        }
        let p = cur.get_or_insert_with(|| Paragraph {
            line: lineno,
            fields: BTreeMap::new(),
        });
        if p.fields.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            bail!(
                "line {lineno}: duplicate field {name:?} in the paragraph starting on line {}",
                p.line
            );
        }
        p.fields.insert(
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        );
        last_field = Some(name.to_string());
    }
    if let Some(p) = cur.take() {
        out.push(p);
    }
    Ok(out)
}

/// Look a field up by name, case-insensitively (deb822 field names are).
pub fn field<'a>(fields: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    if let Some(v) = fields.get(name) {
        return Some(v.as_str());
    }
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Is `name` a valid package name (Debian Policy 5.6.1: at least two
/// characters of `a-z0-9+-.`, starting with an alphanumeric)?
pub fn is_valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// Check that a mirror-relative path is safe to join to a base URL or cache
/// directory: relative, no empty, `.` or `..` components, no backslash or
/// control characters.
pub fn check_relative_path(path: &str) -> Result<()> {
    if path.is_empty() {
        bail!("empty path");
    }
    if path.starts_with('/') {
        bail!("path {path:?} is absolute");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        bail!("path {path:?} contains a backslash or control character");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("path {path:?} has an empty, \".\" or \"..\" component");
    }
    Ok(())
}

/// Parse a `Packages` index. Every paragraph must name a package with a
/// valid name, version, architecture, safe `Filename`, `Size` and `SHA256`.
pub fn parse_packages(text: &str) -> Result<Vec<Package>> {
    let paragraphs = parse_paragraphs(text).context("Packages index")?;
    let mut out = Vec::with_capacity(paragraphs.len());
    for (i, p) in paragraphs.into_iter().enumerate() {
        let name = field(&p.fields, "Package").unwrap_or("").to_string();
        let pkg = package_from_fields(p.fields).with_context(|| {
            format!(
                "Packages index, paragraph {} (line {}{})",
                i + 1,
                p.line,
                if name.is_empty() {
                    String::new()
                } else {
                    format!(", package {name}")
                }
            )
        })?;
        out.push(pkg);
    }
    Ok(out)
}

fn package_from_fields(fields: BTreeMap<String, String>) -> Result<Package> {
    let req = |n: &str| -> Result<String> {
        match field(&fields, n) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => bail!("missing field {n}"),
        }
    };
    let opt = |n: &str| field(&fields, n).map(str::to_string);

    let name = req("Package")?;
    if !is_valid_package_name(&name) {
        bail!("invalid package name {name:?}");
    }
    let version = req("Version")?;
    validate_version(&version)?;
    let architecture = req("Architecture")?;
    if !architecture
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("invalid architecture {architecture:?}");
    }
    let filename = req("Filename")?;
    check_relative_path(&filename).context("field Filename")?;
    let size_s = req("Size")?;
    let size: u64 = size_s
        .parse()
        .with_context(|| format!("field Size: not a number: {size_s:?}"))?;
    let sha256 = req("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("field SHA256: expected 64 hex digits, got {sha256:?}");
    }
    let sha256 = sha256.to_ascii_lowercase();
    let installed_size = match field(&fields, "Installed-Size") {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .with_context(|| format!("field Installed-Size: not a number: {s:?}"))?,
        ),
    };
    let essential = field(&fields, "Essential").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let description =
        field(&fields, "Description").map(|d| d.lines().next().unwrap_or("").to_string());
    Ok(Package {
        name,
        version,
        architecture,
        filename,
        size,
        sha256,
        depends: opt("Depends").unwrap_or_default(),
        pre_depends: opt("Pre-Depends").unwrap_or_default(),
        provides: opt("Provides").unwrap_or_default(),
        multi_arch: opt("Multi-Arch"),
        essential,
        source: opt("Source"),
        section: opt("Section"),
        installed_size,
        description,
        fields,
    })
}

/// Parse a relation field (`Depends`, `Pre-Depends`, `Provides`, ...):
/// comma-separated groups of `|`-separated alternatives.
/// `"aa (>= 1) | bb, cc:any"` gives `[[aa (>= 1), bb], [cc:any]]`. Empty groups
/// (e.g. a trailing comma) are skipped. Architecture restrictions `[...]` and
/// build profiles `<...>` (source packages only) are refused.
pub fn parse_relations(text: &str) -> Result<Vec<Vec<Relation>>> {
    let mut out = Vec::new();
    for group in text.split(',') {
        if group.trim().is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(
                parse_relation(alt).with_context(|| format!("in relation {:?}", alt.trim()))?,
            );
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_relation(s: &str) -> Result<Relation> {
    let s = s.trim();
    if s.is_empty() {
        bail!("empty alternative");
    }
    let name_end = s
        .find(|c: char| c.is_whitespace() || "(:[<".contains(c))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if !is_valid_package_name(name) {
        bail!("invalid package name {name:?}");
    }
    let mut rest = &s[name_end..];
    let mut arch = None;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r
            .find(|c: char| c.is_whitespace() || "([<".contains(c))
            .unwrap_or(r.len());
        let a = &r[..end];
        if a.is_empty()
            || !a
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("invalid architecture qualifier {a:?}");
        }
        arch = Some(a.to_string());
        rest = &r[end..];
    }
    rest = rest.trim_start();
    let mut op = None;
    let mut version = None;
    if let Some(r) = rest.strip_prefix('(') {
        let Some(close) = r.find(')') else {
            bail!("missing ')'");
        };
        let inner = r[..close].trim();
        rest = r[close + 1..].trim_start();
        let op_len = inner
            .find(|c: char| !"<>=".contains(c))
            .unwrap_or(inner.len());
        let o = match &inner[..op_len] {
            "<<" => "<<",
            "<=" | "<" => "<=",
            "=" => "=",
            ">=" | ">" => ">=",
            ">>" => ">>",
            other => bail!("invalid version relation {other:?}"),
        };
        let v = inner[op_len..].trim();
        if v.is_empty() || v.contains(char::is_whitespace) {
            bail!("invalid version {v:?}");
        }
        op = Some(o.to_string());
        version = Some(v.to_string());
    }
    if rest.starts_with('[') || rest.starts_with('<') {
        bail!("architecture restrictions and build profiles are only valid in source packages");
    }
    if !rest.is_empty() {
        bail!("unexpected text {rest:?}");
    }
    Ok(Relation {
        name: name.to_string(),
        arch,
        op,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Package: libc6
Version: 2.36-9+deb12u10
Installed-Size: 12987
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Replaces: libc6-amd64
Depends: libgcc-s1
Recommends: libidn2-0 (>= 2.0.5~)
Suggests: glibc-doc, debconf | debconf-2.0, libc-l10n, locales, libnss-nis, libnss-nisplus
Breaks: busybox (<< 1.30.1-6), fakeroot (<< 1.25.3-1.1)
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
 .
 This package includes shared versions.
Section: libs
Priority: optional
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u10_amd64.deb
Size: 2757936
SHA256: 0A1B0C9D2E8F3A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3D2E1F0A9B8C7D6E5F4A3B

Package: base-files
Essential: yes
Version: 12.4+deb12u11
Architecture: amd64
Pre-Depends: awk
Provides: base
Filename: pool/main/b/base-files/base-files_12.4+deb12u11_amd64.deb
Size: 70640
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
";

    #[test]
    fn parses_packages_index() {
        let pkgs = parse_packages(SAMPLE).unwrap();
        assert_eq!(pkgs.len(), 2);
        let libc = &pkgs[0];
        assert_eq!(libc.name, "libc6");
        assert_eq!(libc.version, "2.36-9+deb12u10");
        assert_eq!(libc.architecture, "amd64");
        assert_eq!(libc.size, 2757936);
        assert_eq!(
            libc.sha256,
            "0a1b0c9d2e8f3a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b"
        );
        assert_eq!(libc.multi_arch.as_deref(), Some("same"));
        assert_eq!(libc.installed_size, Some(12987));
        assert_eq!(
            libc.description.as_deref(),
            Some("GNU C Library: Shared libraries")
        );
        assert_eq!(libc.depends, "libgcc-s1");
        assert!(!libc.essential);
        assert_eq!(libc.fields["Description"].lines().count(), 5);
        assert!(libc.fields["Description"].contains("\n .\n This package"));
        let bf = &pkgs[1];
        assert!(bf.essential);
        assert_eq!(bf.pre_depends, "awk");
        assert_eq!(bf.provides, "base");
        assert_eq!(bf.section, None);
    }

    #[test]
    fn deb822_roundtrips_fields() {
        let ps = parse_deb822("A: 1\nB:  two  \n  more \n\tlines\n\n\n# c\nC:x\r\n").unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0]["A"], "1");
        assert_eq!(ps[0]["B"], "two\n  more\n\tlines");
        assert_eq!(ps[1]["C"], "x");
        assert_eq!(field(&ps[1], "c"), Some("x"));
    }

    #[test]
    fn deb822_errors_name_the_line() {
        let e = parse_deb822("A: 1\nB 2\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_deb822(" cont\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_deb822("A: 1\na: 2\n").unwrap_err().to_string();
        assert!(e.contains("duplicate") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn packages_errors_name_paragraph_and_package() {
        let text = SAMPLE.replace("Size: 70640\n", "");
        let e = format!("{:#}", parse_packages(&text).unwrap_err());
        assert!(
            e.contains("paragraph 2")
                && e.contains("base-files")
                && e.contains("missing field Size"),
            "{e}"
        );
        for (from, to) in [
            ("SHA256: 1111", "SHA256: 111"),
            ("Filename: pool/main/b", "Filename: ../main/b"),
            ("Filename: pool/main/b", "Filename: /pool/main/b"),
            ("Version: 12.4+deb12u11", "Version: x12"),
            ("Package: base-files", "Package: Base_Files"),
            ("Size: 70640", "Size: -1"),
        ] {
            let text = SAMPLE.replace(from, to);
            assert_ne!(text, SAMPLE);
            assert!(parse_packages(&text).is_err(), "accepted {to:?}");
        }
    }

    fn rel(name: &str, arch: Option<&str>, op: Option<&str>, v: Option<&str>) -> Relation {
        Relation {
            name: name.into(),
            arch: arch.map(Into::into),
            op: op.map(Into::into),
            version: v.map(Into::into),
        }
    }

    #[test]
    fn relations() {
        let r = parse_relations("aa (>= 1) | bb, cc:any").unwrap();
        assert_eq!(
            r,
            vec![
                vec![
                    rel("aa", None, Some(">="), Some("1")),
                    rel("bb", None, None, None)
                ],
                vec![rel("cc", Some("any"), None, None)],
            ]
        );
        let r = parse_relations("libc6(<<2.37),\n  foo:amd64 (= 1:2.0-1) ,zlib1g (> 1), x11 (<1),")
            .unwrap();
        assert_eq!(
            r,
            vec![
                vec![rel("libc6", None, Some("<<"), Some("2.37"))],
                vec![rel("foo", Some("amd64"), Some("="), Some("1:2.0-1"))],
                vec![rel("zlib1g", None, Some(">="), Some("1"))],
                vec![rel("x11", None, Some("<="), Some("1"))],
            ]
        );
        assert_eq!(parse_relations("  ").unwrap(), Vec::<Vec<Relation>>::new());
        for bad in [
            "aa (>= 1",
            "aa (=> 1)",
            "aa (>= )",
            "aa | | bb",
            "aa [amd64]",
            "aa <!nocheck>",
            "Aa",
            "a",
            "aa bb",
            "aa:",
        ] {
            assert!(parse_relations(bad).is_err(), "accepted {bad:?}");
        }
    }

    /// Parse a real Packages index named by FUSE_TEST_PACKAGES (uncompressed).
    #[test]
    #[ignore = "manual check of a real index: set FUSE_TEST_PACKAGES and run with --ignored"]
    fn real_packages_from_env() {
        let path = std::env::var("FUSE_TEST_PACKAGES")
            .expect("FUSE_TEST_PACKAGES names an uncompressed Packages file");
        let text = std::fs::read_to_string(&path).unwrap();
        let pkgs = parse_packages(&text).unwrap();
        let mut relations = 0;
        for p in &pkgs {
            for f in [&p.depends, &p.pre_depends, &p.provides] {
                relations += parse_relations(f)
                    .unwrap_or_else(|e| panic!("{} {}: {e:#}", p.name, p.version))
                    .len();
            }
        }
        let expected = text.lines().filter(|l| l.starts_with("Package: ")).count();
        eprintln!(
            "{path}: {} packages, {} essential, {relations} relation groups",
            pkgs.len(),
            pkgs.iter().filter(|p| p.essential).count()
        );
        assert_eq!(pkgs.len(), expected);
    }
}
