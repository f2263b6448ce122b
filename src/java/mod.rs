//! Java runtimes trimmed to what the app uses: class-file references, the JRE's jimage
//! and module graph, and the trimmed runtime layer. docs/runtimes.md states the rule.

pub mod classfile;
pub mod classwrite;
pub mod jimage;
pub mod listener;
pub mod modgraph;
pub mod modules;
pub mod trim;

pub use modules::Modules;
pub use trim::{trim, TrimReport};

use crate::format::zip;
use anyhow::{Context, Result};
use std::collections::BTreeSet;

/// Nested archives deeper than this are not opened (a jar in a jar in a war is 2).
const MAX_DEPTH: usize = 3;

/// The packages referenced by every class in `files` (name, bytes): class files, jars,
/// wars, and the jars nested in them (Spring Boot's BOOT-INF/lib, a war's WEB-INF/lib), as
/// dotted package names. Files that are neither are skipped. An unreadable class is an
/// error naming the archive and the entry.
///
/// Packages the scanned classes define themselves are left out (unless they are in a JDK
/// namespace: a jar may carry its own `javax.xml...`): the result names what the app needs
/// from the JDK, so renaming the app's own package, which changes nothing the JRE must
/// hold, does not change a trimmed runtime layer's key.
pub fn referenced_packages<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<BTreeSet<String>> {
    let mut found = Found::default();
    for (name, bytes) in files {
        // One inflation budget per file of the app, with whatever it nests.
        let mut budget = zip::Budget::for_input(bytes.len());
        scan(name, bytes, 0, &mut budget, &mut found)?;
    }
    let Found { mut refs, defined } = found;
    refs.retain(|p| !defined.contains(p) || in_jdk_namespace(p));
    Ok(refs)
}

/// Package prefixes the JDK's modules define packages under.
const JDK_NAMESPACES: &[&str] = &[
    "java.",
    "javax.",
    "jdk.",
    "sun.",
    "com.sun.",
    "org.w3c.",
    "org.xml.",
    "org.ietf.",
    "netscape.",
];

fn in_jdk_namespace(p: &str) -> bool {
    JDK_NAMESPACES
        .iter()
        .any(|n| p.starts_with(n) || p == n.trim_end_matches('.'))
}

/// What a scan found: the packages referred to, and those the scanned classes are in.
#[derive(Default)]
struct Found {
    refs: BTreeSet<String>,
    defined: BTreeSet<String>,
}

fn scan(
    name: &str,
    bytes: &[u8],
    depth: usize,
    budget: &mut zip::Budget,
    out: &mut Found,
) -> Result<()> {
    if name.ends_with(".class") && bytes.starts_with(&[0xCA, 0xFE, 0xBA, 0xBE]) {
        if name.ends_with("module-info.class") {
            return Ok(());
        }
        let cf = classfile::ClassFile::parse(bytes).with_context(|| format!("class {name}"))?;
        out.defined
            .extend(cf.own_package().with_context(|| format!("class {name}"))?);
        return cf
            .referenced_packages(&mut out.refs)
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
        let data = budget
            .read(bytes, &e)
            .with_context(|| format!("{name}!/{}", e.name))?;
        scan(
            &format!("{name}!/{}", e.name),
            &data,
            depth + 1,
            budget,
            out,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal class file: `this` extends java/lang/Object and refers to `refs`.
    fn class(this: &str, refs: &[&str]) -> Vec<u8> {
        let mut pool: Vec<u8> = Vec::new();
        let mut n = 1u16;
        let mut class_const = |name: &str, pool: &mut Vec<u8>| -> u16 {
            pool.push(1);
            pool.extend_from_slice(&(name.len() as u16).to_be_bytes());
            pool.extend_from_slice(name.as_bytes());
            pool.push(7);
            pool.extend_from_slice(&n.to_be_bytes());
            n += 2;
            n - 1
        };
        let this_idx = class_const(this, &mut pool);
        let super_idx = class_const("java/lang/Object", &mut pool);
        for r in refs {
            class_const(r, &mut pool);
        }
        let mut b = vec![0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 61];
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&pool);
        b.extend_from_slice(&0x21u16.to_be_bytes());
        b.extend_from_slice(&this_idx.to_be_bytes());
        b.extend_from_slice(&super_idx.to_be_bytes());
        b.extend_from_slice(&[0; 8]); // no interfaces, fields, methods, attributes
        b
    }

    #[test]
    fn nested_jars_sharing_one_local_entry_are_refused_fast() {
        use crate::format::zip::tests::{fan_out, make};
        let inner = make(&[("a/B.class", &class("a/B", &["java/sql/Driver"]), false)]);
        // 1000 names for one jar, each holding 1000 names for one jar: a million scans.
        let level1 = fan_out(&inner, 1000);
        let level2 = fan_out(&level1, 1000);
        assert!(level2.len() < 200 << 10);
        let t = std::time::Instant::now();
        let e = format!(
            "{:#}",
            referenced_packages([("app.jar", &level2[..])]).unwrap_err()
        );
        assert!(e.contains("overlap"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn nested_stored_jars_have_a_total_inflation_budget() {
        use crate::format::zip::tests::make;
        // A jar in a jar in a jar, all stored; the innermost holds four deflated entries
        // of 64 MiB of zeros (each under the 512 MiB per-entry cap): 256 MiB in all from
        // a file of a few hundred KB.
        let zeros = vec![0u8; 64 << 20];
        let inner = make(&[
            ("a.class", &zeros, true),
            ("b.class", &zeros, true),
            ("c.class", &zeros, true),
            ("d.class", &zeros, true),
        ]);
        drop(zeros);
        let mid = make(&[("lib/inner.jar", &inner, false)]);
        let outer = make(&[("BOOT-INF/lib/mid.jar", &mid, false)]);
        assert!(outer.len() < 1 << 20, "{}", outer.len());
        let t = std::time::Instant::now();
        let e = format!(
            "{:#}",
            referenced_packages([("app.jar", &outer[..])]).unwrap_err()
        );
        assert!(e.contains("in all"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn the_apps_own_packages_are_not_jdk_references() {
        let main = class("howdy/Main", &["howdy/util/Text", "java/net/URI"]);
        let text = class("howdy/util/Text", &["java/util/List"]);
        let parsers = class("javax/xml/parsers/Own", &["javax/xml/parsers/Other"]);
        let refs = referenced_packages([
            ("howdy/Main.class", &main[..]),
            ("howdy/util/Text.class", &text[..]),
            ("javax/xml/parsers/Own.class", &parsers[..]),
        ])
        .unwrap();
        let got: Vec<&str> = refs.iter().map(String::as_str).collect();
        // The app's own packages go; a JDK namespace it also defines stays.
        assert_eq!(
            got,
            ["java.lang", "java.net", "java.util", "javax.xml.parsers"]
        );
        // Renaming the app's package changes nothing.
        let renamed = class("hello/Main", &["hello/util/Text", "java/net/URI"]);
        let text2 = class("hello/util/Text", &["java/util/List"]);
        let again = referenced_packages([
            ("hello/Main.class", &renamed[..]),
            ("hello/util/Text.class", &text2[..]),
            ("javax/xml/parsers/Own.class", &parsers[..]),
        ])
        .unwrap();
        assert_eq!(again, refs);
    }
}
