//! The OpenJDK `lib/modules` jimage format (version 1.0): a reader and a deterministic
//! writer, learnt from the JDK's own `jdk.internal.jimage` reader and jlink's image writer.
//!
//! Layout (all u4 in the writer's byte order, little-endian here, as on amd64):
//!
//! ```text
//! header   u4 magic 0xCAFEDADA, u4 version (major << 16 | minor), u4 flags,
//!          u4 resource_count, u4 table_length, u4 locations_size, u4 strings_size
//! redirect i4[table_length]   perfect-hash redirect: <0 = -1-index, >0 = seed, 0 = none
//! offsets  u4[table_length]   index -> offset of the location in `locations`
//! locations  attribute streams: byte (kind << 3 | len-1), len big-endian bytes; kind 0 ends
//!            kinds: 1 module, 2 parent, 3 base, 4 extension (string offsets),
//!                   5 content offset, 6 compressed size, 7 uncompressed size
//! strings  NUL-terminated modified UTF-8; "" at offset 0, "class" at 1
//! content  the resources' bytes, then the `/modules/...` and `/packages/...` directory data
//! ```
//!
//! A resource `/<module>/<parent>/<base>.<ext>` is found by hashing its full name
//! (FNV-like over the modified UTF-8 bytes). Directory entries: `/modules/<module>/<dir>`
//! hold u4 location offsets of their children; `/packages/<pkg>` hold (u4 is_empty,
//! u4 module-name string offset) pairs; the JVM maps a package to its module through them.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const MAGIC: u32 = 0xCAFE_DADA;
const HEADER_SIZE: usize = 28;
const HASH_MULTIPLIER: u32 = 0x0100_0193;
const RETRY_LIMIT: u32 = 1000;

const A_MODULE: usize = 1;
const A_PARENT: usize = 2;
const A_BASE: usize = 3;
const A_EXTENSION: usize = 4;
const A_OFFSET: usize = 5;
const A_COMPRESSED: usize = 6;
const A_UNCOMPRESSED: usize = 7;
const A_COUNT: usize = 8;

/// The jimage name hash of `bytes` continued from `seed` (before masking).
fn hash_bytes(bytes: &[u8], mut seed: u32) -> u32 {
    for &b in bytes {
        seed = seed.wrapping_mul(HASH_MULTIPLIER) ^ b as u32;
    }
    seed
}

/// The masked hash of a full name with a seed (`ImageStringsReader.hashCode(s, seed)`).
fn hash(name: &[u8], seed: u32) -> u32 {
    hash_bytes(name, seed) & 0x7FFF_FFFF
}

/// One resource of an image: `/<module>/<path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub module: String,
    /// The path inside the module, e.g. `java/lang/Object.class`.
    pub path: String,
    /// Offset of the bytes after the index.
    pub offset: u64,
    /// Stored (compressed) size; 0 when stored uncompressed.
    pub compressed: u64,
    pub size: u64,
}

/// A parsed image over borrowed bytes; every offset is bounds-checked.
pub struct Jimage<'a> {
    data: &'a [u8],
    table_len: usize,
    resource_count: usize,
    locations: &'a [u8],
    strings: &'a [u8],
    index_size: usize,
}

fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    let s = b
        .get(o..o + 4)
        .with_context(|| format!("jimage truncated at byte {o}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> Jimage<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Jimage<'a>> {
        if data.len() < HEADER_SIZE {
            bail!("not a jimage: {} bytes", data.len());
        }
        let magic = u32_at(data, 0)?;
        if magic != MAGIC {
            bail!("not a jimage (magic {magic:#010x}; big-endian images are not read)");
        }
        let version = u32_at(data, 4)?;
        if version != 1 << 16 {
            bail!(
                "jimage version {}.{} is not known (1.0 is)",
                version >> 16,
                version & 0xffff
            );
        }
        let resource_count = u32_at(data, 12)? as usize;
        let table_len = u32_at(data, 16)? as usize;
        let locations_size = u32_at(data, 20)? as usize;
        let strings_size = u32_at(data, 24)? as usize;
        let loc_start = HEADER_SIZE + table_len * 8;
        let str_start = loc_start + locations_size;
        let index_size = str_start + strings_size;
        if index_size > data.len() || table_len > data.len() {
            bail!(
                "jimage index ({index_size} bytes) is larger than the file ({})",
                data.len()
            );
        }
        Ok(Jimage {
            data,
            table_len,
            resource_count,
            locations: &data[loc_start..str_start],
            strings: &data[str_start..index_size],
            index_size,
        })
    }

    pub fn index_size(&self) -> usize {
        self.index_size
    }

    /// Number of locations (resources and directory entries) the header declares.
    pub fn resource_count(&self) -> usize {
        self.resource_count
    }

    fn string(&self, off: u64) -> Result<&'a str> {
        let off = off as usize;
        let rest = self
            .strings
            .get(off..)
            .with_context(|| format!("jimage string offset {off} out of range"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .with_context(|| format!("jimage string at {off} has no terminator"))?;
        std::str::from_utf8(&rest[..end])
            .with_context(|| format!("jimage string at {off} is not plain UTF-8"))
    }

    fn attributes(&self, mut off: usize) -> Result<[u64; A_COUNT]> {
        let mut a = [0u64; A_COUNT];
        loop {
            let b = *self
                .locations
                .get(off)
                .with_context(|| format!("jimage location at {off} runs past the table"))?;
            off += 1;
            if b <= 7 {
                return Ok(a);
            }
            let kind = (b >> 3) as usize;
            if kind >= A_COUNT {
                bail!("jimage location attribute kind {kind} is not known");
            }
            let len = (b & 7) as usize + 1;
            let bytes = self
                .locations
                .get(off..off + len)
                .context("jimage location attribute truncated")?;
            a[kind] = bytes.iter().fold(0u64, |v, &x| v << 8 | x as u64);
            off += len;
        }
    }

    fn full_name(&self, a: &[u64; A_COUNT]) -> Result<String> {
        let mut s = String::new();
        if a[A_MODULE] != 0 {
            s.push('/');
            s.push_str(self.string(a[A_MODULE])?);
            s.push('/');
        }
        if a[A_PARENT] != 0 {
            s.push_str(self.string(a[A_PARENT])?);
            s.push('/');
        }
        s.push_str(self.string(a[A_BASE])?);
        if a[A_EXTENSION] != 0 {
            s.push('.');
            s.push_str(self.string(a[A_EXTENSION])?);
        }
        Ok(s)
    }

    /// Every location's full name with its attributes (directories included), in table order.
    fn locations(&self) -> Result<Vec<(String, [u64; A_COUNT])>> {
        let mut out = Vec::new();
        for i in 0..self.table_len {
            let off = u32_at(self.data, HEADER_SIZE + self.table_len * 4 + i * 4)? as usize;
            if off == 0 {
                continue;
            }
            let a = self.attributes(off)?;
            out.push((self.full_name(&a)?, a));
        }
        Ok(out)
    }

    /// Every full name in the image (resources and directory entries), sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.locations()?.into_iter().map(|(n, _)| n).collect();
        v.sort();
        Ok(v)
    }

    /// The resources (not the `/modules` and `/packages` directory entries), in the order
    /// of their bytes in the file.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (_, a) in self.locations()? {
            if a[A_MODULE] == 0 {
                continue;
            }
            let module = self.string(a[A_MODULE])?;
            if module == "modules" || module == "packages" {
                continue;
            }
            let mut path = String::new();
            if a[A_PARENT] != 0 {
                path.push_str(self.string(a[A_PARENT])?);
                path.push('/');
            }
            path.push_str(self.string(a[A_BASE])?);
            if a[A_EXTENSION] != 0 {
                path.push('.');
                path.push_str(self.string(a[A_EXTENSION])?);
            }
            out.push(Entry {
                module: module.to_string(),
                path,
                offset: a[A_OFFSET],
                compressed: a[A_COMPRESSED],
                size: a[A_UNCOMPRESSED],
            });
        }
        out.sort_by(|a, b| (a.offset, &a.module, &a.path).cmp(&(b.offset, &b.module, &b.path)));
        Ok(out)
    }

    /// The stored bytes of a resource. Compressed resources are refused (their headers
    /// point into the string table, which a rewrite changes).
    pub fn content(&self, e: &Entry) -> Result<&'a [u8]> {
        if e.compressed != 0 {
            bail!(
                "/{}/{} is stored compressed in the jimage (only uncompressed images are rewritten)",
                e.module,
                e.path
            );
        }
        let start = self
            .index_size
            .checked_add(e.offset as usize)
            .context("jimage offset overflow")?;
        self.data
            .get(start..start + e.size as usize)
            .with_context(|| format!("/{}/{} lies beyond the end of the jimage", e.module, e.path))
    }

    /// Look a full name up through the perfect hash, as the JVM does.
    pub fn find(&self, name: &str) -> Result<Option<[u64; A_COUNT]>> {
        if self.table_len == 0 {
            return Ok(None);
        }
        let n = self.table_len as u32;
        let r = u32_at(
            self.data,
            HEADER_SIZE + (hash(name.as_bytes(), HASH_MULTIPLIER) % n) as usize * 4,
        )? as i32;
        let index = match r {
            0 => return Ok(None),
            r if r < 0 => (-1 - r) as u32,
            seed => hash(name.as_bytes(), seed as u32) % n,
        };
        if index >= n {
            bail!("jimage redirect points past the table");
        }
        let off = u32_at(
            self.data,
            HEADER_SIZE + self.table_len * 4 + index as usize * 4,
        )? as usize;
        let a = self.attributes(off)?;
        Ok((self.full_name(&a)? == name).then_some(a))
    }

    /// A resource's bytes by module and path, through the hash.
    pub fn resource(&self, module: &str, path: &str) -> Result<Option<&'a [u8]>> {
        let Some(a) = self.find(&format!("/{module}/{path}"))? else {
            return Ok(None);
        };
        let e = Entry {
            module: module.into(),
            path: path.into(),
            offset: a[A_OFFSET],
            compressed: a[A_COMPRESSED],
            size: a[A_UNCOMPRESSED],
        };
        self.content(&e).map(Some)
    }

    /// The modules that have resources in the image.
    pub fn modules(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|e| e.module)
            .collect::<BTreeSet<_>>())
    }
}

