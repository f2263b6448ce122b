//! The reproducibility proof of `fuse build --verify`: two builds of the same inputs compared
//! byte for byte and, when they differ, where: the first differing partition (layers first,
//! in disk order, since a layer's change also changes the ESP's image.json; then the ESP;
//! else the partition table), and within it the first differing files, read back from the
//! partitions' own file systems and compared with inspect's file diff.

use crate::disk::{file_list, ESP_PARTITION_NAME};
use crate::format::{fat, gpt, squashfs};
use crate::inspect::diff::diff_files;
use crate::tree::Tree;
use anyhow::{Context, Result};
use serde::Serialize;

/// How many differing files are named.
pub const MAX_FILES: usize = 10;

/// One differing path and what differs about it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileDifference {
    /// Absolute path inside the partition's file system.
    pub path: String,
    /// "only in the first build", "only in the second build", or the attributes that
    /// differ: any of type, mode, uid, gid, size, sha256, target, mtime.
    pub what: String,
}

/// Where two images first differ.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// The GPT partition name (`fuse-app`, `fuse-esp`), or `gpt` when only the partition
    /// table and headers differ.
    pub partition: String,
    /// The layer's name when the partition is a layer.
    pub layer: Option<String>,
    /// The first differing files (at most [`MAX_FILES`]).
    pub files: Vec<FileDifference>,
    /// How many files differ in all.
    pub file_count: usize,
    /// Every partition that differs, in the order above.
    pub partitions: Vec<String>,
    /// One line for people.
    pub summary: String,
}

fn partitions(disk: &[u8]) -> Result<Vec<(String, &[u8])>> {
    let info = gpt::read_disk(disk).context("cannot read the GPT")?;
    info.partitions
        .iter()
        .map(|p| {
            let bytes = disk
                .get(p.byte_range())
                .with_context(|| format!("partition {} beyond the end of the disk", p.name))?;
            Ok((p.name.clone(), bytes))
        })
        .collect()
}

