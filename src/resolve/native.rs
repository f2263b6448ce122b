//! Native code inside an app: every ELF object in the app's files and in its archives
//! (jars, wars, jars nested in them), the libraries they need that the app does not bundle
//! itself (honouring DT_RUNPATH/DT_RPATH with `$ORIGIN`), and the symbol versions they
//! need from those libraries. Pure: the app's tree in, the needs out; resolution turns the
//! needs into packages (src/commands/build.rs) through the Contents index.

use crate::arch::Arch;
use crate::format::zip;
#[cfg(test)]
use crate::resolve::elf::EM_X86_64;
use crate::resolve::elf::{self, Object};
use crate::tree::{Kind, Tree};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// How deep archives inside archives are opened (a war's jar's jar).
const MAX_NESTING: usize = 3;

/// Libraries a Java runtime itself provides to JNI code (in the JDK's own directory, not
/// on the dynamic linker's path).
pub const JVM_LIBRARIES: &[&str] = &[
    "libjvm.so",
    "libjava.so",
    "libjawt.so",
    "libjsig.so",
    "libverify.so",
    "libnet.so",
    "libnio.so",
];

/// One ELF object of the app.
#[derive(Clone, Debug)]
pub struct Found {
    /// Where it is, as a user reads it: `/app/x/y.so`, or inside archives
    /// `/app/a.jar!/BOOT-INF/lib/b.jar!/native/libx.so`.
    pub display: String,
    /// Its directory in the app tree (for `$ORIGIN`); None inside an archive, where
    /// `$ORIGIN` means wherever the runtime extracts it.
    pub dir: Option<String>,
    /// File name.
    pub name: String,
    pub object: Object,
}

impl Found {
    fn is_native(&self, arch: Arch) -> bool {
        self.object.class64
            && self.object.little_endian
            && self.object.machine == arch.elf_machine()
    }

    fn is_musl(&self) -> bool {
        self.object
            .interpreter
            .as_deref()
            .is_some_and(|i| i.contains("ld-musl"))
            || self
                .object
                .needed
                .iter()
                .any(|n| n.starts_with("libc.musl"))
    }

    fn platform(&self) -> String {
        let o = &self.object;
        format!(
            "{}{}{}",
            elf::machine_name(o.machine),
            if o.class64 { "" } else { " 32-bit" },
            if o.little_endian { "" } else { " big-endian" }
        )
    }
}

/// What the app's native code needs from the distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppNeeds {
    /// Sonames needed by the app's objects and not bundled by the app, sorted.
    pub needed: BTreeSet<String>,
    /// For each of `needed`, the first object (display path) that needs it.
    pub needed_by: BTreeMap<String, String>,
    /// Symbol versions needed from libraries outside the app: the newest per library and
    /// version family (`libc.so.6` `GLIBC` -> `GLIBC_2.34`), with the first object that
    /// needs it. Versions of one family are cumulative, so the newest stands for all.
    pub versions: BTreeMap<(String, String), (String, String)>,
    /// ELF objects found (native ones and skipped ones).
    pub objects: usize,
    /// Objects for another platform that the app also has a native build of (multi-platform
    /// bundles: node prebuilds, JNI libraries per platform), or built for musl libc.
    pub skipped: Vec<String>,
    /// Sonames the app satisfies itself, with the object (display path) that provides it.
    pub bundled: BTreeMap<String, String>,
}

impl AppNeeds {
    /// `versions` as lock entries: `libc.so.6 GLIBC_2.34`, sorted.
    pub fn version_entries(&self) -> Vec<String> {
        self.versions
            .iter()
            .map(|((lib, _), (v, _))| format!("{lib} {v}"))
            .collect()
    }
}

/// The family of a symbol version (`GLIBC_2.34` -> `GLIBC`, `GLIBCXX_3.4.30` ->
/// `GLIBCXX`) and its numbers; None for versions without numbers (`GLIBC_PRIVATE`).
pub fn version_family(v: &str) -> Option<(String, Vec<u32>)> {
    let (family, _) = v.rsplit_once('_')?;
    let nums = elf::version_numbers(v, family)?;
    (!nums.is_empty()).then(|| (family.to_string(), nums))
}

