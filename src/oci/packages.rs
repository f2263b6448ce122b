//! The packages a container image says are installed: the dpkg database of a Debian-based
//! image (`/var/lib/dpkg/status`, and distroless images' `/var/lib/dpkg/status.d/*`) and the
//! apk database of an Alpine-based one (`/lib/apk/db/installed`), and the distribution its
//! `/etc/os-release` names. Recorded in image.json `app.container.packages` for the SBOM and
//! `fuse inspect`. Pure: bytes in, packages out.
//!
//! The files come from the image and are treated as hostile: each is read only up to
//! [`MAX_DB_BYTES`] and [`MAX_PACKAGES`] entries, the values kept (name, version,
//! architecture, source) must be short single words of printable UTF-8, and a malformed line
//! is an error naming its line number (the caller adds the file).

use crate::disk::ContainerPackage;
use anyhow::{bail, Result};

/// The dpkg database (relative to the root).
pub const DPKG_STATUS: &str = "var/lib/dpkg/status";
/// One file per package, no `Status` field (distroless images).
pub const DPKG_STATUS_D: &str = "var/lib/dpkg/status.d";
/// The apk database.
pub const APK_INSTALLED: &str = "lib/apk/db/installed";
/// The distribution's identity.
pub const OS_RELEASE: &str = "etc/os-release";
/// Largest package database read (a full Debian system's status is a few MB).
pub const MAX_DB_BYTES: usize = 64 << 20;
/// Most packages one database may list.
pub const MAX_PACKAGES: usize = 100_000;
/// Longest value kept (name, version, architecture, source, licence).
const MAX_VALUE: usize = 256;
/// Largest os-release read.
const MAX_OS_RELEASE: usize = 64 << 10;

/// A kept value: 1 to [`MAX_VALUE`] bytes of UTF-8 without white space or control characters
/// (`spaces` allows inner spaces, for a licence expression).
fn value(raw: &[u8], field: &str, line: usize, spaces: bool) -> Result<String> {
    let Ok(s) = std::str::from_utf8(raw) else {
        bail!("line {line}: {field} is not UTF-8");
    };
    let s = s.trim();
    if s.is_empty() {
        bail!("line {line}: {field} is empty");
    }
    if s.len() > MAX_VALUE {
        bail!(
            "line {line}: {field} is {} bytes long, more than {MAX_VALUE}",
            s.len()
        );
    }
    if s.chars()
        .any(|c| c.is_control() || (c.is_whitespace() && !(spaces && c == ' ')))
    {
        bail!(
            "line {line}: {field} {:?} has white space or control characters",
            crate::util::text::one_line(s)
        );
    }
    Ok(s.to_string())
}

fn check_size(data: &[u8]) -> Result<()> {
    if data.len() > MAX_DB_BYTES {
        bail!(
            "{} bytes, more than the {} MiB a package database may be",
            data.len(),
            MAX_DB_BYTES >> 20
        );
    }
    Ok(())
}

/// Sorted by name, architecture, version; exact repeats once.
fn finish(mut v: Vec<ContainerPackage>) -> Vec<ContainerPackage> {
    v.sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
    v.dedup();
    v
}