/// Paths that differ between two trees: entries (type, mode, owner, size, content, target)
/// by inspect's file diff, then modification times.
pub fn tree_differences(a: &Tree, b: &Tree) -> Vec<FileDifference> {
    let d = diff_files(&file_list(a), &file_list(b));
    let mut out: Vec<FileDifference> = Vec::new();
    for f in &d.removed {
        out.push(FileDifference {
            path: f.path.clone(),
            what: "only in the first build".into(),
        });
    }
    for f in &d.added {
        out.push(FileDifference {
            path: f.path.clone(),
            what: "only in the second build".into(),
        });
    }
    for f in &d.modified {
        out.push(FileDifference {
            path: f.path.clone(),
            what: f.changed.join(", "),
        });
    }
    for (path, n) in a.iter() {
        if let Some(m) = b.get(path) {
            if n.mtime != m.mtime {
                let p = format!("/{path}");
                match out.iter_mut().find(|f| f.path == p) {
                    Some(f) => f.what.push_str(", mtime"),
                    None => out.push(FileDifference {
                        path: p,
                        what: "mtime".into(),
                    }),
                }
            }
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

/// The file tree of a partition: squashfs for layers, FAT for the ESP.
fn read_tree(name: &str, bytes: &[u8]) -> Result<Tree> {
    if name == ESP_PARTITION_NAME {
        fat::read(bytes).with_context(|| format!("cannot read the FAT of {name}"))
    } else {
        squashfs::read(bytes).with_context(|| format!("cannot read the squashfs of {name}"))
    }
}

/// Compare two builds' images. `None` when the bytes are identical.
pub fn compare(a: &[u8], b: &[u8]) -> Result<Option<Difference>> {
    if a == b {
        return Ok(None);
    }
    let pa = partitions(a).context("the first build")?;
    let pb = partitions(b).context("the second build")?;
    let mut differing: Vec<String> = Vec::new();
    for (name, bytes) in &pa {
        match pb.iter().find(|(n, _)| n == name) {
            Some((_, other)) if other == bytes => {}
            _ => differing.push(name.clone()),
        }
    }
    for (name, _) in &pb {
        if !pa.iter().any(|(n, _)| n == name) {
            differing.push(name.clone());
        }
    }
    // Layers first (their change is the cause, the ESP's image.json the consequence).
    differing.sort_by_key(|n| n == ESP_PARTITION_NAME);
    let Some(first) = differing.first().cloned() else {
        return Ok(Some(Difference {
            partition: "gpt".into(),
            layer: None,
            files: Vec::new(),
            file_count: 0,
            partitions: Vec::new(),
            summary: "every partition is identical; the partition table or headers differ".into(),
        }));
    };
    let layer = (first != ESP_PARTITION_NAME)
        .then(|| first.strip_prefix("fuse-").unwrap_or(&first).to_string());
    let side = |p: &[(String, &[u8])]| p.iter().find(|(n, _)| *n == first).map(|(_, b)| b.to_vec());
    let (files, note) = match (side(&pa), side(&pb)) {
        (Some(x), Some(y)) => match (read_tree(&first, &x), read_tree(&first, &y)) {
            (Ok(ta), Ok(tb)) => {
                let f = tree_differences(&ta, &tb);
                let note = if f.is_empty() {
                    "the same files, but different file-system bytes (the writer is not deterministic)".to_string()
                } else {
                    String::new()
                };
                (f, note)
            }
            (Err(e), _) | (_, Err(e)) => (Vec::new(), format!("{e:#}")),
        },
        (None, _) => (Vec::new(), "only in the second build".into()),
        (_, None) => (Vec::new(), "only in the first build".into()),
    };
    let what = match &layer {
        Some(l) => format!("layer {l} (partition {first})"),
        None => format!("partition {first}"),
    };
    let mut summary = format!("{what} differs");
    if !files.is_empty() {
        let named: Vec<String> = files
            .iter()
            .take(3)
            .map(|f| format!("{} ({})", f.path, f.what))
            .collect();
        summary.push_str(&format!(
            ": {} file(s) differ, first {}",
            files.len(),
            named.join(", ")
        ));
    }
    if !note.is_empty() {
        summary.push_str(&format!(": {note}"));
    }
    Ok(Some(Difference {
        partition: first,
        layer,
        file_count: files.len(),
        files: files.into_iter().take(MAX_FILES).collect(),
        partitions: differing,
        summary,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn tree_differences_name_content_mode_mtime_and_one_sided_paths() {
        let mut a = Tree::new();
        a.insert("app/hello", Node::file(b"one".to_vec(), 0o755))
            .unwrap();
        a.insert("app/same", Node::file(b"same".to_vec(), 0o644))
            .unwrap();
        a.insert("app/gone", Node::file(b"x".to_vec(), 0o644))
            .unwrap();
        a.insert("etc/t", Node::file(b"t".to_vec(), 0o644)).unwrap();
        let mut b = a.clone();
        b.insert("app/hello", Node::file(b"two".to_vec(), 0o700))
            .unwrap();
        b.remove("app/gone");
        b.insert("app/new", Node::symlink("hello")).unwrap();
        let mut t = Node::file(b"t".to_vec(), 0o644);
        t.mtime = 7;
        b.insert("etc/t", t).unwrap();
        let d = tree_differences(&a, &b);
        let find = |p: &str| d.iter().find(|f| f.path == p).map(|f| f.what.clone());
        assert_eq!(
            find("/app/gone").as_deref(),
            Some("only in the first build")
        );
        assert_eq!(
            find("/app/new").as_deref(),
            Some("only in the second build")
        );
        let hello = find("/app/hello").unwrap();
        assert!(
            hello.contains("sha256") && hello.contains("mode"),
            "{hello}"
        );
        assert_eq!(find("/etc/t").as_deref(), Some("mtime"));
        assert_eq!(find("/app/same"), None);
        assert_eq!(d.len(), 4);
        assert!(tree_differences(&a, &a).is_empty());
    }

    #[test]
    fn identical_images_compare_equal() {
        assert_eq!(compare(b"same", b"same").unwrap(), None);
    }
}
