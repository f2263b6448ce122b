//! Test fixture: a small image in the real layout (GPT; ESP with a stand-in UKI and
//! image.json; one squashfs per layer), written with fuse's own writers, for fast unit tests
//! of verification, diffs and SBOMs without a kernel or an archive.

use crate::digest::sha256_hex;
use crate::disk::{
    file_list, AppMeta, BootMeta, ImageMeta, Inputs, KernelMeta, LayerMeta, ESP_BOOT_PATH,
    ESP_IMAGE_JSON, ESP_PARTITION_NAME,
};
use crate::format::{fat, gpt, squashfs};
use crate::layers::PackageRef;
use crate::tree::{Node, Tree};

pub(crate) struct Fixture {
    pub disk: Vec<u8>,
    /// The image.json written beside the image (with digest and disk size).
    pub beside: Vec<u8>,
    pub meta: ImageMeta,
}

pub(crate) fn pkg(name: &str, version: &str, license: Option<&str>) -> PackageRef {
    PackageRef {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        sha256: sha256_hex(format!("{name}_{version}").as_bytes()),
        source: None,
        license: license.map(str::to_string),
    }
}

pub(crate) fn base_tree() -> Tree {
    let mut t = Tree::new();
    t.insert(
        "etc/passwd",
        Node::file(&b"root:x:0:0::/root:/bin/sh\n"[..], 0o644),
    )
    .unwrap();
    t.insert("etc/os-release", Node::symlink("../usr/lib/os-release"))
        .unwrap();
    t.insert("usr/lib/os-release", Node::file(&b"ID=debian\n"[..], 0o644))
        .unwrap();
    t.insert("var/tmp", Node::dir(0o1777)).unwrap();
    t
}

pub(crate) fn app_tree(app: &[u8]) -> Tree {
    let mut t = Tree::new();
    t.insert("app", Node::dir(0o755)).unwrap();
    t.insert("app/hello", Node::file(app.to_vec(), 0o755))
        .unwrap();
    t
}

/// Build an image whose app layer holds `app`; `doctor` may change image.json before it is
/// embedded (to make one that lies about its layers).
pub(crate) fn build(app: &[u8], doctor: impl FnOnce(&mut ImageMeta)) -> Fixture {
    build_with(app, app_tree(app), doctor)
}

/// As [`build`], with the app layer's tree given (e.g. a hostile one).
pub(crate) fn build_with(
    app: &[u8],
    app_layer: Tree,
    doctor: impl FnOnce(&mut ImageMeta),
) -> Fixture {
    build_full(app, app_layer, |_| {}, doctor)
}

