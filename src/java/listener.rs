//! The one class fuse adds to Tomcat: a lifecycle listener that turns Tomcat's MBean
//! registry off before the server registers anything (docs/runtimes.md, "Tomcat").
//!
//! Written here byte by byte (JVM specification, chapter 4) rather than compiled: the
//! build has no Java compiler, and two straight-line methods need no stack map frames
//! (class-file version 52 = Java 8, which every Tomcat 9+ JVM loads).

/// The listener's binary name, as server.xml's `<Listener className=...>` names it.
pub const NO_MBEAN_REGISTRY: &str = "fuse.NoMBeanRegistry";

/// Its class file's path below a class-path directory (catalina.base's `lib`).
pub const NO_MBEAN_REGISTRY_FILE: &str = "fuse/NoMBeanRegistry.class";

/// A constant pool under construction: entries are numbered from 1 in insertion order.
struct Pool {
    bytes: Vec<u8>,
    count: u16,
}

impl Pool {
    fn push(&mut self, entry: &[u8]) -> u16 {
        self.bytes.extend_from_slice(entry);
        self.count += 1;
        self.count
    }
    fn utf8(&mut self, s: &str) -> u16 {
        let mut e = vec![1u8];
        e.extend_from_slice(&(s.len() as u16).to_be_bytes());
        e.extend_from_slice(s.as_bytes());
        self.push(&e)
    }
    fn class(&mut self, name: &str) -> u16 {
        let n = self.utf8(name);
        let mut e = vec![7u8];
        e.extend_from_slice(&n.to_be_bytes());
        self.push(&e)
    }
    fn method_ref(&mut self, class: u16, name: &str, descriptor: &str) -> u16 {
        let n = self.utf8(name);
        let d = self.utf8(descriptor);
        let mut nat = vec![12u8];
        nat.extend_from_slice(&n.to_be_bytes());
        nat.extend_from_slice(&d.to_be_bytes());
        let nat = self.push(&nat);
        let mut e = vec![10u8];
        e.extend_from_slice(&class.to_be_bytes());
        e.extend_from_slice(&nat.to_be_bytes());
        self.push(&e)
    }
}

/// One public method with a `Code` attribute (no exception table, no attributes).
fn method(
    out: &mut Vec<u8>,
    name: u16,
    descriptor: u16,
    code_attr: u16,
    stack: u16,
    locals: u16,
    code: &[u8],
) {
    const ACC_PUBLIC: u16 = 0x0001;
    out.extend_from_slice(&ACC_PUBLIC.to_be_bytes());
    out.extend_from_slice(&name.to_be_bytes());
    out.extend_from_slice(&descriptor.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // attributes: Code
    out.extend_from_slice(&code_attr.to_be_bytes());
    let len = 2 + 2 + 4 + code.len() + 2 + 2;
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&stack.to_be_bytes());
    out.extend_from_slice(&locals.to_be_bytes());
    out.extend_from_slice(&(code.len() as u32).to_be_bytes());
    out.extend_from_slice(code);
    out.extend_from_slice(&0u16.to_be_bytes()); // exception table
    out.extend_from_slice(&0u16.to_be_bytes()); // attributes
}

/// The class file of
/// ```java
/// package fuse;
/// public class NoMBeanRegistry implements org.apache.catalina.LifecycleListener {
///     public void lifecycleEvent(org.apache.catalina.LifecycleEvent event) {
///         org.apache.tomcat.util.modeler.Registry.disableRegistry();
///     }
/// }
/// ```
/// `Registry.disableRegistry()` (Tomcat 9.0.13+) installs the registry that registers
/// nothing, as embedded Tomcat in Spring Boot does by default; it only warns if a registry
/// is already in use, and every later event is a no-op. Same bytes on every call.
pub fn no_mbean_registry_class() -> Vec<u8> {
    let mut p = Pool {
        bytes: Vec::new(),
        count: 0,
    };
    let object = p.class("java/lang/Object");
    let object_init = p.method_ref(object, "<init>", "()V");
    let registry = p.class("org/apache/tomcat/util/modeler/Registry");
    let disable = p.method_ref(registry, "disableRegistry", "()V");
    let this = p.class(&NO_MBEAN_REGISTRY.replace('.', "/"));
    let iface = p.class("org/apache/catalina/LifecycleListener");
    let code_attr = p.utf8("Code");
    let init_name = p.utf8("<init>");
    let void_descriptor = p.utf8("()V");
    let event_name = p.utf8("lifecycleEvent");
    let event_descriptor = p.utf8("(Lorg/apache/catalina/LifecycleEvent;)V");

    let mut out = Vec::with_capacity(400);
    out.extend_from_slice(&0xCAFE_BABEu32.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // minor
    out.extend_from_slice(&52u16.to_be_bytes()); // major: Java 8
    out.extend_from_slice(&(p.count + 1).to_be_bytes());
    out.extend_from_slice(&p.bytes);
    const ACC_PUBLIC_SUPER: u16 = 0x0021;
    out.extend_from_slice(&ACC_PUBLIC_SUPER.to_be_bytes());
    out.extend_from_slice(&this.to_be_bytes());
    out.extend_from_slice(&object.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&iface.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // fields
    out.extend_from_slice(&2u16.to_be_bytes()); // methods
                                                // aload_0; invokespecial Object.<init>; return
    let [hi, lo] = object_init.to_be_bytes();
    method(
        &mut out,
        init_name,
        void_descriptor,
        code_attr,
        1,
        1,
        &[0x2a, 0xb7, hi, lo, 0xb1],
    );
    // invokestatic Registry.disableRegistry; return
    let [hi, lo] = disable.to_be_bytes();
    method(
        &mut out,
        event_name,
        event_descriptor,
        code_attr,
        0,
        2,
        &[0xb8, hi, lo, 0xb1],
    );
    out.extend_from_slice(&0u16.to_be_bytes()); // class attributes
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::java::classfile::ClassFile;
    use std::collections::BTreeSet;

    #[test]
    fn the_listener_class_parses_and_names_what_it_calls() {
        let bytes = no_mbean_registry_class();
        let c = ClassFile::parse(&bytes).expect("fuse's own class file parses");
        assert_eq!(c.own_package().unwrap().as_deref(), Some("fuse"));
        let mut refs = BTreeSet::new();
        c.referenced_packages(&mut refs).unwrap();
        assert!(refs.contains("org.apache.tomcat.util.modeler"), "{refs:?}");
        assert!(refs.contains("org.apache.catalina"), "{refs:?}");
        assert_eq!(bytes, no_mbean_registry_class(), "same bytes on every call");
    }

    /// The JDK's own class-file reader agrees (`javap` checks the structure: counts,
    /// lengths, constant kinds); the war boot test shows Tomcat loading and running it.
    #[test]
    fn javap_reads_the_listener_class() {
        let javap = std::path::Path::new("/usr/bin/javap");
        if !crate::testutil::require(javap.exists(), "javap (a JDK) is not installed") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("NoMBeanRegistry.class");
        std::fs::write(&file, no_mbean_registry_class()).unwrap();
        let out = std::process::Command::new(javap)
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("public class fuse.NoMBeanRegistry implements org.apache.catalina.LifecycleListener"),
            "{text}"
        );
        assert!(
            text.contains("invokestatic")
                && text.contains("org/apache/tomcat/util/modeler/Registry.disableRegistry:()V"),
            "{text}"
        );
    }
}
