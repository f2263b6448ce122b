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

/// A file tree, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

/// Normalise a path: strip leading `/` and `./`, collapse `//`, drop `.`;
/// refuse `..` and empty paths (an escape from the tree is always an error).
pub fn normalize(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => continue,
            ".." => bail!("path {path:?} escapes the tree (contains \"..\")"),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        bail!("empty path {path:?}");
    }
    Ok(parts.join("/"))
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Insert (or replace) `path`, creating missing parents as 0755 root-owned
    /// directories with the node's mtime. A parent that exists but is not a
    /// directory is an error.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let path = normalize(path)?;
        let mut idx = 0;
        while let Some(pos) = path[idx..].find('/') {
            let parent = &path[..idx + pos];
            match self.entries.get(parent) {
                Some(n) if n.kind != Kind::Dir => {
                    bail!("cannot insert {path:?}: parent {parent:?} is not a directory")
                }
                Some(_) => {}
                None => {
                    let mut d = Node::dir(0o755);
                    d.mtime = node.mtime;
                    self.entries.insert(parent.to_string(), d);
                }
            }
            idx += pos + 1;
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
                    bail!("cannot replace non-empty directory {path:?} with a non-directory");
                }
            }
        }
        self.entries.insert(path, node);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    pub fn remove(&mut self, path: &str) -> Option<Node> {
        normalize(path).ok().and_then(|p| self.entries.remove(&p))
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

    /// Set every mtime to min(mtime, epoch): the reproducibility clamp.
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
}
