//! In-memory file trees: the one canonical input every file-system writer consumes.
//!
//! A [`Tree`] maps normalised relative paths (`usr/lib/x`, no leading `/`, no `.`
//! or `..` components, no empty components) to [`Node`]s. The root directory is
//! implicit (mode 0755, uid/gid 0). Parents are created on insert, so a tree is
//! always closed under "parent of". Iteration is sorted by path bytes (BTreeMap),
//! which is what makes every writer deterministic.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a path holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// Regular file contents (shared, cheap to clone).
    File(Arc<Vec<u8>>),
    /// Symbolic link; the target is stored verbatim.
    Symlink(String),
    /// Character device (e.g. /dev/console is 5:1).
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// One entry of a tree: what it holds plus its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits only (e.g. 0o755); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; writers store it as is (callers clamp it).
    pub mtime: u64,
}

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
    pub fn file(data: impl Into<Vec<u8>>, mode: u32) -> Node {
        Node {
            kind: Kind::File(Arc::new(data.into())),
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
    pub fn symlink(target: impl Into<String>) -> Node {
        Node {
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
    pub fn char_dev(major: u32, minor: u32, mode: u32) -> Node {
        Node {
            kind: Kind::CharDev { major, minor },
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
    /// The full st_mode: file-type bits | permission bits.
    pub fn st_mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
        };
        ty | (self.mode & 0o7777)
    }
    /// Size in bytes as `stat` would report it (files: length, symlinks: target length, else 0).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.len() as u64,
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }
    pub fn data(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::File(d) => Some(d.as_slice()),
            _ => None,
        }
    }
}

/// Longest normalised path accepted, in bytes (Linux's PATH_MAX less its NUL): no file
/// system fuse writes or reads can hold a longer one usefully, and it bounds the work of
/// every path comparison.
pub const MAX_PATH: usize = 4095;
/// Deepest nesting accepted (components of a path).
pub const MAX_DEPTH: usize = 256;
/// Most entries in one tree (a Debian layer holds thousands; a large node app 100k).
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most bytes of paths in one tree, all entries together.
pub const MAX_PATH_BYTES: usize = 256 << 20;

/// A file tree, sorted by path.
///
/// Bounded: [`MAX_PATH`], [`MAX_DEPTH`], [`MAX_ENTRIES`] and [`MAX_PATH_BYTES`] hold for
/// every tree, so a reader of untrusted bytes (squashfs, FAT, tar, cpio, a directory walk)
/// that builds one cannot be made to take time or memory beyond them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
    /// Sum of the lengths of the keys of `entries` (a function of them, so equality holds).
    path_bytes: usize,
}

/// Normalise a path: strip leading `/` and `./`, collapse `//`, drop `.`;
/// refuse `..` and empty paths (an escape from the tree is always an error), and paths
/// longer than [`MAX_PATH`] bytes or deeper than [`MAX_DEPTH`].
pub fn normalize(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => continue,
            ".." => bail!(
                "path {:?} escapes the tree (contains \"..\")",
                shorten(path)
            ),
            c => parts.push(c),
        }
        if parts.len() > MAX_DEPTH {
            bail!(
                "path {:?} is nested deeper than {MAX_DEPTH} directories",
                shorten(path)
            );
        }
    }
    if parts.is_empty() {
        bail!("empty path {path:?}");
    }
    let p = parts.join("/");
    if p.len() > MAX_PATH {
        bail!(
            "path {:?} is {} bytes long (at most {MAX_PATH})",
            shorten(&p),
            p.len()
        );
    }
    Ok(p)
}