/// The installed packages of a dpkg database (deb822 stanzas). In `status` (the main
/// database) an entry counts when its `Status` says the package is installed (`install ok
/// installed`, also `hold` and `deinstall` wants: the files are there), and an entry without
/// `Status` is an error; in a `status.d` file, which has no `Status`, every entry counts.
pub fn parse_dpkg(data: &[u8], status_required: bool) -> Result<Vec<ContainerPackage>> {
    check_size(data)?;
    #[derive(Default)]
    struct Stanza {
        line: usize,
        package: Option<String>,
        version: Option<String>,
        arch: Option<String>,
        source: Option<String>,
        status: Option<String>,
    }
    let mut out = Vec::new();
    let mut cur: Option<Stanza> = None;
    let close = |s: Stanza, out: &mut Vec<ContainerPackage>| -> Result<()> {
        let installed = match &s.status {
            Some(st) => {
                let w: Vec<&str> = st.split_whitespace().collect();
                if w.len() != 3 {
                    bail!(
                        "line {}: Status {:?} is not three words (want flag status)",
                        s.line,
                        crate::util::text::one_line(st)
                    );
                }
                w[2] == "installed"
            }
            None if status_required => bail!("line {}: an entry without Status", s.line),
            None => true,
        };
        if !installed {
            return Ok(());
        }
        let (Some(name), Some(version)) = (s.package, s.version) else {
            bail!(
                "line {}: an installed entry without Package or Version",
                s.line
            );
        };
        if out.len() >= MAX_PACKAGES {
            bail!("more than {MAX_PACKAGES} installed packages");
        }
        out.push(ContainerPackage {
            name,
            version,
            arch: s.arch.unwrap_or_default(),
            source: s.source,
            license: None,
        });
        Ok(())
    };
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| *b == b' ' || *b == b'\t') {
            if let Some(s) = cur.take() {
                close(s, &mut out)?;
            }
            continue;
        }
        if raw[0] == b' ' || raw[0] == b'\t' {
            if cur.is_none() {
                bail!("line {line}: a continuation line outside an entry");
            }
            continue; // a multi-line field (Description, Conffiles): not kept
        }
        let Some(colon) = raw.iter().position(|&b| b == b':') else {
            bail!("line {line}: neither `Field: value` nor a continuation line");
        };
        let (name, rest) = (&raw[..colon], &raw[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            bail!("line {line}: not a field name before the colon");
        }
        let s = cur.get_or_insert_with(|| Stanza {
            line,
            ..Default::default()
        });
        let slot = match name.to_ascii_lowercase().as_slice() {
            b"package" => &mut s.package,
            b"version" => &mut s.version,
            b"architecture" => &mut s.arch,
            b"source" => &mut s.source,
            b"status" => &mut s.status,
            _ => continue,
        };
        if slot.is_some() {
            bail!(
                "line {line}: a second {} field in one entry",
                String::from_utf8_lossy(name)
            );
        }
        let field = String::from_utf8_lossy(name).into_owned();
        *slot = Some(match name.to_ascii_lowercase().as_slice() {
            // `Status: install ok installed`: words, checked when the entry closes.
            b"status" => value(rest, &field, line, true)?,
            // `Source: glibc (2.36-9)`: the source package's name.
            b"source" => {
                let v = value(rest, &field, line, true)?;
                let word = v.split(' ').next().unwrap_or_default().to_string();
                value(word.as_bytes(), &field, line, false)?
            }
            _ => value(rest, &field, line, false)?,
        });
    }
    if let Some(s) = cur.take() {
        close(s, &mut out)?;
    }
    Ok(finish(out))
}

/// The packages of an apk database: stanzas of `X:value` lines, `P:` name, `V:` version,
/// `A:` architecture, `o:` origin (source package), `L:` licence; every entry is installed.
pub fn parse_apk(data: &[u8]) -> Result<Vec<ContainerPackage>> {
    check_size(data)?;
    let mut out = Vec::new();
    let mut cur: Option<(usize, ContainerPackage)> = None;
    let close =
        |c: Option<(usize, ContainerPackage)>, out: &mut Vec<ContainerPackage>| -> Result<()> {
            let Some((line, p)) = c else { return Ok(()) };
            if p.name.is_empty() || p.version.is_empty() {
                bail!("line {line}: an entry without P: (name) or V: (version)");
            }
            if out.len() >= MAX_PACKAGES {
                bail!("more than {MAX_PACKAGES} installed packages");
            }
            out.push(p);
            Ok(())
        };
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            close(cur.take(), &mut out)?;
            continue;
        }
        if raw.len() < 2 || raw[1] != b':' || !raw[0].is_ascii_alphabetic() {
            bail!("line {line}: not an `X:value` line");
        }
        let (_, p) = cur.get_or_insert_with(|| {
            (
                line,
                ContainerPackage {
                    name: String::new(),
                    version: String::new(),
                    arch: String::new(),
                    source: None,
                    license: None,
                },
            )
        });
        let rest = &raw[2..];
        let (slot, what, spaces): (&mut String, &str, bool) = match raw[0] {
            b'P' => (&mut p.name, "P: (name)", false),
            b'V' => (&mut p.version, "V: (version)", false),
            b'A' => (&mut p.arch, "A: (architecture)", false),
            b'o' => (
                p.source.get_or_insert_with(String::new),
                "o: (origin)",
                false,
            ),
            b'L' => (
                p.license.get_or_insert_with(String::new),
                "L: (licence)",
                true,
            ),
            _ => continue,
        };
        if !slot.is_empty() {
            bail!("line {line}: a second {what} in one entry");
        }
        *slot = value(rest, what, line, spaces)?;
    }
    close(cur.take(), &mut out)?;
    Ok(finish(out))
}

