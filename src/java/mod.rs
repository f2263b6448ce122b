//! Java runtimes trimmed to what the app uses: class-file references, the JRE's jimage
//! and module graph, and the trimmed runtime layer. docs/runtimes.md states the rule.

pub mod classfile;
pub mod jimage;
pub mod modgraph;
pub mod trim;
pub mod zip;

pub use trim::{trim, TrimReport};

use anyhow::{Context, Result};
use std::collections::BTreeSet;

/// `[runtime] modules`: modules added to those the analysis finds, or the whole JRE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modules {
    Extra(Vec<String>),
    All,
}

impl Default for Modules {
    fn default() -> Self {
        Modules::Extra(Vec::new())
    }
}

impl Modules {
    /// As recorded in a layer's inputs: `all` or the sorted list.
    pub fn key(&self) -> String {
        match self {
            Modules::All => "all".into(),
            Modules::Extra(v) => {
                let s: BTreeSet<&String> = v.iter().collect();
                s.into_iter().cloned().collect::<Vec<_>>().join(",")
            }
        }
    }
}

/// Nested archives deeper than this are not opened (a jar in a jar in a war is 2).
const MAX_DEPTH: usize = 3;

/// The packages referenced by every class in `files` (name, bytes): class files, jars,
/// wars, and the jars nested in them (Spring Boot's BOOT-INF/lib, a war's WEB-INF/lib), as
/// dotted package names. Files that are neither are skipped. An unreadable class is an
/// error naming the archive and the entry.
pub fn referenced_packages<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (name, bytes) in files {
        scan(name, bytes, 0, &mut out)?;
    }
    Ok(out)
}

fn scan(name: &str, bytes: &[u8], depth: usize, out: &mut BTreeSet<String>) -> Result<()> {
    if name.ends_with(".class") && bytes.starts_with(&[0xCA, 0xFE, 0xBA, 0xBE]) {
        if name.ends_with("module-info.class") {
            return Ok(());
        }
        let cf = classfile::ClassFile::parse(bytes).with_context(|| format!("class {name}"))?;
        return cf
            .referenced_packages(out)
            .with_context(|| format!("class {name}"));
    }
    let archive = [".jar", ".war", ".ear", ".zip"]
        .iter()
        .any(|e| name.ends_with(e));
    if !archive || !zip::is_zip(bytes) || depth > MAX_DEPTH {
        return Ok(());
    }
    for e in zip::entries(bytes).with_context(|| format!("archive {name}"))? {
        let inner = e.name.ends_with(".class") || e.name.ends_with(".jar");
        if !inner {
            continue;
        }
        let data = e.read().with_context(|| format!("{name}!/{}", e.name))?;
        scan(&format!("{name}!/{}", e.name), &data, depth + 1, out)?;
    }
    Ok(())
}
