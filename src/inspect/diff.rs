//! What changed between two images, from their image.json (both verified against their
//! bytes first): layer by layer (digest, size, packages, files), the kernel and its command
//! line, the boot files, the app's entrypoint and environment, the build inputs, the sizes.
//! Pure; every list is sorted, so the JSON form is stable for scripts.

use crate::disk::{FileMeta, ImageMeta, LayerMeta};
use crate::layers::PackageRef;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One side of a comparison.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    /// The file as named on the command line.
    pub file: String,
    pub digest: String,
    pub size: u64,
    pub name: String,
    pub version: String,
}

/// A scalar field that differs (`from`/`to` are null when absent on that side).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// A package whose version (or bytes) changed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    pub arch: String,
    pub from: String,
    pub to: String,
    /// The .deb's sha256 on each side (a changed sha256 with the same version is a rebuild).
    pub from_sha256: String,
    pub to_sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PackageDiff {
    pub added: Vec<PackageRef>,
    pub removed: Vec<PackageRef>,
    pub changed: Vec<PackageChange>,
}

impl PackageDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
    pub fn count(&self) -> usize {
        self.added.len() + self.removed.len() + self.changed.len()
    }
}

/// A path present on one side only.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
}

/// A path on both sides whose entry differs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub from_size: u64,
    pub to_size: u64,
    pub size_delta: i64,
    /// Which attributes differ: any of type, mode, uid, gid, size, sha256, target.
    pub changed: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FileDiff {
    pub added: Vec<FileEntry>,
    pub removed: Vec<FileEntry>,
    pub modified: Vec<FileChange>,
}

impl FileDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
    pub fn count(&self) -> usize {
        self.added.len() + self.removed.len() + self.modified.len()
    }
}

/// A layer on one side.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LayerSide {
    pub partition: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unchanged,
    Changed,
    Added,
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::Added => "added",
            Status::Removed => "removed",
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LayerDiff {
    pub name: String,
    pub status: Status,
    pub from: Option<LayerSide>,
    pub to: Option<LayerSide>,
    pub size_delta: i64,
    pub packages: PackageDiff,
    pub files: FileDiff,
    /// JDK modules of a Java runtime layer added and removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub java_modules_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub java_modules_removed: Vec<String>,
}

/// (added, removed) between two sorted module lists.
fn diff_modules(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    (
        new.iter().filter(|m| !old.contains(m)).cloned().collect(),
        old.iter().filter(|m| !new.contains(m)).cloned().collect(),
    )
}