/// `ID` and the release (`VERSION_ID`, else `VERSION_CODENAME`) of an os-release file,
/// each only when it is a plain `[a-z0-9._-]` word (anything else is left out, not an
/// error: os-release only names the distribution in the SBOM).
pub fn parse_os_release(data: &[u8]) -> (Option<String>, Option<String>) {
    let data = &data[..data.len().min(MAX_OS_RELEASE)];
    let text = String::from_utf8_lossy(data);
    let mut id = None;
    let mut version = None;
    let mut codename = None;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok {
            continue;
        }
        match k.trim() {
            "ID" => id = Some(v.to_string()),
            "VERSION_ID" => version = Some(v.to_string()),
            "VERSION_CODENAME" => codename = Some(v.to_string()),
            _ => {}
        }
    }
    (id, version.or(codename))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as bookworm's /var/lib/dpkg/status: multi-line fields, a Source with a
    /// version, a removed package whose conffiles remain, a held one.
    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12988
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Replaces: libc6-amd64
Depends: libgcc-s1
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e7a7b88a71b5ffd9e2644e71a0cfab
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
 .
 This package includes shared versions of the standard C library.
Homepage: https://www.gnu.org/software/libc/libc.html

Package: python3
Status: install ok installed
Priority: optional
Section: python
Installed-Size: 90
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Multi-Arch: allowed
Source: python3-defaults (3.11.2-1)
Version: 3.11.2-1+b1
Depends: python3.11 (>= 3.11.2-1~)
Description: interactive high-level object-oriented language (default version)

Package: vim-tiny
Status: deinstall ok config-files
Priority: important
Architecture: amd64
Version: 2:9.0.1378-2
Conffiles:
 /etc/vim/vimrc.tiny 3c0d4e5a4ed8dd3ee6a2bbf1f1f4fb9e
Description: Vi IMproved - enhanced vi editor - compact version

