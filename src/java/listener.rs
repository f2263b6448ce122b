//! The one class fuse adds to Tomcat: a lifecycle listener that turns Tomcat's MBean
//! registry off before the server registers anything (docs/runtimes.md, "Tomcat").
//! Class-file version 52 (Java 8), which every Tomcat 9+ JVM loads.

use crate::java::classwrite::ClassWriter;

/// The listener's binary name, as server.xml's `<Listener className=...>` names it.
pub const NO_MBEAN_REGISTRY: &str = "fuse.NoMBeanRegistry";

/// Its class file's path below a class-path directory (catalina.base's `lib`).
pub const NO_MBEAN_REGISTRY_FILE: &str = "fuse/NoMBeanRegistry.class";

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
    const ACC_PUBLIC: u16 = 0x0001;
    const ACC_PUBLIC_SUPER: u16 = 0x0021;
    let mut w = ClassWriter::default();
    let object = w.class("java/lang/Object");
    let object_init = w.method_ref(object, "<init>", "()V");
    let registry = w.class("org/apache/tomcat/util/modeler/Registry");
    let disable = w.method_ref(registry, "disableRegistry", "()V");
    let this = w.class(&NO_MBEAN_REGISTRY.replace('.', "/"));
    let listener = w.class("org/apache/catalina/LifecycleListener");
    // aload_0; invokespecial Object.<init>; return
    let [hi, lo] = object_init.to_be_bytes();
    w.method(
        ACC_PUBLIC,
        "<init>",
        "()V",
        (1, 1),
        &[0x2a, 0xb7, hi, lo, 0xb1],
    );
    // invokestatic Registry.disableRegistry; return
    let [hi, lo] = disable.to_be_bytes();
    w.method(
        ACC_PUBLIC,
        "lifecycleEvent",
        "(Lorg/apache/catalina/LifecycleEvent;)V",
        (0, 2),
        &[0xb8, hi, lo, 0xb1],
    );
    w.finish(52, ACC_PUBLIC_SUPER, this, object, &[listener]) // 52: Java 8
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