/// The start and end of a long path, for messages.
fn shorten(p: &str) -> String {
    if p.len() <= 200 {
        return p.to_string();
    }
    let mut a = 80;
    while !p.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = p.len() - 80;
    while !p.is_char_boundary(b) {
        b += 1;
    }
    format!("{}...{} ({} bytes)", &p[..a], &p[b..], p.len())
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Insert (or replace) `path`, creating missing parents as 0755 root-owned
    /// directories with the node's mtime. A parent that exists but is not a
    /// directory is an error.
    ///
    /// The tree is closed under "parent of", so only the nearest existing ancestor is
    /// looked up (the parent, when entries come parents first as every reader gives
    /// them): one map lookup, not one per component.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let path = normalize(path)?;
        // Ancestors from the nearest up, until one exists.
        let mut missing: Vec<usize> = Vec::new();
        let mut end = path.len();
        while let Some(pos) = path[..end].rfind('/') {
            let parent = &path[..pos];
            match self.entries.get(parent) {
                Some(n) if n.kind != Kind::Dir => {
                    bail!(
                        "cannot insert {:?}: parent {:?} is not a directory",
                        shorten(&path),
                        shorten(parent)
                    )
                }
                Some(_) => break,
                None => missing.push(pos),
            }
            end = pos;
        }
        let new_keys = missing.len() + usize::from(!self.entries.contains_key(&path));
        let new_bytes: usize = missing.iter().sum::<usize>() + path.len();
        if self.entries.len() + new_keys > MAX_ENTRIES {
            bail!(
                "cannot insert {:?}: a tree holds at most {MAX_ENTRIES} entries",
                shorten(&path)
            );
        }
        if self.path_bytes.saturating_add(new_bytes) > MAX_PATH_BYTES {
            bail!(
                "cannot insert {:?}: the paths of a tree total at most {MAX_PATH_BYTES} bytes",
                shorten(&path)
            );
        }
        if let Some(old) = self.entries.get(&path) {
            if old.kind == Kind::Dir && node.kind == Kind::Dir {
                // Re-inserting a directory updates its metadata only.
            } else if old.kind == Kind::Dir {
                let prefix = format!("{path}/");
                if self
                    .entries
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix))
                {
                    bail!(
                        "cannot replace non-empty directory {:?} with a non-directory",
                        shorten(&path)
                    );
                }
            }
        }
        for pos in missing.into_iter().rev() {
            let mut d = Node::dir(0o755);
            d.mtime = node.mtime;
            self.path_bytes += pos;
            self.entries.insert(path[..pos].to_string(), d);
        }
        let len = path.len();
        if self.entries.insert(path, node).is_none() {
            self.path_bytes += len;
        }
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Remove `path`; a directory goes with everything under it (the tree stays closed
    /// under "parent of").
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let p = normalize(path).ok()?;
        let node = self.entries.remove(&p)?;
        self.path_bytes -= p.len();
        if node.kind == Kind::Dir {
            let prefix = format!("{p}/");
            let under: Vec<String> = self
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in under {
                self.path_bytes -= k.len();
                self.entries.remove(&k);
            }
        }
        Some(node)
    }

    /// All entries, sorted by path bytes. The implicit root is not included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Mutable access to every node (e.g. to clamp mtimes).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Node)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// Direct children of directory `dir` ("" for the root), sorted by name,
    /// as (name, full path, node).
    pub fn children<'a>(&'a self, dir: &str) -> Vec<(&'a str, &'a str, &'a Node)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, v)| (&k[prefix.len()..], k.as_str(), v))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copy every entry of `other` into this tree (later wins).
    pub fn merge(&mut self, other: &Tree) -> Result<()> {
        for (p, n) in other.iter() {
            self.insert(p, n.clone())?;
        }
        Ok(())
    }

    /// Tests only: add an entry with none of the limits checked (the caller adds parents
    /// first), to write hostile images that readers must refuse.
    #[cfg(test)]
    pub(crate) fn insert_unchecked(&mut self, path: String, node: Node) {
        self.path_bytes += path.len();
        self.entries.insert(path, node);
    }

    /// Set every mtime to min(mtime, epoch): the reproducibility clamp.
    #[cfg(test)]
    pub fn clamp_mtimes(&mut self, epoch: u64) {
        for n in self.entries.values_mut() {
            n.mtime = n.mtime.min(epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_creates_parents_and_sorts() {
        let mut t = Tree::new();
        t.insert("/usr/bin/app", Node::file(b"x".to_vec(), 0o755))
            .unwrap();
        t.insert("etc/hosts", Node::file(b"h".to_vec(), 0o644))
            .unwrap();
        let paths: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["etc", "etc/hosts", "usr", "usr/bin", "usr/bin/app"]);
        assert_eq!(t.get("usr").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn refuses_escapes() {
        let mut t = Tree::new();
        assert!(t.insert("a/../../etc/passwd", Node::dir(0o755)).is_err());
        assert!(t.insert("/", Node::dir(0o755)).is_err());
    }

    #[test]
    fn children_lists_direct_entries_only() {
        let mut t = Tree::new();
        t.insert("a/b/c", Node::file(Vec::new(), 0o644)).unwrap();
        t.insert("a/d", Node::symlink("b")).unwrap();
        t.insert("ab", Node::dir(0o755)).unwrap();
        let names: Vec<&str> = t.children("a").iter().map(|c| c.0).collect();
        assert_eq!(names, ["b", "d"]);
        let root: Vec<&str> = t.children("").iter().map(|c| c.0).collect();
        assert_eq!(root, ["a", "ab"]);
    }

    #[test]
    fn file_under_file_is_an_error() {
        let mut t = Tree::new();
        t.insert("a", Node::file(Vec::new(), 0o644)).unwrap();
        assert!(t.insert("a/b", Node::file(Vec::new(), 0o644)).is_err());
    }

    #[test]
    fn deep_long_and_huge_trees_are_refused() {
        let mut t = Tree::new();
        let deep = vec!["d"; MAX_DEPTH].join("/");
        t.insert(&deep, Node::dir(0o755)).unwrap();
        assert_eq!(t.len(), MAX_DEPTH);
        let e = format!(
            "{:#}",
            t.insert(&format!("{deep}/x"), Node::dir(0o755))
                .unwrap_err()
        );
        assert!(e.contains("deeper than 256"), "{e}");
        let long = format!("{}/{}", "a".repeat(255), "b".repeat(MAX_PATH));
        let e = format!("{:#}", t.insert(&long, Node::dir(0o755)).unwrap_err());
        assert!(e.contains("at most 4095"), "{e}");
        // The error names the path without printing all of it.
        assert!(e.len() < 400, "{e}");
        let mut t = Tree::new();
        for i in 0..MAX_ENTRIES {
            t.insert_unchecked(format!("f{i}"), Node::dir(0o755));
        }
        let e = format!("{:#}", t.insert("one-more", Node::dir(0o755)).unwrap_err());
        assert!(e.contains("at most 1048576 entries"), "{e}");
        // Replacing an entry adds none.
        t.insert("f7", Node::file(b"x".to_vec(), 0o644)).unwrap();
    }

    #[test]
    fn path_bytes_are_bounded_and_counted() {
        let mut t = Tree::new();
        t.insert("abc", Node::dir(0o755)).unwrap();
        t.path_bytes = MAX_PATH_BYTES - 10;
        let e = format!(
            "{:#}",
            t.insert("abc/defghij", Node::dir(0o755)).unwrap_err()
        );
        assert!(e.contains("total at most"), "{e}");
        t.insert("abc/def", Node::dir(0o755)).unwrap();
        assert_eq!(t.path_bytes, MAX_PATH_BYTES - 3);
        // Removing frees the budget.
        t.remove("abc").unwrap();
        assert_eq!(t.path_bytes, MAX_PATH_BYTES - 13);
    }

    #[test]
    fn removing_a_directory_removes_what_is_under_it() {
        let mut t = Tree::new();
        t.insert("a/b/c", Node::file(Vec::new(), 0o644)).unwrap();
        t.insert("ab", Node::dir(0o755)).unwrap();
        t.insert("a/bc", Node::dir(0o755)).unwrap();
        assert_eq!(t.remove("a/b").unwrap().kind, Kind::Dir);
        let paths: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["a", "a/bc", "ab"]);
        t.insert("a/b/c/d", Node::dir(0o755)).unwrap();
        assert_eq!(t.get("a/b").unwrap().kind, Kind::Dir);
        let expect: usize = t.iter().map(|(p, _)| p.len()).sum();
        assert_eq!(t.path_bytes, expect);
    }

    /// The defect: a chain of nested directories took time cubic in its depth (every
    /// insert compared every parent path). Now each insert of a child of an existing
    /// directory looks up the parent once; a chain at the depth limit builds at once, and
    /// inserting the whole chain as one path creates each missing parent once.
    #[test]
    fn insert_looks_up_only_the_nearest_existing_ancestor() {
        let mut t = Tree::new();
        let mut p = String::from("d");
        t.insert(&p, Node::dir(0o755)).unwrap();
        for _ in 1..MAX_DEPTH {
            p.push_str("/d");
            t.insert(&p, Node::dir(0o700)).unwrap();
        }
        assert_eq!(t.len(), MAX_DEPTH);
        assert!(t.iter().skip(1).all(|(_, n)| n.mode == 0o700));
        let mut u = Tree::new();
        u.insert(&p, Node::dir(0o700)).unwrap();
        assert_eq!(u.len(), MAX_DEPTH);
        assert_eq!(u.get("d/d").unwrap().mode, 0o755);
    }
}