/// The string table being written: modified UTF-8 (plain UTF-8 for the BMP names the JDK
/// has; names with NUL or supplementary characters are refused), deduplicated.
struct Strings {
    bytes: Vec<u8>,
    index: HashMap<String, u32>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings {
            bytes: Vec::new(),
            index: HashMap::new(),
        };
        s.add("");
        s.add("class");
        s
    }
    fn add(&mut self, v: &str) -> u32 {
        if let Some(&o) = self.index.get(v) {
            return o;
        }
        let o = self.bytes.len() as u32;
        self.bytes.extend_from_slice(v.as_bytes());
        self.bytes.push(0);
        self.index.insert(v.to_string(), o);
        o
    }
}

/// A location being written.
struct Loc {
    name: String,
    attrs: [u64; A_COUNT],
}

impl Loc {
    /// Split a full name into module, parent, base and extension as jlink does.
    fn new(full: &str, strings: &mut Strings, offset: u64, size: u64) -> Loc {
        let (mut module, mut parent, mut ext) = ("", "", "");
        let base: &str = if let Some(rest) = full.strip_prefix("/modules/") {
            module = "modules";
            rest
        } else if let Some(rest) = full.strip_prefix("/packages/") {
            module = "packages";
            rest
        } else {
            let mut name = full;
            if full.len() >= 2 && full.starts_with('/') {
                if let Some(i) = full[1..].find('/') {
                    module = &full[1..i + 1];
                    name = &full[i + 2..];
                }
            }
            if let Some(i) = name.rfind('/') {
                if i > 1 {
                    parent = &name[..i];
                    name = &name[i + 1..];
                }
            }
            match name.rfind('.') {
                Some(i) => {
                    ext = &name[i + 1..];
                    &name[..i]
                }
                None => name,
            }
        };
        let mut attrs = [0u64; A_COUNT];
        attrs[A_MODULE] = strings.add(module) as u64;
        attrs[A_PARENT] = strings.add(parent) as u64;
        attrs[A_BASE] = strings.add(base) as u64;
        attrs[A_EXTENSION] = strings.add(ext) as u64;
        attrs[A_OFFSET] = offset;
        attrs[A_COMPRESSED] = 0;
        attrs[A_UNCOMPRESSED] = size;
        Loc {
            name: full.to_string(),
            attrs,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for kind in 1..A_COUNT {
            let v = self.attrs[kind];
            if v != 0 {
                let n = (63 - v.leading_zeros()) >> 3;
                out.push(((kind as u32) << 3 | n) as u8);
                for i in (0..=n).rev() {
                    out.push((v >> (i * 8)) as u8);
                }
            }
        }
        out.push(0);
    }
}

/// The perfect hash over the locations' full names: (redirect table, order: table slot ->
/// location index or None). Deterministic: the same names in the same order give the same
/// tables (jlink's algorithm: buckets by hash, longest chains first placed with a new seed,
/// single entries fill the free slots; the table grows to the next odd size on failure).
fn perfect_hash(names: &[&[u8]]) -> (Vec<i32>, Vec<Option<usize>>) {
    let mut count = names.len();
    if count == 0 {
        return (Vec::new(), Vec::new());
    }
    let base: Vec<u32> = names.iter().map(|n| hash(n, HASH_MULTIPLIER)).collect();
    'grow: loop {
        let mut redirect = vec![0i32; count];
        let mut order: Vec<Option<usize>> = vec![None; count];
        let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, h) in base.iter().enumerate() {
            buckets[(*h as usize) % count].push(i);
        }
        let mut sorted: Vec<&Vec<usize>> = buckets.iter().filter(|b| !b.is_empty()).collect();
        // stable: equal-length chains keep their slot order
        sorted.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let mut free = 0usize;
        for bucket in sorted {
            let slot = (base[bucket[0]] as usize) % count;
            if bucket.len() > 1 {
                let mut seed = HASH_MULTIPLIER.wrapping_add(1);
                let mut retry = 0;
                let mut placed: Vec<usize> = Vec::new();
                'seed: loop {
                    for &e in bucket {
                        let idx = (hash(names[e], seed) as usize) % count;
                        if order[idx].is_some() {
                            retry += 1;
                            if retry > RETRY_LIMIT {
                                for i in placed.drain(..) {
                                    order[i] = None;
                                }
                                count = (count + 1) | 1;
                                continue 'grow;
                            }
                            for i in placed.drain(..) {
                                order[i] = None;
                            }
                            seed = seed.wrapping_add(1);
                            if seed == 0 {
                                seed = 1;
                            }
                            continue 'seed;
                        }
                        order[idx] = Some(e);
                        placed.push(idx);
                    }
                    break;
                }
                redirect[slot] = seed as i32;
            } else {
                while free < count && order[free].is_some() {
                    free += 1;
                }
                if free >= count {
                    count = (count + 1) | 1;
                    continue 'grow;
                }
                order[free] = Some(bucket[0]);
                redirect[slot] = -1 - free as i32;
                free += 1;
            }
        }
        return (redirect, order);
    }
}

