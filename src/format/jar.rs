//! A jar's META-INF/MANIFEST.MF: its attributes (`Main-Class`, `Class-Path`) and the
//! jars its `Class-Path` reaches, as the JVM resolves them. Reads files only under the
//! root it is given.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// Read the `Main-Class` of a jar's META-INF/MANIFEST.MF.
pub fn jar_main_class(jar: &[u8]) -> Result<Option<String>> {
    jar_attribute(jar, "Main-Class")
}

/// The `Class-Path` of a jar's manifest: its space-separated relative URLs, verbatim
/// (empty when there is none).
pub fn jar_class_path(jar: &[u8]) -> Result<Vec<String>> {
    Ok(jar_attribute(jar, "Class-Path")?
        .map(|v| v.split_ascii_whitespace().map(str::to_string).collect())
        .unwrap_or_default())
}

/// An attribute of the main section of a jar's META-INF/MANIFEST.MF (non-empty value).
pub fn jar_attribute(jar: &[u8], name: &str) -> Result<Option<String>> {
    let mf = match crate::format::zip::entry(jar, "META-INF/MANIFEST.MF")? {
        Some(d) => d,
        None => return Ok(None),
    };
    let text = String::from_utf8_lossy(&mf);
    // Continuation lines start with one space.
    let mut logical: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(cont) = line.strip_prefix(' ') {
            if let Some(last) = logical.last_mut() {
                last.push_str(cont);
                continue;
            }
        }
        if line.is_empty() {
            // the main section ends at the first blank line
            if !logical.is_empty() {
                break;
            }
            continue;
        }
        logical.push(line.to_string());
    }
    Ok(logical.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(name) && !v.trim().is_empty()).then(|| v.trim().to_string())
    }))
}

/// What a jar's `Class-Path` brings in beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassPath {
    /// Jars and class directories (ending in `/`) reached from the main jar, transitively,
    /// relative to the app root, sorted; only those that exist.
    pub entries: Vec<String>,
    /// Entries that do not exist (the JVM skips them; the build warns), as
    /// `<entry> (Class-Path of <jar>)`.
    pub missing: Vec<String>,
}

/// Follows the `Class-Path` of the jar at `main` (relative to `root`, the directory that
/// becomes /app) and of the jars it names, the way the JVM does for `java -jar`: each
/// entry is a URL relative to the directory of the jar naming it. Entries leaving `root`
/// (`../x.jar`, absolute URLs) are an error: the image has nothing there.
/// `main_bytes`: the main jar's bytes when the caller has read them already (not read again).
pub fn class_path_closure(root: &Path, main: &str, main_bytes: Option<&[u8]>) -> Result<ClassPath> {
    let mut out = ClassPath::default();
    // Symlinks are followed by every later reader (is_dir, read_dir, read): what an entry
    // names is checked on its real path, not lexically.
    let real_root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    let mut seen: BTreeSet<String> = BTreeSet::from([main.to_string()]);
    let mut todo = vec![main.to_string()];
    while let Some(jar) = todo.pop() {
        let path = root.join(&jar);
        let bytes = match main_bytes.filter(|_| jar == main) {
            Some(b) => b.to_vec(),
            None => {
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
            }
        };
        let entries = jar_class_path(&bytes)
            .with_context(|| format!("cannot read the manifest of {}", path.display()))?;
        let dir = jar.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for entry in entries {
            let rel = class_path_entry(dir, &entry).with_context(|| {
                format!(
                    "{}: Class-Path entry {entry:?} points outside {}, the directory that becomes the app's: \
                     make app.path a directory holding the jar and what it names",
                    path.display(),
                    root.display()
                )
            })?;
            if !seen.insert(rel.clone()) {
                continue;
            }
            let target = root.join(&rel);
            if std::fs::symlink_metadata(&target).is_ok() || target.exists() {
                let real = target
                    .canonicalize()
                    .with_context(|| format!("cannot resolve {}", target.display()))?;
                if !real.starts_with(&real_root) {
                    anyhow::bail!(
                        "{}: Class-Path entry {entry:?} is {} (through a symlink), outside {}, \
                         the directory that becomes the app's: copy what it names into the app",
                        path.display(),
                        real.display(),
                        root.display()
                    );
                }
            }
            if rel.ends_with('/') {
                if target.is_dir() {
                    out.entries.push(rel);
                } else {
                    out.missing.push(format!("{entry} (Class-Path of {jar})"));
                }
            } else if target.is_file() {
                out.entries.push(rel.clone());
                todo.push(rel);
            } else {
                out.missing.push(format!("{entry} (Class-Path of {jar})"));
            }
        }
    }
    out.entries.sort();
    out.missing.sort();
    Ok(out)
}

/// A relative Class-Path URL (`lib/a%20b.jar`, `classes/`) resolved against `dir` (a
/// path relative to the app root): the path relative to the root, or None when it leaves
/// the root or is an absolute URL. Percent-decoding by hand (URL escapes are the only
/// syntax Class-Path entries use beyond `/`).
pub(crate) fn class_path_entry(dir: &str, entry: &str) -> Option<String> {
    if entry.starts_with('/') || entry.contains(':') {
        return None; // absolute path or URL with a scheme: not in the image
    }
    let b = entry.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(b[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let is_dir = decoded.ends_with('/');
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for c in decoded.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let mut rel = parts.join("/");
    if is_dir {
        rel.push('/');
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jar_naming(class_path: &str) -> Vec<u8> {
        let mf =
            format!("Manifest-Version: 1.0\r\nMain-Class: a.B\r\nClass-Path: {class_path}\r\n\r\n");
        crate::format::zip::tests::make(&[("META-INF/MANIFEST.MF", mf.as_bytes(), false)])
    }

    #[test]
    fn class_path_symlinks_leaving_the_app_dir_are_refused() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret.properties"), "password=x").unwrap();
        std::fs::write(host.path().join("x.jar"), jar_naming("")).unwrap();
        let app = tempfile::tempdir().unwrap();
        let root = app.path();
        // conf -> a host directory (lexically "conf/", inside the app).
        std::os::unix::fs::symlink(host.path(), root.join("conf")).unwrap();
        std::fs::write(root.join("app.jar"), jar_naming("conf/")).unwrap();
        let e = format!(
            "{:#}",
            class_path_closure(root, "app.jar", None).unwrap_err()
        );
        assert!(e.contains("outside") && e.contains("conf/"), "{e}");
        // lib/x.jar through a symlinked lib directory.
        std::fs::remove_file(root.join("conf")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.join("lib")).unwrap();
        std::fs::write(root.join("app.jar"), jar_naming("lib/x.jar")).unwrap();
        let e = format!(
            "{:#}",
            class_path_closure(root, "app.jar", None).unwrap_err()
        );
        assert!(e.contains("outside"), "{e}");
        // A jar symlink to a host file.
        std::fs::remove_file(root.join("lib")).unwrap();
        std::os::unix::fs::symlink(host.path().join("x.jar"), root.join("y.jar")).unwrap();
        std::fs::write(root.join("app.jar"), jar_naming("y.jar")).unwrap();
        assert!(class_path_closure(root, "app.jar", None).is_err());
        // A symlink that stays inside the app directory is followed as before.
        std::fs::remove_file(root.join("y.jar")).unwrap();
        std::fs::create_dir(root.join("real-conf")).unwrap();
        std::os::unix::fs::symlink("real-conf", root.join("conf")).unwrap();
        std::fs::write(root.join("app.jar"), jar_naming("conf/")).unwrap();
        let cp = class_path_closure(root, "app.jar", None).unwrap();
        assert_eq!(cp.entries, ["conf/"]);
    }
}
