//! The class files fuse writes itself (the trimmed JRE's `SystemModulesMap`, Tomcat's
//! MBean-registry switch), assembled byte by byte per the JVM specification, chapter 4:
//! the build has no Java compiler, and straight-line methods need no stack map frames.

use std::collections::BTreeMap;

const UTF8: u8 = 1;
const CLASS: u8 = 7;
const METHODREF: u8 = 10;
const NAME_AND_TYPE: u8 = 12;

/// A class file under construction: constant-pool entries are numbered from 1 in the order
/// they are first asked for (an entry asked for again gets its first number), methods are
/// kept in the order they are added. The same calls give the same bytes.
#[derive(Default)]
pub struct ClassWriter {
    pool: Vec<u8>,
    count: u16,
    known: BTreeMap<Vec<u8>, u16>,
    methods: Vec<u8>,
    method_count: u16,
}

impl ClassWriter {
    fn entry(&mut self, e: Vec<u8>) -> u16 {
        if let Some(&i) = self.known.get(&e) {
            return i;
        }
        self.pool.extend_from_slice(&e);
        self.count += 1;
        self.known.insert(e, self.count);
        self.count
    }

    /// A `CONSTANT_Utf8` (the names fuse writes are ASCII, where modified UTF-8 is UTF-8).
    pub fn utf8(&mut self, s: &str) -> u16 {
        let mut e = vec![UTF8];
        e.extend_from_slice(&(s.len() as u16).to_be_bytes());
        e.extend_from_slice(s.as_bytes());
        self.entry(e)
    }

    /// A `CONSTANT_Class` of an internal name (`java/lang/Object`), after its name.
    pub fn class(&mut self, name: &str) -> u16 {
        let n = self.utf8(name);
        let mut e = vec![CLASS];
        e.extend_from_slice(&n.to_be_bytes());
        self.entry(e)
    }

    /// A `CONSTANT_Methodref`, after its name, descriptor and name-and-type.
    pub fn method_ref(&mut self, class: u16, name: &str, descriptor: &str) -> u16 {
        let n = self.utf8(name);
        let d = self.utf8(descriptor);
        let mut nat = vec![NAME_AND_TYPE];
        nat.extend_from_slice(&n.to_be_bytes());
        nat.extend_from_slice(&d.to_be_bytes());
        let nat = self.entry(nat);
        let mut e = vec![METHODREF];
        e.extend_from_slice(&class.to_be_bytes());
        e.extend_from_slice(&nat.to_be_bytes());
        self.entry(e)
    }

    /// A method with a `Code` attribute: no exception table, no attributes of its own.
    pub fn method(
        &mut self,
        access: u16,
        name: &str,
        descriptor: &str,
        (max_stack, max_locals): (u16, u16),
        code: &[u8],
    ) {
        let (name, descriptor, code_attr) =
            (self.utf8(name), self.utf8(descriptor), self.utf8("Code"));
        let m = &mut self.methods;
        for v in [access, name, descriptor, 1, code_attr] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(&(12 + code.len() as u32).to_be_bytes());
        m.extend_from_slice(&max_stack.to_be_bytes());
        m.extend_from_slice(&max_locals.to_be_bytes());
        m.extend_from_slice(&(code.len() as u32).to_be_bytes());
        m.extend_from_slice(code);
        m.extend_from_slice(&[0, 0, 0, 0]); // exception table, attributes
        self.method_count += 1;
    }

    /// The class file: class-file `major` version, access flags, this and super class
    /// entries, interfaces; no fields, no class attributes.
    pub fn finish(
        self,
        major: u16,
        access: u16,
        this: u16,
        super_class: u16,
        interfaces: &[u16],
    ) -> Vec<u8> {
        let mut c = Vec::with_capacity(self.pool.len() + self.methods.len() + 32);
        c.extend_from_slice(&0xCAFE_BABEu32.to_be_bytes());
        c.extend_from_slice(&0u16.to_be_bytes());
        c.extend_from_slice(&major.to_be_bytes());
        c.extend_from_slice(&(self.count + 1).to_be_bytes());
        c.extend_from_slice(&self.pool);
        for v in [access, this, super_class, interfaces.len() as u16] {
            c.extend_from_slice(&v.to_be_bytes());
        }
        for i in interfaces {
            c.extend_from_slice(&i.to_be_bytes());
        }
        c.extend_from_slice(&0u16.to_be_bytes()); // fields
        c.extend_from_slice(&self.method_count.to_be_bytes());
        c.extend_from_slice(&self.methods);
        c.extend_from_slice(&0u16.to_be_bytes()); // class attributes
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::java::classfile::ClassFile;

    #[test]
    fn an_entry_asked_for_twice_is_written_once() {
        let mut w = ClassWriter::default();
        let object = w.class("java/lang/Object");
        assert_eq!(object, 2, "its name first");
        let init = w.method_ref(object, "<init>", "()V");
        assert_eq!(w.method_ref(object, "<init>", "()V"), init);
        assert_eq!(w.utf8("()V"), 4);
        let this = w.class("a/B");
        let [hi, lo] = init.to_be_bytes();
        w.method(0x0001, "<init>", "()V", (1, 1), &[0x2a, 0xb7, hi, lo, 0xb1]);
        let bytes = w.finish(52, 0x0021, this, object, &[]);
        let c = ClassFile::parse(&bytes).unwrap();
        assert_eq!(c.own_package().unwrap().as_deref(), Some("a"));
        // 2 class names, <init>, ()V, NameAndType, Methodref, 2 Classes, Code
        assert_eq!(u16::from_be_bytes([bytes[8], bytes[9]]), 10);
    }
}