/// One resource to write.
pub struct Resource<'a> {
    pub module: &'a str,
    pub path: &'a str,
    pub data: &'a [u8],
}

/// A directory node of the `/modules` tree being built.
#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    /// child name -> full resource name (`/module/path`)
    files: BTreeMap<String, String>,
}

fn check_name(s: &str) -> Result<()> {
    if s.is_empty()
        || s.starts_with('/')
        || s.ends_with('/')
        || s.contains("//")
        || s.bytes().any(|b| b == 0)
        || s.chars().any(|c| c as u32 > 0xFFFF)
    {
        bail!("jimage resource name {s:?} cannot be written");
    }
    Ok(())
}

/// Write an image holding `resources` (written in the given order; names must be unique).
/// The bytes depend only on the resources and their order.
pub fn write(resources: &[Resource]) -> Result<Vec<u8>> {
    let mut strings = Strings::new();
    let mut locs: Vec<Loc> = Vec::new();
    let mut content_size: u64 = 0;
    let mut seen = BTreeSet::new();
    let mut modules: BTreeMap<String, Dir> = BTreeMap::new();
    // package -> module -> has resources
    let mut packages: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for r in resources {
        check_name(r.module)?;
        check_name(r.path)?;
        if r.module.contains('/') || r.module == "modules" || r.module == "packages" {
            bail!("jimage module name {:?} cannot be written", r.module);
        }
        let full = format!("/{}/{}", r.module, r.path);
        if !seen.insert(full.clone()) {
            bail!("jimage resource {full} given twice");
        }
        locs.push(Loc::new(
            &full,
            &mut strings,
            content_size,
            r.data.len() as u64,
        ));
        content_size += r.data.len() as u64;
        // the /modules tree and the packages
        let parts: Vec<&str> = r.path.split('/').collect();
        let mut d = modules.entry(r.module.to_string()).or_default();
        for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
            d = d.dirs.entry(p.to_string()).or_default();
            let pkg = parts[..=i].join(".");
            if !pkg.starts_with("META-INF") {
                packages
                    .entry(pkg)
                    .or_default()
                    .entry(r.module.to_string())
                    .or_insert(false);
            }
        }
        if d.files
            .insert(parts[parts.len() - 1].to_string(), full.clone())
            .is_some()
            || d.dirs.contains_key(parts[parts.len() - 1])
        {
            bail!("jimage resource {full} clashes with a directory");
        }
        if parts.len() > 1 {
            let pkg = parts[..parts.len() - 1].join(".");
            if !pkg.starts_with("META-INF") {
                packages
                    .entry(pkg)
                    .or_default()
                    .insert(r.module.to_string(), true);
            }
        }
    }
    for (pkg, mods) in &packages {
        let full: Vec<&String> = mods.iter().filter(|(_, &f)| f).map(|(m, _)| m).collect();
        if full.len() > 1 {
            bail!("package {pkg} has classes in more than one module: {full:?}");
        }
    }

    // Directory locations, in jlink's order: a post-order walk of "/" whose children are
    // "modules" then "packages"; each directory's data follows its children's.
    enum Node<'t> {
        Dir(String, Vec<String>),
        Pkg(String, &'t BTreeMap<String, bool>),
    }
    fn walk(prefix: &str, d: &Dir, out: &mut Vec<Node<'_>>) {
        let mut children: BTreeMap<&str, String> = BTreeMap::new();
        for (name, sub) in &d.dirs {
            let p = format!("{prefix}/{name}");
            walk(&p, sub, out);
            children.insert(name, p);
        }
        for (name, full) in &d.files {
            children.insert(name, full.clone());
        }
        out.push(Node::Dir(
            prefix.to_string(),
            children.into_values().collect(),
        ));
    }
    let mut tree: Vec<Node> = Vec::new();
    let mut module_dirs = Vec::new();
    for (m, d) in &modules {
        let p = format!("/modules/{m}");
        walk(&p, d, &mut tree);
        module_dirs.push(p);
    }
    tree.push(Node::Dir("/modules".into(), module_dirs));
    let mut pkg_names = Vec::new();
    for (pkg, mods) in &packages {
        let p = format!("/packages/{pkg}");
        tree.push(Node::Pkg(p.clone(), mods));
        pkg_names.push(p);
    }
    tree.push(Node::Dir("/packages".into(), pkg_names));
    let mut tree_offset = content_size;
    for n in &tree {
        let (name, size) = match n {
            Node::Dir(name, kids) => (name, kids.len() as u64 * 4),
            Node::Pkg(name, mods) => (name, mods.len() as u64 * 8),
        };
        locs.push(Loc::new(name, &mut strings, tree_offset, size));
        tree_offset += size;
    }
    for m in modules.keys() {
        strings.add(m);
    }

    // the hash table and the location stream
    let names: Vec<&[u8]> = locs.iter().map(|l| l.name.as_bytes()).collect();
    let (redirect, order) = perfect_hash(&names);
    let mut loc_bytes = vec![0u8];
    let mut loc_offset: Vec<u32> = vec![0; locs.len()];
    for i in order.iter().flatten() {
        loc_offset[*i] = loc_bytes.len() as u32;
        locs[*i].encode(&mut loc_bytes);
    }
    let by_name: HashMap<&str, u32> = locs
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), loc_offset[i]))
        .collect();

    let mut out = Vec::with_capacity(
        HEADER_SIZE
            + redirect.len() * 8
            + loc_bytes.len()
            + strings.bytes.len()
            + tree_offset as usize,
    );
    for v in [
        MAGIC,
        1 << 16,
        0,
        locs.len() as u32,
        redirect.len() as u32,
        loc_bytes.len() as u32,
        strings.bytes.len() as u32,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for r in &redirect {
        out.extend_from_slice(&r.to_le_bytes());
    }
    for slot in &order {
        let o = slot.map(|i| loc_offset[i]).unwrap_or(0);
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&loc_bytes);
    out.extend_from_slice(&strings.bytes);
    for r in resources {
        out.extend_from_slice(r.data);
    }
    for n in &tree {
        match n {
            Node::Dir(_, kids) => {
                for k in kids {
                    let o = by_name.get(k.as_str()).context("jimage tree child")?;
                    out.extend_from_slice(&o.to_le_bytes());
                }
            }
            Node::Pkg(_, mods) => {
                for (m, full) in mods.iter() {
                    out.extend_from_slice(&(if *full { 0u32 } else { 1 }).to_le_bytes());
                    out.extend_from_slice(&strings.add(m).to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let a = b"class-bytes-a".to_vec();
        let b = b"bb".to_vec();
        let c = b"module-info".to_vec();
        write(&[
            Resource {
                module: "m.one",
                path: "module-info.class",
                data: &c,
            },
            Resource {
                module: "m.one",
                path: "p/q/A.class",
                data: &a,
            },
            Resource {
                module: "m.two",
                path: "p/B.class",
                data: &b,
            },
            Resource {
                module: "m.two",
                path: "META-INF/x.txt",
                data: &b,
            },
        ])
        .unwrap()
    }

    #[test]
    fn hash_matches_the_jdk_for_a_known_name() {
        // FNV-1 style over bytes with the JDK's multiplier as the seed: computed by hand
        // for "a": (0x01000193 * 0x01000193) ^ 0x61, masked.
        let h = hash(b"a", HASH_MULTIPLIER);
        let expect = (HASH_MULTIPLIER.wrapping_mul(HASH_MULTIPLIER) ^ 0x61) & 0x7FFF_FFFF;
        assert_eq!(h, expect);
    }

    #[test]
    fn round_trip_and_lookup() {
        let img = sample();
        let j = Jimage::parse(&img).unwrap();
        let entries = j.entries().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(
            j.resource("m.one", "p/q/A.class").unwrap().unwrap(),
            b"class-bytes-a"
        );
        assert_eq!(j.resource("m.two", "p/B.class").unwrap().unwrap(), b"bb");
        assert!(j.resource("m.two", "p/q/A.class").unwrap().is_none());
        let names = j.names().unwrap();
        for n in [
            "/modules",
            "/packages",
            "/modules/m.one",
            "/modules/m.one/p/q",
            "/packages/p",
            "/packages/p.q",
            "/m.one/module-info.class",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
            assert!(j.find(n).unwrap().is_some(), "{n} not found by hash");
        }
        assert!(!names.iter().any(|n| n.starts_with("/packages/META-INF")));
        // /packages/p: m.one has it only as a parent (empty), m.two has classes
        let a = j.find("/packages/p").unwrap().unwrap();
        let off = j.index_size() + a[A_OFFSET] as usize;
        let words: Vec<u32> = (0..4).map(|i| u32_at(&img, off + i * 4).unwrap()).collect();
        assert_eq!(words[0], 1);
        assert_eq!(j.string(words[1] as u64).unwrap(), "m.one");
        assert_eq!(words[2], 0);
        assert_eq!(j.string(words[3] as u64).unwrap(), "m.two");
        assert_eq!(sample(), img, "the writer is deterministic");
    }

    #[test]
    fn perfect_hash_places_every_name_once() {
        let names: Vec<String> = (0..5000)
            .map(|i| format!("/m/p{}/C{}.class", i % 37, i))
            .collect();
        let refs: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        let (redirect, order) = perfect_hash(&refs);
        let mut seen = vec![false; names.len()];
        for o in order.iter().flatten() {
            assert!(!seen[*o]);
            seen[*o] = true;
        }
        assert!(seen.iter().all(|s| *s));
        let n = redirect.len() as u32;
        for (i, name) in refs.iter().enumerate() {
            let r = redirect[(hash(name, HASH_MULTIPLIER) % n) as usize];
            let idx = if r < 0 {
                (-1 - r) as usize
            } else {
                (hash(name, r as u32) % n) as usize
            };
            assert_eq!(order[idx], Some(i));
        }
    }

    #[test]
    fn rejects_garbage_and_clashes() {
        assert!(Jimage::parse(b"not an image at all, really not one").is_err());
        let mut img = sample();
        img[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Jimage::parse(&img).is_err());
        let d = b"x".to_vec();
        let dup = [
            Resource {
                module: "m",
                path: "a/B.class",
                data: &d,
            },
            Resource {
                module: "m",
                path: "a/B.class",
                data: &d,
            },
        ];
        assert!(write(&dup).is_err());
        let split = [
            Resource {
                module: "m",
                path: "a/B.class",
                data: &d,
            },
            Resource {
                module: "n",
                path: "a/C.class",
                data: &d,
            },
        ];
        let e = write(&split).unwrap_err().to_string();
        assert!(e.contains("package a"), "{e}");
    }
}
