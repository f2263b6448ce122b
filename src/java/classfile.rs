//! Java class files, read just far enough: the constant pool (the classes, descriptors,
//! signatures and class-name strings a class refers to) and a `module-info`'s `requires`.
//! Every read is bounds-checked; errors name the constant-pool entry or structure.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;

/// One constant-pool entry, as much as is needed.
#[derive(Clone, Debug)]
enum Cp<'a> {
    Utf8(&'a [u8]),
    /// name index
    Class(u16),
    /// string index
    Str(u16),
    /// module name index
    Module(u16),
    Other,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let s = self
            .b
            .get(
                self.at
                    ..self
                        .at
                        .checked_add(n)
                        .context("class file offset overflow")?,
            )
            .with_context(|| format!("class file truncated in {what} (at byte {})", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u1(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u2(&mut self, what: &str) -> Result<u16> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u4(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// A parsed class file: its constant pool and where the rest begins.
pub struct ClassFile<'a> {
    pool: Vec<Cp<'a>>,
    rest: usize,
    bytes: &'a [u8],
}

impl<'a> ClassFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<ClassFile<'a>> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.u4("the magic")? != 0xCAFE_BABE {
            bail!("not a class file (no 0xCAFEBABE magic)");
        }
        r.u2("the minor version")?;
        let major = r.u2("the major version")?;
        if !(45..=70).contains(&major) {
            bail!("class file version {major} is not known");
        }
        let count = r.u2("the constant pool count")?;
        if count == 0 {
            bail!("constant pool count is 0");
        }
        let mut pool = vec![Cp::Other; count as usize];
        let mut i = 1usize;
        while i < count as usize {
            let what = format!("constant pool entry #{i}");
            let tag = r.u1(&what)?;
            pool[i] = match tag {
                1 => {
                    let n = r.u2(&what)? as usize;
                    Cp::Utf8(r.take(n, &what)?)
                }
                3 | 4 => {
                    r.take(4, &what)?;
                    Cp::Other
                }
                5 | 6 => {
                    r.take(8, &what)?;
                    i += 1; // longs and doubles take two slots
                    if i >= count as usize {
                        bail!("{what}: an 8-byte constant in the last slot");
                    }
                    Cp::Other
                }
                7 => Cp::Class(r.u2(&what)?),
                8 => Cp::Str(r.u2(&what)?),
                9..=12 | 17 | 18 => {
                    r.take(4, &what)?;
                    Cp::Other
                }
                15 => {
                    r.take(3, &what)?;
                    Cp::Other
                }
                16 | 20 => {
                    r.take(2, &what)?;
                    Cp::Other
                }
                19 => Cp::Module(r.u2(&what)?),
                t => bail!("{what} has unknown tag {t}"),
            };
            i += 1;
        }
        Ok(ClassFile {
            pool,
            rest: r.at,
            bytes,
        })
    }

    fn utf8(&self, idx: u16) -> Result<&'a [u8]> {
        match self.pool.get(idx as usize) {
            Some(Cp::Utf8(s)) => Ok(s),
            _ => bail!("constant pool entry #{idx} is not a Utf8 constant"),
        }
    }

    /// The JDK packages this class can reach by name: every class constant, every
    /// `L...;` type in a descriptor or signature, and string constants that look like a
    /// qualified class name (`Class.forName("javax.naming.InitialContext")`). Packages in
    /// dotted form (`java.util.logging`); the caller keeps those the JDK has.
    pub fn referenced_packages(&self, out: &mut BTreeSet<String>) -> Result<()> {
        for (i, e) in self.pool.iter().enumerate() {
            match e {
                Cp::Class(n) => {
                    let name = self
                        .utf8(*n)
                        .with_context(|| format!("class constant #{i}"))?;
                    if name.first() == Some(&b'[') {
                        descriptor_packages(name, out);
                    } else {
                        add_internal(name, out);
                    }
                }
                Cp::Utf8(s) => descriptor_packages(s, out),
                Cp::Str(n) => {
                    let s = self
                        .utf8(*n)
                        .with_context(|| format!("string constant #{i}"))?;
                    dotted_class_package(s, out);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// For a `module-info.class`: the module's name and the modules it `requires`
    /// (`requires static` left out: those are compile-time only).
    pub fn module_requires(&self) -> Result<(String, Vec<String>)> {
        let mut r = Reader {
            b: self.bytes,
            at: self.rest,
        };
        r.u2("access flags")?;
        r.u2("this class")?;
        r.u2("super class")?;
        let n = r.u2("interfaces count")?;
        r.take(n as usize * 2, "interfaces")?;
        for what in ["fields", "methods"] {
            let n = r.u2(what)?;
            for _ in 0..n {
                r.take(6, what)?;
                let a = r.u2(what)?;
                for _ in 0..a {
                    r.u2(what)?;
                    let len = r.u4(what)? as usize;
                    r.take(len, what)?;
                }
            }
        }
        let n = r.u2("attributes count")?;
        for _ in 0..n {
            let name = r.u2("attribute name")?;
            let len = r.u4("attribute length")? as usize;
            let body = r.take(len, "attribute")?;
            if self.utf8(name)? != b"Module" {
                continue;
            }
            let mut m = Reader { b: body, at: 0 };
            let module_name = self.module_name(m.u2("Module name")?)?;
            m.u2("Module flags")?;
            m.u2("Module version")?;
            let count = m.u2("requires count")?;
            let mut requires = Vec::new();
            for _ in 0..count {
                let idx = m.u2("requires")?;
                let flags = m.u2("requires flags")?;
                m.u2("requires version")?;
                if flags & 0x0040 == 0 {
                    requires.push(self.module_name(idx)?);
                }
            }
            return Ok((module_name, requires));
        }
        bail!("no Module attribute (not a module-info.class)")
    }

    /// The package this class belongs to (dotted; `None` for the unnamed package).
    pub fn own_package(&self) -> Result<Option<String>> {
        let mut r = Reader {
            b: self.bytes,
            at: self.rest,
        };
        r.u2("access flags")?;
        let this = r.u2("this class")?;
        let name = match self.pool.get(this as usize) {
            Some(Cp::Class(n)) => self.utf8(*n)?,
            _ => bail!("this class #{this} is not a Class constant"),
        };
        let mut out = BTreeSet::new();
        add_internal(name, &mut out);
        Ok(out.into_iter().next())
    }

    fn module_name(&self, idx: u16) -> Result<String> {
        match self.pool.get(idx as usize) {
            Some(Cp::Module(n)) => Ok(String::from_utf8_lossy(self.utf8(*n)?).into_owned()),
            _ => bail!("constant pool entry #{idx} is not a Module constant"),
        }
    }
}

/// `java/util/Map$Entry` -> `java.util`.
fn add_internal(name: &[u8], out: &mut BTreeSet<String>) {
    if let Some(i) = name.iter().rposition(|&b| b == b'/') {
        if let Ok(p) = std::str::from_utf8(&name[..i]) {
            if !p.is_empty() && !p.contains(['.', ';', '[', '<']) {
                out.insert(p.replace('/', "."));
            }
        }
    }
}

/// Every `L<internal name>;` or `L<name><...>;` in a descriptor or signature.
fn descriptor_packages(s: &[u8], out: &mut BTreeSet<String>) {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'L'
            && (i == 0
                || matches!(
                    s[i - 1],
                    b'(' | b')'
                        | b'['
                        | b';'
                        | b'<'
                        | b'>'
                        | b':'
                        | b'+'
                        | b'-'
                        | b'*'
                        | b'B'
                        | b'C'
                        | b'D'
                        | b'F'
                        | b'I'
                        | b'J'
                        | b'S'
                        | b'Z'
                        | b'V'
                        | b'^'
                ))
        {
            let start = i + 1;
            let mut j = start;
            while j < s.len() && !matches!(s[j], b';' | b'<' | b'.' | b' ' | b'(' | b')') {
                j += 1;
            }
            if j < s.len() && matches!(s[j], b';' | b'<') && j > start {
                add_internal(&s[start..j], out);
            }
            i = j;
        } else {
            i += 1;
        }
    }
}

/// `"javax.naming.InitialContext"` -> `javax.naming` (a dotted name whose last part starts
/// upper case, as class names do).
fn dotted_class_package(s: &[u8], out: &mut BTreeSet<String>) {
    if s.len() > 200 || !s.contains(&b'.') {
        return;
    }
    let Ok(t) = std::str::from_utf8(s) else {
        return;
    };
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'$')
    {
        return;
    }
    if let Some((pkg, class)) = t.rsplit_once('.') {
        if class.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && !pkg.is_empty()
            && pkg.split('.').all(|p| !p.is_empty())
        {
            out.insert(pkg.to_string());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-assembled class: `class a/B extends java/lang/Object`, a field of type
    /// `Ljava/util/logging/Logger;`, a string "javax.naming.InitialContext".
    pub fn tiny_class() -> Vec<u8> {
        let mut c = vec![0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 61];
        let utf = |c: &mut Vec<u8>, s: &str| {
            c.push(1);
            c.extend_from_slice(&(s.len() as u16).to_be_bytes());
            c.extend_from_slice(s.as_bytes());
        };
        c.extend_from_slice(&9u16.to_be_bytes()); // 8 entries
        utf(&mut c, "a/B"); // 1
        c.extend_from_slice(&[7, 0, 1]); // 2 Class a/B
        utf(&mut c, "java/lang/Object"); // 3
        c.extend_from_slice(&[7, 0, 3]); // 4
        utf(&mut c, "(Ljava/util/logging/Logger;[Ljava/sql/Date;)V"); // 5
        utf(&mut c, "javax.naming.InitialContext"); // 6
        c.extend_from_slice(&[8, 0, 6]); // 7 String
        c.extend_from_slice(&[7, 0, 5]); // 8 bogus class pointing at a descriptor, harmless
        c.extend_from_slice(&[0, 0x20, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        c
    }

    #[test]
    fn packages_of_a_tiny_class() {
        let b = tiny_class();
        let cf = ClassFile::parse(&b).unwrap();
        let mut out = BTreeSet::new();
        cf.referenced_packages(&mut out).unwrap();
        for p in ["java.lang", "java.util.logging", "java.sql", "javax.naming"] {
            assert!(out.contains(p), "{p} missing from {out:?}");
        }
        // its own package is listed too; only packages the JDK has map to modules
        assert!(out.contains("a"), "{out:?}");
    }

    #[test]
    fn truncated_and_bad_pools_name_the_entry() {
        let b = tiny_class();
        let e = ClassFile::parse(&b[..30]).err().unwrap().to_string();
        assert!(e.contains("constant pool entry #"), "{e}");
        let mut bad = b.clone();
        bad[10] = 99; // tag of entry #1
        let e = ClassFile::parse(&bad).err().unwrap().to_string();
        assert!(e.contains("#1 has unknown tag 99"), "{e}");
        assert!(ClassFile::parse(b"PK\x03\x04").is_err());
        // a class constant pointing at a non-Utf8 entry
        let mut bad = b.clone();
        let i = bad.windows(3).position(|w| w == [7, 0, 3]).unwrap();
        bad[i + 2] = 2;
        let cf = ClassFile::parse(&bad).unwrap();
        let e = format!(
            "{:#}",
            cf.referenced_packages(&mut BTreeSet::new()).unwrap_err()
        );
        assert!(e.contains("class constant #4"), "{e}");
    }

    #[test]
    fn descriptors_and_signatures() {
        let mut out = BTreeSet::new();
        descriptor_packages(
            b"Ljava/util/Map<Ljava/lang/String;Ljava/util/List<+Ljavax/net/ssl/SSLContext;>;>;",
            &mut out,
        );
        let v: Vec<&str> = out.iter().map(String::as_str).collect();
        assert_eq!(v, ["java.lang", "java.util", "javax.net.ssl"]);
    }
}