Package: zlib1g
Status: hold ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime
";

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let p = parse_dpkg(STATUS.as_bytes(), true).unwrap();
        let got: Vec<(&str, &str, &str, Option<&str>)> = p
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.version.as_str(),
                    p.arch.as_str(),
                    p.source.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("libc6", "2.36-9+deb12u4", "amd64", Some("glibc")),
                ("python3", "3.11.2-1+b1", "amd64", Some("python3-defaults")),
                ("zlib1g", "1:1.2.13.dfsg-1", "amd64", Some("zlib")),
            ]
        );
        // CRLF line ends and no final newline read the same.
        let crlf = STATUS.trim_end().replace('\n', "\r\n");
        assert_eq!(parse_dpkg(crlf.as_bytes(), true).unwrap(), p);
        assert!(parse_dpkg(b"", true).unwrap().is_empty());
    }

    #[test]
    fn distroless_status_d_entries_have_no_status() {
        let f =
            "Package: libssl3\nVersion: 3.0.11-1~deb12u2\nArchitecture: amd64\nSource: openssl\n";
        let p = parse_dpkg(f.as_bytes(), false).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].source.as_deref(), Some("openssl"));
        let e = parse_dpkg(f.as_bytes(), true).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("without Status"), "{e}");
    }

    #[test]
    fn malformed_dpkg_status_is_refused_with_the_line() {
        for (bad, want) in [
            (&b"Package: a\nStatus: install ok installed\n"[..], "line 1"),
            (
                b"Package: a\nVersion: 1\nStatus: install ok\n",
                "three words",
            ),
            (b"Package: a\nPackage: b\n", "line 2: a second Package"),
            (b"Package: a\nthis is not a field\n", "line 2"),
            (b" continued\n", "line 1: a continuation"),
            (
                b"Package: a b\nVersion: 1\nStatus: install ok installed\n",
                "white space",
            ),
            (
                b"Package: a\x1b[2J\nVersion: 1\nStatus: install ok installed\n",
                "control",
            ),
            (
                b"Package: a\nVersion: \xff\nStatus: install ok installed\n",
                "not UTF-8",
            ),
        ] {
            let e = format!("{:#}", parse_dpkg(bad, true).unwrap_err());
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        let long = format!("Package: {}\nVersion: 1\n", "a".repeat(MAX_VALUE + 1));
        assert!(parse_dpkg(long.as_bytes(), false).is_err());
        let huge = vec![b'\n'; MAX_DB_BYTES + 1];
        let e = parse_dpkg(&huge, true).unwrap_err().to_string();
        assert!(e.contains("MiB"), "{e}");
        // A non-UTF-8 Description (not kept) is no error.
        let d = b"Package: a\nVersion: 1\nStatus: install ok installed\nDescription: caf\xe9\n";
        assert_eq!(parse_dpkg(d, true).unwrap().len(), 1);
    }

    #[test]
    fn too_many_packages_are_refused() {
        let mut s = String::new();
        for i in 0..=MAX_PACKAGES {
            s.push_str(&format!("P:p{i}\nV:1\n\n"));
        }
        let e = parse_apk(s.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }

    /// Shaped as Alpine 3.19's /lib/apk/db/installed.
    const APK: &str = "\
C:Q1Ojj2JkmSSzkDo1kfRCSsD0UJj7A=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407278
I:651264
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1700594573
c:0e8e5f7e8b8a9f1b8f4d5c2d2d1d3d1e2f3f4f5f
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1Y9LNjdoUbb+dPIHtVAR/aWeLuK0=

C:Q1Ux1Su8fn9/ZsmrcJSp+Ykx5HDpY=
P:busybox-binsh
V:1.36.1-r15
A:x86_64
L:GPL-2.0-only
o:busybox
R:sh
";

    #[test]
    fn apk_installed_lists_every_entry() {
        let p = parse_apk(APK.as_bytes()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (
                p[0].name.as_str(),
                p[0].version.as_str(),
                p[0].arch.as_str(),
                p[0].source.as_deref(),
                p[0].license.as_deref()
            ),
            (
                "busybox-binsh",
                "1.36.1-r15",
                "x86_64",
                Some("busybox"),
                Some("GPL-2.0-only")
            )
        );
        assert_eq!(p[1].name, "musl");
        for (bad, want) in [
            ("P:a\n", "line 1: an entry without"),
            ("P:a\nV:1\nP:b\n", "line 3: a second P:"),
            ("P:a\nnot a line\n", "line 2"),
            ("P:a\nV:1 2\n", "line 2: V: (version)"),
        ] {
            let e = format!("{:#}", parse_apk(bad.as_bytes()).unwrap_err());
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn os_release_names_the_distribution() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                      VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(
            parse_os_release(debian.as_bytes()),
            (Some("debian".into()), Some("12".into()))
        );
        let sid = "ID=debian\nVERSION_CODENAME=trixie\n";
        assert_eq!(
            parse_os_release(sid.as_bytes()),
            (Some("debian".into()), Some("trixie".into()))
        );
        let alpine = "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n";
        assert_eq!(
            parse_os_release(alpine.as_bytes()),
            (Some("alpine".into()), Some("3.19.1".into()))
        );
        assert_eq!(
            parse_os_release(b"ID=\"De bian\"\nVERSION_ID=$(x)\n"),
            (None, None)
        );
    }
}