/// Finds every ELF object in the app tree: its files, and the entries of archives
/// (`.jar`, `.war`, `.ear`) and of archives inside those.
pub fn find_objects(tree: &Tree) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for (path, node) in tree.iter() {
        let Kind::File(data) = &node.kind else {
            continue;
        };
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if elf::is_elf(data) {
            if !elf::is_loadable(data) {
                tracing::debug!("/{path}: a relocatable object or core file, not loaded: skipped");
                continue;
            }
            let object =
                elf::object(data).with_context(|| format!("cannot read the ELF object /{path}"))?;
            out.push(Found {
                display: format!("/{path}"),
                dir: Some(dir.to_string()),
                name: name.to_string(),
                object,
            });
        } else if is_archive_name(name) && zip::is_zip(data) {
            let mut budget = zip::Budget::for_input(data.len());
            scan_archive(data, &format!("/{path}"), 1, &mut budget, &mut out)?;
        }
    }
    Ok(out)
}

fn is_archive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".jar") || n.ends_with(".war") || n.ends_with(".ear")
}

fn scan_archive(
    zipped: &[u8],
    display: &str,
    depth: usize,
    budget: &mut zip::Budget,
    out: &mut Vec<Found>,
) -> Result<()> {
    let entries =
        zip::entries(zipped).with_context(|| format!("cannot read the archive {display}"))?;
    for e in entries {
        if e.is_dir() || e.name.ends_with(".class") || e.size < 4 {
            continue;
        }
        let name = e.name.rsplit('/').next().unwrap_or(&e.name).to_string();
        let inner = format!("{display}!/{}", e.name);
        let head =
            zip::read_prefix(zipped, &e, 4).with_context(|| format!("cannot read {inner}"))?;
        if elf::is_elf(&head) {
            let data = budget
                .read(zipped, &e)
                .with_context(|| format!("cannot read {inner}"))?;
            if !elf::is_loadable(&data) {
                tracing::debug!("{inner}: a relocatable object or core file, not loaded: skipped");
                continue;
            }
            let object = elf::object(&data)
                .with_context(|| format!("cannot read the ELF object {inner}"))?;
            out.push(Found {
                display: inner,
                dir: None,
                name,
                object,
            });
        } else if zip::is_zip(&head) && is_archive_name(&name) {
            if depth >= MAX_NESTING {
                tracing::warn!("{inner}: archives nested deeper than {MAX_NESTING} are not scanned for native code");
                continue;
            }
            let data = budget
                .read(zipped, &e)
                .with_context(|| format!("cannot read {inner}"))?;
            scan_archive(&data, &inner, depth + 1, budget, out)?;
        }
    }
    Ok(())
}

