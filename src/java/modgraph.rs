//! The JRE's module graph, read from its own jimage: which module holds each package
//! (the modules' class resources) and what each module `requires` (its module-info), and
//! the closure of a set of modules over `requires`.

use super::classfile::ClassFile;
use super::jimage::Jimage;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct ModuleGraph {
    /// module -> the modules it requires (not `requires static`)
    pub requires: BTreeMap<String, Vec<String>>,
    /// package (dotted) -> the module that holds its classes
    pub package_module: BTreeMap<String, String>,
}

impl ModuleGraph {
    pub fn from_jimage(j: &Jimage) -> Result<ModuleGraph> {
        let mut g = ModuleGraph::default();
        for e in j.entries()? {
            if e.path == "module-info.class" {
                let bytes = j.content(&e)?;
                let cf = ClassFile::parse(bytes)
                    .with_context(|| format!("/{}/module-info.class", e.module))?;
                let (name, req) = cf
                    .module_requires()
                    .with_context(|| format!("/{}/module-info.class", e.module))?;
                if name != e.module {
                    bail!("/{}/module-info.class names module {name}", e.module);
                }
                g.requires.insert(name, req);
            } else if let Some((dir, file)) = e.path.rsplit_once('/') {
                if file.ends_with(".class") && !dir.starts_with("META-INF") {
                    g.package_module
                        .entry(dir.replace('/', "."))
                        .or_insert_with(|| e.module.clone());
                }
            }
        }
        if !g.requires.contains_key("java.base") {
            bail!("the jimage has no java.base module");
        }
        Ok(g)
    }

    pub fn modules(&self) -> BTreeSet<String> {
        self.requires.keys().cloned().collect()
    }

    /// The modules holding `packages` (packages the JDK lacks are ignored).
    pub fn modules_of(&self, packages: &BTreeSet<String>) -> BTreeSet<String> {
        packages
            .iter()
            .filter_map(|p| self.package_module.get(p).cloned())
            .collect()
    }

    /// `roots` and everything they require, transitively. Unknown roots are an error.
    pub fn closure(&self, roots: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = roots.iter().cloned().collect();
        while let Some(m) = todo.pop() {
            if out.contains(&m) {
                continue;
            }
            let req = self.requires.get(&m).with_context(|| {
                format!(
                    "the JRE has no module {m} (it has: {})",
                    self.requires.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            todo.extend(req.iter().cloned());
            out.insert(m);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_requires() {
        let mut g = ModuleGraph::default();
        g.requires.insert("java.base".into(), vec![]);
        g.requires.insert(
            "java.sql".into(),
            vec!["java.base".into(), "java.logging".into(), "java.xml".into()],
        );
        g.requires
            .insert("java.logging".into(), vec!["java.base".into()]);
        g.requires
            .insert("java.xml".into(), vec!["java.base".into()]);
        g.requires
            .insert("jdk.httpserver".into(), vec!["java.base".into()]);
        let roots: BTreeSet<String> = ["java.sql".to_string()].into();
        let c = g.closure(&roots).unwrap();
        let v: Vec<&str> = c.iter().map(String::as_str).collect();
        assert_eq!(v, ["java.base", "java.logging", "java.sql", "java.xml"]);
        let bad: BTreeSet<String> = ["java.nope".to_string()].into();
        let e = g.closure(&bad).unwrap_err().to_string();
        assert!(e.contains("no module java.nope"), "{e}");
    }
}