/// A section made of scalar fields (kernel, boot, app).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Section {
    pub changed: bool,
    pub fields: Vec<FieldChange>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelDiff {
    pub changed: bool,
    /// package, version, release, cmdline
    pub fields: Vec<FieldChange>,
    pub modules_added: Vec<String>,
    pub modules_removed: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EnvChange {
    pub name: String,
    /// null when the variable is new
    pub from: Option<String>,
    /// null when the variable was removed
    pub to: Option<String>,
}

/// A package of the container's own databases (image.json `app.container.packages`)
/// added, removed or at another version.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ContainerPackageChange {
    /// `deb` or `apk`
    pub kind: String,
    pub name: String,
    pub arch: String,
    /// null when the package is new
    pub from: Option<String>,
    /// null when the package was removed
    pub to: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AppDiff {
    pub changed: bool,
    /// kind, argv (the entrypoint), workdir, uid, gid, port, health_http
    pub fields: Vec<FieldChange>,
    pub env: Vec<EnvChange>,
    /// Kind oci: what the container's package databases list, by (kind, name, arch).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_packages: Vec<ContainerPackageChange>,
}

/// The container packages of two images' image.json, keyed by (kind, name, arch).
pub fn diff_container_packages(a: &ImageMeta, b: &ImageMeta) -> Vec<ContainerPackageChange> {
    let of = |m: &ImageMeta| -> BTreeMap<(String, String, String), String> {
        m.app
            .container
            .iter()
            .flat_map(|c| &c.packages)
            .flat_map(|db| {
                db.installed.iter().map(|p| {
                    (
                        (db.kind.clone(), p.name.clone(), p.arch.clone()),
                        p.version.clone(),
                    )
                })
            })
            .collect()
    };
    let (pa, pb) = (of(a), of(b));
    let keys: BTreeSet<&(String, String, String)> = pa.keys().chain(pb.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (from, to) = (pa.get(k), pb.get(k));
            (from != to).then(|| ContainerPackageChange {
                kind: k.0.clone(),
                name: k.1.clone(),
                arch: k.2.clone(),
                from: from.cloned(),
                to: to.cloned(),
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct SizeChange {
    pub from: u64,
    pub to: u64,
    pub delta: i64,
}

impl SizeChange {
    fn new(from: u64, to: u64) -> SizeChange {
        SizeChange {
            from,
            to,
            delta: delta(from, to),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Sizes {
    /// The raw disk.
    pub disk: SizeChange,
    /// The sum of the layers' file systems.
    pub layers: SizeChange,
    /// The UKI (kernel + initramfs + command line).
    pub uki: SizeChange,
}

/// Everything that differs between two images.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageDiff {
    pub identical: bool,
    /// How many changes are listed below (0 when identical).
    pub differences: usize,
    pub old: Side,
    pub new: Side,
    /// name, version
    pub image: Vec<FieldChange>,
    pub layers: Vec<LayerDiff>,
    pub kernel: KernelDiff,
    pub boot: Section,
    pub app: AppDiff,
    /// manifest_sha256, lock_sha256, app_sha256, fuse_version, source_epoch, distribution,
    /// archive_date
    pub inputs: Vec<FieldChange>,
    pub size: Sizes,
    /// Remarks that fit nowhere else (e.g. bytes differ that image.json does not describe).
    pub notes: Vec<String>,
}

fn delta(from: u64, to: u64) -> i64 {
    (to as i128 - from as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn field<T: Serialize + PartialEq>(out: &mut Vec<FieldChange>, name: &str, from: &T, to: &T) {
    if from != to {
        out.push(FieldChange {
            field: name.into(),
            from: serde_json::to_value(from).unwrap_or(Value::Null),
            to: serde_json::to_value(to).unwrap_or(Value::Null),
        });
    }
}

/// Packages keyed by (name, arch).
pub fn diff_packages(from: &[PackageRef], to: &[PackageRef]) -> PackageDiff {
    let key = |p: &PackageRef| (p.name.clone(), p.arch.clone());
    let a: BTreeMap<_, &PackageRef> = from.iter().map(|p| (key(p), p)).collect();
    let b: BTreeMap<_, &PackageRef> = to.iter().map(|p| (key(p), p)).collect();
    let mut d = PackageDiff::default();
    for (k, p) in &b {
        match a.get(k) {
            None => d.added.push((*p).clone()),
            Some(o) if o.version != p.version || o.sha256 != p.sha256 => {
                d.changed.push(PackageChange {
                    name: p.name.clone(),
                    arch: p.arch.clone(),
                    from: o.version.clone(),
                    to: p.version.clone(),
                    from_sha256: o.sha256.clone(),
                    to_sha256: p.sha256.clone(),
                })
            }
            _ => {}
        }
    }
    for (k, p) in &a {
        if !b.contains_key(k) {
            d.removed.push((*p).clone());
        }
    }
    d
}

/// Files keyed by path.
pub fn diff_files(from: &[FileMeta], to: &[FileMeta]) -> FileDiff {
    let a: BTreeMap<&str, &FileMeta> = from.iter().map(|f| (f.path.as_str(), f)).collect();
    let b: BTreeMap<&str, &FileMeta> = to.iter().map(|f| (f.path.as_str(), f)).collect();
    let entry = |f: &FileMeta| FileEntry {
        path: f.path.clone(),
        kind: f.kind.clone(),
        size: f.size,
    };
    let mut d = FileDiff::default();
    for (p, f) in &b {
        match a.get(p) {
            None => d.added.push(entry(f)),
            Some(o) => {
                let mut changed = Vec::new();
                for (name, differs) in [
                    ("type", o.kind != f.kind),
                    ("mode", o.mode != f.mode),
                    ("uid", o.uid != f.uid),
                    ("gid", o.gid != f.gid),
                    ("size", o.size != f.size),
                    ("sha256", o.sha256 != f.sha256),
                    ("target", o.target != f.target),
                ] {
                    if differs {
                        changed.push(name.to_string());
                    }
                }
                if !changed.is_empty() {
                    d.modified.push(FileChange {
                        path: f.path.clone(),
                        kind: f.kind.clone(),
                        from_size: o.size,
                        to_size: f.size,
                        size_delta: delta(o.size, f.size),
                        changed,
                    });
                }
            }
        }
    }
    for (p, f) in &a {
        if !b.contains_key(p) {
            d.removed.push(entry(f));
        }
    }
    d
}

fn layer_side(l: &LayerMeta) -> LayerSide {
    LayerSide {
        partition: l.partition.clone(),
        digest: l.digest.clone(),
        size: l.size,
    }
}

fn diff_layers(old: &[LayerMeta], new: &[LayerMeta]) -> Vec<LayerDiff> {
    let mut out = Vec::new();
    for l in new {
        match old.iter().find(|o| o.name == l.name) {
            Some(o) => {
                let same = o.digest == l.digest;
                let (java_modules_added, java_modules_removed) =
                    diff_modules(&o.java_modules, &l.java_modules);
                out.push(LayerDiff {
                    name: l.name.clone(),
                    status: if same {
                        Status::Unchanged
                    } else {
                        Status::Changed
                    },
                    from: Some(layer_side(o)),
                    to: Some(layer_side(l)),
                    size_delta: delta(o.size, l.size),
                    packages: diff_packages(&o.packages, &l.packages),
                    files: diff_files(&o.files, &l.files),
                    java_modules_added,
                    java_modules_removed,
                })
            }
            None => out.push(LayerDiff {
                name: l.name.clone(),
                status: Status::Added,
                from: None,
                to: Some(layer_side(l)),
                size_delta: delta(0, l.size),
                packages: diff_packages(&[], &l.packages),
                files: diff_files(&[], &l.files),
                java_modules_added: l.java_modules.clone(),
                java_modules_removed: Vec::new(),
            }),
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|l| l.name == o.name)) {
        out.push(LayerDiff {
            name: o.name.clone(),
            status: Status::Removed,
            from: Some(layer_side(o)),
            to: None,
            size_delta: delta(o.size, 0),
            packages: diff_packages(&o.packages, &[]),
            files: diff_files(&o.files, &[]),
            java_modules_added: Vec::new(),
            java_modules_removed: o.java_modules.clone(),
        });
    }
    out
}

fn package_label(p: &PackageRef) -> String {
    format!("{} {}", p.name, p.version)
}

/// Compare two images. `old`/`new` name them; `a`/`b` are their verified metadata (with
/// `digest` and `disk_size` filled in).
pub fn diff(old_file: &str, a: &ImageMeta, new_file: &str, b: &ImageMeta) -> ImageDiff {
    let side = |file: &str, m: &ImageMeta| Side {
        file: file.into(),
        digest: m.digest.clone().unwrap_or_default(),
        size: m.disk_size.unwrap_or(0),
        name: m.name.clone(),
        version: m.version.clone(),
    };
    let identical = a.digest.is_some() && a.digest == b.digest;

    let mut image = Vec::new();
    field(&mut image, "name", &a.name, &b.name);
    field(&mut image, "version", &a.version, &b.version);
    field(&mut image, "format", &a.format, &b.format);

    let mut kernel = KernelDiff::default();
    field(
        &mut kernel.fields,
        "package",
        &package_label(&a.kernel.package),
        &package_label(&b.kernel.package),
    );
    if a.kernel.package.name == b.kernel.package.name
        && a.kernel.package.version == b.kernel.package.version
    {
        field(
            &mut kernel.fields,
            "package_sha256",
            &a.kernel.package.sha256,
            &b.kernel.package.sha256,
        );
    }
    field(
        &mut kernel.fields,
        "release",
        &a.kernel.release,
        &b.kernel.release,
    );
    field(
        &mut kernel.fields,
        "cmdline",
        &a.kernel.cmdline,
        &b.kernel.cmdline,
    );
    let ma: BTreeSet<&String> = a.kernel.modules.iter().collect();
    let mb: BTreeSet<&String> = b.kernel.modules.iter().collect();
    kernel.modules_added = mb.difference(&ma).map(|s| s.to_string()).collect();
    kernel.modules_removed = ma.difference(&mb).map(|s| s.to_string()).collect();
    kernel.changed = !kernel.fields.is_empty()
        || !kernel.modules_added.is_empty()
        || !kernel.modules_removed.is_empty();

    let mut boot = Section::default();
    field(
        &mut boot.fields,
        "stub",
        &package_label(&a.boot.stub),
        &package_label(&b.boot.stub),
    );
    field(
        &mut boot.fields,
        "uki_sha256",
        &a.boot.uki_sha256,
        &b.boot.uki_sha256,
    );
    field(
        &mut boot.fields,
        "uki_size",
        &a.boot.uki_size,
        &b.boot.uki_size,
    );
    field(
        &mut boot.fields,
        "initramfs_sha256",
        &a.boot.initramfs_sha256,
        &b.boot.initramfs_sha256,
    );
    field(
        &mut boot.fields,
        "initramfs_size",
        &a.boot.initramfs_size,
        &b.boot.initramfs_size,
    );
    field(
        &mut boot.fields,
        "esp_size",
        &a.boot.esp_size,
        &b.boot.esp_size,
    );
    boot.changed = !boot.fields.is_empty();

    let mut app = AppDiff::default();
    field(&mut app.fields, "arch", &a.arch, &b.arch);
    field(&mut app.fields, "kind", &a.app.kind, &b.app.kind);
    field(&mut app.fields, "argv", &a.app.argv, &b.app.argv);
    field(&mut app.fields, "workdir", &a.app.workdir, &b.app.workdir);
    field(&mut app.fields, "uid", &a.app.uid, &b.app.uid);
    field(&mut app.fields, "gid", &a.app.gid, &b.app.gid);
    field(&mut app.fields, "port", &a.app.port, &b.app.port);
    field(
        &mut app.fields,
        "container",
        &a.app.container.as_ref().map(|c| &c.manifest_digest),
        &b.app.container.as_ref().map(|c| &c.manifest_digest),
    );
    field(
        &mut app.fields,
        "health_http",
        &a.app.health_http,
        &b.app.health_http,
    );
    field(
        &mut app.fields,
        "stop_timeout",
        &a.app.stop_timeout,
        &b.app.stop_timeout,
    );
    field(
        &mut app.fields,
        "stop_signal",
        &a.app.stop_signal,
        &b.app.stop_signal,
    );
    field(
        &mut app.fields,
        "writable",
        &a.app.writable,
        &b.app.writable,
    );
    let names: BTreeSet<&String> = a.app.env.keys().chain(b.app.env.keys()).collect();
    for n in names {
        let (from, to) = (a.app.env.get(n), b.app.env.get(n));
        if from != to {
            app.env.push(EnvChange {
                name: n.clone(),
                from: from.cloned(),
                to: to.cloned(),
            });
        }
    }
    app.container_packages = diff_container_packages(a, b);
    app.changed =
        !app.fields.is_empty() || !app.env.is_empty() || !app.container_packages.is_empty();

    let mut inputs = Vec::new();
    let (ia, ib) = (&a.inputs, &b.inputs);
    field(
        &mut inputs,
        "manifest_sha256",
        &ia.manifest_sha256,
        &ib.manifest_sha256,
    );
    field(&mut inputs, "lock_sha256", &ia.lock_sha256, &ib.lock_sha256);
    field(&mut inputs, "app_sha256", &ia.app_sha256, &ib.app_sha256);
    field(
        &mut inputs,
        "fuse_version",
        &ia.fuse_version,
        &ib.fuse_version,
    );
    field(
        &mut inputs,
        "source_epoch",
        &ia.source_epoch,
        &ib.source_epoch,
    );
    field(
        &mut inputs,
        "distribution",
        &ia.distribution,
        &ib.distribution,
    );
    field(
        &mut inputs,
        "archive_date",
        &ia.archive_date,
        &ib.archive_date,
    );

    let layers = diff_layers(&a.layers, &b.layers);
    let layer_sum = |m: &ImageMeta| m.layers.iter().map(|l| l.size).sum::<u64>();
    let size = Sizes {
        disk: SizeChange::new(a.disk_size.unwrap_or(0), b.disk_size.unwrap_or(0)),
        layers: SizeChange::new(layer_sum(a), layer_sum(b)),
        uki: SizeChange::new(a.boot.uki_size, b.boot.uki_size),
    };

    let differences = image.len()
        + layers
            .iter()
            .map(|l| {
                usize::from(l.status != Status::Unchanged) + l.packages.count() + l.files.count()
            })
            .sum::<usize>()
        + kernel.fields.len()
        + kernel.modules_added.len()
        + kernel.modules_removed.len()
        + boot.fields.len()
        + app.fields.len()
        + app.env.len()
        + app.container_packages.len()
        + inputs.len();
    let mut notes = Vec::new();
    if !identical && differences == 0 {
        notes.push(
            "the disks differ in bytes that image.json does not describe (partition table or padding)"
                .into(),
        );
    }
    ImageDiff {
        identical,
        differences: if identical { 0 } else { differences.max(1) },
        old: side(old_file, a),
        new: side(new_file, b),
        image,
        layers,
        kernel,
        boot,
        app,
        inputs,
        size,
        notes,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::disk::{AppMeta, BootMeta, Inputs, KernelMeta};

    fn pkg(name: &str, version: &str) -> PackageRef {
        PackageRef {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: format!("{:0>64}", version.len()),
            source: None,
            license: None,
        }
    }

    fn file(path: &str, size: u64, sha: &str) -> FileMeta {
        FileMeta {
            path: path.into(),
            kind: "file".into(),
            mode: "0644".into(),
            uid: 0,
            gid: 0,
            size,
            sha256: Some(sha.into()),
            target: None,
        }
    }

    /// A plausible image.json with a base layer holding `packages` and an app layer.
    pub(crate) fn meta(digest: &str, packages: Vec<PackageRef>, app_size: u64) -> ImageMeta {
        ImageMeta {
            format: 1,
            name: "hello".into(),
            version: "1.0.0".into(),
            arch: crate::arch::Arch::Amd64,
            digest: Some(digest.into()),
            inputs: Inputs {
                manifest_sha256: "m".into(),
                lock_sha256: Some("lock-a".into()),
                app_sha256: format!("app-{app_size}"),
                fuse_version: "0.1.0".into(),
                source_epoch: 1_700_000_000,
                distribution: "debian/bookworm".into(),
                archive_date: None,
            },
            kernel: KernelMeta {
                package: pkg("linux-image-6.1.0-50-amd64", "6.1.170-1"),
                release: "6.1.0-50-amd64".into(),
                cmdline: "console=ttyS0,115200 panic=-1 quiet".into(),
                modules: vec!["virtio_blk".into(), "virtio_net".into()],
            },
            boot: BootMeta {
                stub: pkg("systemd-boot-efi", "252.39-1~deb12u1"),
                uki_sha256: "u".into(),
                uki_size: 9_000_000,
                initramfs_sha256: "i".into(),
                initramfs_size: 1_000_000,
                esp_size: 10_000_000,
                signer: None,
            },
            app: AppMeta {
                kind: "binary".into(),
                argv: vec!["/app/hello".into()],
                workdir: "/app".into(),
                env: [("GREETING".to_string(), "world".to_string())]
                    .into_iter()
                    .collect(),
                uid: 1000,
                gid: 1000,
                port: 8080,
                health_http: Some("/".into()),
                env_args: None,
                stop_timeout: Some(30),
                stop_signal: None,
                writable: Vec::new(),
                x86_64_level: None,
                container: None,
            },
            layers: vec![
                LayerMeta {
                    name: "base".into(),
                    partition: "fuse-base".into(),
                    fs: "squashfs".into(),
                    partuuid: None,
                    verity: None,
                    digest: format!(
                        "sha256:base-{}",
                        packages
                            .iter()
                            .map(|p| p.version.clone())
                            .collect::<String>()
                    ),
                    size: 4096,
                    files: vec![file("/etc/passwd", 100, "p")],
                    packages,
                    java_modules: vec![],
                },
                LayerMeta {
                    name: "app".into(),
                    partition: "fuse-app".into(),
                    fs: "squashfs".into(),
                    partuuid: None,
                    verity: None,
                    digest: format!("sha256:app-{app_size}"),
                    size: 262_144,
                    packages: vec![],
                    files: vec![
                        FileMeta {
                            path: "/app".into(),
                            kind: "dir".into(),
                            mode: "0755".into(),
                            uid: 0,
                            gid: 0,
                            size: 0,
                            sha256: None,
                            target: None,
                        },
                        file("/app/hello", app_size, &format!("h{app_size}")),
                    ],
                    java_modules: vec![],
                },
            ],
            disk_size: Some(12_582_912),
        }
    }

    #[test]
    fn identical_images_have_no_differences() {
        let a = meta("sha256:aa", vec![pkg("libc6", "2.36-9")], 700);
        let d = diff("a.img", &a, "b.img", &a.clone());
        assert!(d.identical);
        assert_eq!(d.differences, 0);
        assert!(d.layers.iter().all(|l| l.status == Status::Unchanged));
    }

    #[test]
    fn jdk_modules_added_and_removed_are_listed() {
        let mut a = meta("sha256:aa", vec![pkg("libc6", "2.36-9")], 700);
        let mut b = meta("sha256:bb", vec![pkg("libc6", "2.36-9")], 700);
        let mods = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        a.layers[0].java_modules = mods(&["java.base", "java.logging", "jdk.httpserver"]);
        b.layers[0].java_modules = mods(&["java.base", "java.sql", "jdk.httpserver"]);
        b.layers[0].digest = "sha256:other-runtime".into();
        let d = diff("a.img", &a, "b.img", &b);
        let l = &d.layers[0];
        assert_eq!(l.java_modules_added, ["java.sql"]);
        assert_eq!(l.java_modules_removed, ["java.logging"]);
        let text = crate::inspect::render::diff(&d);
        assert!(text.contains("+ java.sql"), "{text}");
        assert!(text.contains("- java.logging"), "{text}");
        assert!(
            !text.contains("jdk.httpserver"),
            "unchanged module listed:\n{text}"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["layers"][0]["java_modules_added"][0], "java.sql");
        // Unchanged modules: no module section at all.
        let d = diff("a.img", &a, "a2.img", &a.clone());
        assert!(d.layers[0].java_modules_added.is_empty());
        assert!(!crate::inspect::render::diff(&d).contains("JDK modules"));
    }

    #[test]
    fn one_package_version_is_named_with_both_versions() {
        let a = meta(
            "sha256:aa",
            vec![pkg("libc6", "2.36-9"), pkg("zlib1g", "1:1.2.13.dfsg-1")],
            700,
        );
        let b = meta(
            "sha256:bb",
            vec![
                pkg("libc6", "2.36-9+deb12u4"),
                pkg("zlib1g", "1:1.2.13.dfsg-1"),
            ],
            700,
        );
        let d = diff("a.img", &a, "b.img", &b);
        assert!(!d.identical);
        let base = &d.layers[0];
        assert_eq!(base.name, "base");
        assert_eq!(base.status, Status::Changed);
        assert_eq!(base.packages.changed.len(), 1, "{:?}", base.packages);
        let c = &base.packages.changed[0];
        assert_eq!(
            (c.name.as_str(), c.from.as_str(), c.to.as_str()),
            ("libc6", "2.36-9", "2.36-9+deb12u4")
        );
        assert!(base.packages.added.is_empty() && base.packages.removed.is_empty());
        assert_eq!(d.layers[1].status, Status::Unchanged);

        // Both outputs name the package and both versions.
        let json = serde_json::to_value(&d).unwrap();
        let jc = &json["layers"][0]["packages"]["changed"][0];
        assert_eq!(jc["name"], "libc6");
        assert_eq!(jc["from"], "2.36-9");
        assert_eq!(jc["to"], "2.36-9+deb12u4");
        let text = crate::inspect::render::diff(&d);
        let line = text
            .lines()
            .find(|l| l.contains("libc6"))
            .unwrap_or_else(|| panic!("no libc6 line in:\n{text}"));
        assert!(
            line.contains("2.36-9 -> 2.36-9+deb12u4"),
            "line {line:?} in:\n{text}"
        );
        assert!(
            !text.contains("zlib1g"),
            "unchanged package listed:\n{text}"
        );
    }

    #[test]
    fn added_removed_and_modified_files_and_packages() {
        let mut a = meta("sha256:aa", vec![pkg("gone", "1")], 700);
        let mut b = meta("sha256:bb", vec![pkg("new", "2")], 717);
        a.layers[1].files.push(file("/app/old.txt", 5, "o"));
        b.layers[1].files.push(file("/app/new.txt", 9, "n"));
        b.app.env.insert("EXTRA".into(), "1".into());
        b.app.env.insert("GREETING".into(), "there".into());
        b.kernel.cmdline.push_str(" debug");
        let d = diff("a.img", &a, "b.img", &b);
        let app = &d.layers[1];
        assert_eq!(app.status, Status::Changed);
        assert_eq!(app.files.added[0].path, "/app/new.txt");
        assert_eq!(app.files.removed[0].path, "/app/old.txt");
        let m = &app.files.modified[0];
        assert_eq!((m.path.as_str(), m.size_delta), ("/app/hello", 17));
        assert_eq!(m.changed, ["size", "sha256"]);
        assert_eq!(d.layers[0].packages.added[0].name, "new");
        assert_eq!(d.layers[0].packages.removed[0].name, "gone");
        assert_eq!(
            d.app.env,
            vec![
                EnvChange {
                    name: "EXTRA".into(),
                    from: None,
                    to: Some("1".into())
                },
                EnvChange {
                    name: "GREETING".into(),
                    from: Some("world".into()),
                    to: Some("there".into())
                }
            ]
        );
        assert_eq!(d.kernel.fields[0].field, "cmdline");
        assert!(d.inputs.iter().any(|f| f.field == "app_sha256"));
    }

    #[test]
    fn container_packages_added_removed_and_upgraded() {
        use crate::disk::{ContainerPackage, ContainerPackages, ContainerSource};
        let with = |digest: &str, pkgs: &[(&str, &str)]| {
            let mut m = meta(digest, vec![], 700);
            m.app.container = Some(ContainerSource {
                reference: "r".into(),
                pinned: None,
                manifest_digest: "sha256:m".into(),
                config_digest: "sha256:c".into(),
                user: String::new(),
                stop_signal: None,
                labels: Default::default(),
                layers: vec![],
                packages: vec![ContainerPackages {
                    kind: "deb".into(),
                    path: "/var/lib/dpkg/status".into(),
                    layer: "app".into(),
                    vendor: "debian".into(),
                    distro: None,
                    installed: pkgs
                        .iter()
                        .map(|(n, v)| ContainerPackage {
                            name: n.to_string(),
                            version: v.to_string(),
                            arch: "amd64".into(),
                            source: None,
                            license: None,
                        })
                        .collect(),
                }],
            });
            m
        };
        let a = with(
            "sha256:aa",
            &[("gone", "1"), ("python3", "3.11.2-1"), ("same", "1")],
        );
        let b = with(
            "sha256:bb",
            &[("new", "2"), ("python3", "3.11.2-1+b1"), ("same", "1")],
        );
        let d = diff("a.img", &a, "b.img", &b);
        let got: Vec<(&str, Option<&str>, Option<&str>)> = d
            .app
            .container_packages
            .iter()
            .map(|c| (c.name.as_str(), c.from.as_deref(), c.to.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("gone", Some("1"), None),
                ("new", None, Some("2")),
                ("python3", Some("3.11.2-1"), Some("3.11.2-1+b1")),
            ]
        );
        assert!(d.app.changed);
        let text = crate::inspect::render::diff(&d);
        assert!(
            text.contains("~ package python3 (deb, amd64): 3.11.2-1 -> 3.11.2-1+b1"),
            "{text}"
        );
        assert!(text.contains("- package gone (deb, amd64) 1"), "{text}");
        assert!(!text.contains("package same"), "{text}");
    }

    #[test]
    fn layers_added_and_removed() {
        let a = meta("sha256:aa", vec![], 700);
        let mut b = a.clone();
        b.digest = Some("sha256:bb".into());
        let mut runtime = b.layers[0].clone();
        runtime.name = "runtime".into();
        runtime.partition = "fuse-runtime".into();
        b.layers.insert(1, runtime);
        b.layers.remove(0);
        let d = diff("a.img", &a, "b.img", &b);
        let st: Vec<(&str, Status)> = d
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.status))
            .collect();
        assert_eq!(
            st,
            [
                ("runtime", Status::Added),
                ("app", Status::Unchanged),
                ("base", Status::Removed)
            ]
        );
    }
}