/// As [`build_with`], with `plan_doctor` changing the boot plan the UKI carries (and
/// image.json's initramfs and UKI digests following it, as an attacker would fix them).
pub(crate) fn build_full(
    app: &[u8],
    app_layer: Tree,
    plan_doctor: impl FnOnce(&mut crate::layers::BootPlan),
    doctor: impl FnOnce(&mut ImageMeta),
) -> Fixture {
    let opts = squashfs::Options {
        mkfs_time: 1_700_000_000,
        ..Default::default()
    };
    let trees = [
        (
            "base",
            base_tree(),
            vec![pkg("libc6", "2.36-9+deb12u4", Some("LGPL-2.1+ and GPL-2"))],
        ),
        ("app", app_layer, vec![]),
    ];
    let mut layer_bytes = Vec::new();
    let mut layers: Vec<LayerMeta> = Vec::new();
    for (name, tree, packages) in &trees {
        let fs = squashfs::write(tree, &opts).unwrap();
        let (b, v) = crate::format::verity::partition(&fs);
        layers.push(LayerMeta {
            name: name.to_string(),
            partition: format!("fuse-{name}"),
            fs: "squashfs".into(),
            partuuid: None,
            verity: Some(v),
            digest: format!("sha256:{}", sha256_hex(&fs)),
            size: fs.len() as u64,
            packages: packages.clone(),
            files: file_list(tree),
            java_modules: vec![],
        });
        layer_bytes.push(b);
    }
    let cmdline = "console=ttyS0,115200 panic=-1 quiet";
    for l in layers.iter_mut() {
        l.partuuid = Some(format!(
            "00000000-0000-4000-8000-00000000000{}",
            l.name.len()
        ));
    }
    let app_meta = AppMeta {
        kind: "binary".into(),
        argv: vec!["/app/hello".into()],
        workdir: "/app".into(),
        env: [("PORT".to_string(), "8080".to_string())]
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
    };
    // The boot plan the UKI carries: what image.json says (before `doctor` changes it).
    let plan = crate::layers::BootPlan {
        format: 1,
        hostname: "hello".into(),
        modules: vec!["virtio_blk".into()],
        device_modules: vec![],
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        fs_type: "squashfs".into(),
        verity: layers
            .iter()
            .map(|l| {
                let v = l.verity.as_ref().unwrap();
                (
                    l.name.clone(),
                    crate::layers::LayerVerity {
                        partuuid: l.partuuid.clone().unwrap(),
                        data_blocks: v.data_blocks,
                        hash_start_block: v.hash_start_block(),
                        root_hash: v.root_hash.clone(),
                        salt: v.salt.clone(),
                    },
                )
            })
            .collect(),
        app: crate::layers::AppPlan {
            argv: app_meta.argv.clone(),
            workdir: app_meta.workdir.clone(),
            env: app_meta.env.clone(),
            uid: app_meta.uid,
            gid: app_meta.gid,
            env_args: None,
            stop_timeout: 30,
            stop_signal: app_meta.stop_signal.clone(),
            writable: vec![],
        },
    };
    let mut plan = plan;
    plan_doctor(&mut plan);
    let initrd = boot_initrd(&plan, &[]);
    // A real-shaped UKI (synthetic stub, .cmdline, .linux, .initrd) so the boot plan is
    // read from it; .linux holds a marker text.
    let uki = uki_with(cmdline, &initrd);
    let mut meta = ImageMeta {
        format: 1,
        name: "hello".into(),
        version: "1.0.0".into(),
        arch: crate::arch::Arch::Amd64,
        digest: None,
        inputs: Inputs {
            manifest_sha256: "1".repeat(64),
            lock_sha256: None,
            app_sha256: sha256_hex(app),
            fuse_version: "0.1.0".into(),
            source_epoch: 1_700_000_000,
            distribution: "debian/bookworm".into(),
            archive_date: Some("Sat, 10 Feb 2024 12:00:00 UTC".into()),
        },
        kernel: KernelMeta {
            package: pkg("linux-image-6.1.0-50-amd64", "6.1.170-1", Some("GPL-2")),
            release: "6.1.0-50-amd64".into(),
            cmdline: cmdline.into(),
            modules: vec!["virtio_blk".into()],
        },
        boot: BootMeta {
            stub: pkg(
                "systemd-boot-efi",
                "252.39-1~deb12u1",
                Some("LGPL-2.1+ and public-domain"),
            ),
            uki_sha256: sha256_hex(&uki),
            uki_size: uki.len() as u64,
            initramfs_sha256: sha256_hex(&initrd),
            initramfs_size: initrd.len() as u64,
            esp_size: 0,
            signer: None,
        },
        app: app_meta,
        layers,
        disk_size: None,
    };
    doctor(&mut meta);
    let esp_tree = |meta: &ImageMeta| {
        let mut t = Tree::new();
        t.insert(ESP_BOOT_PATH, Node::file(uki.clone(), 0o644))
            .unwrap();
        t.insert(
            ESP_IMAGE_JSON,
            Node::file(serde_json::to_vec_pretty(meta).unwrap(), 0o644),
        )
        .unwrap();
        t
    };
    let fat_opts = |min_size| fat::Options {
        volume_label: "FUSE-ESP".into(),
        volume_id: 1,
        min_size,
    };
    meta.boot.esp_size = u64::MAX;
    let provisional = fat::write(&esp_tree(&meta), &fat_opts(0)).unwrap();
    meta.boot.esp_size = provisional.len() as u64;
    let esp = fat::write(&esp_tree(&meta), &fat_opts(provisional.len() as u64)).unwrap();
    assert_eq!(esp.len(), provisional.len());
    let guid = |s: &str| gpt::Guid::from_hash(&sha2::Sha256::digest(s.as_bytes()).into());
    use sha2::Digest;
    let mut specs = vec![gpt::PartitionSpec {
        name: ESP_PARTITION_NAME.into(),
        type_guid: gpt::Guid::parse(gpt::ESP_TYPE).unwrap(),
        unique_guid: guid("esp"),
        attributes: 0,
        data: &esp,
    }];
    for (m, b) in meta.layers.iter().zip(&layer_bytes) {
        specs.push(gpt::PartitionSpec {
            name: m.partition.clone(),
            type_guid: gpt::Guid::parse(gpt::LINUX_DATA_TYPE).unwrap(),
            unique_guid: guid(&m.partition),
            attributes: 1 << 60,
            data: b,
        });
    }
    let disk = gpt::write_disk(guid("disk"), &specs).unwrap();
    let mut beside_meta = meta.clone();
    beside_meta.digest = Some(format!("sha256:{}", sha256_hex(&disk)));
    beside_meta.disk_size = Some(disk.len() as u64);
    let beside = serde_json::to_vec_pretty(&beside_meta).unwrap();
    Fixture {
        disk,
        beside,
        meta: beside_meta,
    }
}

/// An initramfs: the boot plan's archive, then a zstd core as builds make it (by
/// `layers::initramfs_core`, with no module) plus `core_extra` members.
pub(crate) fn boot_initrd(plan: &crate::layers::BootPlan, core_extra: &[(&str, &[u8])]) -> Vec<u8> {
    let plan_tree = crate::layers::initramfs_plan(plan, 0).unwrap();
    let kernel = crate::kernel::Kernel {
        release: "6.1.0-test-amd64".into(),
        vmlinuz: Default::default(),
        modules: vec![],
    };
    let mut core = crate::layers::initramfs_core(b"\x7fELF init", &kernel, 0).unwrap();
    for (p, d) in core_extra {
        core.insert(p, Node::file(d.to_vec(), 0o644)).unwrap();
    }
    let core = crate::disk::write_initramfs(&core).unwrap();
    crate::disk::join_initramfs(&plan_tree, &core).unwrap()
}

/// A UKI of the synthetic stub with `cmdline` and `initrd`.
pub(crate) fn uki_with(cmdline: &str, initrd: &[u8]) -> Vec<u8> {
    let mut linux = b"stand-in for a unified kernel image".to_vec();
    linux.resize(4096, 0x90);
    crate::format::uki::build(
        &crate::format::uki::tests::synthetic(false),
        &crate::format::uki::Sections {
            osrel: b"ID=debian\n",
            cmdline: cmdline.as_bytes(),
            linux: &linux,
            initrd,
        },
    )
    .unwrap()
}

/// The byte range of partition `name` in `disk`.
pub(crate) fn partition(disk: &[u8], name: &str) -> std::ops::Range<usize> {
    gpt::read_disk(disk)
        .unwrap()
        .partitions
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .byte_range()
}