/// Where `$ORIGIN`-relative or absolute runpath entry `entry` of an object in tree
/// directory `dir` points, as a tree path; None when it cannot be known.
fn runpath_dir(entry: &str, dir: Option<&str>) -> Option<String> {
    let e = entry.replace("${ORIGIN}", "$ORIGIN");
    let joined = if let Some(rest) = e.strip_prefix("$ORIGIN") {
        format!("{}/{rest}", dir?)
    } else if e.starts_with('/') {
        e
    } else {
        return None; // relative to the working directory: not something to rely on
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The app's needs: which of its objects' libraries the app bundles (found on the
/// object's runpath in the app tree, else anywhere in the app by file name or soname, as a
/// loader that preloads or extracts its libraries expects) and which must come from the
/// distribution. `java`: JNI code may need the JVM's own libraries.
///
/// Errors: an object for another architecture (or 32-bit) without a native build of the
/// same file beside it; one linked against musl libc, unless its path or a glibc build of
/// the same file marks it as one platform of several.
pub fn needs(tree: &Tree, objects: &[Found], java: bool, arch: Arch) -> Result<AppNeeds> {
    let mut out = AppNeeds {
        objects: objects.len(),
        ..AppNeeds::default()
    };
    let native_names: BTreeSet<&str> = objects
        .iter()
        .filter(|f| f.is_native(arch) && !f.is_musl())
        .map(|f| f.name.as_str())
        .collect();
    // Names under which the app's own native libraries can be found.
    let mut provided: BTreeMap<&str, &str> = BTreeMap::new();
    for f in objects.iter().filter(|f| f.is_native(arch) && !f.is_musl()) {
        provided
            .entry(f.name.as_str())
            .or_insert(f.display.as_str());
        if let Some(s) = &f.object.soname {
            provided.entry(s.as_str()).or_insert(f.display.as_str());
        }
    }
    for f in objects {
        if !f.is_native(arch) {
            if native_names.contains(f.name.as_str()) {
                out.skipped
                    .push(format!("{} ({})", f.display, f.platform()));
                continue;
            }
            bail!(
                "{} is built for {}, but the image is {} ({arch}): rebuild it, or install the app's dependencies for linux {}",
                f.display,
                f.platform(),
                arch.elf_name(),
                arch.triple_cpu()
            );
        }
        if f.is_musl() {
            if f.display.to_ascii_lowercase().contains("musl")
                || native_names.contains(f.name.as_str())
            {
                out.skipped.push(format!("{} (musl libc)", f.display));
                continue;
            }
            bail!(
                "{} is linked against musl libc, but the image's distribution uses glibc (install the app's dependencies for glibc, e.g. manylinux wheels)",
                f.display
            );
        }
        let mut external: BTreeSet<&str> = BTreeSet::new();
        for soname in &f.object.needed {
            if java && JVM_LIBRARIES.contains(&soname.as_str()) {
                continue;
            }
            let on_runpath = f.object.runpath.iter().find_map(|entry| {
                let d = runpath_dir(entry, f.dir.as_deref())?;
                let path = if d.is_empty() {
                    soname.clone()
                } else {
                    format!("{d}/{soname}")
                };
                elf::follow(tree, &path)
                    .filter(|(_, n)| n.data().is_some())
                    .map(|(p, _)| format!("/{p}"))
            });
            if let Some(p) =
                on_runpath.or_else(|| provided.get(soname.as_str()).map(|s| s.to_string()))
            {
                out.bundled.entry(soname.clone()).or_insert(p);
                continue;
            }
            external.insert(soname);
            out.needed.insert(soname.clone());
            out.needed_by
                .entry(soname.clone())
                .or_insert_with(|| f.display.clone());
        }
        for (lib, version) in &f.object.version_needs {
            if !external.contains(lib.as_str()) {
                continue;
            }
            let Some((family, nums)) = version_family(version) else {
                continue;
            };
            let key = (lib.clone(), family);
            let newer = match out.versions.get(&key) {
                None => true,
                Some((have, _)) => version_family(have).is_some_and(|(_, h)| nums > h),
            };
            if newer {
                out.versions
                    .insert(key, (version.clone(), f.display.clone()));
            }
        }
    }
    Ok(out)
}

/// [`find_objects`] then [`needs`].
pub fn scan(tree: &Tree, java: bool, arch: Arch) -> Result<AppNeeds> {
    let objects = find_objects(tree)?;
    needs(tree, &objects, java, arch)
}

/// Checks that each library in `found` (soname -> tree path of the library chosen for it,
/// in the tree of the resolved packages) defines the symbol versions the app needs from
/// it. The error names the object, the version it needs, and the newest the distribution's
/// library has, e.g. `/app/x.so needs GLIBC_2.38 from libc.so.6, but the distribution's
/// libc.so.6 has versions up to GLIBC_2.36`.
pub fn check_versions(
    needs: &AppNeeds,
    tree: &Tree,
    found: &BTreeMap<String, String>,
    distribution: &str,
) -> Result<()> {
    let mut defs_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((lib, family), (version, by)) in &needs.versions {
        let Some(path) = found.get(lib) else {
            continue; // not resolved: its own error comes from resolution
        };
        if !defs_of.contains_key(lib.as_str()) {
            let data = tree.get(path).and_then(|n| n.data()).unwrap_or(&[]);
            let o = elf::object(data).with_context(|| format!("cannot read /{path}"))?;
            defs_of.insert(lib.as_str(), o.version_defs);
        }
        let defs = &defs_of[lib.as_str()];
        if defs.iter().any(|d| d == version) {
            continue;
        }
        let newest = defs
            .iter()
            .filter_map(|d| {
                version_family(d)
                    .filter(|(f, _)| f == family)
                    .map(|(_, n)| (n, d))
            })
            .max()
            .map(|(_, d)| d.clone());
        match newest {
            Some(have) => bail!(
                "{by} needs {version} from {lib}, but {distribution}'s {lib} has versions up to {have} (build the app against {distribution}, or an older toolchain)"
            ),
            None => bail!(
                "{by} needs {version} from {lib}, but {distribution}'s {lib} defines no {family} versions"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::Node;

    /// A minimal ELF64 shared object: one PT_LOAD covering the file, a PT_DYNAMIC with
    /// DT_STRTAB, DT_NEEDED, DT_SONAME, DT_RUNPATH and optionally version needs/defs.
    pub fn fake_so(
        machine: u16,
        soname: Option<&str>,
        needed: &[&str],
        runpath: Option<&str>,
        version_needs: &[(&str, &[&str])],
        version_defs: &[&str],
    ) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let at = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let mut dynamic: Vec<(u64, u64)> = Vec::new();
        for n in needed {
            dynamic.push((1, add(n)));
        }
        if let Some(s) = soname {
            dynamic.push((14, add(s)));
        }
        if let Some(r) = runpath {
            dynamic.push((29, add(r)));
        }
        // verneed entries (16 bytes) each followed by its aux entries (16 bytes each)
        let mut verneed = Vec::new();
        for (i, (file, vers)) in version_needs.iter().enumerate() {
            let file_off = add(file);
            let last = i + 1 == version_needs.len();
            let size = 16 + 16 * vers.len();
            verneed.extend_from_slice(&1u16.to_le_bytes());
            verneed.extend_from_slice(&(vers.len() as u16).to_le_bytes());
            verneed.extend_from_slice(&(file_off as u32).to_le_bytes());
            verneed.extend_from_slice(&16u32.to_le_bytes());
            verneed.extend_from_slice(&(if last { 0 } else { size as u32 }).to_le_bytes());
            for (j, v) in vers.iter().enumerate() {
                let name = add(v);
                verneed.extend_from_slice(&0u32.to_le_bytes());
                verneed.extend_from_slice(&0u16.to_le_bytes());
                verneed.extend_from_slice(&0u16.to_le_bytes());
                verneed.extend_from_slice(&(name as u32).to_le_bytes());
                let next = if j + 1 == vers.len() { 0u32 } else { 16 };
                verneed.extend_from_slice(&next.to_le_bytes());
            }
        }
        let mut verdef = Vec::new();
        for (i, v) in version_defs.iter().enumerate() {
            let name = add(v);
            let last = i + 1 == version_defs.len();
            verdef.extend_from_slice(&1u16.to_le_bytes());
            verdef.extend_from_slice(&0u16.to_le_bytes());
            verdef.extend_from_slice(&((i + 1) as u16).to_le_bytes());
            verdef.extend_from_slice(&1u16.to_le_bytes());
            verdef.extend_from_slice(&0u32.to_le_bytes());
            verdef.extend_from_slice(&20u32.to_le_bytes());
            verdef.extend_from_slice(&(if last { 0u32 } else { 28 }).to_le_bytes());
            verdef.extend_from_slice(&(name as u32).to_le_bytes());
            verdef.extend_from_slice(&0u32.to_le_bytes());
        }
        // layout: header 64, 2 program headers 112, strtab, verneed, verdef, dynamic
        let str_off = 64 + 112;
        let vn_off = str_off + strtab.len();
        let vd_off = vn_off + verneed.len();
        let mut dyn_off = vd_off + verdef.len();
        dyn_off += (8 - dyn_off % 8) % 8;
        dynamic.push((5, str_off as u64));
        if !version_needs.is_empty() {
            dynamic.push((0x6fff_fffe, vn_off as u64));
            dynamic.push((0x6fff_ffff, version_needs.len() as u64));
        }
        if !version_defs.is_empty() {
            dynamic.push((0x6fff_fffc, vd_off as u64));
            dynamic.push((0x6fff_fffd, version_defs.len() as u64));
        }
        dynamic.push((0, 0));
        let total = dyn_off + dynamic.len() * 16;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10] = 3; // ET_DYN
        f[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let ph = |ty: u32, off: u64, size: u64| {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&off.to_le_bytes());
            h[16..24].copy_from_slice(&off.to_le_bytes()); // vaddr = offset
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..48].copy_from_slice(&size.to_le_bytes());
            h
        };
        f.extend(ph(1, 0, total as u64));
        f.extend(ph(2, dyn_off as u64, (dynamic.len() * 16) as u64));
        f.extend_from_slice(&strtab);
        f.extend_from_slice(&verneed);
        f.extend_from_slice(&verdef);
        f.resize(dyn_off, 0);
        for (t, v) in dynamic {
            f.extend_from_slice(&t.to_le_bytes());
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    fn so(needed: &[&str], runpath: Option<&str>) -> Node {
        Node::file(fake_so(EM_X86_64, None, needed, runpath, &[], &[]), 0o755)
    }

    #[test]
    fn reads_soname_runpath_and_versions_of_a_fake_object() {
        let b = fake_so(
            EM_X86_64,
            Some("libx.so.1"),
            &["libstdc++.so.6", "libc.so.6"],
            Some("$ORIGIN/../x.libs:/opt/lib"),
            &[
                ("libstdc++.so.6", &["GLIBCXX_3.4.30", "CXXABI_1.3"]),
                ("libc.so.6", &["GLIBC_2.34", "GLIBC_2.2.5"]),
            ],
            &["libx.so.1", "X_1.0"],
        );
        let o = elf::object(&b).unwrap();
        assert_eq!(o.soname.as_deref(), Some("libx.so.1"));
        assert_eq!(o.needed, ["libstdc++.so.6", "libc.so.6"]);
        assert_eq!(o.runpath, ["$ORIGIN/../x.libs", "/opt/lib"]);
        assert_eq!(o.version_needs.len(), 4);
        assert!(o
            .version_needs
            .contains(&("libc.so.6".to_string(), "GLIBC_2.34".to_string())));
        assert_eq!(o.version_defs, ["libx.so.1", "X_1.0"]);
        // dynamic() keeps its old meaning: $ORIGIN entries are left out.
        assert_eq!(elf::dynamic(&b).unwrap().runpath, ["/opt/lib"]);
    }

    #[test]
    fn reads_the_versions_of_the_hosts_libc_when_available() {
        // Cross-check with readelf: libc.so.6 defines GLIBC_2.2.5; /bin/sh needs GLIBC_*.
        let (libc, sh) = (
            std::fs::read("/lib/x86_64-linux-gnu/libc.so.6"),
            std::fs::read("/bin/sh"),
        );
        if !crate::testutil::require(
            libc.is_ok() && sh.is_ok(),
            "the host's libc.so.6 and /bin/sh",
        ) {
            return;
        }
        let (libc, sh) = (libc.unwrap(), sh.unwrap());
        let l = elf::object(&libc).unwrap();
        assert!(
            l.version_defs.iter().any(|v| v == "GLIBC_2.2.5"),
            "{:?}",
            l.version_defs
        );
        assert_eq!(l.soname.as_deref(), Some("libc.so.6"));
        let s = elf::object(&sh).unwrap();
        assert!(s
            .version_needs
            .iter()
            .any(|(lib, v)| lib == "libc.so.6" && v.starts_with("GLIBC_2.")));
    }

    #[test]
    fn relocatable_objects_left_by_builds_are_not_scanned() {
        // node-gyp leaves build/Release/obj.target/<name>/<file>.o beside the addon: an
        // ET_REL object without program headers, which nothing loads.
        let mut o = vec![0u8; 64];
        o[..4].copy_from_slice(b"\x7fELF");
        o[4] = 2;
        o[5] = 1;
        o[6] = 1;
        o[0x10] = 1; // ET_REL
        o[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        assert!(
            elf::object(&o).is_err(),
            "the reader refuses it: skipping matters"
        );
        let mut t = Tree::new();
        t.insert(
            "app/node_modules/z/build/Release/obj.target/z/z.o",
            Node::file(o.clone(), 0o644),
        )
        .unwrap();
        t.insert(
            "app/node_modules/z/build/Release/z.node",
            so(&["libz.so.1"], None),
        )
        .unwrap();
        let n = scan(&t, false, Arch::Amd64).unwrap();
        assert_eq!(n.objects, 1);
        assert_eq!(n.needed.iter().collect::<Vec<_>>(), ["libz.so.1"]);
        // an ET_DYN object with the same defect is still an error naming it
        o[0x10] = 3;
        t.insert("app/bad.so", Node::file(o, 0o755)).unwrap();
        let e = format!("{:#}", scan(&t, false, Arch::Amd64).unwrap_err());
        assert!(e.contains("/app/bad.so"), "{e}");
    }

    #[test]
    fn bundled_libraries_satisfy_needs_and_the_rest_is_needed() {
        let mut t = Tree::new();
        // a wheel: the extension finds its vendored library through $ORIGIN
        t.insert(
            "app/lib/numpyish/core/_multi.cpython-311-x86_64-linux-gnu.so",
            Node::file(
                fake_so(
                    EM_X86_64,
                    None,
                    &["libopenblas-r0.so", "libgomp.so.1", "libc.so.6"],
                    Some("$ORIGIN/../../numpyish.libs"),
                    &[
                        ("libc.so.6", &["GLIBC_2.14", "GLIBC_2.17"]),
                        ("libgomp.so.1", &["GOMP_4.0", "OMP_1.0"]),
                    ],
                    &[],
                ),
                0o755,
            ),
        )
        .unwrap();
        t.insert(
            "app/lib/numpyish.libs/libopenblas-r0.so",
            so(&["libgfortran.so.5", "libc.so.6"], None),
        )
        .unwrap();
        t.insert("app/bin/tool", so(&["libz.so.1"], None)).unwrap();
        t.insert("app/README", Node::file(b"text".to_vec(), 0o644))
            .unwrap();
        let n = scan(&t, false, Arch::Amd64).unwrap();
        assert_eq!(n.objects, 3);
        assert_eq!(
            n.needed.iter().map(String::as_str).collect::<Vec<_>>(),
            ["libc.so.6", "libgfortran.so.5", "libgomp.so.1", "libz.so.1"]
        );
        assert_eq!(n.needed_by["libz.so.1"], "/app/bin/tool");
        assert_eq!(
            n.bundled["libopenblas-r0.so"],
            "/app/lib/numpyish.libs/libopenblas-r0.so"
        );
        assert_eq!(
            n.version_entries(),
            [
                "libc.so.6 GLIBC_2.17",
                "libgomp.so.1 GOMP_4.0",
                "libgomp.so.1 OMP_1.0"
            ]
        );
    }

    #[test]
    fn objects_inside_nested_jars_are_found() {
        use crate::format::zip::tests::make;
        let jni = fake_so(EM_X86_64, None, &["libz.so.1", "libjvm.so"], None, &[], &[]);
        let arm = fake_so(183, None, &["libz.so.1"], None, &[], &[]);
        let inner = make(&[
            ("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n", true),
            ("native/linux-x86_64/libfast.so", &jni, true),
            ("native/linux-aarch64/libfast.so", &arm, false),
            ("x/Y.class", b"\xca\xfe\xba\xbe", false),
        ]);
        let outer = make(&[
            ("BOOT-INF/lib/fast.jar", &inner, false),
            ("BOOT-INF/classes/app/Main.class", b"\xca\xfe\xba\xbe", true),
        ]);
        let mut t = Tree::new();
        t.insert("app/app.jar", Node::file(outer, 0o644)).unwrap();
        let objects = find_objects(&t).unwrap();
        let names: Vec<&str> = objects.iter().map(|f| f.display.as_str()).collect();
        assert_eq!(
            names,
            [
                "/app/app.jar!/BOOT-INF/lib/fast.jar!/native/linux-x86_64/libfast.so",
                "/app/app.jar!/BOOT-INF/lib/fast.jar!/native/linux-aarch64/libfast.so"
            ]
        );
        let n = needs(&t, &objects, true, Arch::Amd64).unwrap();
        assert_eq!(n.needed.iter().collect::<Vec<_>>(), ["libz.so.1"]);
        assert_eq!(n.skipped.len(), 1, "the aarch64 twin is skipped");
        assert!(n.skipped[0].contains("AArch64"));
        // Without the JVM, libjvm.so is a need like any other.
        let n = needs(&t, &objects, false, Arch::Amd64).unwrap();
        assert!(n.needed.contains("libjvm.so"));
    }

    #[test]
    fn a_foreign_object_without_a_native_twin_is_an_error_naming_both() {
        let mut t = Tree::new();
        t.insert(
            "app/site/_speedups.cpython-311-aarch64-linux-gnu.so",
            Node::file(fake_so(183, None, &["libc.so.6"], None, &[], &[]), 0o755),
        )
        .unwrap();
        let e = format!("{:#}", scan(&t, false, Arch::Amd64).unwrap_err());
        assert!(
            e.contains("/app/site/_speedups.cpython-311-aarch64-linux-gnu.so")
                && e.contains("AArch64")
                && e.contains("x86-64"),
            "{e}"
        );
        // In an arm64 image the same object is native and an x86-64 one is the foreign one.
        let n = scan(&t, false, Arch::Arm64).unwrap();
        assert_eq!(n.needed.iter().collect::<Vec<_>>(), ["libc.so.6"]);
        let mut x = Tree::new();
        x.insert(
            "app/hello",
            Node::file(
                fake_so(EM_X86_64, None, &["libc.so.6"], None, &[], &[]),
                0o755,
            ),
        )
        .unwrap();
        let e = format!("{:#}", scan(&x, false, Arch::Arm64).unwrap_err());
        assert!(
            e.contains("/app/hello") && e.contains("x86-64") && e.contains("AArch64 (arm64)"),
            "{e}"
        );
        let mut t = Tree::new();
        t.insert(
            "app/x.so",
            Node::file(
                fake_so(EM_X86_64, None, &["libc.musl-x86_64.so.1"], None, &[], &[]),
                0o755,
            ),
        )
        .unwrap();
        let e = format!("{:#}", scan(&t, false, Arch::Amd64).unwrap_err());
        assert!(e.contains("/app/x.so") && e.contains("musl"), "{e}");
        // ...unless the path says it is the musl build of a multi-platform bundle
        let mut t = Tree::new();
        t.insert(
            "app/prebuilds/linux-x64/node.napi.musl.node",
            Node::file(
                fake_so(EM_X86_64, None, &["libc.musl-x86_64.so.1"], None, &[], &[]),
                0o755,
            ),
        )
        .unwrap();
        assert_eq!(scan(&t, false, Arch::Amd64).unwrap().skipped.len(), 1);
    }

    #[test]
    fn versions_are_checked_against_the_distributions_library() {
        let mut t = Tree::new();
        t.insert(
            "app/x.so",
            Node::file(
                fake_so(
                    EM_X86_64,
                    None,
                    &["libc.so.6"],
                    None,
                    &[("libc.so.6", &["GLIBC_2.38"])],
                    &[],
                ),
                0o755,
            ),
        )
        .unwrap();
        let n = scan(&t, false, Arch::Amd64).unwrap();
        let mut dist = Tree::new();
        dist.insert(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            Node::file(
                fake_so(
                    EM_X86_64,
                    Some("libc.so.6"),
                    &[],
                    None,
                    &[],
                    &[
                        "libc.so.6",
                        "GLIBC_2.2.5",
                        "GLIBC_2.36",
                        "GLIBC_2.4",
                        "GLIBC_PRIVATE",
                    ],
                ),
                0o755,
            ),
        )
        .unwrap();
        let found: BTreeMap<String, String> = [(
            "libc.so.6".to_string(),
            "usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        )]
        .into();
        let e = format!(
            "{:#}",
            check_versions(&n, &dist, &found, "debian/bookworm").unwrap_err()
        );
        assert!(
            e.contains("/app/x.so needs GLIBC_2.38 from libc.so.6")
                && e.contains("up to GLIBC_2.36"),
            "{e}"
        );
        let mut ok = n.clone();
        ok.versions
            .values_mut()
            .for_each(|v| v.0 = "GLIBC_2.4".into());
        check_versions(&ok, &dist, &found, "debian/bookworm").unwrap();
    }

    #[test]
    fn version_families_compare_numerically() {
        assert_eq!(
            version_family("GLIBC_2.34"),
            Some(("GLIBC".into(), vec![2, 34]))
        );
        assert_eq!(
            version_family("GLIBCXX_3.4.30"),
            Some(("GLIBCXX".into(), vec![3, 4, 30]))
        );
        assert_eq!(version_family("GLIBC_PRIVATE"), None);
        assert!(version_family("GLIBC_2.4").unwrap().1 < version_family("GLIBC_2.34").unwrap().1);
        assert_eq!(
            runpath_dir("$ORIGIN/../x.libs", Some("app/a/b")).unwrap(),
            "app/a/x.libs"
        );
        assert_eq!(runpath_dir("${ORIGIN}", Some("app")).unwrap(), "app");
        assert_eq!(runpath_dir("/app/lib", None).unwrap(), "app/lib");
        assert_eq!(runpath_dir("$ORIGIN/lib", None), None);
        assert_eq!(runpath_dir("lib", Some("app")), None);
    }
}
